"""Object storage against a real MinIO, each test in a bucket of its own: the
object-storage contract (tests/unit/test_objectstore.py's suite) on MinioStorage, and the
content-addressed store over it."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from minio.datatypes import Object
from pydantic import SecretStr

from headrace.settings import ObjectStoreSettings
from storage.errors import ContentMismatch, ObjectNotFound, ObjectStoreRefused
from storage.objects import MinioObjectStore, content_key
from storage.objectstore import open_storage
from storage.objectstore.minio import make_minio
from tests.unit.test_objectstore import CONTRACT, Check

MIB = 1024 * 1024
SMALL_PARTS = {"multipart_threshold": 5 * MIB + 1, "part_size": 5 * MIB}


@pytest.fixture
def settings(object_store: ObjectStoreSettings) -> Iterator[ObjectStoreSettings]:
    """The stack's MinIO with a fresh bucket, emptied and removed afterwards."""
    fresh = object_store.model_copy(update={"bucket": f"test-{uuid4().hex[:12]}"})
    yield fresh
    client = make_minio(fresh)
    if client.bucket_exists(fresh.bucket):
        for found in client.list_objects(fresh.bucket, recursive=True):
            client.remove_object(fresh.bucket, str(found.object_name))
        client.remove_bucket(fresh.bucket)


@pytest.fixture
def store(settings: ObjectStoreSettings) -> MinioObjectStore:
    made = MinioObjectStore(settings)
    made.ensure_bucket()
    return made


def _random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes a MiB at a time; their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as file:
        for start in range(0, size, MIB):
            chunk = os.urandom(min(MIB, size - start))
            digest.update(chunk)
            file.write(chunk)
    return digest.hexdigest()


def _stat(store: MinioObjectStore, key: str) -> Object:
    return store.storage.client.stat_object(store.bucket, key)


def _sha256_of_stream(store: MinioObjectStore, key: str) -> str:
    digest = hashlib.sha256()
    with store.open(key) as stream:
        while chunk := stream.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.parametrize("check", CONTRACT, ids=lambda check: check.__name__)
def test_minio_storage_keeps_the_contract(settings: ObjectStoreSettings, check: Check) -> None:
    check(open_storage(settings))


def test_ensure_bucket_is_idempotent(settings: ObjectStoreSettings) -> None:
    store = MinioObjectStore(settings)
    assert not store.storage.client.bucket_exists(settings.bucket)
    store.ensure_bucket()
    store.ensure_bucket()
    MinioObjectStore(settings).ensure_bucket()  # another process, same bucket
    assert store.storage.client.bucket_exists(settings.bucket)


def test_writing_before_the_bucket_exists_is_refused(settings: ObjectStoreSettings) -> None:
    store = MinioObjectStore(settings)
    data = b"no bucket yet"
    with pytest.raises(ObjectStoreRefused, match="NoSuchBucket") as caught:
        store.put_bytes(data, hashlib.sha256(data).hexdigest())
    assert settings.bucket in str(caught.value) and settings.endpoint in str(caught.value)


def test_a_small_file_is_uploaded_once(store: MinioObjectStore, tmp_path: Path) -> None:
    path = tmp_path / "small.txt"
    sha = _random_file(path, 1000)
    key = content_key(sha)
    assert not store.exists(sha)

    first = store.put_file(path, sha, 1000)
    assert first.uploaded and first.key == key and first.bucket == store.bucket
    before = _stat(store, key)
    assert before.size == 1000 and before.content_type == "application/octet-stream"
    assert before.metadata is not None and before.metadata["x-amz-meta-sha256"] == sha
    assert before.etag is not None and "-" not in before.etag  # one PUT

    second = store.put_file(path, sha, 1000)
    again = store.put_bytes(path.read_bytes(), sha)
    assert not second.uploaded and not again.uploaded and store.exists(sha)
    after = _stat(store, key)
    assert (after.etag, after.last_modified) == (before.etag, before.last_modified)
    assert (store.uploads, store.deduplicated, store.uploaded_bytes) == (1, 2, 1000)
    assert store.get(key) == path.read_bytes()


