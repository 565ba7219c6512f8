"""Reading the sides of a run for ``verify run``: the archive's lines, the topics' records.

- :func:`archived_events` streams an archived topic's events as their lines hold them:
  the reader's order and errors (:mod:`storage.archive.reader`), without restoring the
  tagged values (``{"$bytes": ...}`` stays base64, ``{"$datetime": ...}`` a string),
  which is most of a full read's time and of no use to the checks. Cold days are read by
  the reader itself.
- :func:`archived_through`: the offsets of a topic the archive provably holds.
- :func:`records` streams a topic's committed values, in batches, skipping what the
  archive holds when asked to.
- :func:`read_published`, :func:`read_verifications` and :func:`read_loaded` run in
  worker processes: each reads one side (a topic, decoding only the records that can be
  of the run: their Avro bytes hold the run id; or the project's database rows) into a
  store file of its own.
"""

from __future__ import annotations

import pickle
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import KafkaError
from confluent_kafka import TopicPartition as KafkaPartition

from consumers.verify.store import Row, write_file
from headrace.errors import ConsumeError, HeadraceError
from headrace.kafka import cluster_metadata, make_consumer, watermarks
from headrace.settings import Settings
from schemas.models import FileEvent, VerificationEvent
from schemas.registry import make_registry_client
from schemas.serde import EventDeserializer
from storage.archive.backend import Backend, open_backend
from storage.archive.layout import ArchiveCorrupt
from storage.archive.manifest import SegmentInfo
from storage.archive.reader import ArchivedLine, iter_lines, read

BATCH = 1000  # records a consume()
IDLE_S = 60.0  # a topic read that advances no partition for this long fails
QUEUED_KIB = 16384  # what librdkafka fetches ahead, per consumer (its default: 64 MiB)


def millis(when: Any) -> int:
    """An event time (a datetime, an archived ``{"$datetime": ...}`` tag, or epoch
    milliseconds) in milliseconds."""
    if isinstance(when, dict):
        when = datetime.fromisoformat(when["$datetime"])
    if isinstance(when, datetime):
        return int(when.timestamp() * 1000)
    return int(when or 0)


def version_row(event: dict[str, Any]) -> Row:
    """A file event as the store keeps it: (path, event_id, op, sha256, size, strategy,
    event_time_ms); the strategy is "" for a delete."""
    op = str(event.get("op") or "UPSERT")
    strategy = "" if op == "DELETE" else str(event.get("content_strategy") or "INLINE").lower()
    return (
        event["path"],
        str(event.get("event_id") or ""),
        op,
        str(event.get("checksum") or ""),
        int(event.get("size") or 0),
        strategy,
        millis(event.get("event_time")),
    )


def outcome_row(event: dict[str, Any]) -> Row:
    """A verification as the store keeps it: (event_id, verified_at_ms, status, detail)."""
    return (
        str(event["event_id"]),
        millis(event.get("verified_at")),
        str(event["status"]),
        event.get("detail"),
    )


# --- the archive ---------------------------------------------------------------------


