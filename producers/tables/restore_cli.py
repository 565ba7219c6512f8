"""``headrace restore-table``: options in, :func:`restore_table` called, one line out.

Exit codes: 0 every archived row is in the table (restored now or already there);
3 done, but some rows differ from the table's (not overwritten) or some archived
events failed their checksum (not restored): look at the summary; 1 an error, nothing
written; 2 bad arguments.
"""

from __future__ import annotations

from datetime import UTC, datetime

import click
import orjson

from headrace.settings import Settings, SourceSettings
from producers.tables.catalog import TableRef, dsn_source_name
from producers.tables.restore import RestoreRequest, RestoreSummary, restore_table

UNCLEAN = 3


def parse_time(text: str) -> datetime:
    """An ISO date or timestamp (``2024-01-31``, ``2024-01-31T12:00:00+02:00``); one without
    an offset is UTC. ValueError else."""
    try:
        found = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO date or timestamp") from None
    return found if found.tzinfo is not None else found.replace(tzinfo=UTC)


def _time(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    try:
        return None if value is None else parse_time(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _source(settings: Settings, name: str | None, dsn: str | None) -> tuple[str, SourceSettings]:
    """(the name rows were archived under, the database): archive-table names a
    ``--dsn`` source ``host:port/database`` (``dsn_source_name``)."""
    if dsn is not None:
        source = SourceSettings.from_dsn(dsn)
        return dsn_source_name(source), source
    return str(name), settings.source(str(name))


def _table(text: str, hint: str) -> TableRef:
    try:
        return TableRef.parse(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None


@click.command("restore-table")
@click.option("--source", "source_name", help="A source configured as [sources.NAME].")
@click.option("--dsn", help="A PostgreSQL connection string instead of --source.")
@click.option("--table", required=True, help="SCHEMA.TABLE as archived (or TABLE, in public).")
@click.option(
    "--since", metavar="TIME", callback=_time, help="Only rows whose timestamp is >= this."
)
@click.option(
    "--until", metavar="TIME", callback=_time, help="Only rows whose timestamp is < this."
)
@click.option("--into", help="Restore into [SCHEMA.]TABLE instead (the same columns by name).")
@click.option(
    "--timestamp-column", help="The column --since/--until compare (default: the catalog's)."
)
@click.option(
    "--archived-as",
    metavar="NAME",
    help="The source name the rows were archived under, if not this one's (a source"
    " renamed, or rows restored into another database).",
)
@click.option("--dry-run", is_flag=True, help="Say what would be restored; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def restore_table_command(
    settings: Settings,
    source_name: str | None,
    dsn: str | None,
    table: str,
    since: datetime | None,
    until: datetime | None,
    into: str | None,
    timestamp_column: str | None,
    archived_as: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Write a table's archived rows back; rows whose key is present are left as they are."""
    if (source_name is None) == (dsn is None):
        raise click.UsageError("give one of --source NAME and --dsn")
    if since is not None and until is not None and since >= until:
        raise click.UsageError("--since must be before --until")
    ref = _table(table, "--table")
    target = None
    if into is not None:  # [SCHEMA.]TABLE: the archived table's schema by default
        target = _table(into if "." in into else f"{ref.schema}.{into}", "--into")
    name, source = _source(settings, source_name, dsn)
    request = RestoreRequest(
        archived_as or name,
        source,
        ref,
        into=target,
        since=None if since is None else since.isoformat(),
        until=None if until is None else until.isoformat(),
        timestamp_column=timestamp_column,
        dry_run=dry_run,
    )
    summary = restore_table(settings, request)
    click.echo(orjson.dumps(summary.to_json()).decode() if as_json else line(summary))
    if not summary.clean:
        raise SystemExit(UNCLEAN)


def line(summary: RestoreSummary) -> str:
    """The summary in one line, for people."""
    a, w = summary.archived, summary.written
    into = "" if summary.target == summary.table else f" into {summary.target}"
    if not a.events:
        return f"{summary.table}: no archived rows of this source's table; nothing restored"
    verb = "would be restored" if summary.dry_run else "restored"
    text = f"{summary.table}{into}: {w.inserted} rows {verb}, {w.present} already present"
    if w.differ:
        keys = "; ".join(",".join(str(v) for v in k) for k in w.differ_keys)
        more = ", ..." if w.differ > len(w.differ_keys) else ""
        text += f", {w.differ} differ from the table's (not overwritten; keys {keys}{more})"
    if w.outside:
        text += f", {w.outside} outside --since/--until"
    text += f" (of {w.rows} archived keys from {a.events} events"
    if a.versions:
        text += f"; {a.versions} keys had several versions, the latest restored"
    if a.bad_checksums:
        shown = ", ".join(a.first_bad)
        text += f"; {a.bad_checksums} events failed their checksum and were not restored ({shown})"
    text += f"; {summary.seconds:.1f} s)"
    return text + ("; nothing changed" if summary.dry_run else "")
