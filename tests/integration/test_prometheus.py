"""The local stack's Prometheus scrapes a running group that registered itself through
file-based service discovery, and reads back the count the group itself reports."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from headrace.settings import KafkaSettings, RegistrySettings, Settings
from headrace.stack.manager import Stack
from tests.integration.test_archive import (
    consumer_process,
    env,  # noqa: F401 - the fixture, reused
    publish,
    wait_for,
)

RECORDS = 120


def watched_dir(base: str) -> Path:
    """The directory the running Prometheus discovers targets in, from its own config."""
    answer = httpx.get(f"{base}/api/v1/status/config", timeout=10).json()
    config = yaml.safe_load(answer["data"]["yaml"])
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "headrace"]
    (pattern,) = job["file_sd_configs"][0]["files"]
    return Path(pattern).parent


def query(base: str, promql: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{base}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def own_count(port: int, group: str) -> float:
    """The group's count of records processed, from its own /metrics."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return -1
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "headrace_records_processed_total" and sample.labels["group"] == group
    )


def registrations(directory: Path, group: str) -> list[dict[str, Any]]:
    found = []
    for path in directory.glob("*.json"):
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        found += [e for e in entries if e["labels"].get("group") == group]
    return found


def test_prometheus_scrapes_a_registered_group_and_its_count_matches(
    env: dict[str, str],  # noqa: F811 - the fixture
    kafka: KafkaSettings,
    registry: RegistrySettings,
    prometheus: Settings,
) -> None:
    base = Stack(prometheus).services["prometheus"].address
    targets = watched_dir(base)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    group = env["HEADRACE_CONSUMER__GROUP_PREFIX"] + "archive"
    serving = {
        **env,
        "HEADRACE_CONSUMER__METRICS_PORT": str(port),
        "HEADRACE_METRICS__TARGETS_DIR": str(targets),
    }
    publish(env, kafka, registry, 0, RECORDS)
    proc = consumer_process(serving)
    try:
        wait_for(lambda: registrations(targets, group) != [], 60, "the group's target file")
        (entry,) = registrations(targets, group)
        assert entry["targets"] == [f"127.0.0.1:{port}"]
        assert entry["labels"]["pid"] == str(proc.pid)
        wait_for(lambda: own_count(port, group) == RECORDS, 90, f"{RECORDS} records processed")

        promql = f'sum(headrace_records_processed_total{{group="{group}"}})'
        seen: list[float] = []

        def scraped_all() -> bool:
            result = query(base, promql)
            seen[:] = [float(r["value"][1]) for r in result]
            return seen == [RECORDS]

        wait_for(scraped_all, 60, f"Prometheus to read {RECORDS} (last read {seen})")
        assert own_count(port, group) == RECORDS  # nothing more arrived meanwhile
        # A long-running group keeps its lag current: the file events' 3 partitions at 0.
        topic = env["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"]
        lag = f'headrace_consumer_lag{{group="{group}", topic="{topic}"}}'
        wait_for(
            lambda: [float(r["value"][1]) for r in query(base, lag)] == [0.0] * 3,
            60,
            "the lag of the file events' 3 partitions to read 0",
        )
        # The target's labels ride on every series of the process, its own included.
        (series,) = query(base, f'process_start_time_seconds{{group="{group}"}}')
        labels = series["metric"]
        assert (labels["job"], labels["component"], labels["pid"]) == (
            "headrace",
            "consumer",
            str(proc.pid),
        )
        assert labels["host"] == socket.gethostname()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert registrations(targets, group) == []  # unregistered when it stopped
