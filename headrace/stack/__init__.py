"""The local stack: real Kafka, Apicurio Registry, MinIO and PostgreSQL on loopback.

For hosts without Docker. Each service installs itself from the package
registries this project may reach (Maven Central, the Go module proxy,
Debian's packages), keeps its state under ``.headrace/`` and is started,
probed and stopped by :class:`headrace.stack.manager.Stack`.
"""
