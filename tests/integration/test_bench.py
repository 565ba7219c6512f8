"""Benchmarks run small here, to prove they still work; their figures go to docs."""

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

from headrace.kafka import ensure_topics, make_admin
from headrace.settings import (
    PROJECT_ROOT,
    KafkaSettings,
    ObjectStoreSettings,
    PostgresSettings,
    RegistrySettings,
)


def bench(
    script: str, *args: str, env: dict[str, str], timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """``bench/<script> args`` in a child with only ``env`` (and a PATH); exit 0 asserted."""
    done = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "bench" / script), *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_kafka_clients_benchmark_reports_ratios(kafka: KafkaSettings) -> None:
    env = {"HEADRACE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers}
    done = bench("kafka_clients.py", "--records", "3000", "--size", "256", env=env)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("3,000 records of 256 B")
    assert sum("x baseline" in line for line in lines) == 2
    assert sum(line.rstrip().endswith("baseline") for line in lines) == 4


def test_ingest_benchmark_runs_small(
    kafka: KafkaSettings, registry: RegistrySettings, object_store: ObjectStoreSettings
) -> None:
    env = {
        "HEADRACE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "HEADRACE_REGISTRY__URL": registry.url,
        "HEADRACE_OBJECT_STORE__ENDPOINT": object_store.endpoint,
    }
    done = bench("ingest.py", "--small", "300", "--large", "1", "--skip-stdlib", env=env)
    out = done.stdout
    assert "300 files inline" in out and "x baseline" in out and "peak RSS" in out
    assert "re-ingest 0 uploads, 301 already stored" in out


def test_archive_benchmark_runs_small(kafka: KafkaSettings, registry: RegistrySettings) -> None:
    env = {
        "HEADRACE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "HEADRACE_REGISTRY__URL": registry.url,
        "HEADRACE_CONSUMER__METRICS_PORT": "0",
    }
    done = bench("archive.py", "--events", "3000", env=env)
    assert "archive group" in done.stdout and "x baseline" in done.stdout
    assert "% saved" in done.stdout


def test_load_benchmark_runs_small(
    kafka: KafkaSettings, registry: RegistrySettings, postgres: PostgresSettings
) -> None:
    env = {
        "HEADRACE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "HEADRACE_REGISTRY__URL": registry.url,
        "HEADRACE_POSTGRES__HOST": postgres.host,
        "HEADRACE_POSTGRES__PORT": str(postgres.port),
        "HEADRACE_CONSUMER__METRICS_PORT": "0",
    }
    done = bench("load.py", "--events", "2000", env=env)
    out = done.stdout
    assert "PostgreSQL COPY (plain)" in out and out.count("x baseline") == 4
    assert out.count("every row unchanged") == 2


def test_cache_benchmark_runs_small(object_store: ObjectStoreSettings) -> None:
    env = {
        "HEADRACE_OBJECT_STORE__ENDPOINT": object_store.endpoint,
        "HEADRACE_CONSUMER__METRICS_PORT": "0",
    }
    done = bench("cache.py", "--small", "--json", env=env)
    text, figures = done.stderr, json.loads(done.stdout)
    for heading in ("1. warm hits", "2. cold fetch", "3. git", "4. hit rate", "5. memory"):
        assert heading in text
    assert text.count("baseline") >= 12 and "peak RSS" in text
    assert figures["warm_hits"]["resolver.resolve (hit)"]["p99_ms"] > 0
    assert figures["cold_fetch"][0]["objects"] == 20 and figures["cold_fetch"][0]["ratio"] > 0
    assert figures["git"]["files"] == 100 and figures["git"]["cold"]["first_read_blob_s"] > 0
    assert 0 < figures["hit_rate"]["hit_rate"] <= figures["hit_rate"]["unbounded_hit_rate"]
    assert figures["memory"]["streamed"] and figures["memory"]["resolve_rss_mib"] > 0


def test_verify_benchmark_runs_small(
    kafka: KafkaSettings, registry: RegistrySettings, object_store: ObjectStoreSettings
) -> None:
    env = {
        "HEADRACE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "HEADRACE_REGISTRY__URL": registry.url,
        "HEADRACE_OBJECT_STORE__ENDPOINT": object_store.endpoint,
    }
    done = bench("verify.py", "--small", env=env, timeout=300)
    out = done.stdout
    assert "published 2,000 inline FileEvents" in out
    assert "exit 0, ok=True" in out
    assert "verify run" in out and "peak RSS" in out and "together" in out
    assert "bare archive read" in out and "baseline" in out


def test_recovery_benchmark_runs_small(kafka: KafkaSettings, registry: RegistrySettings) -> None:
    env = {
        "HEADRACE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "HEADRACE_REGISTRY__URL": registry.url,
    }
    # --baseline-session-s 6: the broker's shortest session, the baseline in seconds, not 45
    done = bench("recovery.py", "--trials", "1", "--baseline-session-s", "6", env=env)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("SIGKILL of `headrace consume archive`")
    assert sum("kill to assigned/consuming" in line for line in lines) == 3
    assert sum("x baseline" in line for line in lines) == 2


def test_history_benchmark_runs_small(kafka: KafkaSettings, registry: RegistrySettings) -> None:
    env = {
        "HEADRACE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "HEADRACE_REGISTRY__URL": registry.url,
        "PYTHONPATH": str(PROJECT_ROOT),  # this checkout's code, whatever is installed
    }
    done = bench("history.py", "--events", "2000", "--rounds", "1", "--calls", "20", env=env)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("record():") and "no-op method:" in lines[0]
    assert "history off" in lines[-1] and "slower with history" in lines[-1]


def test_db_backup_benchmark_runs_small() -> None:
    env = {"PYTHONPATH": str(PROJECT_ROOT), "HEADRACE_HISTORY__ENABLED": "false"}
    done = bench("db_backup.py", "--gb", "0.02", "--seconds", "1", env=env)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("database:") and "GB, built in" in lines[0]
    assert any(line.startswith("backup (VACUUM INTO") and "MB/s" in line for line in lines)
    assert any("of alone)" in line for line in lines)
    assert lines[-1].startswith("proof: integrity_check ok;")


def test_archive_table_benchmark_runs_small(
    kafka: KafkaSettings, registry: RegistrySettings, postgres: PostgresSettings
) -> None:
    env = {
        "HEADRACE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "HEADRACE_REGISTRY__URL": registry.url,
        "HEADRACE_POSTGRES__HOST": postgres.host,
        "HEADRACE_POSTGRES__PORT": str(postgres.port),
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    done = bench("archive_table.py", "--rows", "3000", "--batch-size", "1000", env=env)
    lines = done.stdout.splitlines()
    assert any(line.startswith("baseline COPY TO STDOUT:") for line in lines)
    assert any("rows/s" in line and "of COPY's rows/s" in line for line in lines)
    assert lines[-1].startswith("proof: 0 rows left in the table; 3,000 archived, 3,000 of 3,000")


def test_assignors_probe_shows_how_each_spreads_the_topics(kafka: KafkaSettings) -> None:
    tag = uuid.uuid4().hex[:8]
    topics = [f"test.assign-{tag}.hot", f"test.assign-{tag}.cold"]
    ensure_topics(make_admin(kafka), topics, partitions=4, replication_factor=1)
    env = {"HEADRACE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers}
    spread = bench("assignors.py", "--strategy", "roundrobin", "--offset", "0.3",
                   "--seconds", "8", *topics, env=env)  # fmt: skip
    for member in (0, 1):  # each topic over both
        assert f"member {member}: {topics[1]} 2, {topics[0]} 2" in spread.stdout, spread.stdout
    sticky = bench("assignors.py", "--strategy", "cooperative-sticky", "--offset", "0.3",
                   "--seconds", "8", *topics, env=env)  # fmt: skip
    # The second member, joining after the first generation, is handed a whole topic.
    held = [line for line in sticky.stdout.splitlines() if line.startswith("  member")]
    assert len(held) == 2 and all(line.count(" 4") == 1 for line in held), sticky.stdout


def test_stages_benchmark_reports_every_stage_of_both_groups(
    kafka: KafkaSettings, registry: RegistrySettings, postgres: PostgresSettings
) -> None:
    env = {
        "HEADRACE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "HEADRACE_REGISTRY__URL": registry.url,
        "HEADRACE_POSTGRES__HOST": postgres.host,
        "HEADRACE_POSTGRES__PORT": str(postgres.port),
        "HEADRACE_CONSUMER__METRICS_PORT": "0",
    }
    done = bench("stages.py", "--events", "2000", env=env)
    out = done.stdout
    assert "x bare consumer" in out and "x Database.write" in out and "x COPY" in out
    for stage in ("poll", "decode", "build", "write", "commit"):
        assert out.count(f" {stage} ") == 2, out
    assert out.count("s/100k") == 2


def test_scaling_benchmark_runs_small(
    kafka: KafkaSettings, registry: RegistrySettings, postgres: PostgresSettings
) -> None:
    env = {
        "HEADRACE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "HEADRACE_REGISTRY__URL": registry.url,
        "HEADRACE_POSTGRES__HOST": postgres.host,
        "HEADRACE_POSTGRES__PORT": str(postgres.port),
        "HEADRACE_CONSUMER__METRICS_PORT": "0",
        "PYTHONPATH": str(PROJECT_ROOT),  # the groups' subprocesses run this checkout
    }
    args = ("--events", "2000", "--processes", "1", "2", "--rounds", "1")
    done = bench("scaling.py", *args, env=env, timeout=300)
    out = done.stdout
    assert "archive group, 2,000 events" in out and "load group -> PostgreSQL, 2,000 rows" in out
    for run in ("archive group x1", "archive group x2", "load group x1", "load group x2"):
        assert f"round 1 {run}: the group wrote 2,000 records; exactly once: yes" in out
    assert "exactly once: NO" not in out
    assert out.count("  target: ") == 3  # archive x2: two; load x2 on small rows: one
    # Each run says how long its workers held their first assignment for the group.
    assert re.search(r"round 1 archive group x2: [\d,]+/s drain, .* held \d+\.\d\d s", out), out


def test_ingest_stage_and_pool_benchmarks_run_small(
    kafka: KafkaSettings, registry: RegistrySettings, tmp_path: Path
) -> None:
    env = {
        "HEADRACE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "HEADRACE_REGISTRY__URL": registry.url,
    }
    stages = bench("ingest_stages.py", "--small", "300", "--repeat", "1", env=env).stdout
    for stage in ("walk", "read", "hash", "encoding", "event+avro", "produce", "ingest"):
        assert f"  {stage} " in stages, stages
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(300):
        (tree / f"f{i}.py").write_text(f"print({i})\n")
    pool = bench("ingest_pool.py", "--tree", str(tree), "--rounds", "1", "--workers", "2", env=env)
    assert "300 files of" in pool.stdout
    for way in ("inline", "threads", "processes"):
        assert f"  {way} " in pool.stdout and "us a file" in pool.stdout, pool.stdout
