"""Repairs that go back to the run's source: content the object store lost or holds
wrong is uploaded again from the source, then the run's events are verified again.

For each file whose verification found other bytes (``verification_failed``) or
nothing (``content_unresolvable``), the run's archived event says where its
content should be. An object-storage event's bytes are read from the run's
source (the directory, or the git commit the run read) and hashed: only when
they hash to the event's sha256 are they written back under the event's key
(content-addressed: the same key, the right bytes), after the object that was
there is copied into the repair's directory (``objects/``). Inline content
cannot go wrong in the store, and git references are fetched from their remote,
which a repair does not write to: those are verified again only.

Every file of the plan is then verified again here, through the content
resolver, as the verify group would, and a VerificationEvent published for each
(the newest verification of an event is the one ``verify run`` reads).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from confluent_kafka import KafkaError, Message
from confluent_kafka.serialization import MessageField, SerializationContext

from consumers.verify.read import archived_files
from consumers.verify.sink import verification_of
from headrace.errors import ProduceError
from headrace.kafka import make_producer
from headrace.settings import Settings
from schemas.catalog import EventType
from schemas.models import VerificationEvent
from schemas.registry import make_registry_client
from schemas.serde import EventSerializer
from storage.objectstore import ObjectStorage, open_storage

log = logging.getLogger(__name__)
SPOOL_BYTES = 8 * 1024 * 1024  # a file's bytes in memory up to this, on disk above


@dataclass(frozen=True)
class Resupplied:
    path: str
    key: str
    set_aside: Path | None  # the object that was in the store, copied here; None if none


@dataclass(frozen=True)
class NotResupplied:
    path: str
    why: str


@dataclass
class SourceRepair:
    resupplied: list[Resupplied]
    refused: list[NotResupplied]
    verified: list[VerificationEvent]

    def as_json(self) -> dict[str, Any]:
        return {
            "resupplied": [{"path": r.path, "key": r.key} for r in self.resupplied],
            "not_resupplied": [{"path": n.path, "why": n.why} for n in self.refused],
            "verified_again": {v.path: v.status.value for v in self.verified},
        }


def repair_from_source(
    settings: Settings,
    run_id: str,
    project: str,
    location: str,
    commit: str | None,
    paths: Iterable[str],
    into: Path,
) -> SourceRepair:
    """Upload again from the source what the store lost or holds wrong, then verify the
    files of ``paths`` again (see the module)."""
    wanted = set(paths)
    events = _archived(settings, run_id, project, wanted)
    lost = sorted(wanted - set(events))
    result = SourceRepair([], [NotResupplied(p, "not in the archive") for p in lost], [])
    uploads = {
        path: event
        for path, (event, _where) in events.items()
        if str(event.get("content_strategy")) == "OBJECT_STORAGE"
    }
    if uploads:
        _resupply(settings, location, commit, project, uploads, into, result)
    refused = {n.path for n in result.refused}
    again = {p: e for p, e in events.items() if p not in refused}
    result.verified = _verify_again(settings, again)
    return result


def _archived(
    settings: Settings, run_id: str, project: str, paths: set[str]
) -> dict[str, tuple[dict[str, Any], tuple[str, int, int]]]:
    """The run's newest archived upsert of each path, with where it was in Kafka."""
    found: dict[str, tuple[dict[str, Any], tuple[str, int, int]]] = {}
    for line in archived_files(settings, run_id, project, paths):
        if str(line.event.get("op") or "UPSERT") == "UPSERT":
            found[line.event["path"]] = (line.event, (line.topic, line.partition, line.offset))
    return found


