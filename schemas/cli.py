"""``headrace schemas``: list, register, check and diff the event schemas."""

from __future__ import annotations

from pathlib import Path

import click
import orjson
from rich.console import Console
from rich.table import Table

from headrace.errors import SchemaError
from headrace.settings import Settings
from schemas import catalog
from schemas.avro_schema import Schema, SchemaParseError, parse
from schemas.catalog import EventType
from schemas.compat import Incompatibility, Level, check
from schemas.diff import diff
from schemas.registry import Registry

LEVELS = [level.value for level in Level]
_level_option = click.option(
    "--level",
    type=click.Choice(LEVELS, case_sensitive=False),
    help="Compatibility level (default: the subject's level in the registry; BACKWARD offline).",
)


@click.group()
def schemas() -> None:
    """The event schemas: schemas/avro/<event>/v<N>.avsc, one file per version.

    Each event type's subject is <topic>-value (the topic name strategy).
    """


@schemas.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def list_(settings: Settings, as_json: bool) -> None:
    """Subjects in the registry: versions, schema ids, compatibility level."""
    rows: list[dict[str, object]] = []
    table = Table("subject", "versions", "schema ids", "level")
    with Registry(settings.registry) as registry:
        for subject in registry.subjects():
            versions = registry.versions(subject)
            numbers = [v.version for v in versions]
            ids = [v.schema_id for v in versions]
            level = registry.level(subject)
            rows.append({"subject": subject, "versions": numbers, "ids": ids, "level": level})
            table.add_row(subject, _ints(numbers), _ints(ids), level)
    if as_json:
        click.echo(orjson.dumps(rows).decode())
    else:
        Console(highlight=False).print(table)


def _ints(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


@schemas.command()
@click.pass_obj
def register(settings: Settings) -> None:
    """Register every local schema, in version order (idempotent)."""
    topics = settings.kafka.topics
    with Registry(settings.registry) as registry:
        for event in EventType:
            subject = event.subject(topics)
            known = {v.schema_id for v in registry.versions(subject)}
            for local in catalog.versions(event):
                schema_id = registry.register(subject, local.text)
                state = "already registered" if schema_id in known else "registered"
                known.add(schema_id)
                click.echo(f"{subject} {local.label}: schema id {schema_id} ({state})")


@schemas.command("check")
@_level_option
@click.option("--offline", is_flag=True, help="Check against files, without a registry.")
@click.option("--subject", help="Check one FILE against this subject's registered versions.")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_obj
def check_(
    settings: Settings,
    level: str | None,
    offline: bool,
    subject: str | None,
    files: tuple[Path, ...],
) -> None:
    """Check schemas for compatibility; explain each problem; exit 1 if any.

    \b
    headrace schemas check
        each event's latest local schema against its subject's registered
        versions, at the subject's level (or --level)
    headrace schemas check --offline
        each event's latest local schema against its earlier local versions
    headrace schemas check --subject SUBJECT NEW.avsc
        a candidate file against a subject's registered versions
    headrace schemas check --offline --level LEVEL NEW.avsc OLD.avsc [OLDER.avsc ...]
        any files, oldest last: a gate for any project's schema changes
    """
    if files and offline:
        if len(files) < 2:
            raise click.UsageError("give the new schema and at least one previous one")
        new, *older = files
        previous = [(path.name, _parse_file(path)) for path in reversed(older)]
        _report([(new.name, check(_parse_file(new), previous, level or Level.BACKWARD))])
    elif files:
        if subject is None or len(files) != 1:
            raise click.UsageError("online, check one FILE with --subject (or add --offline)")
        with Registry(settings.registry) as registry:
            _report(
                [_against_registry(registry, subject, files[0].name, _parse_file(files[0]), level)]
            )
    elif offline:
        results = []
        for event in EventType:
            *earlier, newest = catalog.versions(event)
            previous = [(s.label, parse(s.text)) for s in earlier]
            found = check(parse(newest.text), previous, level or Level.BACKWARD)
            results.append((f"{event.value} {newest.label}", found))
        _report(results)
    else:
        with Registry(settings.registry) as registry:
            _report(
                [
                    _against_registry(
                        registry,
                        event.subject(settings.kafka.topics),
                        f"local {catalog.latest(event).label}",
                        parse(catalog.latest(event).text),
                        level,
                    )
                    for event in EventType
                ]
            )


def _against_registry(
    registry: Registry, subject: str, name: str, schema: Schema, level: str | None
) -> tuple[str, list[Incompatibility]]:
    registered = registry.versions(subject)
    previous = [(f"v{v.version}", parse(v.schema)) for v in registered]
    in_force = level or registry.level(subject)
    return f"{subject} ({name}, {in_force})", check(schema, previous, in_force)


def _parse_file(path: Path) -> Schema:
    try:
        return parse(path.read_text())
    except SchemaParseError as exc:
        raise SchemaError(f"{path}: {exc}") from None


def _report(results: list[tuple[str, list[Incompatibility]]]) -> None:
    failed = False
    for name, problems in results:
        if not problems:
            click.echo(f"ok    {name}")
            continue
        failed = True
        click.echo(f"FAIL  {name}")
        for p in problems:
            click.echo(f"      {p.version} ({p.direction}): {p.message} [{p.kind} at {p.path}]")
    if failed:
        raise click.exceptions.Exit(1)


@schemas.command("diff")
@click.argument("subject")
@click.argument("old", type=int)
@click.argument("new", type=int)
@click.option("--offline", is_flag=True, help="Compare the local files, not the registry.")
@click.pass_obj
def diff_(settings: Settings, subject: str, old: int, new: int, offline: bool) -> None:
    """Fields added, removed and changed between versions OLD and NEW of SUBJECT.

    SUBJECT is a registry subject, or an event name (file_event, run_event,
    verification_event, dead_letter).
    """
    topics = settings.kafka.topics
    event = catalog.event_for_subject(subject, topics)
    if offline:
        if event is None:
            raise click.BadParameter(f"no local schemas for {subject!r}", param_hint="SUBJECT")
        texts = [catalog.version(event, n).text for n in (old, new)]
    else:
        name = event.subject(topics) if event is not None else subject
        with Registry(settings.registry) as registry:
            texts = [registry.version(name, n).schema for n in (old, new)]
    changes = diff(parse(texts[0]), parse(texts[1]))
    if not changes:
        click.echo(f"no field changes between v{old} and v{new}")
    for change in changes:
        click.echo(f"{change.change:<16} {change.path}: {change.detail}")
