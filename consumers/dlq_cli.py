"""``headrace dlq``: inspect dead letters and replay chosen ones to their source topic."""

from __future__ import annotations

import base64

import click
import orjson
from rich.console import Console
from rich.table import Table

from consumers.dlq import read_dead_letters
from headrace.kafka import make_producer
from headrace.settings import Settings

REPLAYED_FROM = "headrace.replayed-from"


def _skipped(partition: int, offset: int, exc: Exception) -> None:
    click.echo(f"skipping {partition}:{offset}: {exc}", err=True)


@click.group()
def dlq() -> None:
    """The dead-letter topic: what each group gave up on, and why."""


@dlq.command("list")
@click.option("--group", help="Only this consumer group's dead letters.")
@click.option("--reason", help="Only this reason (e.g. deserialization, schema).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def list_(settings: Settings, group: str | None, reason: str | None, as_json: bool) -> None:
    """List dead letters: where each came from, the group, the reason, the error."""
    table = Table("id", "group", "reason", "source", "failed at", "error")
    for partition, offset, letter in read_dead_letters(settings, on_skip=_skipped):
        if (group and letter.group != group) or (
            reason and letter.reason.lower() != reason.lower()
        ):
            continue
        source = f"{letter.topic}/{letter.partition}/{letter.offset}"
        if as_json:
            click.echo(
                orjson.dumps(
                    {
                        "id": f"{partition}:{offset}",
                        "group": letter.group,
                        "reason": letter.reason.lower(),
                        "source": source,
                        "failed_at": letter.failed_at,
                        "error": letter.error,
                    }
                )
            )
        else:
            table.add_row(
                f"{partition}:{offset}",
                letter.group,
                letter.reason.lower(),
                source,
                letter.failed_at.isoformat(timespec="seconds"),
                letter.error[:80],
            )
    if not as_json:
        Console(highlight=False).print(table)


def _base64(value: object) -> str:
    """Bytes (key, value, header values) shown as base64 in JSON."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"cannot show {type(value).__name__}")


def _parse_id(value: str) -> tuple[int, int]:
    partition, _, offset = value.partition(":")
    if not (partition.isdigit() and offset.isdigit()):
        raise click.BadParameter(f"{value!r} is not PARTITION:OFFSET (as `dlq list` shows)")
    return int(partition), int(offset)


@dlq.command()
@click.argument("letter_id", metavar="ID")
@click.pass_obj
def show(settings: Settings, letter_id: str) -> None:
    """Show one dead letter in full (ID is PARTITION:OFFSET from `dlq list`)."""
    wanted = _parse_id(letter_id)
    for partition, offset, letter in read_dead_letters(settings, on_skip=_skipped):
        if (partition, offset) == wanted:
            text = orjson.dumps(letter.model_dump(), default=_base64, option=orjson.OPT_INDENT_2)
            click.echo(text.decode())
            return
    raise click.BadParameter(f"no dead letter {letter_id}", param_hint="ID")


@dlq.command()
@click.argument("letter_ids", metavar="ID...", nargs=-1, required=True)
@click.pass_obj
def replay(settings: Settings, letter_ids: tuple[str, ...]) -> None:
    """Publish chosen dead letters back to their source topic, original bytes and headers."""
    wanted = {_parse_id(v) for v in letter_ids}
    producer = make_producer(settings.kafka)
    replayed = []
    for partition, offset, letter in read_dead_letters(settings, on_skip=_skipped):
        if (partition, offset) not in wanted:
            continue
        origin = f"{settings.kafka.topics.dead_letter}/{partition}/{offset}"
        headers: list[tuple[str, str | bytes | None]] = [(h.key, h.value) for h in letter.headers]
        headers.append((REPLAYED_FROM, origin.encode()))
        producer.produce(letter.topic, key=letter.key, value=letter.value, headers=headers)
        replayed.append(f"{partition}:{offset}")
    if producer.flush(30):
        raise click.ClickException("not every replayed message was delivered")
    missing = {f"{p}:{o}" for p, o in wanted} - set(replayed)
    for item in replayed:
        click.echo(f"replayed {item}")
    if missing:
        raise click.BadParameter(f"no dead letter {', '.join(sorted(missing))}", param_hint="ID")
