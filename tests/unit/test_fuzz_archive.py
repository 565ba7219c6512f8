"""Fuzz the archive's line reader: any line either decodes or raises ValueError; any
segment's bytes (zstd, gzip or plain; intact, truncated, flipped or with garbage after
them) give their lines or :class:`ArchiveCorrupt` (DecompressionError, PartialLine);
encode_line then decode_line is the identity on generated records."""

from __future__ import annotations

import gzip
import io
from datetime import UTC, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.archive.layout import (
    ArchiveCorrupt,
    ArchiveRecord,
    Compression,
    decode_line,
    encode_line,
)
from storage.archive.reader import DecompressionError, PartialLine, iter_lines

FUZZ = settings(
    max_examples=300,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# The line fuzzers draw large events: fewer examples keep the file near 12 s on one core.
FEW = settings(FUZZ, max_examples=120)
HEAD = (
    b'{"topic":"t","partition":0,"offset":0,"timestamp_ms":0,"event_time_ms":0,'
    b'"key":null,"schema_id":null,"event":'
)
unicode = st.text(st.characters(codec="utf-8"), max_size=12)  # no lone surrogates
keys = unicode | st.sampled_from(["$bytes", "$datetime", "$date", "$time", "$decimal", "$map"])
leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | unicode
    | st.binary(max_size=24)
    | st.datetimes(timezones=st.none() | st.just(UTC) | st.just(timezone(timedelta(hours=-5))))
    | st.dates()
    | st.times()
    | st.decimals(allow_nan=False, allow_infinity=False)
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=24,
)
events = st.dictionaries(keys, values, max_size=6)
numbers = st.integers(min_value=-(2**63), max_value=2**64 - 1)
records = st.builds(
    ArchiveRecord,
    topic=unicode,
    partition=numbers,
    offset=numbers,
    timestamp_ms=numbers,
    event_time_ms=numbers,
    key=st.none() | st.binary(max_size=32),
    schema_id=st.none() | numbers,
    event=events,
)


def decoded(line: bytes) -> ArchiveRecord | None:
    """The record, or None for the documented ValueError; anything else fails."""
    try:
        return decode_line(line)
    except ValueError:
        return None


