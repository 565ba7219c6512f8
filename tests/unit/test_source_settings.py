"""[sources.NAME]: the table archiver's databases, from the environment, a file or --dsn."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import pytest

from headrace.errors import ConfigError
from headrace.redact import RedactingFilter, Redactor
from headrace.settings import SourceSettings, load_settings

PASSWORD = "Src-pw-9f2c-e81a"  # noqa: S105 - a test value


def test_a_source_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_SOURCES__ORDERS__HOST", "db.internal")
    monkeypatch.setenv("HEADRACE_SOURCES__ORDERS__PORT", "6543")
    monkeypatch.setenv("HEADRACE_SOURCES__ORDERS__DATABASE", "shop")
    monkeypatch.setenv("HEADRACE_SOURCES__ORDERS__USER", "archiver")
    monkeypatch.setenv("HEADRACE_SOURCES__ORDERS__PASSWORD", PASSWORD)
    monkeypatch.setenv("HEADRACE_SOURCES__ORDERS__SSLMODE", "require")
    source = load_settings().source("orders")
    assert (source.host, source.port, source.database, source.user) == (
        "db.internal",
        6543,
        "shop",
        "archiver",
    )
    assert source.password is not None and source.password.get_secret_value() == PASSWORD
    assert "sslmode='require'" in source.conninfo()
    assert source.address == "archiver@db.internal:6543/shop"


def test_the_environment_overrides_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "headrace.toml"
    config.write_text(
        '[sources.orders]\nhost = "file-host"\ndatabase = "shop"\nuser = "a"\n'
        '[sources.audit]\ndatabase = "audit"\nuser = "b"\n[tables]\nbatch_size = 500\n'
    )
    monkeypatch.setenv("HEADRACE_SOURCES__ORDERS__HOST", "env-host")
    settings = load_settings(config)
    assert settings.source("orders").host == "env-host"
    assert settings.source("audit").port == 5432 and settings.source("audit").password is None
    assert settings.tables.batch_size == 500


def test_a_source_password_is_masked_and_given_to_the_redactor(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HEADRACE_SOURCES__ORDERS__DATABASE", "shop")
    monkeypatch.setenv("HEADRACE_SOURCES__ORDERS__USER", "archiver")
    monkeypatch.setenv("HEADRACE_SOURCES__ORDERS__PASSWORD", PASSWORD)
    settings = load_settings()
    assert PASSWORD in settings.secrets()
    assert settings.masked()["sources"]["orders"]["password"] == "**********"
    for text in (repr(settings), str(settings), str(settings.masked())):
        assert PASSWORD not in text
    logger = logging.getLogger("test.sources")
    logger.addFilter(RedactingFilter(Redactor(settings.secrets())))
    with caplog.at_level(logging.INFO, logger="test.sources"):
        logger.info("connecting with %s", settings.source("orders").conninfo())
    assert PASSWORD not in caplog.text and "password='***'" in caplog.text


def test_an_unknown_source_is_one_line_naming_the_known_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HEADRACE_SOURCES__ORDERS__DATABASE", "shop")
    monkeypatch.setenv("HEADRACE_SOURCES__ORDERS__USER", "archiver")
    with pytest.raises(ConfigError) as caught:
        load_settings().source("ordres")
    assert str(caught.value) == (
        "no source 'ordres' in settings (known: orders): add [sources.ordres] or pass --dsn"
    )
    monkeypatch.delenv("HEADRACE_SOURCES__ORDERS__DATABASE")
    monkeypatch.delenv("HEADRACE_SOURCES__ORDERS__USER")
    with pytest.raises(ConfigError, match=r"known: none is configured"):
        load_settings().source("x")


def test_a_source_needs_a_database_and_a_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_SOURCES__ORDERS__HOST", "db")
    with pytest.raises(ConfigError, match=r"sources\.orders\.database: Field required"):
        load_settings()


@pytest.mark.parametrize(
    "dsn",
    [
        f"host=db.internal port=6543 dbname=shop user=archiver password={PASSWORD} sslmode=require",
        f"postgresql://archiver:{PASSWORD}@db.internal:6543/shop?sslmode=require",
    ],
)
def test_a_source_from_a_dsn(dsn: str) -> None:
    source = SourceSettings.from_dsn(dsn)
    assert source.address == "archiver@db.internal:6543/shop"
    assert source.sslmode == "require"
    assert source.password is not None and source.password.get_secret_value() == PASSWORD
    assert PASSWORD not in repr(source)


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        (f"host='unterminated password={PASSWORD}", "not a valid PostgreSQL connection string"),
        (f"postgresql://u:{PASSWORD}@[bad/db", "not a valid PostgreSQL connection string"),
        (f"host=h user=u password={PASSWORD}", "--dsn must name dbname"),
        (f"host=h dbname=d password={PASSWORD}", "--dsn must name user"),
        (f"host=h dbname=d user=u password={PASSWORD} options=-cx", "unsupported connection"),
        (f"host=h dbname=d user=u password={PASSWORD} port=x", "--dsn: port"),
    ],
)
def test_a_bad_dsn_is_one_line_without_the_password(dsn: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        SourceSettings.from_dsn(dsn)
    text = str(caught.value)
    assert PASSWORD not in text and "\n" not in text
    # nor does its traceback, chained exceptions included (libpq's message quotes the URI)
    assert PASSWORD not in "".join(traceback.format_exception(caught.value))
