"""Benchmark: ``headrace archive-table`` end to end, against PostgreSQL ``COPY``.

Builds a table of N rows (default 1,000,000) with a column of every supported
type (numbers, text, times, interval, uuid, json/jsonb, arrays with NULLs,
bytea, an enum), all older than the retention, then in the same run measures:

- baseline: ``COPY (SELECT * FROM t ORDER BY ts, id) TO STDOUT`` of the same
  rows, text format (what reading them out of PostgreSQL costs at the least);
- archive-table end to end (``producers.tables.archiver.archive_table``): lock
  a batch, encode, publish in a Kafka transaction, wait for the archive group
  (``headrace consume archive``, a process of its own) to hold it, read it
  back and verify every checksum, delete, commit; rows/s, seconds per batch,
  and its fraction of COPY's rows/s;
- CPU time per row of the archiver (this process) and of the archive group (its
  process, from /proc), each over the run only: the cost of a row whatever else
  the machine is doing (wall-clock figures on a shared machine are not);
- proof: the table is empty afterwards and the archive holds every row once
  (checksums compared with those of the rows read before).

    .venv/bin/python bench/archive_table.py                       # full figures
    .venv/bin/python bench/archive_table.py --rows 20000          # a quick check
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from headrace.kafka import make_admin
from headrace.settings import load_settings
from producers.tables import rows
from producers.tables.archiver import ArchiveRequest, BatchDone, archive_table
from producers.tables.catalog import TableRef
from producers.tables.confirm import ArchiveConfirm
from storage.archive import read

ROOT = Path(__file__).resolve().parent.parent
DDL = """
CREATE TYPE {s}.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE {s}.events (
    id bigint PRIMARY KEY,
    created_at timestamptz NOT NULL,
    c_int2 smallint, c_int4 integer, c_numeric numeric(20, 6), c_real real,
    c_double double precision, c_text text, c_varchar varchar(40), c_char char(4),
    c_bool boolean, c_date date, c_time time, c_ts timestamp, c_interval interval,
    c_uuid uuid, c_json json, c_jsonb jsonb, c_int_arr integer[], c_text_arr text[],
    c_bytea bytea, c_mood {s}.mood
)
"""
FILL = """
INSERT INTO {s}.events SELECT g,
    timestamptz '2025-01-01 00:00:00+00' - make_interval(secs => g * 7.000001),
    (g %% 32768)::smallint, g::integer, (g * 1.000001)::numeric(20, 6), g / 7.0::real,
    g / 3.0, 'row ' || g || E' \\u00e9 with some text to make it a log line', 'v' || g,
    'c' || (g %% 100), g %% 2 = 0, date '2024-01-01' - (g %% 3650),
    time '00:00:00' + make_interval(secs => g %% 86400),
    timestamp '2024-06-01' + make_interval(secs => g),
    make_interval(days => g %% 40, secs => g %% 3600), md5(g::text)::uuid,
    json_build_object('g', g, 'tags', json_build_array('a', 'b')),
    jsonb_build_object('g', g, 'ok', g %% 3 = 0), ARRAY[g, NULL, g + 1], ARRAY['x' || g, NULL],
    decode(md5(g::text), 'hex'), (ARRAY['sad', 'ok', 'happy'])[1 + g %% 3]::{s}.mood
