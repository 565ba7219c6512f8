"""Which configured git credential, if any, a URL is given.

A credential (``git.credentials`` in settings) names a URL prefix: a scheme,
a host, an optional port and an optional path, as git's own ``http.<url>.*``
and ``credential.<url>.*`` settings do. A URL gets the credential whose prefix
it falls under, the longest prefix if several do, where falling under means:

- the same scheme (an ``https://`` credential is never used for ``http://``),
  and an ``http://`` one only with ``allow_http`` (it travels in clear text);
- the same host, compared case-insensitively, and the same port (the scheme's
  default when none is written): never another host;
- a path that starts with the prefix's path at a ``/`` boundary:
  ``https://host/org`` covers ``https://host/org/repo.git``, not
  ``https://host/organisation/x``; a URL whose path has ``.`` or ``..``
  segments gets no credential, since they could climb out of the prefix.

Anything else gets none. What git does with a redirect is settled where the
header is set (:func:`storage.git_remote.auth_environment`: no redirects).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from headrace.settings import GitCredential

_DEFAULT_PORTS = {"http": 80, "https": 443}


class Origin(NamedTuple):
    """A URL as credentials are matched against it."""

    scheme: str  # "http" or "https"
    host: str  # lower case
    port: int
    path: str  # starts and ends with "/", no empty segments


def normalise(url: str) -> Origin | None:
    """``url``'s origin and path, or None: not http(s), malformed, or with dot segments."""
    try:
        split = urlsplit(url)
        port = split.port
    except ValueError:
        return None
    scheme = split.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not split.hostname:
        return None
    segments = [s for s in split.path.split("/") if s]
    if any(unquote(s) in (".", "..") for s in segments):
        return None
    path = "/" + "".join(f"{s}/" for s in segments)
    return Origin(scheme, split.hostname.lower(), port or _DEFAULT_PORTS[scheme], path)


def credential_for(url: str, credentials: Sequence[GitCredential]) -> GitCredential | None:
    """The credential to send to ``url``: the longest prefix it falls under, or None."""
    target = normalise(url)
    if target is None:
        return None
    best: GitCredential | None = None
    best_length = -1
    for credential in credentials:
        prefix = normalise(credential.url_prefix)
        if prefix is None or prefix[:3] != target[:3]:
            continue  # another scheme, host or port
        if target.scheme == "http" and not credential.allow_http:
            continue
        if target.path.startswith(prefix.path) and len(prefix.path) > best_length:
            best, best_length = credential, len(prefix.path)
    return best
