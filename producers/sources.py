"""Sources: a plain directory (honouring .gitignore files) or a git repository.

Directories are walked in sorted order; ``.git`` is never entered; a
``.gitignore`` applies to its directory and below, deeper files overriding
shallower ones, as git does. A git repository is read at a commit (HEAD by
default): its tracked files, as git lists them. In both, a symlink whose
target is a regular file inside the root is ingested with that file's
content under the link's path; one that points outside the root (or at
nothing) is skipped with a reason, never followed. A file is read only if the
file opened lies under the root: one that became a symlink leading out after
the walk (it, or a directory above it) is skipped as unreadable.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO

from pathspec import GitIgnoreSpec

from headrace.errors import HeadraceError
from producers.base import Candidate, SourceInfo, SourceKind, file_signature
from producers.errors import SourceError
from schemas.models import SkipReason
from storage.git import GitRepo, TreeEntry


def _open(path: str | Path) -> BinaryIO:
    """The file's bytes; never blocks: a path that became a FIFO or a device since the
    walk decided it was a regular file is refused (OSError) instead of opened."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file any more", str(path))
        # O_NONBLOCK means nothing to a regular file's reads (POSIX): no fcntl to clear it
        return open(fd, "rb")  # noqa: SIM115 - the caller closes it
    except BaseException:
        os.close(fd)
        raise


def _open_within(root: str | Path, path: str | Path) -> BinaryIO:
    """:func:`_open`, refused unless the file opened lies under ``root``: a file, or a
    directory above it, that became a symlink leading out since the walk's lstat would
    otherwise be read (and, its signature then steady, published). Read from the open
    descriptor, so no later swap can slip between the check and the read."""
    stream = _open(path)
    try:
        where = os.readlink(f"/proc/self/fd/{stream.fileno()}")
    except OSError:  # no /proc (not Linux): the walk's lstat decided alone
        return stream
    # The kernel's name is absolute and resolved, as the root is: a prefix test says
    # what Path.is_relative_to says, without parsing two paths a file (about 15 us).
    inside = str(root)
    if where != inside and not where.startswith(inside.rstrip("/") + "/"):
        stream.close()
        raise OSError(errno.EXDEV, "it leads outside the source root since the walk", str(path))
    return stream


def _kind(mode: int) -> str:
    """What a directory entry is that is neither a regular file, a directory nor a link."""
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _reason(exc: OSError) -> str:
    return (exc.strerror or type(exc).__name__).lower()


def _no_content() -> BinaryIO:
    raise IsADirectoryError("a skipped directory has no content")


