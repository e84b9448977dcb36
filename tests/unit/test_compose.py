"""docker/compose.yaml and docker/compose.secure.yaml, checked without a Docker engine: the services of the local
layouts, their ports, dependencies and commands, and no secret written into the files; for the secured layout also
the security material docker/secure_init.py makes (run here with openssl, as its init service runs it)."""

from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from millrace.cli.main import app
from millrace.config import is_secret_key
from millrace.kafka.acls import INTERNAL_PRINCIPAL, all_principals

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
    assert (DOCKER / ".gitignore").read_text(encoding="utf-8").split() == ["secrets.env", "secure/"]
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


# --- docker/compose.secure.yaml -------------------------------------------------------------------------------

SECURE: dict[str, Any] = yaml.safe_load((DOCKER / "compose.secure.yaml").read_text(encoding="utf-8"))
SECURE_SERVICES: dict[str, Any] = SECURE["services"]
MOUNT = "/etc/millrace/security"
# each millrace service and the principal it runs as (kafka/acls.py)
PRINCIPALS = {
    "topics": "admin",
    "acls": "admin",
    "stream-job": "stream-job",
    "api": "api",
    "mqtt-bridge": "mqtt-bridge",
    "simulator": "ingest",
}


def _secure_init() -> dict[str, Any]:
    return runpy.run_path(str(DOCKER / "secure_init.py"))  # not __main__: only the definitions


def test_secure_layout_services() -> None:
    assert set(SECURE_SERVICES) == {*BROKERS, "security", *PRINCIPALS, "mongo", "mosquitto"}
    assert SECURE["name"] != COMPOSE["name"]  # both layouts can exist side by side (own volumes)
    security = SECURE_SERVICES["security"]
    assert security["restart"] == "no" and security["user"] == "1000:1000"
    assert security["entrypoint"] == ["python", "/etc/millrace/secure_init.py"]
    assert f"./secure:{MOUNT}" in security["volumes"]  # the one writer of the material
    assert "./secure_init.py:/etc/millrace/secure_init.py:ro" in security["volumes"]
    assert "openssl" in (DOCKER / "Dockerfile").read_text(encoding="utf-8")  # what ensure_ca runs


def test_secure_brokers_run_the_generated_configs() -> None:
    init = _secure_init()
    published = []
    for i, name in enumerate(BROKERS, start=1):
        broker = SECURE_SERVICES[name]
        assert broker["image"] == SERVICES[name]["image"]  # the same Kafka as the plaintext layout
        assert broker["user"] == "1000:1000"
        assert broker["entrypoint"] == ["/bin/bash", "/etc/millrace/kafka-start.sh"]
        assert broker["environment"]["KAFKA_NODE_ID"] == str(i)
        assert broker["volumes"] == [
            f"./secure:{MOUNT}:ro",
            "./kafka-secure-start.sh:/etc/millrace/kafka-start.sh:ro",
            f"{name}:/var/lib/kafka/data",
        ]
        assert broker["depends_on"] == {"security": {"condition": "service_completed_successfully"}}
        check = " ".join(broker["healthcheck"]["test"])
        assert f"--command-config {MOUNT}/admin-client.properties" in check and "localhost:19092" in check
        published.append(broker["ports"][0])
    assert published == [f"127.0.0.1:{p}:{p}" for p in init["EXTERNAL_PORTS"]]
    script = DOCKER / "kafka-secure-start.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, check=False).returncode == 0
    text = script.read_text(encoding="utf-8")
    for made in ("node-${KAFKA_NODE_ID}.properties", "cluster.id", "scram.args", "node-${KAFKA_NODE_ID}.pem"):
        assert made in text
    assert init["MOUNT"] == Path(MOUNT)


def test_secure_services_run_as_their_principals() -> None:
    for service, principal in PRINCIPALS.items():
        spec = SECURE_SERVICES[service]
        assert spec["env_file"] == [
            "millrace.env",
            "secrets.env",
            {"path": f"secure/clients/{principal}.env", "required": False},
        ], service
        assert f"./secure:{MOUNT}:ro" in spec["volumes"], service
        assert spec["build"]["dockerfile"] == "docker/Dockerfile"
        words = tuple(w for w in spec["command"] if not w.startswith("-"))
        assert any(words[: len(p)] == p and len(p) >= 1 for p in _command_paths()), spec["command"]
    assert SECURE_SERVICES["acls"]["command"] == ["acl", "apply"]
    assert SECURE_SERVICES["acls"]["depends_on"] == {"topics": {"condition": "service_completed_successfully"}}
    for service in ("stream-job", "api", "mqtt-bridge", "simulator"):
        assert SECURE_SERVICES[service]["depends_on"]["acls"] == {"condition": "service_completed_successfully"}
    assert SECURE_SERVICES["simulator"]["profiles"] == ["demo"]
    for name, service in SECURE_SERVICES.items():
        for dep, how in service.get("depends_on", {}).items():
            assert dep in SECURE_SERVICES and dep != name
            if how["condition"] == "service_healthy":
                assert "healthcheck" in SECURE_SERVICES[dep], f"{name} waits for {dep}'s health, which has no check"
            elif how["condition"] == "service_completed_successfully":
                assert SECURE_SERVICES[dep]["restart"] == "no"
    published = [p for s in SECURE_SERVICES.values() for p in s.get("ports", [])]
    assert all(p.startswith("127.0.0.1:") for p in published), published
    text = (DOCKER / "compose.secure.yaml").read_text(encoding="utf-8")
    assert "password=" not in text.lower() and "jaas" not in text.lower()
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), "a URL with a password in compose.secure.yaml"
    for service in SECURE_SERVICES.values():
        assert not any(is_secret_key(key) for key in service.get("environment", {}))


