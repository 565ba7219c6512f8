"""``headrace status``: per group, lag per partition, last commit time, dead letters."""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import click
import orjson
from confluent_kafka import TopicPartition
from rich.console import Console
from rich.table import Table

from consumers.groups import groups, topics_of
from headrace.errors import ConfigError
from headrace.kafka import cluster_metadata, make_consumer, watermarks
from headrace.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartitionStatus:
    group: str
    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int
    committed_at: str | None


def _dead_letters(settings: Settings) -> Counter[str]:
    """Dead letters per group, from the topic's headers (no decoding needed)."""
    topic = settings.kafka.topics.dead_letter
    consumer = make_consumer(settings.kafka, f"headrace-status-{uuid.uuid4().hex[:8]}")
    counts: Counter[str] = Counter()
    try:
        meta = cluster_metadata(consumer, settings.kafka, topic).topics.get(topic)
        if meta is None or meta.error is not None:
            return counts
        ends = {p: watermarks(consumer, TopicPartition(topic, p))[1] for p in meta.partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p, end in ends.items() if end])
        remaining = {p for p, end in ends.items() if end}
        deadline = time.monotonic() + 30
        while remaining and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() is not None:
                continue
            headers = dict(msg.headers() or [])
            group = headers.get("headrace.dlq.group")
            counts[group.decode() if isinstance(group, bytes) else "?"] += 1
            if (msg.offset() or 0) + 1 >= ends[msg.partition() or 0]:
                remaining.discard(msg.partition() or 0)
    finally:
        consumer.close()
    return counts


def group_status(settings: Settings, name: str) -> list[PartitionStatus]:
    """The group's committed offset, end and lag on every partition of its topics.

    The offsets are read by a consumer of the group's id that never joins it, not by
    librdkafka's admin ListConsumerGroupOffsets, which crashed a process (SIGSEGV in
    its OffsetFetch response handler) when a restarting broker answered it."""
    group = settings.consumer.group_prefix + name
    try:
        topics = [getattr(settings.kafka.topics, f) for f in topics_of(groups()[name])]
    except ConfigError as exc:  # a plug-in group that cannot load: nothing to show
        log.warning("group %s: %s", group, exc)
        return []
    rows = []
    probe = make_consumer(settings.kafka, f"headrace-status-{uuid.uuid4().hex[:8]}")
    offsets = make_consumer(settings.kafka, group)
    try:
        wanted = []
        for topic in topics:
            meta = cluster_metadata(probe, settings.kafka, topic).topics.get(topic)
            if meta is not None and meta.error is None:
                wanted += [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        for tp in offsets.committed(wanted, timeout=10) if wanted else []:
            _low, end = watermarks(probe, TopicPartition(tp.topic, tp.partition))
            committed = tp.offset if tp.offset >= 0 else None
            when = None
            if tp.metadata:
                stamp = orjson.loads(tp.metadata).get("committed_at")
                when = datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds")
            rows.append(
                PartitionStatus(
                    group,
                    tp.topic,
                    tp.partition,
                    committed,
                    end,
                    max(end - (committed or 0), 0),
                    when,
                )
            )
    finally:
        offsets.close()
        probe.close()
    return sorted(rows, key=lambda r: (r.topic, r.partition))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.pass_obj
def status(settings: Settings, as_json: bool) -> None:
    """Per consumer group: lag per partition, last commit time, dead-letter count."""
    letters = _dead_letters(settings)
    report: dict[str, dict[str, Any]] = {}
    for name in groups():
        group = settings.consumer.group_prefix + name
        report[group] = {
            "partitions": [asdict(r) for r in group_status(settings, name)],
            "dead_letters": letters.get(group, 0),
        }
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    console = Console(highlight=False)
    for group, info in report.items():
        table = Table(
            "topic",
            "partition",
            "committed",
            "end",
            "lag",
            "last commit",
            title=f"{group}: {info['dead_letters']} dead letters",
        )
        for row in info["partitions"]:
            table.add_row(
                row["topic"],
                str(row["partition"]),
                str(row["committed"]),
                str(row["end"]),
                str(row["lag"]),
                row["committed_at"] or "-",
            )
        console.print(table)
