"""The clone cache's reading API, its bound, its refusals and its secrecy.

Remotes are throwaway repositories in tmp_path, served as file:// URLs or by the
token-demanding smart-HTTP server of tests/gitserver.py.
"""

from __future__ import annotations

import base64
import fcntl
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

import storage.git_remote
from headrace.errors import is_transient
from headrace.settings import PROJECT_ROOT, GitCredential, GitSettings
from storage.git import GitError, GitRefused, GitUnavailable, Ran, check_reference
from storage.git_cache import GitCache
from tests.gitserver import commit_all, git, hermetic_git, serving

TOKEN = "s3cr3t-token"
FILE = ("file",)


@pytest.fixture(autouse=True)
def hermetic(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    hermetic_git(tmp_path_factory.mktemp("gitconfig") / "config", monkeypatch)


def make_remote(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "uploadpack.allowFilter", "true")
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    commit_all(root, "first")
    return root


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return make_remote(
        tmp_path / "remote",
        {
            "src/pkg/mod.py": b"print('hi')\n",
            "docs/read me.md": b"# spaces\n",
            "odd\nname.txt": b"newline in the name\n",
            os.fsdecode(b"caf\xe9.txt"): b"latin-1 name\n",
            "big.bin": os.urandom(3 * 1024 * 1024 + 7),
        },
    )


class Spy:
    """Counts the network git commands the cache runs (through storage.git_remote's run_git)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[list[str]] = []
        real = storage.git_remote.run_git

        def spy(args: list[str], **kwargs: object) -> Ran:
            self.calls.append(list(args))
            return real(args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(storage.git_remote, "run_git", spy)

    def fetches(self) -> list[list[str]]:
        return [args for args in self.calls if "fetch" in args]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    return Spy(monkeypatch)


# -- construction ------------------------------------------------------------------------


def test_from_settings_does_no_io(tmp_path: Path) -> None:
    settings = GitSettings(
        cache_dir=tmp_path / "not-yet",
        credentials=[GitCredential(url_prefix="https://host/", token=SecretStr(TOKEN))],
        cache_max_size=1024,
        clone_timeout_s=9,
        timeout_s=3,
        allowed_schemes=("https", "file"),
    )
    cache = GitCache.from_settings(settings)
    assert not (tmp_path / "not-yet").exists()
    assert (cache.max_size, cache.clone_timeout, cache.timeout) == (1024, 9, 3)
    assert cache.allowed_schemes == ("https", "file")
    assert TOKEN not in repr(cache) and TOKEN not in repr(vars(cache).keys())


# -- reading -----------------------------------------------------------------------------


def test_read_by_path_and_by_blob_id(remote: Path, tmp_path: Path) -> None:
    cache = GitCache(tmp_path / "cache", allowed_schemes=FILE)
    url, commit = remote.as_uri(), git(remote, "rev-parse", "HEAD")
    for path in ("src/pkg/mod.py", "odd\nname.txt", os.fsdecode(b"caf\xe9.txt"), "docs/read me.md"):
        blob = git(remote, "rev-parse", f"HEAD:{path}")
        data = (remote / path).read_bytes()
        assert cache.read_blob(url, commit, path=path) == data
        assert cache.read_blob(url, commit, blob_id=blob) == data
        assert cache.read_blob(url, commit.upper(), path=path, blob_id=blob.upper()) == data
    other = git(remote, "rev-parse", "HEAD:docs/read me.md")
    for kwargs, message in [
        ({"path": "src/pkg/mod.py", "blob_id": other}, "is blob .*, not " + other),
        ({"path": "src/pkg/nothing.py"}, "no file 'src/pkg/nothing.py'"),
        ({"path": "src/pkg/mod.py/deeper"}, "no file"),
        ({"path": "src/pkg"}, "is a directory"),
        ({"blob_id": "0" * 40}, "not our ref 0{40}|no blob 0{40}"),
    ]:
        with pytest.raises(GitError, match=message) as caught:
            cache.read_blob(url, commit, **kwargs)  # type: ignore[arg-type]
        assert not is_transient(caught.value) and not isinstance(caught.value, GitRefused)
        assert "\n" not in str(caught.value)
    with pytest.raises(GitError, match="no commit") as unknown:
        cache.read_blob(url, "e" * 40, path="src/pkg/mod.py")
    assert not is_transient(unknown.value)
    cache.close()


def test_warm_reads_start_no_git(remote: Path, tmp_path: Path, spy: Spy) -> None:
    cache = GitCache(tmp_path / "cache", allowed_schemes=FILE)
    url, commit = remote.as_uri(), git(remote, "rev-parse", "HEAD")
    assert cache.read_blob(url, commit, path="src/pkg/mod.py") == b"print('hi')\n"
    assert [args[0] for args in spy.calls if args[0] == "clone"] == ["clone"]
    spy.calls.clear()
    assert cache.read_blob(url, commit, path="src/pkg/mod.py") == b"print('hi')\n"
    assert spy.calls == []
    cache.close()


def test_read_blobs_makes_one_fetch_for_a_batch(remote: Path, tmp_path: Path, spy: Spy) -> None:
    cache = GitCache(tmp_path / "cache", allowed_schemes=FILE)
    url = remote.as_uri()
    first = git(remote, "rev-parse", "HEAD")
    cache.read_blob(url, first, path="src/pkg/mod.py")  # the clone exists
    for i in range(40):
        (remote / "batch" / f"f{i:02}.txt").parent.mkdir(exist_ok=True)
        (remote / "batch" / f"f{i:02}.txt").write_text(f"file {i}\n")
    second = commit_all(remote, "forty files")
    spy.calls.clear()
    items = [(f"batch/f{i:02}.txt", None) for i in range(40)]
    items.append(("", git(remote, "rev-parse", "HEAD:big.bin")))  # by blob id alone
    got = list(cache.read_blobs(url, second, items))
    assert [item for item, _ in got] == items
    assert got[3][1] == b"file 3\n" and got[-1][1] == (remote / "big.bin").read_bytes()
    fetches = spy.fetches()
    assert len(fetches) == 2  # the commit (a clone holds only what branches had), the blobs
    assert second in fetches[0] and "--stdin" in fetches[1]
    spy.calls.clear()
    assert [d for _, d in cache.read_blobs(url, second, items[:5])][4] == b"file 4\n"
    assert spy.calls == []  # warm: no git process at all
    (remote / "batch" / "f00.txt").write_text("changed\n")
    third = commit_all(remote, "third")
    items2 = [("batch/f00.txt", None), ("batch/f01.txt", None)]
    assert [d for _, d in cache.read_blobs(url, third, items2)] == [b"changed\n", b"file 1\n"]
    assert len([f for f in spy.fetches() if "--stdin" in f]) == 1  # only the changed blob
    cache.close()


def test_a_bad_item_is_left_out_of_its_batch(
    remote: Path, tmp_path: Path, spy: Spy, caplog: pytest.LogCaptureFixture
) -> None:
    cache = GitCache(tmp_path / "cache", allowed_schemes=FILE)
    url, commit = remote.as_uri(), git(remote, "rev-parse", "HEAD")
    other = git(remote, "rev-parse", "HEAD:docs/read me.md")
    items = [
        ("src/pkg/mod.py", None),
        ("no/such/file", None),  # not in the tree
        ("src/pkg", None),  # a directory
        ("big.bin", other),  # a blob id the path does not have
        ("", "0" * 40),  # a blob the remote does not have
        ("docs/read me.md", other),
    ]
    with caplog.at_level(logging.WARNING):
        got = list(cache.read_blobs(url, commit, items))
    assert got == [(items[0], b"print('hi')\n"), (items[5], b"# spaces\n")]
    assert "no file 'no/such/file'" in caplog.text and "no blob " + "0" * 40 in caplog.text
    assert len([f for f in spy.fetches() if "--stdin" in f]) == 2  # again without 000...
    assert [d for _, d in cache.read_blobs(url, commit, items)] == [b"print('hi')\n", b"# spaces\n"]
    cache.close()


def test_a_commit_not_in_the_clone_is_fetched_by_id(remote: Path, tmp_path: Path, spy: Spy) -> None:
    cache = GitCache(tmp_path / "cache", allowed_schemes=FILE)
    url, first = remote.as_uri(), git(remote, "rev-parse", "HEAD")
    cache.read_blob(url, first, path="src/pkg/mod.py")
    git(remote, "checkout", "-q", "-b", "topic")
    (remote / "topic.txt").write_text("topic\n")
    topic = commit_all(remote, "topic")
    git(remote, "checkout", "-q", "main")
    git(remote, "branch", "-q", "-D", "topic")  # no branch reaches it any more
    spy.calls.clear()
    assert cache.read_blob(url, topic, path="topic.txt") == b"topic\n"
    assert any(topic in args for args in spy.fetches())
    cache.close()


def test_open_blob_streams_and_holds_the_clone(remote: Path, tmp_path: Path) -> None:
    cache = GitCache(tmp_path / "cache", allowed_schemes=FILE, max_size=0)
    url, commit = remote.as_uri(), git(remote, "rev-parse", "HEAD")
    big = (remote / "big.bin").read_bytes()
    stream = cache.open_blob(url, commit, path="big.bin")
    chunks = list(iter(lambda: stream.read(65536), b""))
    assert len(chunks) > 1 and b"".join(chunks) == big
    assert cache.evict() == [] and cache.location(url).is_dir()  # in use: kept
    stream.close()
    cache.close()
    assert cache.evict() == [cache.location(url)] and not cache.location(url).exists()
    assert cache.read_blob(url, commit, path="src/pkg/mod.py") == b"print('hi')\n"  # again
    cache.close()


def test_concurrent_readers_share_the_cache(remote: Path, tmp_path: Path) -> None:
    cache = GitCache(tmp_path / "cache", allowed_schemes=FILE)
    url, commit = remote.as_uri(), git(remote, "rev-parse", "HEAD")
    errors: list[BaseException] = []
    paths = ["src/pkg/mod.py", "docs/read me.md", "big.bin", "odd\nname.txt"]

    def read(worker: int) -> None:
        try:
            for i in range(20):
                path = paths[(worker + i) % len(paths)]
                assert cache.read_blob(url, commit, path=path) == (remote / path).read_bytes()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [p.name for p in cache.root.glob("*.git")] == [cache.location(url).name]
    cache.close()


# -- the bound -----------------------------------------------------------------------------


@pytest.fixture
def remotes(tmp_path: Path) -> list[Path]:
    """Four remotes of about the same size (200 KiB that does not compress)."""
    return [make_remote(tmp_path / f"r{i}", {"data.bin": os.urandom(200 * 1024)}) for i in range(4)]


def _read(cache: GitCache, remote: Path) -> None:
    url, commit = remote.as_uri(), git(remote, "rev-parse", "HEAD")
    assert cache.read_blob(url, commit, path="data.bin") == (remote / "data.bin").read_bytes()


def _clone_size(remotes: list[Path], tmp_path: Path) -> int:
    probe = GitCache(tmp_path / "probe", allowed_schemes=FILE)
    _read(probe, remotes[0])
    probe.close()
    return probe.size()


def test_eviction_keeps_the_cache_under_its_bound(remotes: list[Path], tmp_path: Path) -> None:
    one = _clone_size(remotes, tmp_path)
    bound = int(2.5 * one)  # room for two clones, not for four
    cache = GitCache(tmp_path / "cache", allowed_schemes=FILE, max_size=bound)
    for remote in remotes:
        _read(cache, remote)
        assert cache.size() <= bound
    kept = sorted(p.name for p in cache.root.glob("*.git"))
    assert kept == sorted(cache.location(r.as_uri()).name for r in remotes[2:])
    assert list(cache.root.glob("*.evicted-*")) == []  # renamed away, then deleted
    cache.close()


def test_eviction_follows_last_use(remotes: list[Path], tmp_path: Path) -> None:
    one = _clone_size(remotes, tmp_path)
    cache = GitCache(tmp_path / "cache", allowed_schemes=FILE, max_size=int(3.5 * one))
    a, b, c, d = remotes
    for remote in (a, b, c):
        _read(cache, remote)
    _read(cache, a)  # a warm read is a use: b is now the least recently used
    _read(cache, d)
    kept = {p.name for p in cache.root.glob("*.git")}
    assert cache.location(b.as_uri()).name not in kept
    assert {cache.location(r.as_uri()).name for r in (a, c, d)} == kept
    cache.close()


def test_a_clone_in_use_or_locked_is_not_evicted(remotes: list[Path], tmp_path: Path) -> None:
    cache = GitCache(tmp_path / "cache", allowed_schemes=FILE)
    for remote in remotes[:3]:
        _read(cache, remote)
    cache.close()
    a, b, c = (cache.location(r.as_uri()) for r in remotes[:3])
    stream = cache.open_blob(  # a reader holds a
        remotes[0].as_uri(), git(remotes[0], "rev-parse", "HEAD"), path="data.bin"
    )
    with b.with_suffix(".lock").open("a+b") as held:  # another process fetches into b
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        bounded = GitCache(cache.root, allowed_schemes=FILE, max_size=0)
        assert bounded.evict() == [c]
    assert a.is_dir() and b.is_dir() and not c.exists()
    stream.close()
    assert sorted(bounded.evict()) == sorted([a, b])
    assert list(cache.root.glob("*.git")) == []


def test_a_clone_evicted_by_another_process_is_cloned_again(remote: Path, tmp_path: Path) -> None:
    cache = GitCache(tmp_path / "cache", allowed_schemes=FILE)
    url, commit = remote.as_uri(), git(remote, "rev-parse", "HEAD")
    assert cache.read_blob(url, commit, path="src/pkg/mod.py") == b"print('hi')\n"
    other = GitCache(cache.root, allowed_schemes=FILE, max_size=0)  # its kept reader is idle
    assert other.evict() == [cache.location(url)]
    assert cache.read_blob(url, commit, path="docs/read me.md") == b"# spaces\n"
    assert cache.location(url).is_dir()
    cache.close()


def test_abandoned_batch_releases_its_clone(remote: Path, tmp_path: Path) -> None:
    cache = GitCache(tmp_path / "cache", allowed_schemes=FILE, max_size=0)
    url, commit = remote.as_uri(), git(remote, "rev-parse", "HEAD")
    batch = cache.read_blobs(url, commit, [("src/pkg/mod.py", None), ("big.bin", None)])
    assert next(batch)[1] == b"print('hi')\n"
    assert cache.evict() == []
    batch.close()
    cache.close()
    assert cache.evict() == [cache.location(url)]


# -- hostile references --------------------------------------------------------------------

C = "a" * 40
B = "b" * 40
HOSTILE = [
    ("ext::sh -c touch% /tmp/pwned", C, "f", None, "transport helper"),
    ("fd::17", C, "f", None, "transport helper"),
    ("ext://host/x", C, "f", None, "ext transport is never allowed"),
    ("-uhttps://host/x", C, "f", None, "like an option"),
    ("--upload-pack=touch /tmp/x", C, "f", None, "like an option"),
    ("ssh://-oProxyCommand=touch%20x/repo", C, "f", None, "like an option"),
    ("-oProxyCommand=x:repo", C, "f", None, "like an option"),
    ("git@host:-repo", C, "f", None, "path like an option"),
    ("http://host/x", C, "f", None, "scheme http is not allowed"),
    ("git://host/x", C, "f", None, "scheme git is not allowed"),
    ("file:///etc", C, "f", None, "scheme file is not allowed"),
    ("/srv/repo.git", C, "f", None, "scheme file is not allowed"),
    ("../repo", C, "f", None, "scheme file is not allowed"),
    ("https://user:pw@host/x", C, "f", None, "carries credentials"),
    ("https://tok@host/x", C, "f", None, "carries credentials"),
    ("https://host:99999/x", C, "f", None, "malformed"),
    ("https:///x", C, "f", None, "no host"),
    ("https://host/x\nfoo", C, "f", None, "control characters"),
    ("", C, "f", None, "empty"),
    ("https://host/x", "HEAD", "f", None, "not a full hex"),
    ("https://host/x", "main", "f", None, "not a full hex"),
    ("https://host/x", "--all", "f", None, "like an option"),
    ("https://host/x", C[:12], "f", None, "not a full hex"),
    ("https://host/x", "g" * 40, "f", None, "not a full hex"),
    ("https://host/x", C, "../etc/passwd", None, "'..' component"),
    ("https://host/x", C, "a/../../b", None, "'..' component"),
    ("https://host/x", C, "a/./b", None, "'.' component"),
    ("https://host/x", C, "a//b", None, "empty' component"),
    ("https://host/x", C, "a/", None, "empty' component"),
    ("https://host/x", C, "/etc/passwd", None, "absolute"),
    ("https://host/x", C, "a\\..\\..\\b", None, "backslash"),
    ("https://host/x", C, "a\0b", None, "NUL"),
    ("https://host/x", C, "-rf", None, "like an option"),
    ("https://host/x", C, ".git/config", None, ".git component"),
    ("https://host/x", C, "sub/.GIT/hooks/x", None, ".git component"),
    ("https://host/x", C, "x" * 5000, None, "longer than 4096"),
    ("https://host/x", C, None, "--batch", "like an option"),
    ("https://host/x", C, None, "b" * 39, "not a full hex"),
    ("https://host/x", C, None, "b" * 64, "object format"),
    ("https://host/x", C, None, None, "neither a path nor a blob id"),
    ("https://host/x", C, "", None, "neither a path nor a blob id"),
]


@pytest.mark.parametrize(("url", "commit", "path", "blob_id", "reason"), HOSTILE)
def test_hostile_references_are_refused_before_any_io(
    url: str, commit: str, path: str | None, blob_id: str | None, reason: str, tmp_path: Path
) -> None:
    with pytest.raises(GitRefused, match=reason) as caught:
        check_reference(url, commit, path, blob_id, ("https", "ssh"))
    message = str(caught.value)
    assert "\n" not in message and not is_transient(caught.value)
    assert "pw@" not in message and "tok@" not in message
    assert caught.value.dead_letter_reason == "REFUSED"
    cache = GitCache(tmp_path / "cache")  # the reading API refuses the same, before any I/O
    with pytest.raises(GitRefused, match=reason):
        cache.read_blob(url, commit, path=path, blob_id=blob_id)
    with pytest.raises(GitRefused, match=reason):
        cache.read_blobs(url, commit, [(path, blob_id)])  # refused before iterating
    with pytest.raises(GitRefused, match=reason):
        cache.open_blob(url, commit, path=path, blob_id=blob_id)
    assert not cache.root.exists()


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/org/repo.git",
        "ssh://git@github.com/org/repo.git",
        "git+ssh://git@github.com:22/org/repo",
        "git@github.com:org/repo.git",
        "HTTPS://Example.COM/x",
    ],
)
def test_good_references_pass(url: str) -> None:
    check_reference(url, C, "src/a b/c.py", B, ("https", "ssh"))
    check_reference(url, C.upper(), None, B, ("https", "ssh"))
    check_reference(url, C, "odd\nname.txt", None, ("https", "ssh"))


def test_local_paths_count_as_file(
    remote: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for url in (str(tmp_path), "relative/repo", tmp_path.as_uri()):
        check_reference(url, C, "f", None, ("file",))
    cache = GitCache(tmp_path / "cache", allowed_schemes=FILE)
    commit = git(remote, "rev-parse", "HEAD")
    assert cache.read_blob(str(remote), commit, path="src/pkg/mod.py") == b"print('hi')\n"
    monkeypatch.chdir(remote.parent)
    assert cache.read_blob(remote.name, commit, path="docs/read me.md") == b"# spaces\n"
    assert git(cache.location(remote.name), "config", "remote.origin.promisor") == "true"
    cache.close()


def test_producer_repo_refuses_transport_helpers(tmp_path: Path) -> None:
    cache = GitCache(tmp_path / "cache")
    for url in ("ext::sh -c id", "fd::3", "--upload-pack=id"):
        with pytest.raises(GitRefused):
            cache.repo(url)
    assert not cache.root.exists()


# -- credentials and timeouts over HTTP -------------------------------------------------


@pytest.fixture
def http_url(remote: Path, tmp_path: Path) -> Iterator[str]:
    with serving(remote, tmp_path / "served", TOKEN) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}/repo.git"


def test_a_token_in_settings_is_stored_and_shown_nowhere(
    http_url: str,
    remote: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    credential = GitCredential(url_prefix=http_url, token=SecretStr(TOKEN), allow_http=True)
    settings = GitSettings(
        cache_dir=tmp_path / "cache", credentials=[credential], allowed_schemes=("http",)
    )
    cache = GitCache.from_settings(settings)
    commit = git(remote, "rev-parse", "HEAD")
    with caplog.at_level(logging.DEBUG):
        assert cache.read_blob(http_url, commit, path="src/pkg/mod.py") == b"print('hi')\n"
        items = [("docs/read me.md", None), ("big.bin", None)]
        assert [d for _, d in cache.read_blobs(http_url, commit, items)][0] == b"# spaces\n"
        with cache.open_blob(http_url, commit, path="big.bin") as stream:
            assert stream.read() == (remote / "big.bin").read_bytes()
    cache.close()
    basic = base64.b64encode(f"x-access-token:{TOKEN}".encode())
    on_disk = [p for p in settings.cache_dir.rglob("*") if p.is_file()]
    assert on_disk and all(TOKEN.encode() not in p.read_bytes() for p in on_disk)
    assert all(basic not in p.read_bytes() for p in on_disk)
    assert all(TOKEN not in str(p) for p in on_disk)
    assert TOKEN not in caplog.text and basic.decode() not in caplog.text
    out, err = capfd.readouterr()
    assert TOKEN not in out + err


def test_a_refused_token_is_terminal_and_unquoted(
    http_url: str, remote: Path, tmp_path: Path
) -> None:
    cache = GitCache(tmp_path / "cache", allowed_schemes=("http",), token="wrong-token-value")
    with pytest.raises(GitError, match="authentication failed") as caught:
        cache.read_blob(http_url, git(remote, "rev-parse", "HEAD"), path="src/pkg/mod.py")
    assert "wrong-token-value" not in str(caught.value) and not is_transient(caught.value)


def test_a_silent_remote_times_out(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/repo.git"
        cache = GitCache(tmp_path / "cache", allowed_schemes=("http",), timeout=0.5, token=TOKEN)
        started = time.monotonic()
        with pytest.raises(GitUnavailable, match="no answer within 0.5s") as caught:
            cache.read_blob(url, C, path="f")
    assert time.monotonic() - started < 10 and is_transient(caught.value)
    assert TOKEN not in str(caught.value)
    assert list(cache.root.glob("*.git")) == []


def test_the_benchmark_runs_small() -> None:
    bench = PROJECT_ROOT / "bench" / "git.py"
    argv = [sys.executable, str(bench), "--small", "--baseline", "HEAD"]  # HEAD: any clone has it
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True).stdout
    for figure in ("new/old:", "GitPython:", "read_blobs (clone", "read_blob(path=): p50"):
        assert figure in out, out


def test_the_cache_tells_its_clones_fills_hits_and_evictions_to_its_metrics(
    remotes: list[Path], tmp_path: Path
) -> None:
    from prometheus_client import CollectorRegistry  # noqa: PLC0415 - this test only

    from consumers.cache.metrics import CacheMetrics  # noqa: PLC0415

    registry = CollectorRegistry()
    metrics = CacheMetrics(registry, "g")
    one = _clone_size(remotes, tmp_path)
    cache = GitCache(tmp_path / "cache", allowed_schemes=FILE, max_size=int(2.5 * one))
    events: list[tuple[str, float]] = []

    def tell(what: str, value: float) -> None:
        events.append((what, value))
        metrics.observe_git(what, value)

    cache.on_event = tell
    _read(cache, remotes[0])
    _read(cache, remotes[0])  # warm: every object on disk
    for remote in remotes[1:]:  # four clones in a bound of two and a half
        _read(cache, remote)
    cache.close()
    kinds = [what for what, _ in events if what != "size"]
    assert kinds[:3] == ["clone", "fill", "hit"]
    value = registry.get_sample_value
    assert value("headrace_git_cache_reads_total", {"group": "g", "outcome": "hit"}) == 1
    assert value("headrace_git_cache_reads_total", {"group": "g", "outcome": "fill"}) == 4
    assert value("headrace_git_cache_seconds_count", {"group": "g", "action": "clone"}) == 4
    evicted = sum(v for what, v in events if what == "evicted")
    assert evicted == 2 == value("headrace_git_cache_evictions_total", {"group": "g"})
    size = value("headrace_git_cache_size_bytes", {"group": "g"})
    assert size == cache.size() and 0 < size <= int(2.5 * one)  # as the cache is on disk
