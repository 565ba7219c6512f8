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
    is_distinctive,
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


def test_redactor_replaces_longest_first() -> None:
    redactor = Redactor(["abcd-1234-efgh", "abcd-1234-efgh-5678"])
    text = "k=abcd-1234-efgh-5678 j=abcd-1234-efgh"
    assert redactor.redact(text) == f"k={MASK} j={MASK}"
    redactor.add("p@ss/word-2024")
    assert redactor.redact("p@ss/word-2024 and p%40ss%2Fword-2024") == f"{MASK} and {MASK}"
    assert Redactor().redact("nothing to hide") == "nothing to hide"


@pytest.mark.parametrize(
    ("secret", "distinctive"),
    [
        ("headrace", False),  # a word
        ("hunter22", False),  # short
        ("administrator", False),  # long, but one kind of character
        ("headrace-secret", True),  # 12 or more, letters and other characters
        ("s3cr3t-token", True),
        ("ghp_" + "a" * 36, True),
        ("a" * 24, True),  # 24 or more, whatever it is made of
    ],
)
def test_which_secrets_are_distinctive(secret: str, distinctive: bool) -> None:
    assert is_distinctive(secret) is distinctive


def test_a_secret_that_is_a_word_is_masked_only_as_a_credential() -> None:
    redactor = Redactor(["headrace"])
    ordinary = [
        "create bucket headrace-content",
        "consumer group headrace.archive joined",
        "user headrace connected to database headrace",
        "password=headrace1",  # another value
        "ssh://headrace@host/x",  # an ssh user name is not a secret
        "monkey=headrace",
    ]
    for text in ordinary:
        assert redactor.redact(text) == text
    as_credential = {
        "https://headrace@host/x": f"https://{MASK}@host/x",
        "fatal: 'https://user:headrace@host/x'": f"fatal: 'https://user:{MASK}@host/x'",
        "ssh://git:headrace@host/x": f"ssh://git:{MASK}@host/x",
        "password=headrace": f"password={MASK}",
        "user=headrace password=headrace dbname=x": f"user=headrace password={MASK} dbname=x",
        "https://h/x?a=1&token=headrace#f": f"https://h/x?a=1&token={MASK}#f",
        "HEADRACE_POSTGRES__PASSWORD=headrace": f"HEADRACE_POSTGRES__PASSWORD={MASK}",
        "{'sasl.password': 'headrace'}": f"{{'sasl.password': '{MASK}'}}",
        '"secret_key": "headrace",': f'"secret_key": "{MASK}",',
        "api_key = headrace": f"api_key = {MASK}",
        "Authorization: Bearer headrace": f"Authorization: Bearer {MASK}",
    }
    for text, masked in as_credential.items():
        assert redactor.redact(text) == masked, text


def test_a_distinctive_secret_is_masked_everywhere_but_inside_a_word() -> None:
    redactor = Redactor(["s3cr3t-token"])
    text = "a s3cr3t-token, (s3cr3t-token) s3cr3t-token-2 xs3cr3t-token s3cr3t-tokens"
    assert redactor.redact(text) == f"a {MASK}, ({MASK}) {MASK}-2 xs3cr3t-token s3cr3t-tokens"


def test_redactor_learns_url_credentials() -> None:
    redactor = Redactor()
    redactor.add_url("https://user:s3cret-pw@host/x?token=t0k3n-value")
    text = "fatal: unable to access https://user:s3cret-pw@host/x?token=t0k3n-value"
    assert "s3cret" not in redactor.redact(text)
    assert "t0k3n" not in redactor.redact(text)


def test_redactor_reads_environment_at_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEADRACE_TEST_API_TOKEN", raising=False)
    redactor = Redactor(from_environ=True)  # nothing is read yet
    monkeypatch.setenv("HEADRACE_TEST_API_TOKEN", "env-token-0001")
    monkeypatch.setenv("DB_PASSWORD", "env-pass-0002")
    monkeypatch.setenv("APP_SECRET", "env-secret-0003")
    monkeypatch.setenv("AWS_SECRET_KEY", "env-key-00004")
    monkeypatch.setenv("PLAIN_SETTING", "not-a-secret")
    monkeypatch.setenv("SHORT_PASSWORD", "swordfish")  # a word: only as a credential
    text = "env-token-0001 env-pass-0002 env-secret-0003 env-key-00004 not-a-secret swordfish"
    masked = f"{MASK} {MASK} {MASK} {MASK} not-a-secret swordfish"
    assert redactor.redact(text) == masked
    assert redactor.redact("https://swordfish@host/") == f"https://{MASK}@host/"
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
    record = logging.makeLogRecord({"msg": "%d tokens", "args": ("secret-arg-1234",)})
    assert RedactingFilter(Redactor(["secret-arg-1234"])).filter(record)
    assert "secret-arg-1234" not in record.getMessage()


def test_a_log_line_keeps_a_word_that_is_also_a_short_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HEADRACE_POSTGRES__PASSWORD", "headrace")  # the local stack's
    record = logging.makeLogRecord(
        {"msg": "create bucket %s (%s)", "args": ("headrace-content", "password=headrace")}
    )
    assert RedactingFilter(Redactor(from_environ=True)).filter(record)
    assert record.getMessage() == f"create bucket headrace-content (password={MASK})"
