"""Benchmark: the archive and load groups as 1, 2 and 4 processes, against their baselines.

Publishes N FileEvents with inline source text (default 400,000, 200-600 B each) to a
fresh topic of 12 partitions, then runs ``headrace consume GROUP --processes P
--until-caught-up`` as a subprocess for each P (``--processes``, default 1 2 4), each
group on its own consumer group (and, for the load group, its own PostgreSQL schema),
and measures in the same run, every round:

- archive group: events/s, the ratio to one process, and to a bare consumer draining
  the same topic (``bench/archive.py``'s raw drain, the baseline);
- load group into PostgreSQL: rows/s, the ratio to one process, to ``Database.write``
  of the same rows alone and to a binary ``COPY`` of them (``bench/load.py``'s);
- for each run: the wall time and the rate over it (from the command's start to its
  exit, so with start-up, joining and the final commit), and the rate over the drain
  alone (from when every worker may read, as the bare consumer's from its first
  records: the workers' ``the group is whole`` line, or one process's ``assigned``
  line, to the line saying every partition was read to its end), with how long the
  workers held their first assignment until the group was whole (``held s``); CPU
  seconds per 100,000 records of the group's processes
  (``getrusage(RUSAGE_CHILDREN)`` around the subprocess: the supervisor waits for its
  workers), of the broker and of PostgreSQL (``/proc``, whoever's load
  it is), and how busy the machine was;
- after each run, that every event was archived or loaded exactly once: distinct
  paths and lines (archive) or rows (load) against what was published.

Prints the median of ``--rounds`` rounds with (slowest-fastest), the load average,
and whether the issue's targets are met.

    .venv/bin/python bench/scaling.py                                      # both groups
    .venv/bin/python bench/scaling.py --groups load --bytes 2000 4000      # 2-4 KiB rows
    .venv/bin/python bench/scaling.py --events 2000 --processes 1 2 --rounds 1  # CI
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
# bench/git.py must not shadow GitPython's `git` (as in bench/load.py); the benches are
# imported from the project root instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import psycopg  # noqa: E402 - after the path
from psycopg import sql  # noqa: E402

from bench.archive import raw_drain  # noqa: E402
from bench.load import all_rows, copy_baseline, publish, write_only  # noqa: E402
from headrace.kafka import ensure_topics, make_admin  # noqa: E402
from headrace.settings import Settings, load_settings  # noqa: E402
from storage.archive import read  # noqa: E402
from storage.db import FileRow  # noqa: E402
from storage.db.postgres import PostgresDatabase  # noqa: E402

END_LINES = ("every worker read its partitions to the end", "read every partition to the end")
WHOLE_LINE = "the group is whole: reading"  # a supervised worker's, once it may read
HZ = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    """CPU seconds so far: this process's children, itself, the broker, PostgreSQL, and
    the whole machine (busy, not idle or iowait)."""

    children: float
    own: float
    broker: float
    postgres: float
    machine: float

    @classmethod
    def now(cls) -> Usage:
        kids, me = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(0)
        broker = postgres = 0.0
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                stat = (proc / "stat").read_text()
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:  # gone meanwhile
                continue
            comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1]
            fields = rest.split()  # utime stime cutime cstime: fields[11:15]
            ticks = sum(int(f) for f in fields[11:15]) / HZ  # cutime: a postmaster's backends
            if b"kafka.Kafka" in cmdline:
                broker += ticks
            elif comm == "postgres":
                postgres += ticks
        cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        machine = (sum(cpu) - cpu[3] - cpu[4]) / HZ  # all but idle and iowait
        return cls(
            kids.ru_utime + kids.ru_stime,
            me.ru_utime + me.ru_stime,
            broker,
            postgres,
            machine,
        )

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            self.children - other.children,
            self.own - other.own,
            self.broker - other.broker,
            self.postgres - other.postgres,
            self.machine - other.machine,
        )


@dataclass(frozen=True)
class Run:
    """One measured run: a group of ``processes`` processes, or a baseline (0)."""

    label: str
    processes: int
    records: int
    wall_s: float
    drain_s: float
    cpu: Usage
    load: float  # the 1-minute load average at its end
    once: str  # the exactly-once check, said
    held_s: float = 0.0  # a group of workers: first assignment to the group whole

    def cpu_per_100k(self, of: str) -> float:
        return float(getattr(self.cpu, of)) / self.records * 1e5


def said(run: Run, r: int) -> Run:
    """The run, printed as it ends (a long bench shows where it is)."""
    print(
        f"  round {r} {run.label}: {run.records / run.drain_s:,.0f}/s drain,"
        f" {run.records / run.wall_s:,.0f}/s whole run, {run.wall_s:.1f} s,"
        f" held {run.held_s:.2f} s",
        flush=True,
    )
    return run


def measured(label: str, records: int, work: Callable[[], float], once: str = "") -> Run:
    """A baseline run in this process: ``work`` returns the seconds it timed itself."""
    before, started = Usage.now(), time.perf_counter()
    seconds = work()
    wall = time.perf_counter() - started
    return Run(label, 0, records, wall, seconds, Usage.now() - before, os.getloadavg()[0], once)


def consume(group: str, processes: int, env: dict[str, str], records: int) -> Run:
    """``headrace consume GROUP --processes P --until-caught-up`` as a subprocess."""
    argv = [sys.executable, "-m", "headrace", "--log-format", "json", "consume", group]
    argv += ["--processes", str(processes), "--until-caught-up"]
    before, started = Usage.now(), time.perf_counter()
    done = subprocess.run(  # noqa: S603 - headrace's own command
        argv, env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    wall, cpu = time.perf_counter() - started, Usage.now() - before
    if done.returncode != 0:
        raise SystemExit(f"{group} x{processes} exited {done.returncode}:\n{done.stderr[-3000:]}")
    assigned = whole = end = None
    for line in done.stderr.splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        message, at = entry["message"], datetime.fromisoformat(entry["time"]).timestamp()
        if assigned is None and message.startswith("assigned ") and "nothing" not in message:
            assigned = at
        if whole is None and message.startswith(WHOLE_LINE):
            whole = at
        if end is None and any(text in message for text in END_LINES):
            end = at
    if assigned is None or end is None:
        raise SystemExit(f"{group} x{processes}: no assigned or end line:\n{done.stderr[-3000:]}")
    written = int(done.stdout.rsplit(": ", 1)[1].split()[0])
    reading = whole if whole is not None else assigned  # as the bare consumer's first records
    return Run(
        f"{group} group x{processes}",
        processes,
        records,
        wall,
        end - reading,
        cpu,
        os.getloadavg()[0],
        f"the group wrote {written:,} records",
        reading - assigned,
    )


def environment(settings: Settings, topic: str, prefix: str, tmp: Path) -> dict[str, str]:
    """The group's settings: this run's topics, group ids, and files under ``tmp``."""
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {
        **os.environ,
        "PYTHONPATH": python_path,  # this checkout's code, whatever is installed
        "HEADRACE_KAFKA__PARTITIONS": str(settings.kafka.partitions),
        "HEADRACE_KAFKA__TOPICS__FILE_EVENTS": topic,
        "HEADRACE_KAFKA__TOPICS__RUN_EVENTS": f"{topic}.runs",
        "HEADRACE_KAFKA__TOPICS__VERIFICATIONS": f"{topic}.verifications",
        "HEADRACE_KAFKA__TOPICS__ROW_EVENTS": f"{topic}.rows",
        "HEADRACE_KAFKA__TOPICS__DEAD_LETTER": f"{topic}.dlq",
        "HEADRACE_CONSUMER__GROUP_PREFIX": prefix,
        "HEADRACE_CONSUMER__METRICS_PORT": "0",
        "HEADRACE_CONSUMER__INSTANCES_DIR": str(tmp / "instances"),
        "HEADRACE_METRICS__TARGETS_DIR": str(tmp / "targets"),
        "HEADRACE_HISTORY__SQLITE_PATH": str(tmp / "history.sqlite3"),
    }


def archived_once(root: Path, topic: str, n: int) -> str:
    paths = Counter(line.event["path"] for line in read(root, topic=topic))
    lines, twice = sum(paths.values()), sum(1 for c in paths.values() if c > 1)
    ok = len(paths) == n and lines == n
    verdict = "exactly once: yes" if ok else "exactly once: NO"
    return f"{verdict} ({len(paths):,} distinct paths, {lines:,} lines, {twice} twice, of {n:,})"


def loaded_once(settings: Settings, schema: str, n: int) -> str:
    with psycopg.connect(settings.postgres.conninfo(), autocommit=True) as conn:
        query = sql.SQL("SELECT count(*), count(DISTINCT path) FROM {} WHERE project = 'bench'")
        found = conn.execute(query.format(sql.Identifier(schema, "files"))).fetchone()
    rows, paths = found if found is not None else (0, 0)
    verdict = "exactly once: yes" if rows == paths == n else "exactly once: NO"
    return f"{verdict} ({rows:,} rows, {paths:,} distinct paths, of {n:,})"


def drop_schema(settings: Settings, schema: str) -> None:
    with psycopg.connect(settings.postgres.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def fresh_schema(settings: Settings, schema: str) -> None:
    """Migrated before the group starts: its workers find it ready (and race no one)."""
    with PostgresDatabase(settings.postgres, schema=schema) as db:
        db.migrate()


def archive_round(
    settings: Settings, topic: str, n: int, processes: list[int], tag: str, r: int
) -> list[Run]:
    runs = [said(measured("bare consumer (baseline)", n, lambda: raw_drain(topic, n)), r)]
    for p in processes:
        with tempfile.TemporaryDirectory(prefix="headrace-bench-scaling-") as tmp:
            env = environment(settings, topic, f"bench-scale-{tag}-r{r}-p{p}.", Path(tmp))
            env["HEADRACE_ARCHIVE__ROOT"] = str(Path(tmp) / "archive")
            run = consume("archive", p, env, n)
            once = archived_once(Path(tmp) / "archive", topic, n)
        runs.append(said(replace(run, once=f"{run.once}; {once}"), r))
    return runs


def load_round(
    settings: Settings,
    topic: str,
    n: int,
    processes: list[int],
    tag: str,
    r: int,
    rows: list[FileRow],
) -> list[Run]:
    """The load group for each count, then the baselines on the rows it loaded (taken
    from the first run into ``rows`` when empty)."""
    runs = []
    for p in processes:
        schema = f"bench_scale_{tag}_r{r}_p{p}"
        fresh_schema(settings, schema)
        try:
            with tempfile.TemporaryDirectory(prefix="headrace-bench-scaling-") as tmp:
                env = environment(settings, topic, f"bench-scale-{tag}-r{r}-p{p}.", Path(tmp))
                env["HEADRACE_LOAD__BACKEND"] = "postgres"
                env["HEADRACE_LOAD__POSTGRES_SCHEMA"] = schema
                run = consume("load", p, env, n)
            once = loaded_once(settings, schema, n)
            runs.append(said(replace(run, once=f"{run.once}; {once}"), r))
            if not rows:
                with PostgresDatabase(settings.postgres, schema=schema) as db:
                    rows.extend(all_rows(db))
        finally:
            drop_schema(settings, schema)
    schema = f"bench_scale_{tag}_r{r}_w"
    fresh_schema(settings, schema)
    try:
        with PostgresDatabase(settings.postgres, schema=schema) as db:
            batch = settings.load.batch_size
            write = measured("Database.write", n, lambda: write_only(db, rows, batch))
        copy = measured("COPY (binary)", n, lambda: copy_baseline(settings, schema, rows))
        runs += [said(write, r), said(copy, r)]
    finally:
        drop_schema(settings, schema)
    return runs


def median(values: Iterable[float]) -> str:
    got = sorted(values)
    mid = statistics.median(got)
    spread = f" ({got[0]:,.0f}-{got[-1]:,.0f})" if len(got) > 1 else ""
    return f"{mid:,.0f}{spread}"


def table(title: str, unit: str, rounds: list[list[Run]], baselines: list[str]) -> dict[str, float]:
    """Print the medians of each label over the rounds; return its drain-rate medians."""
    labels = [run.label for run in rounds[0]]
    by = {label: [next(x for x in rnd if x.label == label) for rnd in rounds] for label in labels}
    rate = {label: [x.records / x.drain_s for x in runs] for label, runs in by.items()}
    medians = {label: statistics.median(values) for label, values in rate.items()}
    one = next((label for label in labels if label.endswith(" x1")), None)
    print(f"\n{title}; median of {len(rounds)} round(s) (slowest-fastest)")
    heads = [f"{unit} (drain)", "vs x1", *(f"vs {b.split(' (')[0]}" for b in baselines)]
    heads += [f"{unit} (whole run)", "wall s", "held s", "CPU s/100k", "cores", "broker"]
    heads += ["postgres", "busy"]
    print("| " + " | ".join(["run", *heads]) + " |")
    print("|---|" + "---:|" * len(heads))
    for label, runs in by.items():
        ratios = [f"{medians[label] / medians[one]:.2f}x" if one and runs[0].processes else ""]
        ratios += [f"{medians[label] / medians[b]:.2f}x" for b in baselines]
        whole = median(x.records / x.wall_s for x in runs)
        cores = statistics.median(x.cpu.children / x.wall_s for x in runs)
        cpu = statistics.median(x.cpu_per_100k("children" if x.processes else "own") for x in runs)
        broker = statistics.median(x.cpu_per_100k("broker") for x in runs)
        pg = statistics.median(x.cpu_per_100k("postgres") for x in runs)
        busy = statistics.median(x.cpu.machine / x.wall_s for x in runs)
        cells = [label, median(rate[label]), *ratios, whole]
        cells += [f"{statistics.median(x.wall_s for x in runs):.2f}"]
        cells += [f"{statistics.median(x.held_s for x in runs):.2f}", f"{cpu:.2f}"]
        cells += [f"{cores:.2f}" if runs[0].processes else "1 (this process)"]
        cells += [f"{broker:.2f}", f"{pg:.2f}", f"{busy:.2f} of {os.cpu_count()}"]
        print("| " + " | ".join(cells) + " |")
    print("  exactly once, each run:")
    for r, rnd in enumerate(rounds, 1):
        for x in rnd:
            if x.processes:
                print(f"    round {r} {x.label}: {x.once}; load average {x.load:.2f}")
    return medians


def target(what: str, got: float, wanted: float) -> None:
    verdict = "met" if got >= wanted else "NOT met"
    print(f"  target: {what} at least {wanted}: {got:.2f}, {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument(
        "--bytes", type=int, nargs=2, default=(200, 600), metavar=("MIN", "MAX"),
        help="Inline content size range (default 200 600, as bench/load.py).",
    )  # fmt: skip
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4], metavar="N")
    parser.add_argument(
        "--groups", nargs="+", choices=("archive", "load"), default=["archive", "load"]
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    processes = sorted(set(args.processes))
    settings = load_settings()
    settings = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"partitions": 12})}
    )
    tag = uuid.uuid4().hex[:8]
    topic = f"bench.scale-{tag}"
    admin = make_admin(settings.kafka)
    ensure_topics(admin, [topic], partitions=12, replication_factor=1)
    n, (low, high) = args.events, args.bytes
    commit = subprocess.run(  # noqa: S603 - git, on this checkout
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],  # noqa: S607 - git on PATH
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    load1, load5, _ = os.getloadavg()
    print(
        f"commit {commit or '?'}, {os.cpu_count()} cores, load average {load1:.2f} {load5:.2f}"
        f" at the start; {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
    )
    started = time.perf_counter()
    publish(settings, n, topic, (low, high))
    print(
        f"published {n:,} FileEvents with {low}-{high} B of inline source text to 12"
        f" partitions in {time.perf_counter() - started:.1f}s; processes {processes}"
    )
    try:
        archive: list[list[Run]] = []
        load: list[list[Run]] = []
        rows: list[FileRow] = []
        for r in range(1, args.rounds + 1):
            if "archive" in args.groups:
                archive.append(archive_round(settings, topic, n, processes, tag, r))
            if "load" in args.groups:
                load.append(load_round(settings, topic, n, processes, tag, r, rows))
            print(f"round {r} done, load average {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        suffixes = ("", ".runs", ".verifications", ".rows", ".dlq")
        admin.delete_topics([topic + s for s in suffixes], operation_timeout=30)
        groups = [
            f"bench-scale-{tag}-r{r}-p{p}.{g}"
            for r in range(1, args.rounds + 1)
            for p in processes
            for g in args.groups
        ]
        for future in admin.delete_consumer_groups(groups, request_timeout=30).values():
            try:
                future.result()
            except Exception:  # noqa: BLE001, S112 - one that never was: nothing to delete
                continue
    cols = "CPU s/100k: of the group's processes (baselines: this one); broker, postgres:"
    print(f"\n{cols} those servers' CPU s/100k in the run, whoever caused it; busy: cores busy")
    two = 2 in processes and 1 in processes
    if archive:
        title = f"archive group, {n:,} events of {low}-{high} B, 12 partitions"
        m = table(title, "events/s", archive, ["bare consumer (baseline)"])
        if two:
            x1, x2 = m["archive group x1"], m["archive group x2"]
            target("archive x2 / x1", x2 / x1, 1.6)
            target("archive x2 / bare consumer", x2 / m["bare consumer (baseline)"], 0.25)
    if load:
        title = f"load group -> PostgreSQL, {n:,} rows of {low}-{high} B, 12 partitions"
        m = table(title, "rows/s", load, ["Database.write", "COPY (binary)"])
        if two:
            x1, x2 = m["load group x1"], m["load group x2"]
            if low < 2000:  # the targets: 1.5x on small rows, the rest on 2-4 KiB
                target("load x2 / x1 (200-600 B rows)", x2 / x1, 1.5)
            if high > 600:
                target("load x2 / Database.write (2-4 KiB rows)", x2 / m["Database.write"], 0.8)
                target("load x2 / COPY (2-4 KiB rows)", x2 / m["COPY (binary)"], 0.5)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    failed = [x for rnd in archive + load for x in rnd if "exactly once: NO" in x.once]
    if failed:
        raise SystemExit(f"{len(failed)} run(s) did not write every event exactly once")


if __name__ == "__main__":
    main()
