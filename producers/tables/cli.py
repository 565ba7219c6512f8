"""``headrace archive-table``: options in, :func:`archive_table` called, one line out."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import click
import orjson

from headrace.settings import Settings, SourceSettings
from producers.tables.archiver import ArchiveRequest, BatchDone, Summary, archive_table
from producers.tables.catalog import TableRef

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
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def batch(self, done: BatchDone) -> None:
        if not self.quiet:
            rate = done.rows / done.seconds if done.seconds > 0 else 0.0
            click.echo(
                f"batch {done.number}: {done.rows} rows archived, verified and deleted"
                f" in {done.seconds:.1f} s ({rate:,.0f} rows/s)",
                err=True,
            )


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
    help="Seconds to wait for the archive to hold a batch (default: 120, or longer than"
    " archive.max_segment_age_s).",
)
@click.option("--dry-run", is_flag=True, help="Say what would be archived; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def archive_table_command(
    settings: Settings,
    source_name: str | None,
    dsn: str | None,
    table: str,
    older_than: timedelta,
    timestamp_column: str | None,
    batch_size: int | None,
    archive_timeout: float | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Archive a table's rows older than --older-than, verify them, then delete them."""
    if (source_name is None) == (dsn is None):
        raise click.UsageError("give one of --source NAME and --dsn")
    try:
        ref = TableRef.parse(table)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--table") from None
    source: SourceSettings
    if dsn is not None:
        source, name = SourceSettings.from_dsn(dsn), "dsn"
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
    )
    summary = archive_table(settings, request, EchoProgress(as_json))
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
