"""The one exception root of headrace, classified twice.

Where it happened::

    HeadraceError
     ├── ConfigError          settings that cannot be used as given
     ├── StackError           the local stack could not install, start or stop a service
     ├── ServiceUnavailable   a service did not answer in time            (transient)
     │    └── KafkaUnavailable    no Kafka broker answered                (transient)
     ├── ProduceError         publishing to Kafka failed
     ├── ConsumeError         consuming from Kafka failed
     ├── SchemaError          the event contract or the registry refused something
     └── StorageError         object store, archive, cache or database failed

Whether to retry: every exception may also carry one marker, ``Transient``
(retry with backoff, never dead-letter) or ``Terminal`` (give up and
dead-letter). The markers derive from ``Exception`` so that ``except
Transient`` works across the tree; :func:`is_transient` reads them.
"""

from __future__ import annotations


class Transient(Exception):  # noqa: N818 - a marker, named for what it means
    """Marker: the same call may succeed later (broker, store, database down)."""


class Terminal(Exception):  # noqa: N818 - a marker, named for what it means
    """Marker: retrying cannot help; the input must be dead-lettered or fixed.

    ``dead_letter_reason`` names the DeadLetterReason symbol a consumer gives a
    record that a sink refuses with this error (a string: the core knows no schema)."""

    dead_letter_reason: str = "STORAGE_CONSTRAINT"


class HeadraceError(Exception):
    """Root of every error headrace raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(HeadraceError, Terminal):
    """Settings that cannot be used: a bad value, a missing config file."""


class StackError(HeadraceError):
    """The local stack could not install, start or stop one of its services."""

    def __init__(self, service: str, message: str) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service


class ServiceUnavailable(HeadraceError, Transient):
    """A service did not answer at its address within the time allowed."""

    def __init__(self, service: str, address: str, reason: str) -> None:
        super().__init__(f"{service} is not available at {address}: {reason}")
        self.service = service
        self.address = address
        self.reason = reason


class KafkaUnavailable(ServiceUnavailable):
    """No Kafka broker answered at the bootstrap servers within the time allowed."""

    def __init__(self, address: str, timeout_s: float, reason: str) -> None:
        super().__init__("Kafka", address, reason)
        self.message = f"no Kafka broker answered at {address} within {timeout_s:.0f}s ({reason})"


class ProduceError(HeadraceError):
    """Publishing to Kafka failed."""


class ConsumeError(HeadraceError):
    """Consuming from Kafka failed."""


class SchemaError(HeadraceError):
    """The event contract or the schema registry refused something."""


class StorageError(HeadraceError):
    """The object store, the archive, a cache or a database failed."""


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is worth retrying: marked transient and not terminal."""
    return isinstance(exc, Transient) and not isinstance(exc, Terminal)