def archived_events(backend: Backend, topic: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(segment file name, event) of every line of ``topic``, in the reader's order."""
    for day in backend.days(topic):
        if backend.cold_marker(topic, day) is not None:
            for archived in read(backend, topic=topic, since=day, until=day):
                yield archived.segment, archived.event
            continue
        for name, parsed in backend.segment_files(topic, day):
            where = backend.where(topic, day, name)
            with backend.open(topic, day, name) as file:
                for number, line in enumerate(iter_lines(file, parsed.compression, where), 1):
                    try:
                        event = orjson.loads(line)["event"]
                        if not isinstance(event, dict):
                            raise TypeError("event is not an object")
                    except (ValueError, TypeError, KeyError) as exc:
                        raise ArchiveCorrupt(
                            f"{where} line {number} is not a record: {exc}"
                        ) from None
                    yield name, event


def archived_files(
    settings: Settings, run_id: str, project: str, paths: set[str]
) -> Iterator[ArchivedLine]:
    """The archived file events of ``run_id`` in ``project`` for ``paths``, in the
    archive's order (a repair's reads: the few files it is about)."""
    backend = open_backend(settings.archive, settings.object_store)
    return read(
        backend,
        topic=settings.kafka.topics.file_events,
        predicate=lambda e: (
            e.get("run_id") == run_id and e.get("project") == project and e.get("path") in paths
        ),
    )


def archived_through(
    backend: Backend, topic: str, lines: dict[str, int]
) -> dict[int, tuple[int, int]]:
    """Per partition, the offsets ``[first, end)`` the archive provably holds: the chain of
    its segments from the partition's first one (the manifests' ``previous_last_offset``
    links), as long as every line a segment's manifest entry counts was read (``lines``:
    lines read, by segment name). A segment missing, short or out of the chain ends it."""
    chains: dict[int, list[SegmentInfo]] = {}
    for day in backend.days(topic):
        for info in backend.read_manifest(topic, day):
            chains.setdefault(info.partition, []).append(info)
    held: dict[int, tuple[int, int]] = {}
    for partition, segments in chains.items():
        segments.sort(key=lambda s: s.first_offset)
        last: int | None = None
        for s in segments:
            if s.previous_last_offset != last or lines.get(s.name, 0) != s.records:
                break
            last = s.last_offset
        if last is not None:
            held[partition] = (segments[0].first_offset, last + 1)
    return held


# --- Kafka ----------------------------------------------------------------------------


def records(
    settings: Settings,
    topic: str,
    held: dict[int, tuple[int, int]] | None = None,
    lows: dict[int, int] | None = None,
) -> Iterator[tuple[bytes | None, bool]]:
    """Every committed value of ``topic`` up to the end offsets seen now, with whether its
    partition still starts at 0 (``lows``, if given, gets every partition's first offset:
    a partition retention emptied yields nothing to say so). A partition of which the
    archive ``held`` every offset Kafka has up to some ``end`` (its range starts at or
    before Kafka's first offset) is read from ``end`` on."""
    group = f"headrace-verify-read-{uuid.uuid4().hex[:12]}"
    consumer = make_consumer(settings.kafka, group, **{"queued.max.messages.kbytes": QUEUED_KIB})
    try:
        metadata = cluster_metadata(consumer, settings.kafka, topic).topics[topic]
        if metadata.error is not None:
            return  # no such topic: nothing published there
        partitions = list(metadata.partitions)
        ends, low = {}, {}
        for p in partitions:
            low[p], ends[p] = watermarks(consumer, KafkaPartition(topic, p))
        if lows is not None:
            lows.update(low)
        position = dict.fromkeys(partitions, 0)
        for p, (first, end) in (held or {}).items():
            if p in position and first <= low[p]:
                position[p] = end
        consumer.assign([KafkaPartition(topic, p, position[p]) for p in partitions])
        deadline = time.monotonic() + IDLE_S
        while any(position[p] < ends[p] for p in partitions):
            if time.monotonic() > deadline:
                raise ConsumeError(f"{topic}: not read to its end: no progress in {IDLE_S:.0f}s")
            batch = consumer.consume(BATCH, 0.5)
            if not batch:  # transaction markers take offsets without records
                for tp in consumer.position([KafkaPartition(topic, p) for p in partitions]):
                    if tp.offset > position[tp.partition]:
                        position[tp.partition] = tp.offset
                        deadline = time.monotonic() + IDLE_S
                continue
            deadline = time.monotonic() + IDLE_S
            for msg in batch:
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:  # noqa: SLF001 - librdkafka's
                        continue
                    raise ConsumeError(f"{topic}: {error.str()}")
                part = msg.partition() or 0
                position[part] = (msg.offset() or 0) + 1
                yield msg.value(), low[part] == 0
    finally:
        consumer.close()


def read_published(settings: Settings, run_id: str, into: Path) -> tuple[bool, str | None]:
    """The run's file events in the file-events topic, into the store file ``into``
    (a child process): whether every partition still starts at 0, and the project of the
    first one."""
    project = None
    lows: dict[int, int] = {}
    needle = run_id.encode()
    db, out = write_file(into, "versions")
    try:
        with make_registry_client(settings.registry) as client:
            decode = EventDeserializer(client, FileEvent).decode
            topic = settings.kafka.topics.file_events
            for value, _from_start in records(settings, topic, lows=lows):
                event = _of_run(decode, value, needle, run_id)
                if event is not None:
                    out.add(version_row(event))
                    project = project or event["project"]
        out.close()
    except HeadraceError as exc:
        raise _portable(exc) from None
    finally:
        db.close()
    return all(low == 0 for low in lows.values()), project


def read_verifications(
    settings: Settings, run_id: str, into: Path, held: dict[int, tuple[int, int]]
) -> None:
    """The run's verifications in the verifications topic but for the offsets the archive
    ``held`` (see :func:`records`), into the store file ``into`` (a child process)."""
    needle = run_id.encode()
    db, out = write_file(into, "outcomes")
    try:
        with make_registry_client(settings.registry) as client:
            decode = EventDeserializer(client, VerificationEvent).decode
            for value, _whole in records(settings, settings.kafka.topics.verifications, held):
                event = _of_run(decode, value, needle, run_id)
                if event is not None:
                    out.add(outcome_row(event))
        out.close()
    except HeadraceError as exc:
        raise _portable(exc) from None
    finally:
        db.close()


def read_loaded(settings: Settings, project: str, into: Path) -> str | None:
    """The project's rows in the database, into the store file ``into`` (a child
    process): None, or why the database could not be read (the rows read before stay)."""
    from storage.db import open_database  # noqa: PLC0415 - the database only when asked

    db, out = write_file(into, "rows")
    try:
        with open_database(settings, migrate=False) as database:
            for r in database.query(project, include_deleted=True):
                out.add(
                    (
                        r["path"],
                        r["event_id"],
                        r["run_id"],
                        r["sha256"],
                        r["size"],
                        r["event_time_ms"],
                        r["deleted"],
                    )
                )
    except HeadraceError as exc:  # no database yet (nothing loaded), or unreachable
        return str(exc)
    finally:
        out.close()
        db.close()
    return None


def _of_run(decode: Any, value: bytes | None, needle: bytes, run_id: str) -> dict[str, Any] | None:
    """The decoded event if it is of the run. Avro writes a string as its UTF-8 bytes, so
    a record whose bytes do not hold the run id is not of the run: not decoded."""
    if value is None or needle not in value:
        return None
    try:
        event: dict[str, Any] = decode(value)
    except HeadraceError:
        return None  # the dead-letter topic's business, not the run's
    return event if event.get("run_id") == run_id else None


def _portable(exc: HeadraceError) -> HeadraceError:
    """``exc`` if it crosses back to the parent process as it is, else its message."""
    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own exception, in this process
    except Exception:  # noqa: BLE001 - any way it does not unpickle
        return HeadraceError(str(exc))
    return exc
