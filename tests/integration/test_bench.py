"""Benchmarks run small here, to prove they still work; their figures go to docs."""

import subprocess
import sys

from headrace.settings import PROJECT_ROOT, KafkaSettings


def test_kafka_clients_benchmark_reports_ratios(kafka: KafkaSettings) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "bench" / "kafka_clients.py"),
            "--records",
            "3000",
            "--size",
            "256",
        ],
        env={"PATH": "/usr/bin:/bin", "HEADRACE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("3,000 records of 256 B")
    assert sum("x baseline" in line for line in lines) == 2
    assert sum(line.rstrip().endswith("baseline") for line in lines) == 4
