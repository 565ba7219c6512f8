"""What a verification found, in one shape for every command that verifies:
``headrace verify run`` (a run against every side it went to) and ``headrace
archive verify`` (the archive's files against their manifests).

A :class:`Report` is a list of :class:`Discrepancy` (a kind, the side it was
found on, the path it concerns or None, and the detail in words) and notes
(what was not checked, and why). Its JSON form always has ``ok``,
``discrepancies_by_kind``, ``discrepancies`` and ``notes``; each command adds
its own keys (docs/operations.md). On a terminal both print their counts as a
table, then the discrepancies as one, then one ``OK:`` or ``FAILED:`` line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from rich.console import Console
from rich.table import Table

SHOWN = 50  # discrepancies listed on a terminal; --json has them all


@dataclass(frozen=True)
class Discrepancy:
    kind: StrEnum
    side: str  # where it was found: a side of a run, or "archive"
    path: str | None  # None for a count or digest
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "side": self.side,
            "path": self.path,
            "detail": self.detail,
        }


@dataclass(kw_only=True)  # a subclass's own fields come first, by position
class Report:
    discrepancies: list[Discrepancy] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was not checked, and why

    @property
    def ok(self) -> bool:
        return not self.discrepancies

    def add(self, kind: StrEnum, side: str, path: str | None, detail: str) -> None:
        self.discrepancies.append(Discrepancy(kind, side, path, detail))

    def by_kind(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for d in self.discrepancies:
            found[d.kind.value] = found.get(d.kind.value, 0) + 1
        return found

    def findings_json(self) -> dict[str, Any]:
        """The keys every report's JSON has."""
        return {
            "ok": self.ok,
            "discrepancies_by_kind": self.by_kind(),
            "discrepancies": [d.as_json() for d in self.discrepancies],
            "notes": self.notes,
        }


def console() -> Console:
    """Wide enough for the tables even in a narrow terminal or a pipe."""
    return Console(width=max(100, Console().width), highlight=False)


def print_findings(out: Console, report: Report, ok_line: str) -> None:
    """The notes, the discrepancies (the first SHOWN) and the verdict line."""
    for note in report.notes:
        out.print(f"[yellow]note[/]: {note}", soft_wrap=True)
    if report.ok:
        out.print(f"[green]OK[/]: {ok_line}", soft_wrap=True)
        return
    problems = Table(title="discrepancies", title_justify="left")
    for name in ("kind", "side", "path", "detail"):
        problems.add_column(name, overflow="fold")
    for d in report.discrepancies[:SHOWN]:
        problems.add_row(d.kind.value, d.side, d.path or "", d.detail)
    out.print(problems)
    more = len(report.discrepancies) - SHOWN
    if more > 0:
        out.print(f"... and {more} more (--json lists them all)")
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(report.by_kind().items()))
    count = len(report.discrepancies)
    found = f"{count} discrepanc" + ("y" if count == 1 else "ies")
    out.print(f"[red]FAILED[/]: {found} ({kinds})", soft_wrap=True)
