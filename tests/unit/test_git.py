"""storage.git and storage.git_cache against throwaway local repositories.

Every repository is made in tmp_path with fixed authors and dates; remotes
are file:// URLs or a smart-HTTP server (``git http-backend``) on 127.0.0.1
that demands basic auth.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import logging
import os
import socket
import threading
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from headrace.errors import StorageError, Terminal, Transient, is_transient
from storage.git import Change, GitError, GitRepo, GitUnavailable, TreeEntry
from storage.git_cache import GitCache
from tests.gitserver import GitServer, commit_all, git, hermetic_git, serving

TOKEN = "s3cr3t-token"
NON_UTF8 = os.fsdecode(b"caf\xe9.txt")
BINARY = bytes(range(256)) * 3


@pytest.fixture(autouse=True)
def hermetic(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    hermetic_git(tmp_path_factory.mktemp("gitconfig") / "config", monkeypatch)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A work tree with nested dirs, odd names, an executable, a symlink, empty and
    binary files, an ignored file, and tags v1 (annotated) and light on its commit."""
    repo = tmp_path / "source"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "src" / "pkg").mkdir(parents=True)
    (repo / "src" / "pkg" / "mod.py").write_text("print('hi')\n")
    (repo / "docs").mkdir()
    (repo / "docs" / "read me.md").write_text("# spaces\n")
    (repo / "bin").mkdir()
    (repo / "bin" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (repo / "bin" / "run.sh").chmod(0o755)
    (repo / "link").symlink_to("src/pkg/mod.py")
    (repo / "empty.txt").write_bytes(b"")
    (repo / "data.bin").write_bytes(BINARY)
    (repo / "odd\nname.txt").write_text("newline in the name\n")
    (repo / NON_UTF8).write_text("latin-1 name\n")
    (repo / ".gitignore").write_text("*.log\n")
    (repo / "debug.log").write_text("ignored\n")
    commit_all(repo, "first")
    git(repo, "tag", "-a", "v1", "-m", "version 1")
    git(repo, "tag", "light")
    return repo


# -- GitRepo ---------------------------------------------------------------------------


def test_tree_lists_every_file_with_mode_blob_id_and_size(source: Path) -> None:
    repo = GitRepo(source)
    entries = {e.path: e for e in repo.tree(repo.resolve())}
    assert set(entries) == {
        ".gitignore", "bin/run.sh", "data.bin", "docs/read me.md", "empty.txt", "link",
        "odd\nname.txt", NON_UTF8, "src/pkg/mod.py",
    }  # fmt: skip
    assert entries["bin/run.sh"].mode == "100755"
    assert entries["link"].mode == "120000"
    assert entries["src/pkg/mod.py"].mode == "100644"
    assert entries["empty.txt"].size == 0
    assert entries["data.bin"].size == len(BINARY)
    assert entries["link"].size == len("src/pkg/mod.py")
    for path, entry in entries.items():
        if entry.mode != "120000":
            assert entry.blob_id == git(source, "hash-object", "--", path), path
            assert entry.size == (source / path).stat().st_size
    assert entries["link"].blob_id == git(source, "rev-parse", "HEAD:link")
    assert NON_UTF8.encode("utf-8", "surrogateescape") == b"caf\xe9.txt"
    assert repo.read_blob(entries["link"].blob_id) == b"src/pkg/mod.py"
    assert repo.read_blob(entries["data.bin"].blob_id) == BINARY
    assert repo.read_blob(entries["empty.txt"].blob_id) == b""


def test_tree_marks_submodules(source: Path, tmp_path: Path) -> None:
    blob = git(source, "rev-parse", "HEAD:empty.txt")
    sub = "0123456789abcdef0123456789abcdef01234567"
    tree = git(
        source, "mktree", stdin=f"100644 blob {blob}\tf\n160000 commit {sub}\tsub\n".encode()
    )
    commit = git(source, "commit-tree", tree, "-m", "with a submodule")
    repo = GitRepo(source)
    assert list(repo.tree(commit))[1] == TreeEntry("sub", "160000", sub, 0)
    changes = repo.changes(commit, repo.resolve())  # the submodule goes, files come
    assert changes and "sub" not in {c.path for c in changes}
    assert Change("D", "f") in changes


def test_tree_is_streamed_and_can_be_abandoned(source: Path) -> None:
    stream = GitRepo(source).tree("HEAD")
    assert isinstance(stream, Generator)
    first = next(stream)
    assert first.path == ".gitignore"
    stream.close()  # kills git; no warning about a process left running


def test_resolve_branches_tags_and_unknown_refs(source: Path) -> None:
    repo = GitRepo(source)
    head = git(source, "rev-parse", "HEAD")
    assert repo.resolve() == repo.resolve("HEAD") == repo.resolve("main") == head
    assert repo.resolve("v1") == repo.resolve("light") == repo.resolve(head[:10]) == head
    for bad in ("no-such-branch", "v2", "0" * 40):
        with pytest.raises(GitError, match="unknown ref") as caught:
            repo.resolve(bad)
        assert "\n" not in str(caught.value)
    with pytest.raises(GitError):
        repo.resolve("--upload-pack=touch")
    assert isinstance(caught.value, StorageError) and isinstance(caught.value, Terminal)


def test_changes_report_renames_as_delete_and_add(source: Path) -> None:
    repo = GitRepo(source)
    before = repo.resolve()
    (source / "src" / "pkg" / "mod.py").write_text("print('changed')\n")
    (source / "new.txt").write_text("new\n")
    (source / "empty.txt").unlink()
    (source / "docs" / "read me.md").rename(source / "docs" / "readme.md")
    (source / "bin" / "run.sh").chmod(0o644)
    after = commit_all(source, "second")
    changes = sorted(repo.changes(before, after), key=lambda c: (c.path, c.status))
    assert changes == [
        Change("M", "bin/run.sh"),
        Change("D", "docs/read me.md"),
        Change("A", "docs/readme.md"),
        Change("D", "empty.txt"),
        Change("A", "new.txt"),
        Change("M", "src/pkg/mod.py"),
    ]
    assert repo.changes(after, after) == []


def test_open_blob_streams_and_closes(source: Path) -> None:
    big = os.urandom(3 * 1024 * 1024 + 7)
    (source / "big.bin").write_bytes(big)
    commit = commit_all(source, "big")
    repo = GitRepo(source)
    blob_id = next(e.blob_id for e in repo.tree(commit) if e.path == "big.bin")
    with repo.open_blob(blob_id) as stream:
        chunks = list(iter(lambda: stream.read(65536), b""))
    assert len(chunks) > 1 and b"".join(chunks) == big
    stream = repo.open_blob(blob_id)
    assert stream.read(10) == big[:10]
    stream.close()  # before git wrote everything: the rest is skipped
    with pytest.raises(GitError, match="cannot read blob"), repo.open_blob("0" * 40) as missing:
        missing.read()


def test_blobs_read_in_turn_whatever_the_previous_reader_left(source: Path) -> None:
    """One cat-file --batch serves every blob: a reader left half-read, unclosed, or
    empty, or a blob that is missing, does not put the next answer out of step."""
    big = os.urandom(300 * 1024 + 3)
    (source / "big.bin").write_bytes(big)
    repo = GitRepo(source)
    blobs = {e.path: e.blob_id for e in repo.tree(commit_all(source, "big"))}
    half = repo.open_blob(blobs["big.bin"])
    assert half.read(1000) == big[:1000]  # left open, most of it unread
    assert repo.open_blob(blobs["empty.txt"]).read() == b""
    with pytest.raises(GitError, match="missing"):
        repo.open_blob("f" * 40)
    assert repo.open_blob(blobs["data.bin"]).read() == BINARY
    assert repo.open_blob(blobs["big.bin"]).read() == big
    with repo.open_blob(blobs["src/pkg/mod.py"]) as stream:
        assert stream.read() == b"print('hi')\n"
    repo.close()
    assert repo.open_blob(blobs["data.bin"]).read() == BINARY  # a new process after close
    repo.close()


def test_ls_files_honours_the_index_and_gitignore(source: Path) -> None:
    (source / "untracked.txt").write_text("not added\n")
    (source / "staged.txt").write_text("added, not committed\n")
    git(source, "add", "staged.txt")
    files = GitRepo(source).ls_files()
    assert "debug.log" not in files and "untracked.txt" not in files
    assert "staged.txt" in files and "odd\nname.txt" in files and NON_UTF8 in files


def test_discover_wants_the_top_level(source: Path, tmp_path: Path) -> None:
    repo = GitRepo.discover(source)
    assert repo is not None and repo.worktree() == source.resolve()
    assert GitRepo.discover(source / "src") is None
    assert GitRepo.discover(tmp_path / "missing") is None
    (tmp_path / "plain").mkdir()
    assert GitRepo.discover(tmp_path / "plain") is None
    git(tmp_path, "clone", "-q", "--bare", str(source), "bare.git")
    bare = GitRepo.discover(tmp_path / "bare.git")
    assert bare is not None and bare.worktree() is None
    assert bare.resolve("v1") == git(source, "rev-parse", "HEAD")
    with pytest.raises(GitError, match="bare"):
        bare.ls_files()
    with pytest.raises(GitError, match="not its top level"):
        GitRepo(source / "src")


def test_repository_pointers_in_the_environment_are_ignored(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    git(tmp_path, "init", "-q", "other")
    blob = git(source, "rev-parse", "HEAD:data.bin")
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "other" / ".git"))  # as inside a git hook
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "other" / ".git" / "index"))
    monkeypatch.setenv("GIT_OBJECT_DIRECTORY", str(tmp_path / "other" / ".git" / "objects"))
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")  # an inherited config entry, not ours
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "core.bigFileThreshold")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "not-a-size")
    repo = GitRepo(source)
    assert repo.resolve("v1") and "src/pkg/mod.py" in repo.ls_files()
    assert repo.read_blob(blob) == BINARY  # GitPython's cat-file, pinned to this repository
    assert repo.has_object(blob) and repo.entry(repo.resolve(), "data.bin") == ("100644", blob)
    repo.close()


