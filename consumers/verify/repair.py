"""``verify run --repair``: fix what a report found, after a backup, with a log.

What can be fixed from what the pipeline still holds:

- an archive segment that is missing or damaged (records deleted, bytes changed,
  truncated) while the topic still holds its offsets: rebuilt from Kafka and put
  back only if its bytes are the ones its manifest lists
  (:mod:`consumers.archive.rebuild`); the damaged file is moved into the
  repair's directory (``archive/``) first. This comes first: the rows below are
  read back from the archive;
- a row missing, stale, or holding another sha256 or size than the run's event:
  the run's event is read back from the archive and stored as the row
  (:meth:`storage.db.Database.replace`: not order-safe, so only after the check
  said the row is wrong);

and what cannot, said in the plan with why: a file missing in the archive with
no damaged segment to rebuild (the archive group has not archived it yet),
content the store no longer holds or holds wrong (re-ingest the file), an event
not verified yet (run the verify group), a run that never completed (resume it).

Before the database changes, the rows of every path about to change are written
to ``backup.jsonl`` in the repair's directory (``verify.repairs_dir``), with the
paths that had no row; ``repair.jsonl`` records each change, segments put back
included. :func:`restore` puts a backup of rows back.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from consumers.archive.rebuild import NotRebuilt, Rebuilt, rebuild
from consumers.load.content import load_row_content
from consumers.verify.from_source import SourceRepair, repair_from_source
from consumers.verify.read import archived_files
from consumers.verify.report import Discrepancy, Kind, RunReport
from headrace.errors import HeadraceError
from headrace.settings import Settings
from headrace.sweep import catch_up
from producers.command import IngestRequest, republish, run_ingest
from producers.ingest import IngestOptions, options_of
from producers.runs import RunRecord
from storage.archive.verify import Damage
from storage.db import ContentMode, FileRow, file_row, open_database

RELOADED = {Kind.MISSING_IN_DATABASE, Kind.STALE_VERSION}
RELOADED_IF_LOADED = {Kind.CHECKSUM_MISMATCH, Kind.SIZE_MISMATCH}
FROM_SOURCE = {Kind.CONTENT_UNRESOLVABLE, Kind.VERIFICATION_FAILED}
WHY_NOT: dict[StrEnum, str] = {
    Kind.MISSING_IN_ARCHIVE: (
        "no damaged segment holds it: not archived yet, run"
        " `headrace consume archive --until-caught-up`"
    ),
    Kind.EXTRA: "extra files are reported, never removed",
    Kind.DUPLICATED: "a duplicate in the archive is reported, never removed (append-only)",
    Kind.CONTENT_UNRESOLVABLE: "the run's source is not known: ingest the file again",
    Kind.VERIFICATION_FAILED: "the run's source is not known: ingest the file again",
    Kind.NOT_VERIFIED: "run `headrace consume verify --until-caught-up`, then verify again",
    Kind.RUN_INCOMPLETE: (
        "the run's state is not on this machine: resume it where it ran"
        " (`headrace sweep SOURCE --run-id RUN_ID`)"
    ),
    Kind.COUNT_MISMATCH: "follows from the files' discrepancies",
    Kind.DIGEST_MISMATCH: "follows from the files' discrepancies",
}


@dataclass(frozen=True)
class Unrepairable:
    discrepancy: Discrepancy
    why: str


@dataclass
class RepairPlan:
    run_id: str
    project: str | None
    reload: list[str] = field(default_factory=list)  # paths whose row comes from the archive
    rearchive: list[Damage] = field(default_factory=list)  # segments rebuilt from Kafka
    from_source: list[str] = field(default_factory=list)  # content uploaded again, verified
    republish: list[str] = field(default_factory=list)  # in the source, not archived
    record: RunRecord | None = None  # the run's state here, if it is here: its options
    resume: RunRecord | None = None  # an unfinished run, resumed and swept
    cannot: list[Unrepairable] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (
            self.reload or self.rearchive or self.from_source or self.resume or self.republish
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "resume_run": None if self.resume is None else self.resume.source,
            "from_source": self.from_source,
            "republish_from_source": self.republish,
            "rearchive_from_kafka": [
                {"segment": d.where, "records": d.segment.records, "damage": d.reason}
                for d in self.rearchive
            ],
            "reload_from_archive": self.reload,
            "cannot_repair": [{**u.discrepancy.as_json(), "why": u.why} for u in self.cannot],
        }


@dataclass
class RepairResult:
    directory: Path
    written: int
    backed_up: int
    rearchived: list[Rebuilt] = field(default_factory=list)
    not_rearchived: list[NotRebuilt] = field(default_factory=list)
    source: SourceRepair | None = None
    resumed: dict[str, Any] | None = None  # the resumed ingest's summary, the groups' work
    republished: dict[str, Any] | None = None  # the paths published again, the groups' work

    def as_json(self) -> dict[str, Any]:
        return {
            "source": None if self.source is None else self.source.as_json(),
            "resumed": self.resumed,
            "republished": self.republished,
            "written": self.written,
            "directory": str(self.directory),
            "backup": str(self.directory / "backup.jsonl"),
            "log": str(self.directory / "repair.jsonl"),
            "rearchived": [r.where for r in self.rearchived],
            "not_rearchived": [{"segment": n.where, "why": n.why} for n in self.not_rearchived],
        }


def plan_repair(
    report: RunReport, damage: Iterable[Damage] = (), record: RunRecord | None = None
) -> RepairPlan:
    """What a repair would do about ``report``; ``damage``: the archive's damaged segments
    (:func:`consumers.archive.rebuild.find_damage`), rebuilt from Kafka; ``record``: the
    run's state on this machine, if it is here (an unfinished run is resumed from it)."""
    plan = RepairPlan(report.run_id, report.project, rearchive=list(damage), record=record)
    reload: set[str] = set()
    from_source: set[str] = set()
    known = report.project is not None and report.source is not None
    # Missing in the archive but in Kafka: re-archived (or the archive group is behind),
    # never published again; missing in both, found against the source: published again.
    in_kafka = {
        d.path
        for d in report.discrepancies
        if d.kind is Kind.MISSING_IN_ARCHIVE and d.side == "archived"
    }
    republish: set[str] = set()
    for d in report.discrepancies:
        fixable = d.kind in RELOADED or (d.kind in RELOADED_IF_LOADED and d.side == "loaded")
        if fixable and d.path is not None and report.project is not None:
            reload.add(d.path)
        elif (
            d.kind is Kind.MISSING_IN_ARCHIVE
            and d.side == "source"
            and d.path is not None
            and d.path not in in_kafka
            and known
        ):
            republish.add(d.path)
        elif plan.rearchive and (
            d.kind is Kind.MISSING_IN_ARCHIVE or (d.kind is Kind.EXTRA and d.path in in_kafka)
        ):
            continue  # the segments to rebuild are in the plan; a row they hold is no extra
        elif d.kind in FROM_SOURCE and d.path is not None and known:
            from_source.add(d.path)
        elif d.kind is Kind.RUN_INCOMPLETE and record is not None and not record.finished:
            plan.resume = record
        else:
            why = WHY_NOT.get(d.kind, "not repairable from the pipeline's own copies")
            plan.cannot.append(Unrepairable(d, why))
    plan.reload = sorted(reload)
    plan.from_source = sorted(from_source)
    plan.republish = sorted(republish)
    return plan


