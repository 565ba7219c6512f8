"""Events in the Confluent wire format: magic byte 0, 4-byte schema id, Avro body.

Serializers are callables ``(event, ctx) -> bytes``; deserializers
``(bytes, ctx) -> event``. Both use confluent-kafka's registry client (subject
per topic: ``<topic>-value``) and fastavro, as confluent-kafka's own Avro serde
does, without its per-message overhead. Reading resolves *any* registered
writer version into the local reader schema with fastavro, and turns every
way bytes can be wrong into one typed, terminal
:class:`~schemas.errors.DeserializationError` that names the reason; only a
registry that does not answer is transient.
"""

from __future__ import annotations

import io
import threading
from typing import Any, Generic, TypeVar

import fastavro
import httpx2
import orjson
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import SerializationContext
from fastavro.read import SchemaResolutionError
from pydantic import ValidationError

from schemas import catalog
from schemas.avro_reader import Reader, compile_reader
from schemas.catalog import EventType
from schemas.errors import DeserializationError, RegistryUnavailable
from schemas.errors import DeserializationReason as Reason
from schemas.models import EVENT_MODELS, Event
from schemas.registry import explain

E = TypeVar("E", bound=Event)
MAGIC_BYTE = 0
HEADER_SIZE = 5


def _registry_url(client: SchemaRegistryClient) -> str:
    """The registry's URL, for messages (the client's config also holds credentials)."""
    conf: dict[str, Any] = client.config()  # type: ignore[no-untyped-call]
    return str(conf.get("url", "the schema registry")).split(",")[0]


class EventSerializer:
    """``(event, ctx) -> bytes``: the latest local schema of the event's type, or the
    ``writer_version`` given (for producers that must still write an older one).

    The schema is registered (or, without ``auto_register``, looked up) once per
    subject through the registry client; each event is then the 5-byte header
    and fastavro's body. confluent-kafka's ``AvroSerializer`` does the same
    but spends about 56 us an event on per-message rule and subject handling,
    more than the rest of an ingest together (measured with cProfile, 5,000
    inline files).
    """

    def __init__(
        self,
        client: SchemaRegistryClient,
        event_type: EventType,
        *,
        auto_register: bool = True,
        writer_version: int | None = None,
    ) -> None:
        writer = (
            catalog.latest(event_type)
            if writer_version is None
            else catalog.version(event_type, writer_version)
        )
        self.event_type = event_type
        self.model = EVENT_MODELS[event_type]
        self._client = client
        self._auto_register = auto_register
        self._schema = Schema(writer.text, "AVRO")
        self._parsed = fastavro.parse_schema(writer.json)
        self._headers: dict[str, bytes] = {}  # subject -> magic byte and schema id
        self._lock = threading.Lock()

    def __call__(self, event: Event, ctx: SerializationContext) -> bytes:
        if not isinstance(event, self.model):
            raise TypeError(f"expected {self.model.__name__}, got {type(event).__name__}")
        body = io.BytesIO()
        body.write(self.header(ctx))
        fastavro.schemaless_writer(body, self._parsed, event.to_avro())
        return body.getvalue()

    def header(self, ctx: SerializationContext) -> bytes:
        """The magic byte and schema id of the topic's subject (registered once): what
        precedes an Avro body written elsewhere with the same schema."""
        subject = f"{ctx.topic}-value"
        return self._headers.get(subject) or self._register(subject, ctx.topic)

    def _register(self, subject: str, topic: str) -> bytes:
        with self._lock:
            if subject in self._headers:
                return self._headers[subject]
            try:
                schema_id: int | None
                if self._auto_register:
                    schema_id = self._client.register_schema(subject, self._schema)
                else:
                    schema_id = self._client.lookup_schema(subject, self._schema).schema_id
            except SchemaRegistryError as exc:
                raise explain(exc, f"serializing {self.event_type.value} to {topic}") from None
            except httpx2.TransportError as exc:
                raise RegistryUnavailable(_registry_url(self._client), str(exc)) from None
            header = bytes([MAGIC_BYTE]) + int(schema_id or 0).to_bytes(4, "big")
            self._headers[subject] = header
            return header


