"""``headrace doctor``: the checks of :mod:`headrace.doctor`, one line each."""

from __future__ import annotations

import click
import orjson

from headrace.doctor import Check, doctor
from headrace.errors import ConfigError
from headrace.settings import Settings


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--min-free-gb",
    type=click.FloatRange(min=0),
    help="Free space the archive, caches and database disks need (default: health.min_free_gb).",
)
@click.pass_obj
def doctor_command(
    settings: Settings | ConfigError, as_json: bool, min_free_gb: float | None
) -> None:
    """Check the configuration before anything runs: settings valid, every service
    reachable with its credentials, directories writable, disks not full. One line
    per check; exit 0 only if every check passes."""
    if isinstance(settings, ConfigError):  # the settings did not load: nothing else to try
        checks = [Check("settings", False, str(settings))]
    else:
        checks = doctor(settings, min_free_gb)
    ok = all(check.ok for check in checks)
    if as_json:
        body = {"ok": ok, "checks": [check.as_json() for check in checks]}
        click.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
    else:
        for check in checks:
            click.echo(check.line())
        failed = sum(not check.ok for check in checks)
        click.echo("all checks passed" if ok else f"{failed} of {len(checks)} checks failed")
    if not ok:
        raise SystemExit(1)
