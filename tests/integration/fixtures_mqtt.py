"""Fixtures and helpers for the MQTT tests: a real Mosquitto started through millrace.runtime.mqtt.

Import the fixtures into a test module (``from tests.integration.fixtures_mqtt import mosquitto, ...``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from confluent_kafka.admin import NewTopic

from millrace.config import Settings
from millrace.iot.messages import Message
from millrace.iot.mqtt_bridge import BridgeCounters, MqttBridge
from millrace.kafka.admin import admin_client
from millrace.kafka.consumer import make_consumer
from millrace.records import UNITS, SensorReading
from millrace.runtime.mqtt import mqtt_spec
from millrace.runtime.process import ProcessRecord
from millrace.runtime.stack import Stack
from tests.helpers import unique, wait_for


@pytest.fixture(scope="session")
def mosquitto(stack: Stack) -> ProcessRecord:
    """Mosquitto on the stack's free runtime.mqtt_port (stopped with the stack at session end)."""
    return stack.manager.start(mqtt_spec(stack.settings))


@pytest.fixture
def mqtt_settings(stack: Stack, mosquitto: ProcessRecord) -> Settings:
    """The stack's settings with fresh Kafka topics and a fresh MQTT topic prefix for one test."""
    base = stack.settings
    topics = base.topics.model_copy(
        update={"readings": unique("mr"), "dead_letter": unique("md"), "device_commands": unique("mc")}
    )
    admin = admin_client(base.kafka.client_config())
    futures = admin.create_topics(
        [
            NewTopic(topics.readings, 3, 1),
            NewTopic(topics.dead_letter, 1, 1),
            NewTopic(topics.device_commands, 1, 1),
        ]
    )
    for future in futures.values():
        future.result(timeout=30)
    prefix = unique("s")
    mqtt = base.mqtt.model_copy(
        update={
            "port": base.runtime.mqtt_port,
            "readings_topic": f"{prefix}/+/+/+",
            "command_topic": prefix + "-cmd/{location}/{device_id}",
        }
    )
    return base.model_copy(update={"topics": topics, "mqtt": mqtt})


def reading(i: int, *, device: int = 1, sensor_type: str = "temperature", location: str = "loc-01") -> SensorReading:
    device_id = f"dev-{device:04d}"
    return SensorReading(
        sensor_id=f"{device_id}-{sensor_type}",
        device_id=device_id,
        sensor_type=sensor_type,
        value=round(20.0 + i * 0.25, 3),
        unit=UNITS[sensor_type],
        location=location,
        timestamp=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=i),
        sensor_model="TMP-117",
        battery_level=87.5,
        seq=i,
        ground_truth="normal",
    )


def message(r: SensorReading) -> Message:
    return Message(
        r.sensor_id,
        orjson.dumps(r.to_dict()),
        r.sensor_type,
        r.ground_truth or "normal",
        r.location,
        r.device_id,
    )


class BridgeThread:
    """An in-process bridge running in a thread until stopped (or its ``count`` is reached)."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        run_options = {k: options.pop(k) for k in ("count", "duration_s") if k in options}
        self.bridge = MqttBridge(settings, **options)
        self.stop = threading.Event()
        self.result: BridgeCounters | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, kwargs=run_options, daemon=True)

    def _run(self, **options: Any) -> None:
        try:
            self.result = self.bridge.run(self.stop, **options)
        except BaseException as exc:  # surfaced by join()
            self.error = exc

    def __enter__(self) -> BridgeThread:
        self._thread.start()
        wait_for(
            lambda: self.bridge.subscribed.is_set() or self.error,
            timeout_s=30,
            what="the bridge to subscribe",
        )
        if self.error:
            raise self.error
        return self

    def join(self, timeout_s: float = 60.0) -> BridgeCounters:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"bridge did not finish: {self.bridge.summary()}"
        if self.error:
            raise self.error
        assert self.result is not None
        return self.result

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(60)


def consume_until(
    settings: Settings,
    topic: str,
    done: Callable[[list[Any]], bool],
    *,
    timeout_s: float = 60.0,
    what: str = "",
) -> list[Any]:
    """Consume ``topic`` from the start until ``done(messages)``; one more short poll catches extras."""
    consumer = make_consumer(settings.kafka.client_config(), unique("g"))
    consumer.subscribe([topic])
    got: list[Any] = []

    def step() -> bool:
        got.extend(m for m in consumer.consume(1000, 0.5) if m.error() is None)
        return done(got)

    try:
        wait_for(step, timeout_s=timeout_s, what=what or f"messages on {topic}")
        got.extend(m for m in consumer.consume(1000, 1.0) if m.error() is None)
    finally:
        consumer.close()
    return got


def decoded(messages: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(m.value()) for m in messages]


def iter_messages(readings: list[SensorReading]) -> Iterator[Message]:
    return (message(r) for r in readings)
