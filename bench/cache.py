"""Benchmark: the content cache and resolver, against bare reads of the same bytes.

Uploads objects to a fresh MinIO bucket and builds a git repository, then in the
same run measures, each against a baseline:

1. warm hits: ``ContentResolver.resolve`` of object-storage events (1-64 KiB)
   already in the content cache, p50/p99 (target p99 < 1 ms); baseline: reading
   the cache entry's file (``Path.read_bytes``);
2. cold fetch: ``resolve_many(parallel=cache.parallel_downloads)`` of N objects of
   100 KiB-4 MiB into an empty cache (target: at least 0.8 of the baseline);
   baseline: the bare ``minio`` SDK (``Minio.get_object``, every byte read) with
   as many threads; and, to tell the download from the cache's part, the resolver
   without a cache; each of the three first in turn, round after round
   (``--parallel 1 2 4 8``: the same at each thread count, both sides alike);
3. git: ``GitCache.read_blob`` from a warm clone cache of a repository served
   locally (a bare repository, file:// URL), p50/p99 (target p99 < 10 ms);
   baseline: one ``git cat-file --batch`` over the same clone; and the cold clone
   (first ``read_blob``, ``read_blobs`` of every file) against plain ``git clone``;
4. hit rate: a seeded Zipf-like stream of lookups over more objects than the
   cache holds (bound 30% of their bytes), hits counted from ``Resolved.source``
   (target > 60%); baseline: an in-memory LRU of the same bound on the same stream;
5. memory: a 1 GiB object resolved in a child process (streamed to a file),
   its peak RSS, the child's own VmHWM (target < 200 MB); baseline: the same
   child, resolver made, nothing resolved. (Not wait4's ru_maxrss: the kernel
   folds the parent's high-water mark into an exec'd child's, see ``child``.)

Timed sections start after ``os.sync()``, so that the writeback of what was just
uploaded or written does not land in them.

The bucket, its objects and every temporary directory are removed at the end.

    .venv/bin/python bench/cache.py              # full figures (a few minutes)
    .venv/bin/python bench/cache.py --small      # a quick check (CI)
    .venv/bin/python bench/cache.py --json       # figures as JSON on stdout
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# bench/git.py is in this folder: it must not shadow GitPython's `git` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from minio import Minio  # noqa: E402 - after the path
from minio.deleteobjects import DeleteObject  # noqa: E402

from headrace.settings import Settings, load_settings  # noqa: E402
from storage.content.base import Resolved  # noqa: E402
from storage.content.errors import ContentError  # noqa: E402
from storage.content.factory import open_resolver  # noqa: E402
from storage.git_cache import GitCache  # noqa: E402
from storage.objects import MinioObjectStore  # noqa: E402

KIB, MIB = 1024, 1024 * 1024
IDENTITY = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}
POOL = random.Random(1).randbytes(8 * MIB)  # noqa: S311 - test data: incompressible bytes


@dataclass(frozen=True)
class Obj:
    key: str
    sha256: str
    size: int
    event: dict[str, Any]


def content(label: str, size: int) -> bytes:
    """``size`` bytes of its own: a unique header, then random bytes of the pool."""
    header = f"headrace bench/cache.py {label}\n".encode()
    start = int.from_bytes(hashlib.sha256(header).digest()[:4]) % (len(POOL) - size)
    return (header + POOL[start : start + size])[:size]


def event(bucket: str, key: str, sha256: str, size: int, url: str) -> dict[str, Any]:
    return {
        "project": "bench",
        "path": f"objects/{sha256[:12]}.bin",
        "size": size,
        "checksum": sha256,
        "content_strategy": "OBJECT_STORAGE",
        "object_ref": {"bucket": bucket, "key": key, "url": url, "expires_at": None},
    }


def upload(store: MinioObjectStore, labels: Sequence[str], sizes: Sequence[int]) -> list[Obj]:
    """Objects of these sizes in the store (four uploads at a time), with their events."""

    def one(label_size: tuple[str, int]) -> Obj:
        data = content(*label_size)
        sha256 = hashlib.sha256(data).hexdigest()
        stored = store.put_bytes(data, sha256)
        url, _ = store.presign(stored.key)
        return Obj(
            stored.key, sha256, len(data), event(store.bucket, stored.key, sha256, len(data), url)
        )

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, zip(labels, sizes, strict=True)))


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile of seconds, in ms (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def with_cache(settings: Settings, folder: Path, **cache: Any) -> Settings:
    update = {"cache": settings.cache.model_copy(update={"dir": folder, **cache})}
    return settings.model_copy(update=update)


class Report:
    """Lines for people (stdout, or stderr under --json) and figures for --json."""

    def __init__(self, as_json: bool) -> None:
        self.out = sys.stderr if as_json else sys.stdout
        self.figures: dict[str, Any] = {}

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)


# --- 1. warm hits ------------------------------------------------------------------------


def warm_hits(settings: Settings, objects: list[Obj], lookups: int, report: Report) -> None:
    resolver = open_resolver(settings)
    assert resolver.cache is not None
    for obj in objects:  # fills the cache
        if resolver.resolve(obj.event).source != "fetched":
            raise SystemExit("an object of a fresh bucket was in a fresh cache")
    rng = random.Random(11)  # noqa: S311 - which objects, reproducibly
    order = [rng.randrange(len(objects)) for _ in range(lookups)]
    paths = [resolver.cache.path_of(obj.sha256) for obj in objects]
    for i in order[:200]:  # warm-up, untimed: the index's pages, the interpreter's caches
        resolver.resolve(objects[i].event)
        paths[i].read_bytes()

    def hit(i: int) -> None:
        if resolver.resolve(objects[i].event).source != "cache":
            raise SystemExit("a warm lookup missed the cache")

    calls: list[Callable[[int], object]] = [
        lambda i: paths[i].read_bytes(),
        lambda i: hashlib.sha256(paths[i].read_bytes()).hexdigest(),
        hit,
    ]
    bare: list[float] = []
    hashed: list[float] = []
    ours: list[float] = []
    os.sync()  # what the uploads and the fill wrote goes to disk now, not under the timing
    for n, i in enumerate(order):  # interleaved, each first in turn: the same conditions
        for k in range(3):
            which = (n + k) % 3
            started = time.perf_counter()
            calls[which](i)
            (bare, hashed, ours)[which].append(time.perf_counter() - started)
    resolver.close()
    mean_kib = sum(o.size for o in objects) / len(objects) / KIB
    report.say(
        f"1. warm hits: {lookups:,} lookups over {len(objects)} objects of 1-64 KiB"
        f" (mean {mean_kib:.0f} KiB) in the content cache"
    )
    figures = {}
    for label, times in (
        ("Path.read_bytes of the entry", bare),
        ("read_bytes + sha256", hashed),
        ("resolver.resolve (hit)", ours),
    ):
        p50, p99, p999 = pct(times, 0.5), pct(times, 0.99), pct(times, 0.999)
        ratio = (
            "baseline"
            if times is bare
            else f"{p50 / pct(bare, 0.5):5.1f}x / {p99 / pct(bare, 0.99):5.1f}x baseline"
        )
        report.say(
            f"  {label:<30} p50 {p50:6.3f} ms  p99 {p99:6.3f} ms  p99.9 {p999:6.3f} ms"
            f"  max {max(times) * 1000:6.2f} ms  {ratio}"
        )
        figures[label] = {"p50_ms": p50, "p99_ms": p99, "p999_ms": p999}
    verdict = "met" if pct(ours, 0.99) < 1 else "NOT met"
    report.say(f"  target p99 < 1 ms: {verdict}")
    report.figures["warm_hits"] = {"lookups": lookups, "objects": len(objects), **figures}


# --- 2. cold fetch -----------------------------------------------------------------------


def cold_fetch(
    settings: Settings,
    objects: list[Obj],
    rounds: int,
    parallel: int,
    work: Path,
    report: Report,
) -> None:
    """The resolver filling an empty cache, the bare SDK, and (to tell the download from
    the cache's part) the resolver without a cache: ``parallel`` threads each, in turn."""
    store = settings.object_store
    bucket = store.bucket
    client = Minio(
        store.endpoint,
        access_key=store.access_key,
        secret_key=store.secret_key.get_secret_value(),
        secure=store.secure,
        region=store.region,
    )
    keys = [o.key for o in objects]
    events = [o.event for o in objects]
    total = sum(o.size for o in objects)

    def bare_one(key: str) -> int:
        response = client.get_object(bucket, key)
        try:
            return len(response.read())
        finally:
            response.close()
            response.release_conn()

    def bare(_: int) -> float:
        started = time.perf_counter()
        with ThreadPoolExecutor(parallel) as pool:
            got = sum(pool.map(bare_one, keys))
        seconds = time.perf_counter() - started
        if got != total:
            raise SystemExit(f"the bare client read {got} of {total} bytes")
        return seconds

    def resolver_run(round_: int, cache: bool) -> float:
        folder = work / f"cold-cache-{round_}"
        resolver = open_resolver(with_cache(settings, folder), cache=cache)
        if resolver.cache is not None:
            resolver.cache.size()  # the index made before the timing, not in it
        started = time.perf_counter()
        # As the cache group fetches: into the cache, no bytes handed back in memory.
        results = resolver.resolve_many(events, parallel=parallel, keep_bytes=False)
        seconds = time.perf_counter() - started
        failed = [r for r in results if isinstance(r, ContentError)]
        if failed or any(isinstance(r, Resolved) and r.source != "fetched" for r in results):
            raise SystemExit(f"cold fetch: {len(failed)} failed, e.g. {failed[:1]}")
        del results
        resolver.close()
        shutil.rmtree(folder, ignore_errors=True)
        return seconds

    runs: dict[str, Callable[[int], float]] = {
        "bare": bare,
        "resolver": lambda i: resolver_run(i, cache=True),
        "no_cache": lambda i: resolver_run(i, cache=False),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for i in range(rounds):  # each first in turn
        os.sync()  # the last round's cache files written out: no writeback under the next
        for name in names[i % 3 :] + names[: i % 3]:
            times[name].append(runs[name](i))
    median = {name: statistics.median(values) for name, values in times.items()}
    rate = {name: total / seconds / 1e6 for name, seconds in median.items()}
    report.say(
        f"2. cold fetch: {len(objects):,} objects of 100 KiB-4 MiB ({total / 1e6:,.0f} MB) from"
        f" MinIO, {parallel} threads each, median of {rounds} round(s), each first in turn"
    )

    def rounds_of(name: str) -> str:
        return ", ".join(f"{total / v / 1e6:.0f}" for v in times[name])

    for name, label in (
        ("bare", "bare minio get_object"),
        ("resolver", "resolve_many, into the cache"),
        ("no_cache", "  the same, no content cache"),
    ):
        ratio = "baseline" if name == "bare" else f"{rate[name] / rate['bare']:4.2f}x baseline"
        report.say(
            f"  {label:<30} {rate[name]:8.1f} MB/s  {median[name]:6.2f}s  {ratio}"
            f"  (rounds: {rounds_of(name)} MB/s)"
        )
    verdict = "met" if rate["resolver"] / rate["bare"] >= 0.8 else "NOT met"
    report.say(f"  target at least 0.8x the bare client: {verdict}")
    report.figures.setdefault("cold_fetch", []).append(
        {
            "objects": len(objects),
            "bytes": total,
            "parallel": parallel,
            "bare_mb_s": rate["bare"],
            "resolver_mb_s": rate["resolver"],
            "no_cache_mb_s": rate["no_cache"],
            "ratio": rate["resolver"] / rate["bare"],
            "rounds_s": times,
        }
    )


# --- 3. git ------------------------------------------------------------------------------


def git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, **IDENTITY}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, check=True)  # noqa: S603, S607
    return done.stdout.decode().strip()


