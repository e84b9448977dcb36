"""docker/compose.yaml, checked without a Docker engine: the services of the local layout, their ports,
dependencies and commands, and no secret written into the file."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from millrace.cli.main import app
from millrace.config import is_secret_key

DOCKER = Path(__file__).resolve().parents[2] / "docker"
COMPOSE: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))
SERVICES: dict[str, Any] = COMPOSE["services"]
BROKERS = ("kafka-1", "kafka-2", "kafka-3")


def test_the_services_of_the_local_layout() -> None:
    assert set(SERVICES) == {
        *BROKERS,
        "topics",
        "mongo",
        "mosquitto",
        "stream-job",
        "api",
        "mqtt-bridge",
        "simulator",
    }
    assert SERVICES["simulator"]["profiles"] == ["demo"]  # only with --profile demo


def test_three_kraft_brokers_in_one_quorum() -> None:
    ids = []
    for name in BROKERS:
        broker = SERVICES[name]
        env = broker["environment"]
        assert broker["image"].startswith("apache/kafka:")
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2" and env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert f"INTERNAL://{name}:19092" in env["KAFKA_ADVERTISED_LISTENERS"]
        # the published port is the one the EXTERNAL listener binds and advertises
        published = broker["ports"][0]
        port = published.rsplit(":", 1)[1]
        assert f"EXTERNAL://:{port}" in env["KAFKA_LISTENERS"]
        assert f"EXTERNAL://localhost:{port}" in env["KAFKA_ADVERTISED_LISTENERS"]
        assert broker["volumes"] == [f"{name}:/var/lib/kafka/data"]
        assert "healthcheck" in broker
        ids.append(env["KAFKA_NODE_ID"])
    assert ids == ["1", "2", "3"]
    assert len({SERVICES[b]["environment"]["CLUSTER_ID"] for b in BROKERS}) == 1


def test_host_ports_are_loopback_only_and_distinct() -> None:
    published = [p for s in SERVICES.values() for p in s.get("ports", [])]
    assert all(p.startswith("127.0.0.1:") for p in published), published
    hosts = [p.split(":")[1] for p in published]
    assert sorted(hosts) == sorted(set(hosts)) == sorted(["9092", "9102", "9112", "27017", "1883", "8000"])


def test_depends_on_names_services_with_a_healthcheck_or_a_one_shot() -> None:
    for name, service in SERVICES.items():
        for dep, how in service.get("depends_on", {}).items():
            assert dep in SERVICES and dep != name
            if how["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[dep], f"{name} waits for {dep}'s health, which has no check"
            elif how["condition"] == "service_completed_successfully":
                assert SERVICES[dep]["restart"] == "no"
    for service in ("stream-job", "api", "mqtt-bridge"):
        assert SERVICES[service]["depends_on"]["topics"] == {"condition": "service_completed_successfully"}
    assert set(SERVICES["topics"]["depends_on"]) == set(BROKERS)


def _command_paths() -> set[tuple[str, ...]]:
    paths: set[tuple[str, ...]] = set()

    def walk(command: Any, path: tuple[str, ...]) -> None:
        paths.add(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return paths


@pytest.mark.parametrize("service", ["topics", "stream-job", "api", "mqtt-bridge", "simulator"])
def test_millrace_services_run_real_commands(service: str) -> None:
    command = SERVICES[service]["command"]
    words = tuple(w for w in command if not w.startswith("-"))
    assert any(words[: len(p)] == p and len(p) >= 1 for p in _command_paths()), command
    assert SERVICES[service]["env_file"] == ["millrace.env", "secrets.env"]
    assert SERVICES[service]["build"]["dockerfile"] == "docker/Dockerfile"
    assert (DOCKER / "Dockerfile").is_file()


def _env_lines(path: Path) -> dict[str, str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def test_no_secret_is_inlined() -> None:
    for name, service in SERVICES.items():
        env = service.get("environment", {})
        for key in env:
            assert not is_secret_key(key) and "PASSWORD" not in key, f"{name}: {key} belongs in secrets.env"
    text = (DOCKER / "compose.yaml").read_text(encoding="utf-8")
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), "a URL with a password in compose.yaml"
    for key in _env_lines(DOCKER / "millrace.env"):
        assert not is_secret_key(key) and "PASSWORD" not in key and "URI" not in key, key
    # the secrets file is not in git; its example holds placeholders only
    assert (DOCKER / ".gitignore").read_text(encoding="utf-8").split() == ["secrets.env"]
    example = _env_lines(DOCKER / "secrets.env.example")
    assert set(example) == {
        "MONGO_INITDB_ROOT_USERNAME",
        "MONGO_INITDB_ROOT_PASSWORD",
        "MILLRACE_STORE__MONGODB_URI",
        "MILLRACE_API__TOKENS",
    }
    assert example["MONGO_INITDB_ROOT_PASSWORD"] == "CHANGE_ME"
    assert "CHANGE_ME" in example["MILLRACE_STORE__MONGODB_URI"] and "CHANGE_ME" in example["MILLRACE_API__TOKENS"]


def test_the_settings_files_are_valid_millrace_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from millrace.config import load_settings
    from millrace.errors import ConfigError

    for name in [k for k in os.environ if k.startswith("MILLRACE_")]:
        monkeypatch.delenv(name)
    for key, value in _env_lines(DOCKER / "millrace.env").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MILLRACE_STATE_DIR", str(tmp_path))  # the container path is not writable here
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "kafka-1:19092,kafka-2:19092,kafka-3:19092"
    assert settings.store.backend == "mongodb" and settings.mqtt.host == "mosquitto"
    assert settings.api.auth == "token"
    # the example's token placeholder stops the API at start, naming the key and echoing nothing
    monkeypatch.setenv("MILLRACE_API__TOKENS", _env_lines(DOCKER / "secrets.env.example")["MILLRACE_API__TOKENS"])
    with pytest.raises(ConfigError, match=r"^invalid setting api\.tokens\.0\.sha256: String should match") as bad:
        load_settings()
    assert "CHANGE_ME" not in str(bad.value)
