"""Fuzz event validation (schemas.validation) on whole events: any field values a decoded
event can hold, and any record timestamp, either pass or raise DeserializationError with
reason invalid_event or event_time_skew; what passes is a safe name, a byte count, a
sha256 and a time within the skew. (Names alone are fuzzed in test_validation.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.errors import DeserializationError, DeserializationReason
from schemas.models import FileEvent, RunEvent, VerificationEvent
from schemas.validation import check_for, name_problem

FUZZ = settings(
    max_examples=400, deadline=timedelta(seconds=2), suppress_health_check=[HealthCheck.too_slow]
)
CHECKED = {
    FileEvent: ("project", "path", "event_time"),
    RunEvent: ("project", None, "event_time"),
    VerificationEvent: ("project", "path", "verified_at"),
}
SHA = "ab" * 32
names = (
    st.text(max_size=20)
    | st.text(st.sampled_from("a./\\\x00\uff0e\u2025\ud800"), max_size=12)
    | st.sampled_from(["", "..", "/x", "a/b", "x" * 256, "a//b"])
)
junk = st.none() | st.integers() | st.binary(max_size=8) | st.floats() | st.booleans()
times = st.none() | st.datetimes(timezones=st.just(UTC)) | junk
checksums = st.sampled_from(["", SHA, SHA.upper(), SHA + "0", "g" * 64]) | st.text(max_size=70)
record_ms = st.integers(min_value=-1, max_value=2**63 - 1) | st.sampled_from([-1, 0])
skews = st.integers(min_value=0, max_value=10**12)


@st.composite
def fields(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "project": draw(names | junk),
        "path": draw(names | junk),
        "size": draw(st.integers(min_value=-(2**63), max_value=2**63 - 1) | junk),
        "checksum": draw(checksums | junk),
        "op": draw(st.sampled_from(["UPSERT", "DELETE"]) | junk),
        "event_time": draw(times),
        "verified_at": draw(times),
    }


@FUZZ
@given(
    model=st.sampled_from(list(CHECKED)),
    events=st.lists(fields(), min_size=1, max_size=4),
    stamps=st.lists(record_ms, min_size=4, max_size=4),
    skew=skews,
)
def test_any_fields_pass_or_are_refused_with_their_reason(
    model: type[FileEvent | RunEvent | VerificationEvent],
    events: list[dict[str, Any]],
    stamps: list[int],
    skew: int,
) -> None:
    """One check called on several events in turn (it caches the last project and second
    it saw: a cached value must not let a later bad event through)."""
    check = check_for(model, skew)
    assert check is not None
    project_field, path_field, time_field = CHECKED[model]
    for values, stamp in zip(events, stamps, strict=False):
        try:
            check(values, stamp)
        except DeserializationError as exc:
            assert exc.reason in (
                DeserializationReason.INVALID_EVENT,
                DeserializationReason.EVENT_TIME_SKEW,
            )
            continue
        assert name_problem(values[project_field]) is None
        if path_field is not None:
            assert name_problem(values[path_field]) is None
        if model is FileEvent:
            size, checksum = values["size"], values["checksum"]
            assert type(size) is int and size >= 0
            assert type(checksum) is str
            sha = len(checksum) == 64 and all(c in "0123456789abcdef" for c in checksum)
            assert sha or (checksum == "" and values["op"] == "DELETE")
        when = values[time_field]
        if stamp >= 0 and isinstance(when, datetime):
            assert int(when.timestamp() * 1000) - stamp <= skew
