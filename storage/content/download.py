"""Downloads through presigned URLs: bounded in time and size, retried, hashed as read.

One :class:`Downloader` serves a resolver (its httpx client is thread-safe and
made on first use). Each download has a connect and a per-read timeout;
transient failures (no connection, a timeout, 5xx, 429) are retried with
exponential backoff and jitter (tenacity) up to ``attempts`` times. A body
longer than the size asked for (or than ``max_size``) is cut off as soon as it
is, never read to its end. Messages name the host and the path, never the
query string (which holds the signature).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from storage.content.errors import (
    ChecksumMismatch,
    ContentRefused,
    ContentUnavailable,
    PayloadMissing,
)

_CHUNK = 256 * 1024


class Expired(Exception):  # noqa: N818 - a signal to the resolver, not an error it shows
    """The store says the presigned URL has expired (or its signature no longer holds)."""


@dataclass(frozen=True)
class Fetched:
    data: bytes | None  # the body, when it was kept in memory
    file: Path | None  # the body, when it was written to a file


def _pieces(response: httpx.Response) -> Iterator[bytes]:
    """The body in the network's own pieces (not cut again, a copy each), decoded only
    when the server encoded it."""
    if response.headers.get("content-encoding", "identity") != "identity":
        yield from response.iter_bytes(_CHUNK)
    else:
        yield from response.iter_raw()


def where(url: str) -> str:
    """The URL without its query: safe to show."""
    split = urlsplit(url)
    return f"{split.scheme}://{split.netloc.rpartition('@')[2]}{split.path}"


class Downloader:
    def __init__(
        self,
        *,
        timeout_s: float,
        attempts: int,
        max_size: int,
        backoff_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,  # tests: httpx.MockTransport
    ) -> None:
        self.timeout_s, self.attempts, self.max_size = timeout_s, attempts, max_size
        self.backoff_s = backoff_s
        self._transport = transport
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()  # threads of resolve_many make the client once

    def _http(self) -> httpx.Client:
        if self._client is not None:
            return self._client
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    timeout=httpx.Timeout(self.timeout_s),
                    follow_redirects=False,  # a redirect could lead anywhere
                    limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
                    transport=self._transport,
                )
            return self._client

    def fetch(
        self,
        url: str,
        *,
        path: str,
        sha256: str,
        size: int,
        to_file: Callable[[], Path] | None = None,
        keep: bool = False,
    ) -> Fetched:
        """GET ``url``: ``size`` bytes hashing to ``sha256``, in memory or (``to_file``) in
        the file it names, or (``keep`` too) both. Raises Expired, PayloadMissing,
        ChecksumMismatch, ContentRefused, or ContentUnavailable once the attempts are spent."""
        retrying = Retrying(
            retry=retry_if_exception_type(ContentUnavailable),
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential_jitter(
                multiplier=self.backoff_s, max=8 * self.backoff_s, jitter=self.backoff_s
            ),
            reraise=True,
        )
        return retrying(self._once, url, path, sha256, size, to_file, keep)

    def _once(
        self,
        url: str,
        path: str,
        sha256: str,
        size: int,
        to_file: Callable[[], Path] | None,
        keep: bool,
    ) -> Fetched:
        shown = where(url)
        try:
            with self._http().stream("GET", url) as response:
                self._check_status(response, path, shown)
                announced = response.headers.get("content-length")
                if announced is not None and announced.isdigit():
                    if int(announced) > self.max_size:
                        raise ContentRefused(
                            path,
                            f"{shown} announces {announced} bytes, above the maximum of"
                            f" {self.max_size} (cache.max_object_size)",
                        )
                    if int(announced) != size:
                        raise ChecksumMismatch(
                            path, f"{shown} holds {announced} bytes, the event says {size}"
                        )
                return self._body(response, path, shown, sha256, size, to_file, keep)
        except httpx.TimeoutException as exc:
            raise ContentUnavailable(path, f"{shown}: timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise ContentUnavailable(path, f"{shown}: {type(exc).__name__}") from None

    def _check_status(self, response: httpx.Response, path: str, shown: str) -> None:
        status = response.status_code
        if status == 200:
            return
        body = response.read()[:2000].decode(errors="replace")
        if status in (429,) or status >= 500:
            raise ContentUnavailable(path, f"{shown}: HTTP {status}")
        if status == 403 and ("expired" in body.lower() or "AccessDenied" in body):
            raise Expired(shown)
        if status == 404:
            code = "NoSuchBucket" if "NoSuchBucket" in body else "NoSuchKey"
            raise PayloadMissing(path, f"{shown}: HTTP 404 ({code})")
        raise PayloadMissing(path, f"{shown}: HTTP {status}")

    def _body(
        self,
        response: httpx.Response,
        path: str,
        shown: str,
        sha256: str,
        size: int,
        to_file: Callable[[], Path] | None,
        keep: bool,
    ) -> Fetched:
        digest, seen = hashlib.sha256(), 0
        chunks: list[bytes] = []
        target = to_file() if to_file is not None else None
        out = target.open("wb") if target is not None else None
        keep = keep or out is None
        try:
            for chunk in _pieces(response):
                seen += len(chunk)
                if seen > size:
                    raise ChecksumMismatch(path, f"{shown} sends more than the {size} bytes")
                digest.update(chunk)
                if out is not None:
                    out.write(chunk)
                if keep:
                    chunks.append(chunk)
            if seen != size or digest.hexdigest() != sha256:
                raise ChecksumMismatch(
                    path,
                    f"{shown}: {seen} bytes hashing to {digest.hexdigest()},"
                    f" not {size} bytes of {sha256}",
                    actual_sha256=digest.hexdigest(),
                    actual_size=seen,
                )
        except BaseException:
            if out is not None:
                out.close()
                assert target is not None  # noqa: S101 - opened together
                target.unlink(missing_ok=True)
            raise
        if out is not None:
            out.close()
        return Fetched(b"".join(chunks) if keep else None, target)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
