"""``headrace consume GROUP``: run one consumer group until stopped (or caught up)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import click

from consumers.archive.sink import ArchiveSink
from consumers.base import Sink
from consumers.dlq import DeadLetterQueue
from consumers.metrics import Metrics
from consumers.runtime import ConsumerRuntime, Decoder
from headrace.kafka import ensure_topics, make_admin
from headrace.settings import Settings
from schemas.models import Event, FileEvent, RunEvent, VerificationEvent
from schemas.registry import make_registry_client
from schemas.serde import EventDeserializer
from storage.archive import Archive, ArchivePolicy, Compression
from storage.archive.backend import open_backend

log = logging.getLogger(__name__)


def _archive_sink(settings: Settings, _group_id: str, _metrics: Metrics) -> Sink:
    config = settings.archive
    policy = ArchivePolicy(
        compression=Compression(config.compression),
        max_segment_bytes=config.max_segment_bytes,
        max_segment_records=config.max_segment_records,
        max_segment_age_s=config.max_segment_age_s,
        plain_days=config.plain_days,
    )
    return ArchiveSink(Archive(open_backend(config, settings.object_store), policy))


def _load_sink(settings: Settings, group_id: str, _metrics: Metrics) -> Sink:
    from consumers.load.cli import load_row_content  # noqa: PLC0415 - the database only
    from consumers.load.sink import LoadSink  # noqa: PLC0415 - when loading
    from storage.db import open_database  # noqa: PLC0415

    row_content = load_row_content(settings)
    db = open_database(settings, migrate=True)
    topics = settings.kafka.topics
    return LoadSink(
        db,
        group_id,
        file_topic=topics.file_events,
        run_topic=topics.run_events,
        content=settings.load.content,
        resolver=row_content.resolver,
        bucket_exists=row_content.bucket_exists,
    )


def _cache_sink(settings: Settings, group_id: str, metrics: Metrics) -> Sink:
    from consumers.cache.metrics import CacheMetrics  # noqa: PLC0415 - the resolver only
    from consumers.cache.sink import CacheSink  # noqa: PLC0415 - when caching
    from storage.content.factory import open_resolver  # noqa: PLC0415

    cache_metrics = CacheMetrics(metrics.registry, group_id)
    resolver = open_resolver(settings)
    resolver.on_fetch = cache_metrics.observe_fetch
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
    )


SinkFactory = Callable[[Settings, str, Metrics], Sink]
# The groups, and the topics each reads.
GROUPS: dict[str, tuple[SinkFactory, tuple[str, ...]]] = {
    "archive": (_archive_sink, ("file_events", "run_events", "verifications")),
    "load": (_load_sink, ("file_events", "run_events")),
    "cache": (_cache_sink, ("file_events",)),
    "verify": (_verify_sink, ("file_events",)),
}
MODELS: dict[str, type[Event]] = {
    "file_events": FileEvent,
    "run_events": RunEvent,
    "verifications": VerificationEvent,
}


@click.command()
@click.argument("group", type=click.Choice(sorted(GROUPS)))
@click.option(
    "--until-caught-up",
    is_flag=True,
    help="Stop once the end offsets seen at start are reached (batch jobs, tests).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0),
    help="Port for /metrics and /healthz (0: none; default from settings).",
)
@click.pass_obj
def consume(
    settings: Settings, group: str, until_caught_up: bool, metrics_port: int | None
) -> None:
    """Run the GROUP consumer group: each group is its own Kafka consumer group,
    scaling out by partitions across processes and hosts. SIGTERM or SIGINT stops
    it cleanly: what is durable is committed and the group is left."""
    kafka, topics = settings.kafka, settings.kafka.topics
    group_id = settings.consumer.group_prefix + group
    make_sink, fields = GROUPS[group]
    names = {field: getattr(topics, field) for field in fields}
    ensure_topics(
        make_admin(kafka),
        list(names.values()),
        partitions=kafka.partitions,
        replication_factor=kafka.replication_factor,
    )
    metrics = Metrics(group_id)
    port = settings.consumer.metrics_port if metrics_port is None else metrics_port
    if port:
        bound = metrics.serve(settings.consumer.metrics_host, port)
        log.info("metrics on http://%s:%s/metrics", settings.consumer.metrics_host, bound)
    try:
        with make_registry_client(settings.registry) as client:
            decoders: dict[str, Decoder] = {
                name: EventDeserializer(client, MODELS[field]) for field, name in names.items()
            }
            runtime = ConsumerRuntime(
                kafka,
                group_id,
                decoders,
                make_sink(settings, group_id, metrics),
                DeadLetterQueue(kafka, client, group_id),
                metrics=metrics,
                until_caught_up=until_caught_up,
                batch_size=settings.consumer.batch_size,
            )
            stats = runtime.run()
    finally:
        metrics.close()
    click.echo(
        f"{group_id}: {stats.processed} records written, {stats.dead_lettered} dead-lettered"
    )
