"""A git repository read through the git CLI: refs, trees, blobs and changes.

Only plumbing commands whose output is stable (``rev-parse``, ``ls-tree``,
``cat-file``, ``diff-tree``, ``ls-files``) are used, always with ``-z`` where
paths are printed and ``--end-of-options`` before caller-given names, and in
an environment stripped of the variables that point git at another
repository (``GIT_DIR`` and friends, as set inside git hooks) and with
terminal prompts off.

Paths are bytes to git. They are decoded as UTF-8 with ``surrogateescape``:
a path that is not valid UTF-8 is kept, not skipped, and
``path.encode("utf-8", "surrogateescape")`` gives its bytes back; a caller
that needs valid text (an Avro string) must check that ``path.encode()``
succeeds.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import tempfile
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

from headrace.errors import StorageError, Terminal, Transient

log = logging.getLogger(__name__)

SUBMODULE = "160000"
SYMLINK = "120000"
_NOT_FILES = ("000000", SUBMODULE)  # diff-tree's mode of a missing side, and a gitlink
_CHUNK = 64 * 1024
# What `git rev-parse --local-env-vars` prints: variables that redirect git elsewhere.
_LOCAL_REPO_ENV = frozenset(
    {
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_CONFIG",
        "GIT_CONFIG_PARAMETERS",
        "GIT_CONFIG_COUNT",
        "GIT_OBJECT_DIRECTORY",
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_IMPLICIT_WORK_TREE",
        "GIT_GRAFT_FILE",
        "GIT_INDEX_FILE",
        "GIT_NO_REPLACE_OBJECTS",
        "GIT_REPLACE_REF_BASE",
        "GIT_PREFIX",
        "GIT_INTERNAL_SUPER_PREFIX",
        "GIT_SHALLOW_FILE",
        "GIT_COMMON_DIR",
    }
)


class GitError(StorageError, Terminal):
    """A repository, ref or object that does not exist or cannot be read."""


class GitUnavailable(StorageError, Transient):
    """A remote did not answer (or the clone cache stayed locked); try again later."""


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


def git_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment git runs in: this process's, minus repository pointers."""
    env = {k: v for k, v in os.environ.items() if k not in _LOCAL_REPO_ENV}
    env.update(GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    env.update(extra or {})
    return env


def error_line(stderr: bytes, default: str = "git failed") -> str:
    """The line of git's stderr that says what went wrong (its last ``fatal:``)."""
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines()]
    for prefix in ("fatal: ", "error: "):
        found = [line.removeprefix(prefix) for line in lines if line.startswith(prefix)]
        if found:
            return found[-1]
    return next((line for line in reversed(lines) if line), default)


