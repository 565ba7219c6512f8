"""Keeping credentials out of URLs, messages and logs.

:func:`strip_credentials` turns a URL that may carry a secret into one that is
safe to publish in an event or a log line; :func:`credentials_in` lists the
secrets a URL carries so that they can be scrubbed from text that was
produced with it (a git error message, a traceback). A :class:`Redactor`
holds known secrets and replaces them with ``***``; :class:`RedactingFilter`
does that to every log record before a handler formats it.

Where a known secret is masked depends on what it looks like
(:func:`is_distinctive`):

- a distinctive secret (at least 24 characters, or at least 12 mixing two
  kinds of letters, digits and other characters: ``ghp_...``, ``tok-1f3e...``,
  ``s3cr3t-token``) is masked wherever it stands, unless it is only part of a
  longer word (``[A-Za-z0-9_]`` on either side): such text does not occur by
  chance;
- any other secret (``headrace``, ``hunter22``, ``password``) is masked only
  where it stands as a credential: the userinfo of a URL
  (``https://headrace@host``, ``https://u:headrace@host``; for ssh the password
  only), the value of a key named like a secret (``password=headrace``,
  ``?token=headrace``, ``PGPASSWORD=headrace``, ``'sasl.password': 'headrace'``,
  ``secret_key: headrace``) and an ``Authorization:`` header's credentials. A
  value ends at white space, a quote, a bracket or ``&;,#|``:
  ``password=headrace1`` is not the secret ``headrace``. Elsewhere the text is
  ordinary (``create bucket headrace-content`` stays as written).

Secrets read from the environment follow the same rule: a long random value is
masked everywhere, a short one only as a credential.

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
DISTINCTIVE_LENGTH = 12  # and two kinds of character: masked by value everywhere
LONG_LENGTH = 24  # masked by value everywhere, whatever it is made of
MASK = "***"

_SSH_SCHEMES = frozenset({"ssh", "git+ssh", "ssh+git"})
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Where a secret stands as a credential; each is followed by the secret itself.
_USERINFO = r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<user>[^\s/?#@:]*:)?"
_KEY = (  # "key" and "sig" only as a whole segment: not "monkey", "hotkey"
    r"(?<![\w.-])(?:[\w.-]*?(?:token|password|passwd|pwd|secret|signature|credentials?)"
    r"|(?:[\w.-]*[_.-])?(?:key|sig))"
)
_PAIR = rf"(?i:{_KEY})[\"']?\s*[:=]\s*[\"']?"
_HEADER = r"(?i:authorization)[\"']?\s*[:=]\s*[\"']?(?:[A-Za-z]+\s+)?"
_VALUE_END = r"(?=[\s&;,#|'\"`<>()\[\]{}]|$)"


def _as_credential(secrets: str) -> re.Pattern[str]:
    """``secrets`` (an alternation) where they stand as credentials."""
    url, key = f"(?P<url>{_USERINFO})", f"(?P<key>{_PAIR}|{_HEADER})"
    return re.compile(f"{url}(?:{secrets})(?=@)|{key}(?:{secrets}){_VALUE_END}")


def _anywhere(secrets: str) -> re.Pattern[str]:
    """``secrets`` (an alternation) anywhere but inside a longer word."""
    return re.compile(f"(?<![A-Za-z0-9_])(?:{secrets})(?![A-Za-z0-9_])")


def is_distinctive(secret: str) -> bool:
    """Whether ``secret`` is unlikely to occur in ordinary text, and so is masked by
    value everywhere: 24 characters or more, or 12 or more of two kinds (letters,
    digits, other characters). Other secrets are masked only as credentials."""
    kinds = sum(
        any(test(c) for c in secret)
        for test in (str.isalpha, str.isdigit, lambda c: not c.isalnum())
    )
    return len(secret) >= LONG_LENGTH or (len(secret) >= DISTINCTIVE_LENGTH and kinds >= 2)


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
    """Known secrets, replaced by ``***`` where they appear in a text: everywhere if
    distinctive, else where they stand as credentials (see the module docstring).

    With ``from_environ=True`` the values of environment variables whose names
    end with :data:`SECRET_ENV_SUFFIXES` are added at first use, not before.
    """

    def __init__(self, secrets: Iterable[str] = (), *, from_environ: bool = False) -> None:
        self._lock = threading.Lock()
        self._secrets: dict[str, bool] = {}  # each form: whether its secret is distinctive
        self._patterns: tuple[re.Pattern[str] | None, re.Pattern[str] | None] | None = None
        self._environ_pending = from_environ
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        """Remember ``secret`` (and its percent-encoded form, masked by the same rule)."""
        distinctive = is_distinctive(secret)
        forms = (secret, quote(secret, safe="")) if secret else ()
        with self._lock:
            for form in forms:
                known = self._secrets.get(form)
                if known is None or (distinctive and not known):  # new, or now distinctive
                    self._secrets[form] = distinctive
                    self._patterns = None

    def add_url(self, url: str) -> None:
        for secret in credentials_in(url):
            self.add(secret)

    def add_environ(self, environ: Mapping[str, str]) -> None:
        for name, value in environ.items():
            if name.upper().endswith(SECRET_ENV_SUFFIXES) and value:
                self.add(value)

    def _compiled(self) -> tuple[re.Pattern[str] | None, re.Pattern[str] | None]:
        """(every secret where it stands as a credential, distinctive ones anywhere)."""
        if self._environ_pending:
            self._environ_pending = False
            self.add_environ(os.environ)
        with self._lock:
            if self._patterns is None:
                every = _alternation(self._secrets)
                distinctive = _alternation(s for s, d in self._secrets.items() if d)
                self._patterns = (
                    _as_credential(every) if every else None,
                    _anywhere(distinctive) if distinctive else None,
                )
            return self._patterns

    def redact(self, text: str) -> str:
        as_credential, anywhere = self._compiled()
        if as_credential is not None:
            text = as_credential.sub(_mask_credential, text)
        return anywhere.sub(MASK, text) if anywhere is not None else text

    def __len__(self) -> int:
        self._compiled()
        return len(self._secrets)


def _alternation(secrets: Iterable[str]) -> str:
    ordered = sorted(secrets, key=lambda s: (-len(s), s))  # longest first
    return "|".join(re.escape(s) for s in ordered)


def _mask_credential(match: re.Match[str]) -> str:
    if match.group("url") is None:
        return match.group("key") + MASK
    if match.group("user") is None and match.group("scheme").lower() in _SSH_SCHEMES:
        return match.group(0)  # an ssh user name is not a secret
    return match.group("url") + MASK


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
