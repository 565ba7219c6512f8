"""The verify group against the real stack: every file event's content checked, one
VerificationEvent each, exactly once."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import zstandard
from confluent_kafka import TopicPartition

from headrace.kafka import make_admin
from headrace.settings import (
    KafkaSettings,
    ObjectStoreSettings,
    RegistrySettings,
    load_settings,
)
from schemas.models import Op, VerificationEvent, VerificationStatus
from schemas.registry import make_registry_client
from schemas.serde import EventDeserializer
from storage.archive.reader import read
from storage.objectstore import open_storage
from tests.integration.test_ingest import file_events
from tests.integration.topics import read_topic
from tests.unit.test_cli import run


@pytest.fixture
def env(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kafka: KafkaSettings,
    registry: RegistrySettings,
    object_store: ObjectStoreSettings,
) -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    values = {
        "HEADRACE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "HEADRACE_KAFKA__PARTITIONS": "3",
        "HEADRACE_KAFKA__TOPICS__FILE_EVENTS": f"test.verify-{tag}.files",
        "HEADRACE_KAFKA__TOPICS__RUN_EVENTS": f"test.verify-{tag}.runs",
        "HEADRACE_KAFKA__TOPICS__VERIFICATIONS": f"test.verify-{tag}.verifications",
        "HEADRACE_KAFKA__TOPICS__DEAD_LETTER": f"test.verify-{tag}.dlq",
        "HEADRACE_REGISTRY__URL": registry.url,
        "HEADRACE_OBJECT_STORE__ENDPOINT": object_store.endpoint,
        "HEADRACE_OBJECT_STORE__BUCKET": f"test-verify-{tag}",
        "HEADRACE_CONSUMER__GROUP_PREFIX": f"test-{tag}.",
        "HEADRACE_CONSUMER__METRICS_PORT": "0",
        "HEADRACE_GIT__CACHE_DIR": str(tmp_path / "git-cache"),
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def verifications(
    kafka: KafkaSettings, registry: RegistrySettings, env: dict[str, str]
) -> list[VerificationEvent]:
    client = make_registry_client(registry)
    decode = EventDeserializer(client, VerificationEvent)
    try:
        topic = env["HEADRACE_KAFKA__TOPICS__VERIFICATIONS"]
        return read_topic(kafka, topic, lambda m: decode(m.value()))
    finally:
        client.close()


def test_the_verify_group_publishes_one_verification_per_event_with_its_outcome(
    tmp_path: Path,
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(6):
        (tree / f"small{i}.txt").write_text(f"small {i}\n")
    for name in ("kept.bin", "changed.bin", "gone.bin"):
        (tree / name).write_bytes(os.urandom(3000))
    code, _out, err = run(["ingest", str(tree), "--inline-limit", "1KiB"], capsys)
    assert code == 0, err
    (tree / "small0.txt").unlink()
    code, _out, err = run(["ingest", str(tree), "--inline-limit", "1KiB", "--incremental"], capsys)
    assert code == 0, err  # the second run: a delete, which has no content to verify

    events = {e.path: e for _k, e in file_events(kafka, registry, env) if e.object_ref}
    storage = open_storage(load_settings().object_store)
    try:
        changed = events["changed.bin"].object_ref
        assert changed is not None
        other = os.urandom(3000)
        storage.put(changed.key, other, sha256=hashlib.sha256(other).hexdigest())
        gone = events["gone.bin"].object_ref
        assert gone is not None
        storage.delete(gone.key)
    finally:
        storage.close()

    code, out, err = run(["consume", "verify", "--until-caught-up"], capsys)
    assert code == 0, err
    found = verifications(kafka, registry, env)
    by_path = {v.path: v for v in found}
    assert len(found) == len(by_path) == 9  # one each: the delete has none
    assert {p: v.status for p, v in by_path.items() if v.status is not VerificationStatus.OK} == {
        "changed.bin": VerificationStatus.MISMATCH,
        "gone.bin": VerificationStatus.MISSING,
    }
    mismatch = by_path["changed.bin"]
    assert mismatch.actual_checksum == hashlib.sha256(other).hexdigest()
    assert mismatch.expected_checksum == events["changed.bin"].checksum
    assert mismatch.actual_size == 3000 and mismatch.detail
    ok = by_path["kept.bin"]
    assert ok.actual_checksum == ok.expected_checksum == events["kept.bin"].checksum
    upserts = {e.path: e for _k, e in file_events(kafka, registry, env) if e.op is Op.UPSERT}
    assert {v.path: v.event_id for v in found} == {p: e.event_id for p, e in upserts.items()}

    # Run again: the offsets went with the verifications, so nothing is verified twice.
    code, out, err = run(["consume", "verify", "--until-caught-up"], capsys)
    assert code == 0, err
    assert len(verifications(kafka, registry, env)) == 9


@pytest.fixture
def pipeline(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The verify test's env, with an archive and a database of its own."""
    values = {
        **env,
        "HEADRACE_ARCHIVE__ROOT": str(tmp_path / "archive"),
        "HEADRACE_ARCHIVE__MAX_SEGMENT_RECORDS": "4",  # segments to remove, one by one
        "HEADRACE_LOAD__BACKEND": "sqlite",
        "HEADRACE_LOAD__SQLITE_PATH": str(tmp_path / "load.sqlite3"),
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def all_groups(capsys: pytest.CaptureFixture[str]) -> None:
    for group in ("archive", "load", "verify", "archive"):  # archive: the verifications too
        code, _out, err = run(["consume", group, "--until-caught-up"], capsys)
        assert code == 0, err


def verify_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code, out, err = run(["verify", "run", *argv, "--json"], capsys)
    assert code in (0, 1), err
    report = json.loads(out)
    assert isinstance(report, dict)
    return code, report


def kinds(report: dict[str, Any]) -> set[tuple[str, str | None]]:
    return {(d["kind"], d["path"]) for d in report["discrepancies"]}


@pytest.fixture
def ingested(
    tmp_path: Path, pipeline: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> tuple[Path, str]:
    tree = tmp_path / "tree"
    (tree / "src").mkdir(parents=True)
    for i in range(8):
        (tree / "src" / f"m{i}.py").write_text(f"print({i})\n")
    for name in ("a.bin", "b.bin"):
        (tree / name).write_bytes(os.urandom(5000))
    code, out, err = run(["ingest", str(tree), "--inline-limit", "1KiB", "--json"], capsys)
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    all_groups(capsys)
    return tree, str(run_id)


def test_a_clean_run_verifies_green_on_every_side(
    ingested: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    tree, run_id = ingested
    code, report = verify_json(capsys, run_id, "--against-source")
    assert (code, report["ok"], report["discrepancies"]) == (0, True, [])
    expected = {
        "inline": 8,
        "object_storage": 2,
        "git_reference": 0,
        "deleted": 0,
        "files": 10,
    }
    for side in ("manifest", "source", "published", "archived", "loaded", "verified"):
        assert report["counts"][side] == expected, side
    assert report["digest"]["manifest"] == report["digest"]["archived"]
    code, out, _err = run(["verify", "run", "--project", "tree", "--latest"], capsys)
    assert code == 0 and f"OK: every side agrees with run {run_id}" in out


def test_a_deleted_row_and_a_wrong_sha256_in_the_database_are_named(
    ingested: tuple[Path, str], pipeline: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _tree, run_id = ingested
    with sqlite3.connect(pipeline["HEADRACE_LOAD__SQLITE_PATH"]) as db:
        db.execute("DELETE FROM files WHERE path = 'src/m1.py'")
        db.execute("UPDATE files SET sha256 = ? WHERE path = 'src/m2.py'", ("0" * 64,))
    db.close()
    code, report = verify_json(capsys, run_id)
    assert code == 1 and not report["ok"]
    assert kinds(report) == {
        ("missing_in_database", "src/m1.py"),
        ("checksum_mismatch", "src/m2.py"),
        ("count_mismatch", None),
    }
    assert report["counts"]["loaded"]["inline"] == 6

    code, planned = verify_json(capsys, run_id, "--repair", "--dry-run")
    assert code == 1 and planned["repair"]["reload_from_archive"] == ["src/m1.py", "src/m2.py"]
    assert verify_json(capsys, run_id)[1]["discrepancies"] == report["discrepancies"]  # unchanged

    code, repaired = verify_json(capsys, run_id, "--repair", "--yes")
    assert code == 0 and repaired["ok"], repaired["discrepancies"]
    assert repaired["repair"]["written"] == 2
    assert not repaired["before"]["ok"]
    log = [json.loads(line) for line in Path(repaired["repair"]["log"]).read_text().splitlines()]
    assert [(e["path"], e["before"] and e["before"]["sha256"]) for e in log] == [
        ("src/m1.py", None),
        ("src/m2.py", "0" * 64),
    ]
    assert verify_json(capsys, run_id)[0] == 0

    # The backup puts the rows back as they were before the repair.
    code, out, err = run(["verify", "restore", repaired["repair"]["directory"], "--yes"], capsys)
    assert code == 0 and out.startswith("restored 2 rows"), err
    assert kinds(verify_json(capsys, run_id)[1]) == kinds(report)


def test_a_repair_asks_first_and_says_what_it_cannot_fix(
    ingested: tuple[Path, str], pipeline: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _tree, run_id = ingested
    code, out, err = run(["verify", "run", run_id, "--repair"], capsys)
    assert code == 0 and "OK: every side agrees" in out, err  # green: nothing to ask
    with sqlite3.connect(pipeline["HEADRACE_LOAD__SQLITE_PATH"]) as db:
        db.execute("DELETE FROM files WHERE path = 'src/m3.py'")
        # a row of the run that no side but the database holds
        columns = [row[1] for row in db.execute("PRAGMA table_info(files)")]
        picked = ", ".join("'ghost.txt'" if c == "path" else c for c in columns)
        db.execute(
            f"INSERT INTO files ({', '.join(columns)})"  # noqa: S608 - the table's own columns
            f" SELECT {picked} FROM files WHERE path = 'src/m4.py'"
        )
    db.close()

    code, _out, err = run(["verify", "run", run_id, "--repair"], capsys)  # stdin: no terminal
    assert code == 2 and "confirm on a terminal or give --yes" in err
    code, planned = verify_json(capsys, run_id, "--repair", "--dry-run")
    assert code == 1 and planned["repair"]["reload_from_archive"] == ["src/m3.py"]
    assert planned["repair"]["rearchive_from_kafka"] == []
    cannot = {(c["kind"], c["path"]): c["why"] for c in planned["repair"]["cannot_repair"]}
    assert cannot[("extra", "ghost.txt")] == "extra files are reported, never removed"
    code, out, _err = run(["verify", "run", run_id, "--repair", "--dry-run"], capsys)
    assert code == 1
    assert "repair: reload 1 row from the archive" in out
    assert "cannot repair extra ghost.txt: extra files are reported, never removed" in out


def test_an_object_changed_in_the_store_fails_its_verification(
    ingested: tuple[Path, str], kafka: KafkaSettings, registry: RegistrySettings,
    env: dict[str, str], capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    _tree, run_id = ingested
    # A second pass of the verify group over a changed object: consumed anew by a group
    # of its own, as a re-verification would be.
    events = {e.path: e for _k, e in file_events(kafka, registry, env) if e.object_ref}
    ref = events["a.bin"].object_ref
    assert ref is not None
    storage = open_storage(load_settings().object_store)
    try:
        other = os.urandom(5000)
        storage.put(ref.key, other, sha256=hashlib.sha256(other).hexdigest())
    finally:
        storage.close()
    os.environ["HEADRACE_CONSUMER__GROUP_PREFIX"] += "again."
    for group in ("verify", "archive"):
        code, _out, err = run(["consume", group, "--until-caught-up"], capsys)
        assert code == 0, err
    code, report = verify_json(capsys, run_id)
    assert code == 1
    assert ("verification_failed", "a.bin") in kinds(report)

    # The source still holds the file: the repair uploads it again and verifies it again.
    code, repaired = verify_json(capsys, run_id, "--repair", "--yes")
    assert code == 0 and repaired["ok"], repaired["discrepancies"]
    fixed = repaired["repair"]["source"]
    assert fixed["resupplied"] == [{"path": "a.bin", "key": ref.key}]
    assert fixed["verified_again"] == {"a.bin": "OK"}
    aside = Path(repaired["repair"]["directory"]) / "objects" / ref.key
    assert aside.read_bytes() == other  # the bytes it replaced, kept
    storage = open_storage(load_settings().object_store)
    try:
        assert storage.get(ref.key) == (_tree / "a.bin").read_bytes()
    finally:
        storage.close()


def test_a_removed_archive_segment_is_missing_and_rebuilt_from_kafka(
    ingested: tuple[Path, str], pipeline: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _tree, run_id = ingested
    topic = pipeline["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"]
    root = Path(pipeline["HEADRACE_ARCHIVE__ROOT"])
    lines = list(read(root, topic=topic))
    assert len(lines) == 10
    victim = lines[0].segment  # at most 4 records a segment: a part of the run
    in_victim = {line.event["path"] for line in lines if line.segment == victim}
    [segment] = [p for p in (root / topic).rglob(victim)]
    published = segment.read_bytes()
    segment.unlink()
    code, report = verify_json(capsys, run_id)
    assert code == 1
    missing = {p for k, p in kinds(report) if k == "missing_in_archive"}
    assert missing == in_victim
    assert report["counts"]["archived"]["files"] == 10 - len(in_victim)
    # Kafka holds them: the database and the verifications are checked against it, green
    assert {d["side"] for d in report["discrepancies"]} == {"archived"}
    counts = report["counts"]
    assert counts["loaded"] == counts["verified"] == counts["manifest"]

    code, planned = verify_json(capsys, run_id, "--repair", "--dry-run")
    assert code == 1 and not segment.exists()
    [rebuild] = planned["repair"]["rearchive_from_kafka"]
    assert (rebuild["segment"], rebuild["damage"]) == (str(segment), "listed, not on disk")
    code, repaired = verify_json(capsys, run_id, "--repair", "--yes")
    assert code == 0 and repaired["ok"], repaired["discrepancies"]
    assert repaired["repair"]["rearchived"] == [str(segment)]
    assert segment.read_bytes() == published  # byte for byte the segment it was
    code, out, err = run(["archive", "verify"], capsys)
    assert code == 0 and "OK: the archive at" in out, out + err


def test_an_event_deleted_from_its_segment_is_missing_and_put_back(
    ingested: tuple[Path, str], pipeline: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _tree, run_id = ingested
    topic = pipeline["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"]
    root = Path(pipeline["HEADRACE_ARCHIVE__ROOT"])
    lines = list(read(root, topic=topic))
    victim = next(line for line in lines if sum(o.segment == line.segment for o in lines) > 1)
    [segment] = [p for p in (root / topic).rglob(victim.segment)]
    published = segment.read_bytes()
    assert segment.suffix == ".zst"
    plain = zstandard.ZstdDecompressor().stream_reader(published).read().splitlines(True)
    kept = [line for line in plain if json.loads(line)["offset"] != victim.offset]
    assert len(kept) == len(plain) - 1
    segment.write_bytes(zstandard.ZstdCompressor().compress(b"".join(kept)))
    code, report = verify_json(capsys, run_id)
    assert code == 1
    assert {p for k, p in kinds(report) if k == "missing_in_archive"} == {victim.event["path"]}

    code, repaired = verify_json(capsys, run_id, "--repair", "--yes")
    assert code == 0 and repaired["ok"], repaired["discrepancies"]
    assert segment.read_bytes() == published
    aside = Path(repaired["repair"]["directory"]) / "archive" / segment.name
    assert aside.read_bytes() != published  # the damaged file, kept
    log = [json.loads(line) for line in Path(repaired["repair"]["log"]).read_text().splitlines()]
    assert [(e["action"], e["segment"], e["set_aside"]) for e in log] == [
        ("rearchive_from_kafka", str(segment), str(aside))
    ]


def test_events_gone_from_kafka_and_the_archive_are_published_again_from_the_source(
    ingested: tuple[Path, str], pipeline: dict[str, str], kafka: KafkaSettings,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    _tree, run_id = ingested
    topic = pipeline["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"]
    root = Path(pipeline["HEADRACE_ARCHIVE__ROOT"])
    lines = list(read(root, topic=topic))
    victim = lines[0]
    lost = {line.event["path"] for line in lines if line.segment == victim.segment}
    [segment] = [p for p in (root / topic).rglob(victim.segment)]
    segment.unlink()
    # ... and retention took the partition's records up to the end of that segment.
    last = max(line.offset for line in lines if line.segment == victim.segment)
    admin = make_admin(kafka)
    [done] = admin.delete_records([TopicPartition(topic, victim.partition, last + 1)]).values()
    done.result(timeout=30)

    code, report = verify_json(capsys, run_id, "--against-source")
    assert code == 1
    assert {p for k, p in kinds(report) if k == "missing_in_archive"} == lost
    code, planned = verify_json(capsys, run_id, "--against-source", "--repair", "--dry-run")
    assert planned["repair"]["republish_from_source"] == sorted(lost)

    code, repaired = verify_json(capsys, run_id, "--against-source", "--repair", "--yes")
    assert code == 0 and repaired["ok"], repaired["discrepancies"]
    [refused] = repaired["repair"]["not_rearchived"]
    assert refused["segment"] == str(segment) and "gone from Kafka" in refused["why"]
    assert repaired["repair"]["republished"]["paths"] == sorted(lost)
    assert repaired["counts"]["archived"] == repaired["counts"]["manifest"]
    # the files' events are the run's own again: the same event ids
    again = {line.event["path"]: line.event["event_id"] for line in read(root, topic=topic)}
    assert {p: again[p] for p in lost} == {
        line.event["path"]: line.event["event_id"] for line in lines if line.event["path"] in lost
    }


def test_a_topic_cut_by_retention_still_verifies_green_with_a_note(
    ingested: tuple[Path, str], pipeline: dict[str, str], kafka: KafkaSettings,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    _tree, run_id = ingested
    topic = pipeline["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"]
    root = Path(pipeline["HEADRACE_ARCHIVE__ROOT"])
    lines = list(read(root, topic=topic))
    cut = lines[0].partition  # retention took this partition's records; the archive has them
    end = max(line.offset for line in lines if line.partition == cut) + 1
    admin = make_admin(kafka)
    [done] = admin.delete_records([TopicPartition(topic, cut, end)]).values()
    done.result(timeout=30)
    code, report = verify_json(capsys, run_id)
    assert (code, report["discrepancies"]) == (0, []), report["discrepancies"]
    gone = sum(line.partition == cut for line in lines)
    assert report["counts"]["published"]["files"] == 10 - gone
    assert any("no longer starts at offset 0" in note for note in report["notes"])


def test_a_run_that_never_completed_is_reported_incomplete(
    tmp_path: Path, pipeline: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    tree = tmp_path / "half"
    tree.mkdir()
    for i in range(12):
        (tree / f"f{i:02d}.txt").write_text(f"{i}\n")
    argv = [sys.executable, "-m", "headrace", "ingest", str(tree), "--run-id", "half"]
    argv += ["--transaction-files", "5"]
    env = {**os.environ, "HEADRACE_FAILPOINTS": "ingest.produced=8"}
    killed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == -9, killed.stderr
    all_groups(capsys)
    code, report = verify_json(capsys, "half")
    assert code == 1 and report["completed"] is False
    assert ("run_incomplete", None) in kinds(report)
    assert report["counts"]["archived"]["files"] == 5  # the one batch that committed

    # The run's state is on this machine: the repair resumes it and brings the groups up.
    code, repaired = verify_json(capsys, "half", "--repair", "--yes")
    assert code == 0 and repaired["ok"], repaired["discrepancies"]
    resumed = repaired["repair"]["resumed"]
    assert resumed["ingest"]["resumed"] == 5  # the committed batch was not read again
    assert repaired["counts"]["archived"]["files"] == 12
    assert repaired["counts"]["verified"]["files"] == 12


def test_a_verify_group_killed_before_its_commit_verifies_each_event_once(
    tmp_path: Path,
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(9):
        (tree / f"f{i}.txt").write_text(f"{i}\n")
    code, _out, err = run(["ingest", str(tree)], capsys)
    assert code == 0, err
    argv = [sys.executable, "-m", "headrace", "consume", "verify", "--until-caught-up"]
    environment = {
        **os.environ,
        "HEADRACE_CONSUMER__BATCH_SIZE": "3",
        "HEADRACE_FAILPOINTS": "verify.before_commit=2",  # the second batch, delivered
        # the dead member leaves the group when its session expires: the shortest
        "HEADRACE_KAFKA__EXTRA": '{"session.timeout.ms": "6000"}',
    }
    killed = subprocess.run(
        argv, env=environment, capture_output=True, text=True, timeout=120, check=False
    )
    assert killed.returncode == -9, killed.stderr
    code, _out, err = run(["consume", "verify", "--until-caught-up"], capsys)
    assert code == 0, err
    found = verifications(kafka, registry, env)  # read_committed: the aborted batch is gone
    assert sorted(v.path for v in found) == [f"f{i}.txt" for i in range(9)]
    assert {v.status for v in found} == {VerificationStatus.OK}
