"""The job's StepSink (processing.output): the stateful step's alerts and readings into the store and the output
topics, from the executors.

Readings are the bulk of the job's output (one row per reading, and its features); sending them back to the driver
would pass every row through the JVM twice more and write them from one process. Instead each Python worker writes
the alerts and then the readings of its bucket itself (alerts first: the time from a reading to its alert in the
store is the job's latency that matters) — idempotent upserts on (sensor_id, timestamp), so a micro-batch replayed
after a crash writes the same rows again and the store still holds one row per reading — and produces their scores
to the predictions topic (at-least-once, keyed by sensor); alerts are upserted by alert_id and produced to the
alerts topic. Each alert leaves with the operator's recommended action for its kind and its sensors' types
(processing.recommendations, the table read once per process; the types handed over by the step, from its
state), stored with it and also produced to the recommendations topic, keyed by alert_id. The
driver's foreachBatch keeps the other small outputs: windows, sensor status, quality, dead letters.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import pandas as pd

from millrace import telemetry
from millrace.config import Settings
from millrace.errors import KafkaUnavailable
from millrace.processing.output import StepSink
from millrace.processing.recommendations import RecommendationTable, load_table, recommend

_sinks: dict[str, ReadingSink] = {}  # one per Python worker process (workers are reused across batches)


class ReadingSink(StepSink):
    """A StepSink on a store and a Kafka producer, opened once per process."""

    def __init__(self, settings: Settings) -> None:
        from millrace.kafka.producer import make_producer
        from millrace.stores.factory import open_store

        self.settings = settings
        self.recommendations = load_table(settings.processing.recommendations_file)
        self.store = open_store(settings)
        k = settings.kafka
        # Delivery reports for failures only: one Python callback per reading would cost more than the rest of
        # producing; a failure still counts in stats.failed and fails the batch (Spark replays it).
        self.producer = make_producer(
            k.client_config(),
            compression=k.compression,
            linger_ms=k.linger_ms,
            batch_size=k.batch_size,
            extra={"delivery.report.only.error": True},
        )

    def write_readings(self, readings: pd.DataFrame) -> None:
        """Upsert ``readings`` (stamped with ``ingested_at``) and produce their predictions; returns once every
        message is delivered (raises KafkaUnavailable otherwise, which fails the batch: Spark replays it)."""
        if readings.empty:
            return
        stamped = readings.assign(ingested_at=pd.Timestamp(time.time(), unit="s", tz="UTC"))
        with telemetry.STORE_WRITE.labels(self.settings.store.backend, "sensor_metrics").time():
            self.store.upsert_readings(stamped)
        failed = self.producer.stats.failed
        topic = self.settings.topics.predictions
        produce_predictions(self.producer, topic, readings)
        self._delivered(self.producer.flush(60.0), failed, "predictions")
        # Delivery reports come for failures only (see __init__): all of them were acknowledged here.
        telemetry.PRODUCED.labels(topic).inc(len(readings))

    def write_alerts(self, alerts: Sequence[Mapping[str, Any]], sensor_types: Mapping[str, str]) -> None:
        """Upsert alert episodes (records.Alert dicts) with their recommendation, produce them to the alerts
        topic and their recommendations to the recommendations topic, keyed by alert_id; returns once delivered
        (raises KafkaUnavailable otherwise)."""
        if not alerts:
            return
        recommended = with_recommendations(self.recommendations, alerts, sensor_types)
        with telemetry.STORE_WRITE.labels(self.settings.store.backend, "anomaly_alerts").time():
            self.store.upsert_alerts(recommended)
        failed = self.producer.stats.failed
        topics = self.settings.topics
        for alert in recommended:
            self.producer.produce(topics.alerts, orjson.dumps(alert), alert["alert_id"])
            self.producer.produce(
                topics.recommendations, orjson.dumps(recommendation_message(alert)), alert["alert_id"]
            )
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


def produce_predictions(producer: Any, topic: str, readings: pd.DataFrame) -> None:
    """One JSON message per reading (a ReliableProducer's bulk path): its identity, value, score and verdict,
    keyed by sensor_id."""
    ms = pd.to_datetime(readings["timestamp"], utc=True).to_numpy(dtype="datetime64[ms]")
    preds = pd.DataFrame(
        {
            "sensor_id": readings["sensor_id"].to_numpy(dtype=object),
            "timestamp": np.char.add(np.datetime_as_string(ms, unit="ms"), "Z"),
            "device_id": readings["device_id"].to_numpy(dtype=object),
            "sensor_type": readings["sensor_type"].to_numpy(dtype=object),
            "location": readings["location"].to_numpy(dtype=object),
            "value": readings["value"].to_numpy(dtype="float64"),
            "score": readings["score"].to_numpy(dtype="float64"),
            "is_anomaly": readings["is_anomaly"].fillna(False).astype(bool).to_numpy(),
            "anomaly_kind": readings["anomaly_kind"].to_numpy(dtype=object),
            "interpolated": readings["interpolated"].astype(bool).to_numpy(),
        }
    )
    lines = preds.to_json(orient="records", lines=True).rstrip("\n").split("\n")
    producer.produce_batch(topic, (line.encode() for line in lines), preds["sensor_id"])


def worker_sink(settings: Settings) -> ReadingSink:
    """The process's sink for ``settings`` (opened on first use)."""
    key = settings.model_dump_json()
    if key not in _sinks:
        _sinks[key] = ReadingSink(settings)
    return _sinks[key]
