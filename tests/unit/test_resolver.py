"""The content resolver with fakes: every strategy verified, hostile references refused."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from storage.content.cache import ContentCache
from storage.content.download import Downloader
from storage.content.errors import (
    ChecksumMismatch,
    ContentRefused,
    ContentUnavailable,
    PayloadMissing,
)
from storage.content.guard import allowed_endpoint
from storage.content.resolver import ContentResolver, ResolverPolicy

ENDPOINT = "127.0.0.1:9000"
BUCKET = "headrace-content"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key_of(data: bytes) -> str:
    digest = sha(data)
    return f"sha256/{digest[:2]}/{digest[2:4]}/{digest}"


def inline_event(data: bytes, checksum: str | None = None) -> dict[str, Any]:
    return {
        "project": "p",
        "path": "a.txt",
        "size": len(data),
        "checksum": checksum or sha(data),
        "content_strategy": "INLINE",
        "inline": {"data": data, "encoding": "UTF_8"},
    }


def object_event(
    data: bytes, *, url: str | None = "default", expires: datetime | None = None, **over: Any
) -> dict[str, Any]:
    key = key_of(data)
    if url == "default":
        url = f"http://{ENDPOINT}/{BUCKET}/{key}?X-Amz-Signature=secret"
    event = {
        "project": "p",
        "path": "big.bin",
        "size": len(data),
        "checksum": sha(data),
        "content_strategy": "OBJECT_STORAGE",
        "object_ref": {"bucket": BUCKET, "key": key, "url": url, "expires_at": expires},
    }
    event.update(over)
    return event


def git_event(data: bytes, *, url: str = "https://git.example/r.git", path: str = "f.txt",
              commit: str = "a" * 40) -> dict[str, Any]:  # fmt: skip
    return {
        "project": "p",
        "path": path,
        "size": len(data),
        "checksum": sha(data),
        "content_strategy": "GIT_REFERENCE",
        "git_ref": {"url": url, "commit": commit, "path": path, "blob_id": "b" * 40},
    }


class Store:
    """An object store behind httpx.MockTransport: counts requests, can fail or expire."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.fail_next = 0
        self.expired_signatures: set[str] = set()

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(str(request.url))
        if self.fail_next:
            self.fail_next -= 1
            return httpx.Response(503, text="SlowDown")
        signature = request.url.params.get("X-Amz-Signature", "")
        if signature in self.expired_signatures:
            return httpx.Response(403, text="<Code>AccessDenied</Code>Request has expired")
        data = self.objects.get(request.url.path)
        if data is None:
            return httpx.Response(404, text="<Code>NoSuchKey</Code>")
        # streamed, as a real server's body is (not read ahead like content=)
        headers = {"Content-Length": str(len(data))}
        return httpx.Response(200, headers=headers, stream=httpx.ByteStream(data))


class FakeGit:
    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs
        self.calls: list[tuple[str, str, int]] = []

    def read_blobs(
        self,
        url: str,
        commit: str,
        items: Sequence[tuple[str, str | None]],
        *,
        token: str | None = None,
    ) -> Iterator[tuple[tuple[str, str | None], bytes]]:
        self.calls.append((url, commit, len(items)))
        for item in items:
            if item[0] in self.blobs:
                yield item, self.blobs[item[0]]


def make(
    tmp_path: Path,
    store: Store | None = None,
    *,
    signer: bool = True,
    git: FakeGit | None = None,
    max_object_size: int = 10**9,
    stream_threshold: int = 1024,
    cache: bool = True,
) -> ContentResolver:
    store = store or Store()
    policy = ResolverPolicy(
        stream_threshold=stream_threshold,
        max_object_size=max_object_size,
        endpoints=(allowed_endpoint(ENDPOINT, False),),
        buckets=(BUCKET,),
    )

    def sign(bucket: str, key: str) -> str:
        return f"http://{ENDPOINT}/{bucket}/{key}?X-Amz-Signature=fresh"

    return ContentResolver(
        policy,
        downloader=Downloader(
            timeout_s=5,
            attempts=3,
            max_size=max_object_size,
            backoff_s=0.001,
            transport=httpx.MockTransport(store.handler),
        ),
        cache=ContentCache(tmp_path / "cache", 10**7) if cache else None,
        signer=sign if signer else None,
        git=git,
        spool_dir=tmp_path,
    )


def test_inline_content_is_verified(tmp_path: Path) -> None:
    resolver = make(tmp_path)
    assert resolver.resolve(inline_event(b"hello")).read_bytes() == b"hello"
    with pytest.raises(ChecksumMismatch, match="hash to"):
        resolver.resolve(inline_event(b"hello", checksum=sha(b"other")))


