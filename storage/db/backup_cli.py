"""``headrace db backup|backups|restore|prune-backups``: the thin CLI of storage.db.backup."""

from __future__ import annotations

import click
import orjson
from rich.console import Console
from rich.table import Table

from headrace.settings import Settings
from storage.db.backup import backup, backups_of, restore


@click.command("backup")
@click.option("--json", "as_json", is_flag=True, help="Print the backup as JSON.")
@click.pass_obj
def backup_command(settings: Settings, as_json: bool) -> None:
    """Back up the load database now (while the load group runs, too)."""
    made = backup(settings)
    if as_json:
        click.echo(orjson.dumps(made.to_json()).decode())
    else:
        click.echo(f"{made.name}: {made.size} bytes of {made.source}, in {made.path}")


@click.command("backups")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def backups_command(settings: Settings, as_json: bool) -> None:
    """The complete backups in load.backups_dir, newest first."""
    found = backups_of(settings).all()
    if as_json:
        click.echo(orjson.dumps([b.to_json() for b in found]).decode())
        return
    table = Table("name", "backend", "taken", "bytes", "of", title=str(settings.load.backups_dir))
    for b in found:
        table.add_row(
            b.name, b.backend, b.created_at.isoformat(timespec="seconds"), str(b.size), b.source
        )
    Console(highlight=False).print(table)


@click.command("restore")
@click.argument("name")
@click.option("--force", is_flag=True, help="Restore even though a load group seems to run.")
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@click.pass_obj
def restore_command(settings: Settings, name: str, force: bool, as_json: bool) -> None:
    """Put the backup NAME (or its path) back as the load database."""
    done = restore(settings, name, force=force)
    if as_json:
        replaced = None if done.replaced is None else done.replaced.to_json()
        found = {"restored": done.backup.to_json(), "replaced": replaced, "rewound": done.rewound}
        click.echo(orjson.dumps(found).decode())
        return
    kept = "" if done.replaced is None else f"; the database it replaced is {done.replaced.name}"
    kept += f"; the load group's offsets rewound to its ledger on {done.rewound} partitions"
    click.echo(
        f"restored {done.backup.name} (taken {done.backup.created_at:%Y-%m-%d %H:%M:%S}){kept}"
    )


@click.command("prune-backups")
@click.option("--keep-days", type=click.IntRange(min=0), required=True, help="Keep this many days.")
@click.pass_obj
def prune_command(settings: Settings, keep_days: int) -> None:
    """Remove backups older than --keep-days (the newest one always stays)."""
    gone = backups_of(settings).prune(keep_days)
    click.echo(f"removed {len(gone)} backups older than {keep_days} days")


COMMANDS = (backup_command, backups_command, restore_command, prune_command)
