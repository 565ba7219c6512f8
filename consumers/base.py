"""The consumer runtime's contract with the groups' sinks.

A sink receives decoded batches and says, per partition, which position is
durable in its own storage; the runtime commits Kafka offsets only up to
that. On assignment the sink's own durable state decides where to start
(Kafka's committed offset is only the fallback), so a replay never writes a
second copy. Two kinds of sink share this contract:

- a file sink (the archive) buffers records into open segments and makes them
  durable later (on size, count, age or revocation): ``durable`` advances on
  its own, ``tick`` runs its timers;
- a transactional sink (a database) makes each ``write`` durable at once,
  with its positions in the same transaction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from schemas.models import Event

TopicPartition = tuple[str, int]


class Record(NamedTuple):
    """A Kafka record as consumed: its place, its bytes, its headers.

    Immutable, like every value the runtime hands a sink. A named tuple, not a
    frozen dataclass: the runtime builds one per record, and a frozen
    dataclass's ``__init__`` (``object.__setattr__`` per field) costs about
    0.8 us where a tuple costs 0.1 us. Copies with changes: ``record._replace``
    (not ``dataclasses.replace``). The runtime builds it by position, and checks
    on import that the fields are the ones it knows.
    """

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()


class Decoded(NamedTuple):
    """A record that decoded: as a model, or (for sinks that need none) as the
    reader schema's plain dict, which is cheaper. Immutable, a named tuple like
    :class:`Record`."""

    record: Record
    event: Event | None
    schema_id: int
    fields: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.fields is not None:
            return self.fields
        assert self.event is not None  # noqa: S101 - one of the two is always set
        return self.event.to_avro()


@dataclass(frozen=True)
class SinkCapabilities:
    """What the runtime may rely on, read instead of isinstance checks."""

    durable_on_write: bool  # True: a returned write() is durable (a database transaction)
    max_batch: int = 10_000
    needs_models: bool = True  # False: Decoded.fields (a plain dict) is enough
    # Records per batch the sink's own setting asks for (the load group's
    # load.batch_size); None: the runtime's (consumer.batch_size). Capped by max_batch.
    batch_size: int | None = None


class Sink(ABC):
    """A group's storage. Subclasses implement ``write`` and ``durable``."""

    capabilities = SinkCapabilities(durable_on_write=False)

    @abstractmethod
    def write(self, batch: Sequence[Decoded]) -> None:
        """Take a batch (records in offset order per partition); raise Transient or Terminal."""

    @abstractmethod
    def durable(self) -> dict[TopicPartition, int]:
        """Per partition, the next offset whose predecessors are all durable."""

    def positions(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Where to start each newly assigned partition, from the sink's own state."""
        durable = self.durable()
        return {tp: durable[tp] for tp in partitions if tp in durable}

    def bind(self, group_metadata: Callable[[], Any]) -> None:  # noqa: B027 - a hook
        """The runtime's consumer group metadata (a callable: it changes with each
        rebalance), for a sink that commits offsets in its own Kafka transaction."""

    def tick(self) -> None:  # noqa: B027 - a hook: file sinks run their timers here
        """Called every loop iteration, with or without records."""

    def release(self, partitions: Iterable[TopicPartition]) -> None:  # noqa: B027 - a hook
        """The partitions are being revoked: make what is held for them durable."""

    def close(self) -> None:  # noqa: B027 - a hook
        """Shut down: make everything durable that can be."""
