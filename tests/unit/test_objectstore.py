"""The object-storage contract (storage.objectstore.base) and its backends without services.

``CONTRACT`` is one suite every backend passes: here on MemoryStorage, and in
tests/integration/test_objects.py on a real MinIO bucket. Each check gets a storage
whose bucket does not exist yet. Then the memory backend's own rules, and the MinIO
adapter with its SDK client faked: no I/O before first use, conditional PUTs, stat.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import pytest
import urllib3
from minio.datatypes import Object
from minio.error import S3Error
from minio.helpers import ObjectWriteResult
from urllib3 import HTTPHeaderDict

import storage.objectstore.minio as minio_adapter
from headrace.errors import StorageError, Terminal, is_transient
from headrace.settings import ObjectStoreSettings
from storage.errors import (
    ContentMismatch,
    ObjectNotFound,
    ObjectStoreRefused,
    PreconditionFailed,
)
from storage.objectstore import ObjectInfo, ObjectStorage, open_storage
from storage.objectstore.memory import MemoryObject, MemoryStorage
from storage.objectstore.minio import MinioStorage

Check = Callable[[ObjectStorage], None]
CONTRACT: list[Check] = []


def contract(check: Check) -> Check:
    CONTRACT.append(check)
    return check


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the contract ----------------------------------------------------------------------------


@contract
def writes_need_the_bucket_and_ensuring_it_is_idempotent(storage: ObjectStorage) -> None:
    assert storage.location.endswith(f"://{storage.bucket}")
    data = b"no bucket yet"
    assert not storage.bucket_exists()
    with pytest.raises(ObjectStoreRefused, match="ensure_bucket") as caught:
        storage.put("k", data, sha256=sha(data))
    assert storage.bucket in str(caught.value) and storage.endpoint in str(caught.value)
    storage.ensure_bucket()
    storage.ensure_bucket()
    assert storage.bucket_exists()
    assert storage.put("k", data, sha256=sha(data)).size == len(data)


@contract
def an_object_round_trips_with_its_size_etag_and_sha256(storage: ObjectStorage) -> None:
    storage.ensure_bucket()
    data = b"some bytes\n" * 100
    written = storage.put("dir/obj.bin", data, sha256=sha(data))
    assert written == ObjectInfo("dir/obj.bin", len(data), written.etag, sha(data))
    assert written.etag and '"' not in written.etag
    assert storage.stat("dir/obj.bin") == written
    assert storage.get("dir/obj.bin") == data
    with storage.open("dir/obj.bin") as stream:
        assert stream.read(10) == data[:10] and stream.read() == data[10:]
    assert storage.get_with_etag("dir/obj.bin") == (data, written.etag)
    streamed = storage.put("dir/streamed", io.BytesIO(data), len(data), sha256=sha(data))
    assert (streamed.size, streamed.sha256) == (len(data), sha(data))
    empty = storage.put("dir/empty", b"", sha256=sha(b""))
    assert empty.size == 0 and storage.get("dir/empty") == b""


@contract
def a_missing_key_is_none_or_not_found(storage: ObjectStorage) -> None:
    storage.ensure_bucket()
    assert storage.stat("nothing/here") is None
    for read in (storage.get, storage.open, storage.get_with_etag):
        with pytest.raises(ObjectNotFound, match="nothing/here") as caught:
            read("nothing/here")
        assert isinstance(caught.value, Terminal) and isinstance(caught.value, StorageError)


@contract
def bytes_that_are_not_what_was_said_are_never_stored(storage: ObjectStorage) -> None:
    storage.ensure_bucket()
    data = b"the bytes that were hashed"
    with pytest.raises(ContentMismatch, match="hash to"):
        storage.put("k", b"other bytes, same length!!", sha256=sha(data))
    with pytest.raises(ContentMismatch, match="ended after"):
        storage.put("k", io.BytesIO(data[:-1]), len(data), sha256=sha(data))
    with pytest.raises(ContentMismatch, match="longer"):
        storage.put("k", io.BytesIO(data + b"more"), len(data), sha256=sha(data))
    with pytest.raises(ContentMismatch):
        storage.put("k", b"other", sha256=sha(data), if_absent=True)
    assert storage.stat("k") is None
    with pytest.raises(ValueError, match="sha256"):
        storage.put("k", data, sha256="not-a-digest")
    with pytest.raises(ValueError, match="size"):
        storage.put("k", io.BytesIO(data), sha256=sha(data))
    assert storage.stat("k") is None


@contract
def a_failing_source_is_the_sources_own_error(storage: ObjectStorage) -> None:
    storage.ensure_bucket()

    class Broken(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise OSError(5, "Input/output error")

    for conditional in (False, True):
        with pytest.raises(OSError, match="Input/output") as caught:
            storage.put("k", Broken(), 3, sha256=sha(b"abc"), if_absent=conditional)
        assert not isinstance(caught.value, StorageError)
    assert storage.stat("k") is None


@contract
def if_absent_never_overwrites(storage: ObjectStorage) -> None:
    storage.ensure_bucket()
    first, second = b"first", b"second"
    written = storage.put("once", first, sha256=sha(first), if_absent=True)
    with pytest.raises(PreconditionFailed, match="If-None-Match") as caught:
        storage.put("once", second, sha256=sha(second), if_absent=True)
    assert isinstance(caught.value, Terminal) and not is_transient(caught.value)
    assert storage.get_with_etag("once") == (first, written.etag)


@contract
def if_match_is_a_compare_and_swap(storage: ObjectStorage) -> None:
    storage.ensure_bucket()
    v1, v2, v3 = b"version 1", b"version 2", b"version 3"
    with pytest.raises(PreconditionFailed):
        storage.put("cas", v1, sha256=sha(v1), if_match="0" * 32)  # nothing to match
    etag1 = storage.put("cas", v1, sha256=sha(v1), if_absent=True).etag
    etag2 = storage.put("cas", v2, sha256=sha(v2), if_match=etag1).etag
    assert etag2 != etag1 and storage.get_with_etag("cas") == (v2, etag2)
    with pytest.raises(PreconditionFailed, match="If-Match"):
        storage.put("cas", v3, sha256=sha(v3), if_match=etag1)  # a stale read
    info = storage.stat("cas")
    assert info is not None and (info.etag, info.sha256) == (etag2, sha(v2))


@contract
def list_shows_what_is_directly_under_a_prefix(storage: ObjectStorage) -> None:
    storage.ensure_bucket()
    for key in ("a/b/c", "a/d", "a/e/f/g", "x"):
        storage.put(key, key.encode(), sha256=sha(key.encode()))
    assert storage.list("a/") == (["b", "e"], ["d"])
    assert storage.list("") == (["a"], ["x"])
    assert storage.list("a/e/") == (["f"], [])
    assert storage.list("none/") == ([], [])


@contract
def presign_needs_no_request_and_says_when_it_expires(storage: ObjectStorage) -> None:
    url, expiry = storage.presign("some/key", timedelta(minutes=5))  # no bucket: no request
    assert "some/key" in url
    assert expiry.tzinfo is not None and expiry.utcoffset() == timedelta(0)
    assert expiry.microsecond == 0
    assert abs((expiry - datetime.now(UTC)) - timedelta(minutes=5)) < timedelta(seconds=2)
    with pytest.raises(ValueError):
        storage.presign("some/key", timedelta(days=8))


@contract
def delete_removes_and_a_missing_key_is_fine(storage: ObjectStorage) -> None:
    storage.ensure_bucket()
    storage.put("gone", b"x", sha256=sha(b"x"))
    storage.delete("gone")
    storage.delete("gone")
    assert storage.stat("gone") is None


@pytest.mark.parametrize("check", CONTRACT, ids=lambda check: check.__name__)
def test_memory_storage_keeps_the_contract(check: Check) -> None:
    check(MemoryStorage("unit-bucket"))


# -- the memory backend ----------------------------------------------------------------------


def test_memory_etags_are_the_md5_of_the_bytes_as_s3s_are() -> None:
    storage = MemoryStorage("b")
    storage.ensure_bucket()
    data = b"etag me"
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    assert storage.put("k", data, sha256=sha(data)).etag == md5
    assert storage.put("k2", data, sha256=sha(data)).etag == md5  # same bytes, same etag


def test_memory_objects_can_be_changed_behind_the_stores_back() -> None:
    storage = MemoryStorage("b")
    storage.ensure_bucket()
    data = b"original bytes"
    written = storage.put("k", data, sha256=sha(data))
    storage.overwrite("k", b"damaged")
    # etag and sha256 metadata stay: only reading the bytes shows the change
    assert storage.stat("k") == ObjectInfo("k", len(b"damaged"), written.etag, sha(data))
    assert storage.get("k") == b"damaged"
    storage.objects["k"] = MemoryObject(b"planted", "etag-x", None)  # no sha256 metadata
    assert storage.stat("k") == ObjectInfo("k", 7, "etag-x", None)
    with pytest.raises(ObjectNotFound):
        storage.overwrite("missing", b"x")


def test_memory_reads_before_the_bucket_exists_find_nothing() -> None:
    storage = MemoryStorage("b")
    assert storage.stat("k") is None and storage.list("") == ([], [])
    with pytest.raises(ObjectNotFound):
        storage.get("k")
    url, _ = storage.presign("k", timedelta(hours=1))
    assert url.startswith("memory://b/k?expires=")


# -- the MinIO adapter, its SDK client faked ---------------------------------------------------


SECRET = "unit-test-secret-value"


def _settings(**update: Any) -> ObjectStoreSettings:
    base = ObjectStoreSettings(endpoint="127.0.0.1:9000", bucket="unit-bucket", secret_key=SECRET)
    return base.model_copy(update=update)


def _s3_error(code: str, status: int) -> S3Error:
    response = urllib3.HTTPResponse(body=b"", status=status)
    return S3Error(response, code, "it failed", "/unit-bucket/k", "req-1", "host-1", "unit-bucket")


def _raiser(exc: BaseException) -> Any:
    def raise_it(*_args: object, **_kwargs: object) -> NoReturn:
        raise exc

    return raise_it


def test_open_storage_names_a_bucket_and_does_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[ObjectStoreSettings] = []
    real = minio_adapter.make_minio

    def counting(settings: ObjectStoreSettings, **kwargs: Any) -> Any:
        made.append(settings)
        return real(settings, **kwargs)

    monkeypatch.setattr(minio_adapter, "make_minio", counting)
    storage = open_storage(_settings(), "headrace-archive")
    assert isinstance(storage, MinioStorage)
    assert (storage.endpoint, storage.bucket, storage.location) == (
        "127.0.0.1:9000",
        "headrace-archive",
        "s3://headrace-archive",
    )
    assert open_storage(_settings()).bucket == "unit-bucket"
    assert made == []  # no client yet: constructors do no I/O
    storage.presign("k")
    storage.presign("k")
    assert len(made) == 1  # made on first use, once
    with pytest.raises(ObjectStoreRefused, match="Bad_Bucket"):
        open_storage(_settings(), "Bad_Bucket")


def test_an_endpoint_the_sdk_cannot_parse_is_refused_at_first_use() -> None:
    storage = open_storage(_settings(endpoint="http://127.0.0.1:9000/path"))
    with pytest.raises(ObjectStoreRefused, match="configuration") as caught:
        storage.stat("k")
    assert SECRET not in str(caught.value)


def _written(bucket: str, key: str) -> ObjectWriteResult:
    return ObjectWriteResult(bucket, key, None, "etag-after", HTTPHeaderDict())


def test_a_conditional_write_is_one_put_with_its_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    storage = MinioStorage(_settings())
    sent: list[tuple[str, bytes, dict[str, Any]]] = []

    def put(bucket: str, key: str, data: bytes, headers: dict[str, Any]) -> ObjectWriteResult:
        sent.append((key, data, headers))
        return _written(bucket, key)

    monkeypatch.setattr(storage.client, "_put_object", put)
    monkeypatch.setattr(storage.client, "put_object", _raiser(AssertionError("not one PUT")))
    data = b"manifest"
    assert storage.put("m", data, sha256=sha(data), if_absent=True).etag == "etag-after"
    storage.put("m", data, sha256=sha(data), if_match="etag-before")
    assert sent == [
        (
            "m",
            data,
            {
                "Content-Type": "application/octet-stream",
                "x-amz-meta-sha256": sha(data),
                "If-None-Match": "*",
            },
        ),
        (
            "m",
            data,
            {
                "Content-Type": "application/octet-stream",
                "x-amz-meta-sha256": sha(data),
                "If-Match": '"etag-before"',
            },
        ),
    ]
    with pytest.raises(ContentMismatch):
        storage.put("m", b"changed!", sha256=sha(data), if_absent=True)
    assert len(sent) == 2  # verified before anything was sent


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("PreconditionFailed", 412),
        ("ConditionalRequestConflict", 409),
        ("NoSuchKey", 404),  # If-Match on an object that is gone
    ],
)
def test_a_failed_condition_is_precondition_failed(
    monkeypatch: pytest.MonkeyPatch, code: str, status: int
) -> None:
    storage = MinioStorage(_settings())
    monkeypatch.setattr(storage.client, "_put_object", _raiser(_s3_error(code, status)))
    with pytest.raises(PreconditionFailed, match="unit-bucket/m") as caught:
        storage.put("m", b"x", sha256=sha(b"x"), if_match="abc")
    assert not is_transient(caught.value)
    monkeypatch.setattr(storage.client, "_put_object", _raiser(_s3_error("AccessDenied", 403)))
    with pytest.raises(ObjectStoreRefused):
        storage.put("m", b"x", sha256=sha(b"x"), if_absent=True)


def test_stat_reads_the_sha256_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    storage = MinioStorage(_settings())
    found = {
        "with": Object(
            "unit-bucket",
            "with",
            etag='"abc"',
            size=3,
            metadata=HTTPHeaderDict({"X-Amz-Meta-Sha256": "f" * 64}),
        ),
        "without": Object("unit-bucket", "without", etag="def-2", size=9, metadata={}),
    }

    def stat_object(_bucket: str, key: str) -> Object:
        if key not in found:
            raise _s3_error("NoSuchKey", 404)
        return found[key]

    monkeypatch.setattr(storage.client, "stat_object", stat_object)
    assert storage.stat("with") == ObjectInfo("with", 3, "abc", "f" * 64)
    assert storage.stat("without") == ObjectInfo("without", 9, "def-2", None)
    assert storage.stat("missing") is None


def test_list_splits_prefixes_from_names(monkeypatch: pytest.MonkeyPatch) -> None:
    storage = MinioStorage(_settings())
    listed = [Object("unit-bucket", "p/day/"), Object("unit-bucket", "p/file")]

    def list_objects(_bucket: str, prefix: str, recursive: bool) -> list[Object]:
        assert (prefix, recursive) == ("p/", False)
        return listed

    monkeypatch.setattr(storage.client, "list_objects", list_objects)
    assert storage.list("p/") == (["day"], ["file"])
