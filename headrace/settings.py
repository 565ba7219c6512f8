"""One typed settings object, read at start-up and never at import time.

Values come, highest first, from keyword arguments, ``HEADRACE_``
environment variables with ``__`` between section and key
(``HEADRACE_KAFKA__BOOTSTRAP_SERVERS``), an optional TOML config file
(``--config`` or ``HEADRACE_CONFIG``), then the defaults, which point at the
local stack. Unknown keys are rejected, and so are environment variables
``HEADRACE_SECTION__KEY`` whose section is unknown (``HEADRACE_`` variables
without ``__``, such as ``HEADRACE_CONFIG`` or ``HEADRACE_FAILPOINTS``, are
not settings and are left alone); secrets are ``SecretStr`` and print masked.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from headrace.errors import ConfigError

CONFIG_ENV = "HEADRACE_CONFIG"
# The repository root: the local stack keeps its recipes in compose/local/ and
# its state in .headrace/ beside them.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TopicSettings(_Section):
    file_events: str = "headrace.file-events"
    run_events: str = "headrace.run-events"
    verifications: str = "headrace.verifications"
    dead_letter: str = "headrace.dead-letter"
    row_events: str = "headrace.row-events"  # the table archiver's RowEvents


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "headrace"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # Topics get more partitions than one machine needs: adding partitions
    # later reshuffles keys. Production wants 64 or more.
    partitions: int = Field(default=12, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    topics: TopicSettings = TopicSettings()
    # Passed to librdkafka as given, for keys this object does not model.
    extra: dict[str, str] = Field(default_factory=dict)


class RegistrySettings(_Section):
    url: str = "http://127.0.0.1:8081/apis/ccompat/v7"
    username: str | None = None
    password: SecretStr | None = None


class ObjectStoreSettings(_Section):
    endpoint: str = "127.0.0.1:9000"
    access_key: str = "headrace"
    secret_key: SecretStr = SecretStr("headrace-secret")
    secure: bool = False
    region: str = "us-east-1"
    bucket: str = "headrace-content"


class PostgresSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 15432
    user: str = "headrace"
    password: SecretStr = SecretStr("headrace")
    database: str = "headrace"

    def conninfo(self, database: str | None = None) -> str:
        """A libpq connection string, password included: never log it.

        Every value is quoted: a password with a space or a quote is still one
        value, not a parse error that quotes a piece of it, nor more options.
        """
        values = {
            "host": self.host,
            "port": str(self.port),
            "user": self.user,
            "password": self.password.get_secret_value(),
            "dbname": database or self.database,
            "connect_timeout": "5",
        }
        return " ".join(f"{key}={_libpq_quoted(value)}" for key, value in values.items())

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class SourceSettings(_Section):
    """A PostgreSQL database whose tables ``headrace archive-table`` archives.

    ``[sources.NAME]`` in the config file, ``HEADRACE_SOURCES__NAME__HOST`` (and
    ``__PORT``, ``__DATABASE``, ``__USER``, ``__PASSWORD``, ``__SSLMODE``) in the
    environment; names are lower case (environment variables are read case-blind).
    Or one built from a ``--dsn`` string: :meth:`from_dsn`.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=5432, ge=1, le=65535)
    database: str
    user: str
    password: SecretStr | None = None
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = (
        None
    )
    connect_timeout_s: int = Field(default=10, ge=1)

    def conninfo(self) -> str:
        """A libpq connection string, password included: never log it (every value quoted)."""
        values = {
            "host": self.host,
            "port": str(self.port),
            "user": self.user,
            "dbname": self.database,
            "connect_timeout": str(self.connect_timeout_s),
        }
        if self.password is not None:
            values["password"] = self.password.get_secret_value()
        if self.sslmode is not None:
            values["sslmode"] = self.sslmode
        return " ".join(f"{key}={_libpq_quoted(value)}" for key, value in values.items())

    @property
    def address(self) -> str:
        """``user@host:port/database``: what a message may say about the source."""
        return f"{self.user}@{self.host}:{self.port}/{self.database}"

    @classmethod
    def from_dsn(cls, dsn: str) -> SourceSettings:
        """A source from a libpq string (``host=... dbname=...``) or a ``postgresql://`` URI.

        A ConfigError never quotes the string (it may hold the password), nor libpq's
        message (which may quote it). Keys beyond the ones modelled are refused.
        """
        import psycopg  # lazily: settings load without the driver

        try:
            parts = psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.Error:  # libpq's message may quote the password: not shown
            raise ConfigError(
                "--dsn is not a valid PostgreSQL connection string "
                "(key=value pairs or a postgresql:// URI)"
            ) from None
        names = {"dbname": "database", "connect_timeout": "connect_timeout_s"}
        values = {names.get(key, key): value for key, value in parts.items() if value is not None}
        unknown = sorted(set(values) - set(cls.model_fields))
        if unknown:
            raise ConfigError(f"--dsn: unsupported connection options {', '.join(unknown)}")
        for required in ("database", "user"):
            if required not in values:
                key = "dbname" if required == "database" else required
                raise ConfigError(f"--dsn must name {key}")
        try:
            return cls(**values)
        except ValidationError as exc:
            where = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"--dsn: {where}") from None


