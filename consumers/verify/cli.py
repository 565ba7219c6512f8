"""``headrace verify run``: one run checked against every place its files went."""

from __future__ import annotations

import sys

import click
import orjson
from rich.console import Console
from rich.table import Table

from consumers.verify.report import SIDES, STRATEGIES, RunReport
from headrace.settings import Settings

SHOWN = 50  # discrepancies listed on a terminal; --json has them all


@click.group()
def verify() -> None:
    """Prove that a run arrived whole: source, Kafka, archive, database, verifications."""


@verify.command("run")
@click.argument("run_id", required=False)
@click.option("--project", help="With --latest: the project whose newest run is checked.")
@click.option("--latest", is_flag=True, help="Check the newest run of --project.")
@click.option(
    "--against-source",
    is_flag=True,
    help="Also hash the run's source (directory or git commit) and compare.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def run_(
    settings: Settings,
    run_id: str | None,
    project: str | None,
    latest: bool,
    against_source: bool,
    as_json: bool,
) -> None:
    """Check RUN_ID: its RunCompleted account (counts per strategy, skips by reason,
    digest) against the archive, the database, the verifications and, with
    --against-source, the source. Exits 0 only when everything agrees."""
    from consumers.verify.reconcile import latest_run, verify_run  # noqa: PLC0415 - heavy

    if latest == (run_id is not None):
        raise click.UsageError("give a RUN_ID, or --project P --latest")
    if latest and project is None:
        raise click.UsageError("--latest needs --project")
    if run_id is None:
        assert project is not None  # noqa: S101 - checked above
        run_id = latest_run(settings, project)
    console = Console(stderr=True)
    show = not as_json and sys.stderr.isatty()
    with console.status("verifying", spinner="dots") if show else _nothing() as status:

        def progress(step: str) -> None:
            if status is not None:
                status.update(f"verify run {run_id}: {step}")

        report = verify_run(settings, run_id, against_source=against_source, progress=progress)
    if as_json:
        click.echo(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        print_report(report)
    if not report.ok:
        raise SystemExit(1)


class _nothing:  # noqa: N801 - a context manager that shows nothing
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        return None


def print_report(report: RunReport) -> None:
    console = Console(width=max(100, Console().width), highlight=False)
    where = f"{report.project} from {report.source}" if report.project else "project unknown"
    at = f" at {report.commit[:12]}" if report.commit else ""
    console.print(f"[bold]run {report.run_id}[/]: {where}{at}")
    sides = [s for s in SIDES if s in report.counts]
    table = Table(title="files by strategy, per side", title_justify="left")
    table.add_column("")
    for side in sides:
        table.add_column(side, justify="right")
    manifest = report.counts.get("manifest", {})
    for key in (*STRATEGIES, "deleted", "files"):
        cells = []
        for side in sides:
            value = report.counts[side][key]
            agrees = not manifest or manifest[key] == value or side == "manifest"
            cells.append(f"{value:,}" if agrees else f"[red]{value:,}[/]")
        table.add_row(key, *cells)
    console.print(table)
    if report.skipped:
        shown = ", ".join(f"{n} {reason}" for reason, n in sorted(report.skipped.items()))
        console.print(f"skipped by the run: {shown}")
    for note in report.notes:
        console.print(f"[yellow]note[/]: {note}")
    if report.ok:
        console.print(f"[green]OK[/]: every side agrees with run {report.run_id}")
        return
    problems = Table(title="discrepancies", title_justify="left")
    for name in ("kind", "side", "path", "detail"):
        problems.add_column(name, overflow="fold")
    for d in report.discrepancies[:SHOWN]:
        problems.add_row(d.kind.value, d.side, d.path or "", d.detail)
    console.print(problems)
    more = len(report.discrepancies) - SHOWN
    if more > 0:
        console.print(f"... and {more} more (--json lists them all)")
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(report.by_kind().items()))
    console.print(f"[red]FAILED[/]: {len(report.discrepancies)} discrepancies ({kinds})")