def apply_repair(
    settings: Settings,
    plan: RepairPlan,
    *,
    source: tuple[str, str | None] | None = None,
    now: datetime | None = None,
) -> RepairResult:
    """In this order: rebuild damaged segments from Kafka; back up the rows about to
    change and store the run's archived events as rows; upload content again from the
    run's ``source`` (its location and commit) and verify it again; resume an unfinished
    run and bring the groups up to it. Everything done is logged in the repair's
    directory."""
    if plan.empty:
        raise HeadraceError("nothing to repair")
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    directory = Path(settings.verify.repairs_dir) / f"{stamp}-{plan.run_id}"
    directory.mkdir(parents=True, exist_ok=False)
    rebuilt: list[Rebuilt] = []
    refused: list[NotRebuilt] = []
    if plan.rearchive:
        aside = directory / "archive"
        aside.mkdir()
        rebuilt, refused = rebuild(settings, plan.rearchive, aside)
        _write_lines(
            directory / "repair.jsonl",
            [
                *(
                    {
                        "at": datetime.now(UTC).isoformat(),
                        "action": "rearchive_from_kafka",
                        "segment": r.where,
                        "records": r.segment.records,
                        "sha256": r.segment.sha256,
                        "set_aside": None if r.set_aside is None else str(r.set_aside),
                    }
                    for r in rebuilt
                ),
                *(
                    {
                        "at": datetime.now(UTC).isoformat(),
                        "action": "not_rearchived",
                        "segment": n.where,
                        "why": n.why,
                    }
                    for n in refused
                ),
            ],
        )
    result = RepairResult(directory, 0, 0, rebuilt, refused)
    if plan.project is not None and plan.reload:
        result = _reload(settings, plan, directory, result)
    if plan.project is not None and plan.from_source and source is not None:
        result.source = repair_from_source(
            settings, plan.run_id, plan.project, source[0], source[1], plan.from_source, directory
        )
        _write_lines(
            directory / "repair.jsonl",
            [
                *(
                    {
                        "at": datetime.now(UTC).isoformat(),
                        "action": "upload_from_source",
                        "path": r.path,
                        "key": r.key,
                        "set_aside": None if r.set_aside is None else str(r.set_aside),
                    }
                    for r in result.source.resupplied
                ),
                *(
                    {"at": datetime.now(UTC).isoformat(), "action": "not_from_source", **asdict(n)}
                    for n in result.source.refused
                ),
                *(
                    {
                        "at": datetime.now(UTC).isoformat(),
                        "action": "verified_again",
                        "path": v.path,
                        "status": v.status.value,
                    }
                    for v in result.source.verified
                ),
            ],
        )
    if plan.project is not None and plan.republish and source is not None:
        result.republished = _republish(settings, plan, source)
        _write_lines(
            directory / "repair.jsonl",
            [{"at": datetime.now(UTC).isoformat(), "action": "republish", **result.republished}],
        )
    if plan.resume is not None:
        result.resumed = _resume(settings, plan.resume)
        _write_lines(
            directory / "repair.jsonl",
            [{"at": datetime.now(UTC).isoformat(), "action": "resume_run", **result.resumed}],
        )
    return result