def _decode_path(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _checked(name: str) -> str:
    if not name or name.startswith("-"):
        raise GitError(f"bad git object name {name!r}")
    return name


class _Batch:
    """One ``git cat-file --batch`` process answering blob requests in turn: a process
    per repository, not one per file (about 2 ms each). Requests are sequential: opening
    a blob first reads whatever the previous blob's reader left unread."""

    def __init__(self, argv: list[str], env: Mapping[str, str], name: str) -> None:
        self._proc = subprocess.Popen(  # noqa: S603 - argv built by GitRepo, no shell
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            bufsize=_CHUNK,
        )
        self._name = name
        self._current: _BatchBlob | None = None
        self._done = weakref.finalize(self, _end, self._proc)

    def open(self, blob_id: str) -> BinaryIO:
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None  # noqa: S101 - PIPEs
        if self._current is not None:
            self._current.close()  # reads what is left: the next answer starts after it
        try:
            proc.stdin.write(f"{blob_id}\n".encode("ascii"))
            proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise GitError(f"cannot read blob {blob_id} of {self._name}: {exc}") from None
        header = proc.stdout.readline().decode("ascii", "replace").split()
        if len(header) != 3 or header[1] != "blob":
            what = " ".join(header[1:]) or "git cat-file stopped"
            raise GitError(f"cannot read blob {blob_id} of {self._name}: {what}")
        self._current = _BatchBlob(proc.stdout, int(header[2]))
        return io.BufferedReader(self._current, _CHUNK)

    def close(self) -> None:
        self._done()


def _end(proc: subprocess.Popen[bytes]) -> None:
    if proc.stdin is not None:
        proc.stdin.close()  # git ends at end of input
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


class _BatchBlob(io.RawIOBase):
    """One blob of a ``--batch`` answer: ``size`` bytes, then the newline git adds."""

    def __init__(self, out: IO[bytes], size: int) -> None:
        self._out, self._left, self._ended = out, size, False
        if size == 0:
            self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            if self._out.read(1) != b"\n":
                raise GitError("git cat-file --batch answered out of step")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        if self._left == 0:
            return 0
        data = self._out.read(min(len(view), self._left))
        if not data:
            raise GitError("git cat-file --batch stopped inside a blob")
        view[: len(data)] = data
        self._left -= len(data)
        if self._left == 0:
            self._end()
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                while self._left:  # the rest: the next answer starts after it
                    data = self._out.read(min(self._left, _CHUNK))
                    if not data:
                        break
                    self._left -= len(data)
                    if self._left == 0:
                        self._end()
            finally:
                super().close()


class GitRepo:
    """A git work tree or bare repository at ``path`` (its top level, exactly)."""

    def __init__(
        self, path: Path, *, url: str | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        """``url``: the credential-free remote it mirrors; ``env``: extra git environment
        (the clone cache passes its authentication for a partial clone's lazy fetches)."""
        self.path = Path(path).resolve()
        self.url = url
        self._env = git_environment(env)
        self._batch: _Batch | None = None
        if not self.path.is_dir():
            raise GitError(f"{path} is not a directory")
        out = self._git(
            ["rev-parse", "--is-bare-repository", "--is-inside-git-dir", "--absolute-git-dir"],
            f"{path} is not a git repository",
        ).split("\n")
        bare, inside_git_dir, git_dir = out[0] == "true", out[1] == "true", Path(out[2])
        self.git_dir = git_dir.resolve()
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

    def has_commit(self, commit: str) -> bool:
        proc = self._run(["cat-file", "-e", "--end-of-options", f"{_checked(commit)}^{{commit}}"])
        return proc.returncode == 0

    def tree(self, commit: str) -> Iterator[TreeEntry]:
        """Every file of ``commit``, streamed in git's (byte-sorted) order."""
        args = ["ls-tree", "-r", "-l", "-z", "--full-tree", "--end-of-options", _checked(commit)]
        for record in self._records(args, f"the tree of {commit}"):
            meta, _, raw_path = record.partition(b"\t")
            mode, _kind, blob_id, size = meta.decode("ascii").split()
            yield TreeEntry(_decode_path(raw_path), mode, blob_id, 0 if size == "-" else int(size))

    def open_blob(self, blob_id: str) -> BinaryIO:
        """A stream of the blob's bytes, from one ``git cat-file --batch`` kept for the
        repository. Blobs are read one after another: opening the next one finishes this
        one (an unread rest is skipped). GitError if there is no such blob."""
        _checked(blob_id)
        if self._batch is None:
            self._batch = _Batch(self._argv(["cat-file", "--batch"]), self._env, self.name)
        return self._batch.open(blob_id)

    def close(self) -> None:
        """End the ``cat-file --batch`` process, if one runs (also done when collected)."""
        if self._batch is not None:
            self._batch.close()
            self._batch = None

    def read_blob(self, blob_id: str) -> bytes:
        args = ["cat-file", "--end-of-options", "blob", _checked(blob_id)]
        proc = self._run(args)
        if proc.returncode != 0:
            raise GitError(f"cannot read blob {blob_id} of {self.name}: {error_line(proc.stderr)}")
        return proc.stdout

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

    # -- running git ---------------------------------------------------------------

    def _argv(self, args: Sequence[str]) -> list[str]:
        return ["git", "-C", str(self.path), *args]

    def _run(self, args: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run(  # noqa: S603 - argv built here, no shell
                self._argv(args),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=self._env,
                check=False,
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
