"""What of a file's content a load row holds, checked before the row is written.

Shared by the Kafka loader (:mod:`.sink`) and the archive backfill (:mod:`.cli`):

- an object reference must name a bucket that exists (each bucket asked once);
- a v1 event gets its content from ``local_path`` when that is readable here
  (unless ``refs_only``), and loads without content when it is not (counted);
- with ``resolve_all`` every file's bytes are resolved and verified through the
  content resolver, and a file whose bytes cannot be had is refused.

Inline bytes are checked against the checksum by :func:`storage.db.file_row`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from headrace.errors import HeadraceError, is_transient
from headrace.settings import Settings
from storage.content.errors import PayloadMissing
from storage.content.resolver import ContentResolver
from storage.db import ContentMode, FileRow, UnresolvableEvent

log = logging.getLogger(__name__)


class RowContent:
    def __init__(
        self,
        mode: ContentMode,
        resolver: ContentResolver | None = None,
        bucket_exists: Callable[[str], bool] | None = None,
    ) -> None:
        if mode is ContentMode.RESOLVE_ALL and resolver is None:
            raise ValueError("load.content = resolve_all needs a content resolver")
        self.mode, self.resolver, self.bucket_exists = mode, resolver, bucket_exists
        self._buckets: set[str] = set()  # buckets seen to exist
        self.without_content = 0  # v1 events whose local_path is not readable here

    def complete(self, row: FileRow, fields: dict[str, Any]) -> FileRow:
        """``row`` checked, with the content the mode asks for; raises a terminal error
        (UnresolvableEvent, a ContentError) for a file that must not be loaded."""
        if row.deleted:
            return row
        if row.content_strategy == "OBJECT_STORAGE":
            self._check_bucket(row, fields)
        if row.content is not None or self.mode is ContentMode.REFS_ONLY:
            return row
        legacy = row.content_strategy is None
        if not legacy and self.mode is not ContentMode.RESOLVE_ALL:
            return row
        if self.resolver is None:
            self.without_content += 1
            return row
        try:
            resolved = self.resolver.resolve(fields)
            try:
                data = resolved.read_bytes()
            finally:
                resolved.discard()
        except PayloadMissing as exc:
            if legacy and self.mode is not ContentMode.RESOLVE_ALL:
                self.without_content += 1
                log.info("loading %s without content: %s", row.path, exc)
                return row
            raise
        return row._replace(content=data)

    def _check_bucket(self, row: FileRow, fields: dict[str, Any]) -> None:
        bucket = str(fields["object_ref"]["bucket"])
        if self.bucket_exists is None or bucket in self._buckets:
            return
        try:
            exists = self.bucket_exists(bucket)
        except HeadraceError as exc:
            if is_transient(exc):
                raise  # the store is down: the batch is retried
            raise UnresolvableEvent(
                row.source_topic, row.source_partition, row.source_offset, str(exc)
            ) from None
        if not exists:
            raise UnresolvableEvent(
                row.source_topic,
                row.source_partition,
                row.source_offset,
                f"object reference to bucket {bucket!r}, which does not exist",
            )
        self._buckets.add(bucket)

    def close(self) -> None:
        if self.resolver is not None:
            self.resolver.close()


def load_row_content(settings: Settings) -> RowContent:
    """The content checks of ``settings.load.content``: a resolver (the content cache with
    ``resolve_all``) and a bucket check against the configured object store."""
    from storage.content.factory import bucket_checker, open_resolver  # noqa: PLC0415

    mode = ContentMode(settings.load.content)
    resolver = open_resolver(settings, cache=mode is ContentMode.RESOLVE_ALL)
    return RowContent(mode, resolver, bucket_checker(settings))