class TablesSettings(_Section):
    """The table archiver (``headrace archive-table``): its cursors and its locks."""

    # A cursor per (source, table): where an interrupted run continues.
    state_dir: Path = PROJECT_ROOT / ".headrace" / "tables"
    batch_size: int = Field(default=10_000, ge=1)
    # A batch waits this long for a table lock (an ALTER TABLE in progress), then fails.
    lock_timeout_s: float = Field(default=10.0, gt=0)
    # Any one statement of a batch (its SELECT, a DELETE) is cancelled after this long.
    statement_timeout_s: float = Field(default=300.0, gt=0)
    # A batch's transaction (its rows locked) lasts at most this long: past it, the
    # batch is rolled back and its rows stay in the table.
    batch_timeout_s: float = Field(default=1800.0, gt=0)
    # `archive-table --metrics-port` binds here.
    metrics_host: str = "127.0.0.1"


def _libpq_quoted(value: str) -> str:
    """``value`` as a libpq conninfo value: single-quoted, ``\\`` and ``'`` escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class GitCredential(_Section):
    """A token for the git remotes under one URL prefix (``https://host[:port][/path]``).

    Sent as HTTP basic auth (user ``username``, ``x-access-token`` when unset) to
    URLs under ``url_prefix`` only (storage/git_credentials.py), never stored in
    a URL, an event or a log line. An ``http://`` prefix needs ``allow_http``:
    the token would travel in clear text.
    """

    url_prefix: str
    token: SecretStr
    username: str | None = None
    allow_http: bool = False

    @field_validator("url_prefix")
    @classmethod
    def _a_prefix(cls, value: str) -> str:
        try:
            split = urlsplit(value)
            split.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError as exc:
            raise ValueError(f"not a URL ({exc})") from None
        if split.scheme.lower() not in ("http", "https") or not split.hostname:
            raise ValueError("must be https://host[:port][/path] (or http:// with allow_http)")
        if "@" in split.netloc or split.query or split.fragment:
            raise ValueError("must carry no user, password, query or fragment")
        return value

    @model_validator(mode="after")
    def _http_allowed(self) -> GitCredential:
        if urlsplit(self.url_prefix).scheme.lower() == "http" and not self.allow_http:
            why = f"{self.url_prefix} is plain http: set allow_http = true to send the token"
            raise ValueError(why + " in clear text, or use https")
        return self


SCOPE_YOUR_CREDENTIAL = (
    "git.token is no longer read, a token is sent only to the remotes it is for: give it "
    'a [[git.credentials]] entry with url_prefix = "https://host/" and token, or '
    """HEADRACE_GIT__CREDENTIALS='[{"url_prefix": "https://host/", "token": "..."}]'"""
)


class GitSettings(_Section):
    """Git sources: where clones are cached, and the credentials of private remotes."""

    cache_dir: Path = PROJECT_ROOT / ".headrace" / "cache" / "git"
    # Tokens, each sent only to URLs under its url_prefix (the longest prefix wins).
    credentials: tuple[GitCredential, ...] = ()
    # The clone cache's bound: whole repositories are evicted, least recently used first.
    cache_max_size: ByteSize = Field(default=ByteSize(50 * 1024**3), ge=0)
    clone_timeout_s: float = Field(default=300.0, gt=0)  # a clone, a fetch of many blobs
    timeout_s: float = Field(default=120.0, gt=0)  # any other git operation
    # Schemes a git reference in an event may use; anything else is refused. Local
    # paths and file:// are for tests and single-host setups only.
    allowed_schemes: tuple[Literal["https", "ssh", "http", "file"], ...] = ("https", "ssh")

    @model_validator(mode="before")
    @classmethod
    def _no_unscoped_token(cls, data: Any) -> Any:
        if isinstance(data, dict) and "token" in data:
            raise PydanticCustomError("unscoped_token", SCOPE_YOUR_CREDENTIAL)
        return data


class IngestSettings(_Section):
    """The bulk-ingest producer: where it keeps its runs, and its transactions."""

    # A record, a journal of committed transactions and a cursor per run (resume,
    # --incremental, `headrace runs list`).
    state_dir: Path = PROJECT_ROOT / ".headrace" / "runs"
    # Off only to measure what transactions cost: a resumed run may then repeat the
    # batch that was in flight when the first attempt died.
    transactions: bool = True
    # The broker aborts a transaction left open longer (a producer that died mid-batch);
    # read_committed consumers wait for it until then. At most the broker's
    # transaction.max.timeout.ms (15 min by default).
    transaction_timeout_s: float = Field(default=60.0, ge=1, le=900)
    # A batch is committed after this long even if it holds fewer files or bytes.
    transaction_max_s: float = Field(default=10.0, gt=0)
    # Worker processes preparing inline files (read, sha256, encoding, Avro), the
    # default of `headrace ingest --workers`; 0: one per core, started only if the
    # load average leaves a core idle. 1: no workers.
    workers: int = Field(default=0, ge=0, le=256)
    # Journals of runs finished longer ago are removed (records and cursors stay).
    checkpoint_max_age_days: float = Field(default=7.0, ge=0)
    # Prices of the run's cost estimate (producers/costs.py), per GiB.
    cost_storage_gb_month: float = Field(default=0.023, ge=0)
    cost_transfer_gb: float = Field(default=0.09, ge=0)
    cost_currency: str = "USD"


class CacheSettings(_Section):
    """The content cache and the resolver that fills it (``headrace consume cache``)."""

    dir: Path = PROJECT_ROOT / ".headrace" / "cache" / "content"
    # The cache's bound: least recently used entries are evicted to stay under it.
    max_size: ByteSize = Field(default=ByteSize(10 * 1024**3), ge=0)
    # A download larger than this is refused before it completes (and never cached).
    max_object_size: ByteSize = Field(default=ByteSize(5 * 1024**3), ge=0)
    # Content up to this size is returned as bytes; larger content as a verified file.
    stream_threshold: ByteSize = Field(default=ByteSize(16 * 1024**2), ge=0)
    download_timeout_s: float = Field(default=60.0, gt=0)  # connect and per-read timeout
    download_attempts: int = Field(default=3, ge=1)  # transient failures, with backoff
    parallel_downloads: int = Field(default=4, ge=1)  # the cache group's downloads in flight
    # Object-store endpoints (host:port) a presigned URL may point at, besides
    # object_store.endpoint; any other host is refused.
    allowed_endpoints: tuple[str, ...] = ()


class ConsumerSettings(_Section):
    """The consumer runtime: group ids, batches, and the metrics endpoint."""

    group_prefix: str = "headrace."  # the archive group is "headrace.archive"
    batch_size: int = Field(default=5000, ge=1)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9400, ge=0)  # 0: no /metrics and /healthz endpoint
    # An event whose own time lies more than this after its Kafka record's timestamp is
    # dead-lettered EVENT_TIME_SKEW: a time in the future would win every comparison.
    max_event_time_skew_s: float = Field(default=86_400.0, gt=0)
    # Static membership (KIP-345): a process is group.instance.id group.host.slot, so a
    # process restarted after a crash takes its predecessor's partitions at once, not
    # after the dead member's session expired (docs/reliability.md).
    static_membership: bool = True
    # How long a member that stopped heartbeating (died) keeps its partitions; the broker
    # allows 6 s to 30 min (group.min/max.session.timeout.ms). librdkafka's default: 45 s.
    session_timeout_s: float = Field(default=10.0, ge=1)
    # How often a member tells the coordinator it lives, and learns of a rebalance: a
    # member that joins waits up to this long for the others to give partitions back.
    # librdkafka's default is 3 s; it must stay below the session timeout.
    heartbeat_interval_s: float = Field(default=1.0, gt=0)
    # The processes' slots on this host (lock files): their group.instance.id (and the
    # verify group's transactional.id).
    instances_dir: Path = PROJECT_ROOT / ".headrace" / "instances"
    # How partitions are handed out (partition.assignment.strategy); all members of a
    # group must use the same one. roundrobin spreads every topic over the members;
    # cooperative-sticky (KIP-429) moves only the partitions that change owner but
    # balances counts, not topics: members that joined 100 ms apart ended with a
    # topic each, one of them doing all the file events (docs/performance.md).
    # Static membership already keeps a restart from moving any partition.
    assignment_strategy: Literal["roundrobin", "cooperative-sticky", "range"] = "roundrobin"
    # `headrace consume GROUP` runs this many worker processes of the group (--processes).
    processes: int = Field(default=1, ge=1, le=256)
    # A worker that dies is started again after a backoff (1 s doubling to 30 s); one
    # that dies this many times within restart_window_s makes the supervisor give up.
    restart_max: int = Field(default=5, ge=1)
    restart_window_s: float = Field(default=300.0, gt=0)
    # How long a stopping worker may take to commit what is durable before SIGKILL.
    stop_timeout_s: float = Field(default=60.0, gt=0)
    # A group process that finds no broker (or, the load group, no database) at its
    # start asks again for this long (a broker restarting: 24 s once under chaos in
    # CI) before it stops with one line.
    startup_wait_s: float = Field(default=60.0, ge=0)

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> ConsumerSettings:
        if self.heartbeat_interval_s >= self.session_timeout_s:
            raise ValueError(
                f"heartbeat_interval_s ({self.heartbeat_interval_s:g}) must be less than"
                f" session_timeout_s ({self.session_timeout_s:g})"
            )
        return self


class ArchiveSettings(_Section):
    """The archive group's storage: where, how compressed, and when segments close."""

    root: Path = PROJECT_ROOT / ".headrace" / "archive"
    compression: Literal["zstd", "gzip", "none"] = "zstd"
    max_segment_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    max_segment_records: int = Field(default=100_000, ge=1)
    max_segment_age_s: float = Field(default=300.0, gt=0)
    # The row-events topic's segments close this soon after their first record:
    # `headrace archive-table` deletes a batch only once a published segment holds it.
    row_events_segment_age_s: float = Field(default=1.0, gt=0)
    # > 0: publish segments plain, compress them with `headrace archive compress`
    # once their day is older than this.
    plain_days: int = Field(default=0, ge=0)
    # Retention moves old days here (object storage); nothing is ever deleted.
    cold_bucket: str = "headrace-archive"
    # Where published segments live: "local" (under root) or "object_store" (a bucket
    # of object_store's service, same layout under prefix; open segments are staged
    # locally under staging until they are published).
    backend: Literal["local", "object_store"] = "local"
    bucket: str = "headrace-archive-primary"
    prefix: str = ""
    staging: Path = PROJECT_ROOT / ".headrace" / "archive-staging"


class LoadSettings(_Section):
    """The load group's database: which backend, what content it keeps, how deletes land."""

    backend: Literal["sqlite", "postgres"] = "sqlite"  # postgres: the [postgres] section
    sqlite_path: Path = PROJECT_ROOT / ".headrace" / "db" / "headrace.sqlite3"
    # inline_and_refs: inline bytes and the reference of the rest; refs_only: no bytes;
    # resolve_all: every file's bytes, resolved (and verified) through the resolver.
    content: Literal["inline_and_refs", "refs_only", "resolve_all"] = "inline_and_refs"
    # mark: a deleted file stays as a row marked deleted; remove: the row goes, a
    # tombstone keeps an older event from bringing it back.
    deletes: Literal["mark", "remove"] = "mark"
    batch_size: int = Field(default=5000, ge=1)
    # PostgreSQL: the schema the tables live in (created if missing).
    postgres_schema: str = Field(default="public", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    # `headrace db backup` writes here; the load group too, every backup_interval_s
    # (0: never), pruning its backups older than backup_keep_days (0: keeps all).
    backups_dir: Path = PROJECT_ROOT / ".headrace" / "backups"
    backup_interval_s: float = Field(default=0.0, ge=0)
    backup_keep_days: int = Field(default=0, ge=0)


class VerifySettings(_Section):
    """``headrace verify``: where repairs keep their backups and logs."""

    repairs_dir: Path = PROJECT_ROOT / ".headrace" / "repairs"
    # The verify group's instance slots (lock files): its transactional ids. Unset: the
    # consumer's (consumer.instances_dir), so its transactional id is its member id.
    instances_dir: Path | None = None


class HistorySettings(_Section):
    """The operational history (``headrace metrics``): every process's own figures."""

    enabled: bool = True  # false: nothing is recorded
    backend: Literal["sqlite", "postgres"] = "sqlite"  # postgres: the [postgres] section
    sqlite_path: Path = PROJECT_ROOT / ".headrace" / "history" / "history.sqlite3"
    # PostgreSQL: the schema of the samples table (created if missing).
    postgres_schema: str = Field(default="headrace_history", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    # Samples wait in memory this long at most before a background flush writes them:
    # a crash loses at most this long plus one flush's duration.
    flush_interval_s: float = Field(default=2.0, gt=0)
    # The in-memory queue's bound: when full, the oldest sample goes (and is counted).
    queue_size: int = Field(default=100_000, ge=1)
    retention_days: float = Field(default=30.0, ge=0)  # older samples are deleted; 0 keeps all
    process_interval_s: float = Field(default=60.0, gt=0)  # CPU, memory, open files, uptime


class StackSettings(_Section):
    """Where the local stack lives and which versions it installs."""

    home: Path = PROJECT_ROOT / ".headrace"
    recipes: Path = PROJECT_ROOT / "compose" / "local"
    kafka_version: str = "4.1.1"
    kafka_controller_port: int = 9093
    registry_version: str = "3.3.3"
    registry_management_port: int = 8091
    # MinIO's community edition has no semver tags: an exact pseudo-version.
    minio_version: str = "v0.0.0-20260212201848-7aac2a2c5b7c"
    minio_console_port: int = 9001
    java_home: Path | None = None
    start_timeout_s: float = Field(default=120.0, gt=0)
    # Prometheus (Debian's package) on 127.0.0.1; it scrapes what registers in
    # metrics.targets_dir, every this many seconds.
    prometheus_port: int = Field(default=9090, ge=1, le=65535)
    prometheus_scrape_interval_s: float = Field(default=5.0, gt=0)


class MetricsSettings(_Section):
    """Prometheus' file-based service discovery: where processes announce /metrics."""

    # Each process serving /metrics keeps a JSON target file here while it serves
    # (headrace/discovery.py); the local stack's Prometheus reads *.json in it.
    targets_dir: Path = PROJECT_ROOT / ".headrace" / "prometheus" / "targets"


class HealthSettings(_Section):
    """``headrace doctor`` and the groups' ``/readyz``: what counts as healthy."""

    # The archive, caches and database disks need this much free space (doctor's
    # --min-free-gb overrides it for one run).
    min_free_gb: float = Field(default=10.0, ge=0)
    # /readyz answers from checks refreshed this often, off the consumer loop.
    ready_interval_s: float = Field(default=5.0, gt=0)
    # How long the Kafka check waits for a broker (the registry, object store and
    # PostgreSQL checks give up after their clients' own connect timeouts).
    check_timeout_s: float = Field(default=3.0, gt=0)


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HEADRACE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        toml_file=None,
    )

    kafka: KafkaSettings = KafkaSettings()
    registry: RegistrySettings = RegistrySettings()
    object_store: ObjectStoreSettings = ObjectStoreSettings()
    postgres: PostgresSettings = PostgresSettings()
    git: GitSettings = GitSettings()
    ingest: IngestSettings = IngestSettings()
    cache: CacheSettings = CacheSettings()
    consumer: ConsumerSettings = ConsumerSettings()
    archive: ArchiveSettings = ArchiveSettings()
    load: LoadSettings = LoadSettings()
    verify: VerifySettings = VerifySettings()
    # Databases the table archiver reads, by name: [sources.NAME].
    sources: dict[str, SourceSettings] = Field(default_factory=dict)
    tables: TablesSettings = TablesSettings()
    history: HistorySettings = HistorySettings()
    stack: StackSettings = StackSettings()
    health: HealthSettings = HealthSettings()
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    def secrets(self) -> list[str]:
        """Every secret configured, wherever it was read from: for the log redactor."""
        values = [
            self.kafka.sasl_password,
            self.registry.password,
            self.object_store.secret_key,
            self.postgres.password,
            *(credential.token for credential in self.git.credentials),
            *(source.password for source in self.sources.values()),
        ]
        return [v.get_secret_value() for v in values if v is not None and v.get_secret_value()]

    def source(self, name: str) -> SourceSettings:
        """The source ``[sources.NAME]``; an unknown name is a one-line ConfigError."""
        found = self.sources.get(name) or self.sources.get(name.lower())
        if found is None:
            known = ", ".join(sorted(self.sources)) or "none is configured"
            raise ConfigError(
                f"no source {name!r} in settings (known: {known}): add [sources.{name}] "
                "or pass --dsn"
            )
        return found

    def masked(self) -> dict[str, Any]:
        """The settings as plain data, every secret shown as ``**********``."""
        return self.model_dump(mode="json")


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read the settings once, at start-up; a bad value is a ConfigError."""
    unknown = unknown_sections(os.environ)
    if unknown:
        raise ConfigError("invalid settings: " + "; ".join(unknown))
    path = config_file or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    cls: type[Settings] = Settings
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        config = SettingsConfigDict(**{**Settings.model_config, "toml_file": path})
        cls = type("Settings", (Settings,), {"model_config": config})
    try:
        built = cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None
    except (OSError, ValueError) as exc:  # unreadable or malformed TOML
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if cls is Settings:
        return built
    # As a plain Settings, the values as read: the class made for the file cannot be
    # pickled, and worker processes (verify run's) are handed the settings.
    values = {name: getattr(built, name) for name in Settings.model_fields}
    return Settings.model_construct(_fields_set=built.model_fields_set, **values)


def unknown_sections(environ: Mapping[str, str]) -> list[str]:
    """Why each ``HEADRACE_SECTION__KEY`` variable of an unknown section is refused.

    pydantic-settings ignores them (it only looks up the names it knows), so a typo
    such as ``HEADRACE_KAFAK__PARTITIONS`` would silently change nothing."""
    sections = sorted(Settings.model_fields)
    problems = []
    for name in sorted(environ):
        head, sep, _key = name.upper().removeprefix("HEADRACE_").partition("__")
        if not name.upper().startswith("HEADRACE_") or not sep or head.lower() in sections:
            continue
        close = difflib.get_close_matches(head.lower(), sections, n=1)
        hint = f"did you mean {close[0]}?" if close else f"the sections: {', '.join(sections)}"
        problems.append(f"{name}: no settings section {head.lower()!r} ({hint})")
    return problems


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        parts.append(f"{where}: {err['msg']}")
    return "invalid settings: " + "; ".join(parts)