def _props(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text(encoding="utf-8").splitlines())


def test_secure_init_makes_brokers_and_clients_material(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init = _secure_init()
    out = tmp_path / "secure"
    init["make"](out, Path("docker/secure"))
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    principals = sorted(p for p in all_principals() if p != INTERNAL_PRINCIPAL)
    assert {"admin", "api", "ingest", "mqtt-bridge", "stream-job"} <= set(principals)
    assert files == sorted(
        [
            "admin-client.properties", "ca.key", "ca.pem", "cluster.id", "credentials.json", "scram.args",
            *[f"node-{i}.{ext}" for i in (1, 2, 3) for ext in ("pem", "properties")],
            *[f"{side}/{p}.env" for side in ("clients", "host") for p in principals],
        ]
    )  # fmt: skip
    assert out.stat().st_mode & 0o777 == 0o700
    assert {f: (out / f).stat().st_mode & 0o777 for f in files if f != "ca.pem"} == {
        f: 0o600 for f in files if f != "ca.pem"
    }
    passwords = json.loads((out / "credentials.json").read_text(encoding="utf-8"))
    assert sorted(passwords) == sorted([*principals, INTERNAL_PRINCIPAL])
    # The storage tool's arguments: every principal a SCRAM user, one argument per line.
    args = (out / "scram.args").read_text(encoding="utf-8").splitlines()
    assert args[0::2] == ["--add-scram"] * len(passwords)
    assert args[1::2] == [f"SCRAM-SHA-512=[name={p},password={passwords[p]}]" for p in sorted(passwords)]
    for i in (1, 2, 3):
        props = _props(out / f"node-{i}.properties")
        external = init["EXTERNAL_PORTS"][i - 1]
        assert props["node.id"] == str(i) and props["process.roles"] == "broker,controller"
        assert props["controller.quorum.voters"] == "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
        assert props["listeners"] == f"INTERNAL://:19092,EXTERNAL://:{external},CONTROLLER://:9093"
        assert props["advertised.listeners"] == f"INTERNAL://kafka-{i}:19092,EXTERNAL://localhost:{external}"
        assert props["listener.security.protocol.map"] == "INTERNAL:SASL_SSL,EXTERNAL:SASL_SSL,CONTROLLER:SASL_SSL"
        assert props["inter.broker.listener.name"] == "INTERNAL"
        assert props["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
        assert props["sasl.mechanism.controller.protocol"] == "PLAIN"
        for listener in ("internal", "external"):
            assert props[f"listener.name.{listener}.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
            jaas = props[f"listener.name.{listener}.scram-sha-512.sasl.jaas.config"]
            assert f'username="controller" password="{passwords["controller"]}"' in jaas
        assert not [k for k in props if k.startswith("listener.name.sasl_ssl.")]
        assert props["ssl.keystore.location"] == f"{MOUNT}/node-{i}.pem"
        assert props["ssl.truststore.location"] == f"{MOUNT}/ca.pem"
        assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
        assert props["allow.everyone.if.no.acl.found"] == "false"
        assert props["super.users"] == "User:admin;User:controller"
        assert props["log.dirs"] == "/var/lib/kafka/data"
        assert props["min.insync.replicas" if "min.insync.replicas" in props else "transaction.state.log.min.isr"]
        assert props["default.replication.factor"] == "3"
        # The certificate: signed by the CA, valid for the container's name and for the published port.
        node_pem = str(out / f"node-{i}.pem")
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(out / "ca.pem"), node_pem], capture_output=True)
        assert verify.returncode == 0, verify.stderr
        san = subprocess.run(
            ["openssl", "x509", "-in", node_pem, "-noout", "-ext", "subjectAltName"], capture_output=True, text=True
        ).stdout
        assert f"DNS:kafka-{i}" in san and "DNS:localhost" in san and "IP Address:127.0.0.1" in san
    admin = _props(out / "admin-client.properties")
    assert admin["security.protocol"] == "SASL_SSL" and admin["ssl.truststore.location"] == f"{MOUNT}/ca.pem"
    assert f'username="admin" password="{passwords["admin"]}"' in admin["sasl.jaas.config"]
    # The clients' files are millrace settings: each principal, SASL_SSL, the CA where it is mounted.
    from millrace.config import load_settings

    for name in [k for k in os.environ if k.startswith("MILLRACE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MILLRACE_STATE_DIR", str(tmp_path / "state"))
    for side, bootstrap, ca in (
        ("clients", "kafka-1:19092,kafka-2:19092,kafka-3:19092", f"{MOUNT}/ca.pem"),
        ("host", "localhost:9092,localhost:9102,localhost:9112", "docker/secure/ca.pem"),
    ):
        for principal in principals:
            env = _env_lines(out / side / f"{principal}.env")
            for key, value in env.items():
                monkeypatch.setenv(key, value)
            kafka = load_settings().kafka
            assert kafka.bootstrap_servers == bootstrap and kafka.security_protocol == "SASL_SSL"
            assert kafka.sasl_mechanism == "SCRAM-SHA-512" and kafka.sasl_username == principal
            assert kafka.sasl_password is not None and kafka.sasl_password.get_secret_value() == passwords[principal]
            assert str(kafka.ssl_cafile) == ca
    # A second run keeps everything: the brokers' SCRAM users and the clients keep matching.
    before = {f: (out / f).read_bytes() for f in files}
    init["make"](out, Path("docker/secure"))
    assert {f: (out / f).read_bytes() for f in files} == before
