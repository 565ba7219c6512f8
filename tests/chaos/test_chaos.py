"""The chaos scenario, small: the whole pipeline under the seeded fault schedule (each
group's process SIGKILLed, the ingest killed mid-transaction and resumed, the broker
restarted, MinIO and PostgreSQL stopped for a window, a second process of a group
joining and leaving), then judged by ``verify run``: nothing duplicated, nothing
missing, no dead letter but the four injected on purpose.

It stops and starts the local stack's own processes, so it needs that stack (not
containers) and nothing else using it meanwhile. The seed is new each run and printed;
``HEADRACE_CHAOS_SEED`` replays one, ``HEADRACE_CHAOS_FILES`` makes it larger (the full
100,000-file run is ``headrace chaos`` by hand, docs/reliability.md).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from headrace.chaos import FAULT_KINDS, PIPELINE_SERVICES, ChaosOptions, run_chaos
from headrace.settings import Settings
from headrace.stack.manager import Stack

pytestmark = pytest.mark.chaos


@pytest.fixture
def local_stack(base_settings: Settings) -> Settings:
    if not all(s.healthy for s in Stack(base_settings).status(PIPELINE_SERVICES)):
        why = "the chaos test stops and starts the local stack's processes: `headrace stack up`"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return base_settings


@pytest.mark.timeout(1200)
def test_the_pipeline_under_faults_loses_and_duplicates_nothing(
    local_stack: Settings, tmp_path: Path
) -> None:
    seed = int(os.environ.get("HEADRACE_CHAOS_SEED") or random.SystemRandom().randrange(2**31))
    files = int(os.environ.get("HEADRACE_CHAOS_FILES") or 600)
    print(f"chaos seed {seed}, {files} files (HEADRACE_CHAOS_SEED={seed} replays it)")
    options = ChaosOptions(
        files=files, seed=seed, kills_per_group=2, outage_s=4.0, work=tmp_path / "chaos"
    )
    result = run_chaos(local_stack, options, progress=print)

    assert result.problems == []
    assert [r.run_id for r in result.runs if not r.ok] == []
    assert len(result.runs) == 4  # two runs of each source, the second incremental
    assert result.duplicates == 0
    assert result.missing == 0
    # Every kind of fault was injected and the work went on after each.
    assert set(result.faults_by_kind()) == set(FAULT_KINDS)
    assert [f.as_json() for f in result.faults if f.recover_s is None] == []
    assert result.restarts["ingest"] >= 1
    assert all(result.restarts[g] >= 2 for g in ("archive", "load", "cache", "verify"))
    # The dead letters are exactly the hostile records, each once per group reading them.
    assert result.unexpected_dead_letters == []
    assert result.dead_letters == result.dead_letters_expected
    assert sum(result.dead_letters.values()) == 4 * 4
    assert result.ok
