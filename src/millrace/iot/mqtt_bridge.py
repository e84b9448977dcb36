"""The MQTT -> Kafka bridge: readings from ``sensors/<location>/<device>/<type>`` into the readings topic.

Delivery guarantee: at least once. Messages arrive with QoS 1 on a persistent session (fixed client id,
clean start off) and paho's *manual* acknowledgement; a message is PUBACKed only from the Kafka delivery
callback, i.e. after the broker stored it with acks=all. If the bridge dies first, Mosquitto still holds
the message for the session and redelivers it on the next connect. An acknowledgement due on a connection
that has since dropped is not sent (packet ids are per connection): the broker redelivers that message, so
Kafka may see it twice, never zero times.

A payload that is not a reading goes to the dead-letter topic (reason, ``mqtt:<topic>#<mid>``, the raw
bytes) and is acknowledged once that dead letter is delivered. The bridge also runs the control channel
(:mod:`millrace.iot.commands`) unless told not to.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from confluent_kafka import KafkaError, Message

from millrace import telemetry
from millrace.config import Settings
from millrace.errors import MillraceError
from millrace.iot.mqtt_client import Connection
from millrace.iot.mqtt_payload import PayloadError, reading_from_mqtt
from millrace.kafka.admin import list_topics
from millrace.kafka.producer import ReliableProducer, make_producer
from millrace.kafka.stats import DeliveryStats
from millrace.records import DeadLetter

log = logging.getLogger(__name__)

STAGE = "mqtt-bridge"


@dataclass
class BridgeCounters:
    """What the bridge did with the MQTT messages it received (the Kafka side is in ``DeliveryStats``)."""

    received: int = 0
    readings: int = 0
    dead_letters: int = 0
    acked: int = 0
    redelivered: int = 0  # arrived with the DUP flag: a resend after a reconnect or restart
    not_acked_stale: int = 0  # delivered to Kafka after their connection dropped; the broker will resend
    retried: int = 0  # Kafka deliveries that failed and were produced again
    by_type: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "readings": self.readings,
            "dead_letters": self.dead_letters,
            "acked": self.acked,
            "redelivered": self.redelivered,
            "not_acked_stale": self.not_acked_stale,
            "retried": self.retried,
            "by_type": dict(self.by_type),
            "dead_letter_reasons": dict(self.by_reason),
        }


@dataclass(frozen=True)
class _Pending:
    generation: int
    mid: int
    qos: int
    topic: str
    key: bytes
    value: bytes
    label: str
    sensor_type: str  # for live statistics
    kind: str  # ground truth of the reading ("unlabelled" without one) or "dead-letter"
    reason: str = ""  # a dead letter's countable reason (millrace_dead_letters_total)


class Recorder(Protocol):  # millrace.iot.live_stats.LiveStats
    def record(self, msg: Any) -> None: ...


class MqttBridge:
    """Subscribe to ``settings.mqtt.readings_topic`` and produce readings to ``settings.topics.readings``.

    Run with :meth:`run` (blocking; returns when ``stop`` is set, ``duration_s`` passed or ``count``
    messages were handled and acknowledged). ``on_received`` is called in paho's network thread for every
    accepted message (a hook for progress displays and tests).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client_id: str = "millrace-bridge",
        commands: bool = True,
        command_group: str = "millrace-mqtt-commands",
        stats: DeliveryStats | None = None,
        producer: ReliableProducer | None = None,
        on_received: Callable[[int], None] | None = None,
        recorder: Recorder | None = None,
        check_topics: bool = True,
    ) -> None:
        self.settings = settings
        self._check_topics = check_topics
        self.client_id = client_id
        self.stats = stats or DeliveryStats()
        self.counters = BridgeCounters()
        k = settings.kafka
        self.producer = producer or make_producer(
            k.client_config(),
            compression=k.compression,
            linger_ms=min(k.linger_ms, 5),
            batch_size=k.batch_size,
        )
        self.producer.stats = self.stats
        # MQTT 3.1.1 here: paho builds and clears an MQTT 5 Properties object for every PUBLISH, about 16 %
        # of the network thread's time in a profile; a 3.1.1 session with clean session off is just as
        # persistent. The broker's max_inflight_messages is then the delivery window (1000 in the managed
        # config; Mosquitto's default is 20).
        self._lock = threading.Lock()
        self.connection = Connection(
            settings.mqtt, client_id, persistent=True, manual_ack=True, mqtt5=False, state_lock=self._lock
        )
        self.connection.client.on_message = self._on_message
        self.connection.client.on_subscribe = self._on_subscribe
        self.subscribed = threading.Event()  # set once the broker confirmed the subscription (SUBACK)
        self.connection.on_connect_hooks.append(self._subscribe)
        self._accepting = True
        self._limit: int | None = None
        self._in_flight = 0
        self._retry: list[_Pending] = []
        self._on_received = on_received
        self._recorder = recorder
        self.relay: Any = None  # the CommandRelay while run() runs with commands on
        self._commands = commands
        self._command_group = command_group

    # -- MQTT side (paho network thread) -------------------------------------------------------------

    def _subscribe(self, session_present: bool) -> None:
        pattern, qos = self.settings.mqtt.readings_topic, self.settings.mqtt.qos
        self.connection.client.subscribe(pattern, qos=qos)
        log.info("subscribed to %s (QoS %d)", pattern, qos)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        if any(reason.is_failure for reason in reasons):
            log.error("MQTT broker refused the subscription to %s: %s", self.settings.mqtt.readings_topic, reasons)
            return
        self.subscribed.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            if not self._accepting or (self._limit is not None and self.counters.received >= self._limit):
                return  # not acknowledged: the broker keeps it for the next session
            self.counters.received += 1
            received = self.counters.received
            if msg.dup:
                self.counters.redelivered += 1
            self._in_flight += 1
        topic = msg.topic
        generation = self.connection.generation
        try:
            reading = reading_from_mqtt(topic, msg.payload, received_at=datetime.now(UTC))
        except PayloadError as exc:
            position = f"mqtt:{topic}#{msg.mid}"
            letter = DeadLetter(str(exc), STAGE, topic, position, msg.payload.decode("utf-8", "replace"))
            pending = _Pending(
                generation,
                msg.mid,
                msg.qos,
                self.settings.topics.dead_letter,
                position.encode(),
                orjson.dumps(letter.to_dict()),
                "dead-letter",
                "(dead letter)",
                "dead-letter",
                _reason_kind(str(exc)),
            )
            with self._lock:
                self.counters.by_reason[_reason_kind(str(exc))] += 1
        else:
            pending = _Pending(
                generation,
                msg.mid,
                msg.qos,
                self.settings.topics.readings,
                reading.sensor_id.encode(),
                orjson.dumps(reading.to_dict()),
                f"type:{reading.sensor_type}",
                reading.sensor_type,
                reading.ground_truth or "unlabelled",
            )
        self._produce(pending)
        if self._on_received is not None:
            self._on_received(received)

    # -- Kafka side -------------------------------------------------------------------------------------

    def _produce(self, pending: _Pending) -> None:
        self.producer.produce(
            pending.topic,
            pending.value,
            pending.key,
            on_delivery=lambda err, msg: self._delivered(pending, err, msg),
        )

    def _delivered(self, pending: _Pending, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            # Never acknowledge (or drop) what Kafka did not take: produce it again from the main loop.
            log.warning("Kafka delivery failed (%s); retrying", err)
            with self._lock:
                self.counters.retried += 1
                self._retry.append(pending)
            return
        conn = self.connection
        with self._lock:
            self.stats.by_label[pending.label] += 1
            if pending.label == "dead-letter":
                self.counters.dead_letters += 1
                telemetry.DEAD_LETTERS.labels(pending.reason).inc()
            else:
                self.counters.readings += 1
                self.counters.by_type[pending.label.removeprefix("type:")] += 1
            self._in_flight -= 1
            # Checked and queued under the lock the connection holds while it changes: an ack never goes
            # out on a newer connection, where the same packet id may name another message. (paho's
            # ack() only appends to its send queue; it waits on nothing the network thread holds.)
            if pending.generation == conn.generation and conn.connected.is_set():
                self.counters.acked += 1
                conn.client.ack(pending.mid, pending.qos)
            else:
                self.counters.not_acked_stale += 1
        if self._recorder is not None:
            self._recorder.record(pending)

    # -- lifecycle --------------------------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event | None = None,
        *,
        duration_s: float | None = None,
        count: int | None = None,
        tick: Callable[[], None] | None = None,
    ) -> BridgeCounters:
        """Bridge until ``stop`` is set, ``duration_s`` passes or ``count`` messages are done; then drain.

        ``tick`` is called about ten times a second from this thread (live displays). Returns the counters.
        """
        stop = stop or threading.Event()
        self._limit = count
        relay = None
        relay_thread = None
        relay_failed: list[BaseException] = []
        if self._check_topics:
            self.require_topics()
        try:
            if self._commands:
                from millrace.iot.commands import CommandRelay

                relay = self.relay = CommandRelay(
                    self.settings,
                    client_id=f"{self.client_id}-commands",
                    group_id=self._command_group,
                    producer=self.producer,
                )
                relay.open()
                relay_thread = threading.Thread(
                    target=self._run_relay, args=(relay, stop, relay_failed), name="mqtt-commands", daemon=True
                )
            self.connection.open()
            if relay_thread is not None:
                relay_thread.start()
            deadline = None if duration_s is None else time.monotonic() + duration_s
            next_tick = 0.0
            while not stop.is_set():
                self.producer.poll(0.05)
                self._retry_failed()
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if count is not None and self._done(count):
                    break
                if tick is not None and time.monotonic() >= next_tick:
                    tick()
                    next_tick = time.monotonic() + 0.1
        finally:
            stop.set()
            self.shutdown()
            if relay_thread is not None and relay_thread.is_alive():
                relay_thread.join(timeout=30)
            if relay is not None:
                relay.close()
        if relay_failed:
            raise MillraceError(f"the device command relay failed: {relay_failed[0]}") from relay_failed[0]
        return self.counters

    def require_topics(self, timeout_s: float = 5.0) -> None:
        """Fail fast (KafkaUnavailable / MillraceError) when Kafka is down or a topic the bridge writes or
        reads is missing: the cluster does not auto-create topics, and a reading that cannot be delivered
        would otherwise stay unacknowledged for good."""
        topics = self.settings.topics
        needed = [topics.readings, topics.dead_letter] + ([topics.device_commands] if self._commands else [])
        deadline = time.monotonic() + timeout_s
        while True:  # a topic created a moment ago may not be in every broker's metadata yet
            existing = set(list_topics(self.settings.kafka.client_config()))
            missing = [name for name in needed if name not in existing]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if missing:
            raise MillraceError(
                f"Kafka topic(s) {', '.join(missing)} do not exist: run `millrace topics apply` (or `stack up`)"
            )

    @staticmethod
    def _run_relay(relay: Any, stop: threading.Event, failed: list[BaseException]) -> None:
        try:
            relay.run(stop)
        except Exception as exc:  # surfaced by run(); readings stop too rather than run half a bridge
            log.error("device command relay failed: %s", exc)
            failed.append(exc)
            stop.set()

    def _done(self, count: int) -> bool:
        with self._lock:
            return self.counters.received >= count and self._in_flight == 0 and not self._retry

    def _retry_failed(self) -> None:
        with self._lock:
            retry, self._retry = self._retry, []
        for pending in retry:
            self._produce(pending)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop taking messages, let Kafka confirm what is in flight (acking it), then disconnect cleanly."""
        with self._lock:
            self._accepting = False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.producer.poll(0.05)
            self._retry_failed()
            with self._lock:
                if self._in_flight == 0:
                    break
        self.producer.flush(max(0.0, deadline - time.monotonic()))
        self.connection.close()

    def summary(self) -> dict[str, Any]:
        return {"bridge": self.counters.as_dict(), "kafka": self.stats.snapshot()}


def _reason_kind(reason: str) -> str:
    """A short, countable form of a dead-letter reason (the text before any quoted detail)."""
    return reason.split(":")[0].split("'")[0].strip()
