"""Network git commands for the clone cache: authenticated, bounded, redacted.

:func:`auth_environment` turns a token into an ``Authorization`` header passed
through ``GIT_CONFIG_COUNT`` environment variables, scoped to the remote's
origin, with credential helpers and prompts off: it never reaches a command
line, a stored URL or a file. Redirects are not followed while a header is set:
with git's default (``http.followRedirects=initial``) a remote that redirects
to another host gets every later request there, header included (measured with
git 2.39: the ``git-upload-pack`` POST carried it). Which token a URL gets is
decided by the caller (:mod:`storage.git_credentials`).

:class:`RemoteCall` runs ``git`` for one URL with a timeout (``clone_timeout``
for clones and blob fetches), and turns git's stderr into a one-line, redacted
:class:`GitError` (terminal: missing or refused credentials, an unknown ref, a
redirect) or :class:`GitUnavailable` (transient: the remote down or slow).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from headrace.redact import REDACTOR, Redactor, credentials_in
from storage.git import GitError, GitUnavailable, error_line, pinned_environment, run_git

_AUTH_FAILED = (  # what git's stderr says when credentials are missing or refused
    "authentication failed", "terminal prompts disabled", "could not read username",
    "could not read password", "permission denied (publickey", "returned error: 401",
    "returned error: 403",
)  # fmt: skip
_UNAVAILABLE = (  # ... and when the remote is down or slow: worth retrying
    "could not resolve host", "failed to connect", "couldn't connect", "connection refused",
    "connection reset", "timed out", "early eof", "rpc failed", "hung up unexpectedly",
    "returned error: 5", "no route to host", "network is unreachable", "temporary failure",
    "operation too slow",
)  # fmt: skip


def auth_environment(
    url: str, token: str | None = None, *, username: str | None = None
) -> tuple[dict[str, str], list[str]]:
    """The git environment that authenticates to ``url``, and the secrets it holds.

    ``user:secret@`` in an http(s) URL is used as is; a lone ``token@`` or the
    ``token`` argument becomes the password of ``username`` (else the URL's user
    name, else ``x-access-token``). Other schemes get no header.
    """
    env = {"GIT_HTTP_LOW_SPEED_LIMIT": "1", "GIT_HTTP_LOW_SPEED_TIME": "60"}
    env = {k: os.environ.get(k, v) for k, v in env.items()}
    secrets = [s for s in [*credentials_in(url), token] if s]
    split = urlsplit(url)
    user, password = unquote(split.username or ""), unquote(split.password or "")
    if token is None and split.password is None and user:
        user, password = "x-access-token", user  # the lone user name is the token
    elif token is not None:
        user, password = username or user or "x-access-token", token
    if split.scheme.lower() not in ("http", "https") or not password:
        return env, secrets
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    origin = f"{split.scheme}://{split.netloc.rpartition('@')[2]}/"
    env.update(
        GIT_CONFIG_COUNT="3",
        GIT_CONFIG_KEY_0=f"http.{origin}.extraHeader",
        GIT_CONFIG_VALUE_0=f"Authorization: Basic {basic}",
        GIT_CONFIG_KEY_1="credential.helper",  # none: nothing else answers, nothing is stored
        GIT_CONFIG_VALUE_1="",
        GIT_CONFIG_KEY_2="http.followRedirects",  # the header must not follow one elsewhere
        GIT_CONFIG_VALUE_2="false",
        GIT_ASKPASS="",  # set but empty: no askpass program either
    )
    return env, [*secrets, basic]


class RemoteCall:
    """Runs network git commands for one URL: bounded, authenticated, redacted."""

    def __init__(
        self,
        url: str,
        auth: dict[str, str],
        redactor: Redactor,
        *,
        timeout: float,
        clone_timeout: float,
    ) -> None:
        self.url = url
        self.auth = auth
        self.redactor = redactor
        self.timeout, self.clone_timeout = timeout, clone_timeout

    def fetch(self, git_dir: Path, args: Sequence[str]) -> None:
        self.git(git_dir, ["-C", str(git_dir), "fetch", "--quiet", *args], "fetch")

    def git(
        self,
        git_dir: Path,
        args: Sequence[str],
        what: str,
        *,
        stdin: bytes = b"",
        big: bool = False,
        local: bool = False,
    ) -> None:
        """``git <args>`` for the repository at ``git_dir`` (which a clone creates)."""
        timeout = self.clone_timeout if big or what == "clone" else self.timeout
        env = {**pinned_environment(git_dir), **({} if local else self.auth)}
        ran = run_git(args, cwd=git_dir.parent, env=env, timeout=timeout, stdin=stdin)
        if ran.timed_out:
            raise GitUnavailable(f"git {what} {self.url}: no answer within {timeout:g}s")
        if ran.status != 0:
            raise self.error(what, ran.stderr)

    def error(self, what: str, stderr: str) -> GitError | GitUnavailable:
        text = self.redactor.redact(REDACTOR.redact(stderr)).lower()
        prefix = f"git {what} {self.url}"
        if any(sign in text for sign in _AUTH_FAILED):
            return GitError(f"{prefix}: authentication failed (credentials missing or refused)")
        reason = self.redactor.redact(REDACTOR.redact(error_line(stderr)))
        if "returned error: 30" in text:  # a redirect, not followed with a token set
            reason += " (a redirect: not followed with credentials; use the URL it points to)"
        if any(sign in text for sign in _UNAVAILABLE):
            return GitUnavailable(f"{prefix}: {reason}")
        return GitError(f"{prefix}: {reason}")
