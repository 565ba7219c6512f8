"""The content cache: files named by their sha256, bounded, least recently used out first.

Layout under ``root``::

    objects/ab/<sha256>     the bytes of content whose sha256 is the name
    tmp/                    downloads in progress (renamed into objects/ when verified)
    index.sqlite3           one row per entry (size, strategy, last use) and the counters

A name never comes from an event: only a sha256 (64 lowercase hex digits) is a
file name here. Every entry is written to ``tmp/``, hashed as it is written, and
renamed into place only when its bytes hash to its name and have the size asked
for, so a reader never sees a partial or wrong file.

Several processes and threads may share one cache. The SQLite index (WAL mode)
serialises what changes the set of entries: adding an entry, with the eviction
that makes room for it first, and removing one both run in one ``BEGIN
IMMEDIATE`` transaction, with the file renamed into place or removed inside it.
Room is made *before* the new entry lands, so the bytes the index counts never
exceed ``max_size``, however many writers fill the cache at once. Content larger
than ``max_size`` is not cached at all.

Reads take no lock: a hit is the entry's file, checked again when read (its bytes
must still hash to its name: an entry that does not is dropped, counted as
``corrupt`` and reported as a miss, so the caller fetches it again).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from headrace.errors import StorageError

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1024 * 1024
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    strategy TEXT NOT NULL,
    added REAL NOT NULL,
    last_used REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_use ON entries (last_used);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT NOT NULL,
    strategy TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (name, strategy)
);
INSERT OR IGNORE INTO counters (name, strategy, value)
    SELECT 'stored_bytes', '', COALESCE(SUM(size), 0) FROM entries;
"""
# The bytes the entries hold, kept with every insert and delete: a SUM over the entries
# is a scan (25 ms over 200,000 entries) that every install would pay under the lock.
_STORED = ("stored_bytes", "")
COUNTERS = ("hits", "misses", "evictions", "corrupt", "fetched_bytes")


def _locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


class CacheError(StorageError):
    """The cache's directory or index cannot be used (permissions, a full disk)."""


@dataclass(frozen=True)
class StrategyStats:
    entries: int = 0
    bytes: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    corrupt: int = 0
    fetched_bytes: int = 0

    @property
    def hit_rate(self) -> float | None:
        asked = self.hits + self.misses
        return self.hits / asked if asked else None


@dataclass(frozen=True)
class CacheStats:
    """``headrace cache stats``: totals and the same figures per content strategy."""

    root: str
    max_size: int
    total: StrategyStats
    by_strategy: dict[str, StrategyStats] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        def one(s: StrategyStats) -> dict[str, object]:
            return {**vars(s), "hit_rate": s.hit_rate}

        return {
            "root": self.root,
            "max_size": self.max_size,
            **one(self.total),
            "by_strategy": {name: one(s) for name, s in sorted(self.by_strategy.items())},
        }


@dataclass(frozen=True)
class Pruned:
    entries: int
    bytes: int
    orphans: int  # files without an index row (a writer that died mid-way), removed


def check_sha256(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r:.80}")
    return sha256


