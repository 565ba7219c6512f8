"""What every headrace registry holds besides its own metrics: the process's figures.

prometheus-client's ProcessCollector (``process_cpu_seconds_total``,
``process_resident_memory_bytes``, ``process_virtual_memory_bytes``,
``process_open_fds``, ``process_max_fds``, ``process_start_time_seconds``: uptime is
``time() - process_start_time_seconds``) and PlatformCollector (``python_info``).
These keep their standard names (no ``headrace_`` prefix), so that dashboards
made for any Prometheus client read them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector


def process_registry() -> CollectorRegistry:
    """A registry of its own (not the library's global one) with the process collectors."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry
