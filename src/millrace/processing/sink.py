"""Where the stateful step puts its readings: the store and the predictions topic, written from the executors.

Readings are the bulk of the job's output (one row per reading, and its features); sending them back to the
driver would pass every row through the JVM twice more and write them from one process. Instead each
Python worker writes the readings of its bucket itself — idempotent upserts on (sensor_id, timestamp), so a
micro-batch replayed after a crash writes the same rows again and the store still holds one row per reading —
and produces their scores to the predictions topic (at-least-once, keyed by sensor). The driver's
foreachBatch keeps the small outputs: alerts, windows, sensor status, quality, dead letters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pandas as pd

from millrace.config import Settings
from millrace.errors import KafkaUnavailable

_sinks: dict[str, ReadingSink] = {}  # one per Python worker process (workers are reused across batches)


class ReadingSink:
    """A store and a Kafka producer, opened once per process."""

    def __init__(self, settings: Settings) -> None:
        from millrace.kafka.producer import make_producer
        from millrace.stores.factory import open_store

        self.settings = settings
        self.store = open_store(settings)
        k = settings.kafka
        self.producer = make_producer(
            k.client_config(), compression=k.compression, linger_ms=k.linger_ms, batch_size=k.batch_size
        )

    def write(self, readings: pd.DataFrame) -> None:
        """Upsert ``readings`` (rows of schema.STEP_OUTPUT) and produce their predictions; returns once every
        message is delivered (raises KafkaUnavailable otherwise, which fails the batch: Spark replays it)."""
        if readings.empty:
            return
        self.store.upsert_readings(readings.assign(ingested_at=pd.Timestamp(time.time(), unit="s", tz="UTC")))
        produce_predictions(self.producer.produce, self.settings.topics.predictions, readings)
        remaining = self.producer.flush(60.0)
        if remaining:
            raise KafkaUnavailable(f"{remaining} predictions not delivered within 60 s")


def produce_predictions(produce: Callable[..., Any], topic: str, readings: pd.DataFrame) -> None:
    """One JSON message per reading: its identity, value, score and verdict, keyed by sensor_id."""
    timestamps = pd.to_datetime(readings["timestamp"], utc=True)
    preds = pd.DataFrame({
        "sensor_id": readings["sensor_id"].to_numpy(),
        "timestamp": timestamps.dt.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3] + "Z",
        "device_id": readings["device_id"].to_numpy(),
        "sensor_type": readings["sensor_type"].to_numpy(),
        "location": readings["location"].to_numpy(),
        "value": readings["value"].to_numpy(),
        "score": readings["score"].to_numpy(),
        "is_anomaly": readings["is_anomaly"].fillna(False).astype(bool).to_numpy(),
        "anomaly_kind": readings["anomaly_kind"].to_numpy(),
        "interpolated": readings["interpolated"].astype(bool).to_numpy(),
    })  # fmt: skip
    lines = preds.to_json(orient="records", lines=True).rstrip("\n").split("\n")
    for key, line in zip(preds["sensor_id"], lines, strict=True):
        produce(topic, line.encode(), key)


def worker_sink(settings: Settings) -> ReadingSink:
    """The process's sink for ``settings`` (opened on first use)."""
    key = settings.model_dump_json()
    if key not in _sinks:
        _sinks[key] = ReadingSink(settings)
    return _sinks[key]