def _resupply(
    settings: Settings,
    location: str,
    commit: str | None,
    project: str,
    uploads: dict[str, dict[str, Any]],
    into: Path,
    result: SourceRepair,
) -> None:
    from producers.command import open_source  # noqa: PLC0415 - the producer only here

    bucket = settings.object_store.bucket
    source = open_source(settings, location, commit, None, project)
    storage = open_storage(settings.object_store, bucket)
    aside = into / "objects"
    seen: set[str] = set()
    try:
        for candidate in source.candidates():
            event = uploads.get(candidate.path)
            if event is None or candidate.skip is not None:
                continue
            seen.add(candidate.path)
            ref = event.get("object_ref") or {}
            if ref.get("bucket") != bucket:
                why = f"its object is in bucket {ref.get('bucket')!r}, not the store's {bucket!r}"
                result.refused.append(NotResupplied(candidate.path, why))
                continue
            with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as spool:
                with candidate.open() as stream:
                    sha256, size = _copy_hashing(stream, spool)
                if (sha256, size) != (event.get("checksum"), event.get("size")):
                    why = (
                        f"the source holds other bytes now (sha256 {sha256}, {size} bytes),"
                        f" the run's event {event.get('checksum')}: ingest the file again"
                    )
                    result.refused.append(NotResupplied(candidate.path, why))
                    continue
                key = str(ref["key"])
                kept = _set_aside(storage, key, aside)
                spool.seek(0)
                storage.put(key, cast(BinaryIO, spool), size, sha256=sha256)
                log.info("uploaded %s again from %s as %s", candidate.path, location, key)
                result.resupplied.append(Resupplied(candidate.path, key, kept))
    finally:
        storage.close()
    for path in sorted(set(uploads) - seen):
        result.refused.append(NotResupplied(path, f"not in the source {location} any more"))


def _copy_hashing(stream: IO[bytes], out: IO[bytes]) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(1024 * 1024):
        digest.update(chunk)
        size += len(chunk)
        out.write(chunk)
    return digest.hexdigest(), size


def _set_aside(storage: ObjectStorage, key: str, into: Path) -> Path | None:
    """Copy the object under ``key`` (if any) into ``into``, named by its key."""
    if storage.stat(key) is None:
        return None
    target = into / key
    target.parent.mkdir(parents=True, exist_ok=True)
    with storage.open(key) as stream, target.open("wb") as out:
        shutil.copyfileobj(stream, out)
    return target


def _verify_again(
    settings: Settings, events: dict[str, tuple[dict[str, Any], tuple[str, int, int]]]
) -> list[VerificationEvent]:
    """Resolve each event's content as the verify group does and publish the outcome."""
    from storage.content.factory import open_resolver  # noqa: PLC0415 - only when repairing

    if not events:
        return []
    items = [events[p] for p in sorted(events)]
    resolver = open_resolver(settings, cache=False)
    try:
        outcomes = resolver.resolve_many(
            [event for event, _where in items],
            parallel=settings.cache.parallel_downloads,
            keep_bytes=False,
        )
    finally:
        resolver.close()
    now = datetime.now(UTC)
    verified = [
        verification_of(event, outcome, where, now)
        for (event, where), outcome in zip(items, outcomes, strict=True)
    ]
    for outcome in outcomes:
        discard = getattr(outcome, "discard", None)
        if discard is not None:
            discard()
    _publish(settings, verified)
    return verified


def _publish(settings: Settings, verified: list[VerificationEvent]) -> None:
    topic = settings.kafka.topics.verifications
    failed: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failed.append(err.str())

    with make_registry_client(settings.registry) as client:
        serialize = EventSerializer(client, EventType.VERIFICATION_EVENT)
        ctx = SerializationContext(topic, MessageField.VALUE)
        producer = make_producer(settings.kafka, **{"enable.idempotence": True})
        for v in verified:
            producer.produce(
                topic, key=v.event_id.encode(), value=serialize(v, ctx), on_delivery=delivered
            )
            producer.poll(0)
        left = producer.flush(60)
    if failed or left:
        raise ProduceError(
            f"{len(failed) + left} verifications were not published: {(failed or ['timeout'])[0]}"
        )
