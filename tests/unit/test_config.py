"""Settings: defaults, file, environment precedence and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from millrace.config import load_settings
from millrace.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("MILLRACE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray millrace.toml


def test_defaults() -> None:
    s = load_settings()
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert s.topics.readings == "millrace.iot.readings"
    assert s.runtime.kafka_version == "4.3.1"
    assert s.sqlite_path == Path(".millrace") / "millrace.db"
    assert s.kafka.client_config() == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "PLAINTEXT",
        "client.id": "millrace",
    }


def test_file_then_environment_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "custom.toml"
    cfg.write_text('[kafka]\nbootstrap_servers = "file:1"\nlinger_ms = 7\n[api]\nport = 9100\n', encoding="utf-8")
    monkeypatch.setenv("MILLRACE_KAFKA__BOOTSTRAP_SERVERS", "env:2")
    s = load_settings(cfg)
    assert s.kafka.bootstrap_servers == "env:2"  # environment beats the file
    assert s.kafka.linger_ms == 7  # file beats the default
    assert s.api.port == 9100


def test_millrace_toml_in_working_dir_is_read(tmp_path: Path) -> None:
    (tmp_path / "millrace.toml").write_text('state_dir = "elsewhere"\n', encoding="utf-8")
    assert load_settings().state_dir == Path("elsewhere")


def test_explicit_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MILLRACE_STATE_DIR", "from-env")
    assert load_settings(state_dir=Path("arg")).state_dir == Path("arg")


@pytest.mark.parametrize(
    ("env", "value", "key"),
    [
        ("MILLRACE_KAFKA__LINGER_MS", "-3", "kafka.linger_ms"),
        ("MILLRACE_RUNTIME__KAFKA_PORT", "70000", "runtime.kafka_port"),
        ("MILLRACE_KAFKA__SECURITY_PROTOCOL", "TLS", "kafka.security_protocol"),
        ("MILLRACE_STORE__BACKEND", "postgres", "store.backend"),
    ],
)
def test_bad_value_names_the_key(monkeypatch: pytest.MonkeyPatch, env: str, value: str, key: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(f"invalid setting {key}:")
    assert repr(value) in message or value in message
    assert "\n" not in message


def test_unknown_key_in_file(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[kafka]\nbootstrap = 'x'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"invalid setting kafka\.bootstrap: unknown setting"):
        load_settings(cfg)


def test_sasl_needs_credentials_and_shapes_client_config() -> None:
    with pytest.raises(ConfigError, match="kafka.*sasl_username"):
        load_settings(kafka={"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512"})
    s = load_settings(
        kafka={
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "alice",
            "sasl_password": "s3cret",
            "ssl_cafile": "/etc/ca.pem",
        }
    )
    conf = s.kafka.client_config()
    assert conf["sasl.password"] == "s3cret"
    assert conf["ssl.ca.location"] == "/etc/ca.pem"
    assert "s3cret" not in repr(s)  # secrets never print


def test_missing_config_file_and_broken_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[kafka\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid config file"):
        load_settings(broken)


def test_range_order_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"processing\.ranges\.temperature.*low must be below high"):
        load_settings(processing={"ranges": {"temperature": {"low": 10, "high": 5}}})


def test_the_generic_type_cannot_have_a_range() -> None:
    with pytest.raises(ConfigError, match=r"processing\.ranges.*'generic' is the type without a physical range"):
        load_settings(processing={"ranges": {"generic": {"low": 0, "high": 1}}})


def test_a_range_given_overrides_its_type_and_keeps_the_other_defaults(tmp_path: Path) -> None:
    path = tmp_path / "millrace.toml"
    path.write_text("[processing]\nepisode_quiet_s = 45\n[processing.ranges.temperature]\nlow = -10.0\nhigh = 60.0\n")
    settings = load_settings(path)
    ranges = settings.processing.ranges
    assert (ranges["temperature"].low, ranges["temperature"].high) == (-10.0, 60.0)
    assert set(ranges) == {"temperature", "humidity", "pressure", "vibration", "voltage", "current"}
    assert ranges["humidity"] == load_settings().processing.ranges["humidity"]
    assert settings.processing.episode_quiet_s == 45.0


def test_extra_spark_properties_from_the_file_and_their_keys_checked(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('[spark]\ntrigger_seconds = 0\n[spark.conf]\n"spark.executor.memory" = "4g"\n')
    spark = load_settings(config_path=path).spark
    assert spark.conf == {"spark.executor.memory": "4g"} and spark.trigger_seconds == 0
    path.write_text('[spark.conf]\n"executor.memory" = "4g"\n')
    with pytest.raises(ConfigError, match=r"invalid setting spark\.conf: .*'executor\.memory'"):
        load_settings(config_path=path)
