"""A consumer process's slot and the group.instance.id made of it: derived from the
group, the host and the slot, the same after a restart, distinct per live process."""

import fcntl
import os
import socket
from pathlib import Path

import pytest
from pydantic import ValidationError

from consumers.instance import InstanceSlot, instance_id, membership_config
from headrace.settings import ConsumerSettings


def test_the_instance_id_is_the_group_the_host_and_the_slot(tmp_path: Path) -> None:
    slot = InstanceSlot(tmp_path, "headrace.archive")
    config = membership_config(ConsumerSettings(), "headrace.archive", slot.acquire())
    assert config["group.instance.id"] == f"headrace.archive.{socket.gethostname()}.0"
    assert config["session.timeout.ms"] == 10_000
    assert config["heartbeat.interval.ms"] == 1_000  # a rebalance is heard of within 1 s
    slot.release()


def test_a_restarted_process_takes_its_predecessors_id(tmp_path: Path) -> None:
    first = InstanceSlot(tmp_path, "g")
    number = first.acquire()
    first.release()  # the process ended (a crash drops its lock the same way)
    again = InstanceSlot(tmp_path, "g")
    assert again.acquire() == number
    assert instance_id("g", again.number) == instance_id("g", number)
    again.release()


def test_two_live_processes_hold_two_slots_and_two_ids(tmp_path: Path) -> None:
    # Another process holds slot 0: a lock of its own on the file (flock locks belong
    # to an open file, so this one conflicts as another process's would).
    tmp_path.mkdir(exist_ok=True)
    fd = os.open(tmp_path / "g.0.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        slot = InstanceSlot(tmp_path, "g")
        assert slot.acquire() == 1
        assert instance_id("g", 1) != instance_id("g", 0)
        other_group = InstanceSlot(tmp_path, "h")  # slots are per group
        assert other_group.acquire() == 0
        other_group.release()
        slot.release()
    finally:
        os.close(fd)


def test_in_one_process_the_runtime_and_its_sink_share_the_slot(tmp_path: Path) -> None:
    runtime, sink = InstanceSlot(tmp_path, "g"), InstanceSlot(tmp_path, "g")
    assert runtime.acquire() == sink.acquire() == 0  # verify: transactional id = member id
    sink.release()
    third = InstanceSlot(tmp_path, "g")
    assert third.acquire() == 0  # still this process's: the runtime holds it
    third.release()
    runtime.release()
    fd = os.open(tmp_path / "g.0.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released with its last holder
    finally:
        os.close(fd)


def test_dynamic_membership_and_keys_kafka_extra_sets_are_left_out() -> None:
    dynamic = ConsumerSettings(static_membership=False, session_timeout_s=45)
    assert membership_config(dynamic, "g", 0) == {
        "session.timeout.ms": 45_000,
        "heartbeat.interval.ms": 1_000,
        "partition.assignment.strategy": "roundrobin",
    }
    extra = {
        "session.timeout.ms": "6000",
        "heartbeat.interval.ms": "2000",
        "partition.assignment.strategy": "range",
    }
    config = membership_config(ConsumerSettings(), "g", 3, extra)
    assert config == {"group.instance.id": f"g.{socket.gethostname()}.3"}
    sticky = ConsumerSettings(assignment_strategy="cooperative-sticky")
    assert (
        membership_config(sticky, "g", 0)["partition.assignment.strategy"] == "cooperative-sticky"
    )


def test_a_heartbeat_not_below_the_session_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"heartbeat_interval_s \(10\) must be less than"):
        ConsumerSettings(heartbeat_interval_s=10, session_timeout_s=10)
    assert ConsumerSettings(heartbeat_interval_s=3, session_timeout_s=10).heartbeat_interval_s == 3