@FEW
@given(record=records)
def test_a_line_round_trips(record: ArchiveRecord) -> None:
    line = encode_line(record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_line(line[:-1]) == record
    assert decode_line(line) == record


@FUZZ
@given(line=st.binary(max_size=300))
def test_random_bytes(line: bytes) -> None:
    decoded(line)


@FEW
@given(event=st.recursive(values, lambda inner: st.dictionaries(keys, inner, max_size=3)))
def test_any_json_as_the_event(event: Any) -> None:
    """Whatever JSON stands where the event is (tags with wrong values, unknown tags,
    $map of a non-object): a record or ValueError."""
    try:
        body = orjson.dumps(event, default=str)
    except TypeError:  # a value orjson does not write at all
        return
    decoded(HEAD + body + b"}")
    decoded(HEAD + body.replace(b'"$', b'"\\u0024') + b"}")


@FEW
@given(record=records, data=st.data())
def test_mutated_lines(record: ArchiveRecord, data: st.DataObject) -> None:
    line = bytearray(encode_line(record))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        at = data.draw(st.integers(min_value=0, max_value=len(line) - 1))
        action = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        if action == "flip":
            line[at] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
        elif action == "truncate":
            del line[at:]
        elif action == "insert":
            line[at:at] = data.draw(st.binary(min_size=1, max_size=6) | st.sampled_from(PIECES))
        else:
            del line[at]
        if not line:
            break
    decoded(bytes(line))


PIECES = [b'{"$bytes":"', b'{"$map":', b'{"\\u0024datetime":"', b"[" * 40, b"}", b'"', b"\\"]


@pytest.mark.parametrize("depth", [10, 250, 500, 1000, 1023, 1030])
@pytest.mark.parametrize("container", [(b'{"a":', b"}"), (b"[", b"]")])
def test_deep_nesting_is_a_value_error(depth: int, container: tuple[bytes, bytes]) -> None:
    """A tagged value under a thousand levels: restoring it must not overflow the stack
    (RecursionError is no ValueError: the reader would not report the segment corrupt)."""
    opening, closing = container
    event = b'{"a":' + opening * depth + b'{"$bytes":"AA=="}' + closing * depth + b"}"
    record = decoded(HEAD + event + b"}")
    assert record is None or depth < 300


# --- segment files -----------------------------------------------------------------

lines = st.lists(st.binary(max_size=60).map(lambda b: b.replace(b"\n", b" ")), max_size=12)


def compress(frames: list[list[bytes]], compression: Compression) -> tuple[bytes, list[int]]:
    """The file of these frames (zstd frames, gzip members, or plain text), and the offset
    where each frame ends."""
    out, ends = io.BytesIO(), []
    for frame in frames:
        text = b"".join(line + b"\n" for line in frame)
        if compression is Compression.ZSTD:
            out.write(zstandard.ZstdCompressor(write_checksum=True).compress(text))
        elif compression is Compression.GZIP:
            out.write(gzip.compress(text, mtime=0))
        else:
            out.write(text)
        ends.append(out.tell())
    return out.getvalue(), ends


class Trickle:
    """A file that returns at most ``step`` bytes a read: chunks end anywhere."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._at, self._step = data, 0, step

    def read(self, size: int, /) -> bytes:
        size = min(size, self._step)
        chunk = self._data[self._at : self._at + size]
        self._at += len(chunk)
        return chunk


def read_lines(data: bytes, compression: Compression, step: int) -> tuple[list[bytes], bool]:
    """The lines read, and whether reading ended without error; only ArchiveCorrupt's
    two documented kinds may be raised."""
    got: list[bytes] = []
    try:
        for line in iter_lines(Trickle(data, step), compression, "fuzz.jsonl"):
            got.append(line)
    except (DecompressionError, PartialLine) as exc:
        assert isinstance(exc, ArchiveCorrupt) and "fuzz.jsonl" in str(exc)
        return got, False
    return got, True


compressions = st.sampled_from(Compression)
steps = st.sampled_from([1, 3, 7, 64, 1 << 20])


@FUZZ
@given(frames=st.lists(lines, min_size=1, max_size=4), compression=compressions, step=steps)
def test_an_intact_segment_gives_its_lines(
    frames: list[list[bytes]], compression: Compression, step: int
) -> None:
    data, _ = compress(frames, compression)
    if compression is Compression.NONE or data:
        assert read_lines(data, compression, step) == ([x for f in frames for x in f], True)


@FUZZ
@given(
    frames=st.lists(lines, min_size=1, max_size=4),
    compression=compressions,
    step=steps,
    data=st.data(),
)
def test_a_truncated_segment_is_reported_unless_cut_between_frames(
    frames: list[list[bytes]], compression: Compression, step: int, data: st.DataObject
) -> None:
    whole, ends = compress(frames, compression)
    if not whole:
        return
    cut = data.draw(st.integers(min_value=0, max_value=len(whole) - 1))
    got, clean = read_lines(whole[:cut], compression, step)
    everything = [x for f in frames for x in f]
    assert got == everything[: len(got)]  # a prefix, never a changed line
    if compression is Compression.NONE:
        assert clean == (cut == 0 or whole[cut - 1 : cut] == b"\n")
    elif cut in ends:  # at a frame's end: the file of the frames before
        kept = ends.index(cut) + 1
        assert (got, clean) == ([x for f in frames[:kept] for x in f], True)
    else:
        assert not clean


@FUZZ
@given(
    frames=st.lists(lines, min_size=1, max_size=3),
    compression=st.sampled_from([Compression.ZSTD, Compression.GZIP]),
    step=steps,
    data=st.data(),
)
def test_a_damaged_or_extended_segment(
    frames: list[list[bytes]], compression: Compression, step: int, data: st.DataObject
) -> None:
    """Flipped bits inside, or garbage after, a compressed segment: its lines, or the
    typed error; with garbage after it, the lines before are the segment's own."""
    whole = bytearray(compress(frames, compression)[0])
    everything = [x for f in frames for x in f]
    if data.draw(st.booleans()):
        at = data.draw(st.integers(min_value=0, max_value=len(whole) - 1))
        whole[at] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
        read_lines(bytes(whole), compression, step)
    else:
        garbage = data.draw(st.binary(min_size=1, max_size=40))
        got, clean = read_lines(bytes(whole) + garbage, compression, step)
        assert got[: len(everything)] == everything[: len(got)]
        assert not clean or got[: len(everything)] == everything


@FUZZ
@given(data=st.binary(max_size=400), compression=compressions, step=steps)
def test_random_bytes_as_a_segment(data: bytes, compression: Compression, step: int) -> None:
    read_lines(data, compression, step)


def test_empty_compressed_segments_are_truncated() -> None:
    for compression in (Compression.ZSTD, Compression.GZIP):
        assert read_lines(b"", compression, 1) == ([], False)
    assert read_lines(b"", Compression.NONE, 1) == ([], True)


def test_decimals_and_times_are_restored_by_value() -> None:
    record = ArchiveRecord("t", 0, 0, 0, 0, None, None, {"d": Decimal("-0.00"), "x": [b""]})
    assert decode_line(encode_line(record)) == record
