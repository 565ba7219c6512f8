"""``headrace chaos``: the whole pipeline under a seeded schedule of faults, judged by
``verify run``.

Against the local stack, on topics, groups, a bucket, a PostgreSQL schema and
directories of its own (nothing another run or the user's data shares):

1. It writes a workload: a directory of ``files`` files (most small and sent inline,
   a few larger than the inline limit and sent to object storage) and a git
   repository of a tenth as many, ingested as git references. Four hostile records
   (a path leaving its directory, a NUL, an event time in 2100, bytes that are no
   Avro) are published among them on purpose.
2. It runs the archive, load, cache and verify groups as ``headrace consume``
   processes under a supervisor that restarts a dead one, as systemd or Kubernetes
   would; and the ingests, each re-run with its run id (so resumed) when it fails.
3. While they work, it injects the faults of a schedule drawn from the seed, one after
   the other: each group's process SIGKILLed several times (once by its failpoint
   between the sink's write and the offset commit, armed until it fires; the others
   when their turn comes), the first ingest SIGKILLed mid-transaction (``ingest.produced``), the
   Kafka broker restarted, MinIO and PostgreSQL stopped for a window (the stack's own
   processes), a second process of one group started and stopped again (two
   rebalances); and, part-way, a second, incremental run of each source with files
   changed, deleted and renamed. After each fault it times how long until the work
   goes on: every group affected has a live process with its partitions and has
   committed further (or has nothing left to read).
4. Then every group catches up, and ``verify run`` judges every run; the dead-letter
   topic is read whole. The result counts faults by kind, restarts, retries (from the
   processes' logs), dead letters by reason against the ones injected, duplicates and
   missing files, and the recovery time of each fault.

The schedule is drawn from the seed alone: the same seed, the same faults in the same
order with the same pauses (the moments a process happens to be at differ, the machine
being what it is).

MinIO's window is placed when no ingest runs: an ingest that meets an unavailable
object store skips its large files and ends its run *incomplete* by design (tested in
tests/integration/test_ingest_store_outage.py), which a verdict of "nothing missing"
cannot tell from a loss.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka import TopicPartition as KafkaPartition

from consumers.dlq import read_dead_letters
from consumers.groups import GROUPS
from consumers.verify.reconcile import verify_run
from consumers.verify.report import Kind, RunReport
from headrace.children import die_with_parent
from headrace.errors import HeadraceError
from headrace.kafka import ensure_topics, make_admin, make_consumer
from headrace.settings import Settings, TopicSettings, load_settings
from headrace.stack.manager import Stack

# The services the pipeline needs, and chaos stops and starts (not Prometheus).
PIPELINE_SERVICES = ("postgres", "minio", "kafka", "registry")

GROUP_NAMES = ("archive", "load", "cache", "verify")
# The failpoint between each group's durable write and its offset commit.
FAILPOINTS = {
    "archive": "archive.after_publish",
    "load": "load.after_write",
    "cache": "cache.after_write",
    "verify": "verify.before_commit",
}
INLINE_LIMIT = 16 * 1024
COMMITTED = b'"t":"committed"'  # a committed batch's line in an ingest's journal
RETRY_LINE = re.compile(r"\(attempt \d+\)|attempt \d+ failed|will retry|asking again")
FAULT_KINDS = (
    "group_failpoint",
    "group_kill",
    "ingest_kill",
    "kafka_restart",
    "minio_outage",
    "postgres_outage",
    "rebalance",
)


class ChaosError(HeadraceError):
    """The chaos run could not be carried out (not: it found a loss; that is its result)."""


@dataclass(frozen=True)
class ChaosOptions:
    files: int = 100_000
    seed: int | None = None
    kills_per_group: int = 3  # one of them by the group's failpoint
    outage_s: float = 8.0  # how long MinIO and PostgreSQL stay unreachable
    recover_timeout_s: float = 180.0  # for one fault
    work: Path | None = None  # default: a temporary directory, removed unless keep
    keep: bool = False


@dataclass(frozen=True)
class Step:
    """One entry of the schedule: a fault (or the second run's start) after a pause."""

    kind: str  # a FAULT_KINDS entry but group_failpoint (armed at start), or "run2"
    target: str  # a group, "ingest", a service
    pause_s: float  # before it, after the previous step recovered


@dataclass
class FaultResult:
    kind: str
    target: str
    at_s: float  # since the chaos began
    outage_s: float | None = None  # a service's window, a rebalance's two-member spell
    recover_s: float | None = None  # from the fault's end until the work went on; None: never
    lag: int | None = None  # records the target had still to read when it struck
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "at_s": round(self.at_s, 2),
            "outage_s": None if self.outage_s is None else round(self.outage_s, 2),
            "recover_s": None if self.recover_s is None else round(self.recover_s, 2),
            "lag": self.lag,
            "detail": self.detail,
        }


