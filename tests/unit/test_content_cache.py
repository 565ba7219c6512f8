"""The content cache: sha256 names, verified writes, LRU bound, self-healing, shared use."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from pathlib import Path

import pytest

from storage.content.cache import ContentCache


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_an_entry_is_stored_under_its_sha256_and_read_back(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path, max_size=1000)
    data = b"hello"
    path = cache.put(sha(data), len(data), data, "INLINE")
    assert path == tmp_path / "objects" / sha(data)[:2] / sha(data)
    assert cache.read(sha(data), len(data), "INLINE") == data
    stats = cache.stats()
    assert (stats.total.entries, stats.total.bytes, stats.total.hits) == (1, 5, 1)
    assert stats.by_strategy["INLINE"].hit_rate == 1.0


def test_a_name_that_is_not_a_sha256_is_refused(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path, max_size=1000)
    for bad in ("../../etc/passwd", "A" * 64, "ab", "/" + "a" * 63):
        with pytest.raises(ValueError, match="not a sha256"):
            cache.path_of(bad)


def test_bytes_that_do_not_hash_to_the_name_are_never_stored(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path, max_size=1000)
    with pytest.raises(ValueError, match="hashing to"):
        cache.put(sha(b"right"), 5, b"wrong", "OBJECT_STORAGE")
    with pytest.raises(ValueError, match="more than"):
        cache.put(sha(b"right"), 3, [b"ri", b"ght"], "OBJECT_STORAGE")
    assert cache.read(sha(b"right"), 5) is None
    assert list((tmp_path / "tmp").iterdir()) == []
    assert cache.stats().total.entries == 0


def test_a_miss_is_counted(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path, max_size=1000)
    assert cache.read(sha(b"x"), 1, "GIT_REFERENCE") is None
    stats = cache.stats().by_strategy["GIT_REFERENCE"]
    assert (stats.misses, stats.hits, stats.hit_rate) == (1, 0, 0.0)


def test_least_recently_used_entries_go_first_and_the_bound_holds(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path, max_size=300)
    blobs = [bytes([i]) * 100 for i in range(3)]
    for blob in blobs:
        cache.put(sha(blob), 100, blob)
    assert cache.read(sha(blobs[0]), 100) == blobs[0]  # 0 is now the most recent
    fourth = b"d" * 100
    cache.put(sha(fourth), 100, fourth)
    assert cache.contains(sha(blobs[0]), 100)
    assert not cache.contains(sha(blobs[1]), 100)  # the least recently used went
    assert cache.size() == 300
    assert cache.stats().total.evictions == 1


def test_content_larger_than_the_cache_is_not_cached(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path, max_size=10)
    data = b"x" * 11
    assert cache.put(sha(data), 11, data) is None
    assert cache.size() == 0


def test_a_corrupted_entry_is_dropped_and_reads_as_a_miss(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path, max_size=1000)
    data = b"precious bytes"
    path = cache.put(sha(data), len(data), data, "OBJECT_STORAGE")
    assert path is not None
    path.write_bytes(b"precious bytez")  # same size, other bytes
    assert cache.read(sha(data), len(data), "OBJECT_STORAGE") is None
    assert not path.exists()
    stats = cache.stats()
    assert (stats.total.corrupt, stats.total.entries) == (1, 0)
    cache.put(sha(data), len(data), data, "OBJECT_STORAGE")  # fetched again
    handle = cache.open(sha(data), len(data), "OBJECT_STORAGE")
    assert handle is not None
    with handle:
        assert handle.read() == data


def test_prune_evicts_down_to_a_size_and_removes_orphans(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path, max_size=1000)
    for i in range(5):
        blob = bytes([i]) * 100
        cache.put(sha(blob), 100, blob)
    orphan = cache.path_of(sha(b"orphan"))
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"orphan")
    pruned = cache.prune(to=250)
    assert (pruned.entries, pruned.bytes, pruned.orphans) == (3, 300, 1)
    assert cache.size() == 200
    assert not orphan.exists()


def _fill(root: str, seed: int, max_size: int) -> None:
    cache = ContentCache(Path(root), max_size=max_size)
    for i in range(60):
        blob = os.urandom(50 + (i * 7 + seed) % 150)
        cache.put(sha(blob), len(blob), blob, "OBJECT_STORAGE")
        assert cache.size() <= max_size


def test_two_processes_filling_at_once_keep_the_bound(tmp_path: Path) -> None:
    bound = 2000
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_fill, args=(str(tmp_path), s, bound)) for s in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = ContentCache(tmp_path, max_size=bound)
    on_disk = sum(p.stat().st_size for p in (tmp_path / "objects").rglob("*") if p.is_file())
    assert on_disk == cache.size() <= bound
    assert cache.stats().total.evictions > 0
    for path in (tmp_path / "objects").rglob("*"):
        if path.is_file():
            assert sha(path.read_bytes()) == path.name


def test_many_threads_opening_a_new_cache_at_once_all_get_in(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    for round_ in range(30):
        cache = ContentCache(tmp_path / str(round_), max_size=10_000)

        def put(i: int, cache: ContentCache = cache) -> None:
            blob = f"blob {i}".encode()
            cache.put(sha(blob), len(blob), blob, "OBJECT_STORAGE")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, range(8)))
        assert cache.stats().total.entries == 8
