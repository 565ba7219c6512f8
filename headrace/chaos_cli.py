"""``headrace chaos``: the thin command over :func:`headrace.chaos.run_chaos`."""

from __future__ import annotations

from pathlib import Path

import click
import orjson
from rich.console import Console
from rich.table import Table

from headrace.chaos import ChaosOptions, ChaosResult, run_chaos
from headrace.settings import Settings


@click.command("chaos")
@click.option(
    "--files",
    type=click.IntRange(min=20),
    default=100_000,
    show_default=True,
    help="Files in the workload (a tenth of them in a git repository).",
)
@click.option(
    "--seed", type=click.IntRange(min=0), help="The schedule's seed (default: a new one, printed)."
)
@click.option(
    "--kills",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="SIGKILLs of each group's process (one by its failpoint).",
)
@click.option(
    "--outage",
    "outage_s",
    type=click.FloatRange(min=0),
    default=8.0,
    show_default=True,
    help="Seconds MinIO and PostgreSQL stay unreachable.",
)
@click.option(
    "--work",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the workload, logs, archive and caches (default: temporary, removed).",
)
@click.option("--keep", is_flag=True, help="Keep the temporary work directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.pass_context
def chaos(
    ctx: click.Context,
    files: int,
    seed: int | None,
    kills: int,
    outage_s: float,
    work: Path | None,
    keep: bool,
    as_json: bool,
) -> None:
    """Run the pipeline under a seeded schedule of faults and prove nothing was lost.

    Against the local stack, on topics, groups and directories of its own: ingests a
    workload (inline, object storage and git references; a second, incremental run
    with changes, deletes and renames) while the archive, load, cache and verify
    groups run under a supervisor; kills each group's process, kills the ingest
    mid-transaction, restarts Kafka, stops MinIO and PostgreSQL for a window and runs
    two processes of one group. Then every group catches up and `verify run` judges
    every run. Exits 0 only with no duplicate, nothing missing and no dead letter but
    the ones injected on purpose. It stops and starts the stack's processes: run it
    when nothing else uses the stack.
    """
    settings: Settings = ctx.obj
    config = ctx.find_root().params.get("config")
    err = Console(stderr=True, highlight=False)
    options = ChaosOptions(
        files=files, seed=seed, kills_per_group=kills, outage_s=outage_s, work=work, keep=keep
    )
    result = run_chaos(
        settings, options, config_file=config, progress=lambda line: err.print(line, markup=False)
    )
    if as_json:
        click.echo(orjson.dumps(result.as_json()).decode())
    else:
        _print(result)
    if not result.ok:
        raise click.exceptions.Exit(1)


def _print(result: ChaosResult) -> None:
    out = Console(highlight=False)
    faults = Table(
        "at",
        "fault",
        "target",
        "outage",
        "recovered after",
        "lag then",
        "detail",
        title=f"chaos, seed {result.seed}: {result.files} files",
    )
    for f in result.faults:
        faults.add_row(
            f"{f.at_s:.1f} s",
            f.kind,
            f.target,
            "" if f.outage_s is None else f"{f.outage_s:.1f} s",
            "[red]never[/]" if f.recover_s is None else f"{f.recover_s:.1f} s",
            "" if f.lag is None else str(f.lag),
            f.detail,
        )
    out.print(faults)
    runs = Table("run", "files", "verify run", title="the runs")
    for r in result.runs:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(r.by_kind().items()))
        runs.add_row(
            r.run_id,
            str(r.counts.get("manifest", {}).get("files", 0)),
            "[green]ok[/]" if r.ok else f"[red]{kinds}[/]",
        )
    out.print(runs)
    summary = Table("", "", title="summary")
    rows = {
        "events": ", ".join(f"{k} {v}" for k, v in result.events.items()),
        "faults by kind": ", ".join(f"{k} {v}" for k, v in result.faults_by_kind().items()),
        "restarts": ", ".join(f"{k} {v}" for k, v in sorted(result.restarts.items())),
        "retries": ", ".join(f"{k} {v}" for k, v in sorted(result.retries.items())),
        "dead letters": ", ".join(f"{k} {v}" for k, v in result.dead_letters.items()) or "none",
        "dead letters injected": ", ".join(
            f"{k} {v}" for k, v in result.dead_letters_expected.items()
        ),
        "dead letters repeated": str(result.dead_letters_repeated),
        "duplicates": str(result.duplicates),
        "missing": str(result.missing),
        "catch-up after the faults": ""
        if result.catch_up_s is None
        else f"{result.catch_up_s:.1f} s",
        "took": f"{result.seconds:.0f} s",
    }
    for key, value in rows.items():
        summary.add_row(key, value)
    out.print(summary)
    for line in result.unexpected_dead_letters:
        out.print(f"unexpected dead letter: {line}", markup=False)
    for line in result.problems:
        out.print(f"problem: {line}", markup=False)
    verdict = "OK" if result.ok else "FAILED"
    replay = f"headrace chaos --files {result.files} --seed {result.seed}"
    out.print(f"{verdict}: seed {result.seed} (replay: {replay})", markup=False)