@dataclass
class ChaosResult:
    seed: int
    files: int
    work: Path
    seconds: float = 0.0
    events: dict[str, int] = field(default_factory=dict)  # topic field -> records
    runs: list[RunReport] = field(default_factory=list)
    faults: list[FaultResult] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)  # group or "ingest" -> restarts
    retries: dict[str, int] = field(default_factory=dict)  # group or "ingest" -> retry lines
    dead_letters: dict[str, int] = field(default_factory=dict)  # reason -> distinct records
    dead_letters_expected: dict[str, int] = field(default_factory=dict)
    dead_letters_repeated: int = 0  # the same record dead-lettered again by the same group
    unexpected_dead_letters: list[str] = field(default_factory=list)
    catch_up_s: float | None = None
    problems: list[str] = field(default_factory=list)  # what stopped the proof, in words

    @property
    def duplicates(self) -> int:
        return sum(r.by_kind().get(Kind.DUPLICATED.value, 0) for r in self.runs)

    @property
    def missing(self) -> int:
        kinds = (Kind.MISSING_IN_ARCHIVE.value, Kind.MISSING_IN_DATABASE.value)
        return sum(r.by_kind().get(k, 0) for r in self.runs for k in kinds)

    def faults_by_kind(self) -> dict[str, int]:
        return dict(sorted(Counter(f.kind for f in self.faults).items()))

    @property
    def ok(self) -> bool:
        return (
            not self.problems
            and bool(self.runs)
            and all(r.ok for r in self.runs)
            and self.duplicates == 0
            and self.missing == 0
            and self.dead_letters == self.dead_letters_expected
            and not self.unexpected_dead_letters
            and all(f.recover_s is not None for f in self.faults)
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seed": self.seed,
            "files": self.files,
            "seconds": round(self.seconds, 1),
            "events": self.events,
            "runs": [
                {"run_id": r.run_id, "project": r.project, "ok": r.ok, **_run_counts(r)}
                for r in self.runs
            ],
            "faults_by_kind": self.faults_by_kind(),
            "faults": [f.as_json() for f in self.faults],
            "restarts": self.restarts,
            "retries": self.retries,
            "dead_letters": self.dead_letters,
            "dead_letters_expected": self.dead_letters_expected,
            "dead_letters_repeated": self.dead_letters_repeated,
            "unexpected_dead_letters": self.unexpected_dead_letters,
            "duplicates": self.duplicates,
            "missing": self.missing,
            "catch_up_s": None if self.catch_up_s is None else round(self.catch_up_s, 1),
            "problems": self.problems,
            "work": str(self.work),
        }


def _run_counts(report: RunReport) -> dict[str, Any]:
    return {
        "files": report.counts.get("manifest", {}).get("files", 0),
        "discrepancies_by_kind": report.by_kind(),
    }


# --- the schedule -------------------------------------------------------------------


