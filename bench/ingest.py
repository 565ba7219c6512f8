"""Benchmark: ``headrace ingest`` against a bare producer publishing the same bytes.

Builds a synthetic tree (10,000 small files by default, plus a few large
ones) and also takes a real tree present on every machine, the Python
standard library. For each tree it measures, in the same run against the
local stack:

- raw: a bare confluent-kafka Producer (librdkafka defaults) publishing each
  file's bytes as one message, in this process;
- headrace: ``headrace ingest --json`` in a child process, whose own peak RSS
  is read from the kernel (wait4).

It prints files/s, MB/s, the ingest's own duration and wall time, peak RSS,
and the ratio to the raw baseline; then re-ingests the synthetic tree with
``--content-strategy object_storage`` twice and reports the uploads of the
second run (the target is zero).

    .venv/bin/python bench/ingest.py                 # full figures
    .venv/bin/python bench/ingest.py --small 500     # a quick check (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import sysconfig
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from headrace.kafka import ensure_topics, make_admin
from headrace.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
HEADRACE = [sys.executable, "-m", "headrace"]
WORDS = ("stream", "event", "kafka", "schema", "archive", "offset", "commit", "record", "topic")


def synthetic_tree(root: Path, small: int, large: int) -> Path:
    rng = random.Random(7)  # noqa: S311 - reproducible test data, not security
    for i in range(small):
        folder = root / f"pkg{i // 500:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(100, 600)))
        (folder / f"module_{i:05d}.py").write_text(f"# file {i}\n{words}\n")
    for i in range(large):
        (root / f"blob_{i}.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    return root


EXCLUDE = ("__pycache__", "site-packages")  # the standard library, not what pip added


def files_of(root: Path) -> list[Path]:
    """The files ``headrace ingest --exclude ...`` publishes (symlinks to files included)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not set(EXCLUDE) & set(p.parts))


def raw_publish(
    bootstrap: str, topic: str, files: list[Path], limit: int
) -> tuple[float, int, int]:
    """Seconds, files and bytes for a bare producer publishing each file up to ``limit`` bytes."""
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 8 * 1024 * 1024})
    # Warm up: connections, metadata and the new topic's leaders, outside the timing.
    for _ in range(100):
        producer.produce(topic, value=b"warm-up")
    producer.flush(30)
    sent = size = 0
    started = time.perf_counter()
    for path in files:
        data = path.read_bytes()
        if len(data) > limit:
            continue
        while True:
            try:
                producer.produce(topic, key=path.name.encode(), value=data)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        sent, size = sent + 1, size + len(data)
    if producer.flush(120):
        raise SystemExit("raw baseline: not every message was delivered")
    return time.perf_counter() - started, sent, size


def headrace_ingest(
    tree: Path, env: dict[str, str], *args: str
) -> tuple[dict[str, Any], float, float]:
    """The run summary, wall seconds and peak RSS (MiB) of one ``headrace ingest`` process."""
    argv = [*HEADRACE, "--log-level", "WARNING", "ingest", str(tree), "--json", *args]
    started = time.perf_counter()
    out = tempfile.TemporaryFile()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=[(os.POSIX_SPAWN_DUP2, out.fileno(), 1)])
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    out.seek(0)
    text = out.read().decode()
    out.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"headrace ingest failed ({status}): {text[-500:]}")
    return json.loads(text), wall, usage.ru_maxrss / 1024


def fresh_env(settings_tag: str) -> dict[str, str]:
    env = dict(os.environ)
    env["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"] = f"bench.ingest-{settings_tag}.files"
    env["HEADRACE_KAFKA__TOPICS__RUN_EVENTS"] = f"bench.ingest-{settings_tag}.runs"
    env["HEADRACE_OBJECT_STORE__BUCKET"] = f"bench-{settings_tag}"
    env["PYTHONPATH"] = str(ROOT)
    return env


def measure(label: str, tree: Path, inline_limit: int) -> dict[str, float]:
    settings = load_settings()
    tag = uuid.uuid4().hex[:8]
    raw_topic = f"bench.raw-{tag}"
    ensure_topics(
        make_admin(settings.kafka),
        [raw_topic],
        partitions=settings.kafka.partitions,
        replication_factor=settings.kafka.replication_factor,
    )
    files = files_of(tree)
    raw_s, raw_files, raw_bytes = raw_publish(
        settings.kafka.bootstrap_servers, raw_topic, files, inline_limit
    )
    excludes = [arg for name in EXCLUDE for arg in ("--exclude", f"{name}/")]
    summary, wall, rss = headrace_ingest(
        tree,
        fresh_env(tag),
        "--content-strategy",
        "inline",
        "--inline-limit",
        str(inline_limit),
        *excludes,
    )
    counts, run_s = summary["counts"], summary["duration_s"]
    ours_rate = counts["bytes"] / run_s
    raw_rate = raw_bytes / raw_s
    print(
        f"{label}: {counts['files']:,} files inline, {counts['bytes'] / 1e6:.1f} MB "
        f"({summary['counts']['skipped']:,} skipped: excluded or over the inline limit)"
    )
    print(
        f"  raw producer       {raw_files / raw_s:>9,.0f} files/s {raw_rate / 1e6:>7.1f} MB/s"
        f"  {raw_s:6.2f}s  baseline"
    )
    print(
        f"  headrace ingest    {counts['files'] / run_s:>9,.0f} files/s"
        f" {ours_rate / 1e6:>7.1f} MB/s"
        f"  {run_s:6.2f}s  {ours_rate / raw_rate:4.2f}x baseline;"
        f" wall {wall:.2f}s, peak RSS {rss:.0f} MiB"
    )
    return {"run_s": run_s, "ratio": ours_rate / raw_rate, "rss": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--small", type=int, default=10_000, help="small files in the synthetic tree"
    )
    parser.add_argument("--large", type=int, default=5, help="4 MiB files in the synthetic tree")
    parser.add_argument("--skip-stdlib", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="headrace-bench-") as tmp:
        tree = synthetic_tree(Path(tmp) / "synthetic", args.small, args.large)
        measure(f"synthetic tree ({args.small:,} small files)", tree, 100 * 1024)
        if not args.skip_stdlib:
            stdlib = Path(sysconfig.get_paths()["stdlib"])
            measure(f"Python standard library ({stdlib})", stdlib, 1024 * 1024)
        env = fresh_env(uuid.uuid4().hex[:8])
        first, _, _ = headrace_ingest(tree, env, "--content-strategy", "object_storage")
        second, wall, rss = headrace_ingest(tree, env, "--content-strategy", "object_storage")
        print(
            f"object storage, synthetic tree: first run {first['uploads']['made']:,} uploads; "
            f"re-ingest {second['uploads']['made']} uploads, "
            f"{second['uploads']['deduplicated']:,} already stored "
            f"({second['duration_s']:.2f}s, peak RSS {rss:.0f} MiB)"
        )


if __name__ == "__main__":
    main()
