"""``headrace cache stats|prune`` on a cache in a temporary directory, and the cache
group's sink with fakes: hits and fetches counted, refusals by index, metrics."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from consumers.base import Decoded, Record
from consumers.cache.metrics import CacheMetrics
from consumers.cache.sink import CacheSink
from consumers.errors import RecordsRefused
from storage.content.cache import ContentCache
from storage.content.download import Downloader
from storage.content.resolver import ContentResolver, ResolverPolicy
from tests.unit.test_cli import run


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HEADRACE_CACHE__DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HEADRACE_CACHE__MAX_SIZE", "1KiB")
    return tmp_path / "cache"


def test_stats_and_prune(cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = ContentCache(cache_dir, 1024)
    for i in range(4):
        blob = bytes([i]) * 200
        cache.put(sha(blob), 200, blob, "OBJECT_STORAGE")
    cache.read(sha(bytes([3]) * 200), 200, "OBJECT_STORAGE")
    cache.read(sha(b"absent"), 6, "GIT_REFERENCE")
    code, out, _ = run(["cache", "stats", "--json"], capsys)
    stats = json.loads(out)
    assert code == 0
    assert (stats["entries"], stats["bytes"], stats["hits"], stats["misses"]) == (4, 800, 1, 1)
    assert stats["hit_rate"] == 0.5 and stats["max_size"] == 1024
    assert stats["by_strategy"]["GIT_REFERENCE"]["misses"] == 1
    code, out, _ = run(["cache", "stats"], capsys)
    assert code == 0 and "all" in out and "50.0%" in out
    code, out, _ = run(["cache", "prune", "--to", "300B"], capsys)
    assert code == 0 and "evicted 3 entries" in out
    assert ContentCache(cache_dir, 1024).size() == 200


def test_a_bad_size_is_one_readable_line(
    cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["cache", "prune", "--to", "lots"], capsys)
    assert code == 2
    assert err.startswith("headrace: error: Invalid value for --to: 'lots' is not a size")
    assert len(err.strip().splitlines()) == 1


class Git:
    def read_blobs(
        self, url: str, commit: str, items: Sequence[tuple[str, str | None]], *,
        token: str | None = None,
    ) -> Iterator[tuple[tuple[str, str | None], bytes]]:  # fmt: skip
        for item in items:
            yield item, b"blob " + item[0].encode()


def event(offset: int, path: str, **fields: Any) -> Decoded:
    data = b"blob " + path.encode()
    base = {
        "project": "p",
        "path": path,
        "size": len(data),
        "checksum": sha(data),
        "op": "UPSERT",
        "content_strategy": "GIT_REFERENCE",
        "git_ref": {"url": "https://h/r.git", "commit": "c" * 40, "path": path,
                    "blob_id": None},
    }  # fmt: skip
    base.update(fields)
    return Decoded(Record("files", 0, offset, 0, None, b"", ()), None, 1, base)


def test_the_cache_sink_fetches_counts_and_refuses_by_index(tmp_path: Path) -> None:
    policy = ResolverPolicy(stream_threshold=1 << 20, max_object_size=1 << 20, endpoints=(),
                            buckets=())  # fmt: skip
    resolver = ContentResolver(
        policy,
        downloader=Downloader(timeout_s=1, attempts=1, max_size=1 << 20,
                              transport=httpx.MockTransport(lambda r: httpx.Response(500))),
        cache=ContentCache(tmp_path, 1 << 20),
        git=Git(),
    )  # fmt: skip
    registry = CollectorRegistry()
    metrics = CacheMetrics(registry, "g")
    resolver.on_fetch = metrics.observe_fetch
    sink = CacheSink(resolver, file_topic="files", metrics=metrics)
    inline = event(
        2, "i.txt", content_strategy="INLINE", inline={"data": b"x", "encoding": "UTF_8"}
    )
    lying = event(3, "bad.txt", checksum=sha(b"other"))
    batch = [event(0, "a.txt"), event(1, "b.txt"), inline, lying]
    with pytest.raises(RecordsRefused) as caught:
        sink.write(batch)
    [(index, error)] = caught.value.refused
    assert (index, error.dead_letter_reason) == (3, "CHECKSUM_MISMATCH")
    sink.write(batch[:3])  # the runtime writes the rest again: hits now
    assert sink.durable() == {("files", 0): 3}
    assert (sink.fetched, sink.hits) == (2, 2)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"group": "g", **labels})

    assert value("headrace_cache_hits_total", strategy="GIT_REFERENCE") == 2
    assert value("headrace_cache_misses_total", strategy="GIT_REFERENCE") == 2
    assert value("headrace_cache_fetched_bytes_total", strategy="GIT_REFERENCE") == 20
    assert value("headrace_cache_fetch_seconds_count", strategy="GIT_REFERENCE") == 2
    failures = value("headrace_cache_failures_total", strategy="GIT_REFERENCE",
                     reason="CHECKSUM_MISMATCH")  # fmt: skip
    assert failures == 1
    assert value("headrace_cache_entries") == 2 and value("headrace_cache_size_bytes") == 20
