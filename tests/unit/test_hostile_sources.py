"""Hostile source trees (issue 13): symlinks that lead out of the tree, or become such
links after the walk, directories behind symlinks, symlink chains, git trees whose links
climb out, look-alike names. Nothing outside the root is ever read or published.
(Loops, FIFOs, sockets, names that are not UTF-8 and files rewritten while read are in
test_ingest.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.serialization import MessageField, SerializationContext

from producers.base import Candidate, SourceInfo, SourceKind
from producers.ingest import Ingest, IngestOptions, StrategyChoice
from producers.sources import DirectorySource, GitSource
from schemas.catalog import EventType
from schemas.models import SkipReason
from schemas.serde import EventSerializer
from storage.git import GitError, GitRepo
from storage.git_cache import GitCache
from storage.objects import MemoryObjectStore
from tests.gitserver import commit_all, git, hermetic_git
from tests.unit.test_ingest import Sink

SECRET = b"the secret outside the tree\n"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the tree, holding a secret under the names the tree uses."""
    out = tmp_path / "outside"
    (out / "sub").mkdir(parents=True)
    for name in ("victim.txt", "secret.txt", "sub/inner.txt"):
        (out / name).write_bytes(SECRET)
    return out


def ingest(source: DirectorySource | GitSource | SwappingSource) -> tuple[Sink, object]:
    sink = Sink()
    store = MemoryObjectStore("content")
    return sink, Ingest(source, IngestOptions(), "run-1", "proj", sink, store).run()


def published_bytes(sink: Sink) -> list[bytes]:
    return [e.inline.data for e in sink.files if e.inline is not None]


def skips(summary: object) -> dict[str, tuple[str, str | None]]:
    return {s.path: (s.reason, s.detail) for s in summary.skipped}  # type: ignore[attr-defined]


@dataclass
class SwappingSource:
    """A directory source whose entry ``victim`` (a file or a directory) is replaced by a
    symlink to ``target`` right after the walk decided on it, before it is read: the
    race a hostile tree plays against lstat-then-open."""

    inner: DirectorySource
    victim: Path
    target: Path

    def info(self) -> SourceInfo:
        return self.inner.info()

    def deleted(self) -> list[str]:
        return []

    def changes_since(self, commit: str) -> bool:
        return False

    def candidates(self) -> Iterator[Candidate]:
        for candidate in self.inner.candidates():
            if candidate.local_path is not None and candidate.local_path.is_relative_to(
                self.victim
            ):
                if not self.victim.is_symlink():
                    swap(self.victim, self.target)
            yield candidate


