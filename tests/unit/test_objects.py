"""The object store without services: keys, the in-memory store, and how failures are typed."""

from __future__ import annotations

import hashlib
import io
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import pytest
import urllib3
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import ObjectWriteResult as Written
from minio.helpers import read_part_data
from urllib3 import HTTPHeaderDict
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError, ReadTimeoutError

from headrace.errors import StorageError, Terminal, Transient, is_transient
from headrace.settings import ObjectStoreSettings
from storage.errors import (
    ContentMismatch,
    ObjectNotFound,
    ObjectStoreError,
    ObjectStoreRefused,
    ObjectStoreUnavailable,
)
from storage.objects import MemoryObjectStore, MinioObjectStore, StoredObject, content_key

SECRET = "unit-test-secret-value"
DATA = b"hello, content-addressed world\n"
SHA = hashlib.sha256(DATA).hexdigest()
NO_POOL: Any = None  # urllib3's errors name their pool; these were raised by none


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _settings(**update: Any) -> ObjectStoreSettings:
    base = ObjectStoreSettings(endpoint="127.0.0.1:9000", bucket="unit-bucket", secret_key=SECRET)
    return base.model_copy(update=update)


def _s3_error(code: str, status: int, message: str = "it failed") -> S3Error:
    response = urllib3.HTTPResponse(body=b"", status=status)
    return S3Error(response, code, message, "/unit-bucket/k", "req-1", "host-1", "unit-bucket")


def _raiser(exc: BaseException) -> Any:
    def raise_it(*_args: object, **_kwargs: object) -> NoReturn:
        raise exc

    return raise_it


# -- keys ------------------------------------------------------------------------------------


def test_content_key_spreads_by_hash_prefix() -> None:
    digest = "ab" + "cd" + "e" * 60
    assert content_key(digest) == f"sha256/ab/cd/{digest}"
    assert content_key(SHA).endswith("/" + SHA)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "ab" * 31,  # 62 characters
        "a" * 65,
        "A" * 64,  # upper case is another spelling of the same digest: one key per content
        "g" * 64,
        "a" * 63 + "\n",
        " " + "a" * 63,
    ],
)
def test_content_key_rejects_anything_but_64_lowercase_hex(bad: str) -> None:
    with pytest.raises(ValueError, match="sha256"):
        content_key(bad)


# -- the in-memory store ---------------------------------------------------------------------


def test_memory_store_deduplicates_and_counts(tmp_path: Path) -> None:
    store = MemoryObjectStore("mem")
    store.ensure_bucket()
    path = tmp_path / "f.bin"
    path.write_bytes(DATA)

    first = store.put_file(path, SHA, len(DATA))
    again = store.put_bytes(DATA, SHA)
    third = store.put_file(path, SHA, len(DATA))

    assert first == StoredObject("mem", content_key(SHA), len(DATA), SHA, uploaded=True)
    assert again.uploaded is False and third.uploaded is False
    assert (store.uploads, store.deduplicated, store.uploaded_bytes) == (1, 2, len(DATA))
    assert store.exists(SHA) and not store.exists("0" * 64)
    assert store.get(first.key) == DATA
    with store.open(first.key) as stream:
        assert stream.read() == DATA


def test_memory_store_is_the_same_contract_as_the_real_one(tmp_path: Path) -> None:
    store = MemoryObjectStore()
    with pytest.raises(ObjectStoreRefused, match="ensure_bucket"):
        store.put_bytes(DATA, SHA)  # no bucket yet, as on a real store
    store.ensure_bucket()
    store.ensure_bucket()

    with pytest.raises(ContentMismatch):
        store.put_bytes(b"other bytes", SHA)
    path = tmp_path / "grew.bin"
    path.write_bytes(DATA + b"more")
    with pytest.raises(ContentMismatch):
        store.put_file(path, SHA, len(DATA))
    with pytest.raises(ObjectNotFound) as missing:
        store.get(content_key("0" * 64))
    assert isinstance(missing.value, Terminal) and isinstance(missing.value, StorageError)
    with pytest.raises(ObjectNotFound):
        store.open(content_key("0" * 64))
    assert (store.uploads, store.deduplicated) == (0, 0)

    url, expiry = store.presign(content_key(SHA), timedelta(hours=2))
    assert url.startswith(f"memory://headrace-content/{content_key(SHA)}?expires=")
    assert url.endswith(str(int(expiry.timestamp())))
    assert expiry.tzinfo is UTC
    assert (
        timedelta(hours=2) - timedelta(seconds=2) < expiry - datetime.now(UTC) <= timedelta(hours=2)
    )
    with pytest.raises(ValueError):
        store.presign(content_key(SHA), timedelta(days=8))