def plan(seed: int, kills_per_group: int) -> tuple[list[Step], dict[str, int]]:
    """The schedule the seed draws, and the pass at which each failpoint fires (the
    group's first kill; ``ingest`` too: the batch whose transaction is left open)."""
    rng = random.Random(seed)
    passes = {g: rng.randint(1, 2) for g in GROUP_NAMES}
    passes["ingest"] = rng.randint(2, 4)
    steps = [Step("group_kill", g, 0) for g in GROUP_NAMES for _ in range(kills_per_group - 1)]
    steps += [
        Step("kafka_restart", "kafka", 0),
        Step("minio_outage", "minio", 0),
        Step("postgres_outage", "postgres", 0),
        Step("rebalance", rng.choice(GROUP_NAMES), 0),
    ]
    rng.shuffle(steps)
    steps.insert(rng.randint(len(steps) // 2, len(steps)), Step("run2", "ingest", 0))
    return [Step(s.kind, s.target, round(rng.uniform(0.5, 3.0), 2)) for s in steps], passes


# --- the workload -------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    content: Path  # a directory: inline and object storage
    repo: Path  # a git repository: git references
    content_files: int
    repo_files: int


def write_workload(root: Path, files: int, rng: random.Random) -> Workload:
    """``files`` files in all: nine in ten in the directory, one in ten in the repo."""
    repo_files = max(10, files // 10)
    content_files = max(10, files - repo_files)
    content, repo = root / "content", root / "repo"
    _write_files(content, content_files, rng, large_share=0.03)
    _write_files(repo, repo_files, rng, large_share=0.0)
    from git import Repo  # GitPython; imported when a workload is written

    Repo.init(repo, initial_branch="main")
    _commit(repo, "the first version")
    return Workload(content, repo, content_files, repo_files)


def _write_files(root: Path, count: int, rng: random.Random, *, large_share: float) -> None:
    for i in range(count):
        path = root / f"d{i // 500:03d}" / f"f{i:06d}"
        if i % 500 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        if rng.random() < large_share:  # above the inline limit: object storage
            path.with_suffix(".bin").write_bytes(rng.randbytes(rng.randint(20_000, 48_000)))
        else:
            path.with_suffix(".txt").write_text(f"file {i}\n{rng.randbytes(40).hex()}\n" * 3)


def change_workload(work: Workload, rng: random.Random) -> None:
    """The second run's changes: files rewritten, deleted, renamed and added, in both."""
    for root, count in ((work.content, work.content_files), (work.repo, work.repo_files)):
        paths = sorted(p for p in root.rglob("f*") if p.is_file())
        rng.shuffle(paths)
        n = max(3, count // 100)
        changed, deleted, renamed = paths[:n], paths[n : 2 * n], paths[2 * n : 3 * n]
        for p in changed:
            p.write_bytes(p.read_bytes() + b"changed in the second run\n")
        for p in deleted:
            p.unlink()
        for p in renamed:
            p.rename(p.with_name("renamed-" + p.name))
        (root / "added").mkdir(exist_ok=True)
        for i in range(n):
            (root / "added" / f"new{i:04d}.txt").write_text(f"added {i} {rng.random()}\n")
    _commit(work.repo, "the second version")


def _commit(repo: Path, message: str) -> None:
    from git import Repo

    git = Repo(repo).git
    with git.custom_environment(**_git_env()):
        git.add("-A")
        git.commit("-q", "-m", message)


def _git_env() -> dict[str, str]:
    return {
        **os.environ,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "headrace chaos",
        "GIT_AUTHOR_EMAIL": "chaos@example.invalid",
        "GIT_COMMITTER_NAME": "headrace chaos",
        "GIT_COMMITTER_EMAIL": "chaos@example.invalid",
    }


# --- the processes ------------------------------------------------------------------


class Member:
    """One process of a group, ``headrace consume GROUP``, its output in a log of its own."""

    def __init__(self, group: str, env: dict[str, str], log: Path, failpoint: str | None) -> None:
        self.group, self.log, self.failpoint = group, log, failpoint
        argv = ["consume", group, "--metrics-port", "0"]
        self.proc = headrace_process(argv, env, log, failpoint, session=True)
        self._assigned = Occurrences(log, b" assigned ")
        self.meant = False  # stopped or killed by the chaos, not by itself

    def alive(self) -> bool:
        return self.proc.poll() is None

    def assignments(self) -> int:
        """How many times it was handed partitions (its ``assigned`` log lines)."""
        return self._assigned.count()

    def kill(self) -> None:
        self.meant = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM (a clean leave); SIGKILL if it is still there after the timeout."""
        self.meant = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class Death:
    group: str
    member: Member
    at: float  # monotonic
    cause: str  # "chaos", "failpoint" or "exit N"


class Supervisor:
    """Keeps each group's processes running: one that dies is started again after half
    a second, as a service manager would. Each group's process is armed with the
    group's failpoint until it has fired (a process killed before its failpoint's turn
    hands it to its successor)."""

    RESTART_DELAY_S = 0.5

    def __init__(
        self,
        env: dict[str, str],
        logs: Path,
        failpoints: dict[str, str],
        on_death: Callable[[Death], None],
    ) -> None:
        self.env, self.logs, self.on_death = env, logs, on_death
        self.armed = dict(failpoints)  # group -> failpoint spec, until it fires
        self.members: dict[str, list[Member]] = {g: [] for g in GROUP_NAMES}
        self._every: dict[str, list[Member]] = {g: [] for g in GROUP_NAMES}
        self.restarts: Counter[str] = Counter()
        self._started: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        for group in GROUP_NAMES:
            self.start(group, self.armed.get(group))

    def start(self, group: str, failpoint: str | None = None) -> Member:
        with self._lock:
            self._started[group] += 1
            log = self.logs / f"{group}-{self._started[group]:02d}.log"
            member = Member(group, self.env, log, failpoint)
            self.members[group].append(member)
            self._every[group].append(member)
            return member

    def run(self) -> None:
        self._thread.start()

    def primary(self, group: str) -> Member:
        with self._lock:
            return self.members[group][0]

    def all(self, group: str) -> list[Member]:
        """Every process the group had, the dead and dismissed ones too."""
        with self._lock:
            return list(self._every[group])

    def live(self, group: str) -> list[Member]:
        with self._lock:
            return [m for m in self.members[group] if m.alive()]

    def dismiss(self, member: Member) -> None:
        """Stop an extra member for good (SIGTERM): it is not started again."""
        with self._lock:
            self.members[member.group].remove(member)
        member.stop()

    def _watch(self) -> None:
        pending: list[tuple[float, str, int]] = []  # (restart at, group, index)
        while not self._stop.wait(0.1):
            now = time.monotonic()
            with self._lock:
                for group, members in self.members.items():
                    for i, m in enumerate(members):
                        if m.alive() or any(p[1:] == (group, i) for p in pending):
                            continue
                        rc = m.proc.returncode
                        cause = (
                            "chaos"
                            if m.meant
                            else "failpoint"
                            if m.failpoint and rc == -signal.SIGKILL
                            else f"exit {rc}"
                        )
                        if cause == "failpoint":
                            self.armed.pop(group, None)
                        self.on_death(Death(group, m, now, cause))
                        pending.append((now + self.RESTART_DELAY_S, group, i))
            for due in [p for p in pending if p[0] <= now]:
                pending.remove(due)
                _, group, i = due
                with self._lock:
                    if i >= len(self.members[group]) or self.members[group][i].alive():
                        continue
                    self._started[group] += 1
                    log = self.logs / f"{group}-{self._started[group]:02d}.log"
                    armed = self.armed.get(group) if i == 0 else None
                    self.members[group][i] = Member(group, self.env, log, armed)
                    self._every[group].append(self.members[group][i])
                    self.restarts[group] += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for members in self.members.values():
            for m in members:
                if m.alive():
                    m.stop()


class Lag:
    """Each group's committed offsets and how many records it has still to read, as the
    broker says now (None while it cannot say: the broker is down or restarting).

    "Still to read" is what a read_committed reader would be handed between the
    committed offset and the end: transaction markers and aborted records take offsets
    too, and a group that committed just before them has read everything."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()  # the recovery watchers ask from threads of their own
        self._failures = 0  # calls failed in a row
        self._retired: list[Any] = []
        self._open()
        self.partitions: dict[str, list[tuple[str, int]]] = {}
        for group in GROUP_NAMES:
            topics = [getattr(settings.kafka.topics, f) for f in GROUPS[group].topics]
            self.partitions[group] = [(t, p) for t in topics for p in self._partitions(t)]
        self._nothing_left: set[tuple[str, int, int, int]] = set()  # (topic, p, from, to)

    def _open(self) -> None:
        kafka = self.settings.kafka
        # A group's committed offsets are read by a consumer of that group id that never
        # joins it, not by the admin client: librdkafka's admin ListConsumerGroupOffsets
        # crashed the process (SIGSEGV in rd_kafka_cgrp_op from the OffsetFetch response
        # handler) when the broker answered it while restarting.
        prefix = self.settings.consumer.group_prefix
        self.offsets = {g: make_consumer(kafka, prefix + g) for g in GROUP_NAMES}
        self.probe = make_consumer(kafka, f"headrace-chaos-probe-{uuid.uuid4().hex[:8]}")
        self.reader = make_consumer(kafka, f"headrace-chaos-reader-{uuid.uuid4().hex[:8]}")
        self._opened = time.monotonic()

    def _partitions(self, topic: str, timeout_s: float = 30.0) -> list[int]:
        """A topic's partitions, once the broker's metadata has them (a new topic's may
        come without for a moment)."""
        deadline = time.monotonic() + timeout_s
        while True:
            metadata = self.probe.list_topics(topic, timeout=10).topics.get(topic)
            if metadata is not None and metadata.error is None and metadata.partitions:
                return sorted(metadata.partitions)
            if time.monotonic() > deadline:
                raise ChaosError(f"topic {topic} has no partitions after {timeout_s:.0f} s")
            time.sleep(0.2)

    def of(self, group: str) -> tuple[int, int] | None:
        """``(committed, still to read)`` of the group, summed over its partitions."""
        with self._lock:
            try:
                found = self._of(group)
            except (KafkaException, TimeoutError):  # the broker is down or restarting
                self._failures += 1
                # After a broker restart a client may time out on every call until made
                # anew (seen: 100 s of timeouts, then the first new client answered).
                if self._failures >= 3 and time.monotonic() - self._opened > 10.0:
                    # Clients that keep failing are replaced, never destroyed while the
                    # run lasts: librdkafka may still answer their requests in flight.
                    self._retired += [*self.offsets.values(), self.probe, self.reader]
                    self._open()
                return None
            self._failures = 0
            return found

    def _of(self, group: str) -> tuple[int, int]:
        wanted = [KafkaPartition(t, p) for t, p in self.partitions[group]]
        listed = self.offsets[group].committed(wanted, timeout=5)
        committed = {(tp.topic, tp.partition): max(tp.offset, 0) for tp in listed}
        total = behind = 0
        for tp in wanted:
            _low, high = self.probe.get_watermark_offsets(tp, timeout=5, cached=False)
            done = committed.get((tp.topic, tp.partition), 0)
            total += done
            if high > done and not self._only_markers(tp.topic, tp.partition, done, high):
                behind += high - done
        return total, behind

    def _only_markers(self, topic: str, partition: int, start: int, end: int) -> bool:
        """Whether a read_committed reader gets no record in ``[start, end)``: its
        position passes ``end`` and it was handed nothing."""
        key = (topic, partition, start, end)
        if key in self._nothing_left:
            return True
        self.reader.assign([KafkaPartition(topic, partition, start)])
        deadline = time.monotonic() + 2.0
        try:
            while time.monotonic() < deadline:
                if any(m.error() is None for m in self.reader.consume(1, 0.1)):
                    return False
                position = self.reader.position([KafkaPartition(topic, partition)])[0].offset
                if position >= end:
                    self._nothing_left.add(key)
                    return True
            return False
        finally:
            self.reader.unassign()

    def close(self) -> None:
        for client in (*self.offsets.values(), self.probe, self.reader, *self._retired):
            with contextlib.suppress(RuntimeError, KafkaException):
                client.close()


# --- the run ------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestSpec:
    run_id: str
    source: Path
    args: tuple[str, ...]
    uploads: bool  # sends content to the object store (the directory's runs)


class Chaos:
    """One chaos run: the workload, the processes, the schedule, the verdict."""

    def __init__(
        self,
        settings: Settings,
        options: ChaosOptions,
        work: Path,
        config_file: Path | None = None,
        progress: Callable[[str], None] = lambda _line: None,
    ) -> None:
        self.options, self.work, self.say = options, work, progress
        self.seed = (
            options.seed if options.seed is not None else random.SystemRandom().randrange(2**31)
        )
        self.tag = f"{self.seed:x}-{uuid.uuid4().hex[:6]}"
        self.env = {**os.environ, **self._overrides()}
        if config_file is not None:
            self.env["HEADRACE_CONFIG"] = str(config_file)
        with _environ(self.env):
            self.settings = load_settings(config_file)
        self.stack = Stack(settings)
        self.result = ChaosResult(self.seed, options.files, work)
        self.steps, self.passes = plan(self.seed, options.kills_per_group)
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self._watchers: list[threading.Thread] = []
        self._ingest_idle = threading.Event()
        self._uploads_idle = threading.Event()  # no ingest of the directory (git: no uploads)
        self._uploads_idle.set()
        self._run2 = threading.Event()
        self._ingest_done = threading.Event()
        self.lag: Lag | None = None
        self.supervisor: Supervisor | None = None

    def _overrides(self) -> dict[str, str]:
        work, tag = self.work, self.tag
        # Every topic of the settings, named for this run (a group reading one left at
        # its default would read, and wait for, what other runs put there).
        names = tuple(name.upper() for name in TopicSettings.model_fields)
        return {
            **{f"HEADRACE_KAFKA__TOPICS__{n}": f"chaos-{tag}.{n.lower()}" for n in names},
            "HEADRACE_KAFKA__PARTITIONS": "3",
            "HEADRACE_CONSUMER__GROUP_PREFIX": f"chaos-{tag}.",
            "HEADRACE_CONSUMER__METRICS_PORT": "0",
            "HEADRACE_CONSUMER__INSTANCES_DIR": str(work / "instances"),
            "HEADRACE_CONSUMER__BATCH_SIZE": "500",
            "HEADRACE_ARCHIVE__ROOT": str(work / "archive"),
            "HEADRACE_ARCHIVE__STAGING": str(work / "archive-staging"),
            "HEADRACE_ARCHIVE__MAX_SEGMENT_AGE_S": "2",
            "HEADRACE_LOAD__BACKEND": "postgres",
            "HEADRACE_LOAD__POSTGRES_SCHEMA": f"chaos_{tag.replace('-', '_')}",
            "HEADRACE_LOAD__BATCH_SIZE": "500",
            "HEADRACE_OBJECT_STORE__BUCKET": f"chaos-{tag}",
            "HEADRACE_CACHE__DIR": str(work / "content-cache"),
            "HEADRACE_GIT__CACHE_DIR": str(work / "git-cache"),
            "HEADRACE_GIT__ALLOWED_SCHEMES": '["https", "ssh", "file"]',
            "HEADRACE_INGEST__STATE_DIR": str(work / "runs"),
            "HEADRACE_VERIFY__REPAIRS_DIR": str(work / "repairs"),
            "HEADRACE_LOG__FORMAT": "text",
            "HEADRACE_LOG__LEVEL": "INFO",
        }

    def now(self) -> float:
        return time.monotonic() - self.t0

    # the run as a whole

    def run(self) -> ChaosResult:
        started = time.monotonic()
        # This process's own clients (the lag probes) see the broker go on purpose: their
        # reconnection errors say nothing the schedule does not.
        logging.getLogger("headrace.librdkafka").setLevel(logging.CRITICAL)
        down = [s.name for s in self.stack.status(PIPELINE_SERVICES) if not s.healthy]
        if down:
            raise ChaosError(
                f"the local stack is not up ({', '.join(down)}): chaos stops and starts its"
                " processes; `headrace stack up` first"
            )
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        self.say(f"seed {self.seed}: {len(self.steps)} steps; work in {self.work}")
        workload = write_workload(
            self.work / "source", self.options.files, random.Random(self.seed)
        )
        self.say(
            f"workload: {workload.content_files} files in a directory,"
            f" {workload.repo_files} in a git repository"
        )
        topics = [
            getattr(self.settings.kafka.topics, f)
            for f in sorted({f for g in GROUP_NAMES for f in GROUPS[g].topics})
        ]
        ensure_topics(
            make_admin(self.settings.kafka),
            topics,
            partitions=3,
            replication_factor=self.settings.kafka.replication_factor,
        )
        self.lag = Lag(self.settings)
        self.t0 = time.monotonic()
        failpoints = {g: f"{FAILPOINTS[g]}={self.passes[g]}" for g in GROUP_NAMES}
        self.supervisor = Supervisor(self.env, self.work / "logs", failpoints, self._died)
        self.supervisor.run()
        expected = self._inject_hostile()
        ingest = threading.Thread(
            target=self._ingests, args=(workload,), name="ingest", daemon=True
        )
        ingest.start()
        try:
            for step in self.steps:
                time.sleep(step.pause_s)
                self._do(step, workload)
            self._run2.set()
            if not self._ingest_done.wait(self._budget()):
                self.result.problems.append("the ingests did not finish in time")
            self._catch_up()
        finally:
            for watcher in self._watchers:
                watcher.join(timeout=self.options.recover_timeout_s)
            self.supervisor.stop()
            self.lag.close()
            # A service stopped when the run was interrupted runs again.
            self.stack.up(PIPELINE_SERVICES)
        self._verdict(expected)
        self.result.seconds = time.monotonic() - started
        return self.result

    def _budget(self) -> float:
        """A generous bound for work proportional to the workload (ingest, catch-up)."""
        return 300.0 + self.options.files / 100

    # faults

    def _do(self, step: Step, workload: Workload) -> None:
        self.say(f"{self.now():7.1f}s {step.kind} {step.target}")
        if step.kind == "run2":
            self._wait_ingest_idle()
            change_workload(workload, random.Random(self.seed + 1))
            self._ingest_idle.clear()
            self._run2.set()
        elif step.kind == "group_kill":
            self._kill(step.target)
        elif step.kind == "kafka_restart":
            self._outage("kafka_restart", "kafka", 0.0)
        elif step.kind == "minio_outage":
            self._uploads_idle.wait(self._budget())
            self._outage("minio_outage", "minio", self.options.outage_s)
        elif step.kind == "postgres_outage":
            self._outage("postgres_outage", "postgres", self.options.outage_s)
        elif step.kind == "rebalance":
            self._rebalance(step.target)

    def _kill(self, group: str) -> None:
        assert self.supervisor is not None and self.lag is not None  # noqa: S101 - set in run
        before = self.lag.of(group)
        member = self.supervisor.primary(group)
        at = self.now()
        member.kill()
        fault = FaultResult("group_kill", group, at, lag=before[1] if before else None)
        fault.recover_s = self._recovered([group], time.monotonic(), {group: before})
        self._record(fault)

    def _outage(self, kind: str, service: str, window_s: float) -> None:
        assert self.lag is not None  # noqa: S101 - set in run
        before = {g: self.lag.of(g) for g in GROUP_NAMES}
        at = self.now()
        down = time.monotonic()
        self.stack.down([service])
        time.sleep(window_s)
        self.stack.up([service])
        back = time.monotonic()
        fault = FaultResult(kind, service, at, outage_s=back - down)
        fault.lag = sum(b[1] for b in before.values() if b is not None)
        fault.recover_s = self._recovered(list(GROUP_NAMES), back, before)
        self._record(fault)

    def _rebalance(self, group: str) -> None:
        """A second process of the group joins (a rebalance), works beside the first for a
        few seconds and leaves cleanly (another); the work goes on after each."""
        assert self.supervisor is not None and self.lag is not None  # noqa: S101 - set in run
        before = self.lag.of(group)
        at = self.now()
        joined = time.monotonic()
        handed = self._assignments(group)
        extra = self.supervisor.start(group)
        deadline = joined + self.options.recover_timeout_s
        # Both are handed partitions: the second, and the first again (or its successor).
        while time.monotonic() < deadline and not (
            extra.assignments() and self._assignments(group) >= handed + 2
        ):
            time.sleep(0.1)
        both = time.monotonic() - joined
        time.sleep(random.Random(self.seed + 2).uniform(2.0, 5.0))
        handed = self._assignments(group)
        left = time.monotonic()  # SIGTERM: it leaves the group before it exits
        self.supervisor.dismiss(extra)
        fault = FaultResult("rebalance", group, at, outage_s=left - joined)
        fault.lag = before[1] if before else None
        fault.detail = f"both had partitions after {both:.1f} s"
        fault.recover_s = self._recovered(
            [group], left, {group: self.lag.of(group)}, lambda: self._assignments(group) > handed
        )
        self._record(fault)

    def _assignments(self, group: str) -> int:
        """How many times the group's processes, all of them so far, were handed partitions."""
        assert self.supervisor is not None  # noqa: S101 - set in run
        return sum(m.assignments() for m in self.supervisor.all(group))

    def _died(self, death: Death) -> None:
        """The supervisor saw a process end: one the chaos did not kill is a fault too."""
        if death.cause == "chaos":
            return
        assert self.lag is not None  # noqa: S101 - set in run
        kind = "group_failpoint" if death.cause == "failpoint" else "group_exit"
        at = death.at - self.t0
        fault = FaultResult(kind, death.group, at, detail=death.member.failpoint or death.cause)
        if kind == "group_exit":
            self.result.problems.append(
                f"a {death.group} process ended by itself ({death.cause}; log {death.member.log})"
            )

        def watch() -> None:
            then = self.lag.of(death.group) if self.lag else None
            fault.lag = then[1] if then else None
            fault.recover_s = self._recovered([death.group], death.at, {death.group: then})
            self._record(fault)

        thread = threading.Thread(target=watch, name=f"recovery-{death.group}", daemon=True)
        self._watchers.append(thread)
        thread.start()

    def _recovered(
        self,
        groups: list[str],
        since: float,
        before: dict[str, tuple[int, int] | None],
        also: Callable[[], bool] = lambda: True,
    ) -> float | None:
        """Seconds from ``since`` until every group has live processes that were handed
        their partitions, and has committed past ``before`` (or has nothing to read)."""
        assert self.supervisor is not None and self.lag is not None  # noqa: S101 - set in run
        deadline = since + self.options.recover_timeout_s
        waiting = set(groups)
        while time.monotonic() < deadline:
            for group in list(waiting):
                live = self.supervisor.live(group)
                if not live or not all(m.assignments() for m in live):
                    continue
                now = self.lag.of(group)
                then = before.get(group)
                if now is not None and (now[1] == 0 or (then is not None and now[0] > then[0])):
                    waiting.discard(group)
            if not waiting and also():
                return time.monotonic() - since
            time.sleep(0.2)
        return None

    def _record(self, fault: FaultResult) -> None:
        with self._lock:
            self.result.faults.append(fault)
        took = (
            "not recovered" if fault.recover_s is None else f"recovered in {fault.recover_s:.1f} s"
        )
        self.say(f"{self.now():7.1f}s   {fault.kind} {fault.target}: {took}")

    # the ingests

    def _specs(self, workload: Workload, second: bool) -> list[IngestSpec]:
        n = "2" if second else "1"
        more = ("--incremental",) if second else ()
        batch = str(max(50, workload.content_files // 20))
        return [
            IngestSpec(
                f"chaos-{self.tag}-{n}-content",
                workload.content,
                (
                    "--project",
                    f"chaos-{self.tag}-content",
                    "--inline-limit",
                    str(INLINE_LIMIT),
                    "--transaction-files",
                    batch,
                    *more,
                ),
                True,
            ),
            IngestSpec(
                f"chaos-{self.tag}-{n}-git",
                workload.repo,
                (
                    "--project",
                    f"chaos-{self.tag}-git",
                    "--content-strategy",
                    "git_reference",
                    *more,
                ),
                False,
            ),
        ]

    def run_ids(self) -> list[str]:
        return [f"chaos-{self.tag}-{n}-{kind}" for n in ("1", "2") for kind in ("content", "git")]

    def _ingests(self, workload: Workload) -> None:
        try:
            first = True
            for spec in self._specs(workload, second=False):
                self._ingest(spec, f"ingest.produced={self.passes['ingest']}" if first else None)
                first = False
            self._ingest_idle.set()
            self._run2.wait()  # who sets it clears _ingest_idle first
            for spec in self._specs(workload, second=True):
                self._ingest(spec, None)
        finally:
            self._ingest_idle.set()
            self._ingest_done.set()

    def _ingest(self, spec: IngestSpec, failpoint: str | None) -> None:
        """Run the ingest until it succeeds, again with its run id when it fails (which
        resumes it), five times at most. After the failpoint's kill, the time until the
        resumed ingest commits a batch (or ends, having nothing left) is its recovery."""
        argv = ["ingest", str(spec.source), *spec.args, "--run-id", spec.run_id]
        journal = self.settings.ingest.state_dir / spec.run_id / "journal.jsonl"
        if spec.uploads:
            self._uploads_idle.clear()
        try:
            self._attempts(spec, argv, journal, failpoint)
        finally:
            self._uploads_idle.set()

    def _attempts(
        self, spec: IngestSpec, argv: list[str], journal: Path, failpoint: str | None
    ) -> None:
        killed: tuple[FaultResult, float] | None = None
        for attempt in range(1, 6):
            log = self.work / "logs" / f"ingest-{spec.run_id}-{attempt}.log"
            proc = headrace_process(argv, self.env, log, failpoint)
            if killed is not None:
                fault, at = killed
                committed = Occurrences(journal, COMMITTED)
                before = committed.count()
                while proc.poll() is None and committed.count() <= before:
                    time.sleep(0.05)
                if proc.poll() is None or proc.returncode == 0:
                    fault.recover_s = time.monotonic() - at
                    self._record(fault)
                    killed = None  # else the next attempt may yet recover
            rc = proc.wait()
            if rc == 0:
                return
            self.result.restarts["ingest"] = self.result.restarts.get("ingest", 0) + 1
            if failpoint is not None and rc == -signal.SIGKILL:
                batches = Occurrences(journal, COMMITTED).count()
                fault = FaultResult("ingest_kill", "ingest", self.now())
                fault.detail = f"{failpoint}, {batches} batches committed before"
                killed = (fault, time.monotonic())
                failpoint = None  # it fired
            else:  # failed by itself (the broker restarting): armed again, if it was
                self.say(f"{self.now():7.1f}s   ingest {spec.run_id} failed (exit {rc}), again")
                time.sleep(1.0)
        if killed is not None:
            self._record(killed[0])  # never recovered
        self.result.problems.append(f"ingest {spec.run_id} failed five times; see {log}")

    def _wait_ingest_idle(self) -> None:
        self._ingest_idle.wait(self._budget())

    # hostile records, on purpose

    def _inject_hostile(self) -> dict[tuple[str, int, int], str]:
        """Publish the workload's hostile records; return where each went, and its reason."""
        from confluent_kafka import Producer
        from confluent_kafka.serialization import MessageField, SerializationContext

        from schemas.catalog import EventType
        from schemas.models import DeadLetterReason, FileEvent
        from schemas.registry import make_registry_client
        from schemas.serde import EventSerializer

        topic = self.settings.kafka.topics.file_events
        good = {
            "project": f"chaos-{self.tag}-hostile",
            "size": 1,
            "checksum": "0" * 64,
            "run_id": "chaos-hostile",
        }
        events = [
            (
                FileEvent.model_validate({**good, "path": "../../escape.txt"}),
                DeadLetterReason.INVALID_EVENT,
            ),
            (
                FileEvent.model_validate({**good, "path": "a\x00b.txt"}),
                DeadLetterReason.INVALID_EVENT,
            ),
            (
                FileEvent.model_validate(
                    {**good, "path": "future.txt", "event_time": datetime(2100, 1, 1, tzinfo=UTC)}
                ),
                DeadLetterReason.EVENT_TIME_SKEW,
            ),
        ]
        placed: dict[tuple[str, int, int], str] = {}
        values: list[tuple[bytes, str]] = []
        with make_registry_client(self.settings.registry) as client:
            serialize = EventSerializer(client, EventType.FILE_EVENT)
            ctx = SerializationContext(topic, MessageField.VALUE)
            values += [(serialize(e, ctx), r.value) for e, r in events]
        values.append((b"not avro at all", DeadLetterReason.DESERIALIZATION.value))
        producer = Producer({"bootstrap.servers": self.settings.kafka.bootstrap_servers})
        for i, (value, reason) in enumerate(values):

            def delivered(err: Any, msg: Any, reason: str = reason) -> None:
                if err is None:
                    placed[(msg.topic(), msg.partition(), msg.offset())] = reason

            producer.produce(topic, key=f"hostile-{i}".encode(), value=value, on_delivery=delivered)
        if producer.flush(30) or len(placed) != len(values):
            raise ChaosError("the hostile records were not all delivered")
        return placed

    # the end

    def _catch_up(self) -> None:
        assert self.supervisor is not None and self.lag is not None  # noqa: S101 - set in run
        started = time.monotonic()
        deadline = started + self._budget()
        lags: dict[str, tuple[int, int] | None] = {}
        self.say(f"{self.now():7.1f}s faults done; waiting for every group to catch up")
        while time.monotonic() < deadline:
            lags = {g: self.lag.of(g) for g in GROUP_NAMES}
            live = all(
                (m := self.supervisor.live(g)) and all(x.assignments() for x in m)
                for g in GROUP_NAMES
            )
            if live and all(lag is not None and lag[1] == 0 for lag in lags.values()):
                self.result.catch_up_s = time.monotonic() - started
                return
            time.sleep(0.5)
        behind = {g: lag for g, lag in lags.items() if lag is None or lag[1]}
        self.result.problems.append(
            f"the groups did not catch up in {self._budget():.0f} s: {behind}"
        )

    def _verdict(self, expected: dict[tuple[str, int, int], str]) -> None:
        assert self.supervisor is not None  # noqa: S101 - set in run
        result = self.result
        for run_id in self.run_ids():
            try:
                result.runs.append(verify_run(self.settings, run_id))
            except HeadraceError as exc:
                result.problems.append(f"verify run {run_id}: {exc}")
        published = sum(r.counts.get("published", {}).get("files", 0) for r in result.runs)
        result.events = {"file_events": published, "hostile": len(expected)}
        result.restarts.update(self.supervisor.restarts)
        for log in sorted((self.work / "logs").glob("*.log")):
            who = log.stem.split("-")[0]
            lines = RETRY_LINE.findall(log.read_text(errors="replace"))
            result.retries[who] = result.retries.get(who, 0) + len(lines)
        readers = [g for g in GROUP_NAMES if "file_events" in GROUPS[g].topics]
        wanted = Counter(reason for reason in expected.values() for _group in readers)
        result.dead_letters_expected = dict(wanted)
        seen: set[tuple[str, str, int, int]] = set()
        for _partition, _offset, letter in read_dead_letters(self.settings):
            key = (letter.group, letter.topic, letter.partition, letter.offset)
            if key in seen:
                result.dead_letters_repeated += 1
                continue
            seen.add(key)
            if key[1:] not in expected:
                result.unexpected_dead_letters.append(
                    f"{letter.group} {letter.reason}: {letter.error[:200]}"
                )
                continue
            reason = str(letter.reason.value)  # a plain str: a JSON object's key
            result.dead_letters[reason] = result.dead_letters.get(reason, 0) + 1
        result.dead_letters = dict(sorted(result.dead_letters.items()))
        result.dead_letters_expected = dict(sorted(result.dead_letters_expected.items()))
        result.faults.sort(key=lambda f: f.at_s)


def headrace_process(
    argv: list[str], env: dict[str, str], log: Path, failpoint: str | None, session: bool = False
) -> subprocess.Popen[bytes]:
    """``headrace ARGV`` as a child, its output into ``log``, armed with ``failpoint``; in
    a session of its own when ``session`` (so its whole group can be signalled)."""
    if failpoint is not None:
        env = {**env, "HEADRACE_FAILPOINTS": failpoint}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "headrace", *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=session,
            preexec_fn=die_with_parent,
        )


class Occurrences:
    """How often ``needle`` occurs in a file that only grows (a log, a journal), reading
    only what was appended since the last call: polled every few tenths of a second,
    a whole re-read would cost more as the file grows."""

    def __init__(self, path: Path, needle: bytes) -> None:
        self.path, self.needle = path, needle
        self._offset = 0
        self._seen = 0
        self._carry = b""  # the end of the last read, for a needle cut across two reads

    def count(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return self._seen
        self._offset += len(chunk)
        data = self._carry + chunk
        self._seen += data.count(self.needle)
        keep = len(self.needle) - 1  # too short to hold the needle: never counted twice
        self._carry = data[-keep:] if keep else b""
        return self._seen


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` as ``values`` for a moment: the settings read as a process would."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_chaos(
    settings: Settings,
    options: ChaosOptions,
    *,
    config_file: Path | None = None,
    progress: Callable[[str], None] = lambda _line: None,
) -> ChaosResult:
    """One chaos run; its work directory is removed afterwards unless kept or given."""
    work = options.work or Path(tempfile.mkdtemp(prefix="headrace-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return Chaos(settings, options, work, config_file, progress).run()
    finally:
        if options.work is None and not options.keep:
            shutil.rmtree(work, ignore_errors=True)
