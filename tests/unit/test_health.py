"""``/readyz`` and the checks behind it and behind ``headrace doctor`` (no service)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from consumers.metrics import Metrics
from consumers.readiness import Readiness
from headrace.cli import main
from headrace.doctor import Check, check_free, check_writable
from headrace.settings import Settings


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - a local URL
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_readyz_answers_what_the_readiness_callback_says() -> None:
    metrics = Metrics("g")
    port = metrics.serve("127.0.0.1", 0)
    try:
        assert get(f"http://127.0.0.1:{port}/readyz") == (200, b'{"ready": true}')
        metrics.readiness = lambda: (False, b'{"ready":false}')
        assert get(f"http://127.0.0.1:{port}/readyz") == (503, b'{"ready":false}')
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    finally:
        metrics.close()


def test_readiness_is_checked_in_the_background_and_names_what_failed() -> None:
    calls: list[float] = []

    def checks(_settings: Settings, group: str) -> list[Check]:
        calls.append(time.monotonic())
        return [Check("kafka", True, "1 broker"), Check("registry", False, "unreachable")]

    settings = Settings(health={"ready_interval_s": 0.05})  # type: ignore[arg-type]
    readiness = Readiness(settings, "archive", checks)
    assert readiness.state() == (False, b'{"ready":false,"failed":{"readiness":"checking"}}')
    readiness.start()
    try:
        deadline = time.monotonic() + 5
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        ready, body = readiness.state()
    finally:
        readiness.stop()
    assert len(calls) >= 3  # refreshed, not checked once
    assert not ready
    assert orjson.loads(body) == {
        "ready": False,
        "failed": {"registry": "unreachable"},
        "checked": ["kafka", "registry"],
    }


def test_a_writable_path_and_one_that_cannot_be(tmp_path: Path) -> None:
    assert check_writable("archive.root", tmp_path).ok
    new = check_writable("cache.dir", tmp_path / "a" / "b")
    assert new.ok and new.detail.endswith("can be created") and not (tmp_path / "a").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    failed = check_writable("cache.dir", blocker / "sub")
    assert not failed.ok and failed.line() == f"FAIL path cache.dir: {blocker} is not a directory"


def test_free_space_is_one_check_per_disk(tmp_path: Path) -> None:
    (checks,) = check_free({"archive.root": tmp_path, "cache.dir": tmp_path / "c"}, 1e12)
    assert checks.name == "disk (archive.root, cache.dir)" and not checks.ok
    (passed,) = check_free({"archive.root": tmp_path}, 0)
    assert passed.ok


def test_doctor_reports_settings_that_do_not_load(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_POSTGRES__PORT", "not-a-port")
    with pytest.raises(SystemExit) as exit_info:
        main(["doctor"])
    out, _ = capsys.readouterr()
    assert exit_info.value.code == 1
    assert out.splitlines() == [
        "FAIL settings: invalid settings: postgres.port: Input should be a valid integer, "
        "unable to parse string as an integer",
        "1 of 1 checks failed",
    ]
