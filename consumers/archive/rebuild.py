"""Re-archiving from Kafka: a damaged segment rebuilt from the records it was made of.

A segment listed in its day's manifest but missing, or whose file no longer
holds what the entry says (records deleted, bytes changed, a truncated file),
is rebuilt while the topic still holds its offsets: the partition is read from
the entry's first offset to its last (``read_committed``, as the archive group
reads), each record decoded as the archive group decodes it (the ones that do
not decode went to the dead-letter topic and were never archived, so they are
left out again), and written by an :class:`~storage.archive.Archive` with the
entry's compression into a scratch directory. The rebuilt file is put back only
when its sha256 is the one the manifest lists: then it is byte for byte the
segment that was published, and the manifest stays as it is. The damaged file,
if any, is moved into the repair's directory first.

A segment is not rebuilt, with the reason said, when the topic no longer starts
at or before its first offset (retention removed the records), when the records
read back are not the ones listed (another count or offsets), or when the
rebuilt bytes differ from the listed ones.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaPartition

from consumers.archive.sink import event_time_ms
from consumers.groups import MODELS
from headrace.errors import ConsumeError
from headrace.kafka import make_consumer, watermarks
from headrace.settings import Settings
from schemas.errors import DeserializationError
from schemas.models import Event
from schemas.registry import make_registry_client
from schemas.serde import EventDeserializer
from storage.archive import Archive, ArchivePolicy, ArchiveRecord, SegmentInfo
from storage.archive.backend import Backend, open_backend
from storage.archive.layout import day_dir
from storage.archive.manifest import create_temp
from storage.archive.verify import Damage, damaged

READ_TIMEOUT_S = 60.0
BIG = 2**62  # segment limits that never close the scratch segment early


@dataclass(frozen=True)
class Rebuilt:
    segment: SegmentInfo
    where: str
    set_aside: Path | None  # the damaged file, moved here; None if it was missing


@dataclass(frozen=True)
class NotRebuilt:
    segment: SegmentInfo
    where: str
    why: str


def find_damage(settings: Settings) -> list[Damage]:
    """The damaged segments of the topics a run's files go through."""
    topics = settings.kafka.topics
    backend = open_backend(settings.archive, settings.object_store)
    found: list[Damage] = []
    for field in MODELS:
        found += damaged(backend, getattr(topics, field))
    return found


def rebuild(
    settings: Settings, damage: list[Damage], set_aside_into: Path
) -> tuple[list[Rebuilt], list[NotRebuilt]]:
    """Rebuild each damaged segment from Kafka and put it back (see the module)."""
    topics = settings.kafka.topics
    models = {getattr(topics, field): model for field, model in MODELS.items()}
    backend = open_backend(settings.archive, settings.object_store)
    done: list[Rebuilt] = []
    refused: list[NotRebuilt] = []
    consumer = make_consumer(settings.kafka, f"headrace-rearchive-{uuid.uuid4().hex[:12]}")
    try:
        with make_registry_client(settings.registry) as client:
            decoders: dict[str, EventDeserializer[Event]] = {
                t: EventDeserializer(client, m) for t, m in models.items()
            }
            for d in damage:
                decoder = decoders.get(d.segment.topic)
                if decoder is None:
                    refused.append(NotRebuilt(d.segment, d.where, "not a topic of the pipeline"))
                    continue
                records = _records(consumer, d.segment, decoder)
                outcome = _put_back(backend, d, records, set_aside_into)
                if isinstance(outcome, Rebuilt):
                    done.append(outcome)
                else:
                    refused.append(outcome)
    finally:
        consumer.close()
    return done, refused


