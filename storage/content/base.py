"""What an event says about its content, and what resolving it gives."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

LOCAL = "LOCAL"  # the strategy of a v1 event: the producer's disk path


@dataclass(frozen=True)
class ContentRef:
    """The content reference of one FileEvent (v1 or v2), from its model or decoded dict."""

    project: str
    path: str
    sha256: str
    size: int
    strategy: str  # INLINE, OBJECT_STORAGE, GIT_REFERENCE, or LOCAL for v1
    inline: bytes | None = None
    bucket: str | None = None
    key: str | None = None
    url: str | None = None
    expires_at: datetime | None = None
    git_url: str | None = None
    commit: str | None = None
    git_path: str | None = None
    blob_id: str | None = None
    local_path: str | None = None

    @classmethod
    def of(cls, event: Mapping[str, Any] | Any) -> ContentRef:
        """The reference of a FileEvent model or of its decoded Avro dict."""
        fields: Mapping[str, Any] = event if isinstance(event, Mapping) else event.to_avro()
        strategy = fields.get("content_strategy")
        common = {
            "project": fields["project"],
            "path": fields["path"],
            "sha256": fields.get("checksum") or "",
            "size": fields["size"],
        }
        if strategy is None:
            if fields.get("local_path") is None:
                raise ValueError("an event without content_strategy or local_path")
            return cls(**common, strategy=LOCAL, local_path=fields["local_path"])
        strategy = str(strategy)
        if strategy == "INLINE":
            inline = fields.get("inline")
            if inline is None:
                raise ValueError("content_strategy INLINE without inline content")
            return cls(**common, strategy=strategy, inline=inline["data"])
        if strategy == "OBJECT_STORAGE":
            ref = fields.get("object_ref")
            if ref is None:
                raise ValueError("content_strategy OBJECT_STORAGE without object_ref")
            expires = ref.get("expires_at")
            if isinstance(expires, int):
                expires = datetime.fromtimestamp(expires / 1000, UTC)
            return cls(
                **common,
                strategy=strategy,
                bucket=ref["bucket"],
                key=ref["key"],
                url=ref.get("url"),
                expires_at=expires,
            )
        if strategy == "GIT_REFERENCE":
            git = fields.get("git_ref")
            if git is None:
                raise ValueError("content_strategy GIT_REFERENCE without git_ref")
            return cls(
                **common,
                strategy=strategy,
                git_url=git["url"],
                commit=git["commit"],
                git_path=git["path"],
                blob_id=git.get("blob_id") or None,
            )
        raise ValueError(f"unknown content_strategy {strategy!r}")


@dataclass(frozen=True)
class Resolved:
    """Verified content: its bytes (up to the stream threshold) or a file that holds them."""

    sha256: str
    size: int
    strategy: str
    source: str  # "inline", "local", "cache" (a hit), "fetched"
    data: bytes | None = None
    file: Path | None = None  # a cache entry, the v1 event's own file, or a spooled file
    spooled: bool = False  # ``file`` is a temporary copy: the caller removes it (discard)

    def open(self) -> BinaryIO:
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.file is not None  # noqa: S101 - one of the two is always set
        return self.file.open("rb")

    def discard(self) -> None:
        """Remove a spooled file (content too large for the cache); nothing otherwise."""
        if self.spooled and self.file is not None:
            self.file.unlink(missing_ok=True)

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.file is not None  # noqa: S101 - one of the two is always set
        return self.file.read_bytes()
