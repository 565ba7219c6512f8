"""Benchmark: ``headrace ingest`` against a bare producer publishing the same bytes.

Builds a synthetic tree (10,000 small files by default, plus a few large
ones) and also takes a real tree present on every machine, the Python
standard library. For each tree it measures, in the same run against the
local stack, ``--rounds`` times (5 by default), in turn within each round:

- raw: a bare confluent-kafka Producer (librdkafka defaults) publishing each
  file's bytes as one message, in this process;
- transactions on: ``headrace ingest --json`` in a child process, whose own
  peak RSS is read from the kernel (wait4), as it runs by default (a Kafka
  transaction every 1,000 files);
- transactions off: the same with ``HEADRACE_INGEST__TRANSACTIONS=false``
  (the idempotent producer alone; the batches are still flushed and
  journalled with fsync, so the difference is the transactions' own cost);
- ``--transaction-files 100``: transactions on, ten times as many of them;
- ``--workers 1``: transactions on, every file prepared by the ingest process
  itself (the default is one worker process per core).

For each, the CPU seconds of the run (its ``cpu_s``: the process's threads and
its worker processes, from getrusage RUSAGE_SELF and RUSAGE_CHILDREN), per
100,000 files, and the cores that kept busy on average (CPU seconds over the
run's duration).

Every child's state directory (``HEADRACE_INGEST__STATE_DIR``) is a temporary
directory, so that no run is left in the repository's ``.headrace/runs``. One
untimed run goes first on each tree (topics, the transaction coordinator).

It prints, for each configuration, the median over the rounds and the spread
(slowest-fastest) of files/s, MB/s, the ingest's own duration and wall time,
peak RSS, the transactions the run made and the ratio to the raw baseline;
then the cost of transactions: the files/s lost against transactions off
(from the medians, and round by round), and whether the on and off ranges
overlap. Last it re-ingests the synthetic tree with ``--content-strategy
object_storage`` twice and reports the uploads of the second run (the target
is zero).

    .venv/bin/python bench/ingest.py                 # full figures
    .venv/bin/python bench/ingest.py --small 500     # a quick check (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import sysconfig
import tempfile
import time
import uuid
from dataclasses import dataclass, field
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


def fresh_env(settings_tag: str, state_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"] = f"bench.ingest-{settings_tag}.files"
    env["HEADRACE_KAFKA__TOPICS__RUN_EVENTS"] = f"bench.ingest-{settings_tag}.runs"
    env["HEADRACE_OBJECT_STORE__BUCKET"] = f"bench-{settings_tag}"
    env["HEADRACE_INGEST__STATE_DIR"] = str(state_dir)  # not the repository's .headrace/runs
    env["PYTHONPATH"] = str(ROOT)
    return env


@dataclass(frozen=True)
class Config:
    name: str
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()


ON = Config("transactions on")
OFF = Config("transactions off", {"HEADRACE_INGEST__TRANSACTIONS": "false"})
ON_100 = Config("on, --transaction-files 100", args=("--transaction-files", "100"))
ONE = Config("on, --workers 1", args=("--workers", "1"))
CONFIGS = (ON, OFF, ON_100, ONE)  # run in this order within each round
NAMES = {"on": ON, "off": OFF, "on100": ON_100, "workers1": ONE}


@dataclass
class Runs:
    """One configuration's rounds."""

    files: list[float] = field(default_factory=list)  # files/s over the run's own duration
    mb: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    transactions: list[int] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # CPU s of the run, workers included

    def add(self, files: int, size: int, seconds: float, wall: float = 0.0) -> None:
        self.files.append(files / seconds)
        self.mb.append(size / seconds / 1e6)
        self.seconds.append(seconds)
        self.wall.append(wall)


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], fmt: str = ",.0f") -> str:
    return f"{median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def overlap_free(a: list[float], b: list[float]) -> bool:
    """Whether the slowest-fastest ranges of two configurations are apart."""
    return min(a) > max(b) or max(a) < min(b)


def chosen(names: str) -> tuple[Config, ...]:
    """The configurations named (``--configs on,workers1``), in CONFIGS' order."""
    wanted = {NAMES[n.strip()].name for n in names.split(",") if n.strip()}
    return tuple(c for c in CONFIGS if c.name in wanted)


def run_config(
    tree: Path, env: dict[str, str], config: Config, args: list[str]
) -> tuple[dict[str, Any], float, float]:
    return headrace_ingest(tree, {**env, **config.env}, *args, *config.args)


