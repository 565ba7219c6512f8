"""Retention to the cold tier against the real MinIO: a small archive moves to a fresh
bucket and reads back identically."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from uuid import uuid4

import pytest

from headrace.settings import ObjectStoreSettings
from storage.archive import ColdStore, read, read_cold_marker, retain, verify
from storage.archive.layout import day_dir, segment_files
from storage.objectstore import open_storage
from storage.objectstore.minio import make_minio
from tests.unit.test_archive import DAY, NEXT_DAY
from tests.unit.test_archive_reader import LATER, write_mixed


@pytest.fixture
def settings(object_store: ObjectStoreSettings) -> Iterator[ObjectStoreSettings]:
    """The stack's MinIO with a fresh bucket (the ColdStore creates it), removed afterwards."""
    fresh = object_store.model_copy(update={"bucket": f"test-cold-{uuid4().hex[:10]}"})
    yield fresh
    client = make_minio(fresh)
    if client.bucket_exists(fresh.bucket):
        for found in client.list_objects(fresh.bucket, recursive=True):
            client.remove_object(fresh.bucket, str(found.object_name))
        client.remove_bucket(fresh.bucket)


def test_retained_days_read_back_identically_from_minio(
    tmp_path: Path, settings: ObjectStoreSettings
) -> None:
    expected = write_mixed(tmp_path)
    store = ColdStore(open_storage(settings))
    assert retain(tmp_path, store, older_than_days=1, today=date(2025, 3, 7)) == [DAY, NEXT_DAY]
    for topic in ("t.a", "t.b", "t.c"):
        old = day_dir(tmp_path, topic, DAY)
        marker = read_cold_marker(old)
        assert marker is not None and segment_files(old) == []
        for o in marker.objects:
            assert store.stat(o.key) == (o.size, o.sha256)
        assert segment_files(day_dir(tmp_path, topic, LATER)) != []
    assert [line.record for line in read(tmp_path, cold=store)] == expected
    assert verify(tmp_path, cold=store) == []
    assert retain(tmp_path, store, older_than_days=1, today=date(2025, 3, 7)) == []
    objects = make_minio(settings).list_objects(settings.bucket, prefix="archive/", recursive=True)
    assert len(list(objects)) == sum(
        len(m.objects)
        for t in ("t.a", "t.b", "t.c")
        for d in (DAY, NEXT_DAY)
        if (m := read_cold_marker(day_dir(tmp_path, t, d))) is not None
    )
