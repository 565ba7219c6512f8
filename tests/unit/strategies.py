"""Hypothesis strategies for every event (shared by the serde tests)."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import strategies as st

from schemas.models import (
    Column,
    ContentStrategy,
    DeadLetter,
    DeadLetterReason,
    FileEvent,
    GitReference,
    Header,
    InlineContent,
    ObjectReference,
    Op,
    RowEvent,
    RunCounts,
    RunEvent,
    RunEventKind,
    SkippedFile,
    SkipReason,
    TextEncoding,
    VerificationEvent,
    VerificationStatus,
)

text = st.text(max_size=40)
maybe_text = st.none() | text
longs = st.integers(min_value=0, max_value=2**63 - 1)
ints = st.integers(min_value=-(2**31), max_value=2**31 - 1)
sha = st.binary(min_size=32, max_size=32).map(bytes.hex)
# timestamp-millis: aware UTC datetimes at millisecond precision
times = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
).map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))

inline = st.builds(
    InlineContent, data=st.binary(max_size=200), encoding=st.sampled_from(TextEncoding)
)
object_ref = st.builds(
    ObjectReference, bucket=text, key=text, url=maybe_text, expires_at=st.none() | times
)
git_ref = st.builds(GitReference, url=text, commit=sha, ref=maybe_text, path=text, blob_id=sha)


@st.composite
def file_events(draw: st.DrawFn, *, legacy_path: bool | None = None) -> FileEvent:
    strategy = draw(st.none() | st.sampled_from(ContentStrategy))
    if legacy_path is None:
        local_path = draw(maybe_text)
    else:
        local_path = draw(text) if legacy_path else None
    return FileEvent(
        project=draw(text),
        path=draw(text),
        size=draw(longs),
        checksum=draw(sha),
        local_path=local_path,
        event_id=draw(st.just("") | sha),
        run_id=draw(maybe_text),
        op=draw(st.sampled_from(Op)),
        content_strategy=strategy,
        inline=draw(inline) if strategy is ContentStrategy.INLINE else None,
        object_ref=draw(object_ref) if strategy is ContentStrategy.OBJECT_STORAGE else None,
        git_ref=draw(git_ref) if strategy is ContentStrategy.GIT_REFERENCE else None,
        producer_version=draw(maybe_text),
        event_time=draw(st.none() | times),
    )


run_events = st.builds(
    RunEvent,
    run_id=text,
    kind=st.sampled_from(RunEventKind),
    project=text,
    source=text,
    commit=st.none() | sha,
    event_time=times,
    producer_version=maybe_text,
    counts=st.none()
    | st.builds(
        RunCounts,
        files=longs,
        bytes=longs,
        inline=longs,
        object_storage=longs,
        git_reference=longs,
        deleted=longs,
        skipped=longs,
    ),
    skipped=st.lists(
        st.builds(SkippedFile, path=text, reason=st.sampled_from(SkipReason), detail=maybe_text),
        max_size=5,
    ),
    skip_counts=st.dictionaries(text, longs, max_size=4),
    digest=st.none() | sha,
)

verification_events = st.builds(
    VerificationEvent,
    event_id=sha,
    run_id=maybe_text,
    project=text,
    path=text,
    status=st.sampled_from(VerificationStatus),
    expected_checksum=sha,
    actual_checksum=st.none() | sha,
    expected_size=longs,
    actual_size=st.none() | longs,
    detail=maybe_text,
    source_topic=text,
    source_partition=ints,
    source_offset=longs,
    verifier=text,
    verified_at=times,
)

dead_letters = st.builds(
    DeadLetter,
    topic=text,
    partition=ints,
    offset=longs,
    key=st.none() | st.binary(max_size=50),
    value=st.none() | st.binary(max_size=200),
    headers=st.lists(
        st.builds(Header, key=text, value=st.none() | st.binary(max_size=20)), max_size=4
    ),
    reason=st.sampled_from(DeadLetterReason),
    error=text,
    group=text,
    attempts=ints,
    failed_at=times,
)

columns = st.builds(Column, name=text, type=text, value=maybe_text)
row_events = st.builds(
    RowEvent,
    event_id=st.just("") | sha,
    run_id=text,
    batch_id=text,
    source=text,
    schema=text,
    table=text,
    key=st.lists(columns, min_size=1, max_size=3),
    row=st.lists(columns, max_size=6),
    checksum=sha,
    producer_version=maybe_text,
    event_time=times,
)
