"""The load database's schema, as versioned migrations the loader applies itself.

Each :class:`Migration` holds its statements for both dialects. A backend's
``migrate()`` creates ``schema_migrations`` if needed, then applies each
missing migration in a transaction of its own, under a lock that makes a
second process wait and then find it applied (PostgreSQL: an advisory
transaction lock; SQLite: ``BEGIN IMMEDIATE``). Migrations are append-only:
a released one is never edited, a change is a new version.

Types: PostgreSQL keeps content as ``bytea``, times and offsets as ``bigint``,
``updated_at``/``committed_at`` as ``timestamptz``; SQLite as BLOB, INTEGER and
ISO-8601 UTC TEXT.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


# pg_advisory_xact_lock key for migrations: the first 8 bytes of a fixed name's hash.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"headrace.db.migrate").digest()[:8], "big", signed=True)

BOOTSTRAP_SQLITE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at TEXT NOT NULL
)"""

BOOTSTRAP_POSTGRES = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    description text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""

_STRATEGIES = "('INLINE', 'OBJECT_STORAGE', 'GIT_REFERENCE')"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "files, runs and the load ledger",
        sqlite=(
            f"""CREATE TABLE files (
    project TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL CONSTRAINT files_size_check CHECK (size >= 0),
    content_strategy TEXT CONSTRAINT files_strategy_check CHECK (content_strategy IN {_STRATEGIES}),
    content BLOB,
    content_ref TEXT,
    text_encoding TEXT,
    git_commit TEXT,
    deleted INTEGER NOT NULL CONSTRAINT files_deleted_check CHECK (deleted IN (0, 1)),
    event_id TEXT NOT NULL,
    event_time_ms INTEGER NOT NULL,
    run_id TEXT,
    source_topic TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (project, path),
    CONSTRAINT files_sha256_check CHECK (
        (length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*') OR (deleted = 1 AND sha256 = '')
    )
)""",
            """CREATE TABLE runs (
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL CONSTRAINT runs_kind_check CHECK (kind IN ('STARTED', 'COMPLETED')),
    project TEXT NOT NULL,
    source TEXT NOT NULL,
    "commit" TEXT,
    event_time_ms INTEGER NOT NULL,
    counts TEXT,
    digest TEXT,
    source_topic TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (run_id, kind)
)""",
            """CREATE TABLE load_ledger (
    group_name TEXT NOT NULL,
    topic TEXT NOT NULL,
    "partition" INTEGER NOT NULL,
    first_offset INTEGER NOT NULL,
    last_offset INTEGER NOT NULL,
    row_count INTEGER NOT NULL CONSTRAINT load_ledger_row_count_check CHECK (row_count >= 0),
    committed_at TEXT NOT NULL,
    PRIMARY KEY (group_name, topic, "partition", first_offset),
    CONSTRAINT load_ledger_offsets_check CHECK (first_offset >= 0 AND last_offset >= first_offset)
)""",
        ),
        postgres=(
            f"""CREATE TABLE files (
    project text NOT NULL,
    path text NOT NULL,
    sha256 text NOT NULL,
    size bigint NOT NULL CONSTRAINT files_size_check CHECK (size >= 0),
    content_strategy text CONSTRAINT files_strategy_check CHECK (content_strategy IN {_STRATEGIES}),
    content bytea,
    content_ref text,
    text_encoding text,
    git_commit text,
    deleted boolean NOT NULL,
    event_id text NOT NULL,
    event_time_ms bigint NOT NULL,
    run_id text,
    source_topic text NOT NULL,
    source_partition integer NOT NULL,
    source_offset bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project, path),
    CONSTRAINT files_sha256_check CHECK (sha256 ~ '^[0-9a-f]{{64}}$' OR (deleted AND sha256 = ''))
)""",
            """CREATE TABLE runs (
    run_id text NOT NULL,
    kind text NOT NULL CONSTRAINT runs_kind_check CHECK (kind IN ('STARTED', 'COMPLETED')),
    project text NOT NULL,
    source text NOT NULL,
    "commit" text,
    event_time_ms bigint NOT NULL,
    counts text,
    digest text,
    source_topic text NOT NULL,
    source_partition integer NOT NULL,
    source_offset bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, kind)
)""",
            """CREATE TABLE load_ledger (
    group_name text NOT NULL,
    topic text NOT NULL,
    "partition" integer NOT NULL,
    first_offset bigint NOT NULL,
    last_offset bigint NOT NULL,
    row_count integer NOT NULL CONSTRAINT load_ledger_row_count_check CHECK (row_count >= 0),
    committed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, topic, "partition", first_offset),
    CONSTRAINT load_ledger_offsets_check CHECK (first_offset >= 0 AND last_offset >= first_offset)
)""",
        ),
    ),
    Migration(
        2,
        "file tombstones, for deletes = remove",
        sqlite=(
            """CREATE TABLE file_tombstones (
    project TEXT NOT NULL,
    path TEXT NOT NULL,
    event_time_ms INTEGER NOT NULL,
    source_offset INTEGER NOT NULL,
    deleted_at TEXT NOT NULL,
    PRIMARY KEY (project, path)
)""",
        ),
        postgres=(
            """CREATE TABLE file_tombstones (
    project text NOT NULL,
    path text NOT NULL,
    event_time_ms bigint NOT NULL,
    source_offset bigint NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project, path)
)""",
        ),
    ),
)

LATEST = MIGRATIONS[-1].version


def wanted(applied: set[int], target: int | None = None) -> list[Migration]:
    """The migrations still to apply, in order, up to ``target`` (default: all)."""
    return [
        m
        for m in MIGRATIONS
        if m.version not in applied and (target is None or m.version <= target)
    ]