# -- GitCache over file:// ---------------------------------------------------------------


@pytest.fixture
def remote(source: Path) -> Path:
    git(source, "config", "uploadpack.allowFilter", "true")  # so the clone is a partial one
    return source


def test_cache_clones_once_then_fetches(remote: Path, tmp_path: Path) -> None:
    cache = GitCache(tmp_path / "cache")
    url = remote.resolve().as_uri()
    repo, commit = cache.repo(url, "main")
    assert commit == git(remote, "rev-parse", "HEAD")
    location = cache.location(url)
    assert repo.path == location.resolve() and location.name.endswith(".git")
    assert location.name == hashlib.sha256(url.encode()).hexdigest()[:16] + ".git"
    assert git(location, "config", "remote.origin.promisor") == "true"  # a partial clone
    assert repo.missing_objects(commit) == []  # its blobs came in one batch
    marker, inode = location / "marker", location.stat().st_ino
    marker.write_text("still the first clone")

    (remote / "later.txt").write_text("later\n")
    (remote / "src" / "pkg" / "mod.py").write_text("print('changed')\n")
    newer = commit_all(remote, "later")
    again, commit2 = cache.repo(url, "main")
    assert commit2 == newer and marker.exists() and location.stat().st_ino == inode
    assert set(again.changes(commit, newer)) == {
        Change("A", "later.txt"),
        Change("M", "src/pkg/mod.py"),
    }
    offline = GitRepo(location)  # no credentials, no network: everything is local
    entries = {e.path: e for e in offline.tree(commit2)}
    assert offline.read_blob(entries["later.txt"].blob_id) == b"later\n"
    assert offline.read_blob(entries["data.bin"].blob_id) == BINARY
    assert again.resolve("v1") == commit and cache.repo(url, "light")[1] == commit
    assert cache.repo(url, commit)[1] == commit  # a cached commit id: no fetch needed
    assert cache.repo(url)[1] == newer
    assert cache.size() > 0


