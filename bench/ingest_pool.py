"""Benchmark: preparing inline files alone, in this process, in threads or in processes.

The work the ingest's workers do (``producers.prepare.prepare_many``: read, sha256,
encoding detection, the Avro body), in chunks of 64 files, over a tree's inline
files, ``--rounds`` times in turn: in this process; in a ThreadPoolExecutor of
``--workers`` threads; in a ProcessPoolExecutor of as many forked processes (8
chunks in flight, as the ingest keeps at most 4 a worker). It prints, per way,
the median wall and CPU microseconds a file (CPU: this process's threads and its
children, from os.times), with the slowest-fastest wall range. No services needed.

    .venv/bin/python bench/ingest_pool.py [--tree DIR] [--limit BYTES] [--rounds N]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

# the repository, not bench/ (whose git.py would shadow GitPython)
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.ingest import synthetic_tree  # noqa: E402
from producers.ingest import task_of  # noqa: E402
from producers.prepare import Context, Task, prepare_many  # noqa: E402
from producers.sources import DirectorySource  # noqa: E402

SKIPPED = ("__pycache__", "site-packages")


def once(way: str, chunks: list[list[Task]], ctx: Context, workers: int) -> tuple[float, float]:
    """(wall, CPU) seconds of preparing every chunk one way."""
    before, started = os.times(), time.perf_counter()
    if way == "inline":
        for chunk in chunks:
            prepare_many(chunk, ctx)
    else:
        pool: Executor = (
            ThreadPoolExecutor(workers)
            if way == "threads"
            else ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
        )
        with pool:
            queued: deque[object] = deque()
            for chunk in chunks:
                queued.append(pool.submit(prepare_many, chunk, ctx))
                if len(queued) >= 4 * workers:
                    queued.popleft().result()  # type: ignore[attr-defined]
            while queued:
                queued.popleft().result()  # type: ignore[attr-defined]
    wall, after = time.perf_counter() - started, os.times()
    cpu = sum(after[i] - before[i] for i in range(4))  # user, system, children's too
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tree", type=Path, help="a tree (default: 10,000 synthetic files)")
    parser.add_argument("--limit", type=int, default=100 * 1024, help="the inline limit")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="headrace-pool-") as tmp:
        root = args.tree or synthetic_tree(Path(tmp) / "tree", 10_000, 0)
        tasks = [
            task_of(c)
            for c in DirectorySource(root).candidates()
            if c.skip is None and c.size <= args.limit and not set(SKIPPED) & set(c.path.split("/"))
        ]
        ctx = Context("bench", "run", "bench", datetime.now(UTC), args.limit)
        chunks = [tasks[i : i + 64] for i in range(0, len(tasks), 64)]
        ways = ("inline", "threads", "processes")
        runs: dict[str, list[tuple[float, float]]] = {way: [] for way in ways}
        for _ in range(args.rounds):
            for way in ways:
                runs[way].append(once(way, chunks, ctx, args.workers))
        n = len(tasks)
        print(f"{n:,} files of {root}, {args.workers} workers, load {os.getloadavg()[0]:.2f}")
        for way in ways:
            walls = [w * 1e6 / n for w, _ in runs[way]]
            cpus = [c * 1e6 / n for _, c in runs[way]]
            print(
                f"  {way:<10} wall {statistics.median(walls):6.1f} us a file"
                f" ({min(walls):.1f}-{max(walls):.1f}), CPU {statistics.median(cpus):6.1f}"
            )


if __name__ == "__main__":
    main()