def _republish(
    settings: Settings, plan: RepairPlan, source: tuple[str, str | None]
) -> dict[str, Any]:
    """Publish again from the source the files the archive still lacks (after the
    segments were rebuilt), then bring the groups up to them."""
    assert plan.project is not None  # noqa: S101 - the caller checked
    project, wanted = plan.project, set(plan.republish)
    lines = archived_files(settings, plan.run_id, project, wanted)
    still = wanted - {line.event["path"] for line in lines}
    if not still:
        return {"paths": [], "groups": {}}
    options = IngestOptions() if plan.record is None else options_of(plan.record)
    summary = republish(settings, *source, project, plan.run_id, options, sorted(still))
    if not summary.ok:
        raise HeadraceError(
            f"publishing again from {source[0]}: {len(summary.failed)} files were not"
            f" published ({next(iter(summary.failed.values()))})"
        )
    groups = {name: catch_up(settings, name) for name in ("archive", "load", "verify")}
    return {"paths": sorted(still), "counts": summary.counts.model_dump(), "groups": groups}


def _resume(settings: Settings, record: RunRecord) -> dict[str, Any]:
    """Resume an unfinished run with the options it started with, then bring the groups
    that the proof reads up to the end of their topics (or wait for their deployments)."""
    request = IngestRequest(
        source=record.source,
        run_id=record.run_id,
        options=options_of(record),
        ref=record.commit,
        project=record.project,
        resume=True,
    )
    summary = run_ingest(settings, request)
    if not summary.ok:
        raise HeadraceError(
            f"resuming run {record.run_id}: {len(summary.failed)} files were not published"
        )
    groups = {name: catch_up(settings, name) for name in ("archive", "load", "verify")}
    return {"ingest": summary.as_json(), "groups": groups}