def test_cache_changes_need_no_old_blobs(remote: Path, tmp_path: Path) -> None:
    first = git(remote, "rev-parse", "HEAD")
    old_blob = git(remote, "rev-parse", "HEAD:src/pkg/mod.py")
    (remote / "src" / "pkg" / "mod.py").write_text("print('changed')\n")
    second = commit_all(remote, "second")
    repo, commit = GitCache(tmp_path / "cache").repo(remote.as_uri(), "main")
    assert commit == second and repo.resolve("main~1") == first  # the history is there
    assert repo.missing_objects(first) == [old_blob]  # but only the blobs of `second`
    assert repo.changes(first, second) == [Change("M", "src/pkg/mod.py")]
    assert repo.missing_objects(first) == [old_blob]  # the diff read trees only


def test_cache_fetches_a_commit_no_branch_reaches(remote: Path, tmp_path: Path) -> None:
    git(remote, "checkout", "-q", "-b", "topic")
    (remote / "topic.txt").write_text("topic\n")
    topic = commit_all(remote, "topic")
    git(remote, "checkout", "-q", "main")
    git(remote, "branch", "-q", "-D", "topic")
    repo, commit = GitCache(tmp_path / "cache").repo(remote.as_uri(), topic)
    assert commit == topic
    assert "topic.txt" in {e.path for e in repo.tree(commit)}


def test_cache_unknown_ref_is_terminal(remote: Path, tmp_path: Path) -> None:
    cache = GitCache(tmp_path / "cache")
    for ref in ("no-such-branch", "f" * 40):
        with pytest.raises(GitError, match="unknown ref") as caught:
            cache.repo(remote.as_uri(), ref)
        assert "\n" not in str(caught.value) and not is_transient(caught.value)
    with pytest.raises(GitError):
        cache.repo((tmp_path / "nothing-here").as_uri())


