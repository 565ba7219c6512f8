"""The consumer groups: each a name, a sink factory and the topics it reads, and
:func:`run_group`, which runs one on the shared runtime (positions from the sink,
the dead-letter topic, retries, metrics). The CLI parses options and calls it.

Groups of one's own plug in through the ``headrace.groups`` entry point: a name
and a factory ``(settings, group_id, metrics) -> Sink``; such a group reads the
file-events topic, or the topics its factory names in a ``topics`` attribute
(field names of ``kafka.topics``: ``file_events``, ``run_events``,
``verifications``, ``row_events``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from consumers.archive.sink import ArchiveSink
from consumers.base import Sink, TopicPartition
from consumers.dlq import DeadLetterQueue
from consumers.instance import InstanceSlot, membership_config
from consumers.metrics import Metrics
from consumers.readiness import Readiness
from consumers.runtime import ConsumerRuntime, Decoder, RuntimeStats
from headrace.errors import ConfigError
from headrace.history import open_recorder
from headrace.kafka import await_broker, ensure_topics, make_admin
from headrace.settings import Settings
from headrace.startup import when_up
from schemas.models import Event, FileEvent, RowEvent, RunEvent, VerificationEvent
from schemas.registry import make_registry_client
from schemas.serde import EventDeserializer
from storage.archive import Archive, ArchivePolicy, Compression
from storage.archive.backend import open_backend

log = logging.getLogger(__name__)
ENTRY_POINTS = "headrace.groups"


def _archive_sink(settings: Settings, _group_id: str, _metrics: Metrics) -> Sink:
    config = settings.archive
    policy = ArchivePolicy(
        compression=Compression(config.compression),
        max_segment_bytes=config.max_segment_bytes,
        max_segment_records=config.max_segment_records,
        max_segment_age_s=config.max_segment_age_s,
        topic_ages={settings.kafka.topics.row_events: config.row_events_segment_age_s},
        plain_days=config.plain_days,
    )
    return ArchiveSink(Archive(open_backend(config, settings.object_store), policy))


def _load_sink(settings: Settings, group_id: str, metrics: Metrics) -> Sink:
    from consumers.load.content import load_row_content  # noqa: PLC0415 - the database only
    from consumers.load.metrics import LoadMetrics  # noqa: PLC0415
    from consumers.load.sink import LoadSink  # noqa: PLC0415 - when loading
    from storage.db import open_database  # noqa: PLC0415
    from storage.db.backup import PeriodicBackup  # noqa: PLC0415

    row_content = load_row_content(settings)
    db = when_up(
        "the database",
        lambda: open_database(settings, migrate=True),
        settings.consumer.startup_wait_s,
    )
    topics = settings.kafka.topics
    return LoadSink(
        db,
        group_id,
        file_topic=topics.file_events,
        run_topic=topics.run_events,
        content=settings.load.content,
        resolver=row_content.resolver,
        bucket_exists=row_content.bucket_exists,
        backups=PeriodicBackup(
            settings, settings.load.backup_interval_s, settings.load.backup_keep_days
        )
        if settings.load.backup_interval_s > 0
        else None,
        metrics=LoadMetrics(metrics.registry, group_id, settings.load.backend),
        batch_size=settings.load.batch_size,  # a live batch is one transaction of that size
    )


def _cache_sink(settings: Settings, group_id: str, metrics: Metrics) -> Sink:
    from consumers.cache.metrics import CacheMetrics  # noqa: PLC0415 - the resolver only
    from consumers.cache.sink import CacheSink  # noqa: PLC0415 - when caching
    from storage.content.factory import open_resolver  # noqa: PLC0415
    from storage.git_cache import GitCache  # noqa: PLC0415

    cache_metrics = CacheMetrics(metrics.registry, group_id)
    resolver = open_resolver(settings)
    resolver.on_fetch = cache_metrics.observe_fetch
    if isinstance(resolver.git, GitCache):
        resolver.git.on_event = cache_metrics.observe_git
    return CacheSink(
        resolver,
        file_topic=settings.kafka.topics.file_events,
        parallel=settings.cache.parallel_downloads,
        metrics=cache_metrics,
    )


def _verify_sink(settings: Settings, group_id: str, metrics: Metrics) -> Sink:
    from consumers.verify.sink import VerifyMetrics, VerifySink  # noqa: PLC0415 - the resolver
    from storage.content.factory import open_resolver  # noqa: PLC0415 - only when verifying

    # No content cache: a verification reads the store itself, not a copy of it.
    return VerifySink(
        open_resolver(settings, cache=False),
        settings.kafka,
        make_registry_client(settings.registry),
        group_id=group_id,
        parallel=settings.cache.parallel_downloads,
        metrics=VerifyMetrics(metrics.registry, group_id),
        instances=settings.verify.instances_dir or settings.consumer.instances_dir,
    )


SinkFactory = Callable[[Settings, str, Metrics], Sink]


@dataclass(frozen=True)
class Group:
    name: str
    factory: SinkFactory
    topics: tuple[str, ...]  # field names of kafka.topics
    plugin: str | None = None  # the entry point's value, for a group of one's own


# The groups headrace brings, and the topics each reads.
GROUPS: dict[str, Group] = {
    "archive": Group(
        "archive", _archive_sink, ("file_events", "run_events", "verifications", "row_events")
    ),
    "load": Group("load", _load_sink, ("file_events", "run_events")),
    "cache": Group("cache", _cache_sink, ("file_events",)),
    "verify": Group("verify", _verify_sink, ("file_events",)),
}
MODELS: dict[str, type[Event]] = {
    "file_events": FileEvent,
    "run_events": RunEvent,
    "verifications": VerificationEvent,
    "row_events": RowEvent,
}


def groups() -> dict[str, Group]:
    """Headrace's groups and those installed packages register (``headrace.groups``);
    a plug-in cannot replace a built-in group."""
    found = dict(GROUPS)
    for entry in entry_points(group=ENTRY_POINTS):
        if entry.name in found:
            log.warning(
                "the plug-in group %s (%s) is ignored: a built-in group has its name",
                entry.name,
                entry.value,
            )
            continue
        found[entry.name] = Group(entry.name, _plugin(entry.name, entry.value), (), entry.value)
    return found


def _load(name: str) -> Any:
    """The object a plug-in group's entry point names (its sink factory)."""
    for entry in entry_points(group=ENTRY_POINTS):
        if entry.name == name:
            try:
                return entry.load()
            except (ImportError, AttributeError) as exc:
                raise ConfigError(f"group {name}: cannot load {entry.value}: {exc}") from None
    raise ConfigError(f"no group {name!r} is installed")


