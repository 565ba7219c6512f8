"""``headrace cache stats|prune|warm``: the content cache (cache.dir, cache.max_size)."""

from __future__ import annotations

import click
import orjson
from pydantic import ByteSize, TypeAdapter, ValidationError
from rich.console import Console
from rich.table import Table

from headrace.settings import Settings
from storage.content.cache import CacheStats, StrategyStats
from storage.content.factory import open_cache, open_resolver


def _size(text: str) -> int:
    try:
        return int(TypeAdapter(ByteSize).validate_python(text))
    except ValidationError:
        raise click.BadParameter(
            f"{text!r} is not a size (e.g. 500MiB, 2GB, 1048576)", param_hint="--to"
        ) from None


@click.group()
def cache() -> None:
    """The content cache: files by sha256, bounded by cache.max_size (LRU)."""


@cache.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def stats_(settings: Settings, as_json: bool) -> None:
    """Entries, bytes, hits, misses, hit rate and evictions, in all and per strategy."""
    content = open_cache(settings)
    try:
        stats = content.stats()
    finally:
        content.close()
    if as_json:
        click.echo(orjson.dumps(stats.to_json(), option=orjson.OPT_INDENT_2).decode())
        return
    Console(highlight=False).print(_table(stats))


def _table(stats: CacheStats) -> Table:
    table = Table(
        "strategy",
        "entries",
        "bytes",
        "hits",
        "misses",
        "hit rate",
        "evictions",
        "corrupt",
        title=f"content cache {stats.root} (bound {ByteSize(stats.max_size).human_readable()})",
    )

    def row(name: str, s: StrategyStats) -> None:
        rate = "-" if s.hit_rate is None else f"{s.hit_rate:.1%}"
        table.add_row(
            name,
            str(s.entries),
            ByteSize(s.bytes).human_readable(),
            str(s.hits),
            str(s.misses),
            rate,
            str(s.evictions),
            str(s.corrupt),
        )

    for name, s in sorted(stats.by_strategy.items()):
        row(name.lower(), s)
    row("all", stats.total)
    return table


@cache.command("prune")
@click.option("--to", "to", metavar="SIZE", help="Evict down to this size (default: the bound).")
@click.pass_obj
def prune(settings: Settings, to: str | None) -> None:
    """Evict least recently used entries down to SIZE, and remove orphaned files."""
    target = _size(to) if to is not None else None
    content = open_cache(settings)
    try:
        pruned = content.prune(target)
        left = content.size()
    finally:
        content.close()
    click.echo(
        f"evicted {pruned.entries} entries ({ByteSize(pruned.bytes).human_readable()}),"
        f" removed {pruned.orphans} orphaned files; {ByteSize(left).human_readable()} left"
    )


@cache.command("warm")
@click.option("--project", required=True, help="The project whose files to fetch.")
@click.option(
    "--from",
    "source",
    type=click.Choice(["database", "archive"]),
    default="database",
    show_default=True,
    help="Where the references come from: the load database, or every archived version.",
)
@click.pass_obj
def warm_(settings: Settings, project: str, source: str) -> None:
    """Fetch a project's object-storage and git-reference content into the cache."""
    from consumers.cache.warm import events_from_archive, events_from_database, warm  # noqa: PLC0415

    events = (
        events_from_database(settings, project)
        if source == "database"
        else events_from_archive(settings, project)
    )
    resolver = open_resolver(settings)
    try:
        result = warm(resolver, events, settings.cache.parallel_downloads)
    finally:
        resolver.close()
    click.echo(
        f"{project}: {result.files} files, {result.hits} already cached, {result.fetched}"
        f" fetched, {len(result.failed)} failed"
    )
    if result.failed:
        for line in result.failed[:5]:
            click.echo(f"failed: {line}", err=True)
        raise click.ClickException(f"{len(result.failed)} files could not be fetched")
