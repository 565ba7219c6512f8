"""Avro's binary primitives, for the hand-written writers of the hot paths.

``producers/prepare.py`` (an inline file's FileEvent body) and
``producers/tables/wire.py`` (a RowEvent) write Avro bodies straight from their
inputs, where fastavro's record writer cost more than all else per event; both are
checked against fastavro's bytes at run time. These are the two encodings they share.
"""

from __future__ import annotations


def avro_long(n: int) -> bytes:
    """Avro's long: zig-zag, then a little-endian base-128 varint."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


# The length prefixes of strings shorter than 4 KiB, made once.
LENGTHS = [avro_long(n) for n in range(4096)]


def avro_string(text: str) -> bytes:
    """Avro's string: its UTF-8 length as a long, then the bytes."""
    data = text.encode()
    n = len(data)
    return (LENGTHS[n] if n < 4096 else avro_long(n)) + data
