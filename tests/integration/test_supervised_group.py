"""A group of two worker processes under `headrace consume GROUP --processes 2`, against
real Kafka and PostgreSQL: a worker SIGKILLed mid-run is started again by the supervisor
and every event is still archived (and loaded) exactly once; SIGTERM to the supervisor
stops both workers cleanly, with every partition committed to its end; `headrace status`
shows the members and what each holds."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as KafkaPartition

from headrace.settings import KafkaSettings, RegistrySettings
from storage.archive import verify
from tests.integration.test_archive import archived, env, expected, publish, wait_for

__all__ = ["env"]  # the archive tests' fixture, used here as is


def supervisor(env: dict[str, str], log: Path, group: str = "archive") -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "headrace", "consume", group, "--processes", "2"],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def workers(log: Path) -> dict[int, list[int]]:
    """Worker index -> the pids it was started as, from the supervisor's log."""
    started: dict[int, list[int]] = {}
    for m in re.finditer(r"worker (\d+) started \(pid (\d+)\)", log.read_text()):
        started.setdefault(int(m[1]), []).append(int(m[2]))
    return started


def assigned(log: Path, worker: int) -> bool:
    return re.search(rf"-w{worker} assigned (?!nothing)", log.read_text()) is not None


def committed_to_end(kafka: KafkaSettings, group: str, topic: str) -> dict[int, tuple[int, int]]:
    """Partition -> (committed offset, end offset)."""
    probe = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group})
    try:
        parts = [KafkaPartition(topic, p) for p in range(3)]
        done = {tp.partition: tp.offset for tp in probe.committed(parts, timeout=10)}
        return {p: (done[p], probe.get_watermark_offsets(tp, timeout=10)[1])
                for p, tp in enumerate(parts)}  # fmt: skip
    finally:
        probe.close()


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=90) == 0, log.read_text()[-3000:]


@pytest.mark.timeout(300)
def test_a_sigkilled_worker_is_started_again_and_sigterm_stops_both_committed(
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    tmp_path: Path,
) -> None:
    root = Path(env["HEADRACE_ARCHIVE__ROOT"])
    log = tmp_path / "supervisor.log"
    publish(env, kafka, registry, 0, 2000)
    proc = supervisor(env, log)
    try:
        wait_for(lambda: assigned(log, 0) and assigned(log, 1), 90, "both workers assigned")
        wait_for(lambda: sum(archived(env).values()) >= 200, 90, "a first segments published")
        victim = workers(log)[1][0]
        os.kill(victim, signal.SIGKILL)  # mid-run: its open segments are lost
        wait_for(lambda: len(workers(log).get(1, [])) == 2, 60, "worker 1 started again")
        assert workers(log)[1][1] != victim
        publish(env, kafka, registry, 2000, 1000)
        wait_for(lambda: sum(archived(env).values()) >= 2800, 120, "the rest archived")
        group = env["HEADRACE_CONSUMER__GROUP_PREFIX"] + "archive"
        topic = env["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"]
        # `headrace status` shows the two members and which partitions each holds.
        shown = subprocess.run(
            [sys.executable, "-m", "headrace", "status", "--json"],
            env={**os.environ, **env},
            capture_output=True,
            timeout=120,
            check=True,
        )
        report = json.loads(shown.stdout)[group]
        members = report["members"]
        assert len(members) == 2 and report["state"] == "STABLE", report
        assert {m["instance_id"].rsplit(".", 1)[1] for m in members} == {"0", "1"}
        held = [p for m in members for p in m["partitions"] if p.startswith(topic)]
        assert sorted(held) == [f"{topic}[{p}]" for p in range(3)]  # each by one member
        by_member = {m["instance_id"]: set(m["partitions"]) for m in members}
        for row in report["partitions"]:
            assert f"{row['topic']}[{row['partition']}]" in by_member[row["member"]]
    finally:
        if proc.poll() is None:
            stop(proc, log)
    text = log.read_text()
    assert "worker 1 was killed by SIGKILL; starting it again" in text
    assert "worker 0 stopped" in text and "worker 1 stopped" in text
    # Each worker read once the coordinator had both as members; the restarted one
    # (the group whole already) at once.
    assert [text.count(f"-w{i} the group is whole: reading") for i in (0, 1)] == [1, 2]
    # Stopped cleanly: what each worker held open was published and committed, so
    # every partition's committed offset is its end and nothing is archived twice.
    positions = committed_to_end(kafka, group, topic)
    assert all(done == end for done, end in positions.values()), positions
    assert archived(env) == expected(3000)
    assert verify(root) == []
    for pid in (p for started in workers(log).values() for p in started):
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"worker {pid} still runs"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_a_worker_that_keeps_dying_ends_the_group_with_one_line(env: dict[str, str]) -> None:
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "headrace", "consume", "archive", "--processes", "2"],
        # Every worker fails as it starts: its archive root cannot be made.
        env={
            **os.environ,
            **env,
            "HEADRACE_ARCHIVE__ROOT": "/proc/headrace-archive",
            "HEADRACE_CONSUMER__RESTART_MAX": "2",
        },
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"headrace: error: test-\w+\.archive: worker \d exited 1 2 times within 300 s"
        r" \(last: cannot create the archive directory /proc/headrace-archive: .*\):"
        r" gave up, the other workers were stopped",
        last,
    ), last
    assert "Traceback" not in done.stderr
    assert time.monotonic() - began < 120  # two starts and a backoff, not a hang


def _free_pair() -> int:
    """A port P with P and P + 1 both free now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        with socket.socket() as second:
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two free ports in a row")


def test_each_worker_serves_its_metrics_and_registers_it(
    env: dict[str, str], kafka: KafkaSettings, registry: RegistrySettings, tmp_path: Path
) -> None:
    targets = tmp_path / "targets"
    port = _free_pair()
    log = tmp_path / "supervisor.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "headrace", "consume", "archive", "--processes", "2",
             "--metrics-port", str(port)],
            env={**os.environ, **env, "HEADRACE_METRICS__TARGETS_DIR": str(targets)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(lambda: assigned(log, 0) and assigned(log, 1), 90, "both workers assigned")
        publish(env, kafka, registry, 0, 300)  # now: some for each worker
        wait_for(lambda: len(list(targets.glob("*.json"))) == 2, 30, "two registered targets")
        registered = sorted(
            t for f in targets.glob("*.json") for entry in json.loads(f.read_text())
            for t in entry["targets"]
        )  # fmt: skip
        assert registered == [f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"]
        group = env["HEADRACE_CONSUMER__GROUP_PREFIX"] + "archive"
        counted = f'headrace_records_processed_total{{group="{group}"'

        def both_counted() -> bool:  # each worker's own records, on its own port
            return all(
                counted in httpx.get(f"http://127.0.0.1:{p}/metrics", timeout=10).text
                for p in (port, port + 1)
            )

        wait_for(both_counted, 60, "both workers' counters")
        for p in (port, port + 1):
            assert httpx.get(f"http://127.0.0.1:{p}/healthz", timeout=10).status_code == 200
    finally:
        stop(proc, log)
    assert list(targets.glob("*.json")) == []  # each removed its own as it stopped