def test_an_object_is_fetched_once_then_served_from_the_cache(tmp_path: Path) -> None:
    store = Store()
    data = b"x" * 5000
    store.objects[f"/{BUCKET}/{key_of(data)}"] = data
    resolver = make(tmp_path, store)
    first = resolver.resolve(object_event(data))
    second = resolver.resolve(object_event(data))
    assert (first.source, second.source) == ("fetched", "cache")
    assert first.read_bytes() == second.read_bytes() == data
    assert first.file is not None  # above the stream threshold: a file, not bytes
    assert len(store.requests) == 1


def test_an_expired_url_is_signed_again(tmp_path: Path) -> None:
    store = Store()
    data = b"payload"
    store.objects[f"/{BUCKET}/{key_of(data)}"] = data
    store.expired_signatures.add("secret")
    resolver = make(tmp_path, store)
    assert resolver.resolve(object_event(data)).read_bytes() == data
    assert [r.rsplit("=", 1)[1] for r in store.requests] == ["secret", "fresh"]
    past = datetime.now(UTC) - timedelta(hours=1)  # known expired: no request with it
    store.requests.clear()
    resolver.cache = None
    assert resolver.resolve(object_event(data, expires=past)).read_bytes() == data
    assert [r.rsplit("=", 1)[1] for r in store.requests] == ["fresh"]


def test_an_expired_url_without_credentials_is_a_clear_terminal_error(tmp_path: Path) -> None:
    store = Store()
    store.expired_signatures.add("secret")
    data = b"payload"
    store.objects[f"/{BUCKET}/{key_of(data)}"] = data
    with pytest.raises(PayloadMissing, match="no object-store credentials are configured"):
        make(tmp_path, store, signer=False).resolve(object_event(data))


def test_transient_failures_are_retried_three_times(tmp_path: Path) -> None:
    store = Store()
    data = b"payload"
    store.objects[f"/{BUCKET}/{key_of(data)}"] = data
    store.fail_next = 2
    assert make(tmp_path, store).resolve(object_event(data)).read_bytes() == data
    store.fail_next = 3
    with pytest.raises(ContentUnavailable, match="HTTP 503"):
        make(tmp_path / "2", store).resolve(object_event(data))
    assert len(store.requests) == 6


def test_changed_bytes_in_the_store_are_a_checksum_error(tmp_path: Path) -> None:
    store = Store()
    data = b"original"
    store.objects[f"/{BUCKET}/{key_of(data)}"] = b"tampered"
    with pytest.raises(ChecksumMismatch, match="hashing to"):
        make(tmp_path, store).resolve(object_event(data))
    store.objects[f"/{BUCKET}/{key_of(data)}"] = b"longer than it was"
    with pytest.raises(ChecksumMismatch, match="holds 18 bytes"):
        make(tmp_path, store).resolve(object_event(data))
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def test_a_missing_object_is_payload_missing(tmp_path: Path) -> None:
    with pytest.raises(PayloadMissing, match="404"):
        make(tmp_path).resolve(object_event(b"gone"))


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://169.254.169.254/latest/meta-data", "not a configured object-store endpoint"),
        ("http://127.0.0.1:9001/headrace-content/x", "not a configured object-store endpoint"),
        ("https://127.0.0.1:9000/headrace-content/x", "not a configured object-store endpoint"),
        ("file:///etc/passwd", "is not http"),
        ("http://user:pw@127.0.0.1:9000/x", "carries credentials"),
        ("http://127.0.0.1:9000/other-bucket/key", "does not name"),
    ],
)
def test_a_hostile_url_is_refused_before_any_request(tmp_path: Path, url: str, why: str) -> None:
    store = Store()
    with pytest.raises(ContentRefused, match=why):
        make(tmp_path, store).resolve(object_event(b"data", url=url))
    assert store.requests == []


def test_re_signing_is_only_for_configured_buckets(tmp_path: Path) -> None:
    event = object_event(b"data", url=None)
    event["object_ref"]["bucket"] = "headrace-archive"
    with pytest.raises(ContentRefused, match="not a configured content bucket"):
        make(tmp_path).resolve(event)


def test_a_size_above_the_maximum_is_refused_before_the_download(tmp_path: Path) -> None:
    store = Store()
    with pytest.raises(ContentRefused, match="above the maximum"):
        make(tmp_path, store, max_object_size=10).resolve(object_event(b"x" * 11))
    assert store.requests == []