def measure(
    label: str,
    tree: Path,
    inline_limit: int,
    rounds: int,
    state_dir: Path,
    configs: tuple[Config, ...] = CONFIGS,
) -> dict[str, Any]:
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
    env = fresh_env(tag, state_dir)
    excludes = [arg for name in EXCLUDE for arg in ("--exclude", f"{name}/")]
    args = ["--content-strategy", "inline", "--inline-limit", str(inline_limit), *excludes]
    summary, _, _ = run_config(tree, env, ON, args)  # untimed: topics, coordinator, caches
    raw = Runs()
    runs = {config.name: Runs() for config in configs}
    for _ in range(rounds):
        raw_s, raw_files, raw_bytes = raw_publish(
            settings.kafka.bootstrap_servers, raw_topic, files, inline_limit
        )
        raw.add(raw_files, raw_bytes, raw_s)
        for config in configs:
            summary, wall, rss = run_config(tree, env, config, args)
            counts, run = summary["counts"], runs[config.name]
            run.add(counts["files"], counts["bytes"], summary["duration_s"], wall)
            run.rss.append(rss)
            run.transactions.append(summary["transactions"])
            run.cpu.append(summary["cpu_s"])
    counts = summary["counts"]
    print(
        f"{label}: {counts['files']:,} files inline, {counts['bytes'] / 1e6:.1f} MB "
        f"({counts['skipped']:,} skipped: excluded or over the inline limit); "
        f"{rounds} rounds, median (slowest-fastest)"
    )
    print(
        f"  {'raw producer':<28} {spread(raw.files):>26} files/s {median(raw.mb):>6.1f} MB/s"
        f"  {median(raw.seconds):5.2f}s  baseline"
    )
    for config in configs:
        run = runs[config.name]
        made = sorted(set(run.transactions))
        what = "batches, no transactions" if config is OFF else "transactions"
        per_100k = [c / counts["files"] * 100_000 for c in run.cpu]
        busy = [c / t for c, t in zip(run.cpu, run.seconds, strict=True)]
        print(
            f"  {config.name:<28} {spread(run.files):>26} files/s {median(run.mb):>6.1f} MB/s"
            f"  {median(run.seconds):5.2f}s, wall {spread(run.wall, '.2f')} s;"
            f" {median(run.files) / median(raw.files):4.2f}x baseline;"
            f" {'/'.join(map(str, made))} {what}, peak RSS {max(run.rss):.0f} MiB;"
            f" CPU {spread(per_100k, '.1f')} s per 100,000 files, {median(busy):.2f} cores"
        )
    costs: dict[str, dict[str, Any]] = {}
    off = runs.get(OFF.name)
    for config in (ON, ON_100) if off is not None else ():
        if config.name not in runs:
            continue
        on = runs[config.name]
        cost = 100 * (1 - median(on.files) / median(off.files))
        paired = [100 * (1 - a / b) for a, b in zip(on.files, off.files, strict=True)]
        apart = overlap_free(on.files, off.files)
        extra_ms = 1000 * (median(on.seconds) - median(off.seconds))
        per = ""
        if apart:  # a cost per transaction only where there is a cost to share out
            per = f", {extra_ms / median([float(n) for n in on.transactions]):.1f} ms a transaction"
        wall = 1000 * (median(on.wall) - median(off.wall))
        print(
            f"  cost of transactions ({config.name}): {cost:+.1f}% files/s against off"
            f" (round by round {min(paired):+.1f}% to {max(paired):+.1f}%),"
            f" {extra_ms:+.0f} ms a run{per}; the on and off ranges"
            f" {'do not overlap' if apart else 'overlap: within the noise of these rounds'};"
            f" wall {wall:+.0f} ms (init_transactions is outside the run's duration),"
            f" ranges {'apart' if overlap_free(on.wall, off.wall) else 'overlap'}"
        )
        costs[config.name] = {"cost_pct": cost, "paired": paired, "apart": apart}
    noise = [100 * (max(r.files) - min(r.files)) / median(r.files) for r in runs.values()]
    print(f"  noise: slowest-fastest spread of a configuration {min(noise):.0f}-{max(noise):.0f}%")
    return {"raw": raw, "runs": runs, "costs": costs}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--small", type=int, default=10_000, help="small files in the synthetic tree"
    )
    parser.add_argument("--large", type=int, default=5, help="4 MiB files in the synthetic tree")
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds of every configuration (at least 3)"
    )
    parser.add_argument(
        "--configs",
        default=",".join(NAMES),
        help=f"configurations to run, of {', '.join(NAMES)} (default: all)",
    )
    parser.add_argument("--skip-stdlib", action="store_true")
    parser.add_argument(
        "--skip-object-storage", action="store_true", help="no re-ingest to object storage"
    )
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds: at least 3, to see the noise")
    with tempfile.TemporaryDirectory(prefix="headrace-bench-") as tmp:
        state_dir = Path(tmp) / "runs"
        tree = synthetic_tree(Path(tmp) / "synthetic", args.small, args.large)
        label = f"synthetic tree ({args.small:,} small files)"
        try:
            configs = chosen(args.configs)
        except KeyError as exc:
            parser.error(f"--configs: no configuration {exc}; there are {', '.join(NAMES)}")
        measure(label, tree, 100 * 1024, args.rounds, state_dir, configs)
        if not args.skip_stdlib:
            stdlib = Path(sysconfig.get_paths()["stdlib"])
            label = f"Python standard library ({stdlib})"
            measure(label, stdlib, 1024 * 1024, args.rounds, state_dir, configs)
        if args.skip_object_storage:
            return
        env = fresh_env(uuid.uuid4().hex[:8], state_dir)
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