def test_a_large_file_goes_up_in_parts_and_round_trips(
    settings: ObjectStoreSettings, tmp_path: Path
) -> None:
    store = MinioObjectStore(settings, **SMALL_PARTS)
    store.ensure_bucket()
    path = tmp_path / "large.bin"
    size = 12 * MIB + 12345
    sha = _random_file(path, size)

    stored = store.put_file(path, sha, size)
    assert stored.uploaded and stored.size == size
    info = _stat(store, stored.key)
    assert info.etag is not None and info.etag.endswith("-3")  # 5 + 5 + 2 MiB
    assert info.size == size and info.metadata is not None
    assert info.metadata["x-amz-meta-sha256"] == sha
    assert _sha256_of_stream(store, stored.key) == sha
    assert hashlib.sha256(store.get(stored.key)).hexdigest() == sha
    assert store.uploaded_bytes == size


def test_content_that_does_not_match_its_key_is_not_stored(
    settings: ObjectStoreSettings, tmp_path: Path
) -> None:
    store = MinioObjectStore(settings, **SMALL_PARTS)
    store.ensure_bucket()
    path = tmp_path / "changed.bin"
    sha = _random_file(path, 11 * MIB)
    with path.open("r+b") as file:  # the file changes after it was hashed
        file.seek(10 * MIB)
        file.write(b"changed")
    with pytest.raises(ContentMismatch):
        store.put_file(path, sha, 11 * MIB)
    small = b"small and changed"
    with pytest.raises(ContentMismatch):
        store.put_bytes(small, hashlib.sha256(b"small").hexdigest())
    assert list(store.storage.client.list_objects(store.bucket, recursive=True)) == []
    assert store.uploads == 0


def test_a_presigned_url_reads_the_object_over_plain_http(store: MinioObjectStore) -> None:
    data = os.urandom(4096)
    stored = store.put_bytes(data, hashlib.sha256(data).hexdigest())

    url, expiry = store.presign(stored.key, timedelta(minutes=10))
    assert url.startswith(f"http://{store.endpoint}/{store.bucket}/{stored.key}?")
    assert timedelta(minutes=9) < expiry - datetime.now(UTC) <= timedelta(minutes=10)
    signature = url.rsplit("X-Amz-Signature=", 1)[1]
    tampered = url[: -len(signature)] + ("0" if signature[0] != "0" else "1") + signature[1:]
    with httpx.Client(timeout=10) as http:
        good = http.get(url)
        assert good.status_code == 200 and good.content == data
        assert http.get(tampered).status_code == 403
        assert http.get(url.replace(stored.key, content_key("0" * 64))).status_code == 403


def test_a_missing_key_is_not_found(store: MinioObjectStore) -> None:
    key = content_key("0" * 64)
    with pytest.raises(ObjectNotFound, match=key):
        store.get(key)
    with pytest.raises(ObjectNotFound):
        store.open(key)
    assert not store.exists("0" * 64)


def test_a_wrong_secret_is_refused_and_never_shown(settings: ObjectStoreSettings) -> None:
    wrong = "not-the-secret-at-all"
    store = MinioObjectStore(settings.model_copy(update={"secret_key": SecretStr(wrong)}))
    data = b"x"
    for attempt in (
        store.ensure_bucket,
        lambda: store.exists("0" * 64),
        lambda: store.put_bytes(data, hashlib.sha256(data).hexdigest()),
        lambda: store.get(content_key("0" * 64)),
    ):
        with pytest.raises(ObjectStoreRefused) as caught:
            attempt()
        message = str(caught.value)
        assert wrong not in message and settings.secret_key.get_secret_value() not in message
        assert settings.endpoint in message and settings.bucket in message


def test_a_large_upload_never_holds_the_whole_file(
    settings: ObjectStoreSettings, tmp_path: Path
) -> None:
    store = MinioObjectStore(settings, **SMALL_PARTS)
    store.ensure_bucket()
    path = tmp_path / "forty.bin"
    size = 40 * MIB
    sha = _random_file(path, size)

    tracemalloc.start()
    try:
        stored = store.put_file(path, sha, size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stored.uploaded
    # (parallel_uploads + 2) parts of 5 MiB at most, nowhere near the file's 40 MiB
    assert peak < 24 * MIB, f"peak traced memory {peak / MIB:.1f} MiB"
    etag = _stat(store, stored.key).etag
    assert etag is not None and etag.endswith("-8")  # 8 parts of 5 MiB
    assert _sha256_of_stream(store, stored.key) == sha
