"""Refusals of hostile references, made before any I/O.

An event is input from anyone who can write to the topic: its URL must not make
a consumer fetch from an arbitrary or internal address, and its git reference
must not smuggle options or paths out of the tree into a git command.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

from storage.content.base import ContentRef
from storage.content.errors import ContentRefused


def allowed_endpoint(endpoint: str, secure: bool) -> tuple[str, str]:
    """(scheme, host:port) of a configured object-store endpoint, port made explicit."""
    scheme = "https" if secure else "http"
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        host, port = endpoint, "443" if secure else "80"
    return scheme, f"{host.lower()}:{port}"


def check_object_url(ref: ContentRef, allowed: Iterable[tuple[str, str]]) -> None:
    """The presigned URL must point at a configured endpoint and at the ref's own object."""
    assert ref.url is not None  # noqa: S101 - called for URLs only
    try:
        split = urlsplit(ref.url)
        port = split.port
    except ValueError as exc:
        raise ContentRefused(ref.path, f"malformed object URL ({exc})") from None
    scheme = split.scheme.lower()
    if scheme not in ("http", "https"):
        raise ContentRefused(ref.path, f"object URL scheme {scheme!r} is not http(s)")
    if split.username is not None or split.password is not None:
        raise ContentRefused(ref.path, "object URL carries credentials")
    host = (split.hostname or "").lower()
    where = f"{host}:{port or (443 if scheme == 'https' else 80)}"
    if (scheme, where) not in set(allowed):
        raise ContentRefused(
            ref.path, f"object URL host {where} is not a configured object-store endpoint"
        )
    expected = f"/{ref.bucket}/{ref.key}"
    if unquote(split.path) != expected:
        raise ContentRefused(ref.path, f"object URL does not name {expected}")


def check_size(ref: ContentRef, max_size: int) -> None:
    if ref.size > max_size:
        raise ContentRefused(
            ref.path,
            f"size {ref.size} is above the maximum of {max_size} bytes (cache.max_object_size)",
        )
