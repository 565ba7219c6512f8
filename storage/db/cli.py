"""``headrace db stats|query``: what the load group's database holds (and its
backups: ``storage.db.backup_cli``).

Both commands open the database ``load.backend`` names and bring its schema
up to date first (migrations are idempotent). Neither creates one: a SQLite
file that does not exist yet is one line saying which command makes it.
Content is never printed: a row shows its strategy, its size, how many bytes
are stored inline and its reference (bucket and key, or git coordinates).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
import orjson
from rich.console import Console
from rich.table import Column, Table

from headrace.settings import Settings
from storage.db import Database, DatabaseError, open_database
from storage.db.backup_cli import COMMANDS as BACKUP_COMMANDS


def _open(settings: Settings) -> Database:
    path = settings.load.sqlite_path
    if settings.load.backend == "sqlite" and not path.exists():
        raise DatabaseError(
            f"no load database at {path} yet: `headrace consume load` (or `headrace load"
            " --from-archive`) makes it"
        )
    return open_database(settings, migrate=True)


@click.group()
def db() -> None:
    """The load group's database (load.backend: sqlite or postgres)."""


@db.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def stats_(settings: Settings, as_json: bool) -> None:
    """Files (live, deleted, by content strategy), runs, projects, ledger, size."""
    with _open(settings) as database:
        stats = database.stats()
    data = stats.to_json()
    if as_json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table("what", "value", title=f"load database ({stats.backend})")
    for key, value in data.items():
        if key == "by_strategy":
            for strategy, count in value.items():
                table.add_row(f"  {strategy.lower()}", str(count))
        elif key != "backend":
            table.add_row(key.replace("_", " "), "-" if value is None else str(value))
    Console(highlight=False).print(table)


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    """A row without its content: the stored size stands in for it."""
    content = row.pop("content")
    row["content_bytes"] = len(content) if content is not None else None
    row["event_time"] = datetime.fromtimestamp(row.pop("event_time_ms") / 1000, UTC).isoformat(
        timespec="milliseconds"
    )
    row["updated_at"] = row["updated_at"].isoformat(timespec="milliseconds")
    return row


@db.command("query")
@click.option("--project", required=True, help="The project whose files to list.")
@click.option(
    "--path",
    "path_glob",
    metavar="GLOB",
    help="Only paths matching GLOB (fnmatch: case-sensitive, '*' also crosses '/').",
)
@click.option("--deleted", "include_deleted", is_flag=True, help="Include deleted files.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many files.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def query_(
    settings: Settings,
    project: str,
    path_glob: str | None,
    include_deleted: bool,
    limit: int | None,
    as_json: bool,
) -> None:
    """List a project's files in path order. GLOB is matched in Python with fnmatch;
    only its literal prefix (before the first wildcard) goes into the SQL."""
    table = Table(
        Column("path", no_wrap=True),
        Column("strategy", no_wrap=True),
        Column("size", justify="right", no_wrap=True),
        Column("inline", justify="right", no_wrap=True),
        Column("sha256", no_wrap=True),
        Column("event time", no_wrap=True),
        Column("reference", overflow="fold"),
    )
    with _open(settings) as database:
        for found in database.query(project, path_glob, include_deleted, limit):
            row = _shown(found)
            if as_json:
                click.echo(orjson.dumps(row))
                continue
            table.add_row(
                row["path"] + (" (deleted)" if row["deleted"] else ""),
                (row["content_strategy"] or "-").lower(),
                str(row["size"]),
                "-" if row["content_bytes"] is None else str(row["content_bytes"]),
                row["sha256"][:12] or "-",
                row["event_time"][:19],
                row["content_ref"] or "-",
            )
    if not as_json:
        Console(highlight=False).print(table)


for _command in BACKUP_COMMANDS:  # backup, backups, restore, prune-backups
    db.add_command(_command)
