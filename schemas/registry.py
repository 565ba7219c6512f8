"""The schema registry: a client from settings, and the calls the CLI makes,
each failure turned into one clear line.

Any Confluent-compatible registry works (Confluent, Apicurio's ccompat API,
Karapace, Redpanda). Serializers name the topic subject strategy: newer
confluent-kafka clients otherwise first ask ``/associations``, which not all
registries implement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import httpx2  # confluent-kafka's HTTP client: its transport errors mean "unreachable"
from confluent_kafka.schema_registry import (
    Schema,
    SchemaRegistryClient,
    topic_subject_name_strategy,
)
from confluent_kafka.schema_registry.error import SchemaRegistryError

from headrace.settings import RegistrySettings
from schemas.errors import RegistryRefused, RegistryUnavailable

SUBJECT_STRATEGY: dict[str, Any] = {"subject.name.strategy": topic_subject_name_strategy}
T = TypeVar("T")


def make_registry_client(settings: RegistrySettings) -> SchemaRegistryClient:
    conf: dict[str, Any] = {"url": settings.url, "timeout": 10}
    if settings.username and settings.password is not None:
        conf["basic.auth.user.info"] = f"{settings.username}:{settings.password.get_secret_value()}"
    return SchemaRegistryClient(conf)


def explain(exc: SchemaRegistryError, doing: str) -> RegistryRefused:
    """One line for a refusal, by HTTP status (Apicurio answers 409 with code 409)."""
    status = exc.http_status_code
    detail = (exc.error_message or "").strip().splitlines()[0] if exc.error_message else ""
    if status in (401, 403):
        text = (
            f"{doing}: the registry refused the credentials ({status}); "
            "check HEADRACE_REGISTRY__USERNAME and HEADRACE_REGISTRY__PASSWORD"
        )
    elif status == 409:
        text = f"{doing}: incompatible with the registered versions (409): {detail}"
    elif status == 422:
        text = f"{doing}: the registry rejected the schema as invalid (422): {detail}"
    elif status == 404:
        text = f"{doing}: not found (404): {detail}"
    else:
        text = f"{doing}: the registry answered {status}: {detail}"
    return RegistryRefused(status, text)


@dataclass(frozen=True)
class SubjectVersion:
    subject: str
    version: int
    schema_id: int
    schema: str


class Registry:
    """The registry calls headrace makes, with typed, one-line failures."""

    def __init__(self, settings: RegistrySettings) -> None:
        self.url = settings.url
        self.client = make_registry_client(settings)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, doing: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except SchemaRegistryError as exc:
            raise explain(exc, doing) from None
        except (httpx2.TransportError, OSError) as exc:
            raise RegistryUnavailable(self.url, str(exc) or type(exc).__name__) from None

    def subjects(self) -> list[str]:
        return sorted(self._call("listing subjects", self.client.get_subjects))

    def versions(self, subject: str) -> list[SubjectVersion]:
        """Every registered version of ``subject``, oldest first ([] if none)."""
        try:
            numbers = self._call(
                f"listing versions of {subject}", lambda: self.client.get_versions(subject)
            )
        except RegistryRefused as exc:
            if exc.status == 404:
                return []
            raise
        return [self.version(subject, n) for n in sorted(numbers)]

    def version(self, subject: str, number: int | Literal["latest"]) -> SubjectVersion:
        found = self._call(
            f"reading {subject} version {number}", lambda: self.client.get_version(subject, number)
        )
        return SubjectVersion(
            subject, found.version or 0, found.schema_id or 0, found.schema.schema_str or ""
        )

    def level(self, subject: str | None = None) -> str:
        """The compatibility level in force for ``subject`` (or the global one)."""
        doing = f"reading the compatibility level of {subject or 'the registry'}"
        if subject is not None:
            try:
                return self._call(doing, lambda: self.client.get_compatibility(subject))
            except RegistryRefused as exc:
                if exc.status != 404:
                    raise
        return self._call(doing, lambda: self.client.get_compatibility())

    def set_level(self, subject: str, level: str) -> None:
        self._call(
            f"setting {subject} to {level}", lambda: self.client.set_compatibility(subject, level)
        )

    def register(self, subject: str, schema_text: str) -> int:
        """Register (idempotent: a known schema returns its id); the schema id."""
        return self._call(
            f"registering {subject}",
            lambda: self.client.register_schema(subject, Schema(schema_text, "AVRO")),
        )

    def compatible(self, subject: str, schema_text: str) -> bool:
        """The registry's own verdict against the latest version, at its level."""
        return self._call(
            f"testing {subject}",
            lambda: self.client.test_compatibility(subject, Schema(schema_text, "AVRO")),
        )

    def delete_subject(self, subject: str) -> None:
        self._call(f"deleting {subject}", lambda: self.client.delete_subject(subject))
