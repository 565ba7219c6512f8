"""``headrace cache warm``: fill the content cache for one project, from the load
database (the files it holds now) or the archive (every version archived)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from headrace.settings import Settings
from storage.content.errors import ContentError
from storage.content.resolver import ContentResolver

FETCHED = ("OBJECT_STORAGE", "GIT_REFERENCE")
CHUNK = 500


@dataclass
class Warmed:
    files: int = 0  # references looked at
    hits: int = 0  # already in the cache
    fetched: int = 0
    failed: list[str] = field(default_factory=list)  # one line per file that failed


def events_from_database(settings: Settings, project: str) -> Iterator[dict[str, Any]]:
    """The project's live files with a fetched strategy, as event dicts."""
    from storage.db import open_database  # noqa: PLC0415 - the database only when asked

    with open_database(settings, migrate=True) as db:
        for row in db.query(project):
            strategy, ref = row["content_strategy"], row["content_ref"]
            if strategy not in FETCHED or ref is None:
                continue
            ref = orjson.loads(ref)
            event: dict[str, Any] = {
                "project": project,
                "path": row["path"],
                "size": row["size"],
                "checksum": row["sha256"],
                "content_strategy": strategy,
            }
            if strategy == "OBJECT_STORAGE":
                event["object_ref"] = {"bucket": ref["bucket"], "key": ref["key"], "url": None}
            else:
                event["git_ref"] = ref
            yield event


def events_from_archive(settings: Settings, project: str) -> Iterator[dict[str, Any]]:
    """Every archived file event of the project with a fetched strategy."""
    from consumers.archive.cli import cold_store  # noqa: PLC0415
    from storage.archive import open_backend, read  # noqa: PLC0415

    backend = open_backend(settings.archive, settings.object_store)
    if settings.kafka.topics.file_events not in backend.topics():
        return
    lines = read(
        backend,
        topic=settings.kafka.topics.file_events,
        predicate=lambda e: (
            e.get("project") == project
            and str(e.get("content_strategy")) in FETCHED
            and str(e.get("op") or "UPSERT") == "UPSERT"
        ),
        cold=cold_store(settings),
    )
    for line in lines:
        yield line.event


def warm(resolver: ContentResolver, events: Iterator[dict[str, Any]], parallel: int) -> Warmed:
    """Resolve every event into the cache (each content once), CHUNK at a time."""
    result, seen = Warmed(), set()
    chunk: list[dict[str, Any]] = []

    def flush() -> None:
        for event, outcome in zip(
            chunk, resolver.resolve_many(chunk, parallel=parallel, keep_bytes=False), strict=True
        ):
            if isinstance(outcome, ContentError):
                result.failed.append(f"{event['path']}: {outcome.reason}")
            elif outcome.source == "cache":
                result.hits += 1
            else:
                outcome.discard()  # too large for the cache: nothing kept
                result.fetched += 1
        chunk.clear()

    for event in events:
        if event["checksum"] in seen:
            continue
        seen.add(event["checksum"])
        result.files += 1
        chunk.append(event)
        if len(chunk) >= CHUNK:
            flush()
    if chunk:
        flush()
    return result
