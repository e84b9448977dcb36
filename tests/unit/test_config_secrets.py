"""A settings error names the key and never echoes a secret (SASL password, MQTT password, JAAS text)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from millrace.config import is_secret_key, load_settings
from millrace.errors import ConfigError

SECRET = "s3cret-Pa55-wOrd-7781"


def error_of(**overrides: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(None, **overrides)
    return str(info.value)


def test_section_error_does_not_echo_the_section() -> None:
    # A model-level error of [kafka] (SASL without a username): pydantic's input is the whole section.
    message = error_of(kafka={"security_protocol": "SASL_SSL", "sasl_password": SECRET})
    assert message == "invalid setting kafka: SASL protocols need kafka.sasl_username and kafka.sasl_password"
    assert SECRET not in message


def test_bad_value_beside_a_password_names_the_key() -> None:
    message = error_of(kafka={"sasl_mechanism": "SCRAM-SHA-1", "sasl_username": "u", "sasl_password": SECRET})
    assert message.startswith("invalid setting kafka.sasl_mechanism: Input should be")
    assert "'SCRAM-SHA-1'" in message  # a plain value of a key that is not secret is quoted
    assert SECRET not in message


def test_bad_secret_value_is_not_echoed() -> None:
    message = error_of(mqtt={"password": ["x", SECRET]})
    assert message.startswith("invalid setting mqtt.password:")
    assert SECRET not in message and "got" not in message


def test_unknown_key_in_a_section_with_a_password() -> None:
    message = error_of(kafka={"sasl_username": "u", "sasl_password": SECRET, "sasl_pasword": SECRET})
    assert message == "invalid setting kafka.sasl_pasword: unknown setting"


@pytest.mark.parametrize(
    ("key", "secret"),
    [("kafka.sasl_password", True), ("mqtt.password", True), ("x.api_key", True), ("kafka.sasl_username", False)],
)
def test_secret_keys(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_cli_config_file_error_prints_no_secret(tmp_path: Path) -> None:
    config = tmp_path / "millrace.toml"
    config.write_text(
        f'[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-512"\nsasl_password = "{SECRET}"\n',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}
    result = subprocess.run(
        [sys.executable, "-m", "millrace.cli.main", "-c", str(config), "topics", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert SECRET not in result.stdout + result.stderr
    assert "kafka" in result.stderr and "sasl_username" in result.stderr
    assert "Traceback" not in result.stderr
