"""``headrace status``: per group, its members and what each holds, lag per partition,
last commit time, dead letters."""

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
from confluent_kafka import KafkaException, TopicPartition
from rich.console import Console
from rich.table import Table

from consumers.groups import groups, topics_of
from headrace.errors import ConfigError
from headrace.kafka import answer, cluster_metadata, make_admin, make_consumer, watermarks
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
    member: str | None = None  # the member holding it now: its instance id, or client id


@dataclass(frozen=True)
class MemberStatus:
    """A live member of a group, as its coordinator describes it."""

    member_id: str
    instance_id: str | None  # group.instance.id: group.host.slot with static membership
    client_id: str
    host: str
    partitions: list[str]  # "topic[partition]" it holds


@dataclass(frozen=True)
class GroupMembers:
    state: str  # STABLE, PREPARING_REBALANCE, EMPTY, ... or UNKNOWN if not answered
    assignor: str
    members: list[MemberStatus]


def group_members(settings: Settings, group: str) -> GroupMembers:
    """The group's members and what each holds (``DescribeConsumerGroups``); a broker
    that does not answer gives state UNKNOWN and no members, with a warning."""
    admin = make_admin(settings.kafka)
    try:
        found = admin.describe_consumer_groups([group], request_timeout=10)[group]
        described = answer(found, 10)
    except KafkaException as exc:
        log.warning("group %s: members not described: %s", group, exc.args[0].str())
        return GroupMembers("UNKNOWN", "", [])
    members = [
        MemberStatus(
            m.member_id,
            m.group_instance_id,
            m.client_id,
            m.host,
            [
                f"{tp.topic}[{tp.partition}]"
                for tp in sorted(
                    m.assignment.topic_partitions if m.assignment else [],
                    key=lambda tp: (tp.topic, tp.partition),
                )
            ],
        )
        for m in described.members
    ]
    members.sort(key=lambda m: (m.instance_id or "", m.member_id))
    state = getattr(described.state, "name", str(described.state))
    return GroupMembers(state, described.partition_assignor or "", members)


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
    """Per consumer group: its members (processes) and the partitions each holds, lag per
    partition, last commit time, dead-letter count."""
    letters = _dead_letters(settings)
    report: dict[str, dict[str, Any]] = {}
    for name in groups():
        group = settings.consumer.group_prefix + name
        members = group_members(settings, group)
        holder = {
            part: m.instance_id or m.client_id for m in members.members for part in m.partitions
        }
        report[group] = {
            "state": members.state,
            "assignor": members.assignor,
            "members": [asdict(m) for m in members.members],
            "partitions": [
                {**asdict(r), "member": holder.get(f"{r.topic}[{r.partition}]")}
                for r in group_status(settings, name)
            ],
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
            "member",
            title=f"{group}: {len(info['members'])} members ({info['state'].lower()}),"
            f" {info['dead_letters']} dead letters",
        )
        for row in info["partitions"]:
            table.add_row(
                row["topic"],
                str(row["partition"]),
                str(row["committed"]),
                str(row["end"]),
                str(row["lag"]),
                row["committed_at"] or "-",
                row["member"] or "-",
            )
        console.print(table)
