"""The ways out of the stateful step: a :class:`StepSink` for alerts and readings, output rows for the rest.

The step (processing.stateful) gets a factory of sinks and calls it once per call of the step; the job injects
jobs.sink.worker_sink (store + alerts and predictions topics, one per Python worker), the tests a
:class:`MemorySink`. Everything else the step produces — window partials, sensor status, quality counters,
dead letters, and the alerts again as "alert_sent" rows for the driver to count — leaves as its output rows
(schema.STEP_OUTPUT, told apart by ``out``, content as JSON in ``payload``), built by the functions below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

import orjson
import pandas as pd

from millrace.config import Settings
from millrace.processing import episodes
from millrace.processing.schema import STEP_OUTPUT_COLUMNS
from millrace.processing.state import Episode, Track
from millrace.processing.transforms import window_partials
from millrace.records import to_iso

STAGE = "validation"  # the dead letters' stage


class StepSink(Protocol):
    """Where one call of the stateful step (one state bucket, one micro-batch) puts its alerts and readings.

    When: in the process that runs the call (a Spark Python worker), before the call returns its output rows
    and before Spark commits the bucket's state. Per call at most one ``write_alerts`` and then at most one
    ``write_readings``, never with an empty batch: a call's alerts are written before its readings, so an
    alert is visible as soon as its bucket is computed. Calls for other buckets of the same micro-batch run in
    other processes, concurrently and in no particular order; nothing orders one call's readings after another
    call's alerts.

    Idempotent: a micro-batch that fails is replayed from the same offsets and state and writes the same
    alerts and readings again, so an implementation upserts on natural keys — readings on (sensor_id,
    timestamp), alerts on alert_id — and a replay changes nothing it stores. Messages to topics are
    at-least-once (a replay may repeat them; their keys tell repeats apart).

    Raises: a method returns once what it was given is durable (stored, and delivered where it produces
    messages), or raises — StoreUnavailable, KafkaUnavailable or any error — which fails the call and with
    it the micro-batch (Spark replays it). It never drops rows silently.
    """

    def write_alerts(self, alerts: Sequence[Mapping[str, Any]], sensor_types: Mapping[str, str]) -> None:
        """Alert episodes touched by the call (records.Alert dicts, stores.base.ALERT_FIELDS), each the
        episode's state at the end of the call; ``sensor_types`` maps each of their sensors to its type, from
        the bucket's state (an alert record names its sensors, not their types, which the recommendations
        need)."""
        ...

    def write_readings(self, readings: pd.DataFrame) -> None:
        """Cleaned, scored readings of the call, measured and interpolated, in no particular order: columns
        of stores.base.READING_COLUMNS but ``ingested_at`` (the sink stamps it), ``timestamp`` timezone-aware
        UTC."""
        ...


# The job's sink needs the store and topic settings, so a factory takes the whole Settings.
SinkFactory = Callable[[Settings], StepSink]


class MemorySink:
    """A StepSink that keeps, in memory and in order, exactly what it was given (it does not upsert: a test
    sees every write, a replay's included). ``factory`` is a SinkFactory returning this sink."""

    def __init__(self) -> None:
        self.writes: list[tuple[Literal["alerts", "readings"], Any]] = []
        self.sensor_types: dict[str, str] = {}  # every type the step handed over with its alerts

    def write_alerts(self, alerts: Sequence[Mapping[str, Any]], sensor_types: Mapping[str, str]) -> None:
        self.writes.append(("alerts", [dict(a) for a in alerts]))
        self.sensor_types.update(sensor_types)

    def write_readings(self, readings: pd.DataFrame) -> None:
        self.writes.append(("readings", readings.copy()))

    def factory(self, _settings: Settings) -> MemorySink:
        return self

    @property
    def order(self) -> list[str]:
        """The kinds of the writes, in call order ("alerts" / "readings")."""
        return [kind for kind, _ in self.writes]

    @property
    def alerts(self) -> list[dict[str, Any]]:
        """Every alert written, in order."""
        return [alert for kind, batch in self.writes if kind == "alerts" for alert in batch]

    @property
    def readings(self) -> pd.DataFrame:
        """Every reading written, in order, as one frame (empty without columns when none was)."""
        frames = [batch for kind, batch in self.writes if kind == "readings"]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ---------------------------------------------------------------------------------------------- output rows
def iso_ms(ms: int) -> str:
    return to_iso(pd.Timestamp(int(ms), unit="ms", tz="UTC").to_pydatetime())


def frame(columns: Mapping[str, Any], n: int) -> pd.DataFrame:
    """``n`` output rows with ``columns``; the other columns of schema.STEP_OUTPUT null."""
    return pd.DataFrame({col: columns[col] if col in columns else [None] * n for col in STEP_OUTPUT_COLUMNS})


def payload_rows(kind: str, payloads: list[dict[str, Any]], device_ids: list[Any] | None = None) -> pd.DataFrame:
    n = len(payloads)
    return frame(
        {
            "out": [kind] * n,
            "device_id": device_ids if device_ids is not None else [None] * n,
            "payload": [orjson.dumps(p).decode() for p in payloads],
        },
        n,
    )


def dead_letters(rows: pd.DataFrame, reasons: pd.Series, *, source: str, at_ms: int) -> pd.DataFrame:
    """records.DeadLetter dicts for ``rows`` (raw, kafka_partition, kafka_offset) as "dead" output rows."""
    at = iso_ms(at_ms)
    payloads = [
        {
            "reason": str(reason),
            "stage": STAGE,
            "source": source,
            "position": f"{int(p)}:{int(o)}",
            "raw": _text(raw),
            "at": at,
        }
        for reason, raw, p, o in zip(reasons, rows["raw"], rows["kafka_partition"], rows["kafka_offset"], strict=True)
    ]
    return payload_rows("dead", payloads)


def _text(raw: object) -> str:
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return bytes(raw).decode("utf-8", errors="replace")
    return "" if raw is None else str(raw)


def reencoded(rows: pd.DataFrame) -> list[str]:
    """Valid readings as JSON rebuilt from their parsed fields (their original bytes stay in the source topic,
    at the dead letter's position)."""
    fields = ("sensor_id", "device_id", "sensor_type", "value", "unit", "location", "status", "ground_truth")
    records = rows[list(fields)].astype(object).where(rows[list(fields)].notna(), None).to_dict("records")
    for record, ms in zip(records, rows["ts_ms"], strict=True):
        record["timestamp"] = iso_ms(ms)
    return [orjson.dumps(r).decode() for r in records]


def status_rows(tracks: Mapping[str, Track], sensor_ids: Sequence[str], now_ms: int) -> pd.DataFrame:
    """The sensor_status of ``sensor_ids`` (as their ``tracks`` say) as "status" output rows."""
    updated = iso_ms(now_ms)
    payloads, devices = [], []
    for sid in sensor_ids:
        track = tracks[sid]
        payloads.append(
            {
                "sensor_id": sid,
                "device_id": track.device_id,
                "sensor_type": track.sensor_type,
                "location": track.location,
                "last_event_time": iso_ms(track.last_ms),
                "state": "active" if track.active else "inactive",
                "expected_interval_s": track.interval_s,
                "updated_at": updated,
            }
        )
        devices.append(track.device_id)
    return payload_rows("status", payloads, devices)


def alert_rows(touched: Sequence[tuple[str, Episode]], zscore_threshold: float) -> pd.DataFrame:
    """Episodes touched, as (device_id, episode), as "alert" output rows (records.Alert dicts)."""
    alerts = [episodes.to_alert(ep, device_id=d, zscore_threshold=zscore_threshold) for d, ep in touched]
    return payload_rows("alert", alerts, [d for d, _ in touched])


def window_rows(readings: pd.DataFrame, window_s: int) -> pd.DataFrame:
    """The readings' tumbling-window partials (transforms.window_partials) as "window" output rows."""
    partials = window_partials(readings, window_s) if len(readings) else readings
    if not len(partials):
        return frame({}, 0)
    lines = json_lines(partials)
    return frame({"out": ["window"] * len(lines), "payload": lines}, len(lines))


def json_lines(rows: pd.DataFrame) -> list[str]:
    """One JSON object per row, built by pandas in C rather than a Python loop over rows."""
    if rows.empty:
        return []
    text = rows.to_json(orient="records", lines=True)
    return text.rstrip("\n").split("\n")
