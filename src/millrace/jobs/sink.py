"""The job's StepSink (processing.output): the stateful step's alerts and readings into the store and the output
topics, from the executors.

Readings are the bulk of the job's output (one row per reading, and its features); sending them back to the driver
would pass every row through the JVM twice more and write them from one process. Instead each Python worker writes
the alerts and then the readings of its bucket itself (alerts first: the time from a reading to its alert in the
store is the job's latency that matters) — idempotent upserts on (sensor_id, timestamp), so a micro-batch replayed
after a crash writes the same rows again and the store still holds one row per reading — and produces their scores
to the predictions topic: one message per sensor and call (at most ``MAX_PER_MESSAGE`` readings each), keyed by
sensor_id, its readings' predictions as arrays (:func:`prediction_messages`; services.feed unpacks them). A message
per reading cost the broker as much CPU as the rest of the job's Kafka traffic; per sensor, the key and so the
partition and the order per sensor stay what they were. At-least-once: a replayed batch sends its messages again.
Alerts are upserted by alert_id and produced to the alerts topic. Each alert leaves with the operator's recommended
action for its kind and its sensors' types (processing.recommendations, the table read once per process; the types
handed over by the step, from its state), stored with it and also produced to the recommendations topic, keyed by
alert_id. The driver's foreachBatch keeps the other small outputs: windows, sensor status, quality, dead letters.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import orjson
import pandas as pd

from millrace import telemetry
from millrace.config import KafkaSettings, Settings, TopicSettings
from millrace.errors import KafkaUnavailable
from millrace.processing.output import StepSink
from millrace.processing.recommendations import RecommendationTable, load_table, recommend
from millrace.stores.base import Store

# Readings per predictions message: ~50 KB of JSON, far below the broker's default 1 MB limit whatever the batch.
MAX_PER_MESSAGE = 1000
# The arrays of a predictions message, in this order; "timestamp_ms" is the event time in epoch milliseconds.
PREDICTION_ARRAYS: tuple[str, ...] = ("timestamp_ms", "value", "score", "is_anomaly", "anomaly_kind", "interpolated")
PREDICTION_SENSOR: tuple[str, ...] = ("sensor_id", "device_id", "sensor_type", "location")

_sinks: dict[str, ReadingSink] = {}  # one per Python worker process (workers are reused across batches)


class Producer(Protocol):
    """What the sink needs of kafka.producer.ReliableProducer (its stats: delivered and failed counts)."""

    stats: Any

    def produce(self, topic: str, value: bytes, key: str | bytes | None = None) -> None: ...

    def produce_batch(self, topic: str, values: Any, keys: Any) -> int: ...

    def flush(self, timeout_s: float = 60.0) -> int: ...


class ReadingSink(StepSink):
    """A StepSink on a store and a Kafka producer (worker_sink opens both once per process).

    ``topics`` names the alerts, recommendations and predictions topics; ``store_backend`` labels the store's
    write timings; ``recommendations`` is the table each alert's action is looked up in."""

    def __init__(
        self,
        store: Store,
        producer: Producer,
        *,
        topics: TopicSettings,
        store_backend: str,
        recommendations: RecommendationTable,
    ) -> None:
        self.store = store
        self.producer = producer
        self.topics = topics
        self.store_backend = store_backend
        self.recommendations = recommendations
        self.timings: dict[str, float] = {}  # seconds of the last write_readings' parts (the step's timing log)

    def write_readings(self, readings: pd.DataFrame) -> None:
        """Upsert ``readings`` (stamped with ``ingested_at``) and produce their predictions; returns once every
        message is delivered (raises KafkaUnavailable otherwise, which fails the batch: Spark replays it)."""
        if readings.empty:
            return
        t0 = time.perf_counter()
        failed = self.producer.stats.failed
        topic = self.topics.predictions
        # Messages first: librdkafka's threads deliver them while this thread upserts (or waits for the store's
        # write lock, held by the other buckets' workers), so the flush below rarely waits.
        values, keys = prediction_messages(readings)
        self.producer.produce_batch(topic, values, keys)
        t1, c1 = time.perf_counter(), time.thread_time()
        stamped = readings.assign(ingested_at=pd.Timestamp(time.time(), unit="s", tz="UTC"))
        with telemetry.STORE_WRITE.labels(self.store_backend, "sensor_metrics").time():
            self.store.upsert_readings(stamped)
        t2, c2 = time.perf_counter(), time.thread_time()
        self._delivered(self.producer.flush(60.0), failed, "predictions messages")
        self.timings = {
            "produce": t1 - t0,
            "upsert": t2 - t1,
            "upsert_cpu": c2 - c1,
            "flush": time.perf_counter() - t2,
        }
        parts = getattr(self.store, "last_write_s", lambda: None)()  # the SQLite store's lock/write/commit
        if parts is not None:
            self.timings.update(lock_wait=parts[0], write=parts[1], commit=parts[2])
        # Counted in predictions (one per reading), not messages, so it compares with the readings processed.
        # Delivery reports come for failures only (worker_sink): all of them were acknowledged here.
        telemetry.PRODUCED.labels(topic).inc(len(readings))

    def write_alerts(self, alerts: Sequence[Mapping[str, Any]], sensor_types: Mapping[str, str]) -> None:
        """Upsert alert episodes (records.Alert dicts) with their recommendation, produce them to the alerts
        topic and their recommendations to the recommendations topic, keyed by alert_id; returns once delivered
        (raises KafkaUnavailable otherwise)."""
        if not alerts:
            return
        recommended = with_recommendations(self.recommendations, alerts, sensor_types)
        failed = self.producer.stats.failed
        topics = self.topics
        for alert in recommended:  # delivered while the store is written, as the readings' predictions
            self.producer.produce(topics.alerts, orjson.dumps(alert), alert["alert_id"])
            self.producer.produce(
                topics.recommendations, orjson.dumps(recommendation_message(alert)), alert["alert_id"]
            )
        with telemetry.STORE_WRITE.labels(self.store_backend, "anomaly_alerts").time():
            self.store.upsert_alerts(recommended)
        self._delivered(self.producer.flush(60.0), failed, "alerts")
        telemetry.PRODUCED.labels(topics.alerts).inc(len(recommended))
        telemetry.PRODUCED.labels(topics.recommendations).inc(len(recommended))

    def _delivered(self, remaining: int, failed_before: int, what: str) -> None:
        if remaining or self.producer.stats.failed > failed_before:
            lost = remaining + self.producer.stats.failed - failed_before
            raise KafkaUnavailable(f"{lost} {what} not delivered: {self.producer.stats.last_error}")


