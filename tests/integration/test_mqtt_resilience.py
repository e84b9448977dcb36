"""No reading lost: a Mosquitto restart mid-stream, and a bridge killed before it acknowledged anything."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_mqtt are parameters here)

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from millrace.config import Settings
from millrace.iot.mqtt_sink import MqttSink
from millrace.runtime.mqtt import mqtt_spec
from millrace.runtime.process import free_port
from millrace.runtime.stack import Stack
from tests.helpers import unique, wait_for
from tests.integration.fixtures_mqtt import (  # noqa: F401  (fixtures)
    BridgeThread,
    consume_until,
    decoded,
    message,
    mosquitto,
    mqtt_settings,
    reading,
)

pytestmark = pytest.mark.integration


def seqs_in(settings: Settings, expected: int) -> list[int]:
    """Every seq on the readings topic once all ``expected`` distinct seqs arrived (duplicates kept)."""
    messages = consume_until(
        settings,
        settings.topics.readings,
        lambda ms: len({v["seq"] for v in decoded(ms)}) >= expected,
        timeout_s=90,
        what=f"{expected} distinct seqs",
    )
    return [v["seq"] for v in decoded(messages)]


def test_mosquitto_restart_mid_stream_loses_no_reading(stack: Stack, mqtt_settings: Settings) -> None:
    total = 4000
    readings = [reading(i, device=1 + i % 5) for i in range(total)]
    sink = MqttSink(mqtt_settings)
    sent = 0
    pace = threading.Event()  # never set: its wait() paces the publisher at about 2,000 messages/s

    def publish() -> None:
        nonlocal sent
        for i, r in enumerate(readings):
            sink.send(message(r))
            sent = i + 1
            if sent % 200 == 0:
                pace.wait(0.1)

    with BridgeThread(mqtt_settings, client_id=unique("bridge"), commands=False) as runner:
        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        wait_for(lambda: sink.stats.delivered >= 1000, timeout_s=30, what="1000 readings acknowledged")
        assert stack.manager.stop("mqtt", timeout_s=10)
        sent_at_stop = sent
        stack.manager.start(mqtt_spec(stack.settings))
        publisher.join(120)
        assert not publisher.is_alive()
        assert sink.flush(60) == 0
        sink.close()
        seqs = seqs_in(mqtt_settings, total)
        counters = runner.bridge.counters
    assert sent_at_stop < total, "the restart happened mid-stream"
    assert sorted(set(seqs)) == list(range(total))
    assert len(seqs) >= total  # at least once: a resend after the restart may arrive twice
    assert counters.readings == len(seqs)


BRIDGE_SCRIPT = """
import json, sys, threading
from millrace.config import load_settings
from millrace.iot.mqtt_bridge import MqttBridge

bridge = MqttBridge(load_settings(**json.loads(sys.argv[1])), client_id=sys.argv[2], commands=False,
                    check_topics=False, on_received=lambda n: print(n, flush=True))
announce = lambda: bridge.subscribed.wait() and print("subscribed", flush=True)  # noqa: E731
threading.Thread(target=announce, daemon=True).start()
bridge.run()
"""


def test_bridge_killed_before_acknowledging_gets_everything_redelivered(
    mqtt_settings: Settings, tmp_path: Path
) -> None:
    total = 50
    client_id = unique("bridge")
    # The first bridge cannot reach Kafka (nothing listens on that port), so it can never acknowledge.
    unreachable = mqtt_settings.model_dump(mode="json")
    unreachable["kafka"]["bootstrap_servers"] = f"127.0.0.1:{free_port()}"
    lines: list[str] = []
    with (tmp_path / "bridge1.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", BRIDGE_SCRIPT, json.dumps(unreachable), client_id],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    reader = threading.Thread(target=lambda: lines.extend(line.strip() for line in proc.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: "subscribed" in lines, timeout_s=30, what="the first bridge to subscribe")
        sink = MqttSink(mqtt_settings)
        for i in range(total):
            sink.send(message(reading(i)))
        assert sink.flush(30) == 0
        sink.close()
        wait_for(lambda: str(total) in lines, timeout_s=30, what=f"the first bridge to receive {total}")
    finally:
        proc.kill()  # SIGKILL: no clean shutdown, no acknowledgement
        proc.wait(10)

    # The same session again, through the CLI, with the real Kafka.
    env = {
        **os.environ,
        "MILLRACE_STATE_DIR": str(tmp_path / "state"),
        "MILLRACE_KAFKA__BOOTSTRAP_SERVERS": mqtt_settings.kafka.bootstrap_servers,
        "MILLRACE_MQTT__PORT": str(mqtt_settings.mqtt.port),
        "MILLRACE_MQTT__READINGS_TOPIC": mqtt_settings.mqtt.readings_topic,
        "MILLRACE_TOPICS__READINGS": mqtt_settings.topics.readings,
        "MILLRACE_TOPICS__DEAD_LETTER": mqtt_settings.topics.dead_letter,
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "millrace.cli.main",
            "iot",
            "mqtt-bridge",
            "--client-id",
            client_id,
            "--count",
            str(total),
            "--no-commands",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["bridge"]["received"] == total
    assert summary["bridge"]["redelivered"] == total
    assert summary["bridge"]["acked"] == total
    assert summary["delivered"] == total
    assert summary["by_sensor_type"] == {"temperature": total}
    seqs = seqs_in(mqtt_settings, total)
    assert sorted(seqs) == list(range(total))


def test_messages_queued_for_an_offline_bridge_survive_a_mosquitto_restart(
    stack: Stack, mqtt_settings: Settings
) -> None:
    from millrace.iot.mqtt_bridge import MqttBridge

    total = 300
    client_id = unique("bridge")
    first = MqttBridge(mqtt_settings, client_id=client_id, commands=False)
    first.connection.open()  # registers the persistent session and its subscription, then leaves
    wait_for(first.subscribed.is_set, timeout_s=10, what="the subscription")
    first.connection.close()
    sink = MqttSink(mqtt_settings)
    for i in range(total):
        sink.send(message(reading(i, device=2)))
    assert sink.flush(30) == 0
    sink.close()

    assert stack.manager.stop("mqtt", timeout_s=10)  # SIGTERM: Mosquitto saves its database
    stack.manager.start(mqtt_spec(stack.settings))

    with BridgeThread(mqtt_settings, client_id=client_id, commands=False, count=total) as runner:
        counters = runner.join()
    assert (counters.received, counters.readings, counters.acked) == (total, total, total)
    assert sorted(seqs_in(mqtt_settings, total)) == list(range(total))
