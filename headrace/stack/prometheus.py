"""Prometheus from Debian's package, scraping every headrace process that registered.

The config is generated at each start (``.headrace/prometheus/prometheus.yml``):
one ``headrace`` job whose targets come from file-based service discovery,
the ``*.json`` files in ``metrics.targets_dir`` that serving processes keep
(headrace/discovery.py). Prometheus re-reads that directory every scrape
interval, so a process that starts or stops needs no reload.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from headrace.discovery import sweep
from headrace.settings import Settings
from headrace.stack.base import Port, Service
from headrace.stack.process import apt_install, http_ok

HOST = "127.0.0.1"
PACKAGE_BINARY = Path("/usr/bin/prometheus")  # where Debian's package puts it
JOB = "headrace"


def _duration(seconds: float) -> str:
    """A Prometheus duration: ``5s``, or ``1500ms``."""
    millis = max(round(seconds * 1000), 1)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def config_for(settings: Settings) -> dict[str, Any]:
    """The local stack's Prometheus config, as data."""
    every = _duration(settings.stack.prometheus_scrape_interval_s)
    return {
        "global": {"scrape_interval": every, "evaluation_interval": every},
        "scrape_configs": [
            {
                "job_name": JOB,
                # A process's own group label wins over its target's (the same value).
                "honor_labels": True,
                "file_sd_configs": [
                    {
                        "files": [str(settings.metrics.targets_dir / "*.json")],
                        "refresh_interval": every,
                    }
                ],
            }
        ],
    }


class Prometheus(Service):
    name = "prometheus"
    title = "Prometheus"

    @property
    def port(self) -> int:
        return self.settings.stack.prometheus_port

    @property
    def address(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def binary(self) -> Path:
        found = shutil.which("prometheus")
        return Path(found) if found else PACKAGE_BINARY

    @property
    def config_file(self) -> Path:
        return self.home / "prometheus.yml"

    def ports(self) -> list[Port]:
        return [Port(HOST, self.port, "Prometheus", "HEADRACE_STACK__PROMETHEUS_PORT")]

    def installed(self) -> bool:
        return self.binary.exists()

    def install(self) -> None:
        apt_install(self.name, "prometheus")

    def write_config(self) -> Path:
        targets = self.settings.metrics.targets_dir
        targets.mkdir(parents=True, exist_ok=True)
        sweep(targets)  # files left by processes that died unannounced
        self.home.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(yaml.safe_dump(config_for(self.settings), sort_keys=False))
        return self.config_file

    def launch(self) -> int:
        config = self.write_config()
        return self.spawn(
            [
                str(self.binary),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.home / 'data'}",
                f"--web.listen-address={HOST}:{self.port}",
            ]
        )

    def healthy(self) -> bool:
        return http_ok(f"{self.address}/-/ready")
