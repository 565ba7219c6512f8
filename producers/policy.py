"""The file policy: what is skipped and why, and how text is recognised.

Decided before anything is published, so the run's counts reconcile:
every candidate is either published or skipped with a reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pathspec import GitIgnoreSpec

from producers.base import Candidate
from schemas.models import SkipReason, TextEncoding

LFS_SIGNATURE = b"version https://git-lfs.github.com/spec/v1"
LFS_POINTER_MAX = 1024  # pointer files are about 130 bytes
_SAMPLE = 8192
# Control bytes that text files do not contain (tab, LF, VT, FF, CR, ESC and
# backspace they do); counted with bytes.translate, at C speed.
_BINARY_CONTROLS = bytes(b for b in range(0x20) if b not in b"\t\n\x0b\x0c\r\x1b\x08")


@dataclass(frozen=True)
class Skip:
    reason: SkipReason
    detail: str | None = None


class FilePolicy:
    def __init__(self, *, max_file_size: int, exclude: Sequence[str] = ()) -> None:
        self.max_file_size = max_file_size
        self.exclude = GitIgnoreSpec.from_lines(exclude) if exclude else None

    def by_metadata(self, candidate: Candidate) -> Skip | None:
        """What can be decided without reading the file."""
        if not is_utf8(candidate.path):
            return Skip(SkipReason.UNREADABLE, "the path is not UTF-8; events carry UTF-8 paths")
        if candidate.skip is not None:
            return Skip(SkipReason(candidate.skip), candidate.detail)
        if self.exclude is not None and self.exclude.match_file(candidate.path):
            return Skip(SkipReason.EXCLUDED, "matched --exclude")
        if candidate.size > self.max_file_size:
            return Skip(SkipReason.TOO_LARGE, f"{candidate.size} bytes > {self.max_file_size}")
        return None

    @staticmethod
    def by_content(head: bytes, size: int) -> Skip | None:
        """What the first bytes tell: a Git LFS pointer is not the file's content."""
        if size <= LFS_POINTER_MAX and head.startswith(LFS_SIGNATURE):
            return Skip(SkipReason.LFS_POINTER, "Git LFS pointer: the content is not in git")
        return None


def is_utf8(path: str) -> bool:
    """Whether a path (as sources decode them: UTF-8 with surrogateescape) is UTF-8."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_path(path: str) -> str:
    """A path as an event can carry it: bytes that are not UTF-8 as ``\\xNN`` escapes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def detect_encoding(data: bytes) -> TextEncoding:
    """Binary if NUL or many control bytes; else UTF-8 if it decodes; else Latin-1.

    The bytes are never altered; this only records how they read as text.
    """
    sample = data[:_SAMPLE]
    controls = len(sample) - len(sample.translate(None, _BINARY_CONTROLS))
    if b"\x00" in sample or controls > len(sample) // 100:
        return TextEncoding.BINARY
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return TextEncoding.LATIN_1  # Latin-1 decodes any bytes; these look like text
    return TextEncoding.UTF_8
