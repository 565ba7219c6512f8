"""Apache Kafka 4.x in KRaft mode: one node that is both broker and controller."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import KafkaException

from headrace.kafka import make_admin
from headrace.stack.base import Port, Service
from headrace.stack.java import find_java
from headrace.stack.process import maven, port_open, replacing, run_tool, split_host_port


def new_cluster_id(token_bytes: Callable[[int], bytes] = secrets.token_bytes) -> str:
    """A random KRaft cluster id, as `kafka-storage random-uuid` makes one.

    It is 16 random bytes in URL-safe base64, drawn again while it starts
    with '-' (Kafka's own `Uuid.randomUuid` does the same): the storage
    tool's argument parser would read such an id as an option and fail
    with "argument --cluster-id/-t: expected one argument", once in 64
    starts.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(token_bytes(16)).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


class Kafka(Service):
    name = "kafka"
    title = "Apache Kafka (KRaft)"

    @property
    def host_port(self) -> tuple[str, int]:
        return split_host_port(self.settings.kafka.bootstrap_servers, 9092)

    @property
    def address(self) -> str:
        host, port = self.host_port
        return f"{host}:{port}"

    @property
    def libs(self) -> Path:
        return self.home / f"libs-{self.settings.stack.kafka_version}"

    def ports(self) -> list[Port]:
        host, port = self.host_port
        return [
            Port(host, port, "Kafka broker", "HEADRACE_KAFKA__BOOTSTRAP_SERVERS"),
            Port(
                host,
                self.settings.stack.kafka_controller_port,
                "Kafka controller",
                "HEADRACE_STACK__KAFKA_CONTROLLER_PORT",
            ),
        ]

    def installed(self) -> bool:
        return self.libs.is_dir()

    def install(self) -> None:
        version = self.settings.stack.kafka_version
        with replacing(self.libs) as libs:
            maven(
                self.name,
                [
                    "-f",
                    str(self.settings.stack.recipes / "kafka" / "pom.xml"),
                    "dependency:copy-dependencies",
                    "-DincludeScope=runtime",
                    f"-DoutputDirectory={libs}",
                    f"-Dkafka.version={version}",
                ],
                what=f"downloading Kafka {version} from Maven Central",
            )

    def _write_config(self) -> Path:
        host, port = self.host_port
        controller = f"{host}:{self.settings.stack.kafka_controller_port}"
        data = self.home / "data"
        config = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": controller,
            "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{controller}",
            "advertised.listeners": f"PLAINTEXT://{host}:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            # One node: every replication factor and min ISR is 1.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Two cores: small internal topics and no join delay keep groups fast.
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Room for 5 MiB producer batches (inline content).
            "message.max.bytes": str(8 * 1024 * 1024),
        }
        path = self.home / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in config.items()))
        return path

    def _java(self) -> list[str]:
        java = find_java(self.name, 17, self.settings.stack.java_home)
        log4j = self.settings.stack.recipes / "kafka" / "log4j2.properties"
        return [
            str(java),
            "-Xms512m",
            "-Xmx1g",
            "-XX:+UseG1GC",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            f"{self.libs}/*",
        ]

    def launch(self) -> int:
        config = self._write_config()
        if not (self.home / "data" / "meta.properties").exists():
            cluster_id = new_cluster_id()
            run_tool(
                self.name,
                [
                    *self._java(),
                    "kafka.tools.StorageTool",
                    "format",
                    "--standalone",
                    "-t",
                    cluster_id,
                    "-c",
                    str(config),
                ],
                what="formatting the KRaft storage",
            )
        return self.spawn([*self._java(), "kafka.Kafka", str(config)])

    def healthy(self) -> bool:
        host, port = self.host_port
        if not port_open(host, port):
            return False
        try:
            metadata = make_admin(self.settings.kafka).list_topics(timeout=3)
        except KafkaException:
            return False
        return bool(metadata.brokers)