def test_a_content_key_read_is_checked_against_its_key_at_the_end() -> None:
    store = MemoryObjectStore()
    store.ensure_bucket()
    key = store.put_bytes(DATA, SHA).key
    store.storage.overwrite(key, DATA.upper())  # changed behind the store's back
    with pytest.raises(ContentMismatch, match="hash differently"):
        store.get(key)
    with store.open(key) as stream:
        assert stream.read(5) == DATA.upper()[:5]  # the check is at the end of the stream
        with pytest.raises(ContentMismatch):
            stream.read()
    assert store.stat_sha256(key) == (len(DATA), SHA)  # its metadata still says the old one
    store.storage.put("plain/key", b"any", sha256=hashlib.sha256(b"any").hexdigest())
    store.storage.overwrite("plain/key", b"other")
    assert store.get("plain/key") == b"other"  # not a content key: nothing to check


def test_empty_content_has_a_key_and_round_trips() -> None:
    store = MemoryObjectStore()
    store.ensure_bucket()
    empty = hashlib.sha256(b"").hexdigest()
    assert store.put_bytes(b"", empty).size == 0
    assert store.get(content_key(empty)) == b""


# -- the error tree --------------------------------------------------------------------------


def test_error_markers() -> None:
    assert issubclass(ObjectStoreUnavailable, StorageError) and issubclass(
        ObjectStoreUnavailable, Transient
    )
    for terminal in (ObjectStoreRefused, ObjectNotFound, ContentMismatch):
        assert issubclass(terminal, StorageError) and issubclass(terminal, Terminal)
        assert not issubclass(terminal, Transient)
    err = ObjectStoreUnavailable("h:1", "b", "stat", "line one\nline two", key="k")
    assert str(err) == "object store at h:1 is unavailable (stat b/k): line one line two"
    assert is_transient(err)


# -- mapping the SDK's failures --------------------------------------------------------------


def _store(monkeypatch: pytest.MonkeyPatch, method: str, exc: BaseException) -> MinioObjectStore:
    store = MinioObjectStore(_settings())
    monkeypatch.setattr(store.storage.client, method, _raiser(exc))
    return store


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("AccessDenied", 403),
        ("InvalidAccessKeyId", 403),
        ("SignatureDoesNotMatch", 403),
        ("NoSuchBucket", 404),
        ("InvalidBucketName", 400),
    ],
)
def test_refusals_are_terminal(monkeypatch: pytest.MonkeyPatch, code: str, status: int) -> None:
    store = _store(monkeypatch, "get_object", _s3_error(code, status))
    with pytest.raises(ObjectStoreRefused) as caught:
        store.get(content_key(SHA))
    assert not is_transient(caught.value)
    assert code in str(caught.value)
    assert "127.0.0.1:9000" in str(caught.value) and "unit-bucket" in str(caught.value)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("SlowDown", 503),
        ("ServiceUnavailable", 503),
        ("InternalError", 500),
        ("XMinioStorageFull", 507),  # unknown code, but a 5xx
        ("RequestTimeout", 400),
    ],
)
def test_busy_and_failing_servers_are_transient(
    monkeypatch: pytest.MonkeyPatch, code: str, status: int
) -> None:
    store = _store(monkeypatch, "stat_object", _s3_error(code, status))
    with pytest.raises(ObjectStoreUnavailable) as caught:
        store.exists(SHA)
    assert is_transient(caught.value)


def test_a_missing_key_is_not_found_on_get_and_absent_on_stat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = MinioObjectStore(_settings())
    monkeypatch.setattr(store.storage.client, "get_object", _raiser(_s3_error("NoSuchKey", 404)))
    monkeypatch.setattr(store.storage.client, "stat_object", _raiser(_s3_error("NoSuchKey", 404)))
    with pytest.raises(ObjectNotFound, match=content_key(SHA)):
        store.get(content_key(SHA))
    with pytest.raises(ObjectNotFound):
        store.open(content_key(SHA))
    assert store.exists(SHA) is False


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ServerError("server failed with HTTP status code 503", 503), ObjectStoreUnavailable),
        (ServerError("server failed with HTTP status code 418", 418), ObjectStoreRefused),
        (InvalidResponseError(502, "text/html", "<html>gateway</html>"), ObjectStoreUnavailable),
        (InvalidResponseError(404, "text/html", "<html>not here</html>"), ObjectStoreRefused),
    ],
)
def test_responses_without_an_s3_error(
    monkeypatch: pytest.MonkeyPatch, exc: Exception, expected: type[ObjectStoreError]
) -> None:
    with pytest.raises(expected):
        _store(monkeypatch, "stat_object", exc).exists(SHA)


def _refused() -> NewConnectionError:
    try:
        raise ConnectionRefusedError(111, "Connection refused")
    except ConnectionRefusedError as cause:
        try:
            raise NewConnectionError(NO_POOL, "Failed to establish a new connection") from cause
        except NewConnectionError as exc:
            return exc


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (MaxRetryError(NO_POOL, f"/b/k?X-Amz-Signature=abc{SECRET}", _refused()), "refused"),
        (ReadTimeoutError(NO_POOL, "/b/k", "Read timed out."), "timed out"),
        (ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")), "reset"),
        (TimeoutError("timed out"), "timed out"),
        (ConnectionResetError(104, "Connection reset by peer"), "reset"),
    ],
)
def test_transport_failures_are_transient_and_say_why(
    monkeypatch: pytest.MonkeyPatch, exc: Exception, reason: str
) -> None:
    store = _store(monkeypatch, "stat_object", exc)
    with pytest.raises(ObjectStoreUnavailable, match=reason) as caught:
        store.exists(SHA)
    assert SECRET not in str(caught.value) and "Signature" not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_secret_in_a_server_message_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    leaky = _s3_error("AccessDenied", 403, f"denied for {SECRET} at ?X-Amz-Signature=deadbeef&x=1")
    with pytest.raises(ObjectStoreRefused) as caught:
        _store(monkeypatch, "stat_object", leaky).exists(SHA)
    assert SECRET not in str(caught.value) and "deadbeef" not in str(caught.value)


