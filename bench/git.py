"""Benchmark: git access through GitPython against the hand-written git command line.

The baseline is storage/git.py and storage/git_cache.py at ``--baseline`` (the
revision before GitPython: one hand-written ``cat-file --batch``, hand-written
process groups), loaded from ``git show`` in the same run. Measured, old and new
alternating in every round:

1. ingest: ``headrace ingest <repo> --dry-run --json`` of a git repository of
   /usr/lib/python3.11 (copied into a temporary directory and committed when it
   is not a repository), in child processes, the old modules swapped in for one;
2. blob reads: every blob of that repository through ``GitRepo.open_blob``
   (total, p50, p99), and the tree listing: ``ls-tree -r -l`` against
   GitPython's tree walk with blob sizes;
3. a 1,000-file repository served locally (file:// and the token-checking smart
   HTTP server of tests/gitserver.py): a cold read of every file from an empty
   cache (new: ``read_blobs``, a clone and one blob fetch; old: ``repo()``, a
   clone and its prefetch), then warm ``read_blob`` p50/p99 (target p99 < 10 ms)
   against the old API's way to the same bytes (``repo()`` and ``read_blob``);
4. whether ``Repo.clone_from(kill_after_timeout=1)`` and ``Git.execute`` give up
   on a server that never answers.

    .venv/bin/python bench/git.py            # full figures
    .venv/bin/python bench/git.py --small    # a quick check (the unit tests run it)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# This file is named git.py: its folder must not shadow GitPython's `git` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))  # tests.gitserver

import git as gitpython  # noqa: E402 - after the path

from storage import git as new_git  # noqa: E402
from storage import git_cache as new_cache  # noqa: E402
from tests.gitserver import serving  # noqa: E402

TOKEN = "bench-token"  # noqa: S105 - the local test server's throwaway token
IDENTITY = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}
BOOT = """
import importlib.util, sys
import storage
def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
storage.git = load("storage.git", sys.argv.pop(1))
storage.git_cache = load("storage.git_cache", sys.argv.pop(1))
from headrace.cli import main
main(sys.argv[1:])
"""


def run(*argv: str, cwd: Path | None = None) -> str:
    env = {**os.environ, **IDENTITY}
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, check=True)  # noqa: S603
    return out.stdout.decode().strip()


def commit_tree(tree: Path) -> str:
    run("git", "init", "-q", "-b", "main", cwd=tree)
    run("git", "config", "uploadpack.allowFilter", "true", cwd=tree)
    run("git", "add", "-A", cwd=tree)
    run("git", "commit", "-q", "-m", "bench", cwd=tree)
    return run("git", "rev-parse", "HEAD", cwd=tree)


def stdlib_repo(source: Path, work: Path) -> Path:
    """``source`` if it is a git repository, else a committed copy of it."""
    try:
        run("git", "-C", str(source), "rev-parse")
        return source
    except subprocess.CalledProcessError:
        pass
    copy = work / "stdlib"
    shutil.copytree(source, copy, symlinks=True)
    commit_tree(copy)
    return copy


def synthetic_repo(root: Path, files: int) -> Path:
    rng = random.Random(7)  # noqa: S311 - reproducible test data
    for i in range(files):
        path = root / f"pkg{i % 20:02d}" / f"module_{i:04d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(256, 2048)).hex().encode())
    commit_tree(root)
    return root


def old_modules(rev: str, work: Path) -> tuple[ModuleType, ModuleType, Path, Path]:
    """The baseline's storage.git and storage.git_cache, as modules of their own, and
    their files (unchanged) for the ingest child process."""
    paths = []
    for name in ("git", "git_cache"):
        text = run("git", "show", f"{rev}:storage/{name}.py", cwd=ROOT)
        (work / f"old_{name}.py").write_text(text + "\n")
        paths.append(work / f"old_{name}.py")
        renamed = text.replace("from storage.git import", "from old_storage_git import")
        (work / f"old_storage_{name}.py").write_text(renamed + "\n")
    sys.path.insert(0, str(work))
    return _load("old_storage_git", work), _load("old_storage_git_cache", work), *paths


def _load(name: str, folder: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def ingest(repo: Path, old: tuple[Path, Path] | None) -> float:
    argv = (
        [sys.executable, "-c", BOOT, *map(str, old)] if old else [sys.executable, "-m", "headrace"]
    )
    argv += ["--log-level", "WARNING", "ingest", str(repo), "--project", "gb", "--dry-run"]
    out = subprocess.run([*argv, "--json"], capture_output=True, check=True, cwd=ROOT)  # noqa: S603
    summary: dict[str, Any] = json.loads(out.stdout)
    return float(summary["duration_s"])


def blob_reads(module: ModuleType, repo: Path) -> tuple[float, list[float]]:
    source = module.GitRepo(repo)
    ids = [e.blob_id for e in source.tree(source.resolve()) if e.mode != "160000"]
    times = []
    started = time.perf_counter()
    for blob_id in ids:
        one = time.perf_counter()
        with source.open_blob(blob_id) as stream:
            stream.read()
        times.append(time.perf_counter() - one)
    total = time.perf_counter() - started
    source.close()
    return total, times


def tree_listing(repo: Path) -> tuple[float, float, int]:
    """Seconds to list every file with its size: ``ls-tree -r -l`` and GitPython."""
    started = time.perf_counter()
    source = new_git.GitRepo(repo)
    count = sum(1 for _ in source.tree(source.resolve()))
    cli = time.perf_counter() - started
    started = time.perf_counter()
    walked = gitpython.Repo(repo)
    sizes = [b.size for b in walked.head.commit.tree.traverse() if b.type == "blob"]
    walked.close()
    return cli, time.perf_counter() - started, max(count, len(sizes))


def cold(make: Callable[[Path], None], work: Path) -> float:
    cache_dir = work / f"cache-{time.monotonic_ns()}"
    started = time.perf_counter()
    make(cache_dir)
    seconds = time.perf_counter() - started
    shutil.rmtree(cache_dir)
    return seconds


def warm_reads(read: Callable[[str], bytes], paths: list[str], reads: int) -> list[float]:
    rng = random.Random(11)  # noqa: S311 - which paths, reproducibly
    times = []
    for _ in range(reads):
        path = rng.choice(paths)
        started = time.perf_counter()
        read(path)
        times.append(time.perf_counter() - started)
    return times


def silent_server_checks() -> list[str]:
    """Does each way of cloning give up on a server that never answers?"""
    calls = {
        "Repo.clone_from(kill_after_timeout=1)": "git.Repo.clone_from(u, d, kill_after_timeout=1)",
        "Git.execute(kill_after_timeout=1)": (
            "git.Git().execute(['git', 'clone', u, d], kill_after_timeout=1)"
        ),
    }
    lines = []
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/repo.git"
        for name, call in calls.items():
            script = (
                f"import git, tempfile\nu, d = {url!r}, tempfile.mkdtemp() + '/c'\n"
                f"try:\n    {call}\nexcept git.GitCommandError:\n    pass\n"
            )
            started = time.perf_counter()
            try:
                argv = [sys.executable, "-c", script]
                subprocess.run(argv, timeout=10, capture_output=True)  # noqa: S603
                lines.append(f"  {name}: gave up after {time.perf_counter() - started:.1f} s")
            except subprocess.TimeoutExpired:
                lines.append(f"  {name}: still waiting after 10 s (its timeout is ignored)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="f0a7c79", help="revision of the old modules")
    parser.add_argument("--stdlib", type=Path, default=Path("/usr/lib/python3.11"))
    parser.add_argument("--files", type=int, default=1000, help="files of the served repository")
    parser.add_argument("--reads", type=int, default=2000, help="warm reads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="tiny sizes, one round")
    args = parser.parse_args()
    if args.small:
        args.files, args.reads, args.rounds = 50, 50, 1
    os.environ.update(GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0")
    with tempfile.TemporaryDirectory(prefix="bench-git-") as tmp:
        work = Path(tmp)
        old_git, old_cache, *old_files = old_modules(args.baseline, work)
        big = synthetic_repo(work / "small", 30) if args.small else stdlib_repo(args.stdlib, work)
        files = len(run("git", "ls-files", cwd=big).splitlines())
        print(f"baseline {args.baseline}; git {run('git', '--version').split()[-1]}; "
              f"GitPython {gitpython.__version__}")  # fmt: skip

        print(f"\n1. headrace ingest --dry-run of {big} ({files} files), seconds per run:")
        runs: dict[str, list[float]] = {"old": [], "new": []}
        for i in range(args.rounds):
            for name in ("old", "new") if i % 2 == 0 else ("new", "old"):
                runs[name].append(
                    ingest(big, (old_files[0], old_files[1]) if name == "old" else None)
                )
        for name, values in runs.items():
            print(f"  {name}: median {statistics.median(values):.2f} s  (all: "
                  f"{', '.join(f'{v:.2f}' for v in values)})")  # fmt: skip
        ratio = statistics.median(runs["new"]) / statistics.median(runs["old"])
        print(f"  new/old: {ratio:.2f}x")

        print(f"\n2. every blob of that repository read in turn, {args.rounds} rounds:")
        reads: dict[str, list[tuple[float, list[float]]]] = {"old": [], "new": []}
        for i in range(args.rounds):
            for name in ("old", "new") if i % 2 == 0 else ("new", "old"):
                reads[name].append(blob_reads(old_git if name == "old" else new_git, big))
        for name, label in (("old", "hand-written cat-file --batch"), ("new", "GitPython")):
            totals = [t for t, _ in reads[name]]
            times = [x for _, lat in reads[name] for x in lat]
            spread = f"{min(totals):.3f}-{max(totals):.3f}"
            print(f"  {label}: median {statistics.median(totals):.3f} s a pass ({spread}), "
                  f"p50 {pct(times, 0.5):.3f} ms, p99 {pct(times, 0.99):.3f} ms")  # fmt: skip
        cli, walk, count = tree_listing(big)
        print(f"  listing {count} files with sizes: ls-tree -r -l {cli * 1000:.0f} ms, "
              f"GitPython tree walk {walk * 1000:.0f} ms ({walk / cli:.1f}x)")  # fmt: skip

        served = synthetic_repo(work / "served-src", args.files)
        commit = run("git", "rev-parse", "HEAD", cwd=served)
        paths = run("git", "ls-files", cwd=served).splitlines()
        items = [(p, None) for p in paths]
        with serving(served, work / "http", TOKEN) as server:
            urls = {
                "file://": served.as_uri(),
                "http (token)": f"http://127.0.0.1:{server.server_address[1]}/repo.git",
            }
            print(f"\n3. a {len(paths)}-file repository served locally, cold from an empty cache:")
            for transport, url in urls.items():
                times: dict[str, list[float]] = {"old": [], "new": []}

                def new_cold(d: Path, u: str = url) -> None:
                    cache = new_cache.GitCache(d, allowed_schemes=("file", "http"), token=TOKEN)
                    assert sum(1 for _ in cache.read_blobs(u, commit, items)) == len(items)
                    cache.close()

                def old_cold(d: Path, u: str = url) -> None:
                    repo, _ = old_cache.GitCache(d).repo(u, commit, token=TOKEN)
                    for entry in list(repo.tree(commit)):
                        with repo.open_blob(entry.blob_id) as stream:  # its batch process
                            stream.read()
                    repo.close()

                for i in range(args.rounds):
                    for name in ("old", "new") if i % 2 == 0 else ("new", "old"):
                        times[name].append(cold(new_cold if name == "new" else old_cold, work))
                new_s, old_s = (statistics.median(times[n]) for n in ("new", "old"))
                print(f"  {transport}: new read_blobs (clone, one blob fetch, reads) {new_s:.2f} s;"
                      f" old repo() (clone, prefetch, reads) {old_s:.2f} s")  # fmt: skip

            url = urls["http (token)"]
            print(f"\n   warm, {args.reads} reads of random files over {url.split('/')[2]}:")
            cache = new_cache.GitCache(
                work / "warm", allowed_schemes=("http",), token=TOKEN, max_size=50 * 1024**3
            )
            list(cache.read_blobs(url, commit, items))
            ids = {e.path: e.blob_id for e in new_git.GitRepo(cache.location(url)).tree(commit)}
            by_path = warm_reads(lambda p: cache.read_blob(url, commit, path=p), paths, args.reads)
            by_id = warm_reads(
                lambda p: cache.read_blob(url, commit, blob_id=ids[p]), paths, args.reads
            )
            started = time.perf_counter()
            assert sum(1 for _ in cache.read_blobs(url, commit, items)) == len(items)
            batch = time.perf_counter() - started
            cache.close()
            old = old_cache.GitCache(work / "warm-old")
            old.repo(url, commit, token=TOKEN)

            def old_read(p: str) -> bytes:
                repo, _ = old.repo(url, commit, token=TOKEN)
                with repo.open_blob(ids[p]) as stream:
                    data: bytes = stream.read()
                repo.close()
                return data

            old_times = warm_reads(old_read, paths, max(10, args.reads // 10))
            for label, values in [
                ("read_blob(path=)", by_path),
                ("read_blob(blob_id=)", by_id),
                ("old repo() + read_blob", old_times),
            ]:
                print(f"  {label}: p50 {pct(values, 0.5):.3f} ms, p99 {pct(values, 0.99):.3f} ms "
                      f"({len(values)} reads)")  # fmt: skip
            print(f"  read_blobs of all {len(items)} files, warm: {batch * 1000:.0f} ms")
        if not args.small:
            print("\n4. a server that accepts connections and never answers:")
            print("\n".join(silent_server_checks()))


if __name__ == "__main__":
    main()
