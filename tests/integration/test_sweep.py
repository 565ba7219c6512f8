"""``headrace sweep`` against the real stack: a source through every step, ending green."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_ingest import git
from tests.integration.test_verify import env, pipeline  # noqa: F401 - fixtures used by name
from tests.unit.test_cli import run

STEPS = ["ingest", "archive", "load", "cache", "verify", "report"]


def sweep_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code, out, err = run(["sweep", *argv, "--json"], capsys)
    assert code in (0, 1), err
    result = json.loads(out)
    assert isinstance(result, dict)
    return code, result


def statuses(result: dict[str, Any]) -> dict[str, str]:
    return {s["step"]: s["status"] for s in result["steps"]}


def make_tree(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    for i in range(6):
        (root / "src" / f"m{i}.py").write_text(f"print({i})\n")
    (root / "data.bin").write_bytes(os.urandom(4000))
    return root


@pytest.mark.usefixtures("pipeline")
def test_a_sweep_of_a_directory_ends_green(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = make_tree(tmp_path / "tree")
    code, result = sweep_json(capsys, str(tree), "--inline-limit", "1KiB")
    assert code == 0 and result["ok"], result
    assert statuses(result) == dict.fromkeys(STEPS, "done")
    assert result["report"]["counts"]["verified"]["files"] == 7
    assert result["ingest"]["counts"]["object_storage"] == 1
    code, out, _err = run(["sweep", str(tree), "--run-id", result["run_id"]], capsys)
    assert code == 0 and "arrived whole on every side" in out  # swept again: all done earlier


@pytest.mark.usefixtures("pipeline")
def test_a_sweep_of_a_git_repository_ends_green(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = make_tree(tmp_path / "repo")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "one")
    code, result = sweep_json(capsys, str(repo), "--inline-limit", "1KiB")
    assert code == 0 and result["ok"], result["report"]
    assert result["report"]["commit"] == git(repo, "rev-parse", "HEAD")


@pytest.mark.parametrize("skipped", ["archive", "load", "cache", "verify"])
@pytest.mark.usefixtures("pipeline")
def test_each_skip_leaves_out_its_step(
    skipped: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = make_tree(tmp_path / "tree")
    code, result = sweep_json(capsys, str(tree), "--inline-limit", "1KiB", f"--skip-{skipped}")
    assert statuses(result)[skipped] == "skipped"
    assert all(s == "done" for step, s in statuses(result).items() if step != skipped)
    if skipped == "cache":  # the cache is no side of the proof
        assert code == 0 and result["ok"]
    else:  # the side the skipped group feeds is missing: the report says so
        assert code == 1 and not result["report"]["ok"]
        # ... and sweeping the same run again without the skip completes it
        code, again = sweep_json(capsys, str(tree), "--resume", result["run_id"])
        assert code == 0 and again["ok"], again["report"]
        assert statuses(again)["ingest"] == "done earlier"


@pytest.mark.usefixtures("pipeline")
def test_skip_ingest_sweeps_an_existing_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = make_tree(tmp_path / "tree")
    code, out, err = run(["ingest", str(tree), "--json"], capsys)
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    code, result = sweep_json(capsys, str(tree), "--skip-ingest", "--run-id", run_id)
    assert code == 0 and result["ok"] and statuses(result)["ingest"] == "skipped"
    code, _out, err = run(["sweep", str(tree), "--skip-ingest"], capsys)
    assert code == 2 and "give its --run-id" in err


@pytest.mark.usefixtures("pipeline")
def test_a_sweep_killed_during_the_load_step_resumes_green_without_ingesting_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = make_tree(tmp_path / "tree")
    argv = [sys.executable, "-m", "headrace", "sweep", str(tree), "--run-id", "killed"]
    environment = {
        **os.environ,
        "HEADRACE_FAILPOINTS": "load.after_write=1",
        "HEADRACE_CONSUMER__BATCH_SIZE": "3",
        "HEADRACE_LOAD__BATCH_SIZE": "3",  # the load group's own
        # The killed load consumer stays a member of its group until its session
        # expires: the broker's shortest, so the resumed sweep sees it gone soon.
        "HEADRACE_KAFKA__EXTRA": '{"session.timeout.ms": "6000"}',
    }
    killed = subprocess.run(
        argv, env=environment, capture_output=True, text=True, timeout=300, check=False
    )
    assert killed.returncode == -9, killed.stderr
    code, result = sweep_json(capsys, str(tree), "--resume", "killed")
    assert code == 0 and result["ok"], result
    assert statuses(result) == {
        "ingest": "done earlier",
        "archive": "done earlier",
        "load": "done",
        "cache": "done",
        "verify": "done",
        "report": "done",
    }
    assert result["report"]["counts"]["published"]["files"] == 7  # published once