def test_cache_unreachable_remote_is_transient(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://user:{TOKEN}@127.0.0.1:{port}/repo.git"
    with pytest.raises(GitUnavailable) as caught:
        GitCache(tmp_path / "cache").repo(url)
    message = str(caught.value)
    assert is_transient(caught.value) and isinstance(caught.value, Transient)
    assert "\n" not in message and TOKEN not in message
    assert f"http://127.0.0.1:{port}/repo.git" in message


def test_cache_silent_remote_times_out(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://{TOKEN}@127.0.0.1:{silent.getsockname()[1]}/repo.git"
        with pytest.raises(GitUnavailable, match="no answer within 0.5s") as caught:
            GitCache(tmp_path / "cache", timeout=0.5).repo(url)
    assert TOKEN not in str(caught.value)


def test_cache_lock_waits_are_bounded(remote: Path, tmp_path: Path) -> None:
    cache = GitCache(tmp_path / "cache", lock_timeout=0.3)
    url = remote.as_uri()
    cache.root.mkdir()
    with cache.location(url).with_suffix(".lock").open("a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(GitUnavailable, match="locked"):
            cache.repo(url)
    assert cache.repo(url)[1] == git(remote, "rev-parse", "HEAD")


def test_cache_serializes_concurrent_callers(remote: Path, tmp_path: Path) -> None:
    cache = GitCache(tmp_path / "cache")
    results: list[str] = []
    errors: list[BaseException] = []

    def clone() -> None:
        try:
            results.append(GitCache(cache.root).repo(remote.as_uri(), "main")[1])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=clone) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and set(results) == {git(remote, "rev-parse", "HEAD")}
    assert [p.name for p in cache.root.iterdir() if p.suffix == ".git"] == [
        cache.location(remote.as_uri()).name
    ]


# -- GitCache over smart HTTP with basic auth ------------------------------------------------


@pytest.fixture
def http_remote(remote: Path, tmp_path: Path) -> Iterator[tuple[GitServer, str]]:
    with serving(remote, tmp_path / "served", TOKEN) as server:
        yield server, f"127.0.0.1:{server.server_address[1]}"


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_cache_authenticates_without_storing_the_token(
    http_remote: tuple[GitServer, str],
    remote: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    server, host = http_remote
    cache = GitCache(tmp_path / "cache")
    url = f"http://user:{TOKEN}@{host}/repo.git"
    with caplog.at_level(logging.DEBUG):
        repo, commit = cache.repo(url, "main")
        (remote / "later.txt").write_text("later\n")
        newer = commit_all(remote, "later")
        git(server.root / "repo.git", "fetch", "-q", str(remote), "main:main")
        assert cache.repo(url, "main")[1] == newer  # the update path authenticates too
    assert commit == git(remote, "rev-parse", "HEAD~1")
    assert repo.url == f"http://{host}/repo.git"
    assert git(repo.path, "config", "remote.origin.url") == f"http://{host}/repo.git"
    assert git(repo.path, "config", "remote.origin.promisor") == "true"
    later = next(e.blob_id for e in repo.tree(newer) if e.path == "later.txt")
    assert repo.read_blob(later) == b"later\n"  # through GitPython, with the auth env
    offline = GitRepo(repo.path)  # the blobs were fetched: reading needs no token
    assert {offline.read_blob(e.blob_id) for e in offline.tree(newer) if e.path == "later.txt"} == {
        b"later\n"
    }
    basic = base64.b64encode(f"user:{TOKEN}".encode())
    assert _files_containing(cache.root, TOKEN.encode()) == []
    assert _files_containing(cache.root, basic) == []
    assert TOKEN not in caplog.text
    out, err = capfd.readouterr()
    assert TOKEN not in out + err
    assert all(TOKEN not in path for path, _ in server.requests)
    assert any(auth == f"Basic {basic.decode()}" for _, auth in server.requests)


def test_cache_token_argument(http_remote: tuple[GitServer, str], tmp_path: Path) -> None:
    _, host = http_remote
    _, commit = GitCache(tmp_path / "cache").repo(f"http://{host}/repo.git", "v1", token=TOKEN)
    assert len(commit) == 40


@pytest.mark.parametrize("userinfo", ["user:wrong-token-value@", "wrong-token-value@", ""])
def test_cache_refused_credentials_are_one_line_without_the_token(
    http_remote: tuple[GitServer, str], tmp_path: Path, userinfo: str
) -> None:
    _, host = http_remote
    with pytest.raises(GitError, match="authentication failed") as caught:
        GitCache(tmp_path / "cache").repo(f"http://{userinfo}{host}/repo.git", "main")
    message = str(caught.value)
    assert "\n" not in message and "wrong-token-value" not in message
    assert message.startswith(f"git clone http://{host}/repo.git: ")
    assert not is_transient(caught.value)
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.suffix == ".git"] == []
