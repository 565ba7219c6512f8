"""``headrace verify run``: one run checked against every place its files went."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import click
import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from consumers.report import SHOWN, console, print_findings
from consumers.verify.report import SIDES, STRATEGIES, RunReport

if TYPE_CHECKING:
    from consumers.verify.repair import RepairPlan, RepairResult
from headrace.settings import Settings

# verify_run's steps, in the order it reports them (the bar's total)
STEPS = ("reading the archive", "reading Kafka", "reading the database")


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
@click.option(
    "--repair",
    "--fix-missing",
    "repair",
    is_flag=True,
    help="Fix what can be fixed (after a backup of the rows it changes), then verify again.",
)
@click.option("--dry-run", is_flag=True, help="With --repair: show what it would do, do nothing.")
@click.option("--yes", is_flag=True, help="With --repair: do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def run_(
    settings: Settings,
    run_id: str | None,
    project: str | None,
    latest: bool,
    against_source: bool,
    repair: bool,
    dry_run: bool,
    yes: bool,
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
    status_line = Console(stderr=True)
    show = not as_json and sys.stderr.isatty()
    steps = [*STEPS, *(("hashing the source",) if against_source else ()), "checking"]
    bar = Progress(
        TextColumn(f"verify run {run_id}: {{task.description}}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeElapsedColumn(),
        console=status_line,
        transient=True,
    )
    with bar if show else nullcontext():
        task = bar.add_task("starting", total=len(steps))

        def progress(step: str) -> None:
            done = steps.index(step) if step in steps else 0
            bar.update(task, description=step, completed=done)

        report = verify_run(settings, run_id, against_source=against_source, progress=progress)
    if dry_run and not repair:
        raise click.UsageError("--dry-run goes with --repair")
    if not repair or report.ok:
        _show(report, as_json)
        if not report.ok:
            raise SystemExit(1)
        return
    from consumers.archive.rebuild import find_damage  # noqa: PLC0415
    from consumers.verify.repair import apply_repair, plan_repair  # noqa: PLC0415
    from producers.runs import RunStore  # noqa: PLC0415

    with status_line.status("checking the archive's segments") if show else nullcontext():
        damage = find_damage(settings)
    plan = plan_repair(report, damage, RunStore(settings.ingest.state_dir).get(run_id))
    if as_json and (dry_run or plan.empty):
        data = {**report.as_json(), "repair": plan.as_json()}
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        raise SystemExit(1)
    if not as_json:
        print_report(report)
        print_plan(plan)
    if dry_run or plan.empty:
        raise SystemExit(1)
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError(
                "--repair changes the database: confirm on a terminal or give --yes"
            )
        click.confirm(f"{_actions(plan)}?", abort=True)
    source = None if report.source is None else (report.source, report.commit)
    result = apply_repair(settings, plan, source=source)
    after = verify_run(settings, run_id, against_source=against_source)
    if as_json:
        data = {
            **after.as_json(),
            "before": report.as_json(),
            "repair": {**plan.as_json(), **result.as_json()},
        }
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        print_result(run_id, plan, result)
        click.echo("verified again:")
        print_report(after)
    if not after.ok:
        raise SystemExit(1)


@verify.command("restore")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def restore_(settings: Settings, directory: Path, yes: bool) -> None:
    """Put back the rows a repair replaced (DIRECTORY: the one the repair printed)."""
    from consumers.verify.repair import restore  # noqa: PLC0415

    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError(
                "restore changes the database: confirm on a terminal or give --yes"
            )
        click.confirm(f"put back the rows backed up in {directory}?", abort=True)
    count = restore(settings, directory)
    click.echo(f"restored {count} rows from {directory / 'backup.jsonl'}")


def _show(report: RunReport, as_json: bool) -> None:
    if as_json:
        click.echo(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        print_report(report)


def _actions(plan: RepairPlan) -> str:
    """``re-archive 1 segment from Kafka and reload 2 rows from the archive``."""
    done = []
    if plan.rearchive:
        done.append(f"re-archive {_n(len(plan.rearchive), 'segment')} from Kafka")
    if plan.reload:
        done.append(f"reload {_n(len(plan.reload), 'row')} from the archive")
    if plan.from_source:
        done.append(f"upload and verify {_n(len(plan.from_source), 'file')} from the source")
    if plan.republish:
        done.append(f"publish {_n(len(plan.republish), 'file')} again from the source")
    if plan.resume is not None:
        done.append(f"resume the run from {plan.resume.source}")
    return ", ".join(done[:-1]) + (" and " if len(done) > 1 else "") + done[-1]


def _n(count: int, what: str) -> str:
    return f"{count} {what}" + ("s" if count != 1 else "")


def print_result(run_id: str, plan: RepairPlan, result: RepairResult) -> None:
    """What a repair did, a line a step, on a terminal."""
    where = result.directory
    if result.rearchived:
        aside = sum(r.set_aside is not None for r in result.rearchived)
        click.echo(
            f"repaired: {_n(len(result.rearchived), 'segment')} rebuilt from Kafka, byte for"
            " byte as listed"
            + (f"; the damaged files they replace are in {where / 'archive'}" if aside else "")
        )
    for item in result.not_rearchived:
        click.echo(f"not rebuilt: {item.where}: {item.why}")
    if plan.reload:
        click.echo(
            f"repaired: {result.written} row(s) reloaded from the archive; the rows they"
            f" replaced are in {where / 'backup.jsonl'} (restore with `headrace verify"
            f" restore {where}`)"
        )
    if result.source is not None:
        fixed = result.source
        if fixed.resupplied:
            click.echo(
                f"repaired: {len(fixed.resupplied)} object(s) uploaded again from the"
                f" source; the objects they replaced are in {where / 'objects'}"
            )
        for refused in fixed.refused:
            click.echo(f"not from the source: {refused.path}: {refused.why}")
        statuses = ", ".join(f"{v.path} {v.status.value}" for v in fixed.verified[:10])
        click.echo(f"verified again: {statuses}")
    if result.republished is not None:
        again = result.republished["paths"]
        click.echo(
            f"repaired: {_n(len(again), 'file')} published again from the source, then the"
            " archive, load and verify groups caught up"
            if again
            else "publish again: the rebuilt segments hold every file"
        )
    if result.resumed is not None:
        summary = result.resumed["ingest"]
        click.echo(
            f"repaired: run {run_id} resumed ({summary['counts']['files']} file events"
            " in all), then the archive, load and verify groups caught up"
        )
    click.echo(f"what changed: {where / 'repair.jsonl'}")


def print_plan(plan: RepairPlan) -> None:
    out = console()
    if plan.empty:
        out.print("[bold]repair[/]: nothing this repair can fix")
    else:
        out.print(f"[bold]repair[/]: {_actions(plan)}")
    for damage in plan.rearchive[:SHOWN]:
        records = _n(damage.segment.records, "record")
        out.print(f"  rebuild {damage.where} ({records}): {damage.reason}")
    for verb, paths in (
        ("reload", plan.reload),
        ("from the source", plan.from_source),
        ("publish again", plan.republish),
    ):
        if paths:
            shown = ", ".join(paths[:10]) + (" ..." if len(paths) > 10 else "")
            out.print(f"  {verb}: {shown}")
    # Counts and digests follow from the files: listed in --json, not on the terminal.
    files = [item for item in plan.cannot if item.discrepancy.path is not None]
    for item in files[:SHOWN]:
        d = item.discrepancy
        out.print(f"  cannot repair {d.kind.value} {d.path}: {item.why}")


def print_report(report: RunReport) -> None:
    out = console()
    where = f"{report.project} from {report.source}" if report.project else "project unknown"
    at = f" at {report.commit[:12]}" if report.commit else ""
    out.print(f"[bold]run {report.run_id}[/]: {where}{at}")
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
    out.print(table)
    if report.skipped:
        shown = ", ".join(f"{n} {reason}" for reason, n in sorted(report.skipped.items()))
        out.print(f"skipped by the run: {shown}")
    print_findings(out, report, f"every side agrees with run {report.run_id}")
