"""A clone cache for git URLs: one bare, blob-less clone per credential-free URL.

``GitCache(root).repo(url, ref)`` returns a :class:`~storage.git.GitRepo` at
``root/<sha256(url)[:16]>.git`` and the commit ``ref`` names there:

- the first call clones with ``git clone --bare --filter=blob:none`` (all
  commits and trees, no blobs; a server that does not support filters sends a
  full clone instead, which git handles by itself), into a temporary
  directory renamed into place, so an interrupted clone leaves nothing;
- later calls fetch every branch and tag (cheap without blobs) instead of
  cloning again; a full commit id that is already cached needs no fetch at
  all, and one that no branch reaches is fetched by id;
- then the blobs of that commit's tree that are missing are fetched in one
  batch, so reading the tree needs no network and no credentials.

Credentials never reach the command line, the stored ``remote.origin.url``
or any file in the cache: for http(s) the token (from the URL's userinfo or
``token=``) travels as an ``Authorization`` header set through
``GIT_CONFIG_COUNT`` environment variables, scoped to the remote's origin,
with credential helpers and prompts off. Every message is redacted.

One ``fcntl.flock`` lock file per cached URL serializes clones and fetches
between processes; waiting for it is bounded (``GitUnavailable`` after
``lock_timeout``). Network commands run in their own session and are killed
with their children after ``timeout``.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

from headrace.redact import REDACTOR, Redactor, credentials_in, strip_credentials
from storage.git import GitError, GitRepo, GitUnavailable, error_line, git_environment

log = logging.getLogger(__name__)

_FULL_ID = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")
_CLONE_CONFIG = (  # a bare clone fetches no refs by default; no gc under readers' feet
    ("--replace-all", "remote.origin.fetch", "+refs/heads/*:refs/heads/*"),
    ("--add", "remote.origin.fetch", "+refs/tags/*:refs/tags/*"),
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
)
_AUTH_FAILED = (
    "authentication failed",
    "terminal prompts disabled",
    "could not read username",
    "could not read password",
    "permission denied (publickey",
    "returned error: 401",
    "returned error: 403",
)
_UNAVAILABLE = (
    "could not resolve host",
    "failed to connect",
    "couldn't connect",
    "connection refused",
    "connection reset",
    "timed out",
    "early eof",
    "rpc failed",
    "hung up unexpectedly",
    "returned error: 5",
    "no route to host",
    "network is unreachable",
    "temporary failure",
    "operation too slow",
)


def auth_environment(url: str, token: str | None = None) -> tuple[dict[str, str], list[str]]:
    """The git environment that authenticates to ``url``, and the secrets it holds.

    ``user:secret@`` in an http(s) URL is used as is; a lone ``token@`` or the
    ``token`` argument becomes the password of user ``x-access-token`` (or of
    the URL's user name, when both are given). Other schemes get no header.
    """
    env = {"GIT_HTTP_LOW_SPEED_LIMIT": "1", "GIT_HTTP_LOW_SPEED_TIME": "60"}
    env = {k: os.environ.get(k, v) for k, v in env.items()}
    secrets = [s for s in [*credentials_in(url), token] if s]
    split = urlsplit(url)
    user, password = unquote(split.username or ""), unquote(split.password or "")
    if token is None and split.password is None and user:
        user, password = "x-access-token", user  # the lone user name is the token
    elif token is not None:
        user, password = user or "x-access-token", token
    if split.scheme.lower() not in ("http", "https") or not password:
        return env, secrets
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    origin = f"{split.scheme}://{split.netloc.rpartition('@')[2]}/"
    env.update(
        GIT_CONFIG_COUNT="2",
        GIT_CONFIG_KEY_0=f"http.{origin}.extraHeader",
        GIT_CONFIG_VALUE_0=f"Authorization: Basic {basic}",
        GIT_CONFIG_KEY_1="credential.helper",  # none: nothing else answers, nothing is stored
        GIT_CONFIG_VALUE_1="",
        GIT_ASKPASS="",  # set but empty: no askpass program either
    )
    return env, [*secrets, basic]


class GitCache:
    """Bare partial clones of remote repositories under ``root``."""

    def __init__(self, root: Path, *, timeout: float = 600.0, lock_timeout: float = 600.0) -> None:
        self.root = Path(root).absolute()
        self.timeout = timeout
        self.lock_timeout = lock_timeout

    def location(self, url: str) -> Path:
        """Where the clone of ``url`` is (or would be) kept."""
        digest = hashlib.sha256(strip_credentials(url).encode()).hexdigest()[:16]
        return self.root / f"{digest}.git"

    def repo(
        self, url: str, ref: str | None = None, *, token: str | None = None
    ) -> tuple[GitRepo, str]:
        """The cached repository of ``url``, brought up to date, and the commit ``ref``
        (default: the remote's HEAD) names in it."""
        clean = strip_credentials(url)
        if clean.startswith("-"):
            raise GitError(f"bad repository URL {clean!r}")
        env, secrets = auth_environment(url, token)
        for secret in secrets:
            REDACTOR.add(secret)  # any later log line that quotes it is scrubbed
        call = _Call(clean, env, Redactor(secrets), self.timeout)
        dest = self.location(url)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked(dest, clean):
            cloned = False
            if GitRepo.discover(dest) is None:
                self._clone(call, dest)
                cloned = True
            repo = GitRepo(dest, url=clean, env=env)
            commit = self._resolve(call, repo, ref, fetch=not cloned)
            self._prefetch(call, repo, commit)
        return repo, commit

    def size(self) -> int:
        """Bytes the cache takes on disk."""
        total = 0
        for folder, _, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.lstat(os.path.join(folder, name)).st_size
                except FileNotFoundError:  # removed by a fetch running meanwhile
                    pass
        return total

    def _clone(self, call: _Call, dest: Path) -> None:
        if dest.exists():
            log.warning("the cached clone %s is not a repository: cloning again", dest)
            shutil.rmtree(dest)
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("cloning %s into %s", call.url, dest)
        clone = ["clone", "--bare", "--quiet"]
        try:
            call.git([*clone, "--filter=blob:none", "--", call.url, str(tmp)], "clone")
        except GitError as exc:  # a server that refuses filters outright: a full clone
            if "filter" not in str(exc):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            call.git([*clone, "--", call.url, str(tmp)], "clone")
        for setting in _CLONE_CONFIG:
            call.git(["-C", str(tmp), "config", *setting], "configure")
        tmp.rename(dest)

    def _prefetch(self, call: _Call, repo: GitRepo, commit: str) -> None:
        """Fetch the blobs of ``commit`` that a partial clone lacks, in one batch."""
        missing = repo.missing_objects(commit)
        if not missing:
            return
        log.info("fetching %s missing objects of %s at %s", len(missing), call.url, commit)
        args = ["-C", str(repo.path), "-c", "fetch.negotiationAlgorithm=noop", "fetch", "--quiet"]
        args += ["--no-tags", "--no-write-fetch-head", "--recurse-submodules=no"]
        args += ["--filter=blob:none", "--stdin", "origin"]
        call.git(args, "fetch", stdin="".join(f"{oid}\n" for oid in missing))

    def _resolve(self, call: _Call, repo: GitRepo, ref: str | None, *, fetch: bool) -> str:
        if ref is not None and _FULL_ID.fullmatch(ref) and repo.has_commit(ref):
            return ref.lower()  # a commit never changes: no need to ask the remote
        if fetch:
            log.info("fetching %s", call.url)
            call.git(["-C", str(repo.path), "fetch", "--quiet", "--prune", "origin"], "fetch")
        try:
            return repo.resolve(ref)
        except GitError:
            if ref is None or not _FULL_ID.fullmatch(ref):
                raise
        try:  # a commit no branch or tag reaches, asked for by id
            call.git(
                ["-C", str(repo.path), "fetch", "--quiet", "--no-tags", "origin", ref], "fetch"
            )
        except GitError as exc:
            raise GitError(f"unknown ref {ref!r} in {call.url}") from exc
        return repo.resolve(ref)

    @contextmanager
    def _locked(self, dest: Path, url: str) -> Iterator[None]:
        with dest.with_suffix(".lock").open("a+b") as handle:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise GitUnavailable(
                            f"the clone of {url} stayed locked by another process "
                            f"for {self.lock_timeout:g}s ({dest.with_suffix('.lock')})"
                        ) from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class _Call:
    """Runs network git commands for one URL: bounded, authenticated, redacted."""

    def __init__(self, url: str, env: dict[str, str], redactor: Redactor, timeout: float) -> None:
        self.url = url
        self.env = git_environment(env)
        self.redactor = redactor
        self.timeout = timeout

    def git(self, args: Sequence[str], what: str, *, stdin: str | None = None) -> None:
        try:
            argv = ["git", *args]
            proc = subprocess.Popen(  # noqa: S603 - argv built here, no shell
                argv,
                stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.env,
                start_new_session=True,  # no terminal to prompt on; killed as a group
            )
        except FileNotFoundError as exc:
            raise GitError("git is not installed (no `git` on PATH)") from exc
        with proc:
            try:
                data = None if stdin is None else stdin.encode()
                _, stderr = proc.communicate(data, self.timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise GitUnavailable(
                    f"git {what} {self.url}: no answer within {self.timeout:g}s"
                ) from None
        if proc.returncode != 0:
            raise self.error(what, stderr)

    def error(self, what: str, stderr: bytes) -> GitError | GitUnavailable:
        text = self.redactor.redact(REDACTOR.redact(stderr.decode(errors="replace"))).lower()
        prefix = f"git {what} {self.url}"
        if any(sign in text for sign in _AUTH_FAILED):
            return GitError(f"{prefix}: authentication failed (credentials missing or refused)")
        reason = self.redactor.redact(REDACTOR.redact(error_line(stderr)))
        if any(sign in text for sign in _UNAVAILABLE):
            return GitUnavailable(f"{prefix}: {reason}")
        return GitError(f"{prefix}: {reason}")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill a process started in its own session, and everything it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()
