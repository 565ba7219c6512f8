"""Apicurio Registry 3.x serving the Confluent schema-registry API (ccompat v7)."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path
from urllib.parse import urlsplit

from headrace.errors import StackError
from headrace.stack.base import Port, Service
from headrace.stack.java import find_java
from headrace.stack.process import http_ok, maven, replacing

# Apicurio 3.3 is compiled for Java 21 (class file version 65).
REGISTRY_JAVA = 21


class Registry(Service):
    name = "registry"
    title = "Apicurio Registry (Confluent API)"

    @property
    def host_port(self) -> tuple[str, int]:
        url = urlsplit(self.settings.registry.url)
        return url.hostname or "127.0.0.1", url.port or 8081

    @property
    def address(self) -> str:
        return self.settings.registry.url

    @property
    def app(self) -> Path:
        return self.home / f"app-{self.settings.stack.registry_version}"

    def ports(self) -> list[Port]:
        host, port = self.host_port
        return [
            Port(host, port, "registry HTTP API", "HEADRACE_REGISTRY__URL"),
            Port(
                host,
                self.settings.stack.registry_management_port,
                "registry management",
                "HEADRACE_STACK__REGISTRY_MANAGEMENT_PORT",
            ),
        ]

    def installed(self) -> bool:
        return (self.app / "quarkus-run.jar").exists()

    def install(self) -> None:
        version = self.settings.stack.registry_version
        download = self.home / "download"
        shutil.rmtree(download, ignore_errors=True)
        maven(
            self.name,
            [
                "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy",
                f"-Dartifact=io.apicurio:apicurio-registry-app:{version}:tar.gz:all",
                f"-DoutputDirectory={download}",
            ],
            what=f"downloading Apicurio Registry {version} from Maven Central",
        )
        with replacing(self.app) as app:
            for archive in download.glob("*.tar.gz"):
                with tarfile.open(archive) as tar:
                    tar.extractall(app, filter="data")
            shutil.rmtree(download, ignore_errors=True)
            if not (app / "quarkus-run.jar").exists():
                raise StackError(
                    self.name, f"the Apicurio {version} archive has no quarkus-run.jar"
                )

    def launch(self) -> int:
        host, port = self.host_port
        java = find_java(self.name, REGISTRY_JAVA, self.settings.stack.java_home)
        # Ids are content ids: a registry that forgot its schemas after a
        # restart would decode Kafka's old messages with the wrong schema, so
        # its storage is an H2 file beside Kafka's data, not memory.
        database = self.home / "data" / "registry"
        return self.spawn(
            [
                str(java),
                "-Xms256m",
                "-Xmx768m",
                f"-Dquarkus.http.host={host}",
                f"-Dquarkus.http.port={port}",
                f"-Dquarkus.management.host={host}",
                f"-Dquarkus.management.port={self.settings.stack.registry_management_port}",
                # Apicurio's global rule defaults to NONE; Confluent's to BACKWARD.
                "-Dapicurio.rules.global.compatibility=BACKWARD",
                f"-Dapicurio.datasource.url=jdbc:h2:file:{database}",
                "-jar",
                "quarkus-run.jar",
            ],
            cwd=self.app,
        )

    def healthy(self) -> bool:
        return http_ok(f"{self.settings.registry.url}/subjects")
