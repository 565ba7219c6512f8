"""The ``headrace`` command: entry point, global options and error handling.

Every expected failure is a :class:`~headrace.errors.HeadraceError` or a
usage error, and ends as one readable line on stderr and a non-zero exit.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import click
import orjson

from headrace import __version__
from headrace.errors import ConfigError, HeadraceError
from headrace.redact import REDACTOR
from headrace.settings import Settings, load_settings
from headrace.telemetry import configure_logging

# Subcommands are imported when used: `headrace stack status` need not load the
# Kafka, registry and archive clients (half a second of imports).
SUBCOMMANDS = {
    "stack": "headrace.stack.cli:stack",
    "schemas": "schemas.cli:schemas",
    "ingest": "producers.cli:ingest",
    "runs": "producers.runs_cli:runs",
    "archive-table": "producers.tables.cli:archive_table_command",
    "restore-table": "producers.tables.restore_cli:restore_table_command",
    "consume": "consumers.cli:consume",
    "dlq": "consumers.dlq_cli:dlq",
    "archive": "consumers.archive.cli:archive",
    "status": "consumers.status:status",
    "load": "consumers.load.cli:load",
    "db": "storage.db.cli:db",
    "cache": "consumers.cache.cli:cache",
    "verify": "consumers.verify.cli:verify",
    "sweep": "headrace.sweep_cli:sweep_command",
    "chaos": "headrace.chaos_cli:chaos",
    "doctor": "headrace.doctor_cli:doctor_command",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *SUBCOMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUBCOMMANDS:
            return super().get_command(ctx, cmd_name)
        module, _, name = SUBCOMMANDS[cmd_name].partition(":")
        command = getattr(importlib.import_module(module), name)
        assert isinstance(command, click.Command)  # noqa: S101 - the table above names commands
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "-c",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML config file (also HEADRACE_CONFIG).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="Log records as text for people or JSON lines; default from settings.",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Log level; default from settings.",
)
@click.option("--run-id", help="Run id stamped on every log record (default: a new one).")
@click.version_option(__version__, "--version", prog_name="headrace")
@click.pass_context
def cli(
    ctx: click.Context,
    config: Path | None,
    log_format: str | None,
    log_level: str | None,
    run_id: str | None,
) -> None:
    """Publish versioned file events through Kafka and load them into storage.

    Settings come from HEADRACE_* environment variables (sections joined by
    "__", e.g. HEADRACE_KAFKA__BOOTSTRAP_SERVERS), then the config file, then
    defaults that point at the local stack.
    """
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        if ctx.invoked_subcommand != "doctor":
            raise
        ctx.obj = exc  # doctor reports it as its first, failed, check
        return
    for secret in settings.secrets():  # a config file's too: the environment's are known
        REDACTOR.add(secret)
    fmt = log_format or settings.log.format
    configure_logging(
        (log_level or settings.log.level).upper(), "json" if fmt == "json" else "text", run_id
    )
    ctx.obj = settings


@cli.command("settings")
@click.pass_obj
def show_settings(settings: Settings) -> None:
    """Print the settings in force as JSON, secrets masked."""
    click.echo(orjson.dumps(settings.masked(), option=orjson.OPT_INDENT_2).decode())


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; turn every expected failure into one line and an exit code."""
    try:
        code = cli.main(args=argv, prog_name="headrace", standalone_mode=False)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        _fail(f"{exc.format_message()}{hint}", 2)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except HeadraceError as exc:
        _fail(str(exc), 1)
    except Exception as exc:  # a bug or an unclassified failure: one line, trace in the log
        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        _fail(f"unexpected {type(exc).__name__}: {exc} (--log-level debug shows where)", 1)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> None:
    first, *rest = REDACTOR.redact(message).splitlines() or [""]
    click.echo(f"headrace: error: {first}", err=True)
    for line in rest:
        click.echo(f"  {line.strip()}", err=True)
    sys.exit(code)