def _plugin(name: str, value: str) -> SinkFactory:
    def factory(settings: Settings, group_id: str, metrics: Metrics) -> Sink:
        sink = _load(name)(settings, group_id, metrics)
        if not isinstance(sink, Sink):
            raise ConfigError(f"group {name}: {value} returned {type(sink).__name__}, not a Sink")
        return sink

    return factory


def topics_of(group: Group) -> tuple[str, ...]:
    """The topic fields a group reads: a plug-in's factory may name them (``topics``)."""
    if group.plugin is None:
        return group.topics
    wanted = tuple(getattr(_load(group.name), "topics", ("file_events",)))
    for field in wanted:
        if field not in MODELS:
            raise ConfigError(f"group {group.name}: topic {field!r} is not one of {sorted(MODELS)}")
    return wanted


def ready_topics(settings: Settings, name: str) -> tuple[Group, dict[str, str]]:
    """The group ``name`` and its topics (field -> topic), made if missing; no broker
    answering within ``consumer.startup_wait_s`` is one line, not a timeout later."""
    known = groups()
    if name not in known:
        raise ConfigError(f"no group {name!r}: the groups are {', '.join(sorted(known))}")
    group, kafka = known[name], settings.kafka
    names = {field: getattr(kafka.topics, field) for field in topics_of(group)}
    admin = make_admin(kafka)
    await_broker(admin, kafka, settings.consumer.startup_wait_s)
    ensure_topics(
        admin,
        list(names.values()),
        partitions=kafka.partitions,
        replication_factor=kafka.replication_factor,
    )
    return group, names


def run_group(
    settings: Settings,
    name: str,
    *,
    until_caught_up: bool = False,
    metrics_port: int | None = None,
    on_progress: Callable[[bool, frozenset[TopicPartition]], None] | None = None,
    before_join: Callable[[], None] | None = None,
    hold: Callable[[], bool] | None = None,
) -> RuntimeStats:
    """Run the group ``name`` until stopped (SIGTERM, SIGINT) or, with
    ``until_caught_up``, until the end offsets seen at start are reached."""
    group, names = ready_topics(settings, name)
    kafka = settings.kafka
    group_id = settings.consumer.group_prefix + name
    # The process's slot on this host: its group.instance.id, the same after a restart.
    slot = InstanceSlot(settings.consumer.instances_dir, group_id)
    # librdkafka keys set in kafka.extra win (a test's shorter session, say).
    membership = membership_config(settings.consumer, group_id, slot.acquire(), kafka.extra)
    metrics = Metrics(group_id, targets_dir=settings.metrics.targets_dir)
    readiness = Readiness(settings, name)
    port = settings.consumer.metrics_port if metrics_port is None else metrics_port
    history = open_recorder(settings, group_id)  # None: the history is disabled
    if history is not None:
        history.record("process.start", 1)  # `headrace metrics summary` counts restarts
    try:
        if port:
            metrics.readiness = readiness.state
            readiness.start()
            try:
                bound = metrics.serve(settings.consumer.metrics_host, port)
            except OSError as exc:  # the port is taken (another group on this host)
                raise ConfigError(
                    f"cannot serve metrics on {settings.consumer.metrics_host}:{port}"
                    f" ({exc.strerror}): set consumer.metrics_port to a free port, or 0"
                    " for none"
                ) from None
            log.info("metrics on http://%s:%s/metrics", settings.consumer.metrics_host, bound)
        with make_registry_client(settings.registry) as client:
            decoders: dict[str, Decoder] = {
                name: EventDeserializer(client, MODELS[field]) for field, name in names.items()
            }
            runtime = ConsumerRuntime(
                kafka,
                group_id,
                decoders,
                group.factory(settings, group_id, metrics),
                DeadLetterQueue(kafka, client, group_id),
                metrics=metrics,
                until_caught_up=until_caught_up,
                on_progress=on_progress,
                before_join=before_join,
                hold=hold,
                batch_size=settings.consumer.batch_size,
                max_event_time_skew_s=settings.consumer.max_event_time_skew_s,
                consumer_config=membership,
                history=history,
            )
            return runtime.run()
    finally:
        readiness.stop()
        metrics.close()
        slot.release()
        if history is not None:
            history.close()  # a last flush
