"""Git credentials are scoped: a token goes to the URLs under its prefix and nowhere else.

Matching is checked on URLs; what reaches the wire is checked with the
token-demanding smart-HTTP server of tests/gitserver.py, a second server as
"another host" (another port of 127.0.0.1), and a server that redirects.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import SecretStr

from headrace.errors import ConfigError
from headrace.settings import GitCredential, GitSettings, load_settings
from storage.git import GitError
from storage.git_cache import GitCache
from storage.git_credentials import credential_for
from tests.gitserver import GitServer, commit_all, git, hermetic_git, serving

TOKEN = "scoped-t0ken-value"


def cred(prefix: str, token: str = TOKEN, *, allow_http: bool = False) -> GitCredential:
    return GitCredential(url_prefix=prefix, token=SecretStr(token), allow_http=allow_http)


def token_for(url: str, *credentials: GitCredential) -> str | None:
    found = credential_for(url, credentials)
    return found.token.get_secret_value() if found is not None else None


# -- which URL gets which credential -----------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://git.example.com/org/repo.git",
        "https://GIT.Example.COM/org/repo.git",  # hosts compare case-insensitively
        "https://git.example.com:443/org/repo.git",  # the default port, written
        "https://x-access-token@git.example.com/org/repo.git",
    ],
)
def test_a_credential_goes_to_its_host(url: str) -> None:
    assert token_for(url, cred("https://git.example.com/")) == TOKEN


@pytest.mark.parametrize(
    "url",
    [
        "https://other.example.com/org/repo.git",
        "https://git.example.com.evil.test/org/repo.git",
        "https://evil-git.example.com/org/repo.git",
        "https://git.example.com@evil.test/org/repo.git",  # userinfo, then another host
        "https://git.example.com:8443/org/repo.git",  # another port
        "ssh://git.example.com/org/repo.git",
        "git.example.com:org/repo.git",
        "/srv/git.example.com/repo.git",
        "not a url",
    ],
)
def test_a_credential_goes_to_no_other_host(url: str) -> None:
    assert token_for(url, cred("https://git.example.com/")) is None


def test_the_longest_prefix_wins() -> None:
    host, team, repo = (
        cred("https://git.example.com", "host-token"),
        cred("https://git.example.com/team/", "team-token"),
        cred("https://git.example.com/team/private.git", "repo-token"),
    )
    for order in ((host, team, repo), (repo, team, host), (team, repo, host)):
        assert token_for("https://git.example.com/team/private.git", *order) == "repo-token"
        assert token_for("https://git.example.com/team/other.git", *order) == "team-token"
        assert token_for("https://git.example.com/elsewhere.git", *order) == "host-token"


def test_a_path_prefix_ends_at_a_slash_and_cannot_be_climbed_out_of() -> None:
    team = cred("https://git.example.com/team")
    assert token_for("https://git.example.com/team/repo.git", team) == TOKEN
    assert token_for("https://git.example.com/teams/repo.git", team) is None
    assert token_for("https://git.example.com/team/../other/repo.git", team) is None
    assert token_for("https://git.example.com/team/%2e%2e/other/repo.git", team) is None


def test_no_credential_over_http_unless_allowed() -> None:
    assert token_for("http://git.example.com/r.git", cred("https://git.example.com/")) is None
    allowed = cred("http://git.example.com/", allow_http=True)
    assert token_for("http://git.example.com/r.git", allowed) == TOKEN
    # Settings refuse an http prefix without allow_http; the matcher refuses it too.
    sneaked_in = GitCredential.model_construct(
        url_prefix="http://git.example.com/", token=SecretStr(TOKEN), allow_http=False
    )
    assert token_for("http://git.example.com/r.git", sneaked_in) is None


# -- settings ----------------------------------------------------------------------------


def test_an_http_prefix_without_allow_http_is_a_settings_error() -> None:
    with pytest.raises(ValueError, match="plain http: set allow_http"):
        GitCredential(url_prefix="http://git.example.com/", token=SecretStr(TOKEN))


@pytest.mark.parametrize(
    "prefix", ["git.example.com", "ssh://git.example.com/", "https://u:p@git.example.com/"]
)
def test_a_prefix_is_an_http_url_without_userinfo(prefix: str) -> None:
    with pytest.raises(ValueError, match="must"):
        GitCredential(url_prefix=prefix, token=SecretStr(TOKEN))


def test_an_unscoped_token_is_a_one_line_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_GIT__TOKEN", TOKEN)
    with pytest.raises(ConfigError, match=r"git\.token is no longer read") as caught:
        load_settings()
    assert "\n" not in str(caught.value) and TOKEN not in str(caught.value)
    assert "git.credentials" in str(caught.value)


def test_credentials_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    value = [{"url_prefix": "https://git.example.com/org", "token": TOKEN}]
    monkeypatch.setenv("HEADRACE_GIT__CREDENTIALS", json.dumps(value))
    settings = load_settings()
    assert token_for("https://git.example.com/org/r.git", *settings.git.credentials) == TOKEN
    assert TOKEN not in str(settings.masked())


# -- on the wire -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def hermetic(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    hermetic_git(tmp_path_factory.mktemp("gitconfig") / "config", monkeypatch)


@pytest.fixture
def work_tree(tmp_path: Path) -> tuple[Path, str]:
    root = tmp_path / "work"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "f.txt").write_bytes(b"private\n")
    return root, commit_all(root, "first")


def url_of(server: ThreadingHTTPServer, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{server.server_address[1]}/repo.git"


def cache_for(tmp_path: Path, *credentials: GitCredential) -> GitCache:
    settings = GitSettings(
        cache_dir=tmp_path / "cache", credentials=credentials, allowed_schemes=("http",)
    )
    return GitCache.from_settings(settings)


def test_the_token_reaches_its_host_and_not_another(
    work_tree: tuple[Path, str], tmp_path: Path
) -> None:
    root, commit = work_tree
    with (
        serving(root, tmp_path / "a", TOKEN) as a,
        serving(root, tmp_path / "b", "b-only-token") as b,
    ):
        cache = cache_for(tmp_path, cred(url_of(a), allow_http=True))
        assert cache.read_blob(url_of(a), commit, path="f.txt") == b"private\n"
        with pytest.raises(GitError, match="authentication failed"):
            cache.read_blob(url_of(b), commit, path="f.txt")
        cache.close()
    assert any(auth for _, auth in a.requests)
    assert b.requests and not any(auth for _, auth in b.requests)


class _Redirect(BaseHTTPRequestHandler):
    """Answers every request with a redirect to the same path on ``server.target``."""

    server: _Redirector

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Authorization", "")))
        self.send_response(302)
        self.send_header("Location", self.server.target + self.path.removeprefix("/repo.git"))
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Redirector(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, target: str) -> None:
        super().__init__(("127.0.0.1", 0), _Redirect)
        self.target = target
        self.requests: list[tuple[str, str]] = []


@pytest.fixture
def elsewhere(work_tree: tuple[Path, str], tmp_path: Path) -> Iterator[GitServer]:
    """Another host that serves anyone (a token of "" is what no header sends)."""
    with serving(work_tree[0], tmp_path / "elsewhere", "") as server:
        yield server


def test_a_redirect_to_another_host_is_not_followed_with_the_token(
    work_tree: tuple[Path, str], tmp_path: Path, elsewhere: GitServer
) -> None:
    # git's default (http.followRedirects=initial) sends every request after the
    # first to the redirect's host, the Authorization header included.
    redirector = _Redirector(url_of(elsewhere, "localhost"))
    thread = threading.Thread(target=redirector.serve_forever, daemon=True)
    thread.start()
    try:
        cache = cache_for(tmp_path, cred(url_of(redirector), allow_http=True))
        with pytest.raises(GitError) as caught:
            cache.read_blob(url_of(redirector), work_tree[1], path="f.txt")
        cache.close()
    finally:
        redirector.shutdown()
        redirector.server_close()
        thread.join()
    assert not any(auth for _, auth in elsewhere.requests), "the token followed the redirect"
    assert any(auth for _, auth in redirector.requests)  # it went where it belongs
    assert "a redirect: not followed with credentials" in str(caught.value)
