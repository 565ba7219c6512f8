"""A consumer process's instance on its host: the slot it holds and the ids made of it.

A group's processes on one host each hold the lowest free slot (a lock file, held for
the life of the process), so a process that restarts after a crash takes its
predecessor's slot, and with it the same ids:

- ``group.instance.id`` (static membership, KIP-345): the broker hands the restarted
  process its predecessor's partitions at once, instead of waiting for the dead
  member's session to time out;
- the verify group's ``transactional.id``: ``init_transactions`` aborts what the
  predecessor left open at once, instead of after the transaction timeout.

Two live processes of a group on one host hold two slots, so two ids. In one process a
group has one slot: the runtime and its sink share it (the verify group's transactional
id is its member id).
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from headrace.errors import ConsumeError
from headrace.settings import ConsumerSettings

# The slots this process holds: (directory, group) -> [lock fd, slot number, holders].
_held: dict[tuple[Path, str], list[int]] = {}


class InstanceSlot:
    """The lowest free instance number of a group on this host, held by a lock file for
    the life of the process (the kernel drops the lock when the process dies)."""

    def __init__(self, directory: Path, group_id: str) -> None:
        self.directory, self.group_id = directory, group_id
        self.number = -1

    def acquire(self, most: int = 1024) -> int:
        if self.number >= 0:
            return self.number
        self.directory.mkdir(parents=True, exist_ok=True)
        key = (self.directory.resolve(), self.group_id)
        if key in _held:  # this process holds the group's slot already: share it
            _held[key][2] += 1
            self.number = _held[key][1]
            return self.number
        for number in range(most):
            path = self.directory / f"{self.group_id}.{number}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            _held[key] = [fd, number, 1]
            self.number = number
            return number
        raise ConsumeError(f"{most} instances of {self.group_id} hold every slot on this host")

    def release(self) -> None:
        if self.number < 0:
            return
        key = (self.directory.resolve(), self.group_id)
        held = _held[key]
        held[2] -= 1
        if held[2] == 0:
            os.close(held[0])
            del _held[key]
        self.number = -1


def instance_id(group_id: str, slot: int) -> str:
    """One id per live process of a group: the group, the host and the process's slot."""
    return f"{group_id}.{socket.gethostname()}.{slot}"


def membership_config(
    consumer: ConsumerSettings, group_id: str, slot: int, kafka_extra: Iterable[str] = ()
) -> dict[str, Any]:
    """The librdkafka keys of a group's membership: its session and heartbeat, its
    assignor and, with static membership, its ``group.instance.id``; a key also in
    ``kafka_extra`` (kafka.extra) is left to it."""
    config: dict[str, Any] = {
        "session.timeout.ms": int(consumer.session_timeout_s * 1000),
        "heartbeat.interval.ms": int(consumer.heartbeat_interval_s * 1000),
        "partition.assignment.strategy": consumer.assignment_strategy,
    }
    if consumer.static_membership:
        config["group.instance.id"] = instance_id(group_id, slot)
    overridden = set(kafka_extra)
    return {k: v for k, v in config.items() if k not in overridden}
