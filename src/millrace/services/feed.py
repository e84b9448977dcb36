"""The one Kafka consumer of the service: alerts, predictions, windowed metrics and quality → the Hub.

It runs in a background thread with a fresh consumer group and starts at the *latest* offsets: the
dashboard shows what happens from now on (history comes from the store through the REST API). Offsets are
pinned to the high watermarks when partitions are assigned, so :attr:`KafkaFeed.ready` means "anything
produced from now on will be delivered".

The job packs a sensor's predictions of one micro-batch into one message (jobs.sink.prediction_messages: the
sensor's fields once, one array per field); the feed unpacks it into one event per reading, in the message's
order, as the sensors channel has always carried them (docs/api.md). A message holding one prediction as an
object (no arrays) is published as it is.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from millrace.config import TopicSettings
from millrace.kafka.consumer import count_consumed, make_consumer
from millrace.services.ws import Hub, sensor_type_of

log = logging.getLogger(__name__)

SensorDirectory = Callable[[], dict[str, dict[str, Any]]]


def channel_topics(topics: TopicSettings) -> dict[str, str]:
    """Kafka topic → WebSocket channel."""
    return {
        topics.predictions: "sensors",
        topics.alerts: "alerts",
        topics.quality: "quality",
        topics.windowed_metrics: "windows",
    }


PREDICTION_SENSOR = ("sensor_id", "timestamp", "device_id", "sensor_type", "location")
PREDICTION_FIELDS = ("value", "score", "is_anomaly", "anomaly_kind", "interpolated")


def unpack_predictions(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The sensors channel's events of one predictions message: one per reading of a packed message (fields
    in the order a per-reading message had them, the event time as ISO-8601 with milliseconds and ``Z``), or
    the message itself when it holds one prediction. Raises KeyError / TypeError / ValueError when the arrays
    are missing, not arrays, or of different lengths."""
    stamps = data.get("timestamp_ms")
    if stamps is None:
        return [data]
    columns = [data[name] for name in PREDICTION_FIELDS]
    n = len(stamps)
    if any(not isinstance(c, list) or len(c) != n for c in (stamps, *columns)):
        raise ValueError("prediction arrays of different lengths")
    times = np.datetime_as_string(np.asarray(stamps, dtype="int64").astype("datetime64[ms]"), unit="ms").tolist()
    sensor = {k: data.get(k) for k in PREDICTION_SENSOR[2:] if k in data}
    sensor_id = data["sensor_id"]
    return [
        {
            "sensor_id": sensor_id,
            "timestamp": stamp + "Z",
            **sensor,
            **dict(zip(PREDICTION_FIELDS, values, strict=True)),
        }
        for stamp, *values in zip(times, *columns, strict=True)
    ]


class KafkaFeed:
    """Consume the live topics and publish each message to the hub under its channel.

    ``directory`` (optional) maps sensor_id → {location, sensor_type, device_id}; it fills in fields that a
    prediction message does not carry, so location filters work on the sensors channel. It is re-read at
    most every ``directory_ttl_s`` seconds, and only when an unknown sensor shows up.
    """

    def __init__(
        self,
        client_config: dict[str, Any],
        topics: TopicSettings,
        hub: Hub,
        *,
        directory: SensorDirectory | None = None,
        directory_ttl_s: float = 10.0,
        group_prefix: str = "millrace-serve",
    ) -> None:
        self.group_id = f"{group_prefix}-{uuid.uuid4().hex[:12]}"
        self._client_config = dict(client_config)
        self._channels = channel_topics(topics)
        self._hub = hub
        self._directory = directory
        self._directory_ttl_s = directory_ttl_s
        self._known: dict[str, dict[str, Any]] = {}
        self._known_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()
        self.consumed = 0
        self.undecodable = 0
        self.last_error: str | None = None

    # ---- lifecycle ----
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="millrace-ws-feed", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def stats(self) -> dict[str, Any]:
        return {
            "group_id": self.group_id,
            "ready": self.ready.is_set(),
            "consumed": self.consumed,
            "undecodable": self.undecodable,
            "last_error": self.last_error,
            "topics": dict(self._channels),
        }

    # ---- the thread ----
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        pinned = [self._high_watermark(consumer, tp) for tp in partitions]
        consumer.assign(pinned)
        if {tp.topic for tp in partitions} >= set(self._channels):
            self.ready.set()

    def _high_watermark(self, consumer: Consumer, tp: TopicPartition, timeout_s: float = 15.0) -> TopicPartition:
        """The partition positioned at its current end. Retried while a new topic's leader settles; after
        ``timeout_s`` it falls back to auto.offset.reset=latest (which may skip what is produced meanwhile)."""
        deadline = time.monotonic() + timeout_s
        delay = 0.1
        while True:
            try:
                _, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=5)
                return TopicPartition(tp.topic, tp.partition, high)
            except Exception as exc:  # noqa: BLE001 - "not leader yet" and timeouts alike
                if time.monotonic() + delay > deadline or self._stop.is_set():
                    log.warning("watermarks of %s[%d]: %s; starting at latest", tp.topic, tp.partition, exc)
                    return tp
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _run(self) -> None:
        consumer = make_consumer(
            self._client_config,
            self.group_id,
            auto_offset_reset="latest",
            extra={"topic.metadata.refresh.interval.ms": 5000},
        )
        consumer.subscribe(list(self._channels), on_assign=self._on_assign)
        try:
            while not self._stop.is_set():
                batch = consumer.consume(500, 0.2)
                count_consumed(batch, self.group_id)
                for msg in batch:
                    err = msg.error()
                    if err is not None:
                        if err.code() not in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                            self.last_error = str(err)
                            log.warning("live feed: %s", err)
                        continue
                    self._dispatch(msg.topic() or "", msg.value())
        except Exception as exc:  # noqa: BLE001 - the service keeps serving REST without live updates
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("live feed stopped")
        finally:
            self.ready.clear()
            consumer.close()

    def _dispatch(self, topic: str, value: bytes | None) -> None:
        channel = self._channels.get(topic)
        if channel is None or value is None:
            return
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError:
            self.undecodable += 1
            return
        if not isinstance(data, dict):
            self.undecodable += 1
            return
        if channel != "sensors":
            self.consumed += 1
            self._hub.publish(channel, data)
            return
        try:
            events = unpack_predictions(data)
        except (KeyError, TypeError, ValueError):
            self.undecodable += 1
            return
        self.consumed += 1
        for event in events:
            self._enrich(event)
            self._hub.publish(channel, event)

    def _enrich(self, data: dict[str, Any]) -> None:
        sensor_id = str(data.get("sensor_id", ""))
        if "sensor_type" not in data:
            data["sensor_type"] = sensor_type_of(sensor_id)
        if "location" in data and "device_id" in data:
            return
        info = self._lookup(sensor_id)
        for key in ("location", "device_id", "unit"):
            if key not in data and key in info:
                data[key] = info[key]

    def _lookup(self, sensor_id: str) -> dict[str, Any]:
        if sensor_id in self._known or self._directory is None:
            return self._known.get(sensor_id, {})
        now = time.monotonic()
        if now - self._known_at >= self._directory_ttl_s:
            self._known_at = now
            try:
                self._known = self._directory()
            except Exception as exc:  # noqa: BLE001 - enrichment is best effort
                log.debug("sensor directory: %s", exc)
        return self._known.get(sensor_id, {})