def test_a_racing_bucket_creation_is_success(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MinioObjectStore(_settings())
    monkeypatch.setattr(store.storage.client, "bucket_exists", lambda _b: False)
    monkeypatch.setattr(
        store.storage.client, "make_bucket", _raiser(_s3_error("BucketAlreadyOwnedByYou", 409))
    )
    store.ensure_bucket()
    monkeypatch.setattr(
        store.storage.client, "make_bucket", _raiser(_s3_error("AccessDenied", 403))
    )
    with pytest.raises(ObjectStoreRefused):
        store.ensure_bucket()


def test_content_that_does_not_hash_to_its_key_is_never_uploaded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    store = MinioObjectStore(_settings())
    sent: list[bytes] = []

    def put_object(bucket: str, key: str, data: BinaryIO, length: int, **_: Any) -> Written:
        sent.append(read_part_data(data, length))  # read as the SDK reads a part, then sent
        return Written(bucket, key, None, "etag-1", HTTPHeaderDict())

    monkeypatch.setattr(store.storage.client, "stat_object", _raiser(_s3_error("NoSuchKey", 404)))
    monkeypatch.setattr(store.storage.client, "put_object", put_object)
    path = tmp_path / "f.bin"
    path.write_bytes(b"changed after hashing")
    with pytest.raises(ContentMismatch):
        store.put_file(path, SHA, len(b"changed after hashing"))
    with pytest.raises(ContentMismatch, match="ended after"):
        store.put_file(path, SHA, 1000)  # the file shrank
    assert sent == [] and store.uploads == 0

    path.write_bytes(DATA + b"grown")
    with pytest.raises(ContentMismatch, match="longer"):
        store.put_file(path, SHA, len(DATA))  # the file grew after it was hashed
    assert sent == [] and store.uploads == 0

    path.write_bytes(DATA)
    assert store.put_file(path, SHA, len(DATA)).uploaded
    assert sent == [DATA] and (store.uploads, store.uploaded_bytes) == (1, len(DATA))


def test_a_local_read_failure_stays_the_files_own(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MinioObjectStore(_settings())
    monkeypatch.setattr(store.storage.client, "stat_object", _raiser(_s3_error("NoSuchKey", 404)))

    def put_object(bucket: str, key: str, data: BinaryIO, length: int, **_: Any) -> Written:
        read_part_data(data, length)
        return Written(bucket, key, None, "etag-1", HTTPHeaderDict())

    monkeypatch.setattr(store.storage.client, "put_object", put_object)
    with pytest.raises(FileNotFoundError):
        store.put_file(Path("/nonexistent/file.bin"), SHA, 3)

    class Broken(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(Path, "open", lambda *_a, **_k: Broken())
    with pytest.raises(OSError, match="Input/output") as caught:
        store.put_file(Path("whatever"), SHA, 3)
    assert not isinstance(caught.value, StorageError)


def test_bad_configuration_is_refused_at_construction() -> None:
    with pytest.raises(ObjectStoreRefused, match="Bad_Bucket"):
        MinioObjectStore(_settings(bucket="Bad_Bucket"))
    with pytest.raises(ValueError, match="part_size"):
        MinioObjectStore(_settings(), part_size=1024)


def test_presign_needs_no_network_and_reports_its_expiry() -> None:
    store = MinioObjectStore(_settings(endpoint=f"127.0.0.1:{_closed_port()}"))
    url, expiry = store.presign(content_key(SHA), timedelta(minutes=5))
    assert url.startswith("http://127.0.0.1:") and "X-Amz-Expires=300" in url
    assert expiry.tzinfo is not None and expiry.microsecond == 0
    assert abs((expiry - datetime.now(UTC)) - timedelta(minutes=5)) < timedelta(seconds=2)


def test_an_unreachable_store_fails_fast_as_unavailable() -> None:
    store = MinioObjectStore(_settings(endpoint=f"127.0.0.1:{_closed_port()}"))
    started = time.monotonic()
    for attempt in (store.ensure_bucket, lambda: store.exists(SHA), lambda: store.get("k")):
        with pytest.raises(ObjectStoreUnavailable) as caught:
            attempt()
        message = str(caught.value)
        assert "refused" in message and store.endpoint in message and "unit-bucket" in message
        assert SECRET not in message and "Signature" not in message
    assert time.monotonic() - started < 10
