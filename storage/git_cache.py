"""A clone cache for git URLs: one bare, blob-less clone per credential-free URL.

Clones live at ``root/<sha256(url)[:16]>.git``, cloned with ``git clone --bare
--filter=blob:none`` (all commits and trees, no blobs; a server without
filters sends a full clone) into a temporary directory renamed into place.

- Producers: ``repo(url, ref)`` brings the clone up to date (branches and tags;
  a cached commit id needs no fetch, one no branch reaches is fetched by id)
  and fetches the blobs of that commit's tree in one batch.
- Consumers: ``read_blob``, ``open_blob`` and ``read_blobs`` read blobs of a
  commit by path or blob id. A warm read starts no process: the clone's objects
  are looked up on disk and read from one ``cat-file --batch`` kept per clone,
  which never touches the network. What is missing is fetched under the lock:
  the commit by id, then every missing blob of the batch in one fetch. References
  are checked first (:func:`~storage.git.check_reference`): hostile ones are
  refused with ``GitRefused`` before any I/O.

Locks, per clone: ``<name>.lock`` (exclusive: clone, fetch, evict; waits are
bounded by ``lock_timeout``, then ``GitUnavailable``) and ``<name>.use`` (shared
by every reader while it reads; its mtime is the clone's last use). The cache
is bounded by ``max_size``: after a clone or fetch, whole clones are evicted,
least recently used first, each only if both its locks can be taken at once,
by renaming it away and then deleting it, so that no reader sees half a clone.
The bound can be passed by the one clone in use.

Credentials never reach the command line, the stored ``remote.origin.url``
or any file in the cache. For http(s) the token travels as an ``Authorization``
header set through ``GIT_CONFIG_COUNT`` environment variables, scoped to the
remote's origin, redirects not followed, credential helpers and prompts off.
Which token, first found first: a call's ``token=``; for producers, the URL's
userinfo; the configured credential whose URL prefix the URL falls under
(:mod:`storage.git_credentials`: that host only, http only if allowed); the
constructor's ``token=``, for programs that read remotes they name themselves.
Every message is redacted.
Network commands are killed with their children after ``clone_timeout``
(clones and blob fetches) or ``timeout`` (everything else).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from headrace.redact import REDACTOR, Redactor, credentials_in, strip_credentials
from storage.git import (
    FULL_ID,
    OFFLINE,
    SUBMODULE,
    TREE,
    GitError,
    GitRefused,
    GitRepo,
    GitUnavailable,
    check_reference,
    check_url,
    url_scheme,
)
from storage.git_credentials import credential_for
from storage.git_locks import Lease, disk_usage, flock_within
from storage.git_remote import RemoteCall, auth_environment

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

    from headrace.settings import GitCredential, GitSettings

__all__ = [  # what consumers and producers use; check_reference is storage.git's
    "GitCache",
    "GitError",
    "GitRefused",
    "GitUnavailable",
    "Item",
    "auth_environment",
    "check_reference",
]

log = logging.getLogger(__name__)

Item = TypeVar("Item", bound=tuple[str | None, str | None])  # (path, blob id)
_Items = Sequence[tuple[str | None, str | None]]
PRODUCER_SCHEMES = ("https", "http", "ssh", "git", "file")  # what repo() takes from a CLI user
_CLONE_CONFIG = (  # a bare clone fetches no refs by default; no gc under readers' feet
    ("--replace-all", "remote.origin.fetch", "+refs/heads/*:refs/heads/*"),
    ("--add", "remote.origin.fetch", "+refs/tags/*:refs/tags/*"),
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
)


class GitCache:
    """Bare partial clones of remote repositories under ``root``; no I/O until used."""

    def __init__(
        self,
        root: Path,
        *,
        timeout: float = 120.0,
        clone_timeout: float | None = None,
        lock_timeout: float = 600.0,
        max_size: int | None = None,
        allowed_schemes: Collection[str] = ("https", "ssh"),
        credentials: Sequence[GitCredential] = (),
        token: str | None = None,
    ) -> None:
        """``clone_timeout`` defaults to ``timeout``; ``max_size`` None: unbounded;
        ``allowed_schemes`` is for the reading API (references from events);
        ``credentials`` are scoped by URL prefix; ``token`` is sent to any http(s)
        URL without one (settings never give it: only code that names its remotes)."""
        self.root = Path(root).absolute()
        self.timeout = timeout
        self.clone_timeout = timeout if clone_timeout is None else clone_timeout
        self.lock_timeout = lock_timeout
        self.max_size = max_size
        self.allowed_schemes = tuple(allowed_schemes)
        self._credentials = tuple(credentials)
        self._token = token
        self._readers: dict[Path, _Reader] = {}
        self._guard = threading.Lock()
        # Told what the cache did, for metrics: ("hit", 0.0) when a read found every
        # object on disk, ("fill", s) for a clone or fetch it had to make (s: seconds
        # under the lock), ("clone", s) for a new clone, ("evicted", n) for n clones
        # removed to stay within max_size, ("size", bytes) after a fill or an eviction.
        self.on_event: Callable[[str, float], None] | None = None

    @classmethod
    def from_settings(cls, settings: GitSettings) -> GitCache:
        return cls(
            settings.cache_dir,
            timeout=settings.timeout_s,
            clone_timeout=settings.clone_timeout_s,
            max_size=int(settings.cache_max_size),
            allowed_schemes=settings.allowed_schemes,
            credentials=settings.credentials,
        )

    def __repr__(self) -> str:
        return f"GitCache({str(self.root)!r}, max_size={self.max_size})"  # never a token

    def location(self, url: str) -> Path:
        """Where the clone of ``url`` is (or would be) kept."""
        digest = hashlib.sha256(strip_credentials(url).encode()).hexdigest()[:16]
        return self.root / f"{digest}.git"

    # -- producers -----------------------------------------------------------------

    def repo(
        self, url: str, ref: str | None = None, *, token: str | None = None
    ) -> tuple[GitRepo, str]:
        """The cached repository of ``url``, brought up to date, and the commit ``ref``
        (default: the remote's HEAD) names in it. The clone is not evicted while the
        returned repository is open (until its ``close()``)."""
        check_url(url, PRODUCER_SCHEMES, credentials=True)
        call = self._call(url, token)
        dest = self._prepared_root(url)
        lease = Lease.take(dest.with_suffix(".use"), fcntl.LOCK_SH, self.lock_timeout, call.url)
        try:
            with self._locked(dest, call.url):
                cloned = self._ensure_clone(call, dest)
                repo = GitRepo(dest, url=call.url, env=call.auth, on_close=lease.release)
                commit = self._resolve(call, repo, ref, fetch=not cloned)
                self._prefetch(call, repo, commit)
        except BaseException:
            lease.release()
            raise
        self.evict(keep=dest)
        return repo, commit

    # -- consumers -----------------------------------------------------------------

    def read_blob(
        self,
        url: str,
        commit: str,
        *,
        path: str | None = None,
        blob_id: str | None = None,
        token: str | None = None,
    ) -> bytes:
        """The bytes of ``path`` (or of blob ``blob_id``; both: they must agree) in
        ``commit`` of ``url``. GitRefused, GitError (terminal), GitUnavailable."""
        check_reference(url, commit, path, blob_id, self.allowed_schemes)
        lease, dest, (oid,) = self._prepare(url, commit.lower(), [(path, blob_id)], token)
        try:
            reader = self._reader(dest, url)
            assert reader is not None  # noqa: S101 - _prepare left a clone there
            with reader.lock:
                return reader.repo.read_blob(_found(oid))
        finally:
            lease.release()

    def open_blob(
        self,
        url: str,
        commit: str,
        *,
        path: str | None = None,
        blob_id: str | None = None,
        token: str | None = None,
    ) -> BinaryIO:
        """Like :meth:`read_blob`, as a stream (a process of its own, for large blobs).
        The clone is not evicted until the stream is closed."""
        check_reference(url, commit, path, blob_id, self.allowed_schemes)
        lease, dest, (oid,) = self._prepare(url, commit.lower(), [(path, blob_id)], token)
        try:
            found = _found(oid)
            repo = GitRepo(dest, url=url, env=OFFLINE, on_close=lease.release)
            return io.BufferedReader(_Owned(repo.open_blob(found), repo))
        except BaseException:
            lease.release()
            raise

    def read_blobs(
        self, url: str, commit: str, items: Sequence[Item], *, token: str | None = None
    ) -> Iterator[tuple[Item, bytes]]:
        """``(item, bytes)`` for the ``(path, blob id)`` items of ``commit`` of ``url``, in
        order, with at most one fetch of the commit and one of the missing blobs for them
        all. Every item is checked before this returns (GitRefused). An item that names
        no blob there (no such file, a directory, a blob id its path does not have, a blob
        the remote lacks) is left out and logged; what fails the whole call (the remote,
        its credentials, the commit) is raised."""
        for path, blob_id in items:
            check_reference(url, commit, path, blob_id, self.allowed_schemes)
        return self._read_blobs(url, commit.lower(), list(items), token)

    def _read_blobs(
        self, url: str, commit: str, items: list[Item], token: str | None
    ) -> Iterator[tuple[Item, bytes]]:
        lease, dest, oids = self._prepare(url, commit, items, token)
        try:
            reader = self._reader(dest, url)
            assert reader is not None  # noqa: S101 - _prepare left a clone there
            for item, oid in zip(items, oids, strict=True):
                if isinstance(oid, GitError):
                    log.warning("left out of a batch: %s", oid)
                    continue
                with reader.lock:
                    data = reader.repo.read_blob(oid)
                yield item, data
        finally:
            lease.release()

    def _prepare(
        self,
        url: str,
        commit: str,
        items: _Items,
        token: str | None,
    ) -> tuple[Lease, Path, list[str | GitError]]:
        """The blob id of each item, on disk, or why it has none; the clone held until
        the lease is released."""
        dest = self._prepared_root(url)
        lease = Lease.take(dest.with_suffix(".use"), fcntl.LOCK_SH, self.lock_timeout, url)
        try:
            reader = self._reader(dest, url)
            oids = _on_disk(reader, url, commit, items) if reader is not None else None
            if oids is None:
                call = self._call(url, token)
                with self._locked(dest, url):
                    self._drop_reader(dest)
                    began = time.monotonic()
                    oids = self._fill(call, dest, commit, items)
                    self._tell("fill", time.monotonic() - began)
                self.evict(keep=dest)  # tells the size when bounded
                if self.max_size is None and self.on_event is not None:
                    self._tell("size", float(self.size()))
            else:
                self._tell("hit", 0.0)
        except BaseException:
            lease.release()
            raise
        return lease, dest, oids

    def _fill(
        self, call: RemoteCall, dest: Path, commit: str, items: _Items
    ) -> list[str | GitError]:
        """Under the lock: clone, fetch the commit if missing, then the missing blobs."""
        self._ensure_clone(call, dest)
        repo = GitRepo(dest, url=call.url, env=OFFLINE)
        try:
            if not repo.has_commit(commit):
                log.info("fetching commit %s of %s", commit, call.url)
                try:
                    call.fetch(repo.path, ["--no-tags", "origin", commit])
                except GitError as exc:
                    raise GitError(f"no commit {commit} in {call.url} ({exc})") from None
            if not repo.has_commit(commit):
                raise GitError(f"no commit {commit} in {call.url}")
            oids = [_blob_id(repo, call.url, commit, path, blob) for path, blob in items]
            missing = sorted(set(repo.missing([o for o in oids if isinstance(o, str)])))
            while missing:  # one fetch, again without any blob the remote says it lacks
                try:
                    self._fetch_objects(call, repo, missing)
                    break
                except GitError as exc:
                    lacking = [oid for oid in missing if oid in str(exc)]
                    if not lacking:
                        raise
                    missing = [oid for oid in missing if oid not in lacking]
            gone = set(repo.missing([o for o in oids if isinstance(o, str)], refresh=True))
            why = f"in {call.url} (commit {commit})"
            return [GitError(f"no blob {o} {why}") if o in gone else o for o in oids]
        finally:
            repo.close()

    # -- the bound -------------------------------------------------------------------

    def size(self) -> int:
        """Bytes the cache takes on disk."""
        return disk_usage(self.root)

    def evict(self, *, keep: Path | None = None) -> list[Path]:
        """Remove whole clones, least recently used first, until the cache fits
        ``max_size``; never ``keep`` or a clone that is locked or in use. Returns the
        locations removed."""
        if self.max_size is None or not self.root.is_dir():
            return []
        for trash in self.root.glob("*.evicted-*"):  # left by an eviction that was killed
            shutil.rmtree(trash, ignore_errors=True)
        clones = []
        for clone in self.root.glob("*.git"):
            try:
                used = clone.with_suffix(".use").stat().st_mtime_ns
            except FileNotFoundError:
                used = 0
            clones.append((used, clone.name, clone, disk_usage(clone)))
        total = sum(size for *_, size in clones)
        evicted = []
        for _, _, clone, size in sorted(clones):
            if total <= self.max_size:
                break
            if clone != keep and self._remove(clone):
                total -= size
                evicted.append(clone)
        if evicted:
            self._tell("evicted", float(len(evicted)))
        self._tell("size", float(total))
        if total > self.max_size:
            log.warning(
                "the git clone cache %s holds %s bytes, above its bound of %s: the rest is in use",
                self.root,
                total,
                self.max_size,
            )
        return evicted

    def close(self) -> None:
        """End the ``cat-file`` processes kept for warm reads."""
        with self._guard:
            readers, self._readers = list(self._readers.values()), {}
        for reader in readers:
            reader.repo.close()

    def _remove(self, clone: Path) -> bool:
        lock = flock_within(clone.with_suffix(".lock"), fcntl.LOCK_EX, 0)
        if lock is None:
            return False
        with lock:
            use = flock_within(clone.with_suffix(".use"), fcntl.LOCK_EX, 0)
            if use is None:
                return False
            with use:
                if not clone.is_dir():
                    return False
                self._drop_reader(clone)
                trash = clone.with_name(f"{clone.stem}.evicted-{uuid.uuid4().hex[:8]}")
                clone.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        log.info("evicted the least recently used clone %s", clone.name)
        return True

    # -- clones, fetches ---------------------------------------------------------------

    def _call(self, url: str, token: str | None) -> RemoteCall:
        username = None
        if token is None and not credentials_in(url):
            credential = credential_for(url, self._credentials)
            if credential is not None:
                token, username = credential.token.get_secret_value(), credential.username
            else:
                token = self._token
        env, secrets = auth_environment(url, token, username=username)
        for secret in secrets:
            REDACTOR.add(secret)  # any later log line that quotes it is scrubbed
        return RemoteCall(
            strip_credentials(url),
            env,
            Redactor(secrets),
            timeout=self.timeout,
            clone_timeout=self.clone_timeout,
        )

    def _prepared_root(self, url: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.location(url)

    def _ensure_clone(self, call: RemoteCall, dest: Path) -> bool:
        if GitRepo.discover(dest) is not None:
            return False
        if dest.exists():
            log.warning("the cached clone %s is not a repository: cloning again", dest)
            shutil.rmtree(dest)
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("cloning %s into %s", call.url, dest)
        began = time.monotonic()
        clone = ["clone", "--bare", "--quiet"]
        # A local path as a file:// URL: cloned through upload-pack (a partial clone, in an
        # environment of its own) rather than copied by git itself, which would look for
        # the source where the pinned variables point.
        source = call.url
        if url_scheme(source) == "file" and not source.lower().startswith("file:"):
            source = Path(source).expanduser().absolute().as_uri()
        try:
            call.git(tmp, [*clone, "--filter=blob:none", "--", source, str(tmp)], "clone")
        except GitError as exc:  # a server that refuses filters outright: a full clone
            if "filter" not in str(exc):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            call.git(tmp, [*clone, "--", source, str(tmp)], "clone")
        for setting in _CLONE_CONFIG:
            call.git(tmp, ["-C", str(tmp), "config", *setting], "configure", local=True)
        tmp.rename(dest)
        self._tell("clone", time.monotonic() - began)
        return True

    def _tell(self, what: str, value: float) -> None:
        if self.on_event is not None:
            self.on_event(what, value)

    def _prefetch(self, call: RemoteCall, repo: GitRepo, commit: str) -> None:
        """Fetch the blobs of ``commit`` that a partial clone lacks, in one batch."""
        missing = repo.missing_objects(commit)
        if missing:
            self._fetch_objects(call, repo, missing)

    def _fetch_objects(self, call: RemoteCall, repo: GitRepo, oids: Sequence[str]) -> None:
        log.info("fetching %s missing objects of %s", len(oids), call.url)
        args = ["-C", str(repo.path), "-c", "fetch.negotiationAlgorithm=noop", "fetch", "--quiet"]
        args += ["--no-tags"]
        args += ["--no-write-fetch-head", "--recurse-submodules=no", "--filter=blob:none"]
        stdin = "".join(f"{oid}\n" for oid in oids).encode()
        call.git(repo.path, [*args, "--stdin", "origin"], "fetch", stdin=stdin, big=True)

    def _resolve(self, call: RemoteCall, repo: GitRepo, ref: str | None, *, fetch: bool) -> str:
        if ref is not None and FULL_ID.fullmatch(ref) and repo.has_commit(ref):
            return ref.lower()  # a commit never changes: no need to ask the remote
        if fetch:
            log.info("fetching %s", call.url)
            call.fetch(repo.path, ["--prune", "origin"])
        try:
            return repo.resolve(ref)
        except GitError:
            if ref is None or not FULL_ID.fullmatch(ref):
                raise
        try:  # a commit no branch or tag reaches, asked for by id
            call.fetch(repo.path, ["--no-tags", "origin", ref])
        except GitError as exc:
            raise GitError(f"unknown ref {ref!r} in {call.url}") from exc
        return repo.resolve(ref)

    @contextmanager
    def _locked(self, dest: Path, url: str) -> Iterator[None]:
        lock = Lease.take(dest.with_suffix(".lock"), fcntl.LOCK_EX, self.lock_timeout, url)
        try:
            yield
        finally:
            lock.release()

    # -- warm readers ------------------------------------------------------------------

    def _reader(self, dest: Path, url: str) -> _Reader | None:
        """The kept offline reader of the clone at ``dest`` (None if there is none); one
        whose clone was evicted and cloned again since is replaced."""
        try:
            inode = dest.stat().st_ino
        except FileNotFoundError:
            return None
        with self._guard:
            reader = self._readers.get(dest)
            if reader is not None and reader.inode == inode:
                return reader
            try:
                fresh: _Reader | None = _Reader(GitRepo(dest, url=url, env=OFFLINE), inode)
            except GitError:  # not (yet) a repository
                fresh = None
            if fresh is None:
                self._readers.pop(dest, None)
            else:
                self._readers[dest] = fresh
        if reader is not None:  # of the clone that was there before
            with reader.lock:
                reader.repo.close()
        return fresh

    def _drop_reader(self, dest: Path) -> None:
        with self._guard:
            reader = self._readers.pop(dest, None)
        if reader is not None:
            with reader.lock:
                reader.repo.close()


class _Reader:
    def __init__(self, repo: GitRepo, inode: int) -> None:
        self.repo = repo
        self.inode = inode
        self.lock = threading.Lock()  # one request at a time to its cat-file process


def _on_disk(reader: _Reader, url: str, commit: str, items: _Items) -> list[str | GitError] | None:
    """The blob ids of ``items`` (or why one has none) if the commit and every blob are
    on disk, else None."""
    with reader.lock:
        if not reader.repo.has_commit(commit):
            return None
        oids = [_blob_id(reader.repo, url, commit, path, blob) for path, blob in items]
        ids = [oid for oid in oids if isinstance(oid, str)]
        return None if reader.repo.missing(ids) else oids


def _found(oid: str | GitError) -> str:
    if isinstance(oid, GitError):
        raise oid
    return oid


def _blob_id(
    repo: GitRepo, url: str, commit: str, path: str | None, blob_id: str | None
) -> str | GitError:
    """The blob ``path`` (or ``blob_id``) names in ``commit``, or why there is none: the
    commit's trees are on disk, so that answer is final."""
    if not path:
        assert blob_id is not None  # noqa: S101 - check_reference wants one of them
        return blob_id.lower()
    found = repo.entry(commit, path)
    if found is None:
        return GitError(f"no file {path!r} at {commit} in {url}")
    mode, oid = found
    if mode in (TREE, SUBMODULE):
        kind = "a directory" if mode == TREE else "a submodule"
        return GitError(f"{path!r} at {commit} in {url} is {kind}, not a file")
    if blob_id is not None and oid != blob_id.lower():
        return GitError(f"{path!r} at {commit} in {url} is blob {oid}, not {blob_id.lower()}")
    return oid


class _Owned(io.RawIOBase):
    """A blob stream that closes the repository it comes from when it is closed."""

    def __init__(self, stream: BinaryIO, owner: GitRepo) -> None:
        self._stream, self._owner = stream, owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        data = self._stream.read(len(memoryview(buffer)))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._stream.close()
                self._owner.close()
            finally:
                super().close()
