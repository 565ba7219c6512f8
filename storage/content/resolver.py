"""The content resolver: any FileEvent's bytes, verified, through the content cache.

=================  ==========================================================
strategy           where the bytes come from
=================  ==========================================================
INLINE             the event itself
OBJECT_STORAGE     the content cache, else the presigned URL; an expired (or
                   missing) URL is signed again by key when object-store
                   credentials are configured, else ``PayloadMissing``
GIT_REFERENCE      the content cache, else the clone cache (commit and path,
                   or blob id)
LOCAL (v1 events)  ``local_path`` when it is readable on this host, else a
                   counted ``PayloadMissing``
=================  ==========================================================

Every result is checked against the event's sha256 and size before it is
handed out; a mismatch is ``ChecksumMismatch``, never wrong data. Content up to
``stream_threshold`` comes back as bytes, larger content as a verified file
(the cache entry, or a spooled file when it does not fit the cache), so a large
object is streamed to disk and never held in memory. Hostile references are
refused before any I/O (:mod:`.guard`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from headrace.errors import HeadraceError, is_transient
from storage.content.base import LOCAL, ContentRef, Resolved
from storage.content.cache import ContentCache
from storage.content.download import Downloader, Expired
from storage.content.errors import (
    ChecksumMismatch,
    ContentError,
    ContentRefused,
    ContentUnavailable,
    PayloadMissing,
)
from storage.content.guard import check_object_url, check_size
from storage.git import GitRefused

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
_EXPIRY_MARGIN = timedelta(seconds=30)  # a URL this close to expiry is signed again first


class GitBlobs(Protocol):
    """What the resolver needs of the clone cache (storage.git_cache.GitCache)."""

    def read_blobs(
        self,
        url: str,
        commit: str,
        items: Sequence[tuple[str, str | None]],
    ) -> Iterator[tuple[tuple[str, str | None], bytes]]: ...


Signer = Callable[[str, str], str]  # (bucket, key) -> a fresh presigned URL
GitCheck = Callable[[ContentRef], None]  # raises ContentRefused for a hostile reference
OnFetch = Callable[[str, float, int], None]  # (strategy, seconds, bytes) of a fetch


@dataclass(frozen=True)
class ResolverPolicy:
    stream_threshold: int
    max_object_size: int
    endpoints: tuple[tuple[str, str], ...]  # (scheme, host:port) a presigned URL may use
    buckets: tuple[str, ...]  # buckets the resolver signs URLs for itself


class ContentResolver:
    """Resolves FileEvents to verified bytes; safe to share between threads."""

    def __init__(
        self,
        policy: ResolverPolicy,
        *,
        downloader: Downloader,
        cache: ContentCache | None = None,
        signer: Signer | None = None,
        git: GitBlobs | None = None,
        git_check: GitCheck | None = None,
        on_fetch: OnFetch | None = None,
        spool_dir: Path | None = None,
    ) -> None:
        self.policy = policy
        self.cache = cache
        self.downloader = downloader
        self.signer = signer
        self.git = git
        self.git_check = git_check
        self.on_fetch = on_fetch
        self.spool_dir = spool_dir
        self.counts: Counter[str] = Counter()  # outcomes: inline, local, cache, fetched, errors

    # --- one event -------------------------------------------------------------------

    def resolve(self, event: Mapping[str, Any] | Any, *, keep_bytes: bool = True) -> Resolved:
        """The verified content of a FileEvent (model, decoded dict or ContentRef).
        ``keep_bytes=False``: a download that the cache takes comes back as its cache
        entry, not also as bytes in memory (the cache group needs no bytes)."""
        ref = self._ref(event)
        try:
            resolved = self._resolve(ref, keep_bytes)
        except ContentError as exc:
            self.counts[type(exc).__name__] += 1
            raise
        self.counts[resolved.source] += 1
        return resolved

    def _ref(self, event: Mapping[str, Any] | Any) -> ContentRef:
        if isinstance(event, ContentRef):
            return event
        try:
            return ContentRef.of(event)
        except (KeyError, TypeError, ValueError) as exc:
            fields = event if isinstance(event, Mapping) else {}
            path = str(fields.get("path", getattr(event, "path", "?")))
            raise PayloadMissing(path, f"no content reference ({exc})") from None

    def _resolve(self, ref: ContentRef, keep_bytes: bool = True) -> Resolved:
        if ref.strategy == "INLINE":
            assert ref.inline is not None  # noqa: S101 - ContentRef.of checks it
            _verify(ref, ref.inline)
            return Resolved(ref.sha256, ref.size, ref.strategy, "inline", data=ref.inline)
        if ref.strategy == LOCAL:
            return self._local(ref)
        if (hit := self._checked_or_cached(ref)) is not None:
            return hit
        if ref.strategy == "OBJECT_STORAGE":
            return self._object(ref, keep_bytes)
        (outcome,) = self._git_batch(ref.git_url or "", ref.commit or "", [ref])
        if isinstance(outcome, ContentError):
            raise outcome
        return outcome

    def _checked_or_cached(self, ref: ContentRef) -> Resolved | None:
        """Refuse a fetched reference that is hostile or malformed (before any I/O); its
        cache entry if there is one."""
        check_size(ref, self.policy.max_object_size)
        if ref.strategy == "OBJECT_STORAGE":
            if ref.url is not None:
                check_object_url(ref, self.policy.endpoints)
        elif ref.strategy == "GIT_REFERENCE":
            if self.git_check is not None:
                self.git_check(ref)
        else:
            raise PayloadMissing(ref.path, f"unknown content strategy {ref.strategy}")
        _check_digest(ref)
        return self._cached(ref)

    def _local(self, ref: ContentRef) -> Resolved:
        assert ref.local_path is not None  # noqa: S101 - a LOCAL ref has one
        source = Path(ref.local_path)
        digest, seen, chunks = hashlib.sha256(), 0, []
        keep = ref.size <= self.policy.stream_threshold
        try:
            with source.open("rb") as handle:
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):  # a device, a FIFO
                    raise PayloadMissing(
                        ref.path, f"v1 event: local_path {ref.local_path} is not a regular file"
                    )
                while seen <= ref.size and (chunk := handle.read(_CHUNK)):  # never past size
                    digest.update(chunk)
                    seen += len(chunk)
                    if keep:
                        chunks.append(chunk)
        except OSError as exc:
            self.counts["payload_missing_v1"] += 1
            reason = exc.strerror or type(exc).__name__
            raise PayloadMissing(
                ref.path, f"v1 event: local_path {ref.local_path} is not readable here ({reason})"
            ) from None
        if seen != ref.size or digest.hexdigest() != ref.sha256:
            raise ChecksumMismatch(
                ref.path,
                f"local_path {ref.local_path} holds {seen} bytes hashing to {digest.hexdigest()}",
                actual_sha256=digest.hexdigest(),
                actual_size=seen,
            )
        if keep:
            return Resolved(ref.sha256, ref.size, LOCAL, "local", data=b"".join(chunks))
        return Resolved(ref.sha256, ref.size, LOCAL, "local", file=source)

    def _cached(self, ref: ContentRef) -> Resolved | None:
        if self.cache is None:
            return None
        if ref.size <= self.policy.stream_threshold:
            data = self.cache.read(ref.sha256, ref.size, ref.strategy)
            if data is not None:
                return Resolved(ref.sha256, ref.size, ref.strategy, "cache", data=data)
            return None
        handle = self.cache.open(ref.sha256, ref.size, ref.strategy)
        if handle is None:
            return None
        handle.close()
        path = self.cache.path_of(ref.sha256)
        return Resolved(ref.sha256, ref.size, ref.strategy, "cache", file=path)

    # --- object storage --------------------------------------------------------------

    def _object(self, ref: ContentRef, keep_bytes: bool = True) -> Resolved:
        url = ref.url
        now = datetime.now(UTC)
        if url is None or (ref.expires_at is not None and ref.expires_at - _EXPIRY_MARGIN <= now):
            url = self._sign(ref, "has no presigned URL" if url is None else "URL has expired")
        started = time.perf_counter()
        cacheable = self.cache is not None and ref.size <= self.cache.max_size
        in_memory = ref.size <= self.policy.stream_threshold and (keep_bytes or not cacheable)
        # Into the cache's temporary file as it arrives (hashed once, installed as is),
        # and kept in memory too when small; a spooled file when the cache cannot hold it.
        to_file = self._spool_target(ref) if cacheable or not in_memory else None
        fetch = partial(
            self.downloader.fetch,
            path=ref.path,
            sha256=ref.sha256,
            size=ref.size,
            to_file=to_file,
            keep=in_memory,
        )
        try:
            fetched = fetch(url)
        except Expired:
            url = self._sign(ref, "URL was refused as expired")
            try:
                fetched = fetch(url)
            except Expired:
                raise PayloadMissing(
                    ref.path, "the store refuses a URL signed just now (access denied)"
                ) from None
        self._fetched(ref, time.perf_counter() - started)
        return self._keep(ref, fetched.data, fetched.file)

    def _sign(self, ref: ContentRef, why: str) -> str:
        if self.signer is None:
            raise PayloadMissing(
                ref.path, f"the object's {why} and no object-store credentials are configured"
            )
        if ref.bucket not in self.policy.buckets:
            raise ContentRefused(
                ref.path, f"bucket {ref.bucket!r} is not a configured content bucket"
            )
        assert ref.bucket is not None and ref.key is not None  # noqa: S101 - object refs
        log.debug("signing %s/%s again: the event's %s", ref.bucket, ref.key, why)
        try:
            return self.signer(ref.bucket, ref.key)
        except HeadraceError as exc:
            raise ContentUnavailable(ref.path, f"cannot sign a URL again: {exc}") from None

    def _spool_target(self, ref: ContentRef) -> Callable[[], Path]:
        if self.cache is not None and ref.size <= self.cache.max_size:
            return self.cache.temp_file
        return self._spool_file

    def _spool_file(self) -> Path:
        handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed here, removed by caller
            prefix="headrace-content-", dir=self.spool_dir, delete=False
        )
        handle.close()
        return Path(handle.name)

    def _keep(self, ref: ContentRef, data: bytes | None, file: Path | None) -> Resolved:
        """Put fetched, verified content (its bytes, a file of them, or both) into the
        cache; the Resolved to hand out: the bytes when there are, else the file."""
        cache = self.cache if self.cache is not None and ref.size <= self.cache.max_size else None
        installed = None
        if cache is not None and file is not None:
            installed = cache.add_file(file, ref.sha256, ref.size, ref.strategy, fetched=True)
        elif cache is not None and data is not None:
            installed = cache.put(  # the bytes were verified on their way in
                ref.sha256, ref.size, data, ref.strategy, fetched=True, verified=True
            )
        if data is not None:
            if installed is None and file is not None:
                file.unlink(missing_ok=True)  # the bytes are in hand: no spooled copy
            return Resolved(ref.sha256, ref.size, ref.strategy, "fetched", data=data)
        if installed is not None:
            return Resolved(ref.sha256, ref.size, ref.strategy, "fetched", file=installed)
        assert file is not None  # noqa: S101 - one of the two
        return Resolved(ref.sha256, ref.size, ref.strategy, "fetched", file=file, spooled=True)

    def _fetched(self, ref: ContentRef, seconds: float) -> None:
        if self.on_fetch is not None:
            self.on_fetch(ref.strategy, seconds, ref.size)

    # --- git -------------------------------------------------------------------------

    def _git_batch(
        self, url: str, commit: str, refs: Sequence[ContentRef]
    ) -> list[Resolved | ContentError]:
        """The refs of one repository and commit, with one clone-cache call for them all:
        for each, its content or the terminal error of that one blob. An error of the
        whole call (the remote, the commit) is raised."""
        if self.git is None:
            raise PayloadMissing(refs[0].path, "git references need a clone cache")
        started = time.perf_counter()
        items = [(r.git_path or "", r.blob_id) for r in refs]
        found: dict[tuple[str, str | None], bytes] = {}
        try:
            for item, data in self.git.read_blobs(url, commit, items):
                found[item] = data
        except ContentError:
            raise
        except HeadraceError as exc:  # the clone cache's own errors
            raise _git_error(refs[0], exc) from None
        seconds = time.perf_counter() - started
        results: list[Resolved | ContentError] = []
        for ref, item in zip(refs, items, strict=True):
            try:
                blob = found.get(item)
                if blob is None:
                    raise PayloadMissing(ref.path, f"no blob {item[0]!r} at {commit} in {url}")
                _verify(ref, blob)
            except ContentError as exc:
                results.append(exc)
                continue
            self._fetched(ref, seconds / len(refs))
            if ref.size <= self.policy.stream_threshold:
                results.append(self._keep(ref, blob, None))
            else:
                spool = self._spool_target(ref)()
                spool.write_bytes(blob)
                results.append(self._keep(ref, None, spool))
        return results

    # --- many events (the cache group) -----------------------------------------------

    def resolve_many(
        self,
        events: Sequence[Mapping[str, Any] | Any],
        *,
        parallel: int = 4,
        keep_bytes: bool = True,
    ) -> list[Resolved | ContentError]:
        """Resolve many events: the git references of one repository and commit in one
        clone-cache call, downloads ``parallel`` at a time. One result per event, in order:
        its content, or the terminal error it met (transient errors are raised)."""
        results: list[Resolved | ContentError | None] = [None] * len(events)
        downloads: list[int] = []
        git: dict[tuple[str, str], list[tuple[int, ContentRef]]] = {}
        for i, event in enumerate(events):
            try:
                ref = self._ref(event)
                if ref.strategy == "GIT_REFERENCE":
                    if (hit := self._checked_or_cached(ref)) is not None:
                        results[i] = hit
                        self.counts["cache"] += 1
                    else:
                        git.setdefault((ref.git_url or "", ref.commit or ""), []).append((i, ref))
                    continue
                downloads.append(i)
            except ContentError as exc:
                if not _terminal(exc):
                    raise
                results[i] = exc
                self.counts[type(exc).__name__] += 1
        for (url, commit), group in git.items():
            self._git_group(url, commit, group, results)
        if downloads:
            with ThreadPoolExecutor(max_workers=parallel) as pool:
                for i, outcome in zip(
                    downloads,
                    pool.map(
                        partial(self._try, keep_bytes=keep_bytes), [events[i] for i in downloads]
                    ),
                    strict=True,
                ):
                    results[i] = outcome
        return [r for r in results if r is not None]

    def _git_group(
        self,
        url: str,
        commit: str,
        group: list[tuple[int, ContentRef]],
        results: list[Resolved | ContentError | None],
    ) -> None:
        try:
            outcomes = self._git_batch(url, commit, [ref for _, ref in group])
        except ContentError as exc:
            if not _terminal(exc):
                raise
            # the repository or the commit: every ref fails, each named in its own error
            outcomes = [type(exc)(ref.path, exc.reason) for _, ref in group]
        for (i, _), outcome in zip(group, outcomes, strict=True):
            results[i] = outcome
            self.counts[type(outcome).__name__ if isinstance(outcome, ContentError) else
                        "fetched"] += 1  # fmt: skip

    def _try(
        self, event: Mapping[str, Any] | Any, keep_bytes: bool = True
    ) -> Resolved | ContentError:
        try:
            return self.resolve(event, keep_bytes=keep_bytes)
        except ContentError as exc:
            if not _terminal(exc):
                raise
            return exc

    def close(self) -> None:
        self.downloader.close()
        if self.cache is not None:
            self.cache.close()
        for part in (self.signer, self.git):
            close = getattr(part, "close", None)  # a KeySigner's stores, the clone cache
            if close is not None:
                close()


def _verify(ref: ContentRef, data: bytes) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if len(data) != ref.size:
        raise ChecksumMismatch(
            ref.path,
            f"{len(data)} bytes, the event says {ref.size}",
            actual_sha256=actual,
            actual_size=len(data),
        )
    if actual != ref.sha256:
        raise ChecksumMismatch(
            ref.path,
            f"the bytes hash to {actual}, the event says {ref.sha256}",
            actual_sha256=actual,
            actual_size=len(data),
        )


def _check_digest(ref: ContentRef) -> None:
    if len(ref.sha256) != 64 or ref.sha256.strip("0123456789abcdef"):
        raise PayloadMissing(ref.path, "the event's checksum is not a sha256")


def _terminal(exc: BaseException) -> bool:
    return not isinstance(exc, ContentUnavailable)


def _git_error(ref: ContentRef, exc: HeadraceError) -> ContentError:
    """A clone-cache error as a content error: refused, unavailable or missing."""
    if isinstance(exc, GitRefused):
        return ContentRefused(ref.path, str(exc))
    if is_transient(exc):
        return ContentUnavailable(ref.path, str(exc))
    return PayloadMissing(ref.path, str(exc))
