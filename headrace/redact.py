"""Keeping credentials out of URLs, messages and logs.

:func:`strip_credentials` turns a URL that may carry a secret into one that is
safe to publish in an event or a log line; :func:`credentials_in` lists the
secrets a URL carries so that they can be scrubbed from text that was
produced with it (a git error message, a traceback). A :class:`Redactor`
holds known secrets and replaces them with ``***``; :class:`RedactingFilter`
does that to every log record before a handler formats it.

Which parts of a URL are secret:

- in ``http(s)://`` (and any other ``scheme://`` but ssh), the whole userinfo:
  ``https://tok@host/x`` carries a token as its user name;
- in ``ssh://user:pw@host/x``, the password; an ssh user name (``git``) is not
  a secret and the URL would not work without it, so it stays; scp-like
  ``git@host:org/repo.git`` is returned as given;
- query parameters named like secrets (:data:`SECRET_PARAMS`), anywhere.

Local paths and ``file://`` URLs carry no credentials and are never changed.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote

SECRET_PARAMS = frozenset(
    {
        "token",
        "access_token",
        "private_token",
        "key",
        "sig",
        "signature",
        "password",
        "secret",
        "client_secret",
        "api_key",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
    }
)
SECRET_ENV_SUFFIXES = ("TOKEN", "PASSWORD", "SECRET", "SECRET_KEY")
MIN_SECRET_LENGTH = 4  # shorter "secrets" would shred ordinary text
MASK = "***"

_SSH_SCHEMES = frozenset({"ssh", "git+ssh", "ssh+git"})
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def _split(url: str) -> tuple[str, str, str, str, str] | None:
    """``(scheme, userinfo, hostport, path, query+fragment)``, or None if not a URL to edit."""
    match = _SCHEME.match(url)
    if match is None or match.group(1).lower() == "file":
        return None
    scheme = match.group(1)
    rest = url[match.end() :]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    userinfo, at, hostport = authority.rpartition("@")
    if not at:
        userinfo = ""
    cut = min((i for i in (tail.find(c) for c in "?#") if i >= 0), default=len(tail))
    return scheme, userinfo, hostport, tail[:cut], tail[cut:]


def _secret_userinfo(scheme: str, userinfo: str) -> tuple[str, list[str]]:
    """The userinfo to keep and the secrets it carried."""
    if not userinfo:
        return "", []
    user, colon, password = userinfo.partition(":")
    if scheme.lower() in _SSH_SCHEMES:
        return user, [password] if colon and password else []
    secret = password if colon else user  # a lone user name is a token
    return "", [secret] if secret else []


def _split_query(query_and_fragment: str) -> tuple[list[tuple[str, str]], str]:
    """``([(raw_param, value)...], '#fragment')`` of ``?a=1&b=2#frag``."""
    query, hash_, fragment = query_and_fragment.partition("#")
    params = []
    for raw in query.removeprefix("?").split("&") if query else []:
        params.append((raw, raw.partition("=")[2]))
    return params, hash_ + fragment


def _is_secret_param(raw: str) -> bool:
    return unquote(raw.partition("=")[0]).strip().lower() in SECRET_PARAMS


def strip_credentials(url: str) -> str:
    """``url`` without userinfo secrets and secret query parameters."""
    parts = _split(url)
    if parts is None:
        return url
    scheme, userinfo, hostport, path, rest = parts
    kept_user, _ = _secret_userinfo(scheme, userinfo)
    params, fragment = _split_query(rest)
    kept = [raw for raw, _ in params if not _is_secret_param(raw)]
    query = "?" + "&".join(kept) if kept else ""
    authority = f"{kept_user}@{hostport}" if kept_user else hostport
    return f"{scheme}://{authority}{path}{query}{fragment}"


def credentials_in(url: str) -> list[str]:
    """The secrets ``url`` carries, as written and percent-decoded (no duplicates)."""
    parts = _split(url)
    if parts is None:
        return []
    scheme, userinfo, _, _, rest = parts
    _, found = _secret_userinfo(scheme, userinfo)
    params, _ = _split_query(rest)
    found += [value for raw, value in params if value and _is_secret_param(raw)]
    out: list[str] = []
    for secret in found:
        for form in (secret, unquote(secret)):
            if form not in out:
                out.append(form)
    return out


class Redactor:
    """Known secrets, replaced by ``***`` wherever they appear in a text.

    With ``from_environ=True`` the values of environment variables whose names
    end with :data:`SECRET_ENV_SUFFIXES` are added at first use, not before.
    """

    def __init__(self, secrets: Iterable[str] = (), *, from_environ: bool = False) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._environ_pending = from_environ
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        """Remember ``secret`` (and its percent-encoded form); short values are ignored."""
        forms = {secret, quote(secret, safe="")}
        with self._lock:
            new = {s for s in forms if len(s) >= MIN_SECRET_LENGTH} - self._secrets
            if new:
                self._secrets |= new
                self._pattern = None

    def add_url(self, url: str) -> None:
        for secret in credentials_in(url):
            self.add(secret)

    def add_environ(self, environ: Mapping[str, str]) -> None:
        for name, value in environ.items():
            if name.upper().endswith(SECRET_ENV_SUFFIXES) and value:
                self.add(value)

    def _compiled(self) -> re.Pattern[str] | None:
        if self._environ_pending:
            self._environ_pending = False
            self.add_environ(os.environ)
        with self._lock:
            if self._pattern is None and self._secrets:
                ordered = sorted(self._secrets, key=lambda s: (-len(s), s))  # longest first
                self._pattern = re.compile("|".join(re.escape(s) for s in ordered))
            return self._pattern

    def redact(self, text: str) -> str:
        pattern = self._compiled()
        return pattern.sub(MASK, text) if pattern is not None else text

    def __len__(self) -> int:
        self._compiled()
        return len(self._secrets)


class RedactingFilter(logging.Filter):
    """Formats each record's message, redacts it and stores it with no args.

    Attach it to handlers (a logger's own filters do not see records that
    propagate from its children). The exception text is redacted too and
    cached in ``record.exc_text``, which :class:`logging.Formatter` uses.
    """

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        redactor = self._redactor if self._redactor is not None else REDACTOR
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what can be shown
            message = f"{record.msg!s} {record.args!r}"
        record.msg = redactor.redact(message)
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redactor.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redactor.redact(record.stack_info)
        return True


REDACTOR = Redactor(from_environ=True)
"""The process-wide redactor: environment secrets, plus what callers add."""
