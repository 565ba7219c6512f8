"""A consumer group of one's own: a package installed with pip registers it under the
``headrace.groups`` entry point, and ``headrace consume NAME`` runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from headrace.settings import KafkaSettings, ObjectStoreSettings, RegistrySettings
from tests.unit.test_cli import run

EXAMPLE = Path(__file__).resolve().parent.parent / "fixtures" / "example_group"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package, installed with pip into a directory of its own (its build
    backend, setuptools, comes from the package index, as for any sdist)."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    source = build / "example_group"  # setuptools writes build/ and egg-info beside it
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--target", str(target), str(source)],
        check=True, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TMPDIR": str(build)},
    )  # fmt: skip
    assert list(target.glob("headrace_example_group-*.dist-info/entry_points.txt"))
    return target


def test_an_installed_group_runs_on_the_shared_runtime(
    site: Path,
    tmp_path: Path,
    kafka: KafkaSettings,
    registry: RegistrySettings,
    object_store: ObjectStoreSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tag = uuid.uuid4().hex[:10]
    env = {
        "HEADRACE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "HEADRACE_KAFKA__PARTITIONS": "3",
        "HEADRACE_KAFKA__TOPICS__FILE_EVENTS": f"test.plugin-{tag}.files",
        "HEADRACE_KAFKA__TOPICS__RUN_EVENTS": f"test.plugin-{tag}.runs",
        "HEADRACE_KAFKA__TOPICS__DEAD_LETTER": f"test.plugin-{tag}.dlq",
        "HEADRACE_REGISTRY__URL": registry.url,
        "HEADRACE_OBJECT_STORE__ENDPOINT": object_store.endpoint,
        "HEADRACE_CONSUMER__GROUP_PREFIX": f"test-{tag}.",
        "HEADRACE_CONSUMER__METRICS_PORT": "0",
        "HEADRACE_EXAMPLE_DIR": str(tmp_path / "out"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    tree = tmp_path / "proj"
    tree.mkdir()
    for i in range(5):
        (tree / f"f{i}.txt").write_text(f"{i}\n")
    code, _out, err = run(["ingest", str(tree)], capsys)
    assert code == 0, err

    child_env = {**os.environ, "PYTHONPATH": str(site)}
    argv = [sys.executable, "-m", "headrace", "consume", "json-per-project", "--until-caught-up"]
    done = subprocess.run(
        argv, env=child_env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"test-{tag}.json-per-project: 5 records written, 0 dead-lettered"
    written = json.loads((tmp_path / "out" / "proj.json").read_text())
    assert sorted(written) == [f"f{i}.txt" for i in range(5)]

    again = subprocess.run(
        argv, env=child_env, capture_output=True, text=True, timeout=120, check=False
    )  # the offsets were committed: nothing is read twice
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().endswith(": 0 records written, 0 dead-lettered")

    # Without the package, the name is one clear line.
    code, _out, err = run(["consume", "json-per-project"], capsys)
    assert code == 2 and "'json-per-project' is not a group" in err
