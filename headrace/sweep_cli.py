"""``headrace sweep SOURCE``: ingest, archive, load, cache, verify, and the proof."""

from __future__ import annotations

import sys
from typing import Any

import click
import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from headrace.history import record_final
from headrace.settings import Settings
from producers.cli import content_options, make_request


@click.command("sweep")
@click.argument("source")
@content_options
@click.option("--run-id", help="The run's id (default: a new one); with --skip-ingest, required.")
@click.option(
    "--resume",
    metavar="RUN_ID",
    help="Continue the sweep of RUN_ID from its first unfinished step.",
)
@click.option("--skip-ingest", is_flag=True, help="Sweep an existing run (--run-id).")
@click.option("--skip-archive", is_flag=True, help="Do not run the archive group.")
@click.option("--skip-load", is_flag=True, help="Do not run the load group.")
@click.option("--skip-cache", is_flag=True, help="Do not run the cache group.")
@click.option("--skip-verify", is_flag=True, help="Do not run the verify group.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def sweep_command(
    settings: Settings,
    /,
    source: str,
    run_id: str | None,
    resume: str | None,
    skip_ingest: bool,
    skip_archive: bool,
    skip_load: bool,
    skip_cache: bool,
    skip_verify: bool,
    as_json: bool,
    **content: Any,
) -> None:
    """Run SOURCE through the whole pipeline and end in `verify run`'s proof: ingest
    (with the ingest options), then the archive, load, cache and verify groups up to
    the end of their topics (run here, or waited for when a deployment of the group
    is running), then the report. Exits 0 only when every step worked and every side
    agrees."""
    from headrace.sweep import sweep  # noqa: PLC0415 - the whole pipeline, when used

    if skip_ingest and resume is None and run_id is None:
        raise click.UsageError("--skip-ingest sweeps an existing run: give its --run-id")
    request = make_request(
        settings,
        source,
        run_id=run_id or resume,
        resume=None,
        dry_run=False,
        **content,
    )
    skip = frozenset(
        name
        for name, skipped in (
            ("ingest", skip_ingest),
            ("archive", skip_archive),
            ("load", skip_load),
            ("cache", skip_cache),
            ("verify", skip_verify),
        )
        if skipped
    )
    quiet = as_json or not sys.stderr.isatty()
    with Progress(
        TextColumn("[bold]sweep[/] {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=quiet,
    ) as bar:
        task = bar.add_task("", total=1)

        def progress(step: str, done: int, total: int) -> None:
            bar.update(task, description=step, completed=done, total=total)

        result = sweep(settings, request, skip=skip, progress=progress)
    figures = {f"{step.name}.seconds": step.seconds for step in result.steps}
    record_final(settings, "sweep", {**figures, "ok": float(result.ok)})
    if as_json:
        click.echo(orjson.dumps(result.as_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        _print(result)
    if not result.ok:
        raise SystemExit(1)


def _print(result: Any) -> None:
    console = Console(width=max(100, Console().width), highlight=False)
    table = Table(title=f"sweep of run {result.run_id}", title_justify="left")
    for name in ("step", "status", "seconds", "detail"):
        table.add_column(name, overflow="fold")
    colours = {"done": "green", "failed": "red", "skipped": "yellow", "done earlier": "green"}
    for step in result.steps:
        status = f"[{colours.get(step.status, 'white')}]{step.status}[/]"
        seconds = f"{step.seconds:.2f}" if step.seconds else ""
        table.add_row(step.name, status, seconds, step.detail)
    console.print(table)
    if result.ok:
        console.print(f"[green]OK[/]: run {result.run_id} arrived whole on every side")
        return
    for hint in result.next_steps():
        console.print(f"next: {hint}")
