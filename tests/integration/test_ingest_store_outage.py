"""MinIO going away in the middle of ``headrace ingest``, against the real stack.

The object store is reached through :class:`TcpProxy`, a forwarder written here that
can be stopped (its listener and every open connection closed, as a store that went
away) and started again on the same port. It stops once the first two uploads of the
run are done: the next uploads are retried, fail, and open the breaker; every small
file still goes inline, the large ones left are skipped as OBJECT_STORE_UNAVAILABLE,
and the run completes as incomplete. Resumed with the store back, the run publishes
the skipped files and nothing of what the first attempt committed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from headrace.settings import KafkaSettings, ObjectStoreSettings, RegistrySettings
from producers import cli
from producers.breaker import CircuitBreaker
from producers.ingest import IngestOptions
from schemas.models import ContentStrategy, RunEventKind, SkipReason, run_digest
from storage.objects import ContentAddressedStore, MinioObjectStore, StoredObject
from tests.integration.test_ingest import env, file_events, run_events  # noqa: F401
from tests.unit.test_cli import run

CHUNK = 64 * 1024
LARGE = 200 * 1024  # above --inline-limit: uploaded
LARGE_FILES = [f"f{i:02d}.bin" for i in range(1, 9)]
SMALL_FILES = [f"f{i:02d}.txt" for i in range(1, 9)]  # each one just after its large one
UPLOADS_BEFORE_OUTAGE = 2


class TcpProxy:
    """A TCP forwarder from a port of 127.0.0.1 to ``target``, a thread per connection
    pair. :meth:`stop` closes the listener and every open connection and waits for its
    threads; :meth:`start` listens again, on the same port once it has one."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.accepted = 0  # connections, over every start
        self._lock = threading.Lock()
        self._stopping = False
        self._sockets: set[socket.socket] = set()  # the open connections' both ends
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self._listener is None, "already listening"
        listener = socket.socket()
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(16)
        except OSError:
            listener.close()
            raise
        self.port = listener.getsockname()[1]
        self._listener, self._wake = listener, socket.socketpair()
        self._stopping, self._threads = False, []
        self._spawn(self._accept, listener, self._wake[1])

    def stop(self, timeout_s: float = 10.0) -> None:
        """Closed, every connection with it, once this returns (idempotent)."""
        if self._listener is None or self._wake is None:
            return
        with self._lock:
            self._stopping = True
            for sock in self._sockets:  # wakes their threads, even one blocked in sendall
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            threads = list(self._threads)
        self._wake[0].send(b"x")  # wakes the accept loop
        deadline = time.monotonic() + timeout_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in threads if t.is_alive()]
        self._listener.close()
        for end in self._wake:
            end.close()
        self._listener = self._wake = None
        assert not alive, f"proxy threads still running after {timeout_s}s: {alive}"
        assert not self._sockets, "every connection is closed"

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=f"proxy-{self.port}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket, wake: socket.socket) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            while True:
                ready = {key.fd for key, _ in selector.select()}
                if wake.fileno() in ready:
                    return
                try:
                    client, _ = listener.accept()
                except OSError:
                    return
                with self._lock:
                    if self._stopping:
                        client.close()
                        return
                    self.accepted += 1
                    self._sockets.add(client)
                    self._spawn(self._forward, client)

    def _forward(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
            with self._lock:
                if self._stopping:  # stopped while connecting: not swept, closed below
                    return
                self._sockets.add(upstream)
            peer = {client.fileno(): (client, upstream), upstream.fileno(): (upstream, client)}
            with selectors.DefaultSelector() as selector:
                for sock, _ in peer.values():
                    selector.register(sock, selectors.EVENT_READ)
                while True:
                    for key, _ in selector.select():
                        source, sink = peer[key.fd]
                        data = source.recv(CHUNK)
                        if not data:  # either side closed (or the proxy stopped)
                            return
                        sink.sendall(data)
        except OSError:
            return  # refused, reset or shut down: the connection ends
        finally:
            with self._lock:
                for end in (client, upstream):
                    if end is not None:
                        self._sockets.discard(end)
                        end.close()


@pytest.fixture
def proxy(object_store: ObjectStoreSettings) -> Iterator[TcpProxy]:
    host, _, port = object_store.endpoint.rpartition(":")
    forwarder = TcpProxy((host, int(port)))
    forwarder.start()
    try:
        yield forwarder
    finally:
        forwarder.stop()


@pytest.fixture
def outage_tree(tmp_path: Path) -> Path:
    """8 large files and 8 small ones, in the order of their names: f01.bin, f01.txt,
    f02.bin, ... (the walk is sorted). Every large file has content of its own."""
    root = tmp_path / "outage"
    root.mkdir()
    for name in LARGE_FILES:
        (root / name).write_bytes(os.urandom(LARGE))
    for i, name in enumerate(SMALL_FILES, start=1):
        (root / name).write_text(f"small file {i}\n" * i)
    (root / SMALL_FILES[-1]).write_bytes(b"i" * 64 * 1024)  # exactly --inline-limit: inline
    return root


def test_minio_unreachable_mid_run_opens_the_breaker_and_a_resume_publishes_the_rest(
    outage_tree: Path,
    proxy: TcpProxy,
    env: dict[str, str],  # noqa: F811 - the fixture imported above
    kafka: KafkaSettings,
    registry: RegistrySettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HEADRACE_OBJECT_STORE__ENDPOINT", proxy.endpoint)
    monkeypatch.setenv("HEADRACE_INGEST__STATE_DIR", str(tmp_path / "runs"))
    # No option sets the backoff between upload attempts: 0.5 s would cost seconds here.
    monkeypatch.setattr(
        cli, "IngestOptions", functools.partial(IngestOptions, upload_backoff_s=0.01)
    )
    attempts, threshold = IngestOptions().upload_attempts, CircuitBreaker().threshold

    calls: list[str] = []  # the file of each put_file, in order
    outage = threading.Event()
    real_put_file = ContentAddressedStore.put_file

    def put_file(self: ContentAddressedStore, path: Path, sha256: str, size: int) -> StoredObject:
        calls.append(path.name)
        stored = real_put_file(self, path, sha256, size)
        if not outage.is_set() and len(calls) == UPLOADS_BEFORE_OUTAGE:
            outage.set()  # the second upload is done (presigning needs no network)
            proxy.stop()
        return stored

    monkeypatch.setattr(MinioObjectStore, "put_file", put_file)
    argv = ["ingest", str(outage_tree), "--project", "outage", "--inline-limit", "64KiB"]

    # --- the first attempt: the store goes away after two uploads -------------------
    code, out, err = run([*argv, "--json"], capsys)
    assert code == 1, err
    assert outage.is_set() and proxy.accepted >= 1, "the uploads went through the proxy"
    summary = json.loads(out)
    run_id = summary["run_id"]
    uploaded, unavailable = LARGE_FILES[:UPLOADS_BEFORE_OUTAGE], LARGE_FILES[UPLOADS_BEFORE_OUTAGE:]
    failing = unavailable[:threshold]  # tried, `attempts` times each, until the breaker opened
    assert calls == uploaded + [name for name in failing for _ in range(attempts)]
    assert summary["ok"] and summary["failed"] == {} and summary["incomplete"] is True
    assert summary["object_store"] == {
        "retries": threshold * (attempts - 1),
        "breaker": "open",
        "breaker_opened": summary["object_store"]["breaker_opened"],
        "unavailable": len(unavailable),
    }
    assert summary["object_store"]["breaker_opened"] >= 1
    assert {s["path"]: s["reason"] for s in summary["skipped"]} == dict.fromkeys(
        unavailable, "object_store_unavailable"
    )
    assert all(s["detail"].startswith("object store unavailable") for s in summary["skipped"])
    assert summary["counts"] == {
        "files": len(SMALL_FILES) + len(uploaded),
        "bytes": sum((outage_tree / n).stat().st_size for n in SMALL_FILES + uploaded),
        "inline": len(SMALL_FILES),
        "object_storage": len(uploaded),
        "git_reference": 0,
        "deleted": 0,
        "skipped": len(unavailable),
    }
    assert summary["uploads"]["made"] == len(uploaded)
    last = err.strip().splitlines()[-1]
    assert last.startswith(
        f"headrace: error: run incomplete: {len(unavailable)} files skipped because the"
        " object store was unavailable"
    )
    assert last.endswith(f"run it again with --resume {run_id}")

    first = file_events(kafka, registry, env)
    events = {e.path: e for _key, e in first}
    assert sorted(events) == sorted(SMALL_FILES + uploaded)
    for name in SMALL_FILES:  # before, during and after the outage: inline
        event = events[name]
        assert event.content_strategy is ContentStrategy.INLINE and event.inline is not None
        assert event.inline.data == (outage_tree / name).read_bytes()
    for name in uploaded:
        event = events[name]
        assert event.content_strategy is ContentStrategy.OBJECT_STORAGE
        assert event.object_ref is not None and event.object_ref.url is not None
    runs = run_events(kafka, registry, env)
    assert [r.kind for r in runs] == [RunEventKind.STARTED, RunEventKind.COMPLETED]
    completed = runs[-1]
    assert {(s.path, s.reason) for s in completed.skipped} == {
        (name, SkipReason.OBJECT_STORE_UNAVAILABLE) for name in unavailable
    }
    assert completed.skip_counts == {SkipReason.OBJECT_STORE_UNAVAILABLE.value: len(unavailable)}
    assert completed.counts is not None and completed.counts.files == summary["counts"]["files"]

    # --- the store is back: the run resumed --------------------------------------------
    proxy.start()
    assert proxy.endpoint == os.environ["HEADRACE_OBJECT_STORE__ENDPOINT"]
    calls.clear()
    code, out, err = run([*argv, "--resume", run_id, "--json"], capsys)
    assert code == 0, err
    assert calls == unavailable, "only the skipped files are uploaded, once each"
    resumed = json.loads(out)
    assert resumed["run_id"] == run_id and resumed["attempt"] == 2
    assert resumed["ok"] and resumed["incomplete"] is False and resumed["skipped"] == []
    assert resumed["resumed"] == len(SMALL_FILES) + len(uploaded)
    assert resumed["object_store"]["breaker"] == "closed"
    assert resumed["uploads"]["made"] == len(unavailable)
    whole = {
        "files": len(SMALL_FILES) + len(LARGE_FILES),
        "bytes": sum(p.stat().st_size for p in outage_tree.iterdir()),
        "inline": len(SMALL_FILES),
        "object_storage": len(LARGE_FILES),
        "git_reference": 0,
        "deleted": 0,
        "skipped": 0,
    }
    assert resumed["counts"] == whole
    digest = run_digest(
        (p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in outage_tree.iterdir()
    )
    assert resumed["digest"] == digest

    every = file_events(kafka, registry, env)
    per_path = Counter(e.path for _key, e in every)
    assert per_path == dict.fromkeys(SMALL_FILES + LARGE_FILES, 1), "each file published once"
    events = {e.path: e for _key, e in every}
    for name in LARGE_FILES:
        event = events[name]
        assert event.content_strategy is ContentStrategy.OBJECT_STORAGE
        assert event.object_ref is not None and event.object_ref.url is not None
        assert event.checksum == hashlib.sha256((outage_tree / name).read_bytes()).hexdigest()
    # A reference the first attempt published still serves its bytes (through the proxy).
    url = events[uploaded[0]].object_ref.url  # type: ignore[union-attr]
    assert url is not None
    fetched = httpx.get(url, timeout=30)
    assert fetched.status_code == 200
    assert fetched.content == (outage_tree / uploaded[0]).read_bytes()

    runs = run_events(kafka, registry, env)
    kinds = [RunEventKind.STARTED, RunEventKind.COMPLETED, RunEventKind.COMPLETED]
    assert [r.kind for r in runs] == kinds, "RunStarted is not published again"
    completed = runs[-1]
    assert completed.run_id == run_id
    assert completed.counts is not None and completed.counts.model_dump() == whole
    assert completed.skipped == [] and completed.skip_counts == {}
    assert completed.digest == digest
