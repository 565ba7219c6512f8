"""A backup of the load database taken while the load group runs, restored afterwards:
the group then completes it from Kafka, every row as a straight load left it, no
offset loaded twice (SQLite and PostgreSQL, against the real stack)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.test_archive import wait_for
from tests.integration.test_load import (
    COLUMNS,
    consume,
    env,  # noqa: F401 - the fixture, reused
    file_event,
    ledger_rows,
    publish,
    sql,
    table,
)
from tests.unit.test_cli import run

FILES = 6000


def without_updated_at(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The rows but for updated_at (when a row was last written: a reload writes anew)."""
    at = COLUMNS.index("updated_at")
    return sorted(r[:at] + r[at + 1 :] for r in rows)


def test_a_backup_taken_while_loading_restores_and_the_group_completes_it_once(
    env: dict[str, str],  # noqa: F811 - the fixture
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HEADRACE_LOAD__BACKUPS_DIR", str(tmp_path / "backups"))
    monkeypatch.setenv("HEADRACE_CONSUMER__INSTANCES_DIR", str(tmp_path / "instances"))
    events = [file_event(f"f{i:05d}.txt", i % 13, f"file {i}") for i in range(FILES)]
    events += [file_event(f"f{i:05d}.txt", 20, f"file {i} v2") for i in range(0, FILES, 4)]
    publish(env, events)
    loader = subprocess.Popen(
        [sys.executable, "-m", "headrace", "consume", "load", "--until-caught-up"],
        env={**os.environ, "HEADRACE_LOAD__BATCH_SIZE": "100"},  # the live load group's
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        group = env["HEADRACE_CONSUMER__GROUP_PREFIX"] + "load"

        def loaded() -> int:
            try:
                return int(sql("SELECT count(*) FROM load_ledger WHERE group_name = %s", group))
            except Exception:  # noqa: BLE001 - the tables may not exist yet
                return 0

        wait_for(lambda: loaded() > 3, 120, "the load group to commit a few batches")
        code, out, err = run(["db", "backup", "--json"], capsys)
        assert code == 0, err
        still_loading = loader.poll() is None
        name = orjson.loads(out)["name"]
        code, _, err = run(["db", "restore", name], capsys)  # under a running loader: no
        refused = code
        _, loader_err = loader.communicate(timeout=300)
    finally:
        if loader.poll() is None:
            loader.kill()
            loader.communicate()
    assert still_loading, "the load group finished before the backup: no proof"
    assert refused == 1 and "a load group holds the database" in err, err
    assert loader.returncode == 0, loader_err.decode()[-2000:]
    full = table()
    assert len(full) == FILES

    code, out, err = run(["db", "restore", name, "--json"], capsys)
    assert code == 0, err
    restored = table()
    assert 0 < len(restored) < FILES or without_updated_at(restored) != without_updated_at(full)

    consume(capsys)  # the group resumes from the restored ledger
    assert without_updated_at(table()) == without_updated_at(full)  # row by row
    assert ledger_rows(group) == len(events)  # every offset loaded once, none twice