def swap(path: Path, target: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            child.unlink()
        path.rmdir()
    else:
        path.unlink()
    path.symlink_to(target)


@pytest.mark.parametrize("what", ["file", "directory"])
def test_an_entry_swapped_for_a_symlink_after_the_walk_is_never_read(
    tmp_path: Path, outside: Path, what: str
) -> None:
    """Without the check of the opened file, the first read sees the secret, its
    signature differs from the walk's, the second read sees it again, steady: published."""
    root = tmp_path / "repo"
    (root / "sub").mkdir(parents=True)
    (root / "ok.txt").write_bytes(b"fine\n")
    (root / "victim.txt").write_bytes(b"harmless\n")
    (root / "sub" / "inner.txt").write_bytes(b"harmless too\n")
    if what == "file":
        victim, target, path = root / "victim.txt", outside / "victim.txt", "victim.txt"
    else:
        victim, target, path = root / "sub", outside / "sub", "sub/inner.txt"
    sink, summary = ingest(SwappingSource(DirectorySource(root), victim, target))
    assert SECRET not in published_bytes(sink)
    assert "ok.txt" in {e.path for e in sink.files} and path not in {e.path for e in sink.files}
    reason, detail = skips(summary)[path]
    assert reason is SkipReason.UNREADABLE
    assert detail == "cannot be read: it leads outside the source root since the walk"


def test_symlinks_to_directories_and_chains_leading_out_are_never_followed(
    tmp_path: Path, outside: Path
) -> None:
    root = tmp_path / "repo"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.txt").write_bytes(b"a\n")
    (root / "dir-in").symlink_to(root / "sub")  # a directory inside: not walked twice
    (root / "dir-out").symlink_to(outside / "sub")  # a directory outside
    (root / "dir-out-relative").symlink_to("../outside")
    (root / "hop-2").symlink_to(outside / "secret.txt")
    (root / "hop-1").symlink_to("hop-2")  # inside, to a link that leads out
    (root / "hop-in").symlink_to("sub/a.txt")  # a chain that stays inside: read
    (root / "hop-hop").symlink_to("hop-in")
    sink, summary = ingest(DirectorySource(root))
    assert sorted(e.path for e in sink.files) == ["hop-hop", "hop-in", "sub/a.txt"]
    assert published_bytes(sink) == [b"a\n"] * 3
    found = skips(summary)
    assert {p: r for p, (r, _) in found.items()} == {
        "dir-in": SkipReason.UNREADABLE,
        "dir-out": SkipReason.SYMLINK_OUTSIDE_ROOT,
        "dir-out-relative": SkipReason.SYMLINK_OUTSIDE_ROOT,
        "hop-1": SkipReason.SYMLINK_OUTSIDE_ROOT,
        "hop-2": SkipReason.SYMLINK_OUTSIDE_ROOT,
    }
    assert found["dir-in"][1] == "the symlink's target is not a regular file"


def test_look_alike_and_mixed_normalisation_names_are_each_their_own_file(
    tmp_path: Path,
) -> None:
    """The same name in NFC and NFD, a fullwidth look-alike of '..', and a name with a
    backslash: distinct files with their own bytes, published under their own names."""
    root = tmp_path / "repo"
    root.mkdir()
    names = [
        unicodedata.normalize("NFC", "café.txt"),
        unicodedata.normalize("NFD", "café.txt"),
        "\uff0e\uff0e",
        "back\\slash",
    ]
    for index, name in enumerate(names):
        (root / name).write_bytes(b"%d\n" % index)
    sink, _ = ingest(DirectorySource(root))
    got = {e.path: e.inline.data for e in sink.files if e.inline is not None}
    assert got == {name: b"%d\n" % i for i, name in enumerate(names)}


# -- git sources ----------------------------------------------------------------------


@pytest.fixture
def linked_repo(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository whose links point inside, up and out of the tree, at a directory,
    at another link and at themselves; the files they name outside exist."""
    hermetic_git(tmp_path_factory.mktemp("gitconfig") / "config", monkeypatch)
    base = tmp_path_factory.mktemp("git")
    (base / "secret.txt").write_bytes(SECRET)
    repo = base / "repo"
    (repo / "src").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "src" / "a.txt").write_bytes(b"a\n")
    links = {
        "in": "src/a.txt",
        "src/up-in": "../src/a.txt",
        "up": "../secret.txt",
        "src/up-up": "../../secret.txt",
        "climb": "src/../../secret.txt",
        "abs": str(base / "secret.txt"),
        "to-dir": "src",
        "to-link": "in",
        "self": "self",
    }
    for name, target in links.items():
        (repo / name).symlink_to(target)
    commit_all(repo, "links")
    return repo


def test_git_links_leading_out_of_the_tree_are_skipped_and_never_read(linked_repo: Path) -> None:
    source = GitSource(GitRepo(linked_repo), SourceKind.GIT, str(linked_repo), "proj")
    sink, summary = ingest(source)
    assert SECRET not in published_bytes(sink)
    assert {e.path: e.inline.data for e in sink.files if e.inline is not None} == {
        "in": b"a\n",
        "src/a.txt": b"a\n",
        "src/up-in": b"a\n",
    }
    assert {p: r for p, (r, _) in skips(summary).items()} == dict.fromkeys(
        ["abs", "climb", "self", "src/up-up", "to-dir", "to-link", "up"],
        SkipReason.SYMLINK_OUTSIDE_ROOT,
    )


@pytest.mark.parametrize("ref", ["--upload-pack=touch pwned", "-h", "--output=pwned", "-"])
def test_a_git_ref_beginning_with_a_dash_is_never_an_option(
    linked_repo: Path, ref: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(linked_repo)
    repo = GitRepo(linked_repo)
    for attempt in (
        lambda: repo.resolve(ref),
        lambda: GitSource(repo, SourceKind.GIT, str(linked_repo), "proj", ref=ref),
        lambda: GitSource(repo, SourceKind.GIT, str(linked_repo), "proj", since=ref),
        lambda: list(repo.tree(ref)),
        lambda: GitCache(linked_repo.parent / "cache").repo(linked_repo.as_uri(), ref),
    ):
        with pytest.raises(GitError, match="bad git object name"):
            attempt()
    assert not (linked_repo / "pwned").exists() and not Path("pwned").exists()


def test_an_empty_file_is_published_with_the_sha256_of_nothing_inline_or_stored(
    tmp_path: Path,
) -> None:
    """0 bytes: published with the sha256 of nothing, inline or forced to the store."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "empty").write_bytes(b"")
    empty_sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    for strategy in (StrategyChoice.AUTO, StrategyChoice.OBJECT_STORAGE):
        sink = Sink()
        store = MemoryObjectStore("content")
        options = IngestOptions(strategy=strategy)
        Ingest(DirectorySource(root), options, "run-1", "proj", sink, store).run()
        (event,) = sink.files
        assert (event.size, event.checksum) == (0, empty_sha)
        if strategy is StrategyChoice.OBJECT_STORAGE:
            assert event.object_ref is not None and store.get(event.object_ref.key) == b""


# -- a sparse multi-GB file -----------------------------------------------------------

GIB = 1024**3
SPARSE_CHILD = """
import json, resource, sys
from pathlib import Path
from producers.ingest import Ingest, IngestOptions
from producers.sources import DirectorySource

def peak_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

def run(root):
    options = IngestOptions(dry_run=True, max_file_size=4 * 1024**3)
    return Ingest(DirectorySource(Path(root)), options, "run-sparse", "sparse", None, None).run()

run(sys.argv[1])  # a small tree first: every module loaded, every path warm
before = peak_kib()
# the address space is capped: a read of the whole file fails fast instead of taking
# 3 GiB from a shared machine
limit = 2 * 1024**3
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
summary = run(sys.argv[2])
print(json.dumps({"before_kib": before, "peak_kib": peak_kib(),
                  "files": summary.counts.files, "bytes": summary.counts.bytes,
                  "object_storage": summary.counts.object_storage}))
"""


def test_a_sparse_multi_gb_file_streams_through_in_bounded_memory(tmp_path: Path) -> None:
    """A 3 GiB sparse file (no disk used) is hashed as a stream: the ingest's peak RSS
    grows by a few MiB over a run of one small file, measured in a child process."""
    small, large = tmp_path / "small", tmp_path / "large"
    small.mkdir()
    large.mkdir()
    (small / "a.txt").write_bytes(b"a\n")
    with (large / "sparse.bin").open("wb") as file:
        file.truncate(3 * GIB)
    child = subprocess.run(
        [sys.executable, "-c", SPARSE_CHILD, str(small), str(large)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    figures = json.loads(child.stdout.splitlines()[-1])
    grown_mib = (figures["peak_kib"] - figures["before_kib"]) / 1024
    print(
        f"3 GiB sparse file, dry run: peak RSS {figures['peak_kib'] / 1024:.0f} MiB,"
        f" {grown_mib:.1f} MiB over a run of one small file"
    )
    assert (figures["files"], figures["bytes"], figures["object_storage"]) == (1, 3 * GIB, 1)
    assert grown_mib < 64, f"peak RSS grew by {grown_mib:.0f} MiB reading a 3 GiB file"


# -- a record over the broker's limit -------------------------------------------------

KAFKA_DEFAULT_MESSAGE_MAX = 1_048_588  # the broker's message.max.bytes out of the box


def test_a_tree_of_long_skipped_names_still_fits_its_run_event_in_one_record(
    tmp_path: Path,
) -> None:
    """400 symlinks out of the tree with 3 KiB paths: 1.3 MB of names, which listed in
    full would make the RunCompleted event larger than a broker takes by default (the run
    could then never complete). The event lists what fits and counts all."""
    root = tmp_path / "repo"
    deep = root.joinpath(*["d" * 250] * 12)
    deep.mkdir(parents=True)
    (root / "ok.txt").write_bytes(b"fine\n")
    for i in range(400):
        (deep / f"{i:03d}{'l' * 240}").symlink_to("/etc/hostname")
    sink, summary = ingest(DirectorySource(root))
    completed = sink.runs[-1]
    assert completed.skip_counts == {"SYMLINK_OUTSIDE_ROOT": 400}
    assert len(summary.skipped) == 400  # type: ignore[attr-defined]  # the summary keeps all
    listed = [s.path for s in completed.skipped]
    assert 0 < len(listed) < 400
    assert listed == [s.path for s in summary.skipped][: len(listed)]  # type: ignore[attr-defined]
    registry = SchemaRegistryClient.new_client({"url": "mock://"})
    ctx = SerializationContext("t", MessageField.VALUE)
    size = len(EventSerializer(registry, EventType.RUN_EVENT)(completed, ctx))
    assert size < KAFKA_DEFAULT_MESSAGE_MAX // 2, f"RunCompleted is {size} bytes"
