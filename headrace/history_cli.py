"""``headrace metrics``: the operational history read back (export, components, summary).

A thin shell over headrace.history.query: it parses the options (a time is an ISO
time or a duration back from now; a bad one is one line and exit 2), calls one
function and prints."""

from __future__ import annotations

import csv
import sys
import time
from typing import Any

import click
import orjson

from headrace.history import open_store
from headrace.history.query import (
    AGGREGATES,
    BUCKET_COLUMNS,
    SAMPLE_COLUMNS,
    export,
    iso,
    parse_time,
    summary,
)
from headrace.settings import Settings


class TimeParam(click.ParamType):  # type: ignore[type-arg]
    """An ISO time (UTC unless it names an offset) or a duration back from now."""

    name = "time"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_time(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


TIME = TimeParam()


@click.group("metrics")
def metrics() -> None:
    """The operational history: the figures every headrace process records ([history])."""


@metrics.command("export")
@click.option("--component", help="Only this component (see `headrace metrics components`).")
@click.option("--since", type=TIME, required=True, help="From: an ISO time or a duration (1h).")
@click.option("--until", type=TIME, help="Up to (excluded): an ISO time or a duration; now.")
@click.option(
    "--format", "fmt", type=click.Choice(["json", "csv"]), default="json", show_default=True
)
@click.option(
    "--aggregate",
    type=click.Choice(list(AGGREGATES)),
    help="Per bucket of this width: count, min, max, avg and sum (default: every sample).",
)
@click.pass_obj
def export_command(
    settings: Settings,
    component: str | None,
    since: float,
    until: float | None,
    fmt: str,
    aggregate: str | None,
) -> None:
    """Print the samples (or their buckets) recorded in a time range."""
    end = _until(since, until)
    store = open_store(settings, readonly=True)
    try:
        rows = export(store, since, end, component=component, aggregate=aggregate)
    finally:
        store.close()
    if fmt == "json":
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    writer = csv.writer(sys.stdout, lineterminator="\n")
    columns = SAMPLE_COLUMNS if aggregate is None else BUCKET_COLUMNS
    writer.writerow(columns)
    writer.writerows([row[c] for c in columns] for row in rows)


@metrics.command("components")
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON.")
@click.pass_obj
def components_command(settings: Settings, as_json: bool) -> None:
    """List the components with samples: first and last sample, how many."""
    store = open_store(settings, readonly=True)
    try:
        found = store.components()
    finally:
        store.close()
    if as_json:
        rows = [
            {"component": c.name, "first": iso(c.first), "last": iso(c.last), "samples": c.samples}
            for c in found
        ]
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    for c in found:
        click.echo(f"{c.name}  {iso(c.first)} .. {iso(c.last)}  {c.samples} samples")


@metrics.command("summary")
@click.option("--since", type=TIME, required=True, help="From: an ISO time or a duration (1h).")
@click.option("--until", type=TIME, help="Up to (excluded): an ISO time or a duration; now.")
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
@click.pass_obj
def summary_command(settings: Settings, since: float, until: float | None, as_json: bool) -> None:
    """Per group: records processed and per second, errors, lag at the end, restarts."""
    end = _until(since, until)
    store = open_store(settings, readonly=True)
    try:
        found = summary(store, since, end)
    finally:
        store.close()
    if as_json:
        click.echo(orjson.dumps([g.as_json() for g in found], option=orjson.OPT_INDENT_2).decode())
        return
    for g in found:
        lag = "unknown" if g.lag is None else f"{g.lag:.0f}"
        click.echo(
            f"{g.component}: {g.processed} processed ({g.throughput:.1f}/s), {g.errors} errors,"
            f" lag at the end {lag}, {g.restarts} restarts"
        )


def _until(since: float, until: float | None) -> float:
    end = time.time() if until is None else until
    if end <= since:
        raise click.BadParameter(
            f"{iso(end)} is not after --since {iso(since)}", param_hint="--until"
        )
    return end
