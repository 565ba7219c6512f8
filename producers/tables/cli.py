"""``headrace archive-table``: options in, :func:`archive_table` called, one line out."""

from __future__ import annotations

import re
import sys
from datetime import timedelta
from typing import Any

import click
import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from headrace.history import record_final
from headrace.settings import Settings, SourceSettings
from producers.tables.archive_process import ArchiveProcess
from producers.tables.archiver import ArchiveRequest, BatchDone, Summary, archive_table
from producers.tables.catalog import TableRef, dsn_source_name
from producers.tables.metrics import TableMetrics

_AGE = re.compile(r"(\d+)([dhms])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_age(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``45s`` or a sum of them (``1d12h``); ValueError else."""
    text = text.strip().lower()
    if not text or _AGE.sub("", text):
        raise ValueError(f"{text!r} is not an age like 90d, 12h, 30m or 45s")
    age = timedelta()
    for count, unit in _AGE.findall(text):
        age += timedelta(**{_UNITS[unit]: int(count)})
    return age


class AgeType(click.ParamType):  # type: ignore[type-arg]  # generic in click's stubs only
    name = "AGE"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_age(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class EchoProgress:
    """One line per batch on stderr (not a terminal, or --json: nothing)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def start(self, eligible: int) -> None:
        if not self.quiet:
            click.echo(f"{eligible} rows are older than the retention now", err=True)

    def batch(self, done: BatchDone) -> None:
        if not self.quiet:
            rate = done.rows / done.seconds if done.seconds > 0 else 0.0
            click.echo(
                f"batch {done.number}: {done.rows} rows archived, verified and deleted"
                f" in {done.seconds:.1f} s ({rate:,.0f} rows/s)",
                err=True,
            )


class RateColumn(ProgressColumn):
    """Rows a second, over the run so far."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} rows/s", style="progress.data.speed")


class BarProgress:
    """A rich progress bar on a terminal: rows done of those eligible at the start,
    rows/s and the time left at that rate."""

    def __init__(self, table: TableRef) -> None:
        self.table = table
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task: TaskID | None = None

    def start(self, eligible: int) -> None:
        self._bar.start()
        self._task = self._bar.add_task(f"{self.table}", total=max(eligible, 1))

    def batch(self, done: BatchDone) -> None:
        if self._task is not None:
            task = self._bar.tasks[0]
            if task.total is not None and task.completed + done.rows > task.total:
                # writers added eligible rows since the start: the total grows with them
                self._bar.update(self._task, total=task.completed + done.rows)
            self._bar.advance(self._task, done.rows)

    def stop(self) -> None:
        self._bar.stop()


@click.command("archive-table")
@click.option("--source", "source_name", help="A source configured as [sources.NAME].")
@click.option("--dsn", help="A PostgreSQL connection string instead of --source.")
@click.option("--table", required=True, help="SCHEMA.TABLE (or TABLE, in public).")
@click.option("--older-than", required=True, type=AgeType(), help="Retention: 90d, 12h, 30m.")
@click.option("--timestamp-column", help="The column rows are aged by (default: the catalog's).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Rows per batch.")
@click.option(
    "--archive-timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds to wait for the archive to hold a batch (default: 60 more than"
    " archive.row_events_segment_age_s).",
)
@click.option(
    "--max-rows-per-second",
    type=click.FloatRange(min=0, min_open=True),
    help="Pace the run to at most this many rows a second (batches no larger).",
)
@click.option(
    "--run-archive",
    is_flag=True,
    help="Start an archive group for the run (headrace consume archive) and stop it after.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    help="Serve Prometheus metrics on this port while the run lasts (0: any free port).",
)
@click.option("--dry-run", is_flag=True, help="Say what would be archived; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def archive_table_command(
    ctx: click.Context,
    source_name: str | None,
    dsn: str | None,
    table: str,
    older_than: timedelta,
    timestamp_column: str | None,
    batch_size: int | None,
    archive_timeout: float | None,
    max_rows_per_second: float | None,
    run_archive: bool,
    metrics_port: int | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Archive a table's rows older than --older-than, verify them, then delete them."""
    settings: Settings = ctx.obj
    if (source_name is None) == (dsn is None):
        raise click.UsageError("give one of --source NAME and --dsn")
    try:
        ref = TableRef.parse(table)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--table") from None
    source: SourceSettings
    if dsn is not None:
        source = SourceSettings.from_dsn(dsn)
        name = dsn_source_name(source)
    else:
        assert source_name is not None  # noqa: S101 - checked above
        source, name = settings.source(source_name), source_name
    request = ArchiveRequest(
        name,
        source,
        ref,
        older_than,
        timestamp_column=timestamp_column,
        batch_size=batch_size,
        dry_run=dry_run,
        archive_timeout_s=archive_timeout,
        max_rows_per_second=max_rows_per_second,
    )
    archive = None
    if run_archive and not dry_run:
        config = ctx.find_root().params.get("config")
        archive = ArchiveProcess(settings.tables.state_dir, config)
    metrics = TableMetrics(name, str(ref), targets_dir=settings.metrics.targets_dir)
    if metrics_port is not None:
        bound = metrics.serve(settings.tables.metrics_host, metrics_port)
        click.echo(f"metrics on http://{settings.tables.metrics_host}:{bound}/metrics", err=True)
    bar = BarProgress(ref) if sys.stderr.isatty() and not as_json and not dry_run else None
    try:
        summary = archive_table(
            settings,
            request,
            bar or EchoProgress(as_json),
            metrics=metrics,
            archive=archive,
        )
    finally:
        if bar is not None:
            bar.stop()
        metrics.close()
    if summary.dry_run is None:  # the run's figures into the operational history
        figures = {k: v for k, v in summary.to_json().items() if isinstance(v, int | float)}
        record_final(settings, "archive-table", figures)
    if as_json:
        click.echo(orjson.dumps(summary.to_json()).decode())
    else:
        click.echo(_line(ref, summary))


def _line(ref: TableRef, summary: Summary) -> str:
    if summary.dry_run is not None:
        d = summary.dry_run
        return (
            f"{ref}: would archive {d.rows} rows in {d.batches} batches"
            f" (oldest {d.oldest}, newest {d.newest}, older than {d.cutoff}); nothing changed"
        )
    return (
        f"{ref}: {summary.rows} rows archived, verified and deleted in {summary.batches}"
        f" batches ({summary.bytes} bytes, {summary.seconds:.1f} s)"
    )
