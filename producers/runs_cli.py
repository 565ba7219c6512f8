"""``headrace runs``: the runs this producer recorded, and their cursors."""

from __future__ import annotations

import click
import orjson
from rich.console import Console
from rich.table import Table

from headrace.settings import Settings
from producers.runs import RunStateError, RunStore, check_run_id


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


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
@click.pass_obj
def show_run(settings: Settings, run_id: str, as_json: bool) -> None:
    """One run: its record and, while its journal is kept (ingest.checkpoint_max_age_days
    after it finished), every file it skipped, with the reason."""
    store = RunStore(settings.ingest.state_dir)
    record = store.get(check_run_id(run_id))
    if record is None:
        raise RunStateError(f"no run {run_id} is recorded in {settings.ingest.state_dir}")
    checkpoint = store.journal(run_id).replay()
    journal_kept = store.journal(run_id).path.exists()
    skipped = [
        {"path": path, "reason": reason.lower(), "detail": detail}
        for path, (reason, detail) in sorted(checkpoint.skipped.items())
    ]
    if as_json:
        data = {
            **record.as_json(),
            "cursor": record.cursor,
            "committed_files": len(checkpoint.files) if journal_kept else None,
            "skipped": skipped if journal_kept else None,
        }
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"run {record.run_id}: {record.project} from {record.source}, {record.status.value}")
    click.echo(f"  started {record.started_at}, attempts {record.attempts}, cursor {record.cursor}")
    if record.completed_at:
        click.echo(f"  completed {record.completed_at}, digest {record.digest}")
    if not journal_kept:
        click.echo("  its journal was pruned: the skipped files are no longer listed")
        return
    click.echo(f"  {len(checkpoint.files)} files committed, {len(skipped)} skipped")
    for entry in skipped:
        click.echo(
            f"    {entry['path']}: {entry['reason']}"
            + (f" ({entry['detail']})" if entry["detail"] else "")
        )
