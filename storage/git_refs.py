"""What a git reference from an event may be, and the errors of git access.

:func:`check_reference` refuses (:class:`GitRefused`, terminal) a reference that
must not reach git, before any I/O: a scheme not allowed (a bare path counts as
``file``), a transport helper (``<transport>::``, ``ext``, ``fd``), anything that
looks like an option, a path that leaves the tree, a malformed object id, a URL
that carries credentials.

Errors (``StorageError`` from headrace.errors)::

    StorageError
     ├── GitError           a repository, ref or object that cannot be read (terminal)
     │    └── GitRefused    a hostile or disallowed reference, refused before any I/O
     └── GitUnavailable     a remote that did not answer, a lock held too long (transient)
"""

from __future__ import annotations

import re
from collections.abc import Collection
from urllib.parse import urlsplit

from headrace.errors import StorageError, Terminal, Transient
from headrace.redact import credentials_in, strip_credentials

FULL_ID = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")  # SHA-1 or SHA-256
_HELPER = re.compile(r"[A-Za-z0-9][A-Za-z0-9+.-]*::")  # <transport>::<address>
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_SCHEME_ALIASES = {"git+ssh": "ssh", "ssh+git": "ssh"}
_NEVER = frozenset({"ext", "fd"})  # transports that run a command or use a descriptor
_MAX_PATH = 4096


class GitError(StorageError, Terminal):
    """A repository, ref or object that does not exist or cannot be read."""


class GitRefused(GitError):
    """A reference refused before any I/O: a scheme not allowed, a transport helper,
    a name that looks like an option, a path that escapes the tree, a malformed id."""

    dead_letter_reason = "REFUSED"


class GitUnavailable(StorageError, Transient):
    """A remote did not answer (or the clone cache stayed locked); try again later."""


def _refuse(what: str, value: str, why: str) -> GitRefused:
    shown = repr(value if len(value) <= 80 else value[:77] + "...")
    return GitRefused(f"refused git {what} {shown}: {why}")


def url_scheme(url: str) -> str:
    """The transport git would use for ``url`` ("https", "http", "ssh", "file" for a
    local path, or another scheme's name); GitRefused for what is never allowed."""
    shown = strip_credentials(url)
    if not url or url.startswith("-"):
        raise _refuse("URL", shown, "empty or looks like an option")
    if any(ord(c) < 0x20 or c == "\x7f" for c in url):
        raise _refuse("URL", shown, "control characters")
    if _HELPER.match(url):
        raise _refuse("URL", shown, "a transport helper (<transport>::) is never allowed")
    match = _SCHEME.match(url)
    if match:
        scheme = match.group(1).lower()
        scheme = _SCHEME_ALIASES.get(scheme, scheme)
        if scheme in _NEVER:
            raise _refuse("URL", shown, f"the {scheme} transport is never allowed")
        if scheme in ("http", "https", "ssh"):
            try:
                split = urlsplit(url)
                split.port  # noqa: B018 - raises ValueError for a bad port
            except ValueError as exc:
                raise _refuse("URL", shown, f"malformed ({exc})") from None
            host, user = split.hostname or "", split.username or ""
            if not host or host.startswith("-") or user.startswith("-"):
                raise _refuse("URL", shown, "no host, or a host or user like an option")
        return scheme
    colon, slash = url.find(":"), url.find("/")
    if colon > 0 and (slash < 0 or colon < slash):  # scp-like [user@]host:path
        user, _, host = url[:colon].rpartition("@")
        if not host or host.startswith("-") or user.startswith("-"):
            raise _refuse("URL", shown, "a host or user like an option")
        if url[colon + 1 :].startswith("-"):
            raise _refuse("URL", shown, "a path like an option")
        return "ssh"
    return "file"


def check_url(url: str, allowed_schemes: Collection[str], *, credentials: bool = False) -> str:
    """``url``'s scheme, if it is in ``allowed_schemes`` (a local path is "file"), and
    unless ``credentials``, only if the URL carries none; else GitRefused."""
    scheme = url_scheme(url)
    if scheme not in allowed_schemes:
        allowed = ", ".join(sorted(allowed_schemes)) or "none"
        why = f"scheme {scheme} is not allowed (git.allowed_schemes: {allowed})"
        raise _refuse("URL", strip_credentials(url), why)
    if not credentials and credentials_in(url):
        why = "it carries credentials (they come from settings, never from a reference)"
        raise _refuse("URL", strip_credentials(url), why)
    return scheme


def check_object_id(oid: str, what: str = "object id") -> str:
    """``oid`` in lower case, if it is a full SHA-1 or SHA-256 id; else GitRefused."""
    if oid.startswith("-"):
        raise _refuse(what, oid, "looks like an option")
    if not FULL_ID.fullmatch(oid):
        raise _refuse(what, oid, "not a full hex object id (40 or 64 digits)")
    return oid.lower()


def check_path(path: str) -> str:
    """``path`` if it names a file inside a tree: relative, '/'-separated, without
    empty, '.', '..' or '.git' components, backslashes or NUL; else GitRefused."""
    if not path:
        raise _refuse("path", path, "empty")
    for bad, why in (("\0", "a NUL byte"), ("\\", "a backslash")):
        if bad in path:
            raise _refuse("path", path, why)
    if path.startswith("/"):
        raise _refuse("path", path, "absolute")
    if path.startswith("-"):
        raise _refuse("path", path, "looks like an option")
    if len(path.encode("utf-8", "surrogateescape")) > _MAX_PATH:
        raise _refuse("path", path, f"longer than {_MAX_PATH} bytes")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise _refuse("path", path, f"a {part or 'empty'!r} component escapes the tree")
        if part.lower() == ".git":
            raise _refuse("path", path, "a .git component")
    return path


def check_reference(
    url: str,
    commit: str,
    path: str | None = None,
    blob_id: str | None = None,
    allowed_schemes: Collection[str] = ("https", "ssh"),
) -> None:
    """Refuse (GitRefused, terminal) a git reference that must not reach git: call it
    before any I/O. ``path`` ("" or None: read by ``blob_id``) and ``blob_id`` are
    optional but not both; the URL must carry no credentials."""
    check_url(url, allowed_schemes)
    commit = check_object_id(commit, "commit")
    if path:
        check_path(path)
    if blob_id is not None:
        if len(check_object_id(blob_id, "blob id")) != len(commit):
            raise _refuse("blob id", blob_id, "not of the commit's object format")
    elif not path:
        raise GitRefused("refused git reference: neither a path nor a blob id")