FROM generate_series(%s::int, %s::int) AS g
"""


def connect(settings: Any) -> psycopg.Connection[Any]:
    pg = settings.postgres
    return psycopg.connect(
        host=pg.host,
        port=pg.port,
        dbname=pg.database,
        user=pg.user,
        password=pg.password.get_secret_value() if pg.password else None,
        autocommit=True,
    )


def build(conn: psycopg.Connection[Any], schema: str, n: int) -> float:
    began = time.perf_counter()
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    for statement in DDL.format(s=schema).split(";"):
        if statement.strip():
            conn.execute(statement)
    step = 200_000
    for start in range(1, n + 1, step):
        conn.execute(FILL.format(s=schema), (start, min(n, start + step - 1)))
    conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(schema, "events")))
    return time.perf_counter() - began


def copy_out(conn: psycopg.Connection[Any], schema: str) -> tuple[float, int]:
    """Seconds and bytes of COPY (SELECT ... ORDER BY ts, id) TO STDOUT."""
    began, size = time.perf_counter(), 0
    query = sql.SQL("COPY (SELECT * FROM {} ORDER BY created_at, id) TO STDOUT").format(
        sql.Identifier(schema, "events")
    )
    with conn.cursor() as cur, cur.copy(query) as copy:
        for data in copy:
            size += len(data)
    return time.perf_counter() - began, size


def checksums(conn: psycopg.Connection[Any], schema: str) -> dict[str, str]:
    rows.prepare(conn)
    types = rows.table_types(conn, schema, "events")
    found = {}
    for values in conn.execute(
        sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, "events"))
    ):
        row = rows.encode_row(types, values)
        found[str(row[0].value)] = rows.checksum(row)
    return found


def archived(root: Path, topic: str, schema: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in read(root, topic=topic):
        event = line.event
        if event["schema"] == schema:
            found[event["key"][0]["value"]] = event["checksum"]
    return found


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Batches:
    def __init__(self) -> None:
        self.done: list[BatchDone] = []

    def start(self, eligible: int) -> None:
        print(f"archive-table: {eligible:,} rows eligible")

    def batch(self, done: BatchDone) -> None:
        self.done.append(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--keep", action="store_true", help="keep the schema and archive")
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="headrace-bench-at-"))
    schema = f"bench_at_{tag}"
    env = {
        "HEADRACE_KAFKA__TOPICS__ROW_EVENTS": f"bench.at-{tag}.rows",
        "HEADRACE_KAFKA__TOPICS__FILE_EVENTS": f"bench.at-{tag}.files",
        "HEADRACE_KAFKA__TOPICS__RUN_EVENTS": f"bench.at-{tag}.runs",
        "HEADRACE_KAFKA__TOPICS__VERIFICATIONS": f"bench.at-{tag}.verifications",
        "HEADRACE_KAFKA__TOPICS__DEAD_LETTER": f"bench.at-{tag}.dlq",
        "HEADRACE_CONSUMER__GROUP_PREFIX": f"bench-at-{tag}.",
        "HEADRACE_CONSUMER__INSTANCES_DIR": str(work / "instances"),
        "HEADRACE_CONSUMER__METRICS_PORT": "0",
        "HEADRACE_ARCHIVE__ROOT": str(work / "archive"),
        "HEADRACE_ARCHIVE__BACKEND": "local",
        "HEADRACE_TABLES__STATE_DIR": str(work / "tables"),
    }
    os.environ.update(env)
    settings = load_settings()
    pg = settings.postgres
    for key, value in {
        "HOST": pg.host,
        "PORT": str(pg.port),
        "DATABASE": pg.database,
        "USER": pg.user,
    }.items():
        os.environ[f"HEADRACE_SOURCES__BENCH__{key}"] = value
    if pg.password is not None:
        os.environ["HEADRACE_SOURCES__BENCH__PASSWORD"] = pg.password.get_secret_value()
    settings = load_settings()
    conn = connect(settings)
    group: subprocess.Popen[bytes] | None = None
    try:
        built = build(conn, schema, args.rows)
        print(f"table: {args.rows:,} rows, every type, built in {built:.1f} s")
        copy_s, copy_bytes = copy_out(conn, schema)
        copy_rate = args.rows / copy_s
        print(
            f"baseline COPY TO STDOUT: {copy_s:.2f} s, {copy_rate:,.0f} rows/s,"
            f" {copy_bytes / 1e6:.0f} MB"
        )
        before = checksums(conn, schema)

        group = subprocess.Popen(  # noqa: S603 - our own command
            [sys.executable, "-m", "headrace", "consume", "archive"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=(work / "archive-group.log").open("wb"),
        )
        confirm = ArchiveConfirm(settings)
        deadline = time.monotonic() + 120
        while not confirm.members()[1]:
            if time.monotonic() > deadline or group.poll() is not None:
                raise SystemExit("the archive group did not start: see archive-group.log")
            time.sleep(0.5)

        request = ArchiveRequest(
            "bench",
            settings.source("bench"),
            TableRef(schema, "events"),
            timedelta(days=90),
            timestamp_column="created_at",
            batch_size=args.batch_size,
        )
        batches = Batches()
        group_cpu = cpu_seconds(group.pid)
        began, cpu = time.perf_counter(), time.process_time()
        try:
            summary = archive_table(settings, request, batches)
        except Exception:
            log = (work / "archive-group.log").read_text(errors="replace").splitlines()
            print("the archive group's log ends:", *log[-15:], sep="\n  ", file=sys.stderr)
            raise
        seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
        group_cpu = cpu_seconds(group.pid) - group_cpu
        rate = summary.rows / seconds
        per_batch = [b.seconds for b in batches.done]
        print(
            f"archive-table: {summary.rows:,} rows in {summary.batches} batches of"
            f" {args.batch_size:,}, {seconds:.1f} s, {rate:,.0f} rows/s"
            f" ({rate / copy_rate:.1%} of COPY's rows/s); {summary.bytes / 1e6:.0f} MB of events"
        )
        print(
            f"  seconds per batch: mean {statistics.mean(per_batch):.2f},"
            f" median {statistics.median(per_batch):.2f}, max {max(per_batch):.2f}"
        )
        print(
            f"  CPU per row: archiver {cpu / summary.rows * 1e6:.0f} us,"
            f" archive group {group_cpu / summary.rows * 1e6:.0f} us"
        )
        left = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.events").format(sql.Identifier(schema))
        )
        remaining = left.fetchone()
        found = archived(work / "archive", env["HEADRACE_KAFKA__TOPICS__ROW_EVENTS"], schema)
        same = sum(1 for k, c in before.items() if found.get(k) == c)
        print(
            f"proof: {remaining[0] if remaining else '?'} rows left in the table;"
            f" {len(found):,} archived, {same:,} of {len(before):,} with the source row's checksum"
        )
        if same != len(before) or (remaining and int(remaining[0]) != 0):
            raise SystemExit("rows were lost or changed")
    finally:
        if group is not None:
            group.send_signal(signal.SIGTERM)
            group.wait(60)
        if not args.keep:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            make_admin(settings.kafka).delete_topics(
                [v for k, v in env.items() if "__TOPICS__" in k]
            )
            shutil.rmtree(work, ignore_errors=True)
        conn.close()


if __name__ == "__main__":
    main()