def test_a_body_longer_than_announced_is_cut_off(tmp_path: Path) -> None:
    data = b"x" * 100

    # The server sends more than the event's size (no Content-Length: chunked).
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=iter([data, data]))

    resolver = make(tmp_path)
    resolver.downloader = Downloader(
        timeout_s=5, attempts=1, max_size=10**6, transport=httpx.MockTransport(handler)
    )
    with pytest.raises(ChecksumMismatch, match="more than the 100 bytes"):
        resolver.resolve(object_event(data))


def test_git_references_of_one_commit_are_read_in_one_batch(tmp_path: Path) -> None:
    git = FakeGit({"a.txt": b"A", "b.txt": b"B"})
    resolver = make(tmp_path, git=git)
    events = [git_event(b"A", path="a.txt"), git_event(b"B", path="b.txt")]
    results = resolver.resolve_many(events)
    assert [r.read_bytes() for r in results if not isinstance(r, Exception)] == [b"A", b"B"]
    assert git.calls == [("https://git.example/r.git", "a" * 40, 2)]
    again = resolver.resolve_many(events)  # now cached: no git call
    assert [getattr(r, "source", None) for r in again] == ["cache", "cache"]
    assert len(git.calls) == 1


def test_one_bad_git_blob_does_not_fail_the_others(tmp_path: Path) -> None:
    git = FakeGit({"a.txt": b"A", "b.txt": b"not B"})
    results = make(tmp_path, git=git).resolve_many(
        [git_event(b"A", path="a.txt"), git_event(b"B", path="b.txt")]
    )
    assert not isinstance(results[0], Exception) and results[0].read_bytes() == b"A"
    assert isinstance(results[1], ChecksumMismatch)


def test_a_v1_event_reads_its_local_path_when_readable(tmp_path: Path) -> None:
    source = tmp_path / "legacy.txt"
    source.write_bytes(b"legacy bytes")
    event = {"project": "p", "path": "legacy.txt", "size": 12, "checksum": sha(b"legacy bytes"),
             "local_path": str(source)}  # fmt: skip
    resolver = make(tmp_path)
    resolved = resolver.resolve(event)
    assert (resolved.source, resolved.read_bytes()) == ("local", b"legacy bytes")
    event["local_path"] = str(tmp_path / "not-here.txt")
    with pytest.raises(PayloadMissing, match="not readable here"):
        resolver.resolve(event)
    assert resolver.counts["payload_missing_v1"] == 1


def test_without_a_cache_large_content_is_spooled_and_verified(tmp_path: Path) -> None:
    store = Store()
    data = b"y" * 4096
    store.objects[f"/{BUCKET}/{key_of(data)}"] = data
    resolved = make(tmp_path, store, cache=False).resolve(object_event(data))
    assert resolved.file is not None and resolved.file.parent == tmp_path
    assert resolved.file.read_bytes() == data


def test_a_v1_path_that_is_not_a_regular_file_is_never_read(tmp_path: Path) -> None:
    event = {"project": "p", "path": "zero", "size": 10, "checksum": sha(b"0" * 10),
             "local_path": "/dev/zero"}  # fmt: skip
    with pytest.raises(PayloadMissing, match="not a regular file"):
        make(tmp_path).resolve(event)
    grown = tmp_path / "grown.txt"
    grown.write_bytes(b"x" * 10_000_000)
    event = {"project": "p", "path": "grown.txt", "size": 3, "checksum": sha(b"xxx"),
             "local_path": str(grown)}  # fmt: skip
    with pytest.raises(ChecksumMismatch, match="holds 1048576 bytes"):  # one chunk, no more
        make(tmp_path).resolve(event)


def test_a_url_refused_again_after_signing_is_payload_missing(tmp_path: Path) -> None:
    store = Store()
    data = b"payload"
    store.objects[f"/{BUCKET}/{key_of(data)}"] = data
    store.expired_signatures.update({"secret", "fresh"})
    with pytest.raises(PayloadMissing, match="refuses a URL signed just now"):
        make(tmp_path, store).resolve(object_event(data))


def test_a_spooled_file_is_the_callers_to_discard(tmp_path: Path) -> None:
    store = Store()
    data = b"z" * 4096
    store.objects[f"/{BUCKET}/{key_of(data)}"] = data
    resolved = make(tmp_path, store, cache=False).resolve(object_event(data))
    assert resolved.spooled and resolved.file is not None and resolved.file.exists()
    resolved.discard()
    assert not resolved.file.exists()
    cached = make(tmp_path, store).resolve(object_event(data))
    assert not cached.spooled
    cached.discard()  # a cache entry stays
    assert cached.file is not None and cached.file.exists()
