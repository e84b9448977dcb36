"""Mosquitto through the stack (``stack up --with mqtt``, ``stack status``) and with a password and TLS."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_mqtt are parameters here)

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from millrace.cli.main import app
from millrace.config import Settings, load_settings
from millrace.errors import MillraceError
from millrace.iot.mqtt_client import Connection
from millrace.runtime.mqtt import connack_probe, mqtt_spec
from millrace.runtime.process import ProcessManager, free_port
from millrace.runtime.stack import Stack
from tests.helpers import unique, wait_for
from tests.integration.fixtures_mqtt import mosquitto  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


def test_stack_up_with_mqtt_starts_it_and_status_shows_it_healthy(stack: Stack) -> None:
    settings = stack.settings
    env = {
        "MILLRACE_RUNTIME__KAFKA_PORT": str(settings.runtime.kafka_port),
        "MILLRACE_RUNTIME__CONTROLLER_PORT": str(settings.runtime.controller_port),
        "MILLRACE_RUNTIME__MQTT_PORT": str(settings.runtime.mqtt_port),
        "MILLRACE_RUNTIME__KAFKA_HEAP": settings.runtime.kafka_heap,
        "MILLRACE_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
    }
    runner = CliRunner()
    up = runner.invoke(app, ["--state-dir", str(settings.state_dir), "stack", "up", "--with", "mqtt"], env=env)
    assert up.exit_code == 0, up.output
    assert "mqtt pid" in up.output
    status = runner.invoke(app, ["--state-dir", str(settings.state_dir), "stack", "status", "--json"], env=env)
    assert status.exit_code == 0, status.output
    rows = {row["name"]: row for row in json.loads(status.output)}
    assert rows["mqtt"]["kind"] == "mqtt"
    assert rows["mqtt"]["ports"] == {"mqtt": settings.runtime.mqtt_port}
    assert rows["mqtt"]["running"] and rows["mqtt"]["healthy"]
    assert connack_probe(settings.runtime.host, settings.runtime.mqtt_port)
    # Idempotent: a second `up` keeps the same process.
    again = runner.invoke(app, ["--state-dir", str(settings.state_dir), "stack", "up", "--with", "mqtt"], env=env)
    assert again.exit_code == 0, again.output
    assert json.loads(
        runner.invoke(app, ["--state-dir", str(settings.state_dir), "stack", "status", "--json"], env=env).output
    ) == [{**row, "uptime_s": pytest.approx(row["uptime_s"], abs=30)} for row in json.loads(status.output)]


def make_certificates(directory: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    d = directory
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    commands = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
         "-subj", "/CN=millrace-test-ca"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj",
         "/CN=127.0.0.1"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out",
         "server.crt", "-days", "2", "-extfile", "ext.cnf"],
    ]  # fmt: skip
    for args in commands:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    return {"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key"}


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Settings]:
    """A second Mosquitto with a password file and a TLS listener, in its own state dir."""
    certs = make_certificates(tmp_path)
    tls_port = free_port()
    settings = load_settings(
        state_dir=tmp_path / "state",
        runtime={
            "mqtt_port": free_port(),
            "mqtt_tls_port": tls_port,
            "mqtt_tls_certfile": str(certs["cert"]),
            "mqtt_tls_keyfile": str(certs["key"]),
        },
        mqtt={"port": tls_port, "username": "millrace", "password": "s3cret-Pa55", "tls_cafile": str(certs["ca"])},
    )
    manager = ProcessManager(settings.state_dir)
    manager.start(mqtt_spec(settings))
    yield settings
    manager.stop("mqtt")


def test_password_and_tls(secured: Settings) -> None:
    rt = secured.runtime
    passwd = (secured.state_dir / "mqtt" / "passwd").read_text()
    assert passwd.startswith("millrace:") and "s3cret-Pa55" not in passwd
    assert not connack_probe(rt.host, rt.mqtt_port)  # anonymous access refused
    assert connack_probe(rt.host, rt.mqtt_port, username="millrace", password="s3cret-Pa55")

    got: list[bytes] = []
    arrived = threading.Event()
    conn = Connection(secured.mqtt, unique("tls"))
    conn.client.on_message = lambda c, u, m: (got.append(m.payload), arrived.set())
    conn.on_connect_hooks.append(lambda present: conn.client.subscribe("sensors/+/+/+", qos=1))
    conn.open()
    try:
        wait_for(lambda: conn.connected.is_set(), timeout_s=10, what="TLS connection")
        info = conn.client.publish("sensors/loc-01/dev-0001/temperature", b"21.5", qos=1)
        info.wait_for_publish(10)
        wait_for(arrived.is_set, timeout_s=10, what="the message over TLS")
    finally:
        conn.close()
    assert got == [b"21.5"]

    wrong = secured.mqtt.model_copy(update={"password": SecretStr("nope")})
    with pytest.raises(MillraceError, match="refused the connection"):
        Connection(wrong, unique("bad")).open(timeout_s=10)
    plain = secured.mqtt.model_copy(update={"tls_cafile": None})
    with pytest.raises(MillraceError, match=r"127\.0\.0\.1"):
        Connection(plain, unique("plain")).open(timeout_s=3)


def test_bridge_and_sink_over_tls_with_a_password(stack: Stack, secured: Settings) -> None:
    from confluent_kafka.admin import NewTopic

    from millrace.iot.mqtt_sink import MqttSink
    from millrace.kafka.admin import admin_client
    from tests.integration.fixtures_mqtt import BridgeThread, consume_until, decoded, message, reading

    topics = secured.topics.model_copy(update={"readings": unique("tr"), "dead_letter": unique("td")})
    admin = admin_client(stack.settings.kafka.client_config())
    for future in admin.create_topics([NewTopic(topics.readings, 1, 1), NewTopic(topics.dead_letter, 1, 1)]).values():
        future.result(timeout=30)
    settings = secured.model_copy(update={"kafka": stack.settings.kafka, "topics": topics})
    with BridgeThread(settings, client_id=unique("tls-bridge"), commands=False, count=20) as runner:
        sink = MqttSink(settings)
        try:
            for i in range(20):
                sink.send(message(reading(i)))
            assert sink.flush(30) == 0
        finally:
            sink.close()
        counters = runner.join()
    assert (counters.received, counters.acked) == (20, 20)
    got = consume_until(settings, topics.readings, lambda ms: len(ms) >= 20)
    assert [v["seq"] for v in decoded(got)] == list(range(20))