def served_repo(work: Path, files: int) -> tuple[str, str, list[str]]:
    """A bare repository of ``files`` source-sized files: its file:// URL, commit, paths."""
    rng = random.Random(7)  # noqa: S311 - reproducible test data
    tree = work / "git-src"
    for i in range(files):
        path = tree / f"pkg{i % 20:02d}" / f"module_{i:04d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(128, 4096)).hex().encode())
    git("init", "-q", "-b", "main", cwd=tree)
    git("add", "-A", cwd=tree)
    git("commit", "-q", "-m", "bench", cwd=tree)
    bare = work / "repo.git"
    git("clone", "-q", "--bare", str(tree), str(bare))
    git("config", "uploadpack.allowFilter", "true", cwd=bare)
    shutil.rmtree(tree)
    commit = git("rev-parse", "HEAD", cwd=bare)
    return bare.as_uri(), commit, git("ls-tree", "-r", "--name-only", commit, cwd=bare).split("\n")


class CatFile:
    """The baseline: one ``git cat-file --batch`` and a pipe."""

    def __init__(self, git_dir: Path) -> None:
        self.proc = subprocess.Popen(  # noqa: S603
            ["git", "--git-dir", str(git_dir), "cat-file", "--batch"],  # noqa: S607
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def read(self, oid: str) -> bytes:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{oid}\n".encode())
        self.proc.stdin.flush()
        size = int(self.proc.stdout.readline().split()[2])
        data = self.proc.stdout.read(size + 1)
        return data[:-1]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


def git_reads(settings: Settings, work: Path, files: int, reads: int, report: Report) -> None:
    url, commit, paths = served_repo(work, files)
    schemes = tuple(dict.fromkeys([*settings.git.allowed_schemes, "file"]))

    def cache_at(folder: Path) -> GitCache:
        update = {"cache_dir": folder, "allowed_schemes": schemes}
        return GitCache.from_settings(settings.git.model_copy(update=update))

    def timed(call: Callable[[], object]) -> float:
        started = time.perf_counter()
        call()
        return time.perf_counter() - started

    items = [(p, None) for p in paths]
    plain_filter = timed(
        lambda: git("clone", "-q", "--bare", "--filter=blob:none", url, str(work / "c1"))
    )
    plain_full = timed(lambda: git("clone", "-q", "--bare", url, str(work / "c2")))
    cold = cache_at(work / "git-cold-1")
    first = timed(lambda: cold.read_blob(url, commit, path=paths[0]))
    cold.close()
    cold = cache_at(work / "git-cold-2")
    every = timed(lambda: sum(1 for _ in cold.read_blobs(url, commit, items)))
    cold.close()
    warm = cache_at(work / "git-warm")
    if sum(1 for _ in warm.read_blobs(url, commit, items)) != len(items):  # warm: all blobs
        raise SystemExit("read_blobs did not give every file")
    clone = warm.location(url)
    oids = {}
    for line in git("ls-tree", "-r", commit, cwd=clone).splitlines():
        meta, path = line.split("\t", 1)
        oids[path] = meta.split()[2]
    rng = random.Random(13)  # noqa: S311 - which files, reproducibly
    order = [rng.choice(paths) for _ in range(reads)]
    cat = CatFile(clone)
    for path in order[:100]:  # warm-up, untimed
        if warm.read_blob(url, commit, path=path) != cat.read(oids[path]):
            raise SystemExit(f"GitCache and cat-file disagree on {path}")
    calls: list[Callable[[str], bytes]] = [
        lambda p: cat.read(oids[p]),
        lambda p: warm.read_blob(url, commit, path=p),
        lambda p: warm.read_blob(url, commit, blob_id=oids[p]),
    ]
    bare: list[float] = []
    ours: list[float] = []
    by_id: list[float] = []
    os.sync()
    for n, path in enumerate(order):  # interleaved, each first in turn
        for k in range(3):
            which = (n + k) % 3
            started = time.perf_counter()
            calls[which](path)
            (bare, ours, by_id)[which].append(time.perf_counter() - started)
    cat.close()
    warm.close()
    report.say(
        f"3. git: a {len(paths):,}-file repository served locally (bare, file://);"
        f" {reads:,} warm reads of random files"
    )
    figures: dict[str, Any] = {}
    for label, times in (
        ("git cat-file --batch (pipe)", bare),
        ("GitCache.read_blob(path=)", ours),
        ("GitCache.read_blob(blob_id=)", by_id),
    ):
        p50, p99 = pct(times, 0.5), pct(times, 0.99)
        ratio = (
            "baseline"
            if times is bare
            else f"{p50 / pct(bare, 0.5):5.1f}x / {p99 / pct(bare, 0.99):5.1f}x baseline"
        )
        report.say(f"  {label:<30} p50 {p50:6.3f} ms  p99 {p99:6.3f} ms  {ratio}")
        figures[label] = {"p50_ms": p50, "p99_ms": p99}
    verdict = "met" if pct(ours, 0.99) < 10 else "NOT met"
    report.say(f"  target p99 < 10 ms: {verdict}")
    report.say(
        f"  cold: plain git clone --bare --filter=blob:none {plain_filter:.3f}s (baseline),"
        f" plain git clone --bare {plain_full:.3f}s"
    )
    report.say(
        f"  cold clone + first read_blob {first:.3f}s ({first / plain_filter:.1f}x baseline);"
        f" cold read_blobs of all {len(items):,} files {every:.3f}s"
        f" ({every / plain_full:.1f}x the full clone)"
    )
    figures["cold"] = {
        "plain_filter_clone_s": plain_filter,
        "plain_full_clone_s": plain_full,
        "first_read_blob_s": first,
        "read_blobs_all_s": every,
    }
    report.figures["git"] = {"files": len(paths), "reads": reads, **figures}


# --- 4. hit rate -------------------------------------------------------------------------


def zipf_stream(n: int, lookups: int, seed: int, exponent: float) -> list[int]:
    """``lookups`` indexes of ``n`` objects, the k-th most popular asked with weight
    1/k**exponent; which object is k-th is shuffled too (popularity is not size)."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload
    popular = list(range(n))
    rng.shuffle(popular)
    weights = list(itertools.accumulate(1 / (k + 1) ** exponent for k in range(n)))
    return [popular[k] for k in rng.choices(range(n), cum_weights=weights, k=lookups)]


def lru_hits(sizes: Sequence[int], stream: Sequence[int], bound: int) -> int:
    """Hits of an ideal LRU cache of ``bound`` bytes (room made before an entry lands)."""
    held: OrderedDict[int, int] = OrderedDict()
    total = hits = 0
    for i in stream:
        if i in held:
            hits += 1
            held.move_to_end(i)
            continue
        if sizes[i] > bound:
            continue
        while total > bound - sizes[i]:
            _, size = held.popitem(last=False)
            total -= size
        held[i] = sizes[i]
        total += sizes[i]
    return hits


def hit_rate(
    settings: Settings,
    objects: list[Obj],
    lookups: int,
    seed: int,
    exponent: float,
    share: float,
    report: Report,
) -> None:
    sizes = [o.size for o in objects]
    bound = int(sum(sizes) * share)
    stream = zipf_stream(len(objects), lookups, seed, exponent)
    resolver = open_resolver(with_cache(settings, settings.cache.dir, max_size=bound))
    assert resolver.cache is not None
    started = time.perf_counter()
    sources = [resolver.resolve(objects[i].event).source for i in stream]
    seconds = time.perf_counter() - started
    stats = resolver.cache.stats().total
    held = resolver.cache.size()
    resolver.close()
    hits = sources.count("cache")
    ideal = lru_hits(sizes, stream, bound)
    ceiling = lookups - len(set(stream))  # only first lookups miss: an unbounded cache
    report.say(
        f"4. hit rate: {lookups:,} lookups (seed {seed}, Zipf exponent {exponent}) over"
        f" {len(objects)} objects of {sum(sizes) / 1e6:.1f} MB; cache bound {share:.0%}"
        f" = {bound / 1e6:.1f} MB"
    )
    report.say(f"  in-memory LRU, same bound      {ideal / lookups:6.1%}  baseline")
    report.say(
        f"  content cache (Resolved.source) {hits / lookups:6.1%}  {hits / max(ideal, 1):4.2f}x"
        f" baseline  ({hits:,} hits, {stats.evictions:,} evictions, {held / 1e6:.1f} MB held,"
        f" {seconds:.1f}s)"
    )
    report.say(f"  unbounded cache (first lookups miss) {ceiling / lookups:6.1%}")
    verdict = "met" if hits / lookups > 0.6 else "NOT met"
    report.say(f"  target above 60%: {verdict}")
    if held > bound:
        raise SystemExit(f"the cache holds {held} bytes, above its bound of {bound}")
    report.figures["hit_rate"] = {
        "lookups": lookups,
        "objects": len(objects),
        "seed": seed,
        "exponent": exponent,
        "bound_bytes": bound,
        "hit_rate": hits / lookups,
        "lru_hit_rate": ideal / lookups,
        "unbounded_hit_rate": ceiling / lookups,
        "evictions": stats.evictions,
    }


# --- 5. memory ---------------------------------------------------------------------------


def big_object(store: MinioObjectStore, mib: int, work: Path) -> Obj:
    """A ``mib`` MiB object, written to a file and uploaded from it (never in memory)."""
    path = work / "big.bin"
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for i in range(mib):
            chunk = content(f"big {uuid.uuid4().hex} {i}", MIB)
            digest.update(chunk)
            out.write(chunk)
    sha256, size = digest.hexdigest(), mib * MIB
    stored = store.put_file(path, sha256, size)
    path.unlink()
    url, _ = store.presign(stored.key)
    return Obj(stored.key, sha256, size, event(store.bucket, stored.key, sha256, size, url))


def child(env: dict[str, str], event: dict[str, Any] | None) -> tuple[dict[str, Any], float]:
    """What a child resolving ``event`` (None: nothing) says, with its peak RSS in MiB
    (``peak_rss_mib``, its own VmHWM), and the ru_maxrss wait4 gives for it (MiB).

    The child reads its own VmHWM: the kernel folds the high-water mark of the memory
    the child had before its exec, this parent's (spawning shares it), into the
    child's ru_maxrss, and this parent holds hundreds of MB by then."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--resolve-child", json.dumps(event)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        actions = [(os.POSIX_SPAWN_DUP2, out.fileno(), 1), (os.POSIX_SPAWN_DUP2, err.fileno(), 2)]
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
        _, status, usage = os.wait4(pid, 0)
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"the resolving child failed: {err.read().decode()[-2000:]}")
        said: dict[str, Any] = json.loads(out.read())
    return said, usage.ru_maxrss / 1024


