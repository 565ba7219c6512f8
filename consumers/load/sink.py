"""The load group's sink: each batch is one database transaction holding its file
rows, run rows and the ledger entries of the offsets they came from. A batch holds
up to ``load.batch_size`` records (``batch_size``: the runtime reads it from the
capabilities, over ``consumer.batch_size``), as the archive backfill's transactions do.

A write that returns is durable, so ``durable`` advances with every batch; on
assignment each partition starts at the ledger's next offset (Kafka's committed
offset is secondary: a crash after the transaction and before the commit
replays nothing). The database's order-safe upserts make a replayed, duplicated
or late event change nothing.

Before anything is written, each event's content is checked: inline bytes must
hash to the event's checksum, an object reference must name a bucket that
exists, and with ``load.content = resolve_all`` every file's bytes are resolved
(and verified) through the content resolver. A v1 event takes its event time
from the Kafka record and its content from ``local_path`` when that is readable
here (loaded without content when it is not, except with ``resolve_all``).
Records that fail are refused by index (:class:`RecordsRefused`), each with its
own dead-letter reason; the rest of the batch is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from consumers.base import Decoded, Sink, SinkCapabilities, TopicPartition
from consumers.errors import RecordsRefused
from consumers.load.content import RowContent
from consumers.load.metrics import LoadMetrics
from headrace.errors import Terminal
from headrace.failpoints import failpoint
from storage.content.errors import ContentError
from storage.content.resolver import ContentResolver
from storage.db import (
    ContentMode,
    Database,
    FileRow,
    LedgerConflict,
    LedgerEntry,
    RunRow,
    UnresolvableEvent,
    file_row,
    run_row,
)
from storage.db.backup import PeriodicBackup

log = logging.getLogger(__name__)


class LoadSink(Sink):
    capabilities = SinkCapabilities(durable_on_write=True, max_batch=1_000_000, needs_models=False)

    def __init__(
        self,
        db: Database,
        group: str,
        *,
        file_topic: str,
        run_topic: str,
        content: ContentMode | str = ContentMode.INLINE_AND_REFS,
        resolver: ContentResolver | None = None,
        bucket_exists: Callable[[str], bool] | None = None,
        backups: PeriodicBackup | None = None,
        metrics: LoadMetrics | None = None,
        batch_size: int | None = None,  # load.batch_size: records per transaction
    ) -> None:
        self.db, self.group = db, group
        if batch_size is not None:  # the live group's batches follow it (the runtime reads it)
            self.capabilities = replace(LoadSink.capabilities, batch_size=batch_size)
        self.backups = backups  # load.backup_interval_s: the database backed up meanwhile
        self.metrics = metrics
        self.file_topic, self.run_topic = file_topic, run_topic
        self.content = ContentMode(content)
        self.row_content = RowContent(self.content, resolver, bucket_exists)
        self._durable: dict[TopicPartition, int] = {}
        self.rows_written = 0

    def write(self, batch: Sequence[Decoded]) -> None:
        files: list[FileRow] = []
        runs: list[RunRow] = []
        ranges: dict[TopicPartition, list[int]] = {}  # first, last, count
        refused: list[tuple[int, Terminal]] = []
        # Every record loaded passes here: locals, no method call of our own per record.
        file_topic, run_topic, mode = self.file_topic, self.run_topic, self.content
        complete, add_file = self.row_content.complete, files.append
        for i, d in enumerate(batch):
            r, _, _, fields = d  # needs_models=False: the fields are set
            if fields is None:
                fields = d.as_dict()
            topic, partition, offset = r.topic, r.partition, r.offset
            if topic == file_topic:
                try:  # the row, its content checked (and resolved where the mode says)
                    row = file_row(fields, topic, partition, offset, mode, r.timestamp_ms)
                    add_file(complete(row, fields))
                except (UnresolvableEvent, ContentError) as exc:
                    if not isinstance(exc, Terminal):
                        raise  # the store is down: the batch is retried
                    refused.append((i, exc))
                    continue
            elif topic == run_topic:
                runs.append(run_row(fields, topic, partition, offset))
            else:
                raise ValueError(f"the load group does not read {topic}")
            if refused:
                continue  # the batch is refused as a whole below; no need to count
            span = ranges.get((topic, partition))
            if span is None:
                ranges[(topic, partition)] = [offset, offset, 1]
            else:
                if offset < span[0]:
                    span[0] = offset
                elif offset > span[1]:
                    span[1] = offset
                span[2] += 1
        if refused:
            raise RecordsRefused(refused)
        ledger = [
            LedgerEntry(self.group, topic, partition, first, last, count)
            for (topic, partition), (first, last, count) in sorted(ranges.items())
        ]
        began = time.perf_counter()
        try:
            result = self.db.write(files, runs, ledger)
        except LedgerConflict:
            if not self._loaded_already(ranges):
                raise
            log.info("a batch was found in the ledger already (a commit whose answer was lost)")
        else:
            self.rows_written += result.files_written + result.runs_written
            if self.metrics is not None:
                self.metrics.written(result, time.perf_counter() - began)
        failpoint("load.after_write")  # tests: die between the transaction and the commit
        for (topic, partition), (_first, last, _count) in ranges.items():
            key = (topic, partition)
            self._durable[key] = max(self._durable.get(key, 0), last + 1)

    def _loaded_already(self, ranges: dict[TopicPartition, list[int]]) -> bool:
        """Whether the ledger covers every offset of the batch: a retried write whose first
        attempt committed though its answer never came."""
        found = self.db.positions(self.group, list(ranges))
        return all(found.get(tp, 0) > last for tp, (_first, last, _n) in ranges.items())

    def durable(self) -> dict[TopicPartition, int]:
        return dict(self._durable)

    def positions(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        found = self.db.positions(self.group, list(partitions))
        self._durable.update(found)
        return found

    def tick(self) -> None:
        if self.backups is not None:
            self.backups.tick()  # starts a backup in its own thread when one is due

    def close(self) -> None:
        if self.backups is not None:
            self.backups.close()
        self.db.close()
        self.row_content.close()

    @property
    def without_content(self) -> int:
        """v1 events loaded without content: their local_path is not readable here."""
        return self.row_content.without_content