def _reload(
    settings: Settings, plan: RepairPlan, directory: Path, result: RepairResult
) -> RepairResult:
    assert plan.project is not None  # noqa: S101 - the caller checked
    project, wanted = plan.project, set(plan.reload)
    rows = _archived_rows(settings, plan.run_id, project, wanted)
    lost = wanted - {r.path for r in rows}
    if lost:
        raise HeadraceError(
            f"{len(lost)} files of run {plan.run_id} are not in the archive any more"
            f" ({', '.join(sorted(lost)[:3])}): no row was changed"
        )
    with open_database(settings, migrate=True) as db:
        before = {
            r["path"]: r for r in db.query(project, include_deleted=True) if r["path"] in wanted
        }
        _write_lines(
            directory / "backup.jsonl",
            (
                {"row": _row_json(before[p])} if p in before else {"absent": [project, p]}
                for p in sorted(wanted)
            ),
        )
        written = db.replace(rows)
    _write_lines(
        directory / "repair.jsonl",
        (
            {
                "at": datetime.now(UTC).isoformat(),
                "action": "reload_from_archive",
                "project": project,
                "path": row.path,
                "before": _summary(before.get(row.path)),
                "after": {"event_id": row.event_id, "sha256": row.sha256, "size": row.size},
            }
            for row in rows
        ),
    )
    return replace(result, written=written, backed_up=len(before))


def restore(settings: Settings, directory: Path) -> int:
    """Put the rows of a repair's backup back (and remove those that were absent)."""
    path = directory / "backup.jsonl"
    if not path.is_file():
        raise HeadraceError(f"{path} does not exist: not a repair's directory")
    rows: list[FileRow] = []
    absent: list[tuple[str, str]] = []
    for line in path.read_bytes().splitlines():
        entry = orjson.loads(line)
        if "absent" in entry:
            absent.append((entry["absent"][0], entry["absent"][1]))
        else:
            rows.append(_row_of(entry["row"]))
    with open_database(settings, migrate=True) as db:
        db.replace(rows, absent)
    return len(rows) + len(absent)


def _archived_rows(settings: Settings, run_id: str, project: str, paths: set[str]) -> list[FileRow]:
    """The run's archived events of ``paths``, as the load group would store them."""
    content = ContentMode(settings.load.content)
    row_content = load_row_content(settings)
    newest: dict[str, FileRow] = {}
    try:
        for line in archived_files(settings, run_id, project, paths):
            row = file_row(
                line.event, line.topic, line.partition, line.offset, content, line.timestamp_ms
            )
            row = row_content.complete(row, line.event)
            newest[row.path] = row
    finally:
        row_content.close()
    return [newest[p] for p in sorted(newest)]


def _write_lines(path: Path, entries: Iterable[dict[str, Any]]) -> None:
    with path.open("ab") as out:
        for entry in entries:
            out.write(orjson.dumps(entry) + b"\n")


def _row_json(row: dict[str, Any]) -> dict[str, Any]:
    data = {k: v for k, v in row.items() if k in FileRow._fields}
    if data.get("content") is not None:
        data["content"] = base64.b64encode(data["content"]).decode()
    return data


def _row_of(data: dict[str, Any]) -> FileRow:
    values = dict(data)
    if values.get("content") is not None:
        values["content"] = base64.b64decode(values["content"])
    return FileRow(**values)


def _summary(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"event_id": row["event_id"], "sha256": row["sha256"], "size": row["size"]}
