"""The stack as a whole: install what is missing, start in order, stop in reverse."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from headrace.errors import StackError
from headrace.settings import Settings
from headrace.stack.base import Service, ServiceStatus
from headrace.stack.kafka import Kafka
from headrace.stack.minio import MinIO
from headrace.stack.postgres import Postgres
from headrace.stack.prometheus import Prometheus
from headrace.stack.registry import Registry

log = logging.getLogger(__name__)

# Start order; stop order is the reverse.
SERVICES: tuple[type[Service], ...] = (Postgres, MinIO, Kafka, Registry, Prometheus)
SERVICE_NAMES = tuple(s.name for s in SERVICES)


@dataclass(frozen=True)
class Outcome:
    name: str
    title: str
    action: str
    address: str
    pid: int | None


class Stack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.services = {cls.name: cls(settings) for cls in SERVICES}

    def select(self, names: Iterable[str] = ()) -> list[Service]:
        wanted = list(names) or list(SERVICE_NAMES)
        unknown = [n for n in wanted if n not in self.services]
        if unknown:
            raise StackError(unknown[0], f"no such service; choose from {', '.join(SERVICE_NAMES)}")
        return [s for name, s in self.services.items() if name in wanted]

    def up(
        self, names: Iterable[str] = (), progress: Callable[[str], None] = lambda _msg: None
    ) -> list[Outcome]:
        services = self.select(names)
        stopped = [s for s in services if s.pid() is None]
        for service in stopped:  # before any download: a taken port fails fast
            service.check_ports_free()
        missing = [s for s in stopped if not s.installed()]
        if missing:
            progress("installing " + ", ".join(s.name for s in missing))
            # Downloads and the MinIO build overlap; each is independent.
            with ThreadPoolExecutor(max_workers=len(missing)) as pool:
                for future in [pool.submit(s.install) for s in missing]:
                    future.result()
        outcomes = []
        for service in services:
            progress(f"starting {service.name}")
            action = service.up()
            log.debug("%s %s at %s", service.name, action, service.address)
            outcomes.append(
                Outcome(service.name, service.title, action, service.address, service.pid())
            )
        return outcomes

    def down(self, names: Iterable[str] = ()) -> list[tuple[str, bool]]:
        return [(s.name, s.down()) for s in reversed(self.select(names))]

    def status(self, names: Iterable[str] = ()) -> list[ServiceStatus]:
        return [s.status() for s in self.select(names)]