class ContentCache:
    """A bounded, self-checking cache of content by sha256, shared by processes."""

    def __init__(self, root: Path, max_size: int) -> None:
        if max_size < 0:
            raise ValueError(f"max_size must not be negative: {max_size}")
        self.root = Path(root)
        self.max_size = max_size
        self._local = threading.local()
        self._ready_lock = threading.Lock()
        self._ready = False
        self._folders: set[str] = set()  # objects/ab folders known to exist

    # --- reading ---------------------------------------------------------------------

    def path_of(self, sha256: str) -> Path:
        """Where the entry of ``sha256`` is (or would be)."""
        check_sha256(sha256)
        return self.root / "objects" / sha256[:2] / sha256

    def read(self, sha256: str, size: int, strategy: str = "") -> bytes | None:
        """The entry's bytes, checked against its name and ``size``; None on a miss."""
        path = self.path_of(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self._count("misses", strategy)
            return None
        except OSError as exc:
            raise CacheError(f"cannot read the cache entry {path}: {exc}") from None
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
            self._drop_corrupt(sha256, strategy)
            return None
        self._used(sha256, strategy)
        return data

    def open(self, sha256: str, size: int, strategy: str = "") -> BinaryIO | None:
        """The entry as an open file, checked (read once through) first; None on a miss."""
        path = self.path_of(sha256)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            self._count("misses", strategy)
            return None
        except OSError as exc:
            raise CacheError(f"cannot read the cache entry {path}: {exc}") from None
        digest, seen = hashlib.sha256(), 0
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            seen += len(chunk)
        if seen != size or digest.hexdigest() != sha256:
            handle.close()
            self._drop_corrupt(sha256, strategy)
            return None
        handle.seek(0)
        self._used(sha256, strategy)
        return handle

    def contains(self, sha256: str, size: int) -> bool:
        """Whether an entry of that size is there (not read, not counted)."""
        try:
            return self.path_of(sha256).stat().st_size == size
        except FileNotFoundError:
            return False

    # --- writing ---------------------------------------------------------------------

    def put(
        self,
        sha256: str,
        size: int,
        chunks: Iterable[bytes] | bytes,
        strategy: str = "",
        *,
        fetched: bool = False,
        verified: bool = False,
    ) -> Path | None:
        """Add content (bytes, or chunks as they arrive); its path, or None if it is larger
        than the whole cache. ValueError (nothing added) if the bytes are not ``sha256``.
        ``fetched``: count its bytes as fetched (in the same transaction); ``verified``:
        the caller has hashed them already (only their size is checked again)."""
        final = self.path_of(sha256)
        if size > self.max_size:
            return None
        if isinstance(chunks, bytes | bytearray | memoryview):
            chunks = (bytes(chunks),)
        temp = self._temp()
        try:
            digest, seen = hashlib.sha256(), 0
            with temp.open("wb") as out:
                for chunk in chunks:
                    seen += len(chunk)
                    if seen > size:
                        raise ValueError(f"more than the {size} bytes expected")
                    if not verified:
                        digest.update(chunk)
                    out.write(chunk)
            if seen != size or (not verified and digest.hexdigest() != sha256):
                raise ValueError(
                    f"{seen} bytes hashing to {digest.hexdigest()}, not {size} bytes of {sha256}"
                )
            self._install(temp, final, sha256, size, strategy, fetched)
        finally:
            temp.unlink(missing_ok=True)
        return final

    def add_file(
        self, path: Path, sha256: str, size: int, strategy: str = "", *, fetched: bool = False
    ) -> Path | None:
        """Move a verified file (the caller hashed it, under :meth:`temp_file`) into the
        cache; None if too large. The file is gone afterwards either way."""
        try:
            if size > self.max_size:
                return None
            final = self.path_of(sha256)
            self._install(path, final, sha256, size, strategy, fetched)
            return final
        finally:
            path.unlink(missing_ok=True)

    def temp_file(self) -> Path:
        """A fresh path under the cache's ``tmp/`` (same file system as the entries)."""
        return self._temp()

    def _install(
        self, temp: Path, final: Path, sha256: str, size: int, strategy: str, fetched: bool
    ) -> None:
        now = time.time()
        with self._write() as db:
            if fetched:
                self._bump(db, "fetched_bytes", strategy, size)
            found = db.execute("SELECT size FROM entries WHERE sha256 = ?", (sha256,)).fetchone()
            if found is not None and found[0] == size and final.exists():
                db.execute("UPDATE entries SET last_used = ? WHERE sha256 = ?", (now, sha256))
                return
            if found is not None:  # a row whose file is gone: replace both
                self._remove(db, sha256)
            self._evict(db, self.max_size - size)
            if final.parent.name not in self._folders:
                final.parent.mkdir(parents=True, exist_ok=True)
                self._folders.add(final.parent.name)
            os.replace(temp, final)
            db.execute(
                "INSERT INTO entries (sha256, size, strategy, added, last_used)"
                " VALUES (?, ?, ?, ?, ?)",
                (sha256, size, strategy, now, now),
            )
            self._bump(db, *_STORED, size)

    def _remove(self, db: sqlite3.Connection, sha256: str) -> int:
        """Delete the entry's file and row; the bytes it held (0 if it had no row)."""
        self.path_of(sha256).unlink(missing_ok=True)
        found = db.execute(
            "DELETE FROM entries WHERE sha256 = ? RETURNING size", (sha256,)
        ).fetchone()
        size = int(found[0]) if found is not None else 0
        if size:
            self._bump(db, *_STORED, -size)
        return size

    @staticmethod
    def _total(db: sqlite3.Connection) -> int:
        found = db.execute(
            "SELECT value FROM counters WHERE name = ? AND strategy = ?", _STORED
        ).fetchone()
        return int(found[0]) if found is not None else 0

    def _evict(self, db: sqlite3.Connection, target: int) -> tuple[int, int]:
        """Remove least recently used entries until at most ``target`` bytes are left."""
        total = self._total(db)
        removed = freed = 0
        if total <= target:
            return 0, 0
        rows = db.execute("SELECT sha256, size, strategy FROM entries ORDER BY last_used, sha256")
        victims = []
        for sha256, size, strategy in rows:
            if total - freed <= target:
                break
            victims.append((sha256, strategy))
            freed += size
        for sha256, strategy in victims:
            self._remove(db, sha256)
            self._bump(db, "evictions", strategy, 1)
            removed += 1
        log.debug("evicted %s entries (%s bytes) from %s", removed, freed, self.root)
        return removed, freed

    def _drop_corrupt(self, sha256: str, strategy: str) -> None:
        log.warning("cache entry %s does not hash to its name: dropped", sha256)
        with self._write() as db:
            self._remove(db, sha256)
            self._bump(db, "corrupt", strategy, 1)
            self._bump(db, "misses", strategy, 1)

    def _used(self, sha256: str, strategy: str) -> None:
        with self._write() as db:
            db.execute("UPDATE entries SET last_used = ? WHERE sha256 = ?", (time.time(), sha256))
            self._bump(db, "hits", strategy, 1)

    def _count(self, name: str, strategy: str, value: int = 1) -> None:
        with self._write() as db:
            self._bump(db, name, strategy, value)

    @staticmethod
    def _bump(db: sqlite3.Connection, name: str, strategy: str, value: int) -> None:
        db.execute(
            "INSERT INTO counters (name, strategy, value) VALUES (?, ?, ?)"
            " ON CONFLICT (name, strategy) DO UPDATE SET value = value + excluded.value",
            (name, strategy, value),
        )

    # --- operations ------------------------------------------------------------------

    def prune(self, to: int | None = None) -> Pruned:
        """Evict least recently used entries down to ``to`` bytes (default: the bound),
        and remove files no index row knows (left by a writer that died)."""
        target = self.max_size if to is None else to
        if target < 0:
            raise ValueError(f"the size to prune to must not be negative: {target}")
        with self._write() as db:
            before = self._total(db)
            removed, _ = self._evict(db, target)
            after = self._total(db)
            known = {row[0] for row in db.execute("SELECT sha256 FROM entries")}
            orphans = 0
            for path in self._entry_files():
                if path.name not in known:
                    path.unlink(missing_ok=True)
                    orphans += 1
        cutoff = time.time() - 3600  # downloads older than an hour are abandoned
        for temp in (self.root / "tmp").glob("*"):
            try:
                if temp.stat().st_mtime < cutoff:
                    temp.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
        return Pruned(removed, before - after, orphans)

    def _entry_files(self) -> Iterator[Path]:
        objects = self.root / "objects"
        if not objects.is_dir():
            return
        for folder in objects.iterdir():
            if folder.is_dir():
                yield from (p for p in folder.iterdir() if _SHA256.fullmatch(p.name))

    def stats(self) -> CacheStats:
        db = self._db()
        per: dict[str, dict[str, int]] = {}
        for strategy, entries, nbytes in db.execute(
            "SELECT strategy, COUNT(*), COALESCE(SUM(size), 0) FROM entries GROUP BY strategy"
        ):
            per.setdefault(strategy, {}).update(entries=entries, bytes=nbytes)
        for name, strategy, value in db.execute("SELECT name, strategy, value FROM counters"):
            if name in COUNTERS:
                per.setdefault(strategy, {})[name] = value
        by_strategy = {k or "unknown": StrategyStats(**v) for k, v in per.items()}
        total = StrategyStats(
            **{
                name: sum(getattr(s, name) for s in by_strategy.values())
                for name in ("entries", "bytes", *COUNTERS)
            }
        )
        return CacheStats(str(self.root), self.max_size, total, by_strategy)

    def size(self) -> int:
        """Bytes of the entries the index holds."""
        return self._total(self._db())

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # --- the index -------------------------------------------------------------------

    def _temp(self) -> Path:
        self._db()  # creates the directories
        return self.root / "tmp" / f"{uuid.uuid4().hex}.part"

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            return db
        try:
            (self.root / "tmp").mkdir(parents=True, exist_ok=True)
            (self.root / "objects").mkdir(exist_ok=True)
            db = sqlite3.connect(self.root / "index.sqlite3", timeout=30.0, isolation_level=None)
            db.execute("PRAGMA busy_timeout = 30000")
            # Switching a new index to WAL takes a lock SQLite's busy handler does not
            # wait for: several threads or processes opening a new cache retry it.
            for attempt in Retrying(
                retry=retry_if_exception(_locked),
                stop=stop_after_delay(30),
                wait=wait_exponential_jitter(multiplier=0.005, max=0.5, jitter=0.01),
                reraise=True,
            ):
                with attempt:
                    db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            with self._ready_lock:
                if not self._ready:
                    db.executescript(_SCHEMA)
                    self._ready = True
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"the content cache at {self.root} cannot be used: {exc}") from None
        self._local.db = db
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise CacheError(f"the content cache index at {self.root} is busy: {exc}") from None
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
