"""MinIO, built from source through the Go module proxy."""

from __future__ import annotations

import shutil
from pathlib import Path

from headrace.errors import StackError
from headrace.stack.base import Port, Service
from headrace.stack.process import http_ok, run_tool, split_host_port

MODULE = "github.com/minio/minio"


class MinIO(Service):
    name = "minio"
    title = "MinIO (S3)"

    @property
    def host_port(self) -> tuple[str, int]:
        return split_host_port(self.settings.object_store.endpoint, 9000)

    @property
    def address(self) -> str:
        scheme = "https" if self.settings.object_store.secure else "http"
        return f"{scheme}://{self.settings.object_store.endpoint}"

    @property
    def binary(self) -> Path:
        return self.home / f"bin-{self.settings.stack.minio_version}" / "minio"

    def ports(self) -> list[Port]:
        host, port = self.host_port
        return [
            Port(host, port, "MinIO S3 API", "HEADRACE_OBJECT_STORE__ENDPOINT"),
            Port(
                host,
                self.settings.stack.minio_console_port,
                "MinIO console",
                "HEADRACE_STACK__MINIO_CONSOLE_PORT",
            ),
        ]

    def installed(self) -> bool:
        return self.binary.exists()

    def install(self) -> None:
        go = shutil.which("go")
        if go is None:
            raise StackError(self.name, "Go is needed to build MinIO from the Go module proxy")
        version = self.settings.stack.minio_version
        # Go's module and build caches make every build after the first a relink.
        run_tool(
            self.name,
            [go, "install", f"{MODULE}@{version}"],
            env={"GOBIN": str(self.binary.parent), "CGO_ENABLED": "0"},
            what=f"building MinIO {version} from the Go module proxy",
        )

    def launch(self) -> int:
        host, port = self.host_port
        store = self.settings.object_store
        return self.spawn(
            [
                str(self.binary),
                "server",
                str(self.home / "data"),
                "--quiet",
                "--address",
                f"{host}:{port}",
                "--console-address",
                f"{host}:{self.settings.stack.minio_console_port}",
            ],
            env={
                "MINIO_ROOT_USER": store.access_key,
                "MINIO_ROOT_PASSWORD": store.secret_key.get_secret_value(),
                "MINIO_UPDATE": "off",
            },
        )

    def healthy(self) -> bool:
        return http_ok(f"{self.address}/minio/health/live")
