"""A batch's RowEvents in the Confluent wire format, written straight from its text forms.

The archiver has each row as the text forms of its columns (``producers.tables.rows``),
and the names and types are the table's. Building a ``RowEvent`` model per row, dumping
it to a dict and handing that to fastavro costs more than all the rest of a batch
(about 20 us a column). :class:`RowEventWriter` writes the same bytes directly: the
names and types of each column are encoded once per table, the fields that are the
same for the whole batch once per batch, and per row only the values, the checksum
(``rows.checksum_items``) and the event id (``schemas.models.row_event_id``).

It writes RowEvent v1 (schemas/avro/row_event/v1.avsc), field by field in its order:
strings as a zig-zag varint length and UTF-8, ``["null", "string"]`` as branch 0 or 1,
an array as one block (its count, its items, then 0; an empty array is just the 0),
``event_time`` as timestamp-millis through fastavro's own converter.
tests/unit/test_row_codec_speed.py checks it byte for byte against ``EventSerializer``
on generated rows, and the archiver checks the first row of every batch against it
too (through the model and ``EventSerializer``), so a schema that moves on cannot go
unnoticed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

from fastavro.write import LOGICAL_WRITERS

from producers.tables.rows import canonical_items
from schemas.avro_writer import LENGTHS, avro_long, avro_string
from schemas.models import row_event_id

_MILLIS = LOGICAL_WRITERS["long-timestamp-millis"]


def _count(n: int) -> bytes:
    """An array's block count: none for an empty array, whose only block is the end."""
    return b"" if n == 0 else avro_long(n)


class EncodedRow(NamedTuple):
    """One row's event: its id, its checksum and its Kafka value."""

    event_id: str
    checksum: str
    value: bytes


class RowEventWriter:
    """RowEvents of one table's rows (its columns as (name, type), in ``SELECT *`` order)."""

    def __init__(
        self,
        columns: Sequence[tuple[str, str]],
        key: Sequence[int],  # the primary key's columns, as places in ``columns``
        *,
        run_id: str,
        source: str,
        schema: str,
        table: str,
        producer_version: str | None,
    ) -> None:
        self.columns = [(str(n), str(t)) for n, t in columns]
        self.key = list(key)
        self.run_id, self.source, self.schema, self.table = run_id, source, schema, table
        self.producer_version = producer_version
        self._prefixes = [avro_string(n) + avro_string(t) for n, t in self.columns]

    def encode(
        self,
        header: bytes,
        batch_id: str,
        event_time: datetime,
        rows: Sequence[Sequence[str | None]],
    ) -> list[EncodedRow]:
        """Each row's event: ``header`` (the magic byte and schema id), then the body."""
        source, schema, table = self.source, self.schema, self.table
        middle = b"".join(avro_string(s) for s in (self.run_id, batch_id, source, schema, table))
        version = self.producer_version
        tail = (b"\x00" if version is None else b"\x02" + avro_string(version)) + avro_long(
            _MILLIS(event_time, {})
        )
        columns, key, width = self.columns, self.key, len(self.columns)
        names, types = [n for n, _ in columns], [t for _, t in columns]
        key_names = [names[i] for i in key]
        key_start = _count(len(key))
        row_start = b"\x00" + _count(width)  # the key's end, then the row's count
        # Each column's name and type, then the union's branch: string, or null.
        strings = [p + b"\x02" for p in self._prefixes]
        nulls = [p + b"\x00" for p in self._prefixes]
        sha256, lengths = hashlib.sha256, LENGTHS
        found = []
        for values in rows:
            if len(values) != width:
                raise ValueError(f"{len(values)} values for {width} columns")
            checksum = sha256(
                canonical_items(list(zip(names, types, values, strict=True)))
            ).hexdigest()
            pairs = [(key_names[k], values[i]) for k, i in enumerate(key)]
            event_id = row_event_id(source, schema, table, pairs, checksum)
            parts = [header, avro_string(event_id), middle, key_start]
            append = parts.append
            for i in key:
                append(nulls[i] if values[i] is None else strings[i] + avro_string(values[i] or ""))
            append(row_start)
            for string, null, v in zip(strings, nulls, values):  # noqa: B905 - width checked
                if v is None:
                    append(null)
                else:
                    data = v.encode()
                    n = len(data)
                    append(string)
                    append(lengths[n] if n < 4096 else avro_long(n))
                    append(data)
            append(b"\x00")  # the row's end
            append(avro_string(checksum))
            append(tail)
            found.append(EncodedRow(event_id, checksum, b"".join(parts)))
        return found
