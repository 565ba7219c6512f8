from pydantic import SecretStr

from headrace.kafka import client_config, consumer_config, producer_config
from headrace.settings import KafkaSettings


def test_producer_is_idempotent_with_acks_all() -> None:
    config = producer_config(KafkaSettings())
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["bootstrap.servers"] == "127.0.0.1:9092"


def test_consumer_reads_committed_and_never_auto_commits() -> None:
    config = consumer_config(KafkaSettings(), "archive")
    assert config["group.id"] == "archive"
    assert config["isolation.level"] == "read_committed"
    assert config["enable.auto.commit"] is False
    assert config["enable.auto.offset.store"] is False


def test_overrides_and_extra_keys_reach_librdkafka() -> None:
    settings = KafkaSettings(extra={"socket.timeout.ms": "5000"})
    config = producer_config(settings, {"linger.ms": 100})
    assert config["socket.timeout.ms"] == "5000"
    assert config["linger.ms"] == 100


def test_sasl_secret_is_unwrapped_only_at_the_edge() -> None:
    settings = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="svc",
        sasl_password=SecretStr("pw-123"),
    )
    assert "pw-123" not in repr(settings)
    config = client_config(settings)
    assert config["sasl.password"] == "pw-123"
    assert config["sasl.username"] == "svc"
    assert config["security.protocol"] == "SASL_SSL"
