"""The Grafana dashboard queries only metrics headrace exports, from the provisioned
data source; the names come from the registries the code builds, not a list."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from consumers.cache.metrics import CacheMetrics
from consumers.metrics import Metrics
from consumers.verify.sink import VerifyMetrics
from headrace.settings import PROJECT_ROOT
from producers.tables.metrics import TableMetrics

PROVISIONING = PROJECT_ROOT / "compose" / "grafana" / "provisioning"
DASHBOARD = PROVISIONING / "dashboards" / "headrace.json"

# The sample names Prometheus stores for a metric family of each type.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset"}
PROMQL_WORDS |= {"bool", "and", "or", "unless", "inf", "nan"}


def registries() -> Iterator[CollectorRegistry]:
    """Every registry a headrace process serves, with every metric the code puts on it."""
    group = Metrics("headrace.cache")
    CacheMetrics(group.registry, group.group)
    VerifyMetrics(group.registry, group.group)
    yield group.registry
    yield TableMetrics("source", "public.table").registry


def exported() -> set[str]:
    names = set()
    for registry in registries():
        for family in registry.collect():
            names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (regexes, label values)
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges, $__rate_interval
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", expr)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        rest = expr[match.end() :].lstrip()
        if rest.startswith("(") or match.group() in PROMQL_WORDS:
            continue  # a function or a keyword
        names.add(match.group())
    return names


def panels(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in node.get("panels", []):
        yield panel
        yield from panels(panel)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def test_the_expression_parser_finds_metric_names() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (group, le) (rate(a_bucket{x=~"b.*"}[$__rate_interval])))'
        " / on (group) (time() - c_seconds offset 5m) + sum without (le) (d)"
    )
    assert metric_names(expr) == {"a_bucket", "c_seconds", "d"}


def test_every_metric_the_dashboard_queries_is_exported(dashboard: dict[str, Any]) -> None:
    names = exported()
    assert {"headrace_records_processed_total", "process_cpu_seconds_total"} <= names
    used: dict[str, set[str]] = {}
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            for name in metric_names(target["expr"]):
                used.setdefault(name, set()).add(panel["title"])
    assert len(used) >= 10
    unknown = {name: sorted(titles) for name, titles in used.items() if name not in names}
    assert unknown == {}


def test_the_dashboard_has_the_panels_operators_look_for(dashboard: dict[str, Any]) -> None:
    titles = " | ".join(p["title"].lower() for p in panels(dashboard))
    for wanted in ("lag", "throughput", "dead letters", "cache hit rate", "ingest runs"):
        assert wanted in titles
    ingest = next(p for p in panels(dashboard) if p["title"] == "Ingest runs")
    assert "exports no metrics of its own yet" in ingest["description"]


def test_every_panel_reads_the_provisioned_data_source(dashboard: dict[str, Any]) -> None:
    sources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "headrace.yml").read_text())
    (entry,) = provider["providers"]
    assert Path(entry["options"]["path"]).name == DASHBOARD.parent.name
    for panel in panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}
            assert all(t["datasource"]["uid"] == source["uid"] for t in panel["targets"])
