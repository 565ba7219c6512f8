"""``headrace consume GROUP``: run one consumer group until stopped (or caught up),
as this process or, with ``--processes N``, as N worker processes under a supervisor."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import click
import orjson

from consumers.groups import groups, ready_topics, run_group
from consumers.progress import JoinBarrier, WorkersCaughtUp, WorkerState
from consumers.runtime import RuntimeStats
from consumers.supervisor import RestartPolicy, Supervisor, describe_exit
from headrace.children import headrace_command
from headrace.errors import ConsumeError
from headrace.settings import Settings
from headrace.telemetry import current_run_id

# A worker holds its partitions at most this long for its supervisor to say the group
# is whole (the supervisor itself says so after its join timeout, 60 s, whatever).
WORKER_HOLD_MAX_S = 120.0


class _GroupName(click.ParamType):  # type: ignore[type-arg]
    """A group headrace brings, or one an installed package registers."""

    name = "group"

    def convert(self, value: str, param: click.Parameter | None, ctx: click.Context | None) -> str:
        known = groups()
        if value not in known:
            self.fail(f"{value!r} is not a group ({', '.join(sorted(known))})", param, ctx)
        return value


@click.command()
@click.argument("group", type=_GroupName())
@click.option(
    "--until-caught-up",
    is_flag=True,
    help="Stop once the end offsets seen at start are reached (batch jobs, tests).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0),
    help="Port for /metrics and /healthz (0: none; default from settings); with"
    " --processes, worker I serves port + I.",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1, max=256),
    help="Worker processes of the group on this host, under a supervisor that restarts"
    " one that dies (default: consumer.processes).",
)
@click.option("--worker-stats", type=click.Path(path_type=Path), hidden=True)
@click.option("--report-to", type=click.Path(path_type=Path), hidden=True)
@click.option("--join-with", type=(click.Path(path_type=Path), int, int), hidden=True)
@click.pass_context
def consume(
    ctx: click.Context,
    group: str,
    until_caught_up: bool,
    metrics_port: int | None,
    processes: int | None,
    worker_stats: Path | None,
    report_to: Path | None,
    join_with: tuple[Path, int, int] | None,
) -> None:
    """Run the GROUP consumer group (archive, load, cache, verify, or one an installed
    package registers under the headrace.groups entry point): each group is its own
    Kafka consumer group, scaling out by partitions across processes and hosts.
    SIGTERM or SIGINT stops it cleanly: what is durable is committed and the group
    is left."""
    settings: Settings = ctx.obj
    group_id = settings.consumer.group_prefix + group
    count = processes or settings.consumer.processes
    if count > 1:
        stats = _supervised(ctx, settings, group, count, until_caught_up, metrics_port)
    else:
        before_join, hold = _joining(join_with)
        stats = run_group(
            settings,
            group,
            until_caught_up=until_caught_up or report_to is not None,
            metrics_port=metrics_port,
            on_progress=WorkerState(report_to) if report_to is not None else None,
            before_join=before_join,
            hold=hold,
        )
        if worker_stats is not None:  # a supervisor's worker: the supervisor sums them up
            worker_stats.write_bytes(
                orjson.dumps({"processed": stats.processed, "dead_lettered": stats.dead_lettered})
            )
            return
    click.echo(
        f"{group_id}: {stats.processed} records written, {stats.dead_lettered} dead-lettered"
    )


def _joining(
    join_with: tuple[Path, int, int] | None,
) -> tuple[Callable[[], None] | None, Callable[[], bool] | None]:
    """A supervised worker's ``before_join`` (subscribe with the others) and ``hold``
    (read once the group is whole), from --join-with DIR WORKERS INDEX."""
    if join_with is None:
        return None, None
    directory, workers, index = join_with
    barrier = JoinBarrier(directory, workers)
    deadline: list[float] = []  # set once it subscribes: a supervisor gone holds it no longer

    def hold() -> bool:
        if not deadline:
            deadline.append(time.monotonic() + WORKER_HOLD_MAX_S)
        return barrier.whole() or time.monotonic() > deadline[0]

    return lambda: barrier.arrive(index), hold


def _supervised(
    ctx: click.Context,
    settings: Settings,
    group: str,
    processes: int,
    until_caught_up: bool,
    metrics_port: int | None,
) -> RuntimeStats:
    """The group as ``processes`` workers (``headrace consume GROUP`` each, with this
    command's settings) under a :class:`~consumers.supervisor.Supervisor`."""
    kafka, consumer = settings.kafka, settings.consumer
    group_id = consumer.group_prefix + group
    topics = list(ready_topics(settings, group)[1].values())  # no broker: one line, now
    port = consumer.metrics_port if metrics_port is None else metrics_port
    root = ctx.find_root().params  # the global options, passed on to each worker
    head = headrace_command(
        root.get("config"), log_format=root.get("log_format"), log_level=root.get("log_level")
    )
    run_id = current_run_id()
    with tempfile.TemporaryDirectory(prefix="headrace-workers-") as tmp:
        stats_dir = Path(tmp)
        progress = WorkersCaughtUp(stats_dir, processes)
        barrier = JoinBarrier(stats_dir, processes, kafka, group_id)
        if until_caught_up:
            progress.partitions(kafka, group_id, topics)  # what the workers must cover

        def command(i: int) -> list[str]:
            progress.forget(i)  # a worker started again has said nothing yet
            report = ("--report-to", str(progress.path(i))) if until_caught_up else ()
            return [
                *head,
                *("--run-id", f"{run_id}-w{i}"),
                *("consume", group, "--processes", "1"),
                *("--metrics-port", str(port + i if port else 0)),
                *("--worker-stats", str(stats_dir / f"{i}.json")),
                *("--join-with", str(stats_dir), str(processes), str(i)),
                *report,
            ]

        supervisor = Supervisor(
            group_id,
            processes,
            command,
            policy=RestartPolicy(
                max_deaths=consumer.restart_max, window_s=consumer.restart_window_s
            ),
            stop_timeout_s=consumer.stop_timeout_s,
            caught_up=progress if until_caught_up else None,
            barrier=barrier,
        )
        code = supervisor.run()
        stats = RuntimeStats()
        for path in sorted(stats_dir.glob("*.json")):
            done = orjson.loads(path.read_bytes())
            stats.processed += int(done["processed"])
            stats.dead_lettered += int(done["dead_lettered"])
    if supervisor.gave_up is not None:
        died = supervisor.gave_up
        said = f" (last: {died.last_line})" if died.last_line else ""
        raise ConsumeError(
            f"{group_id}: worker {died.index} {describe_exit(died.code)}"
            f" {consumer.restart_max} times within {consumer.restart_window_s:.0f} s{said}:"
            " gave up, the other workers were stopped"
        )
    if code != 0:
        failed = [
            f"worker {w.index} {describe_exit(w.last_code)}"
            for w in supervisor.workers
            if w.last_code not in (0, None)
        ]
        raise ConsumeError(f"{group_id}: {', '.join(failed)}")
    return stats
