"""A git repository: refs, trees, blobs and changes, read through GitPython and git.

The one module that imports GitPython (``git``) and its object database
(``gitdb``). What each part of git access runs on, and why (figures in
docs/performance.md, "Git access: GitPython vs the git command line"):

- blobs, commits and trees one at a time: GitPython's persistent
  ``git cat-file --batch`` (``Repo(odbt=GitCmdObjectDB).odb.stream``), one
  process per repository, as fast as the hand-written one it replaced;
- whether an object is on disk: GitPython's object database (``GitDB``) reads
  the pack indexes itself, without starting git and without the lazy fetch a
  partial clone's ``git cat-file`` would make for a missing object;
- clones and fetches: ``git`` through GitPython's ``Git.execute``, which kills
  the command and its children after a timeout (``Repo.clone_from`` does not
  honour ``kill_after_timeout`` and is not used);
- listings (``ls-tree -r``, ``diff-tree``, ``ls-files``, ``rev-list
  --missing=print``) and ``rev-parse``: the git command line, streamed with
  ``-z``; GitPython's tree walk is slower and it has no ``--missing``.

Caller-given names follow ``--end-of-options``; every command runs without
the variables that point git at another repository (``GIT_DIR`` and friends,
as set inside git hooks) and with terminal prompts off. GitPython can add to
its commands' environment but not remove from it, so for its processes those
variables are pinned to this repository instead (:func:`pinned_environment`).

Paths are bytes to git. They are decoded as UTF-8 with ``surrogateescape``:
a path that is not valid UTF-8 is kept, not skipped, and
``path.encode("utf-8", "surrogateescape")`` gives its bytes back.

The errors (``GitError``, ``GitRefused``, ``GitUnavailable``) and the checks of
references from events are in :mod:`storage.git_refs`, re-exported here.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import git as gitpython
from git.objects.fun import tree_entries_from_data

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

from storage.git_refs import (
    FULL_ID,
    GitError,
    GitRefused,
    GitUnavailable,
    check_object_id,
    check_path,
    check_reference,
    check_url,
    url_scheme,
)

__all__ = [  # the reference checks and errors live in storage.git_refs; callers import here
    "FULL_ID",
    "OFFLINE",
    "SUBMODULE",
    "SYMLINK",
    "TREE",
    "Change",
    "GitError",
    "GitRefused",
    "GitRepo",
    "GitUnavailable",
    "Ran",
    "TreeEntry",
    "check_object_id",
    "check_path",
    "check_reference",
    "check_url",
    "error_line",
    "git_environment",
    "pinned_environment",
    "run_git",
    "url_scheme",
]

log = logging.getLogger(__name__)

SUBMODULE = "160000"
SYMLINK = "120000"
TREE = "40000"
_NOT_FILES = ("000000", SUBMODULE)  # diff-tree's mode of a missing side, and a gitlink
_CHUNK = 64 * 1024
_TREE_MEMO = 512  # parsed trees kept per repository for path lookups
# What `git rev-parse --local-env-vars` prints: variables that redirect git elsewhere.
_LOCAL_REPO_ENV = frozenset(
    "GIT_ALTERNATE_OBJECT_DIRECTORIES GIT_CONFIG GIT_CONFIG_PARAMETERS GIT_CONFIG_COUNT "
    "GIT_OBJECT_DIRECTORY GIT_DIR GIT_WORK_TREE GIT_IMPLICIT_WORK_TREE GIT_GRAFT_FILE "
    "GIT_INDEX_FILE GIT_NO_REPLACE_OBJECTS GIT_REPLACE_REF_BASE GIT_PREFIX "
    "GIT_INTERNAL_SUPER_PREFIX GIT_SHALLOW_FILE GIT_COMMON_DIR".split()
)
OFFLINE = {"GIT_ALLOW_PROTOCOL": ""}  # no transport at all: a partial clone never fetches


@dataclass(frozen=True)
class TreeEntry:
    path: str  # '/'-separated, relative to the repository root
    mode: str  # '100644', '100755', '120000' (symlink), '160000' (submodule: callers skip it)
    blob_id: str
    size: int  # blob size in bytes (0 for a submodule)


@dataclass(frozen=True)
class Change:
    status: str  # 'A', 'M' or 'D'; a rename is a 'D' of the old path and an 'A' of the new
    path: str


@dataclass(frozen=True)
class Ran:
    """How a git command run by :func:`run_git` ended."""

    status: int
    stderr: str
    timed_out: bool


def git_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment git runs in: this process's, minus repository pointers."""
    env = {k: v for k, v in os.environ.items() if k not in _LOCAL_REPO_ENV}
    env.update(GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    env.update(extra or {})
    return env


def pinned_environment(
    git_dir: Path, common_dir: Path | None = None, work_tree: Path | None = None
) -> dict[str, str]:
    """The repository pointers set to what git derives itself for ``git_dir``, so that
    ones inherited from this process (a git hook's ``GIT_DIR``) cannot redirect git.
    (``GIT_NO_REPLACE_OBJECTS`` and ``GIT_INTERNAL_SUPER_PREFIX`` have no neutral value.)"""
    common = common_dir or git_dir
    env = {
        "GIT_DIR": str(git_dir),
        "GIT_COMMON_DIR": str(common),
        "GIT_OBJECT_DIRECTORY": str(common / "objects"),
        "GIT_ALTERNATE_OBJECT_DIRECTORIES": "",
        "GIT_INDEX_FILE": str(git_dir / "index"),
        "GIT_CONFIG": str(common / "config"),
        "GIT_CONFIG_PARAMETERS": "",
        "GIT_CONFIG_COUNT": "0",
        "GIT_GRAFT_FILE": str(common / "info" / "grafts"),
        "GIT_SHALLOW_FILE": str(common / "shallow"),
        "GIT_REPLACE_REF_BASE": "refs/replace/",
        "GIT_IMPLICIT_WORK_TREE": "1",
        "GIT_PREFIX": "",
        "GIT_TERMINAL_PROMPT": "0",
    }
    if work_tree is not None:
        env["GIT_WORK_TREE"] = str(work_tree)
    return env


def run_git(
    args: Sequence[str], *, cwd: Path, env: Mapping[str, str], timeout: float, stdin: bytes = b""
) -> Ran:
    """``git <args>`` through GitPython's ``Git.execute``, with this process's environment
    plus ``env``, killed with every process it started after ``timeout`` seconds."""
    with tempfile.TemporaryFile() as istream:
        istream.write(stdin)
        istream.seek(0)
        try:
            status, _, stderr = gitpython.Git(cwd).execute(
                ["git", *args],
                istream=istream,
                env=dict(env),
                kill_after_timeout=timeout,
                with_extended_output=True,
                with_exceptions=False,
                stdout_as_string=False,
            )
        except gitpython.GitCommandNotFound as exc:
            raise GitError("git is not installed (no `git` on PATH)") from exc
    timed_out = status != 0 and stderr.startswith("Timeout: the command")
    return Ran(status, stderr, timed_out)


def error_line(stderr: bytes | str, default: str = "git failed") -> str:
    """The line of git's stderr that says what went wrong (its last ``fatal:``)."""
    text = stderr if isinstance(stderr, str) else stderr.decode(errors="replace")
    lines = [line.strip() for line in text.splitlines()]
    for prefix in ("fatal: ", "error: "):
        found = [line.removeprefix(prefix) for line in lines if line.startswith(prefix)]
        if found:
            return found[-1]
    return next((line for line in reversed(lines) if line), default)


# -- references from untrusted input --------------------------------------------------


def _decode_path(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _checked(name: str) -> str:
    if not name or name.startswith("-") or "\n" in name or "\0" in name:
        raise GitError(f"bad git object name {name!r}")
    return name


def _oid(name: str) -> bytes:
    if not FULL_ID.fullmatch(name):
        raise GitError(f"bad git object id {name!r}")
    return bytes.fromhex(name)


class _BlobStream(io.RawIOBase):
    """One object of the persistent ``cat-file --batch``: its ``size`` bytes. Closing it
    reads what is left, so that the next answer starts in step."""

    def __init__(self, stream: Any, size: int) -> None:
        self._stream, self._left = stream, size  # GitPython's CatFileContentStream

    def readable(self) -> bool:
        return True

    def readall(self) -> bytes:
        data: bytes = self._stream.read(self._left) if self._left else b""
        self._left -= len(data)
        if self._left:
            raise GitError("git cat-file --batch stopped inside a blob")
        return data

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        if self._left == 0:
            return 0
        data: bytes = self._stream.read(min(len(view), self._left))
        if not data:
            raise GitError("git cat-file --batch stopped inside a blob")
        view[: len(data)] = data
        self._left -= len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                while self._left and (data := self._stream.read(min(self._left, _CHUNK))):
                    self._left -= len(data)
            finally:
                super().close()


class GitRepo:
    """A git work tree or bare repository at ``path`` (its top level, exactly).

    Not thread-safe: its objects come from one ``cat-file --batch`` process, in turn."""

    def __init__(
        self,
        path: Path,
        *,
        url: str | None = None,
        env: Mapping[str, str] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        """``url``: the credential-free remote it mirrors; ``env``: extra git environment
        (the clone cache passes its authentication for a partial clone's lazy fetches, or
        :data:`OFFLINE`); ``on_close``: called once, by :meth:`close` or when collected."""
        self.path = Path(path).resolve()
        self.url = url
        self._extra = dict(env or {})
        self._env = git_environment(env)
        self._repo: gitpython.Repo | None = None
        self._db: Any = None  # gitdb's GitDB, untyped
        self._current: _BlobStream | None = None
        self._trees: OrderedDict[str, dict[str, tuple[str, str]]] = OrderedDict()
        self._roots: dict[str, str] = {}  # commit -> its tree, for path lookups
        self._done = weakref.finalize(self, _release, on_close)
        if not self.path.is_dir():
            raise GitError(f"{path} is not a directory")
        args = ["--is-bare-repository", "--is-inside-git-dir", "--absolute-git-dir"]
        out = self._git(
            ["rev-parse", *args, "--git-common-dir"], f"{path} is not a git repository"
        ).split("\n")
        bare, inside_git_dir, git_dir = out[0] == "true", out[1] == "true", Path(out[2])
        self.git_dir = git_dir.resolve()
        self.common_dir = (self.path / out[3]).resolve()
        self._worktree: Path | None = None
        if bare or inside_git_dir:  # a bare repository, or a .git directory itself
            if self.git_dir != self.path:
                raise GitError(f"{path} is inside the git directory {git_dir}, not its top")
        else:
            top = Path(self._git(["rev-parse", "--show-toplevel"], "no work tree")).resolve()
            if top != self.path:
                raise GitError(f"{path} is inside the work tree of {top}, not its top level")
            self._worktree = top

    @classmethod
    def discover(cls, path: Path) -> GitRepo | None:
        """The repository whose top level (work tree or bare) is ``path``, else None."""
        try:
            return cls(path)
        except GitError:
            return None

    def __repr__(self) -> str:
        return f"GitRepo({str(self.path)!r}, url={self.url!r})"

    @property
    def name(self) -> str:
        """How messages name this repository: its URL if it mirrors one, else its path."""
        return self.url or str(self.path)

    def worktree(self) -> Path | None:
        return self._worktree

    def resolve(self, ref: str | None = None) -> str:
        """The full commit id ``ref`` (default HEAD) names; GitError if none."""
        ref = ref or "HEAD"
        proc = self._run(
            ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{_checked(ref)}^{{commit}}"]
        )
        if proc.returncode != 0:
            raise GitError(f"unknown ref {ref!r} in {self.name}")
        return proc.stdout.decode().strip()

    # -- objects, through GitPython ------------------------------------------------

    def missing(self, oids: Iterable[str], *, refresh: bool = False) -> list[str]:
        """Those of ``oids`` not on disk (never fetched: a partial clone's missing blobs),
        in order, looked up in the pack indexes by GitPython's ``GitDB``. The packs are
        listed again first if ``refresh`` (a fetch just ran), or when one is missing."""
        fresh = self._db is None
        if self._db is None:
            self._db = gitpython.GitDB(str(self.common_dir / "objects"))
        if refresh and not fresh:
            self._db.update_cache(force=True)
        out = [oid for oid in oids if not self._db.has_object(_oid(oid))]
        if out and not (fresh or refresh):
            self._db.update_cache(force=True)  # packs another process's fetch added
            out = [oid for oid in out if not self._db.has_object(_oid(oid))]
        return out

    def has_object(self, oid: str) -> bool:
        return not self.missing([oid])

    def has_commit(self, commit: str) -> bool:
        return (
            bool(FULL_ID.fullmatch(commit))
            and self.has_object(commit.lower())
            and (self._db.info(bytes.fromhex(commit)).type == b"commit")
        )

    def open_blob(self, blob_id: str) -> BinaryIO:
        """A stream of the blob's bytes, from the repository's ``cat-file --batch``.
        Blobs are read one after another: opening the next one finishes this one (an
        unread rest is skipped). GitError if there is no such blob."""
        kind, stream = self._open(blob_id)
        if kind != "blob":
            stream.close()
            raise GitError(f"cannot read blob {blob_id} of {self.name}: it is a {kind}")
        return io.BufferedReader(stream, _CHUNK)

    def read_blob(self, blob_id: str) -> bytes:
        kind, stream = self._open(blob_id)
        with stream:
            if kind != "blob":
                raise GitError(f"cannot read blob {blob_id} of {self.name}: it is a {kind}")
            return stream.readall()

    def entry(self, commit: str, path: str) -> tuple[str, str] | None:
        """``(mode, object id)`` of ``path`` in ``commit``, read from its trees (which
        must be on disk; no blob is read); None if the tree has no such path."""
        tree = self._roots.get(commit)
        if tree is None:
            head = self._object(commit, "commit").split(b"\n", 1)[0]
            tree = head.removeprefix(b"tree ").decode("ascii")
            if len(self._roots) >= _TREE_MEMO:
                self._roots.clear()
            self._roots[commit] = tree
        found: tuple[str, str] | None = (TREE, tree)
        for part in path.split("/"):
            if found is None or found[0] != TREE:
                return None
            found = self._tree(found[1]).get(part)
        return found

    def close(self) -> None:
        """End the ``cat-file --batch`` process, if one runs (also done when collected)."""
        self._finish()
        if self._repo is not None:
            self._repo.close()
            self._repo = None
        self._done()

    def _gitpython(self) -> gitpython.Repo:
        if self._repo is None:
            try:
                repo = gitpython.Repo(self.path, odbt=gitpython.GitCmdObjectDB)
            except gitpython.GitError as exc:  # InvalidGitRepositoryError, NoSuchPathError
                raise GitError(f"{self.name} is not a git repository: {exc}") from None
            worktree = self._worktree
            env = pinned_environment(self.git_dir, self.common_dir, worktree)
            repo.git.update_environment(**{**env, **self._extra})
            self._repo = repo
        return self._repo

    def _finish(self) -> None:
        if self._current is not None:
            self._current.close()  # reads what is left: the next answer starts after it
            self._current = None

    def _open(self, oid: str, what: str = "blob") -> tuple[str, _BlobStream]:
        binsha = _oid(oid)
        self._finish()
        try:
            info = self._gitpython().odb.stream(binsha)
        except ValueError as exc:  # GitPython's reading of a "missing" answer
            if "could not be resolved" in str(exc):
                raise GitError(f"cannot read {what} {oid} of {self.name}: missing") from None
            self._stop()
            raise GitError(
                f"cannot read {what} {oid} of {self.name}: git cat-file stopped"
            ) from None
        except OSError as exc:
            self._stop()
            raise GitError(f"cannot read {what} {oid} of {self.name}: {exc}") from None
        self._current = _BlobStream(info.stream, info.size)
        kind = info.type  # bytes, as GitPython read the header
        return kind.decode() if isinstance(kind, bytes) else str(kind), self._current

    def _stop(self) -> None:
        """Forget a ``cat-file`` process that died: the next request starts another."""
        self._current = None
        if self._repo is not None:
            self._repo.git.clear_cache()

    def _object(self, oid: str, kind: str) -> bytes:
        found, stream = self._open(oid, kind)
        with stream:
            data = stream.readall() if found == kind else None
        if data is None:
            raise GitError(f"{oid} in {self.name} is a {found}, not a {kind}")
        return data

    def _tree(self, oid: str) -> dict[str, tuple[str, str]]:
        if oid in self._trees:
            self._trees.move_to_end(oid)
            return self._trees[oid]
        data = self._object(oid, "tree")
        try:
            parsed = {n: (f"{m:o}", b.hex()) for b, m, n in tree_entries_from_data(data)}
        except ValueError:  # GitPython refuses names like .git; git's own listing does not
            parsed = self._ls_tree(oid)
        self._trees[oid] = parsed
        while len(self._trees) > _TREE_MEMO:
            self._trees.popitem(last=False)
        return parsed

    def _ls_tree(self, tree: str) -> dict[str, tuple[str, str]]:
        out: dict[str, tuple[str, str]] = {}
        for record in self._records(["ls-tree", "-z", "--end-of-options", tree], "a tree"):
            meta, _, raw_name = record.partition(b"\t")
            mode, _kind, oid = meta.decode("ascii").split()
            out[_decode_path(raw_name)] = (mode.lstrip("0"), oid)
        return out

    # -- listings, through the git command line ------------------------------------

    def tree(self, commit: str) -> Iterator[TreeEntry]:
        """Every file of ``commit``, streamed in git's (byte-sorted) order."""
        args = ["ls-tree", "-r", "-l", "-z", "--full-tree", "--end-of-options", _checked(commit)]
        for record in self._records(args, f"the tree of {commit}"):
            meta, _, raw_path = record.partition(b"\t")
            mode, _kind, blob_id, size = meta.decode("ascii").split()
            yield TreeEntry(_decode_path(raw_path), mode, blob_id, 0 if size == "-" else int(size))

    def changes(self, since: str, commit: str) -> list[Change]:
        """Files added, modified or deleted from ``since`` to ``commit`` (no rename
        detection: a rename is a delete and an add). Submodules are left out."""
        args = ["diff-tree", "-r", "-z", "--raw", "--no-renames", "--end-of-options"]
        args += [_checked(since), _checked(commit)]
        records = list(self._records(args, f"the changes from {since} to {commit}"))
        out: list[Change] = []
        for meta, raw_path in zip(records[::2], records[1::2], strict=True):
            old_mode, new_mode = meta.decode("ascii").lstrip(":").split()[:2]
            old_file, new_file = old_mode not in _NOT_FILES, new_mode not in _NOT_FILES
            if old_file and new_file:
                out.append(Change("M", _decode_path(raw_path)))
            elif old_file or new_file:
                out.append(Change("A" if new_file else "D", _decode_path(raw_path)))
            # else: a submodule that came, went or changed; callers skip submodules
        return out

    def missing_objects(self, commit: str) -> list[str]:
        """Objects of ``commit``'s tree not on disk (a partial clone's blobs), without
        fetching them."""
        args = ["rev-list", "--objects", "--no-walk", "--missing=print", "--end-of-options"]
        out = self._git([*args, _checked(commit)], f"cannot list the objects of {commit}")
        return [line[1:] for line in out.splitlines() if line.startswith("?")]

    def ls_files(self) -> list[str]:
        """The files tracked in the work tree's index (so ignored files are absent);
        submodules are left out and a conflicted path is listed once."""
        if self._worktree is None:
            raise GitError(f"{self.name} is a bare repository: it has no work tree")
        paths: dict[str, None] = {}
        for record in self._records(["ls-files", "-z", "--stage"], "the index"):
            meta, _, raw_path = record.partition(b"\t")
            if not meta.startswith(SUBMODULE.encode()):
                paths[_decode_path(raw_path)] = None
        return list(paths)

    def _argv(self, args: Sequence[str]) -> list[str]:
        return ["git", "-C", str(self.path), *args]

    def _run(self, args: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run(  # noqa: S603 - argv built here, no shell
                self._argv(args), stdin=subprocess.DEVNULL, capture_output=True, env=self._env
            )
        except FileNotFoundError as exc:
            raise GitError("git is not installed (no `git` on PATH)") from exc

    def _git(self, args: Sequence[str], what: str) -> str:
        proc = self._run(args)
        if proc.returncode != 0:
            raise GitError(f"{what}: {error_line(proc.stderr)}")
        return proc.stdout.decode("utf-8", "surrogateescape").rstrip("\n")

    def _records(self, args: Sequence[str], what: str) -> Iterator[bytes]:
        """NUL-terminated records of a command's output, streamed."""
        with (
            tempfile.TemporaryFile() as stderr,
            subprocess.Popen(  # noqa: S603 - argv built here, no shell
                self._argv(args),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=self._env,
                bufsize=0,
            ) as proc,
        ):
            assert proc.stdout is not None  # noqa: S101 - Popen(stdout=PIPE)
            pending = b""
            finished = False
            try:
                while chunk := proc.stdout.read(_CHUNK):
                    *records, pending = (pending + chunk).split(b"\0")
                    yield from records
                finished = True
            finally:
                if not finished:
                    proc.kill()
            if proc.wait() != 0:
                stderr.seek(0)
                raise GitError(f"cannot list {what} in {self.name}: {error_line(stderr.read())}")


def _release(on_close: Callable[[], None] | None) -> None:
    if on_close is not None:
        on_close()