def with_recommendations(
    table: RecommendationTable, alerts: Sequence[Mapping[str, Any]], types: Mapping[str, str]
) -> list[dict[str, Any]]:
    """The alerts as records.Alert dicts with ``recommendation`` and ``recommendation_id`` set from ``table``
    by each alert's kind and the types (``types``: sensor_id -> sensor_type) of its sensors."""
    out = []
    for alert in alerts:
        sensor_types = [types[s] for s in alert.get("sensor_ids") or () if s in types]
        out.append({**alert, **recommend(table, alert, sensor_types).to_dict()})
    return out


def recommendation_message(alert: Mapping[str, Any]) -> dict[str, Any]:
    """What the recommendations topic carries for an alert: the action and what it is for."""
    fields = ("alert_id", "recommendation_id", "recommendation", "kind", "severity", "status", "device_id")
    return {
        **{f: alert.get(f) for f in fields},
        "sensor_ids": list(alert.get("sensor_ids") or ()),
        "location": alert.get("location"),
        "opened_at": alert.get("opened_at"),
        "updated_at": alert.get("updated_at"),
    }


def prediction_messages(readings: pd.DataFrame, limit: int = MAX_PER_MESSAGE) -> tuple[list[bytes], list[str]]:
    """The predictions topic's messages for ``readings`` and their keys (sensor_id).

    One message per run of readings of one sensor (sensor_id, device_id, sensor_type and location alike), in
    event-time order, at most ``limit`` readings each: the sensor's fields once, then one array per field of
    PREDICTION_ARRAYS, the i-th entries of the arrays being the i-th reading (docs/api.md)::

        {"sensor_id": "dev-0001-temperature", "device_id": "dev-0001", "sensor_type": "temperature",
         "location": "loc-01", "timestamp_ms": [1772366400000, ...], "value": [21.5, ...], "score": [0.4, ...],
         "is_anomaly": [false, ...], "anomaly_kind": [null, ...], "interpolated": [false, ...]}

    The string columns are handled as pandas' codes of their distinct values: converting each row's Arrow
    string to a Python str would cost more than the rest of the messages.
    """
    ts = pd.to_datetime(readings["timestamp"], utc=True).to_numpy(dtype="datetime64[ms]").astype("int64")
    n = len(ts)
    fields = {c: pd.factorize(readings[c], sort=True)[0] for c in PREDICTION_SENSOR}  # -1: missing
    sensors = np.where(fields["sensor_id"] < 0, n, fields["sensor_id"])  # a missing sensor_id sorts last
    order = np.lexsort((ts, sensors))  # stable: by sensor_id, then by time
    changed = np.zeros(n, dtype=bool)
    changed[0] = True
    for codes in fields.values():
        codes = codes[order]
        missing = codes < 0  # a missing field (NaN) equals no other: its readings are messages of their own
        changed[1:] |= (codes[1:] != codes[:-1]) | missing[1:] | missing[:-1]
    run_start = np.flatnonzero(changed)
    position = np.arange(n) - run_start[np.cumsum(changed) - 1]
    starts = np.flatnonzero(position % limit == 0).tolist()
    firsts = order[starts]  # each message's first reading
    sensor = {c: [_text(v) for v in readings[c].iloc[firsts].to_numpy(dtype=object)] for c in PREDICTION_SENSOR}
    arrays: dict[str, np.ndarray] = {
        "timestamp_ms": ts[order],
        "value": readings["value"].to_numpy(dtype="float64")[order],
        "score": readings["score"].to_numpy(dtype="float64")[order],
        "is_anomaly": readings["is_anomaly"].fillna(False).astype(bool).to_numpy()[order],
        "anomaly_kind": _kinds(readings["anomaly_kind"])[order],
        "interpolated": readings["interpolated"].astype(bool).to_numpy()[order],
    }
    values, keys = [], []
    for i, (a, b) in enumerate(zip(starts, [*starts[1:], n], strict=True)):
        message: dict[str, Any] = {c: sensor[c][i] for c in PREDICTION_SENSOR}
        for name in PREDICTION_ARRAYS:
            message[name] = arrays[name][a:b]
        message["anomaly_kind"] = message["anomaly_kind"].tolist()  # strs and Nones: no numpy dtype for orjson
        values.append(orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY))
        keys.append(message["sensor_id"])
    return values, keys


