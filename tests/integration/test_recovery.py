"""Recovery after a crash, against real Kafka: a SIGKILLed group process restarted on
its host takes its predecessor's static membership and consumes again within seconds;
one that cannot (another slot: another host) says what it waits for; a clean stop
leaves the group at once, a static member too."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from consumers.instance import InstanceSlot
from headrace.settings import KafkaSettings, RegistrySettings
from tests.integration.test_archive import (
    archived,
    consumer_process,
    env,  # noqa: F401 - the fixture, reused
    expected,
    group_members,
    publish,
    wait_for,
)

# Well below the ~45 s a restarted process waited for the dead member's session.
RESTART_BOUND_S = 15.0


@pytest.fixture
def crash_env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:  # noqa: F811 - fixture
    return {
        **env,
        "HEADRACE_CONSUMER__INSTANCES_DIR": str(tmp_path / "instances"),
        "HEADRACE_ARCHIVE__MAX_SEGMENT_RECORDS": "1",  # archived within a poll: consumed
        "HEADRACE_ARCHIVE__MAX_SEGMENT_AGE_S": "0.2",
    }


def stop(proc: subprocess.Popen[bytes], sig: signal.Signals) -> str:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return err.decode()


def test_a_killed_group_process_restarted_consumes_again_within_seconds(
    crash_env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    tmp_path: Path,
) -> None:
    def all_archived(n: int) -> bool:
        return sum(archived(crash_env).values()) >= n

    publish(crash_env, kafka, registry, 0, 30)
    first = consumer_process(crash_env)
    try:
        wait_for(lambda: all_archived(30), 60, "the first process archiving")
    finally:
        stop(first, signal.SIGKILL)
    killed = time.monotonic()
    second = consumer_process(crash_env)  # the same slot: the same group.instance.id
    try:
        publish(crash_env, kafka, registry, 30, 10)
        wait_for(lambda: all_archived(40), RESTART_BOUND_S, "the restarted process consuming")
        recovered_s = time.monotonic() - killed
    finally:
        err = stop(second, signal.SIGKILL)
    assert recovered_s < RESTART_BOUND_S
    assert "as static member" in err and "to assign partitions" not in err, err[-2000:]

    # Restarted in another slot (a live process holds slot 0), it has another id: it
    # waits for the dead member's session, and says so.
    held = InstanceSlot(
        tmp_path / "instances", crash_env["HEADRACE_CONSUMER__GROUP_PREFIX"] + "archive"
    )
    assert held.acquire() == 0
    third = consumer_process(crash_env)
    try:
        publish(crash_env, kafka, registry, 40, 10)
        wait_for(lambda: all_archived(50), 60, "the process in another slot consuming")
        wait_for(lambda: group_members(kafka, crash_env) == 1, 30, "the dead member gone")
    finally:
        err = stop(third, signal.SIGTERM)
        held.release()
    assert third.returncode == 0, err[-2000:]
    assert "to assign partitions: a member that died holds them" in err, err[-2000:]
    assert "until its session times out (10 s)" in err
    # A clean stop left the group: nobody holds the partitions for a session.
    assert group_members(kafka, crash_env) == 0
    assert archived(crash_env) == expected(50)  # each once


def test_a_second_process_with_the_same_instance_id_stops_the_first_saying_why(
    crash_env: dict[str, str], kafka: KafkaSettings, tmp_path: Path
) -> None:
    first = consumer_process(crash_env)
    second = None
    try:
        wait_for(lambda: group_members(kafka, crash_env) == 1, 60, "the first process joining")
        # Another instances directory on the host: slot 0 again, so the same id.
        other = {**crash_env, "HEADRACE_CONSUMER__INSTANCES_DIR": str(tmp_path / "other")}
        second = consumer_process(other)
        _, err = first.communicate(timeout=60)  # fenced: it stops by itself
    finally:
        if first.returncode is None:
            first.kill()
            first.communicate(timeout=30)
        if second is not None:
            stop(second, signal.SIGTERM)
    assert first.returncode not in (0, None, -signal.SIGKILL)
    assert "another process joined group" in err.decode(), err.decode()[-2000:]
