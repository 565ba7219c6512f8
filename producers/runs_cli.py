"""``headrace runs``: the runs this producer recorded, and their cursors."""

from __future__ import annotations

import click
import orjson
from rich.console import Console
from rich.table import Table

from headrace.settings import Settings
from producers.runs import RunStore


@click.group()
def runs() -> None:
    """The ingest runs recorded on this machine (ingest.state_dir)."""


@runs.command("list")
@click.option("--project", help="Only this project's runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@click.pass_obj
def list_runs(settings: Settings, project: str | None, as_json: bool) -> None:
    """Every recorded run, oldest first: its status, counts and cursor (the commit or
    the manifest an incremental run after it starts from)."""
    records = RunStore(settings.ingest.state_dir).records(project)
    if as_json:
        rows = [{**r.as_json(), "cursor": r.cursor} for r in records]
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    if not records:
        click.echo(f"no runs recorded in {settings.ingest.state_dir}")
        return
    table = Table("run", "project", "source", "status", "started", "files", "cursor")
    for r in records:
        files = str((r.counts or {}).get("files", "-"))
        table.add_row(r.run_id, r.project, r.source, r.status.value, r.started_at, files, r.cursor)
    Console(width=200).print(table)