@dataclass
class DirectorySource:
    root: Path
    project: str | None = None
    exclude: Sequence[str] = ()  # --exclude: a matching directory is skipped whole
    _ignores: list[tuple[str, GitIgnoreSpec]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.root.is_dir():
            raise SourceError(f"{self.root} is not a directory")
        self.root = self.root.resolve()
        # The openers hold strings: a worker process is sent them (a Path pickles slowly).
        self._root = str(self.root)
        self._excluded = GitIgnoreSpec.from_lines(self.exclude) if self.exclude else None

    def info(self) -> SourceInfo:
        return SourceInfo(SourceKind.DIRECTORY, str(self.root), self.project or self.root.name)

    def deleted(self) -> list[str]:
        return []  # an incremental directory run finds its deletes in the manifest

    def changes_since(self, commit: str) -> bool:
        return False

    def candidates(self) -> Iterator[Candidate]:
        yield from self._walk(self.root, "")

    def _walk(self, directory: Path, prefix: str) -> Iterator[Candidate]:
        """Every entry is decided from its lstat before anything opens it; a directory
        that cannot be listed (gone, refused, a name too long) is skipped with why."""
        try:
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError as exc:
            if not prefix:
                raise SourceError(f"cannot list {directory}: {_reason(exc)}") from None
            yield _skipped(prefix, f"the directory cannot be listed: {_reason(exc)}")
            return
        pushed = False
        if any(e.name == ".gitignore" for e in entries):
            try:
                lines = (directory / ".gitignore").read_text(errors="replace").splitlines()
                self._ignores.append((prefix, GitIgnoreSpec.from_lines(lines)))
                pushed = True
            except OSError as exc:
                yield _skipped(f"{prefix}.gitignore", f"cannot be read: {_reason(exc)}")
        try:
            for entry in entries:
                rel = f"{prefix}{entry.name}"
                if entry.name == ".git":
                    continue
                try:
                    mode = entry.stat(follow_symlinks=False).st_mode
                except OSError as exc:  # gone since the listing, a name too long
                    yield _skipped(rel, _reason(exc))
                    continue
                if stat.S_ISDIR(mode):
                    if self._excluded is not None and self._excluded.match_file(rel + "/"):
                        yield Candidate(
                            rel + "/",
                            0,
                            _no_content,
                            skip=SkipReason.EXCLUDED,
                            detail="a directory matched --exclude",
                        )
                    elif not self._ignored(rel + "/"):
                        yield from self._walk(Path(entry.path), rel + "/")
                elif not self._ignored(rel):
                    yield self._candidate(Path(entry.path), rel, entry, mode)
        finally:
            if pushed:
                self._ignores.pop()

    def _ignored(self, rel: str) -> bool:
        for base, spec in reversed(self._ignores):  # the deepest .gitignore decides first
            result = spec.check_file(rel[len(base) :])
            if result.include is not None:
                return bool(result.include)
        return False

    def _candidate(self, path: Path, rel: str, entry: os.DirEntry[str], mode: int) -> Candidate:
        if stat.S_ISLNK(mode):
            try:
                target = path.resolve(strict=True)
            except RuntimeError:  # Python 3.11 names a loop this way
                return _skipped(rel, "a symlink loop")
            except OSError as exc:
                return _skipped(rel, f"the symlink's target: {_reason(exc)}")
            if not target.is_relative_to(self.root):
                return Candidate(
                    rel, 0, partial(_open, path), path, skip=SkipReason.SYMLINK_OUTSIDE_ROOT
                )
            try:
                found = target.stat()
            except OSError as exc:
                return _skipped(rel, f"the symlink's target: {_reason(exc)}")
            if not stat.S_ISREG(found.st_mode):
                return _skipped(rel, f"the symlink's target is {_kind(found.st_mode)}")
            return Candidate(
                rel,
                found.st_size,
                partial(_open_within, self._root, str(target)),
                target,
                signature=file_signature(found),
            )
        if not stat.S_ISREG(mode):
            return _skipped(rel, f"{_kind(mode)}, not a regular file")
        try:
            found = entry.stat(follow_symlinks=False)
        except OSError as exc:
            return _skipped(rel, _reason(exc))
        return Candidate(
            rel,
            found.st_size,
            partial(_open_within, self._root, entry.path),
            path,
            signature=file_signature(found),
        )


def _skipped(rel: str, detail: str) -> Candidate:
    """A path skipped as unreadable, with why; it has no content to open."""
    return Candidate(rel, 0, _no_content, skip=SkipReason.UNREADABLE, detail=detail)


@dataclass
class GitSource:
    """A git repository (local, or cached from a URL) at one commit."""

    repo: GitRepo
    kind: SourceKind
    location: str  # the work tree path or the credential-free URL
    project: str
    ref: str | None = None
    since: str | None = None
    commit: str = ""
    _since_commit: str | None = None

    def __post_init__(self) -> None:
        self.commit = self.repo.resolve(self.ref)
        self._since_commit = self.repo.resolve(self.since) if self.since else None

    def info(self) -> SourceInfo:
        return SourceInfo(self.kind, self.location, self.project, self.commit, self.ref)

    def candidates(self) -> Iterator[Candidate]:
        entries = {e.path: e for e in self.repo.tree(self.commit) if e.mode != "160000"}
        wanted: set[str] | None = None  # None: every file; else those changed since the base
        if self._since_commit is not None:
            changes = self.repo.changes(self._since_commit, self.commit)
            wanted = {c.path for c in changes if c.status != "D"}
        for path in sorted(entries):
            if wanted is not None and path not in wanted:
                continue
            entry = entries[path]
            if entry.mode == "120000":  # git stores the link's target path as the blob
                entry = self._link_target(entry, entries) or entry
                if entry.mode == "120000":
                    yield Candidate(
                        path,
                        0,
                        partial(self.repo.open_blob, entry.blob_id),
                        blob_id=entry.blob_id,
                        skip=SkipReason.SYMLINK_OUTSIDE_ROOT,
                    )
                    continue
            yield Candidate(
                path, entry.size, partial(self.repo.open_blob, entry.blob_id), blob_id=entry.blob_id
            )

    def _link_target(self, link: TreeEntry, entries: dict[str, TreeEntry]) -> TreeEntry | None:
        """The regular file a link points to inside the tree, or None."""
        target = self.repo.read_blob(link.blob_id).decode(errors="replace")
        if target.startswith("/"):
            return None
        parts: list[str] = link.path.split("/")[:-1]
        for part in target.split("/"):
            if part == "..":
                if not parts:
                    return None
                parts.pop()
            elif part not in ("", "."):
                parts.append(part)
        found = entries.get("/".join(parts))
        return found if found is not None and found.mode in ("100644", "100755") else None

    def changes_since(self, commit: str) -> bool:
        """From now on, offer only what changed since ``commit``; False if the repository
        does not have it (history rewritten): the run stays a full one."""
        try:
            self._since_commit = self.repo.resolve(commit)
        except HeadraceError:
            return False
        return True

    def deleted(self) -> list[str]:
        if self._since_commit is None:
            return []
        return sorted(
            c.path for c in self.repo.changes(self._since_commit, self.commit) if c.status == "D"
        )
