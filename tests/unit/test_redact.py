"""Credentials come out of URLs, texts and log records."""

from __future__ import annotations

import io
import logging

import pytest

from headrace.redact import (
    MASK,
    REDACTOR,
    RedactingFilter,
    Redactor,
    credentials_in,
    strip_credentials,
)


@pytest.mark.parametrize(
    ("url", "clean"),
    [
        ("https://tok@host/x", "https://host/x"),
        ("https://user:pw@host/x", "https://host/x"),
        ("http://user:pw@127.0.0.1:8080/r.git", "http://127.0.0.1:8080/r.git"),
        ("HTTPS://u:p%40ss@[::1]:8443/p", "HTTPS://[::1]:8443/p"),
        ("https://host/x?token=abc", "https://host/x"),
        ("https://host/x?a=1&access_token=abc&b=2#frag", "https://host/x?a=1&b=2#frag"),
        ("https://host/o?X-Amz-Signature=s&X-Amz-Credential=c&x=1", "https://host/o?x=1"),
        ("https://host/x?private_token=1&key=2&sig=3&signature=4&password=5", "https://host/x"),
        ("https://host/x?keyword=1&tokens=2", "https://host/x?keyword=1&tokens=2"),
        ("https://host/x", "https://host/x"),
        ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
        ("ssh://git@host/org/repo.git", "ssh://git@host/org/repo.git"),
        ("ssh://git:hunter22@host/org/repo.git", "ssh://git@host/org/repo.git"),
        ("/srv/repos/a@b:c", "/srv/repos/a@b:c"),
        ("relative/path", "relative/path"),
        ("file:///srv/repo.git", "file:///srv/repo.git"),
        ("file://user:pw@host/srv?token=x", "file://user:pw@host/srv?token=x"),
    ],
)
def test_strip_credentials(url: str, clean: str) -> None:
    assert strip_credentials(url) == clean


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        ("https://tok3n@host/x", ["tok3n"]),
        ("https://user:pw-123@host/x", ["pw-123"]),
        ("https://user:p%40ss@host/x", ["p%40ss", "p@ss"]),
        ("https://host/x?a=1&token=abcd&sig=ef", ["abcd", "ef"]),
        ("ssh://git@host/x", []),
        ("ssh://git:hunter22@host/x", ["hunter22"]),
        ("git@github.com:org/repo.git", []),
        ("/local/path", []),
        ("file:///x?token=1", []),
    ],
)
def test_credentials_in(url: str, secrets: list[str]) -> None:
    assert credentials_in(url) == secrets


def test_redactor_replaces_longest_first_and_ignores_short_values() -> None:
    redactor = Redactor(["abcd", "abcdefgh", "xyz"])
    assert redactor.redact("k=abcdefgh j=abcd z=xyz") == f"k={MASK} j={MASK} z=xyz"
    redactor.add("p@ss/word")
    assert redactor.redact("p@ss/word and p%40ss%2Fword") == f"{MASK} and {MASK}"
    assert Redactor().redact("nothing to hide") == "nothing to hide"


def test_redactor_learns_url_credentials() -> None:
    redactor = Redactor()
    redactor.add_url("https://user:s3cret-pw@host/x?token=t0k3n-value")
    text = "fatal: unable to access https://user:s3cret-pw@host/x?token=t0k3n-value"
    assert "s3cret" not in redactor.redact(text)
    assert "t0k3n" not in redactor.redact(text)


def test_redactor_reads_environment_at_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEADRACE_TEST_API_TOKEN", raising=False)
    redactor = Redactor(from_environ=True)  # nothing is read yet
    monkeypatch.setenv("HEADRACE_TEST_API_TOKEN", "env-token-1")
    monkeypatch.setenv("DB_PASSWORD", "env-pass-2")
    monkeypatch.setenv("APP_SECRET", "env-secret-3")
    monkeypatch.setenv("AWS_SECRET_KEY", "env-key-4")
    monkeypatch.setenv("PLAIN_SETTING", "not-a-secret")
    text = "env-token-1 env-pass-2 env-secret-3 env-key-4 not-a-secret"
    assert redactor.redact(text) == f"{MASK} {MASK} {MASK} {MASK} not-a-secret"
    assert Redactor(from_environ=False).redact(text) == text


def test_the_default_redactor_is_lazy() -> None:
    assert isinstance(REDACTOR, Redactor)
    REDACTOR.add("default-redactor-secret")
    assert REDACTOR.redact("x default-redactor-secret y") == f"x {MASK} y"


def test_filter_on_a_logger_redacts_percent_args(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("headrace.test_redact.direct")
    secret_filter = RedactingFilter(Redactor(["s3cr3t-token"]))
    logger.addFilter(secret_filter)
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            logger.info("cloning %s with %r", "https://u:s3cr3t-token@h/x", {"t": "s3cr3t-token"})
    finally:
        logger.removeFilter(secret_filter)
    (record,) = caplog.records
    assert record.args == ()
    assert record.getMessage() == "cloning https://u:***@h/x with {'t': '***'}"
    assert "s3cr3t-token" not in caplog.text


def test_filter_on_a_handler_covers_child_loggers_and_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(Redactor(["tb-secret-value"])))
    parent = logging.getLogger("headrace.test_redact.parent")
    parent.addHandler(handler)
    parent.setLevel(logging.INFO)
    try:
        try:
            raise ValueError("bad tb-secret-value")
        except ValueError:
            logging.getLogger("headrace.test_redact.parent.child").exception(
                "failed with %s", "tb-secret-value"
            )
    finally:
        parent.removeHandler(handler)
        handler.close()
    output = stream.getvalue()
    assert "tb-secret-value" not in output
    assert "failed with ***" in output
    assert "ValueError: bad ***" in output


def test_filter_survives_a_bad_format_string() -> None:
    record = logging.makeLogRecord({"msg": "%d tokens", "args": ("secret-arg",)})
    assert RedactingFilter(Redactor(["secret-arg"])).filter(record)
    assert "secret-arg" not in record.getMessage()