def peak_rss_mib() -> float:
    """This process's peak resident set size (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmHWM in /proc/self/status")


def resolve_child(argument: str) -> None:
    """In the child: the resolver from the settings (the environment), one resolve."""
    given = json.loads(argument)
    resolver = open_resolver(load_settings())
    said: dict[str, Any] = {}
    if given is not None:
        started = time.perf_counter()
        resolved = resolver.resolve(given)
        said = {
            "source": resolved.source,
            "seconds": time.perf_counter() - started,
            "file_size": resolved.file.stat().st_size if resolved.file is not None else None,
            "in_memory": resolved.data is not None,
        }
    resolver.close()
    print(json.dumps({**said, "peak_rss_mib": peak_rss_mib()}))


def memory(
    settings: Settings, store: MinioObjectStore, mib: int, work: Path, report: Report
) -> None:
    started = time.perf_counter()
    big = big_object(store, mib, work)
    uploaded = time.perf_counter() - started
    env = {
        **os.environ,
        "HEADRACE_OBJECT_STORE__ENDPOINT": settings.object_store.endpoint,
        "HEADRACE_OBJECT_STORE__BUCKET": settings.object_store.bucket,
        "HEADRACE_CACHE__DIR": str(work / "big-cache"),
        "HEADRACE_GIT__CACHE_DIR": str(work / "big-git"),
    }
    idle, idle_wait4 = child(env, None)
    said, said_wait4 = child(env, big.event)
    idle_rss, rss = idle["peak_rss_mib"], said["peak_rss_mib"]
    streamed = big.size > int(settings.cache.stream_threshold)
    if said["source"] != "fetched" or said["in_memory"] == streamed:
        raise SystemExit(f"the big object was not resolved as it should be: {said}")
    shutil.rmtree(work / "big-cache", ignore_errors=True)
    rate = big.size / said["seconds"] / 1e6
    report.say(f"5. memory: one object of {mib:,} MiB (uploaded in {uploaded:.1f}s), in a child")
    report.say(f"  child, resolver made, nothing resolved  peak RSS {idle_rss:6.0f} MiB  baseline")
    report.say(
        f"  child resolving it ({'to a file' if streamed else 'in memory'})"
        f"{'' if streamed else ' '}         peak RSS {rss:6.0f} MiB"
        f"  {rss - idle_rss:+.0f} MiB over baseline  ({said['seconds']:.1f}s, {rate:.0f} MB/s)"
    )
    verdict = "met" if rss * MIB < 200e6 else "NOT met"
    report.say(f"  target peak RSS under 200 MB: {verdict}")
    report.figures["memory"] = {
        "object_mib": mib,
        "idle_rss_mib": idle_rss,
        "resolve_rss_mib": rss,
        "resolve_s": said["seconds"],
        "resolve_mb_s": rate,
        "streamed": streamed,
        "wait4_ru_maxrss_mib": {"idle": idle_wait4, "resolve": said_wait4},
    }


# --- the run -----------------------------------------------------------------------------


def remove_bucket(settings: Settings) -> None:
    store = settings.object_store
    client = Minio(
        store.endpoint,
        access_key=store.access_key,
        secret_key=store.secret_key.get_secret_value(),
        secure=store.secure,
        region=store.region,
    )
    if not client.bucket_exists(store.bucket):
        return
    names = [
        DeleteObject(o.object_name or "") for o in client.list_objects(store.bucket, recursive=True)
    ]
    for error in client.remove_objects(store.bucket, names):
        print(f"could not remove {error.name}: {error.message}", file=sys.stderr)
    client.remove_bucket(store.bucket)


# Sizes: (full run, --small); an option given on the command line wins over both.
SIZES = {
    "objects": (1000, 20),
    "lookups": (10_000, 200),
    "small_objects": (500, 50),
    "files": (1000, 100),
    "big_mib": (1024, 32),  # --small: 32 MiB, above the 16 MiB stream threshold
    "rounds": (3, 1),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    helps = {
        "objects": "cold fetch: objects of 100 KiB-4 MiB",
        "lookups": "warm hits, replayed lookups and warm git reads",
        "small_objects": "objects of 1-64 KiB (warm hits, replay)",
        "files": "files of the git repository",
        "big_mib": "memory: the big object, MiB",
        "rounds": "cold fetch rounds, each side first in turn",
    }
    for name, (full, tiny) in SIZES.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            help=f"{helps[name]} ({full:,}; --small {tiny:,})",
        )
    parser.add_argument(
        "--parallel",
        type=int,
        nargs="+",
        metavar="N",
        help="cold fetch threads, both sides (default cache.parallel_downloads); several: each",
    )
    parser.add_argument("--seed", type=int, default=42, help="the replayed workload's seed")
    parser.add_argument("--zipf", type=float, default=1.0, help="the workload's Zipf exponent")
    parser.add_argument("--share", type=float, default=0.3, help="cache bound / working set")
    parser.add_argument("--small", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--json", action="store_true", help="figures as JSON on stdout")
    parser.add_argument("--resolve-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.resolve_child is not None:
        resolve_child(args.resolve_child)
        return
    for name, (full, tiny) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.small else full)
    report = Report(args.json)
    tag = uuid.uuid4().hex[:8]
    base = load_settings()
    settings = base.model_copy(
        update={
            "object_store": base.object_store.model_copy(update={"bucket": f"bench-cache-{tag}"})
        }
    )
    store = MinioObjectStore(settings.object_store)
    with tempfile.TemporaryDirectory(prefix="headrace-bench-cache-") as tmp:
        work = Path(tmp)
        settings = with_cache(settings, work / "content-cache")
        settings = settings.model_copy(
            update={"git": settings.git.model_copy(update={"cache_dir": work / "git-cache"})}
        )
        try:
            store.ensure_bucket()
            rng = random.Random(3)  # noqa: S311 - sizes, reproducibly
            started = time.perf_counter()
            small = upload(
                store,
                [f"{tag} small {i}" for i in range(args.small_objects)],
                [rng.randint(1 * KIB, 64 * KIB) for _ in range(args.small_objects)],
            )
            large = upload(
                store,
                [f"{tag} large {i}" for i in range(args.objects)],
                [rng.randint(100 * KIB, 4 * MIB) for _ in range(args.objects)],
            )
            report.say(
                f"uploaded {len(small):,} objects of 1-64 KiB and {len(large):,} of 100 KiB-4 MiB"
                f" to bucket {store.bucket} in {time.perf_counter() - started:.1f}s;"
                f" stream threshold {int(settings.cache.stream_threshold) / MIB:.0f} MiB"
            )
            warm_hits(with_cache(settings, work / "warm-cache"), small, args.lookups, report)
            for parallel in args.parallel or [settings.cache.parallel_downloads]:
                cold_fetch(
                    with_cache(settings, settings.cache.dir, parallel_downloads=parallel),
                    large,
                    args.rounds,
                    parallel,
                    work,
                    report,
                )
            git_reads(settings, work, args.files, args.lookups, report)
            hit_rate(
                with_cache(settings, work / "replay-cache"),
                small,
                args.lookups,
                args.seed,
                args.zipf,
                args.share,
                report,
            )
            memory(settings, store, args.big_mib, work, report)
        finally:
            remove_bucket(settings)
    if args.json:
        print(json.dumps(report.figures, indent=2))


if __name__ == "__main__":
    main()
