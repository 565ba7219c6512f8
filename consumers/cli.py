"""``headrace consume GROUP``: run one consumer group until stopped (or caught up)."""

from __future__ import annotations

import click

from consumers.groups import groups, run_group
from headrace.settings import Settings


class _GroupName(click.ParamType):  # type: ignore[type-arg]
    """A group headrace brings, or one an installed package registers."""

    name = "group"

    def convert(self, value: str, param: click.Parameter | None, ctx: click.Context | None) -> str:
        known = groups()
        if value not in known:
            self.fail(f"{value!r} is not a group ({', '.join(sorted(known))})", param, ctx)
        return value


@click.command()
@click.argument("group", type=_GroupName())
@click.option(
    "--until-caught-up",
    is_flag=True,
    help="Stop once the end offsets seen at start are reached (batch jobs, tests).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0),
    help="Port for /metrics and /healthz (0: none; default from settings).",
)
@click.pass_obj
def consume(
    settings: Settings, group: str, until_caught_up: bool, metrics_port: int | None
) -> None:
    """Run the GROUP consumer group (archive, load, cache, verify, or one an installed
    package registers under the headrace.groups entry point): each group is its own
    Kafka consumer group, scaling out by partitions across processes and hosts.
    SIGTERM or SIGINT stops it cleanly: what is durable is committed and the group
    is left."""
    stats = run_group(settings, group, until_caught_up=until_caught_up, metrics_port=metrics_port)
    group_id = settings.consumer.group_prefix + group
    click.echo(
        f"{group_id}: {stats.processed} records written, {stats.dead_lettered} dead-lettered"
    )
