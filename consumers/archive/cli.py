"""``headrace archive verify|read``: check the archive, and stream events back out of it."""

from __future__ import annotations

import base64
import fnmatch
import sys
from typing import Any

import click
import orjson
from rich.table import Table

from consumers.archive.check import COUNTS, check_archive
from consumers.report import console, print_findings
from headrace.params import DAY
from headrace.settings import Settings
from storage.archive import (
    ColdStore,
    Compression,
    compress_old,
    read,
    request_deletion,
    retain,
)
from storage.archive.backend import Backend, open_backend
from storage.objectstore import open_storage


def _backend(settings: Settings) -> Backend:
    return open_backend(settings.archive, settings.object_store)


def _local_only(settings: Settings, what: str) -> None:
    if settings.archive.backend != "local":
        raise click.UsageError(
            f"{what} is for an archive on local disk; this one is in object storage"
            f" (archive.backend = {settings.archive.backend})"
        )


def cold_store(settings: Settings) -> ColdStore:
    """The cold tier: object storage, the archive's own bucket."""
    return ColdStore(open_storage(settings.object_store, settings.archive.cold_bucket))


@click.group()
def archive() -> None:
    """The archive: date-partitioned, compressed segments of every event."""


@archive.command("verify")
@click.option("--date", type=DAY, help="Only this day (default: every day).")
@click.option("--all", "all_days", is_flag=True, help="Every day (the default).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def verify_(settings: Settings, date: str | None, all_days: bool, as_json: bool) -> None:
    """Every line parses, manifests match files (count, size, sha256), no offset
    gaps or overlaps, compressed files decompress. Exit 1 on any problem; the report
    has the shape of `headrace verify run`'s."""
    if date and all_days:
        raise click.UsageError("give --date or --all, not both")
    report = check_archive(_backend(settings), date, cold_store(settings))
    if as_json:
        click.echo(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        out = console()
        day = f" on {date}" if date else ""
        out.print(f"[bold]the archive at {report.location}[/]{day}", soft_wrap=True)
        table = Table(title="listed in the manifests, per topic", title_justify="left")
        table.add_column("topic")
        for name in COUNTS:
            table.add_column(name, justify="right")
        for topic, counts in sorted(report.counts.items()):
            table.add_row(topic, *(f"{counts[name]:,}" for name in COUNTS))
        out.print(table)
        print_findings(out, report, f"the archive at {report.location} verifies{day}")
    if not report.ok:
        raise SystemExit(1)


def _json_default(value: Any) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON")


@archive.command("read")
@click.option("--topic", help="Only this topic.")
@click.option("--since", type=DAY, help="From this day (inclusive).")
@click.option("--until", type=DAY, help="To this day (inclusive).")
@click.option("--project", help="Only events of this project.")
@click.option("--path", "path_glob", metavar="GLOB", help="Only files whose path matches GLOB.")
@click.pass_obj
def read_(
    settings: Settings,
    topic: str | None,
    since: str | None,
    until: str | None,
    project: str | None,
    path_glob: str | None,
) -> None:
    """Stream archived events as JSON lines (bytes as base64), across compression and
    tiers (local days and days moved to object storage)."""

    def wanted(event: dict[str, Any]) -> bool:
        if project is not None and event.get("project") != project:
            return False
        return path_glob is None or fnmatch.fnmatchcase(str(event.get("path", "")), path_glob)

    out = sys.stdout.buffer
    lines = read(
        _backend(settings),
        topic=topic,
        since=since,
        until=until,
        predicate=wanted,
        cold=cold_store(settings),
    )
    for line in lines:
        out.write(
            orjson.dumps(
                {
                    "topic": line.topic,
                    "partition": line.partition,
                    "offset": line.offset,
                    "schema_id": line.schema_id,
                    "event": line.event,
                },
                default=_json_default,
            )
        )
        out.write(b"\n")
    out.flush()


def _days(verb: str, days: list[str], where: str = "") -> str:
    """``moved 2 days to the cold tier: 2020-01-01, 2020-01-02``."""
    return f"{verb} {len(days)} days{where}" + (": " + ", ".join(days) if days else "")


@archive.command("retain")
@click.option(
    "--older-than",
    "days",
    type=click.IntRange(min=0),
    required=True,
    metavar="DAYS",
    help="Move days older than this many days to the cold tier.",
)
@click.pass_obj
def retain_(settings: Settings, days: int) -> None:
    """Move old days to the cold tier (object storage), verified before the local
    copies go; nothing is ever deleted. Reading and verifying go on across tiers."""
    _local_only(settings, "retain")
    moved = retain(settings.archive.root, cold_store(settings), older_than_days=days)
    click.echo(_days("moved", moved, " to the cold tier"))


@archive.command("request-deletion")
@click.option("--topic", required=True)
@click.option("--date", "day", required=True, type=DAY)
@click.option("--reason", required=True)
@click.pass_obj
def request_deletion_(settings: Settings, topic: str, day: str, reason: str) -> None:
    """Record a request to delete a day of a topic (who, why, when); deletes nothing."""
    _local_only(settings, "request-deletion")
    path = request_deletion(settings.archive.root, topic=topic, date=day, reason=reason)
    click.echo(f"recorded {path}")


@archive.command("compress")
@click.option(
    "--older-than",
    "days",
    type=click.IntRange(min=0),
    default=None,
    metavar="DAYS",
    help="Days older than this (default: archive.plain_days).",
)
@click.pass_obj
def compress_(settings: Settings, days: int | None) -> None:
    """Compress the plain segments of old days (archive.plain_days keeps recent days
    plain); each compressed file is checked against the plain one before it goes."""
    _local_only(settings, "compress")
    codec = Compression(settings.archive.compression)
    if codec is Compression.NONE:
        raise click.UsageError("archive.compression is none: nothing to compress with")
    changed = compress_old(
        settings.archive.root,
        older_than_days=settings.archive.plain_days if days is None else days,
        compression=codec,
    )
    click.echo(_days("compressed", changed))
