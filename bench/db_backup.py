"""Benchmark: ``headrace db backup`` (SQLite ``VACUUM INTO``) of a large load database
while a loader writes to it.

Builds a SQLite load database of about ``--gb`` GB (FileRows with inline content,
written through ``Database.write`` as the load group writes them, ledger entries
included), then, in the same run:

- baseline: a loader thread writing batches of ``--batch`` rows for ``--seconds``,
  its rows/s, without a backup;
- the backup: ``storage.db.backup.backup`` (VACUUM INTO a temporary file, fsync,
  rename, manifest with sha256), its seconds and bytes, while the same loader
  writes; the loader's rows/s during the backup and its ratio to the baseline;
- proof: the backup opens, passes ``PRAGMA integrity_check`` and holds at least
  the rows written before it began.

    .venv/bin/python bench/db_backup.py                 # 1 GB
    .venv/bin/python bench/db_backup.py --gb 0.05       # a quick check
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

from headrace.settings import load_settings
from storage.db.backup import backup
from storage.db.rows import FileRow, LedgerEntry
from storage.db.sqlite import SqliteDatabase

CONTENT = 16 * 1024  # inline bytes a row of the database built
LOADED = 1024  # inline bytes a row the loader writes during the measurements
GROUP, TOPIC = "bench.load", "bench.files"


def rows(start: int, count: int, size: int = CONTENT) -> list[FileRow]:
    found = []
    for i in range(start, start + count):
        data = hashlib.sha256(str(i).encode()).digest() * (size // 32)
        found.append(
            FileRow(
                "bench",
                f"src/{i:09d}.bin",
                hashlib.sha256(data).hexdigest(),
                len(data),
                "INLINE",
                data,
                None,
                "BINARY",
                None,
                False,
                f"{i:032x}",
                1_700_000_000_000 + i,
                "run-1",
                TOPIC,
                0,
                i,
            )
        )
    return found


class Loader:
    """Writes batches as the load group does, until stopped; counts rows and when."""

    def __init__(self, path: Path, start: int, batch: int) -> None:
        self.db = SqliteDatabase(path)
        self.next, self.batch = start, batch
        self.written: list[tuple[float, int]] = []  # (monotonic time, rows) per batch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = rows(self.next, self.batch, LOADED)
            entry = LedgerEntry(GROUP, TOPIC, 0, self.next, self.next + self.batch - 1, self.batch)
            self.db.write(batch, ledger=[entry])
            self.next += self.batch
            self.written.append((time.monotonic(), self.batch))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.db.close()

    def rate(self, since: float, until: float) -> float:
        count = sum(n for t, n in self.written if since < t <= until)
        return count / (until - since)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="headrace-bench-backup-"))
    os.environ["HEADRACE_LOAD__BACKEND"] = "sqlite"
    os.environ["HEADRACE_LOAD__SQLITE_PATH"] = str(work / "db" / "load.sqlite3")
    os.environ["HEADRACE_LOAD__BACKUPS_DIR"] = str(work / "backups")
    settings = load_settings()
    path = settings.load.sqlite_path
    path.parent.mkdir(parents=True)
    try:
        db = SqliteDatabase(path)
        db.migrate()
        began, n, step = time.monotonic(), 0, 2000
        while path.stat().st_size < args.gb * 1e9:
            entry = LedgerEntry(GROUP, TOPIC, 0, n, n + step - 1, step)
            db.write(rows(n, step), ledger=[entry])
            n += step
        db.close()
        size = path.stat().st_size
        print(
            f"database: {n:,} rows, {size / 1e9:.2f} GB, built in {time.monotonic() - began:.1f} s"
        )

        loader = Loader(path, n, args.batch)
        loader.start()
        t0 = time.monotonic()
        time.sleep(args.seconds)  # the bench's measuring window, not a wait for a condition
        t1 = time.monotonic()
        before = loader.next
        made = backup(settings)
        t2 = time.monotonic()
        time.sleep(1.0)
        loader.stop()
        base, during = loader.rate(t0, t1), loader.rate(t1, t2)
        print(f"loader alone: {base:,.0f} rows/s over {t1 - t0:.1f} s")
        print(
            f"backup (VACUUM INTO, fsync, rename, sha256): {t2 - t1:.1f} s,"
            f" {made.size / 1e9:.2f} GB, {made.size / 1e6 / (t2 - t1):,.0f} MB/s"
        )
        print(
            f"loader during the backup: {during:,.0f} rows/s ({during / base:.0%} of alone)"
            if base
            else "loader wrote nothing alone"
        )
        conn = sqlite3.connect(made.path)
        try:
            check = conn.execute("PRAGMA integrity_check").fetchone()
            count = conn.execute("SELECT count(*) FROM files").fetchone()
        finally:
            conn.close()
        held = int(count[0]) if count else 0
        print(f"proof: integrity_check {check[0] if check else '?'}; {held:,} rows in the backup")
        if not check or check[0] != "ok" or held < before - args.batch:
            raise SystemExit("the backup is not a consistent copy")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
