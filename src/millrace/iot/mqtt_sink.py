"""A simulator sink that publishes readings over MQTT (``millrace iot simulate --via mqtt``).

Each message goes to ``sensors/<location>/<device_id>/<sensor_type>`` (the ``+`` levels of
``settings.mqtt.readings_topic``) with QoS ``settings.mqtt.qos`` (1 by default), its value unchanged (the
JSON reading, or the raw bytes of an injected malformed message). ``stats`` counts a message as delivered
when the broker acknowledged it (PUBACK), with the latency from publish to PUBACK.

Back-pressure: at most ``max_queued`` messages wait for their PUBACK; ``send`` blocks beyond that. paho keeps
unacknowledged QoS 1 messages across a lost connection and sends them again after it reconnects, so a
broker restart delays messages but loses none (the broker may receive some twice).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Protocol

from millrace.config import Settings
from millrace.iot.mqtt_client import Connection
from millrace.iot.mqtt_payload import topic_for
from millrace.kafka.stats import DeliveryStats


class _Outgoing(Protocol):  # the fields of millrace.iot.messages.Message this sink reads
    @property
    def value(self) -> bytes: ...
    @property
    def sensor_type(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def location(self) -> str: ...
    @property
    def device_id(self) -> str: ...


class MqttSink:
    """The Sink protocol of millrace.iot.sinks over MQTT (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        client_id: str | None = None,
        stats: DeliveryStats | None = None,
        max_queued: int = 10_000,
        connect_timeout_s: float = 15.0,
    ) -> None:
        self.stats = stats or DeliveryStats()
        self.qos = settings.mqtt.qos
        self.pattern = settings.mqtt.readings_topic
        topic_for(self.pattern, "l", "d", "t")  # fail now on a pattern readings cannot be published under
        self.max_queued = max_queued
        self.connection = Connection(
            settings.mqtt, client_id or f"millrace-sim-{uuid.uuid4().hex[:8]}", max_inflight=1000
        )
        self.connection.client.on_publish = self._on_publish
        # Our lock is never held while calling into paho: paho calls on_publish holding its own mutex.
        self._lock = threading.Condition()
        self._pending: dict[int, tuple[float, str, str]] = {}
        self._early: dict[int, Any] = {}  # PUBACKs (mid -> reason) that beat publish() returning
        self._topics: dict[tuple[str, str, str], str] = {}
        self.connection.open(connect_timeout_s)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._lock:
            entry = self._pending.pop(mid, None)
            if entry is None:
                self._early[mid] = reason
                return
            self._count(entry, reason)
            self._lock.notify_all()

    def _count(self, entry: tuple[float, str, str], reason: Any) -> None:
        sent_at, sensor_type, kind = entry
        stats = self.stats
        if reason is not None and getattr(reason, "is_failure", False):
            stats.failed += 1
            stats.last_error = f"broker refused publish: {reason}"
            return
        stats.delivered += 1
        stats.latency.add(max(1e-6, time.monotonic() - sent_at))
        stats.by_label[f"type:{sensor_type}"] += 1
        stats.by_label[f"kind:{kind}"] += 1

    def _topic(self, msg: _Outgoing) -> str:
        parts = (msg.location or "unknown", msg.device_id or "unknown", msg.sensor_type or "unknown")
        topic = self._topics.get(parts)
        if topic is None:
            topic = self._topics[parts] = topic_for(self.pattern, *parts)
        return topic

    def send(self, msg: _Outgoing) -> None:
        """Publish one message; blocks while ``max_queued`` publishes wait for their acknowledgement."""
        with self._lock:
            while len(self._pending) >= self.max_queued:
                self._lock.wait(0.1)
        sent_at = time.monotonic()
        info = self.connection.client.publish(self._topic(msg), msg.value, qos=self.qos)
        entry = (sent_at, msg.sensor_type, msg.kind)
        with self._lock:
            if self.qos == 0 or info.mid in self._early:
                self._count(entry, self._early.pop(info.mid, None))
            else:
                self._pending[info.mid] = entry

    def send_batch(self, batch: Any) -> None:
        """Send every message of an iterable (e.g. a MessageBatch) in order."""
        for msg in batch:
            self.send(msg)

    def poll(self) -> None:
        """Nothing to do: paho's network thread serves acknowledgements."""

    def flush(self, timeout_s: float = 60.0) -> int:
        """Wait until the broker acknowledged everything sent; returns how many are still unacknowledged."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._pending and time.monotonic() < deadline:
                self._lock.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            return len(self._pending)

    def close(self) -> None:
        self.connection.close()
