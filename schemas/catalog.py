"""The local schemas: ``schemas/avro/<event>/v<N>.avsc``, one file per version.

Each event type has its own topic (from settings) and so its own subject,
``<topic>-value`` (the topic name strategy).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

from headrace.errors import SchemaError
from headrace.settings import TopicSettings

SCHEMA_DIR = Path(__file__).resolve().parent / "avro"
_VERSION_FILE = re.compile(r"^v(\d+)\.avsc$")


class EventType(StrEnum):
    FILE_EVENT = "file_event"
    RUN_EVENT = "run_event"
    VERIFICATION_EVENT = "verification_event"
    DEAD_LETTER = "dead_letter"
    ROW_EVENT = "row_event"

    def topic(self, topics: TopicSettings) -> str:
        return {
            EventType.FILE_EVENT: topics.file_events,
            EventType.RUN_EVENT: topics.run_events,
            EventType.VERIFICATION_EVENT: topics.verifications,
            EventType.DEAD_LETTER: topics.dead_letter,
            EventType.ROW_EVENT: topics.row_events,
        }[self]

    def subject(self, topics: TopicSettings) -> str:
        return f"{self.topic(topics)}-value"


@dataclass(frozen=True)
class LocalSchema:
    event: EventType
    version: int
    path: Path
    text: str

    @property
    def label(self) -> str:
        return f"v{self.version}"

    @property
    def json(self) -> Any:
        return json.loads(self.text)


@cache
def versions(event: EventType) -> tuple[LocalSchema, ...]:
    """Every local version of ``event``'s schema, oldest first."""
    folder = SCHEMA_DIR / event.value
    found = []
    for path in folder.glob("v*.avsc"):
        match = _VERSION_FILE.match(path.name)
        if match:
            found.append(LocalSchema(event, int(match.group(1)), path, path.read_text()))
    if not found:
        raise SchemaError(f"no schema files for {event.value} in {folder}")
    found.sort(key=lambda s: s.version)
    numbers = [s.version for s in found]
    if numbers != list(range(1, len(found) + 1)):
        raise SchemaError(f"{event.value}: versions must be v1..vN without gaps, found {numbers}")
    return tuple(found)


def latest(event: EventType) -> LocalSchema:
    return versions(event)[-1]


def version(event: EventType, number: int) -> LocalSchema:
    for schema in versions(event):
        if schema.version == number:
            return schema
    raise SchemaError(f"{event.value} has no local version {number}")


def event_for_subject(subject: str, topics: TopicSettings) -> EventType | None:
    """The event type whose subject (or plain name, e.g. ``file_event``) is ``subject``."""
    for event in EventType:
        if subject in (event.subject(topics), event.value):
            return event
    return None
