"""The foreachBatch writer of the streaming job: what a micro-batch leaves for the driver, into the store and Kafka.

Alerts and readings are not here: the stateful step's sink (jobs.sink, processing.output.StepSink) wrote them in
the executors, and the alerts come back only as "alert_sent" rows, counted. What reaches the driver is small:
window partials, sensor status, quality counters and dead letters. The batch is collected once (Arrow) —
foreachBatch would otherwise recompute the stateful step per action. Window partials of all buckets are merged per
window and recorded in the ledger under the batch id, so a replayed batch gives the same windows.
Writes happen in this order: windows, sensor status, quality into the store (idempotent upserts on natural keys,
so a replayed batch changes nothing), then windowed metrics, dead letters and quality to Kafka (at-least-once: a
replayed batch may repeat messages, which consumers key by window / position / batch). Only after everything is
written and flushed does Spark commit the batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pandas as pd

from millrace import telemetry
from millrace.config import ProcessingSettings, TopicSettings
from millrace.errors import KafkaUnavailable
from millrace.jobs.window_ledger import WindowLedger
from millrace.processing.transforms import finish_windows, merge_partials
from millrace.stores.base import Store

if TYPE_CHECKING:
    from millrace.kafka.producer import ReliableProducer

log = logging.getLogger(__name__)

PRUNE_MARGIN_S = 600.0  # partials of windows this far behind the newest event (plus lateness) are final


@dataclass
class BatchStats:
    batch_id: int
    input_rows: int
    readings: int
    interpolated: int
    dead_letters: int
    alerts: int
    windows: int
    duration_s: float
    collect_s: float
    quality: dict[str, int]

    @property
    def rows_per_s(self) -> float:
        return self.input_rows / self.duration_s if self.duration_s > 0 else 0.0


class BatchWriter:
    """Callable for ``writeStream.foreachBatch``, writing into ``store`` and through ``producer`` (both owned:
    closed by :meth:`close`) and the window ledger at ``ledger_path``. It reads the windows' length and lateness
    of ``processing`` and the output topics of ``topics``; ``store_backend`` labels the store's write timings.
    jobs.iot_stream.make_writer opens it from the job's settings."""

    def __init__(
        self,
        store: Store,
        producer: ReliableProducer,
        *,
        processing: ProcessingSettings,
        topics: TopicSettings,
        store_backend: str,
        ledger_path: Path,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.processing = processing
        self.topics = topics
        self.store_backend = store_backend
        self.store = store
        self.producer = producer
        self.ledger = WindowLedger(ledger_path)
        self.on_batch = on_batch
        self.last: BatchStats | None = None
        self.total_input = 0
        self.batches = 0  # micro-batches written by this writer
        self.last_input_at = time.monotonic()

    def __call__(self, frame: Any, batch_id: int) -> None:
        started = time.monotonic()
        out = frame.toPandas()
        collected = time.monotonic()
        stats = self.write(out, int(batch_id))
        stats.collect_s = collected - started
        stats.duration_s = time.monotonic() - started
        self.last = stats
        self.batches += 1
        self.total_input += stats.input_rows
        record_batch(stats)
        if stats.input_rows:
            self.last_input_at = time.monotonic()
        if self.on_batch is not None:
            self.on_batch(stats)

    def write(self, out: pd.DataFrame, batch_id: int) -> BatchStats:
        if out.empty:  # a no-data batch (run for timeouts) that changed nothing: nothing to record or send
            return BatchStats(batch_id, 0, 0, 0, 0, 0, 0, 0.0, 0.0, {"input": 0})
        kind = out["out"]
        alerts_sent = int((kind == "alert_sent").sum())  # written by the step's sink, in the executors
        statuses = [orjson.loads(p) for p in out.loc[kind == "status", "payload"]]
        dead = out.loc[kind == "dead", "payload"].tolist()
        partials = merge_partials([orjson.loads(p) for p in out.loc[kind == "window", "payload"]])
        quality = _sum_counters(out.loc[kind == "quality", "payload"])
        quality["input"] = sum(quality.get(k, 0) for k in ("valid", "duplicates", "late", "invalid"))

        store, timed = self.store, self._store_write
        windows = self._windows(partials, batch_id)
        if len(windows):
            with timed("windowed_metrics"):
                store.upsert_windows(windows)
        if statuses:
            with timed("sensor_status"):
                store.upsert_sensor_status(statuses)
        with timed("data_quality"):
            store.record_quality(batch_id, quality)

        self._produce(windows, dead, quality, batch_id)
        record_outputs(dead, quality, out.loc[kind == "alert_sent", "payload"])
        return BatchStats(
            batch_id=batch_id,
            input_rows=quality["input"],
            readings=quality.get("valid", 0),
            interpolated=quality.get("interpolated", 0),
            dead_letters=len(dead),
            alerts=alerts_sent,
            windows=len(windows),
            duration_s=0.0,
            collect_s=0.0,
            quality=quality,
        )

    def _store_write(self, collection: str) -> Any:
        return telemetry.STORE_WRITE.labels(self.store_backend, collection).time()

    def _windows(self, partials: pd.DataFrame, batch_id: int) -> pd.DataFrame:
        window_s = self.processing.window_s
        merged = self.ledger.record(batch_id, partials)
        if len(partials):
            newest = int(partials["window_start"].max()) + window_s * 1000
            horizon = newest - int((self.processing.allowed_lateness_s + PRUNE_MARGIN_S) * 1000)
            self.ledger.prune(horizon - window_s * 1000)
        return finish_windows(merged, window_s) if len(merged) else pd.DataFrame()

    def _produce(self, windows: pd.DataFrame, dead: list[str], quality: dict[str, int], batch_id: int) -> None:
        topics, produce = self.topics, self.producer.produce
        if len(windows):
            wins = windows.assign(
                window_start=windows["window_start"].dt.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                window_end=windows["window_end"].dt.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            )
            lines = wins.to_json(orient="records", lines=True).rstrip("\n").split("\n")
            for key, line in zip(wins["key"], lines, strict=True):
                produce(topics.windowed_metrics, line.encode(), key)
        for payload in dead:
            produce(topics.dead_letter, payload.encode(), orjson.loads(payload)["position"])
        produce(topics.quality, orjson.dumps({"batch_id": batch_id, "counters": quality}), str(batch_id))
        remaining = self.producer.flush(60.0)
        if remaining:
            raise KafkaUnavailable(f"{remaining} output messages of batch {batch_id} not delivered within 60 s")

    def close(self) -> None:
        self.producer.flush(30.0)
        self.ledger.close()
        self.store.close()


def record_batch(stats: BatchStats) -> None:
    """A finished micro-batch in the stream_* metrics."""
    telemetry.STREAM_BATCHES.inc()
    telemetry.STREAM_BATCH_DURATION.observe(stats.duration_s)
    telemetry.STREAM_INPUT_ROWS.inc(stats.input_rows)
    telemetry.STREAM_ROWS_PROCESSED.inc(stats.readings)
    telemetry.STREAM_LAST_BATCH.set(time.time())


# millrace_data_quality_total{problem} from the step's quality counters. An invalid reading counts as
# "invalid" whatever its reason (out_of_range included, which also counts on its own).
QUALITY_PROBLEMS = {
    "gap": ("gaps_interpolated", "gaps_inactive"),
    "late": ("late",),
    "duplicate": ("duplicates",),
    "out_of_range": ("invalid_out_of_range",),
    "invalid": ("invalid",),
}
CROSS_SENSOR_KIND = "correlation_break"  # an alert episode of a device whose sensors stopped agreeing


def record_outputs(dead: list[str], quality: dict[str, int], alerts: pd.Series) -> None:
    """A written micro-batch's dead letters (by reason), data-quality problems and alerts (by kind and
    severity; cross-sensor alerts also as the data-quality problem ``cross_sensor``)."""
    reasons: dict[str, int] = {}
    for payload in dead:
        reason = str(orjson.loads(payload).get("reason") or "unknown")
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, n in reasons.items():
        telemetry.DEAD_LETTERS.labels(reason).inc(n)
    for problem, keys in QUALITY_PROBLEMS.items():
        n = sum(quality.get(k, 0) for k in keys)
        if n:
            telemetry.DATA_QUALITY.labels(problem).inc(n)
    for payload in alerts:
        alert = orjson.loads(payload)
        kind = str(alert.get("kind") or "unknown")
        telemetry.ALERTS.labels(kind, str(alert.get("severity") or "unknown")).inc()
        if kind == CROSS_SENSOR_KIND:
            telemetry.DATA_QUALITY.labels("cross_sensor").inc()


def _sum_counters(payloads: pd.Series) -> dict[str, int]:
    total: dict[str, int] = {}
    for payload in payloads:
        for key, value in orjson.loads(payload).items():
            total[key] = total.get(key, 0) + int(value)
    return total
