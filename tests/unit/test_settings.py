import pickle
from pathlib import Path

import pytest

from headrace.errors import ConfigError
from headrace.settings import Settings, load_settings


def test_defaults_point_at_the_local_stack() -> None:
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.registry.url == "http://127.0.0.1:8081/apis/ccompat/v7"
    assert settings.object_store.endpoint == "127.0.0.1:9000"
    assert settings.postgres.address == "127.0.0.1:15432"


def test_sectioned_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_KAFKA__BOOTSTRAP_SERVERS", "broker-1:9092,broker-2:9092")
    monkeypatch.setenv("HEADRACE_KAFKA__TOPICS__DEAD_LETTER", "dlq")
    monkeypatch.setenv("HEADRACE_POSTGRES__PORT", "6543")
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert settings.kafka.topics.dead_letter == "dlq"
    assert settings.postgres.port == 6543


def test_secrets_are_masked_everywhere_they_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_OBJECT_STORE__SECRET_KEY", "s3cr3t-value")
    monkeypatch.setenv("HEADRACE_POSTGRES__PASSWORD", "pg-s3cr3t")
    settings = load_settings()
    assert settings.object_store.secret_key.get_secret_value() == "s3cr3t-value"
    for text in (repr(settings), str(settings), str(settings.masked())):
        assert "s3cr3t" not in text
    assert settings.masked()["object_store"]["secret_key"] == "**********"


def test_unknown_keys_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_KAFKA__BOOTSTRAP_SERVER", "typo:9092")
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap_server: Extra inputs"):
        load_settings()


def test_bad_values_name_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_KAFKA__PARTITIONS", "0")
    with pytest.raises(ConfigError, match=r"kafka\.partitions"):
        load_settings()


def test_config_file_sits_below_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "headrace.toml"
    config.write_text(
        '[kafka]\nclient_id = "from-file"\nbootstrap_servers = "file:9092"\n'
        '[kafka.topics]\nfile_events = "files"\n'
    )
    monkeypatch.setenv("HEADRACE_KAFKA__BOOTSTRAP_SERVERS", "env:9092")
    settings = load_settings(config)
    assert settings.kafka.client_id == "from-file"
    assert settings.kafka.topics.file_events == "files"
    assert settings.kafka.bootstrap_servers == "env:9092"


def test_settings_from_a_config_file_pickle_for_worker_processes(tmp_path: Path) -> None:
    config = tmp_path / "headrace.toml"
    config.write_text(
        '[object_store]\nsecret_key = "from-the-file-9f2c"\n[kafka]\npartitions = 7\n'
    )
    settings = load_settings(config)
    again = pickle.loads(pickle.dumps(settings))  # noqa: S301 - our own bytes
    assert type(again) is Settings
    assert again.kafka.partitions == 7
    assert again.object_store.secret_key.get_secret_value() == "from-the-file-9f2c"
    assert again.secrets() == settings.secrets()


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "headrace.toml"
    config.write_text('[log]\nformat = "json"\n')
    monkeypatch.setenv("HEADRACE_CONFIG", str(config))
    assert load_settings().log.format == "json"


def test_missing_or_malformed_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[kafka\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(broken)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[kafka]\nnope = 1\n")
    with pytest.raises(ConfigError, match=r"kafka\.nope"):
        load_settings(unknown)


def test_a_password_with_spaces_and_quotes_is_one_conninfo_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import psycopg.conninfo

    password = "pw with space dbname=other 'quoted' back\\slash"
    monkeypatch.setenv("HEADRACE_POSTGRES__PASSWORD", password)
    parsed = psycopg.conninfo.conninfo_to_dict(load_settings().postgres.conninfo("db"))
    assert (parsed["password"], parsed["dbname"]) == (password, "db")


def test_every_configured_secret_is_listed_for_the_redactor(tmp_path: Path) -> None:
    config = tmp_path / "headrace.toml"
    config.write_text(
        '[kafka]\nsasl_password = "sasl-1"\n[registry]\npassword = "reg-2"\n'
        '[object_store]\nsecret_key = "s3-3"\n[postgres]\npassword = "pg-4"\n'
        '[[git.credentials]]\nurl_prefix = "https://git.example/"\ntoken = "tok-5"\n'
    )
    assert load_settings(config).secrets() == ["sasl-1", "reg-2", "s3-3", "pg-4", "tok-5"]
