"""``headrace load --from-archive``: backfill or rebuild the load database from the archive.

The archive holds every event with its topic, partition and offset, so the rows
it makes are the rows the Kafka loader makes, and the same order-safe upserts
apply: loading a range twice, or loading it and then consuming the same events
from Kafka, changes nothing. A backfill writes no ledger entries: the ledger
records what the Kafka loader has consumed, and a backfill consumes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from consumers.archive.cli import cold_store
from consumers.load.content import RowContent, load_row_content
from headrace.errors import Terminal
from headrace.params import DAY
from headrace.settings import Settings
from storage.archive import Backend, open_backend, read
from storage.content.errors import ContentError
from storage.db import (
    ContentMode,
    FileRow,
    RunRow,
    UnresolvableEvent,
    file_row,
    open_database,
    run_row,
)

log = logging.getLogger(__name__)


def _in_range(day: str, since: str | None, until: str | None) -> bool:
    return (since is None or day >= since) and (until is None or day <= until)


def archived_count(
    backend: Backend, topics: list[str], since: str | None, until: str | None
) -> int:
    """How many records the archive's manifests list for ``topics`` in the date range."""
    return sum(
        s.records
        for topic in topics
        for day in backend.days(topic)
        if _in_range(day, since, until)
        for s in backend.read_manifest(topic, day)
    )


def rows_from_archive(
    settings: Settings,
    backend: Backend,
    *,
    since: str | None,
    until: str | None,
    project: str | None,
    refused: list[str],
    row_content: RowContent | None = None,
) -> Iterator[tuple[FileRow | RunRow | None, int]]:
    """(row, 1) for each archived file or run event in range; (None, 1) for events of
    other projects and for those that cannot become rows (their reasons go to ``refused``).
    ``row_content`` checks each file row's content and adds what the content mode asks."""
    topics = settings.kafka.topics
    content = ContentMode(settings.load.content)
    cold = cold_store(settings)

    def wanted(event: dict[str, Any]) -> bool:
        return project is None or event.get("project") == project

    for topic in (topics.file_events, topics.run_events):
        lines = read(
            backend,
            topic=topic,
            since=since,
            until=until,
            cold=cold,
        )
        for line in lines:
            if not wanted(line.event):
                yield None, 1
                continue
            try:
                if topic == topics.file_events:
                    row = file_row(
                        line.event,
                        line.topic,
                        line.partition,
                        line.offset,
                        content,
                        line.timestamp_ms,
                    )
                    if row_content is not None:
                        row = row_content.complete(row, line.event)
                    yield row, 1
                else:
                    yield run_row(line.event, line.topic, line.partition, line.offset), 1
            except (UnresolvableEvent, ContentError) as exc:
                if not isinstance(exc, Terminal):
                    raise
                refused.append(str(exc))
                yield None, 1


@click.command()
@click.option(
    "--from-archive",
    is_flag=True,
    help="Read the events from the archive (required: the live loader is `consume load`).",
)
@click.option("--since", type=DAY, help="From this day (inclusive).")
@click.option("--until", type=DAY, help="To this day (inclusive).")
@click.option("--project", help="Only this project's files and runs.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="Rows per transaction (default: load.batch_size).",
)
@click.option("--dry-run", is_flag=True, help="Read and convert everything, write nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.pass_obj
def load(
    settings: Settings,
    from_archive: bool,
    since: str | None,
    until: str | None,
    project: str | None,
    batch_size: int | None,
    dry_run: bool,
    quiet: bool,
) -> None:
    """Backfill or rebuild the load database (load.backend) from the archive, with the
    same idempotent, order-safe writes as `headrace consume load`."""
    if not from_archive:
        raise click.UsageError(
            "give --from-archive (to load from Kafka, run `headrace consume load`)"
        )
    size = batch_size or settings.load.batch_size
    backend = open_backend(settings.archive, settings.object_store)
    topics = [settings.kafka.topics.file_events, settings.kafka.topics.run_events]
    total = archived_count(backend, topics, since, until)
    refused: list[str] = []
    row_content = load_row_content(settings)
    rows = rows_from_archive(
        settings,
        backend,
        since=since,
        until=until,
        project=project,
        refused=refused,
        row_content=row_content,
    )
    files: list[FileRow] = []
    runs: list[RunRow] = []
    read_count = written = skipped = 0
    db = None if dry_run else open_database(settings, migrate=True)
    try:
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            disable=quiet,
            transient=True,
        ) as progress:
            task = progress.add_task("loading" if db else "reading (dry run)", total=total)

            def flush() -> None:
                nonlocal written, skipped
                if db is not None and (files or runs):
                    result = db.write(files, runs)
                    written += result.files_written + result.runs_written
                    skipped += result.files_skipped_older
                files.clear()
                runs.clear()

            for row, n in rows:
                read_count += n
                if isinstance(row, FileRow):
                    files.append(row)
                elif isinstance(row, RunRow):
                    runs.append(row)
                if len(files) + len(runs) >= size:
                    flush()
                    progress.update(task, completed=read_count)
            flush()
            progress.update(task, completed=read_count)
    finally:
        if db is not None:
            db.close()
        row_content.close()
    what = "would load" if dry_run else "loaded"
    click.echo(
        f"{what} from {backend.location}: {read_count} events read, {written} rows written,"
        f" {skipped} unchanged (not newer than the stored row), {len(refused)} refused"
    )
    if refused:
        for reason in refused[:5]:
            click.echo(f"refused: {reason}", err=True)
        raise click.ClickException(
            f"{len(refused)} archived events could not become rows (the rest were loaded)"
        )
