"""``headrace consume GROUP``: run one consumer group until stopped (or caught up)."""

from __future__ import annotations

import logging

import click

from consumers.archive.sink import ArchiveSink
from consumers.base import Sink
from consumers.dlq import DeadLetterQueue
from consumers.metrics import Metrics
from consumers.runtime import ConsumerRuntime, Decoder
from headrace.kafka import ensure_topics, make_admin
from headrace.settings import Settings
from schemas.models import FileEvent, RunEvent, VerificationEvent
from schemas.registry import make_registry_client
from schemas.serde import EventDeserializer
from storage.archive import Archive, ArchivePolicy, Compression
from storage.archive.backend import open_backend

log = logging.getLogger(__name__)
# The groups built so far; verify, cache and load join as they land.
GROUPS = ("archive",)


def _archive_sink(settings: Settings) -> Sink:
    config = settings.archive
    policy = ArchivePolicy(
        compression=Compression(config.compression),
        max_segment_bytes=config.max_segment_bytes,
        max_segment_records=config.max_segment_records,
        max_segment_age_s=config.max_segment_age_s,
        plain_days=config.plain_days,
    )
    return ArchiveSink(Archive(open_backend(config, settings.object_store), policy))


@click.command()
@click.argument("group", type=click.Choice(GROUPS))
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
    ensure_topics(
        make_admin(kafka),
        [topics.file_events, topics.run_events, topics.verifications],
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
                topics.file_events: EventDeserializer(client, FileEvent),
                topics.run_events: EventDeserializer(client, RunEvent),
                topics.verifications: EventDeserializer(client, VerificationEvent),
            }
            runtime = ConsumerRuntime(
                kafka,
                group_id,
                decoders,
                _archive_sink(settings),
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
