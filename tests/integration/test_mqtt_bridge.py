"""MQTT -> Kafka through a real Mosquitto and a real broker: exact contents, dead letters, commands."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_mqtt are parameters here)

from __future__ import annotations

import re
import threading
from collections import defaultdict

import orjson
import pytest

from millrace.config import Settings
from millrace.iot.mqtt_client import Connection
from millrace.iot.mqtt_sink import MqttSink
from millrace.kafka.producer import make_producer
from millrace.records import SENSOR_TYPES
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


def publish_raw(settings: Settings, items: list[tuple[str, bytes]]) -> None:
    """Publish (topic, payload) pairs with QoS 1 and wait until the broker acknowledged each."""
    conn = Connection(settings.mqtt, unique("pub"))
    conn.open()
    try:
        infos = [conn.client.publish(topic, payload, qos=1) for topic, payload in items]
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()
    finally:
        conn.close()


def test_readings_reach_kafka_exactly_with_their_contents(mqtt_settings: Settings) -> None:
    prefix = mqtt_settings.mqtt.readings_topic.split("/")[0]
    readings = [reading(i, device=1 + (i // 6) % 4, sensor_type=SENSOR_TYPES[i % 6]) for i in range(600)]
    with BridgeThread(mqtt_settings, client_id=unique("bridge"), commands=False, count=602) as runner:
        sink = MqttSink(mqtt_settings)
        try:
            for r in readings:
                sink.send(message(r))
            assert sink.flush(30) == 0
        finally:
            sink.close()
        assert sink.stats.delivered == 600
        # Short payloads: the rest of the reading comes from the topic.
        publish_raw(
            mqtt_settings,
            [
                (f"{prefix}/loc-02/dev-0042/pressure", b"1013.25"),
                (
                    f"{prefix}/loc-02/dev-0042/humidity",
                    b'{"value": 41.5, "timestamp": "2026-01-02T03:04:05.678Z"}',
                ),
            ],
        )
        counters = runner.join()
    assert (counters.received, counters.readings, counters.dead_letters, counters.acked) == (602, 602, 0, 602)
    assert counters.by_type["temperature"] == 100

    got = consume_until(mqtt_settings, mqtt_settings.topics.readings, lambda ms: len(ms) >= 602, what="602 readings")
    assert len(got) == 602
    by_key = {m.key().decode(): None for m in got}
    assert len(by_key) == 4 * 6 + 2
    values = decoded(got)
    full = [v for v in values if v["device_id"] != "dev-0042"]
    assert sorted(full, key=lambda v: v["seq"]) == [r.to_dict() for r in readings]
    for m, v in zip(got, values, strict=True):
        assert m.key().decode() == v["sensor_id"]
    per_sensor: dict[str, list[int]] = defaultdict(list)
    for v in full:
        per_sensor[v["sensor_id"]].append(v["seq"])
    assert all(seqs == sorted(seqs) for seqs in per_sensor.values()), "per-sensor order kept"
    short = {v["sensor_type"]: v for v in values if v["device_id"] == "dev-0042"}
    assert short["pressure"]["value"] == 1013.25
    assert short["pressure"]["sensor_id"] == "dev-0042-pressure"
    assert short["pressure"]["location"] == "loc-02"
    assert short["pressure"]["unit"] == "hPa"
    assert short["humidity"]["value"] == 41.5
    assert short["humidity"]["timestamp"] == "2026-01-02T03:04:05.678Z"


MALFORMED = [
    ("loc-01/dev-0001/temperature", b"{not json", "invalid JSON"),
    ("loc-01/dev-0001/temperature", b"hot", "neither a number nor a JSON object"),
    ("loc-01/dev-0001/temperature", b"", "empty payload"),
    ("loc-01/dev-0001/temperature", b"\xff\xfe\x00", "not UTF-8"),
    ("loc-01/dev-0001/temperature", b'{"value": "21.5"}', "field 'value' is a string"),
    ("loc-01/dev-0001/temperature", b'{"temperature": 21.5}', "missing field 'value'"),
    ("loc-01/dev-0001/temperature", b"[1, 2]", "payload is an array"),
    ("loc-01/dev-0001/temperature", b'{"value": 1, "timestamp": "yesterday"}', "not ISO 8601"),
    ("loc-01/dev-0001/temperature", b'{"value": true}', "field 'value' is a boolean"),
    ("dev-0001/temperature", b"21.5", "fewer than 3 levels"),
]


def test_malformed_payloads_reach_the_dead_letter_topic_with_reason_and_position(
    mqtt_settings: Settings,
) -> None:
    prefix = mqtt_settings.mqtt.readings_topic.split("/")[0]
    # The two-level topic still matches a 3-level pattern only when the prefix is one of the levels.
    items = [(f"{prefix}/{topic}", payload) for topic, payload, _ in MALFORMED[:-1]]
    items.append((f"{prefix}//dev-0001/temperature", b"21.5"))  # empty location level
    items.append((f"{prefix}/loc-01/dev-0001/temperature", b"22.5"))  # one good reading among them
    with BridgeThread(mqtt_settings, client_id=unique("bridge"), commands=False, count=len(items)) as runner:
        publish_raw(mqtt_settings, items)
        counters = runner.join()
    assert (counters.readings, counters.dead_letters, counters.acked) == (1, len(items) - 1, len(items))

    letters = consume_until(mqtt_settings, mqtt_settings.topics.dead_letter, lambda ms: len(ms) >= len(items) - 1)
    assert len(letters) == len(items) - 1
    values = decoded(letters)
    expected = [reason for _, _, reason in MALFORMED[:-1]] + ["empty location level"]
    for value, msg, (topic, payload), reason in zip(values, letters, items, expected, strict=False):
        assert reason in value["reason"], (reason, value["reason"])
        assert value["stage"] == "mqtt-bridge"
        assert value["source"] == topic
        assert re.fullmatch(re.escape(f"mqtt:{topic}#") + r"\d+", value["position"])
        assert msg.key().decode() == value["position"]
        assert value["raw"] == payload.decode("utf-8", "replace")
    readings = consume_until(mqtt_settings, mqtt_settings.topics.readings, lambda ms: len(ms) >= 1)
    assert [v["value"] for v in decoded(readings)] == [22.5]


def test_a_command_on_kafka_reaches_the_devices_mqtt_command_topic(mqtt_settings: Settings) -> None:
    received: list[tuple[str, dict[str, object]]] = []
    listener = Connection(mqtt_settings.mqtt, unique("device"))
    listener.client.on_message = lambda c, u, m: received.append((m.topic, orjson.loads(m.payload)))
    command_topic = mqtt_settings.mqtt.command_topic.format(location="loc-03", device_id="dev-0007")
    listener.on_connect_hooks.append(lambda present: listener.client.subscribe(command_topic, qos=1))
    listener.open()
    group = unique("cmd-group")
    # Readings keep flowing through the bridge meanwhile: the relay must not wait for them.
    flowing = threading.Event()
    sent = 0

    def publish_readings() -> None:
        nonlocal sent
        sink = MqttSink(mqtt_settings)
        while not flowing.is_set():
            sink.send(message(reading(sent)))
            sent += 1
            if sent % 50 == 0:
                flowing.wait(0.05)
        sink.flush(30)
        sink.close()

    try:
        with BridgeThread(mqtt_settings, client_id=unique("bridge"), command_group=group) as runner:
            publisher = threading.Thread(target=publish_readings, daemon=True)
            publisher.start()
            wait_for(lambda: runner.bridge.counters.acked >= 100, timeout_s=30, what="readings flowing")
            producer = make_producer(mqtt_settings.kafka.client_config())
            command = {
                "device_id": "dev-0007",
                "location": "loc-03",
                "command": "set_interval",
                "args": {"interval_s": 5},
            }
            producer.produce(mqtt_settings.topics.device_commands, orjson.dumps(command), "dev-0007")
            producer.produce(mqtt_settings.topics.device_commands, b'{"command": "reboot"}', "bad")
            assert producer.flush(30) == 0
            wait_for(lambda: received, timeout_s=30, what="the command on MQTT")
            from millrace.kafka.consumer import make_consumer

            def committed() -> bool:
                from confluent_kafka import TopicPartition

                consumer = make_consumer(mqtt_settings.kafka.client_config(), group)
                try:
                    parts = consumer.committed([TopicPartition(mqtt_settings.topics.device_commands, 0)], timeout=5)
                finally:
                    consumer.close()
                return parts[0].offset == 2

            wait_for(committed, timeout_s=30, what="the command offsets committed")
            assert publisher.is_alive(), "readings were still flowing when the commands were committed"
            flowing.set()
            publisher.join(30)
    finally:
        flowing.set()
        listener.close()
    assert len(received) == 1
    topic, payload = received[0]
    assert topic == command_topic
    assert {k: payload[k] for k in ("device_id", "location", "command", "args")} == command
    assert payload["command_id"] == f"{mqtt_settings.topics.device_commands}@0:0"
    letters = decoded(consume_until(mqtt_settings, mqtt_settings.topics.dead_letter, lambda ms: len(ms) >= 1))
    assert len(letters) == 1
    assert letters[0]["stage"] == "mqtt-commands"
    assert letters[0]["position"] == "0:1"
    assert "missing or empty field 'device_id'" in letters[0]["reason"]


def test_simulator_over_mqtt_every_malformed_variant_is_a_dead_letter(mqtt_settings: Settings) -> None:
    from collections import Counter

    from millrace.iot.faults import MALFORMED_VARIANTS, classify_malformed
    from millrace.iot.fleet import FleetConfig
    from millrace.iot.simulator import Simulator

    cfg = FleetConfig(devices=4, locations=2, seed=7, malformed=0.1, impossible=0.02, duplicate=0.02)
    messages = list(Simulator(cfg, count=600).messages())
    bad = [m for m in messages if m.kind == "fault:malformed"]
    good = [m for m in messages if m.kind != "fault:malformed"]
    assert {classify_malformed(m.value) for m in bad} == set(MALFORMED_VARIANTS)

    with BridgeThread(mqtt_settings, client_id=unique("bridge"), commands=False, count=len(messages)) as runner:
        sink = MqttSink(mqtt_settings)
        try:
            sink.send_batch(messages)
            assert sink.flush(30) == 0
        finally:
            sink.close()
        counters = runner.join()
    assert (counters.readings, counters.dead_letters) == (len(good), len(bad))
    assert counters.by_type == Counter(m.sensor_type for m in good)

    letters = consume_until(mqtt_settings, mqtt_settings.topics.dead_letter, lambda ms: len(ms) >= len(bad))
    values = decoded(letters)
    assert [v["raw"] for v in values] == [m.value.decode("utf-8", "replace") for m in bad]
    assert all(v["reason"] and v["position"].startswith("mqtt:") and v["stage"] == "mqtt-bridge" for v in values)
    readings = consume_until(mqtt_settings, mqtt_settings.topics.readings, lambda ms: len(ms) >= len(good))
    assert len(readings) == len(good)
    assert Counter(v["ground_truth"] for v in decoded(readings)) == Counter(
        orjson.loads(m.value)["ground_truth"] for m in good
    )


def test_missing_kafka_topic_fails_fast_with_the_fix(mqtt_settings: Settings) -> None:
    from millrace.errors import MillraceError
    from millrace.iot.mqtt_bridge import MqttBridge

    missing = unique("absent")
    settings = mqtt_settings.model_copy(
        update={"topics": mqtt_settings.topics.model_copy(update={"readings": missing})}
    )
    with pytest.raises(MillraceError, match=f"{missing} do not exist: run `millrace topics apply`"):
        MqttBridge(settings, commands=False).run(count=1)


def test_two_bridges_share_the_load_on_a_shared_subscription(mqtt_settings: Settings) -> None:
    pattern = mqtt_settings.mqtt.readings_topic
    shared = mqtt_settings.model_copy(
        update={"mqtt": mqtt_settings.mqtt.model_copy(update={"readings_topic": f"$share/{unique('g')}/{pattern}"})}
    )
    total = 400
    with (
        BridgeThread(shared, client_id=unique("bridge-a"), commands=False) as a,
        BridgeThread(shared, client_id=unique("bridge-b"), commands=False) as b,
    ):
        sink = MqttSink(shared)
        try:
            for i in range(total):
                sink.send(message(reading(i, device=1 + i % 8)))
            assert sink.flush(30) == 0
        finally:
            sink.close()
        wait_for(lambda: a.bridge.counters.acked + b.bridge.counters.acked >= total, timeout_s=30, what="all acked")
    assert a.bridge.counters.received + b.bridge.counters.received == total
    assert a.bridge.counters.received > 0 and b.bridge.counters.received > 0
    got = consume_until(mqtt_settings, mqtt_settings.topics.readings, lambda ms: len(ms) >= total)
    assert sorted(v["seq"] for v in decoded(got)) == list(range(total))
