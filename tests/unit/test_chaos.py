"""The chaos command's parts that need no services: the seeded schedule, the verdict
and its arguments. The scenario itself runs in tests/chaos."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from consumers.verify.report import Kind, RunReport
from headrace.chaos import GROUP_NAMES, ChaosResult, FaultResult, Occurrences, plan
from tests.unit.test_cli import run


def test_the_schedule_is_the_seeds_alone() -> None:
    assert plan(7, 3) == plan(7, 3)
    assert plan(7, 3) != plan(8, 3)


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**31 - 1])
def test_the_schedule_holds_every_fault_once_and_the_kills_of_each_group(seed: int) -> None:
    steps, passes = plan(seed, kills_per_group=3)
    kinds = Counter((s.kind, s.target) for s in steps if s.kind == "group_kill")
    assert kinds == {("group_kill", g): 2 for g in GROUP_NAMES}  # the third: the failpoint
    once = Counter(s.kind for s in steps if s.kind != "group_kill")
    assert once == {
        "kafka_restart": 1,
        "minio_outage": 1,
        "postgres_outage": 1,
        "rebalance": 1,
        "run2": 1,
    }
    run2 = [s.kind for s in steps].index("run2")
    assert run2 >= (len(steps) - 1) // 2  # the second run starts in the second half
    assert all(0.5 <= s.pause_s <= 3.0 for s in steps)
    assert set(passes) == {*GROUP_NAMES, "ingest"}
    assert all(1 <= n <= 4 for n in passes.values())


def _result(**changes: object) -> ChaosResult:
    result = ChaosResult(seed=1, files=100, work=Path("/nowhere"))
    result.runs = [RunReport(run_id="r1")]
    result.faults = [FaultResult("group_kill", "load", 1.0, recover_s=1.5)]
    result.dead_letters = result.dead_letters_expected = {"INVALID_EVENT": 4}
    for name, value in changes.items():
        setattr(result, name, value)
    return result


def test_a_clean_result_is_ok() -> None:
    assert _result().ok


def test_a_duplicate_or_a_missing_file_fails_the_verdict() -> None:
    for kind, counted in ((Kind.DUPLICATED, "duplicates"), (Kind.MISSING_IN_DATABASE, "missing")):
        report = RunReport(run_id="r1")
        report.add(kind, "archived", "a.txt", "twice")
        result = _result(runs=[report])
        assert getattr(result, counted) == 1
        assert not result.ok


def test_a_dead_letter_not_injected_a_fault_never_recovered_or_a_problem_fails_it() -> None:
    assert not _result(dead_letters={"INVALID_EVENT": 4, "SCHEMA": 1}).ok
    assert not _result(unexpected_dead_letters=["load SCHEMA: unknown id"]).ok
    assert not _result(faults=[FaultResult("kafka_restart", "kafka", 3.0)]).ok
    assert not _result(problems=["the ingests did not finish in time"]).ok
    assert not _result(runs=[]).ok


def test_the_json_summary_names_every_figure() -> None:
    data = orjson.loads(orjson.dumps(_result().as_json()))  # what --json prints
    for key in ("seed", "faults_by_kind", "restarts", "retries", "dead_letters"):
        assert key in data
    assert data["duplicates"] == 0 and data["missing"] == 0 and data["ok"] is True
    assert data["faults"][0]["recover_s"] == 1.5


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["chaos", "--files", "5"], "--files"),
        (["chaos", "--seed", "-1"], "--seed"),
        (["chaos", "--kills", "0"], "--kills"),
    ],
)
def test_a_bad_argument_is_one_line_and_exit_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(argv, capsys)
    assert code == 2
    assert says in err and len(err.strip().splitlines()) == 1
    assert out == ""


def test_without_the_local_stack_it_says_so_in_one_line_before_writing_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HEADRACE_STACK__HOME", str(tmp_path / "no-stack"))  # no pid files
    work = tmp_path / "work"
    code, out, err = run(["chaos", "--files", "100", "--work", str(work)], capsys)
    assert code == 1
    assert err.startswith("headrace: error: the local stack is not up (")
    assert len(err.strip().splitlines()) == 1
    assert not (work / "source").exists()  # no workload written


def test_occurrences_in_a_growing_file_are_counted_once_even_cut_across_writes(
    tmp_path: Path,
) -> None:
    log = tmp_path / "member.log"
    seen = Occurrences(log, b" assigned ")
    assert seen.count() == 0  # no file yet
    log.write_bytes(b"x assigned a\ny assig")
    assert seen.count() == 1
    with open(log, "ab") as f:
        f.write(b"ned b\n")
    assert seen.count() == 2
    assert seen.count() == 2  # nothing appended: nothing counted again
