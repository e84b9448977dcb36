"""The control channel: device commands from a Kafka topic to each device's MQTT command topic.

A command on ``settings.topics.device_commands`` is JSON ``{"device_id", "location", "command", "args"}``
(``args`` optional, an object). It is published with QoS 1 to ``settings.mqtt.command_topic`` formatted
with the location and device id (default ``commands/{location}/{device_id}``); the Kafka offset is committed
only after the broker acknowledged every publish of the batch, so a crash re-sends rather than loses
(devices may see a command twice and should treat ``command_id`` as idempotency key). A message that is not
a valid command goes to the dead-letter topic with its ``partition:offset``.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import Consumer

from millrace import telemetry
from millrace.config import Settings
from millrace.iot.mqtt_client import Connection
from millrace.kafka.consumer import count_consumed, make_consumer
from millrace.kafka.producer import ReliableProducer
from millrace.records import DeadLetter, to_iso

log = logging.getLogger(__name__)

STAGE = "mqtt-commands"


class CommandError(ValueError):
    """A Kafka message that is not a device command; ``str(exc)`` is the dead-letter reason."""


@dataclass(frozen=True)
class DeviceCommand:
    device_id: str
    location: str
    command: str
    args: dict[str, Any] = field(default_factory=dict)
    command_id: str = ""
    issued_at: str = ""

    def topic(self, template: str) -> str:
        return template.format(location=self.location, device_id=self.device_id)

    def payload(self) -> bytes:
        return orjson.dumps(
            {
                "command_id": self.command_id,
                "device_id": self.device_id,
                "location": self.location,
                "command": self.command,
                "args": self.args,
                "issued_at": self.issued_at,
            }
        )


def parse_command(raw: bytes, *, default_id: str = "") -> DeviceCommand:
    """A DeviceCommand from the Kafka message value, or CommandError saying what is wrong."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CommandError(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CommandError("command is not a JSON object")
    for name in ("device_id", "location", "command"):
        value = data.get(name)
        if not isinstance(value, str) or not value:
            raise CommandError(f"missing or empty field {name!r}")
        if any(ch in value for ch in "/+#"):
            raise CommandError(f"field {name!r} contains an MQTT topic separator or wildcard: {value!r}")
    args = data.get("args") or {}
    if not isinstance(args, dict):
        raise CommandError("field 'args' is not an object")
    return DeviceCommand(
        device_id=data["device_id"],
        location=data["location"],
        command=data["command"],
        args=args,
        command_id=str(data.get("command_id") or default_id or uuid.uuid4().hex),
        issued_at=str(data.get("issued_at") or to_iso(datetime.now(UTC))),
    )


class CommandRelay:
    """Consume device commands and publish them to MQTT; see the module docstring for the guarantees."""

    def __init__(
        self,
        settings: Settings,
        *,
        client_id: str = "millrace-bridge-commands",
        group_id: str = "millrace-mqtt-commands",
        producer: ReliableProducer,
    ) -> None:
        self.settings = settings
        self.group_id = group_id
        self.producer = producer  # for dead letters; shared with the bridge
        self.published = 0
        self.dead_letters = 0
        self.connection = Connection(settings.mqtt, client_id)
        self.connection.client.on_publish = self._on_publish
        self._acked: set[int] = set()
        self._cond = threading.Condition()
        self._consumer: Consumer | None = None

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._cond:
            self._acked.add(mid)
            self._cond.notify_all()

    def open(self) -> None:
        self.connection.open()
        self._consumer = make_consumer(self.settings.kafka.client_config(), self.group_id)
        self._consumer.subscribe([self.settings.topics.device_commands])

    def run(self, stop: threading.Event) -> None:
        """Relay until ``stop`` is set (the bridge runs this in a thread)."""
        assert self._consumer is not None, "call open() first"
        while not stop.is_set():
            batch = self._consumer.consume(100, 0.2)
            messages = [m for m in batch if m.error() is None]
            count_consumed(messages, self.group_id)
            for m in batch:
                if m.error() is not None:
                    log.warning("command consumer: %s", m.error())
            if messages and self._relay(messages, stop):
                self._consumer.commit(asynchronous=False)

    def _relay(self, messages: list[Any], stop: threading.Event) -> bool:
        """Publish a batch; True once every publish and dead letter is acknowledged.

        Waits as long as it takes (paho re-sends QoS 1 publishes after a reconnect; a failed dead letter is
        produced again); False only when ``stop`` is set first, in which case nothing is committed and the
        batch comes again next start.
        """
        template = self.settings.mqtt.command_topic
        mids = []
        letters: list[tuple[bytes, str]] = []
        for msg in messages:
            position = f"{msg.partition()}:{msg.offset()}"
            try:
                command = parse_command(msg.value() or b"", default_id=f"{msg.topic()}@{position}")
            except CommandError as exc:
                raw = (msg.value() or b"").decode("utf-8", "replace")
                letter = DeadLetter(str(exc), STAGE, msg.topic(), position, raw)
                letters.append((orjson.dumps(letter.to_dict()), position))
                continue
            topic = command.topic(template)
            info = self.connection.client.publish(topic, command.payload(), qos=self.settings.mqtt.qos)
            mids.append(info.mid)
            log.info("command %s for %s -> %s", command.command, command.device_id, topic)
        if not self._dead_letters(letters, stop):
            return False
        if self.settings.mqtt.qos > 0:
            with self._cond:
                while not all(mid in self._acked for mid in mids):
                    if stop.is_set():
                        log.warning("stopping with unacknowledged commands; they will be sent again")
                        return False
                    self._cond.wait(0.1)
                self._acked.clear()
        self.published += len(mids)
        self.dead_letters += len(letters)
        if letters:
            telemetry.DEAD_LETTERS.labels("bad_command").inc(len(letters))
        return True

    def _dead_letters(self, letters: list[tuple[bytes, str]], stop: threading.Event) -> bool:
        """Produce the batch's dead letters and wait for their delivery (not for the bridge's readings)."""
        todo = list(letters)
        while todo:
            results: dict[int, bool] = {}

            for index, (value, key) in enumerate(todo):
                self.producer.produce(self.settings.topics.dead_letter, value, key, on_delivery=_record(results, index))
            while len(results) < len(todo):
                if stop.is_set():
                    return False
                self.producer.poll(0.05)
            todo = [item for index, item in enumerate(todo) if not results[index]]
        return True

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        self.connection.close()


def _record(results: dict[int, bool], index: int) -> Callable[[Any, Any], None]:
    """A delivery callback noting whether message ``index`` of a batch reached Kafka."""

    def delivered(err: Any, msg: Any) -> None:
        results[index] = err is None

    return delivered
