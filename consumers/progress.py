"""The workers of a supervised group: joining together, and whether all caught up.

**Joining together.** cooperative-sticky assignment balances the number of partitions
each member holds, not each topic's: members that join one after another (100 ms
apart was enough on the local stack, whose broker has no initial rebalance delay) end
with whole topics each, the first keeping the file events and the second the run
events, one worker doing nearly all the work. Members that join within a few
milliseconds of each other are assigned in one generation, each topic spread over all.
So each worker, ready to subscribe, says so (a ``.ready`` file) and waits for the
supervisor's ``go``, which comes when all are ready (or after a bound); a worker
started again later joins at once (its static membership gives it its old partitions).
With the default roundrobin assignor it saves the rebalances of members trickling in;
with cooperative-sticky it is what spreads the topics, on a broker whose
``group.initial.rebalance.delay.ms`` (3 s by default; 0 on the local stack, where the
first member still gets its generation alone) holds the first assignment for them.

**Reading once the group is whole.** Even members that subscribe within milliseconds
do not always share the first generation: a broker without an initial rebalance delay
completes the first join alone, the first member is handed every partition, reads
them until it hears of the rebalance (at its next heartbeat) and gives them back,
publishing what it archived of them (five starts of eight on the local stack: 3.5 s
alone, docs/performance.md). So each worker holds what it is handed paused
(``hold``) until the supervisor, asking the coordinator, has seen the group stable
with every worker a member (``whole``), or its join timeout passed; a worker started
again later finds the group whole and reads at once.

``--until-caught-up`` cannot be judged from the group's committed offsets: the archive
group makes records durable (and commits them) only when it publishes a segment, so
what it has read may be minutes ahead of what it committed. Each worker instead runs
with ``until_caught_up`` and, after every batch, writes to its own state file whether
it has read its partitions to the end offsets it saw when it was handed them (or holds
nothing) and which partitions it holds. The supervisor stops the group once every
worker says so and their partitions together cover every partition of the group's
topics that holds records: each then makes what it read durable and commits it as it
stops, like a single process at its end.

A worker that is started again has its file removed first, so a dead worker's claim
never counts; a claim made before a rebalance stays true, because a revoked partition
is made durable and committed before its next owner reads on from there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

import orjson
from confluent_kafka import ConsumerGroupState, KafkaException
from confluent_kafka import TopicPartition as KafkaPartition
from confluent_kafka.admin import AdminClient

from consumers.base import TopicPartition
from headrace.kafka import answer, cluster_metadata, make_admin, make_consumer, watermarks
from headrace.settings import KafkaSettings

log = logging.getLogger(__name__)


class JoinBarrier:
    """Workers subscribe together (``arrive`` blocks until ``release``), then read
    nothing until the group is whole (``whole``): ``settled`` (the supervisor's side)
    asks the group's coordinator, and says so to all once every worker is a member of
    one stable generation. The constructor does no I/O."""

    def __init__(
        self,
        directory: Path,
        workers: int,
        kafka: KafkaSettings | None = None,
        group_id: str = "",
    ) -> None:
        self.directory, self.workers = directory, workers
        self.kafka, self.group_id = kafka, group_id
        self.go = directory / "go"
        self.whole_file = directory / "whole"
        self._admin: AdminClient | None = None

    def arrive(self, worker: int, timeout_s: float = 120.0) -> None:
        (self.directory / f"{worker}.ready").touch()
        deadline = time.monotonic() + timeout_s
        while not self.go.exists() and time.monotonic() < deadline:
            time.sleep(0.002)

    def all_ready(self) -> bool:
        return all((self.directory / f"{i}.ready").exists() for i in range(self.workers))

    def release(self) -> None:
        self.go.touch()

    def whole(self) -> bool:
        """Whether the workers may read (a worker's ``hold``)."""
        return self.whole_file.exists()

    def settled(self) -> bool:
        """Whether the group is whole: said to the workers (``declare_whole``) the
        first time the coordinator describes it stable with every worker a member. A
        broker that does not answer is asked again at the next call."""
        if self.whole_file.exists():
            return True
        if self.kafka is None:
            self.declare_whole()
            return True
        if self._admin is None:
            self._admin = make_admin(self.kafka)
        try:
            found = self._admin.describe_consumer_groups([self.group_id], request_timeout=5)
            described = answer(found[self.group_id], 5)
        except KafkaException:
            return False
        stable = described.state == ConsumerGroupState.STABLE
        if not stable or len(described.members) < self.workers:
            return False
        self._admin = None  # asked no more: its client is let go for the rest of the run
        self.declare_whole()
        return True

    def declare_whole(self) -> None:
        self.whole_file.touch()


class WorkerState:
    """A worker's side: writes its state file when what it says changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._said: tuple[bool, frozenset[TopicPartition]] | None = None

    def __call__(self, caught_up: bool, assigned: frozenset[TopicPartition]) -> None:
        if (caught_up, assigned) == self._said:
            return
        self._said = (caught_up, assigned)
        body = orjson.dumps({"caught_up": caught_up, "assigned": sorted(assigned)})
        staged = self.path.with_suffix(".tmp")
        staged.write_bytes(body)
        os.replace(staged, self.path)  # the supervisor never reads half a file


class WorkersCaughtUp:
    """The supervisor's side: ``partitions()`` once, before the workers start; then
    calling it says whether every worker has caught up. The constructor does no I/O."""

    def __init__(self, directory: Path, workers: int) -> None:
        self.directory, self.workers = directory, workers
        self.wanted: set[TopicPartition] = set()

    def path(self, worker: int) -> Path:
        return self.directory / f"{worker}.state"

    def forget(self, worker: int) -> None:
        """A worker (re)starting: what its predecessor said no longer counts."""
        with contextlib.suppress(FileNotFoundError):
            self.path(worker).unlink()

    def partitions(self, kafka: KafkaSettings, group_id: str, topics: list[str]) -> None:
        """The partitions that hold records now: the workers must cover them."""
        probe = make_consumer(kafka, group_id)  # never subscribes: never joins the group
        try:
            for topic in topics:
                meta = cluster_metadata(probe, kafka, topic).topics[topic]
                for p in meta.partitions:
                    low, high = watermarks(probe, KafkaPartition(topic, p))
                    if high > low:
                        self.wanted.add((topic, p))
        finally:
            probe.close()

    def __call__(self) -> bool:
        covered: set[TopicPartition] = set()
        for worker in range(self.workers):
            try:
                state = orjson.loads(self.path(worker).read_bytes())
            except (FileNotFoundError, orjson.JSONDecodeError):
                return False  # not started yet, or started again: not said yet
            if not state["caught_up"]:
                return False
            covered.update((str(t), int(p)) for t, p in state["assigned"])
        return self.wanted <= covered