def _kinds(column: pd.Series) -> np.ndarray:
    """The anomaly kinds as an object array of strs, None where a reading has none."""
    codes, distinct = pd.factorize(column)
    names = np.empty(len(distinct) + 1, dtype=object)  # the last one (None) for code -1, a missing kind
    names[:-1] = [v if isinstance(v, str) else None for v in distinct.to_numpy(dtype=object)]
    return names[codes]


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None if value is None or value != value else str(value)


def sink_producer(kafka: KafkaSettings) -> Any:
    """The sink's producer (kafka.producer.ReliableProducer) from the Kafka settings."""
    from millrace.kafka.producer import make_producer

    # Delivery reports for failures only: one Python callback per message would cost more than the rest of
    # producing; a failure still counts in stats.failed and fails the batch (Spark replays it).
    return make_producer(
        kafka.client_config(),
        compression=kafka.compression,
        linger_ms=kafka.linger_ms,
        batch_size=kafka.batch_size,
        extra={"delivery.report.only.error": True},
    )


def open_reading_sink(settings: Settings) -> ReadingSink:
    """A ReadingSink on a new store connection and producer, from the parts of ``settings`` they use."""
    from millrace.stores.factory import open_store

    table = load_table(settings.processing.recommendations_file)  # a bad file fails before anything opens
    return ReadingSink(
        open_store(settings),
        sink_producer(settings.kafka),
        topics=settings.topics,
        store_backend=settings.store.backend,
        recommendations=table,
    )


def worker_sink(settings: Settings) -> ReadingSink:
    """The process's sink for the job's ``settings`` (opened on first use). processing.stateful.make_step binds
    its sink factory to the whole settings; this is where they narrow to what the sink uses."""
    key = settings.model_dump_json()
    if key not in _sinks:
        _sinks[key] = open_reading_sink(settings)
    return _sinks[key]