def _records(
    consumer: Consumer, segment: SegmentInfo, decoder: EventDeserializer[Any]
) -> list[ArchiveRecord] | str:
    """The segment's records as the archive group made them, or why they cannot be read."""
    topic, partition = segment.topic, segment.partition
    tp = KafkaPartition(topic, partition)
    try:
        low, high = watermarks(consumer, tp)
    except KafkaException as exc:
        raise ConsumeError(f"cannot read {topic}[{partition}]: {exc.args[0].str()}") from None
    if low > segment.first_offset:
        return (
            f"{topic}[{partition}] starts at offset {low} now: offsets"
            f" {segment.first_offset}-{segment.last_offset} are gone from Kafka"
        )
    if high <= segment.last_offset:
        return f"{topic}[{partition}] ends at offset {high}: it never held {segment.last_offset}"
    records: list[ArchiveRecord] = []
    for msg in _read(consumer, tp, segment.first_offset, segment.last_offset):
        try:
            event = decoder.decode(msg.value())
        except DeserializationError:
            continue  # dead-lettered, never archived
        timestamp = msg.timestamp()[1]
        records.append(
            ArchiveRecord(
                topic,
                partition,
                msg.offset() or 0,
                timestamp,
                event_time_ms(event, timestamp),
                msg.key(),
                int.from_bytes((msg.value() or b"")[1:5], "big"),
                event,
            )
        )
    return records


def _read(consumer: Consumer, tp: KafkaPartition, first: int, last: int) -> Iterator[Any]:
    """The committed records of ``tp`` from ``first`` to ``last``, in order."""
    consumer.assign([KafkaPartition(tp.topic, tp.partition, first)])
    try:
        deadline = time.monotonic() + READ_TIMEOUT_S
        position = first
        while position <= last:
            # consume() waits for its count or its timeout: a short one, under a deadline
            messages = consumer.consume(min(500, last - position + 1), timeout=0.5)
            if not messages:
                [now] = consumer.position([tp])
                if now.offset > last:  # the rest were transaction markers or aborted
                    return
                if time.monotonic() > deadline:
                    raise ConsumeError(
                        f"{tp.topic}[{tp.partition}]: offsets {position}-{last} not read"
                        f" within {READ_TIMEOUT_S:.0f}s"
                    )
                continue
            for msg in messages:
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:  # noqa: SLF001 - librdkafka's
                        continue
                    raise ConsumeError(f"{tp.topic}[{tp.partition}]: {error.str()}")
                offset = msg.offset() or 0
                if offset > last:
                    return
                position = offset + 1
                yield msg
    finally:
        consumer.unassign()


def _put_back(
    backend: Backend, d: Damage, records: list[ArchiveRecord] | str, into: Path
) -> Rebuilt | NotRebuilt:
    s = d.segment
    if isinstance(records, str):
        return NotRebuilt(s, d.where, records)
    offsets = (records[0].offset, records[-1].offset) if records else (-1, -1)
    if (len(records), *offsets) != (s.records, s.first_offset, s.last_offset):
        return NotRebuilt(
            s,
            d.where,
            f"Kafka holds {len(records)} records at offsets {offsets[0]}-{offsets[1]} there,"
            f" the manifest lists {s.records} at {s.first_offset}-{s.last_offset}",
        )
    scratch = Path(tempfile.mkdtemp(prefix="rearchive-", dir=into))
    try:
        policy = ArchivePolicy(
            compression=s.compression,
            max_segment_bytes=BIG,
            max_segment_records=BIG,
            max_segment_age_s=float(BIG),
        )
        archive = Archive(scratch, policy)
        archive.append(records)
        [made] = archive.close_all()
        if made.sha256 != s.sha256:
            return NotRebuilt(
                s,
                d.where,
                f"rebuilt from Kafka, its sha256 is {made.sha256}, the manifest lists"
                f" {s.sha256}: not put back",
            )
        staging = backend.staging(s.topic, s.date)
        staging.mkdir(parents=True, exist_ok=True)
        temp, out = create_temp(staging, s.name)
        try:
            with out, (day_dir(scratch, s.topic, s.date) / s.name).open("rb") as rebuilt:
                shutil.copyfileobj(rebuilt, out)
                out.flush()
                os.fsync(out.fileno())
            aside = backend.set_aside(s.topic, s.date, s.name, into)
            backend.publish(temp, s)
        finally:
            temp.unlink(missing_ok=True)  # published by a hard link (local) or a copy
        return Rebuilt(s, d.where, aside)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
