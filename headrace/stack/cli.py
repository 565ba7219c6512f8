"""``headrace stack``: install, start, inspect and stop the local stack."""

from __future__ import annotations

import click
import orjson
from rich.console import Console
from rich.table import Table

from headrace.settings import Settings
from headrace.stack.env import export_lines
from headrace.stack.manager import SERVICE_NAMES, Stack

_services = click.argument("services", nargs=-1, type=click.Choice(SERVICE_NAMES))


def _console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False)


@click.group()
def stack() -> None:
    """The local stack: Kafka, the schema registry, MinIO, PostgreSQL and Prometheus on loopback.

    State (downloads, data, logs) lives under .headrace/ in the project.
    SERVICES default to all of them.
    """


@stack.command()
@_services
@click.pass_obj
def up(settings: Settings, services: tuple[str, ...]) -> None:
    """Install what is missing, start the services, wait until each really answers."""
    err = _console(stderr=True)
    outcomes = Stack(settings).up(services, progress=lambda msg: err.print(f"… {msg}"))
    table = Table("service", "", "address", "pid", title=f"local stack in {settings.stack.home}")
    for o in outcomes:
        table.add_row(o.name, o.action, o.address, str(o.pid or "-"))
    _console().print(table)


@stack.command()
@_services
@click.pass_obj
def down(settings: Settings, services: tuple[str, ...]) -> None:
    """Stop the services; their data stays under the state directory."""
    for name, was_running in Stack(settings).down(services):
        click.echo(f"{name}: {'stopped' if was_running else 'was not running'}")


@stack.command()
@_services
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def status(settings: Settings, services: tuple[str, ...], as_json: bool) -> None:
    """Show each service's pid, address and health; exit 3 if any is not healthy."""
    rows = Stack(settings).status(services)
    if as_json:
        click.echo(orjson.dumps([r.__dict__ for r in rows]).decode())
    else:
        table = Table("service", "pid", "address", "healthy")
        for r in rows:
            table.add_row(
                r.name, str(r.pid or "-"), r.address, "[green]yes[/]" if r.healthy else "[red]no[/]"
            )
        _console().print(table)
    if not all(r.healthy for r in rows):
        raise click.exceptions.Exit(3)


@stack.command()
@click.pass_obj
def env(settings: Settings) -> None:
    """Print export lines for the stack's settings: eval "$(headrace stack env)"."""
    for line in export_lines(settings):
        click.echo(line)


@stack.command()
@click.pass_obj
def smoke(settings: Settings) -> None:
    """Round-trip real data through every service and print what happened."""
    from headrace.stack.smoke import run_smoke

    table = Table("service", "check", "result", title="smoke test")
    for service, check, result in run_smoke(settings):
        table.add_row(service, check, result)
    _console().print(table)
