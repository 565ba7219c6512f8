"""``headrace ingest SOURCE``: publish one FileEvent per file of a repository."""

from __future__ import annotations

import logging
import re
import sys
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import click
import orjson
from click.core import ParameterSource
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from headrace.errors import HeadraceError
from headrace.settings import Settings
from producers.command import IngestRequest, run_ingest
from producers.ingest import CONTENT_OPTIONS, Ingest, IngestOptions, StrategyChoice, Summary
from producers.pool import cores
from producers.runs import RunStateError, check_run_id

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
log = logging.getLogger(__name__)


class ByteSize(click.ParamType):  # type: ignore[type-arg]
    """``100KiB``, ``5MiB``, ``1GB`` or a plain number of bytes."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
        if match is None or match.group(2).lower() not in _UNITS:
            self.fail(f"{value!r} is not a size (e.g. 100KiB, 5MiB, 1GB)", param, ctx)
        return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


SIZE = ByteSize()


_CONTENT_OPTIONS = [
    click.option("--ref", help="Branch, tag or commit to ingest (git sources; default HEAD)."),
    click.option("--project", help="Project name (default: derived from the source)."),
    click.option(
        "--content-strategy",
        "strategy",
        default=StrategyChoice.AUTO.value,
        type=click.Choice([c.value for c in StrategyChoice]),
        show_default=True,
        help="How content travels.",
    ),
    click.option(
        "--inline-limit",
        type=SIZE,
        default="100KiB",
        show_default=True,
        help="Largest file sent inline.",
    ),
    click.option(
        "--max-file-size",
        type=SIZE,
        default="1GiB",
        show_default=True,
        help="Larger files are skipped.",
    ),
    click.option(
        "--max-batch-bytes",
        type=SIZE,
        default="5MiB",
        show_default=True,
        help="Largest producer batch.",
    ),
    click.option(
        "--exclude",
        multiple=True,
        metavar="PATTERN",
        help="gitignore-style pattern to skip (repeatable).",
    ),
    click.option(
        "--prefer-git-reference",
        is_flag=True,
        help="With auto and a git URL: send git references, not content.",
    ),
    click.option("--since", metavar="REF", help="Only files changed since REF; deletes as events."),
    click.option(
        "--incremental",
        is_flag=True,
        help="Only what changed since the last completed run of this project and source.",
    ),
    click.option(
        "--transaction-files",
        type=click.IntRange(min=1),
        default=1000,
        show_default=True,
        metavar="N",
        help="Files per Kafka transaction (a batch).",
    ),
    click.option(
        "--transaction-bytes",
        type=SIZE,
        default="64MiB",
        show_default=True,
        help="Event bytes per Kafka transaction.",
    ),
    click.option(
        "--workers",
        type=click.IntRange(min=0, max=256),
        default=None,
        metavar="N",
        help="Processes preparing inline files (read, sha256, Avro); 1: none, 0: one per"
        " core if a core is idle [default: ingest.workers, else 0].",
    ),
    click.option(
        "--presign-expiry",
        type=click.FloatRange(min=1 / 3600, max=7 * 24),  # S3 signs for 1 second to 7 days
        default=24.0,
        show_default=True,
        metavar="HOURS",
        help="Lifetime of presigned URLs.",
    ),
    click.option(
        "--max-skips-listed",
        type=click.IntRange(min=0),
        default=1000,
        show_default=True,
        metavar="N",
        help="Skipped paths per reason listed in the RunCompleted event, 256KiB of names"
        " at most (all are counted).",
    ),
]


def content_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """What to read and how it travels: the options ``ingest`` and ``sweep`` share."""
    for option in reversed(_CONTENT_OPTIONS):
        command = option(command)
    return command


def make_request(
    settings: Settings,
    source: str,
    *,
    run_id: str | None,
    resume: str | None,
    dry_run: bool,
    ref: str | None,
    project: str | None,
    strategy: str,
    inline_limit: int,
    max_file_size: int,
    max_batch_bytes: int,
    exclude: tuple[str, ...],
    prefer_git_reference: bool,
    since: str | None,
    incremental: bool,
    transaction_files: int,
    transaction_bytes: int,
    presign_expiry: float,
    max_skips_listed: int,
    workers: int | None,
) -> IngestRequest:
    """The options, checked against each other (one line naming the option if not)."""
    _check_limits(inline_limit, max_batch_bytes, presign_expiry)
    context = click.get_current_context()
    given = frozenset(
        name
        for name in CONTENT_OPTIONS
        if context.get_parameter_source(name) is not ParameterSource.DEFAULT
    )
    return IngestRequest(
        source=source,
        ref=ref,
        project=project,
        since=since,
        run_id=_check_run(run_id, resume, since, incremental, dry_run),
        resume=resume is not None,
        incremental=incremental,
        max_batch_bytes=max_batch_bytes,
        options=IngestOptions(
            strategy=StrategyChoice(strategy),
            inline_limit=inline_limit,
            max_file_size=max_file_size,
            exclude=exclude,
            prefer_git_reference=prefer_git_reference,
            presign_expiry=timedelta(hours=presign_expiry),
            max_skips_listed=max_skips_listed,
            dry_run=dry_run,
            transaction_files=transaction_files,
            transaction_bytes=transaction_bytes,
            transaction_max_s=settings.ingest.transaction_max_s,
            workers=(settings.ingest.workers if workers is None else workers) or cores(),
            # one per core by default, started only if a core is idle; N given: N
            workers_when_idle=not (settings.ingest.workers if workers is None else workers),
            given=given,
        ),
    )


@click.command()
@click.argument("source")
@content_options
@click.option(
    "--run-id",
    help="Run id (default: a new one). The id of an unfinished run resumes it; of a"
    " completed run, does nothing.",
)
@click.option(
    "--resume",
    "resume",
    metavar="RUN_ID",
    help="Resume this interrupted run: its committed files are not published again.",
)
@click.option("--dry-run", is_flag=True, help="Decide everything, publish and upload nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@click.pass_obj
def ingest(
    settings: Settings,
    /,
    source: str,
    run_id: str | None,
    resume: str | None,
    dry_run: bool,
    as_json: bool,
    **content: Any,
) -> None:
    """Publish one FileEvent per file of SOURCE: a directory, a git repository or a git URL.

    Content travels inline (small files), as an object-storage URL (larger
    files, uploaded once by sha256) or as a git reference. RunStarted and
    RunCompleted events bracket the run. Exits 1, naming the files, if any
    file could not be published.
    """
    request = make_request(
        settings, source, run_id=run_id, resume=resume, dry_run=dry_run, **content
    )
    summary = run_ingest(settings, request, lambda job: _run_with_progress(job, quiet=as_json))
    if as_json:
        click.echo(orjson.dumps(summary.as_json(), option=orjson.OPT_INDENT_2).decode())
    elif summary.already_completed:
        click.echo(
            f"run {summary.run_id} already completed ({summary.counts.files} file events,"
            f" digest {summary.digest}): nothing to publish"
        )
    else:
        _print_summary(summary)
    if not summary.ok:
        shown = "; ".join(f"{p}: {why}" for p, why in list(summary.failed.items())[:5])
        raise HeadraceError(
            f"{len(summary.failed)} files were not published: {shown}"
            + ("" if dry_run else f"; resume with --resume {summary.run_id}")
        )
    if summary.unavailable:
        shown = ", ".join(summary.unavailable[:5])
        raise HeadraceError(
            f"run incomplete: {len(summary.unavailable)} files skipped because the object"
            f" store was unavailable ({shown}); run it again with --resume {summary.run_id}"
        )


def _check_run(
    run_id: str | None, resume: str | None, since: str | None, incremental: bool, dry_run: bool
) -> str:
    if resume is not None and run_id is not None and resume != run_id:
        raise click.BadParameter(
            f"--resume {resume} and --run-id {run_id} name two runs", param_hint="--resume"
        )
    if resume is not None and dry_run:
        raise click.BadParameter("a dry run has no state to resume", param_hint="--resume")
    if incremental and since is not None:
        raise click.BadParameter(
            "--since REF and --incremental both choose the base: give one",
            param_hint="--incremental",
        )
    chosen = resume or run_id or uuid.uuid4().hex
    try:
        return check_run_id(chosen)
    except RunStateError as exc:
        raise click.BadParameter(str(exc), param_hint="--run-id") from None


def _check_limits(inline_limit: int, max_batch_bytes: int, presign_expiry: float) -> None:
    """Options that pass their own type but not together: one line naming them."""
    if presign_expiry != presign_expiry:  # nan passes every range
        raise click.BadParameter("'nan' is not a number of hours", param_hint="--presign-expiry")
    if max_batch_bytes < 1024:
        raise click.BadParameter(
            f"{max_batch_bytes} bytes is below the smallest batch of 1KiB",
            param_hint="--max-batch-bytes",
        )
    if inline_limit > max_batch_bytes:
        raise click.BadParameter(
            f"{inline_limit} bytes is more than --max-batch-bytes ({max_batch_bytes}):"
            " an inline file must fit in one producer batch",
            param_hint="--inline-limit",
        )


def _run_with_progress(job: Ingest, *, quiet: bool) -> Summary:
    """A progress bar on a terminal (files, bytes, rate, ETA); nothing otherwise."""
    if quiet or not sys.stderr.isatty():
        return job.run()
    # A first pass over the candidates (no content is read) gives the totals for the ETA.
    files = total = 0
    for candidate in job.source.candidates():
        files, total = files + 1, total + candidate.size
    with Progress(
        TextColumn("[bold]ingest"),
        BarColumn(),
        TextColumn("{task.fields[files]:,}/" + f"{files:,} files"),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("ingest", total=total, files=0)

        def advance(done: int, size: int) -> None:
            if done % 64 == 0:  # updating the bar costs more than publishing a small file
                bar.update(task, completed=size, files=done)

        job.progress = advance
        summary = job.run()
        bar.update(task, completed=summary.counts.bytes, files=summary.counts.files)
        return summary


def _print_summary(summary: Summary) -> None:
    c = summary.counts
    verb = "would publish" if summary.dry_run else "published"
    click.echo(
        f"run {summary.run_id}: {summary.project} from {summary.source}"
        + (f" at {summary.commit[:12]}" if summary.commit else "")
        + (f", attempt {summary.attempt}" if summary.attempt > 1 else "")
    )
    if summary.resumed:
        click.echo(f"  resumed: {summary.resumed} files committed by earlier attempts")
    if summary.base_run is not None:
        click.echo(f"  incremental from run {summary.base_run}: {summary.unchanged} unchanged")
    click.echo(
        f"  {verb} {c.files} file events ({c.bytes:,} bytes): {c.inline} inline, "
        f"{c.object_storage} in object storage, {c.git_reference} git references, "
        f"{c.deleted} deletes"
    )
    click.echo(f"  uploads: {summary.uploads} made, {summary.deduplicated} already stored")
    if summary.cost is not None and summary.cost.stored_bytes:
        click.echo(f"  {summary.cost.line()}")
    reasons: dict[str, int] = {}
    for skipped in summary.skipped:
        reason = skipped.reason.value.lower()
        reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        click.echo("  skipped: " + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())))
    if not summary.dry_run:
        click.echo(f"  {summary.transactions} transactions")
    click.echo(f"  digest {summary.digest}, {summary.duration_s:.2f}s")