class EventDeserializer(Generic[E]):
    """``(bytes, ctx) -> event``: any writer version, read as the reader version."""

    def __init__(
        self, client: SchemaRegistryClient, model: type[E], reader_version: int | None = None
    ) -> None:
        event_type = model.event_type
        reader = (
            catalog.latest(event_type)
            if reader_version is None
            else catalog.version(event_type, reader_version)
        )
        self.model = model
        self._client = client
        self._reader = fastavro.parse_schema(reader.json)
        # Bytes written with the reader's own schema (nearly all of them) are read by a
        # reader compiled from it, about twice as fast as fastavro and with the same
        # result (schemas/avro_reader.py); others are resolved by fastavro.
        self._compiled = compile_reader(self._reader)
        self._compiled_by_header: dict[bytes, Reader] = {}  # wire-format header -> reader
        self._writers: dict[int, Any] = {}
        self._lock = threading.Lock()

    def __call__(self, data: bytes | None, ctx: SerializationContext | None = None) -> E:
        record = self.decode(data)
        try:
            return self.model.from_avro(record)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise DeserializationError(
                Reason.INVALID_EVENT, f"not a valid {self.model.__name__}: {where}: {first['msg']}"
            ) from None

    def decode(self, data: bytes | None) -> dict[str, Any]:
        """The record as the reader schema's dict, without building the model: for sinks
        that store what was published as it is (the archive)."""
        if data is None:
            raise DeserializationError(Reason.EMPTY, "no value (a tombstone): not an event")
        if len(data) <= HEADER_SIZE:
            raise DeserializationError(
                Reason.EMPTY, f"{len(data)} bytes: no more than the wire-format header"
            )
        compiled = self._compiled_by_header.get(data[:HEADER_SIZE])
        if compiled is not None:  # a header seen before, of the reader's own schema
            try:  # _read_compiled inline: this is every record's path
                record, end = compiled(data, HEADER_SIZE)
            except Exception:  # noqa: BLE001 - every way bytes can be wrong: said below
                return self._read_compiled(compiled, data)
            if end == len(data):
                return record  # type: ignore[no-any-return]
            return self._read_compiled(compiled, data)  # raises: bytes left after the record
        if data[0] != MAGIC_BYTE:
            raise DeserializationError(
                Reason.BAD_MAGIC_BYTE, f"first byte is {data[0]}, not 0: not Confluent wire format"
            )
        schema_id = int.from_bytes(data[1:HEADER_SIZE], "big")
        writer = self._writer(schema_id)
        if writer is self._reader and self._compiled is not None:
            self._compiled_by_header[data[:HEADER_SIZE]] = self._compiled
            return self._read_compiled(self._compiled, data)
        body = io.BytesIO(data)
        body.seek(HEADER_SIZE)
        try:
            # The same schema as the reader's needs no resolution step (and is faster).
            record = fastavro.schemaless_reader(
                body, writer, None if writer is self._reader else self._reader
            )
        except SchemaResolutionError as exc:
            raise DeserializationError(
                Reason.UNRESOLVABLE_SCHEMA,
                f"schema id {schema_id} cannot be read as {self.model.__name__}: {str(exc)[:200]}",
            ) from None
        except Exception as exc:  # fastavro raises many types on garbage; all mean corrupt
            raise DeserializationError(
                Reason.CORRUPT_PAYLOAD,
                f"schema id {schema_id}: {type(exc).__name__}: {str(exc)[:200]}",
            ) from None
        if body.tell() != len(data):
            raise DeserializationError(
                Reason.CORRUPT_PAYLOAD, f"{len(data) - body.tell()} bytes left after the record"
            )
        if not isinstance(record, dict):
            raise DeserializationError(Reason.INVALID_EVENT, "the payload is not a record")
        return record

    def _read_compiled(self, read: Reader, data: bytes) -> dict[str, Any]:
        try:
            record, end = read(data, HEADER_SIZE)
        except Exception as exc:  # noqa: BLE001 - every way bytes can be wrong: corrupt
            schema_id = int.from_bytes(data[1:HEADER_SIZE], "big")
            raise DeserializationError(
                Reason.CORRUPT_PAYLOAD,
                f"schema id {schema_id}: {type(exc).__name__}: {str(exc)[:200]}",
            ) from None
        if end != len(data):
            raise DeserializationError(
                Reason.CORRUPT_PAYLOAD, f"{len(data) - end} bytes left after the record"
            )
        return record  # type: ignore[no-any-return]

    def _writer(self, schema_id: int) -> Any:
        """The parsed writer schema for ``schema_id``, fetched once per id."""
        with self._lock:
            if schema_id in self._writers:
                return self._writers[schema_id]
        try:
            registered = self._client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise DeserializationError(
                    Reason.UNKNOWN_SCHEMA_ID, f"the registry has no schema with id {schema_id}"
                ) from None
            raise explain(exc, f"fetching schema id {schema_id}") from None
        except httpx2.TransportError as exc:
            raise RegistryUnavailable(_registry_url(self._client), str(exc)) from None
        if (registered.schema_type or "AVRO") != "AVRO":
            raise DeserializationError(
                Reason.UNRESOLVABLE_SCHEMA,
                f"schema id {schema_id} is {registered.schema_type}, not Avro",
            )
        try:
            parsed = fastavro.parse_schema(orjson.loads(registered.schema_str or ""))
        except Exception as exc:  # a registered schema fastavro cannot parse
            raise DeserializationError(
                Reason.UNRESOLVABLE_SCHEMA,
                f"schema id {schema_id} does not parse: {str(exc)[:200]}",
            ) from None
        if parsed == self._reader:
            parsed = self._reader  # identical to the reader: read without resolving
        with self._lock:
            self._writers[schema_id] = parsed
        return parsed
