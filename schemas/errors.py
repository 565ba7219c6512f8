"""Errors of the event contract.

::

    SchemaError (headrace.errors)
     ├── DeserializationError   bytes that cannot become an event, or an event that
     │                          schemas.validation refuses          (terminal: dead-letter)
     ├── RegistryUnavailable    the registry did not answer         (transient: retry)
     └── RegistryRefused        the registry answered no: 401/403, 409 incompatible,
                                422 invalid schema, 404 unknown subject  (terminal)
"""

from __future__ import annotations

from enum import StrEnum

from headrace.errors import SchemaError, Terminal, Transient


class DeserializationReason(StrEnum):
    """Why bytes did not become an event; the dead-letter reason is derived from it."""

    EMPTY = "empty"  # no value, or shorter than the 5-byte wire-format header
    BAD_MAGIC_BYTE = "bad_magic_byte"  # not Confluent wire format
    UNKNOWN_SCHEMA_ID = "unknown_schema_id"  # the registry has no such schema id
    UNRESOLVABLE_SCHEMA = "unresolvable_schema"  # the reader schema cannot read the writer's
    CORRUPT_PAYLOAD = "corrupt_payload"  # truncated or malformed Avro
    INVALID_EVENT = "invalid_event"  # decoded, but not a valid event (schemas.validation)
    EVENT_TIME_SKEW = "event_time_skew"  # its time lies too far after the record's timestamp


class DeserializationError(SchemaError, Terminal):
    def __init__(self, reason: DeserializationReason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason


class RegistryUnavailable(SchemaError, Transient):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"schema registry unreachable at {url}: {reason}")
        self.url = url


class RegistryRefused(SchemaError, Terminal):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
