"""Pure MQTT logic: topic/payload mapping, topics for publishing, commands, Mosquitto config, CONNECT bytes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from millrace.config import load_settings
from millrace.errors import MillraceError, MissingToolError
from millrace.iot.commands import CommandError, parse_command
from millrace.iot.mqtt_payload import PayloadError, reading_from_mqtt, topic_for, topic_levels
from millrace.records import SensorReading
from millrace.runtime import mqtt as runtime_mqtt

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
TOPIC = "sensors/loc-01/dev-0001/temperature"


def test_full_json_reading_round_trips_unchanged() -> None:
    original = SensorReading(
        sensor_id="dev-0009-vibration",
        device_id="dev-0009",
        sensor_type="vibration",
        value=0.42,
        unit="g",
        location="loc-02",
        timestamp=datetime(2026, 1, 1, 12, tzinfo=UTC),
        status="ok",
        sensor_model="ADXL-355",
        battery_level=55.0,
        seq=17,
        ground_truth="spike",
    )
    got = reading_from_mqtt("sensors/loc-02/dev-0009/vibration", orjson.dumps(original.to_dict()), received_at=NOW)
    assert got == original


def test_bare_number_takes_the_rest_from_the_topic() -> None:
    got = reading_from_mqtt(TOPIC, b" 21.5\n", received_at=NOW)
    assert got == SensorReading(
        sensor_id="dev-0001-temperature",
        device_id="dev-0001",
        sensor_type="temperature",
        value=21.5,
        unit="°C",
        location="loc-01",
        timestamp=NOW,
    )


def test_value_object_with_epoch_timestamps() -> None:
    seconds = reading_from_mqtt(TOPIC, b'{"value": 3, "timestamp": 1767225600}', received_at=NOW)
    millis = reading_from_mqtt(TOPIC, b'{"value": 3, "timestamp": 1767225600500}', received_at=NOW)
    assert seconds.timestamp == datetime(2026, 1, 1, tzinfo=UTC)
    assert millis.timestamp == datetime(2026, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)
    assert seconds.value == 3.0 and isinstance(seconds.value, float)


def test_payload_fields_win_over_the_topic() -> None:
    got = reading_from_mqtt(TOPIC, b'{"value": 1, "device_id": "dev-0002", "location": "loc-09"}', received_at=NOW)
    assert (got.device_id, got.location, got.sensor_id) == ("dev-0002", "loc-09", "dev-0002-temperature")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty payload"),
        (b"   ", "empty payload"),
        (b"\xff\xfe", "payload is not UTF-8"),
        (b"{bad", "invalid JSON"),
        (b"hot", "neither a number nor a JSON object"),
        (b"[1]", "payload is an array, expected a JSON object or a number"),
        (b'"21.5"', "payload is a string"),
        (b"null", "payload is null"),
        (b"true", "payload is a boolean"),
        (b'{"temperature": 1}', "missing field 'value'"),
        (b'{"sensor_id": "s", "value": 1, "sensor_type": "current"}', "missing field 'timestamp' in a full reading"),
        (b'{"sensor_id": "s", "value": 1, "timestamp": 1767225600}', "missing field 'sensor_type'"),
        (b'{"value": "1"}', "field 'value' is a string, expected a number"),
        (b'{"value": null}', "field 'value' is null"),
        (b'{"value": 1e999}', "infinity"),
        (b'{"value": 1, "timestamp": "noon"}', "field 'timestamp' is not ISO 8601"),
        (b'{"value": 1, "timestamp": [1]}', "field 'timestamp' is an array"),
        (b'{"value": 1, "seq": "7"}', "field 'seq' is a string, expected an integer"),
        (b'{"value": 1, "sensor_id": 5, "timestamp": 1, "sensor_type": "x"}', "field 'sensor_id' is a int"),
        (b'{"value": 1, "metadata": []}', "field 'metadata' is an array"),
        (b'{"value": 1, "metadata": {"battery_level": "full"}}', "field 'metadata.battery_level' is a string"),
    ],
)
def test_malformed_payloads_raise_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as info:
        reading_from_mqtt(TOPIC, payload, received_at=NOW)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    ("topic", "reason"),
    [("dev-0001/temperature", "fewer than 3 levels"), ("sensors//dev-0001/temperature", "empty location")],
)
def test_bad_topics(topic: str, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        topic_levels(topic)


def test_topic_for_fills_the_wildcards() -> None:
    assert topic_for("sensors/+/+/+", "loc-01", "dev-0001", "current") == "sensors/loc-01/dev-0001/current"
    assert topic_for("plant/7/#", "loc-01", "dev-0001", "current") == "plant/7/loc-01/dev-0001/current"
    assert topic_for("a/+/b/+/+", "l", "d", "t") == "a/l/b/d/t"
    assert topic_for("$share/bridges/sensors/+/+/+", "l", "d", "t") == "sensors/l/d/t"
    with pytest.raises(ValueError, match="three"):
        topic_for("sensors/+", "l", "d", "t")


def test_parse_command() -> None:
    raw = b'{"device_id": "dev-0001", "location": "loc-01", "command": "reboot", "args": {"delay_s": 3}}'
    command = parse_command(raw, default_id="t@0:5")
    assert command.topic("commands/{location}/{device_id}") == "commands/loc-01/dev-0001"
    payload = orjson.loads(command.payload())
    assert payload["command_id"] == "t@0:5"
    assert payload["args"] == {"delay_s": 3}
    assert payload["command"] == "reboot"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"nope", "invalid JSON"),
        (b"[]", "not a JSON object"),
        (b'{"location": "l", "command": "c"}', "missing or empty field 'device_id'"),
        (b'{"device_id": "d/1", "location": "l", "command": "c"}', "topic separator"),
        (b'{"device_id": "d", "location": "+", "command": "c"}', "wildcard"),
        (b'{"device_id": "d", "location": "l", "command": "c", "args": [1]}', "'args' is not an object"),
    ],
)
def test_bad_commands(raw: bytes, reason: str) -> None:
    with pytest.raises(CommandError, match=reason):
        parse_command(raw)


def test_mosquitto_config(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path, runtime={"mqtt_port": 18830})
    text = runtime_mqtt.render_config(settings, password_file=None)
    assert "listener 18830 127.0.0.1\n" in text
    assert "persistence true\n" in text
    assert f"persistence_location {(tmp_path / 'mqtt' / 'data').resolve()}/\n" in text
    assert "allow_anonymous true\n" in text
    secured = runtime_mqtt.render_config(settings, password_file=tmp_path / "passwd")
    assert "allow_anonymous false\n" in secured
    assert f"password_file {(tmp_path / 'passwd').resolve()}\n" in secured


def test_tls_listener_needs_certificate_and_key(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path, runtime={"mqtt_tls_port": 8883})
    with pytest.raises(MillraceError, match="mqtt_tls_certfile"):
        runtime_mqtt.render_config(settings, password_file=None)
    settings = load_settings(
        state_dir=tmp_path,
        runtime={"mqtt_tls_port": 8883, "mqtt_tls_certfile": "/x/server.crt", "mqtt_tls_keyfile": "/x/server.key"},
    )
    text = runtime_mqtt.render_config(settings, password_file=None)
    assert "listener 8883 127.0.0.1\ncertfile /x/server.crt\nkeyfile /x/server.key\n" in text


def test_connect_packet_bytes() -> None:
    packet = runtime_mqtt.connect_packet("c1", "u", "p")
    # fixed header, remaining length, "MQTT", level 4, flags user+password+clean, keep-alive 10, payload
    assert packet == bytes([0x10, 20]) + b"\x00\x04MQTT\x04\xc2\x00\x0a" + b"\x00\x02c1" + b"\x00\x01u" + b"\x00\x01p"
    assert runtime_mqtt._remaining_length(321) == bytes([0xC1, 0x02])


def test_missing_mosquitto_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(runtime_mqtt, "_SBIN_DIRS", (str(tmp_path),))
    with pytest.raises(MissingToolError, match="apt-get install mosquitto"):
        runtime_mqtt.mosquitto_binary()


class _FakeProducer:
    def __init__(self) -> None:
        from millrace.kafka.stats import DeliveryStats

        self.stats = DeliveryStats()
        self.produced: list[tuple[str, bytes, bytes, object]] = []

    def produce(self, topic: str, value: bytes, key: bytes, *, on_delivery: object = None) -> None:
        self.produced.append((topic, value, key, on_delivery))


class _FakeClient:
    def __init__(self) -> None:
        self.acks: list[tuple[int, int]] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append((mid, qos))


class _Msg:
    def __init__(self, mid: int, topic: str, payload: bytes, dup: bool = False) -> None:
        self.mid, self.topic, self.payload, self.dup, self.qos = mid, topic, payload, dup, 1


def _bridge(tmp_path: Path):  # type: ignore[no-untyped-def]
    from millrace.iot.mqtt_bridge import MqttBridge

    bridge = MqttBridge(load_settings(state_dir=tmp_path), producer=_FakeProducer(), commands=False)  # type: ignore[arg-type]
    client = _FakeClient()
    bridge.connection.client = client  # type: ignore[assignment]
    bridge.connection.generation = 1
    bridge.connection.connected.set()
    return bridge, client


def test_bridge_acks_only_after_kafka_delivery_and_only_on_the_same_connection(tmp_path: Path) -> None:
    bridge, client = _bridge(tmp_path)
    producer = bridge.producer
    bridge._on_message(None, None, _Msg(7, TOPIC, b"21.5"))
    bridge._on_message(None, None, _Msg(8, TOPIC, b"{oops", dup=True))
    assert client.acks == []  # nothing acknowledged before Kafka confirms
    (t1, v1, k1, cb1), (t2, v2, k2, cb2) = producer.produced
    assert (t1, k1) == ("millrace.iot.readings", b"dev-0001-temperature")
    assert orjson.loads(v1)["value"] == 21.5
    assert (t2, k2) == ("millrace.iot.dead-letter", f"mqtt:{TOPIC}#8".encode())
    cb1(None, None)
    assert client.acks == [(7, 1)]
    bridge.connection.generation = 2  # the connection dropped and came back: mid 8 belongs to the old one
    cb2(None, None)
    assert client.acks == [(7, 1)]
    c = bridge.counters
    assert (c.received, c.readings, c.dead_letters, c.acked, c.not_acked_stale, c.redelivered) == (2, 1, 1, 1, 1, 1)


def test_bridge_produces_a_failed_delivery_again_and_respects_its_count(tmp_path: Path) -> None:
    from confluent_kafka import KafkaError

    bridge, client = _bridge(tmp_path)
    producer = bridge.producer
    bridge._limit = 1
    bridge._on_message(None, None, _Msg(1, TOPIC, b"1"))
    bridge._on_message(None, None, _Msg(2, TOPIC, b"2"))  # over the count: left unacked for the next session
    assert len(producer.produced) == 1
    producer.produced[0][3](KafkaError(KafkaError._MSG_TIMED_OUT), None)
    assert client.acks == [] and bridge.counters.retried == 1
    bridge._retry_failed()
    assert len(producer.produced) == 2 and producer.produced[1][:3] == producer.produced[0][:3]
    producer.produced[1][3](None, None)
    assert client.acks == [(1, 1)]
    assert bridge._done(1)
