"""The stateful step of the streaming job, run by ``applyInPandasWithState`` once per device and micro-batch.

In order: dead letters for invalid rows; duplicates and late events (per-device watermark = newest event
time - allowed lateness); gaps (interpolation / inactivity); features.device_step; Scorer.score; alert
episodes; sensor status; data-quality counters. Everything a batch produces leaves as rows of
schema.STEP_OUTPUT, told apart by ``out``. The device's state is one JSON document; its timeout (processing
time, ``inactive_after_s``) is the wall-clock sweep that reports a silent device's sensors inactive.

Determinism: the only clock read is the micro-batch time Spark fixes (``getCurrentProcessingTimeMs``), so a
batch replayed after a crash yields the same rows and the store's upserts change nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import orjson
import pandas as pd

from millrace.config import Settings
from millrace.processing import episodes, gaps
from millrace.processing.schema import STEP_OUTPUT_COLUMNS
from millrace.processing.transforms import INVALID_GROUP, LATE_REASON, drop_duplicates_and_late, timestamps_ms
from millrace.records import to_iso

log = logging.getLogger(__name__)

EPISODE_QUIET_S = 30.0  # an episode ends after this much event time without an anomalous reading
STAGE = "validation"

_scorers: dict[str, Any] = {}  # one Scorer per Python worker process (workers are reused across batches)


def _scorer(settings: Settings, factory: Callable[[Settings], Any] | None = None) -> Any:
    key = settings.model_dump_json()
    if key not in _scorers:
        if factory is None:
            from millrace.processing.scoring import load_scorer

            factory = load_scorer
        _scorers[key] = factory(settings)
    return _scorers[key]


def _iso_ms(ms: int) -> str:
    return to_iso(pd.Timestamp(int(ms), unit="ms", tz="UTC").to_pydatetime())


def _empty_state() -> dict[str, Any]:
    from millrace.processing.features import empty_state

    # wm: newest event time of the device; newest: per sensor; seen: per sensor, event times inside the
    # lateness horizon (dedup); tracks: gaps.Track per sensor; feat: features state; ep: open episode.
    return {"wm": None, "newest": {}, "tracks": {}, "seen": {}, "feat": empty_state(), "ep": None}


def _frame(rows: dict[str, Any], n: int) -> pd.DataFrame:
    data = {col: rows.get(col, [None] * n) for col in STEP_OUTPUT_COLUMNS}
    return pd.DataFrame(data)


def _payload_rows(kind: str, payloads: list[dict[str, Any]], device_id: str | None = None) -> pd.DataFrame:
    n = len(payloads)
    return _frame(
        {
            "out": [kind] * n,
            "device_id": [device_id] * n,
            "payload": [orjson.dumps(p).decode() for p in payloads],
        },
        n,
    )


def dead_letters(rows: pd.DataFrame, reasons: pd.Series, *, source: str, at_ms: int) -> pd.DataFrame:
    """records.DeadLetter dicts for ``rows`` (raw, kafka_partition, kafka_offset) as "dead" output rows."""
    at = _iso_ms(at_ms)
    payloads = [
        {
            "reason": str(reason),
            "stage": STAGE,
            "source": source,
            "position": f"{int(p)}:{int(o)}",
            "raw": _text(raw),
            "at": at,
        }  # fmt: skip
        for reason, raw, p, o in zip(reasons, rows["raw"], rows["kafka_partition"], rows["kafka_offset"], strict=True)
    ]
    return _payload_rows("dead", payloads)


def _text(raw: object) -> str:
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return bytes(raw).decode("utf-8", errors="replace")
    return "" if raw is None else str(raw)


class DeviceStep:
    """The function handed to applyInPandasWithState (picklable: holds only the settings)."""

    def __init__(
        self, settings: Settings, *, source_topic: str, scorer_factory: Callable[[Settings], Any] | None = None
    ) -> None:
        self.settings = settings
        self.source = source_topic
        self.scorer_factory = scorer_factory  # default scoring.load_scorer

    def __call__(self, key: tuple[Any, ...], batches: Iterator[pd.DataFrame], state: Any) -> Iterator[pd.DataFrame]:
        gkey = str(key[0])
        now_ms = int(state.getCurrentProcessingTimeMs())
        if state.hasTimedOut:
            doc = orjson.loads(state.get[0]) if state.exists else _empty_state()
            out = self._sweep(gkey, doc, now_ms)
            state.update((orjson.dumps(doc).decode(),))
            yield out
            return
        frame = pd.concat(list(batches), ignore_index=True)
        if gkey == INVALID_GROUP:
            yield self._invalid(frame, now_ms)
            return
        doc = orjson.loads(state.get[0]) if state.exists else _empty_state()
        out = self._device(gkey, frame, doc, now_ms)
        state.update((orjson.dumps(doc).decode(),))
        state.setTimeoutDuration(int(self.settings.processing.inactive_after_s * 1000))
        yield out

    # ------------------------------------------------------------------------------------------ invalid rows
    def _invalid(self, frame: pd.DataFrame, now_ms: int) -> pd.DataFrame:
        counts = frame["reason"].value_counts()
        quality = {f"invalid_{reason}": int(n) for reason, n in counts.items()}
        quality["invalid"] = int(len(frame))
        return pd.concat(
            [
                dead_letters(frame, frame["reason"], source=self.source, at_ms=now_ms),
                _payload_rows("quality", [quality]),
            ],
            ignore_index=True,
        )

    # ------------------------------------------------------------------------------------------ wall clock
    def _sweep(self, device_id: str, doc: dict[str, Any], now_ms: int) -> pd.DataFrame:
        gone = gaps.sweep_inactive(doc["tracks"])
        parts = [self._status_rows(device_id, doc, gone, now_ms)]
        if doc["ep"] is not None:
            ep = episodes.close(doc["ep"], EPISODE_QUIET_S)
            doc["ep"] = None
            parts.append(self._alert_rows(device_id, [ep]))
        parts.append(_payload_rows("quality", [{"inactive_sensors": len(gone)}], device_id))
        return pd.concat(parts, ignore_index=True)

    # ------------------------------------------------------------------------------------------ one device
    def _device(self, device_id: str, frame: pd.DataFrame, doc: dict[str, Any], now_ms: int) -> pd.DataFrame:
        cfg = self.settings.processing
        lateness_ms = int(cfg.allowed_lateness_s * 1000)
        frame = frame.assign(ts_ms=timestamps_ms(frame["timestamp"]))
        seen = {sid: np.asarray(ts, dtype="int64") for sid, ts in doc["seen"].items()}
        fresh, late, duplicates = drop_duplicates_and_late(frame, seen, doc["newest"], lateness_ms)
        parts: list[pd.DataFrame] = []
        if len(late):
            parts.append(dead_letters(late, pd.Series([LATE_REASON] * len(late)), source=self.source, at_ms=now_ms))

        # Readings older than their sensor's newest one (inside the lateness) are stored, but not fed to the
        # features: those need event-time order per sensor.
        last_ts = {sid: t["last_ts"] for sid, t in doc["tracks"].items() if t["last_ts"] is not None}
        last = _lookup(fresh["sensor_id"], last_ts)
        behind = fresh["ts_ms"].to_numpy(dtype="float64") <= last  # NaN (new sensor) compares False
        gap = gaps.fill_gaps(
            fresh[~behind], doc["tracks"], max_interpolated_gap=cfg.max_interpolated_gap,
            inactive_after_s=cfg.inactive_after_s,
        )  # fmt: skip

        if len(fresh):
            for sid, ts in fresh.groupby("sensor_id")["ts_ms"].max().items():
                doc["newest"][sid] = max(int(ts), doc["newest"].get(sid, int(ts)))
            doc["wm"] = max(doc["newest"].values())
        self._remember(doc, fresh, lateness_ms)

        measured = fresh[~behind].assign(interpolated=False)
        filled = gap.interpolated
        if len(filled):
            filled = filled.assign(device_id=device_id, interpolated=True, status="interpolated", ground_truth=None,
                                   kafka_partition=None, kafka_offset=None)  # fmt: skip
        batch = pd.concat([measured, filled], ignore_index=True) if len(filled) else measured
        readings = self._score(device_id, batch, doc)
        if behind.any():
            readings = pd.concat([readings, self._unscored(fresh[behind])], ignore_index=True)
        readings = readings.assign(ingested_ms=now_ms)
        parts.append(self._reading_rows(readings))

        location = str(fresh["location"].iloc[0]) if len(fresh) else ""
        touched, doc["ep"] = episodes.update(
            readings if len(readings) else readings.assign(is_anomaly=False), doc["ep"], device_id=device_id,
            location=location, newest_ms=doc["wm"], quiet_s=EPISODE_QUIET_S,
        )  # fmt: skip
        if touched:
            parts.append(self._alert_rows(device_id, touched))
        changed = sorted(set(gap.touched) | set(gap.went_inactive))
        parts.append(self._status_rows(device_id, doc, changed, now_ms))
        quality = {
            "valid": int(len(fresh)),
            "duplicates": duplicates,
            "late": int(len(late)),
            "out_of_order": int(behind.sum()),
            "interpolated": int(len(filled)),
            "gaps_interpolated": gap.gaps_interpolated,
            "gaps_inactive": gap.gaps_inactive,
            "inactive_sensors": len(gap.went_inactive),
        }
        parts.append(_payload_rows("quality", [quality], device_id))
        return pd.concat([p for p in parts if len(p)], ignore_index=True)

    def _remember(self, doc: dict[str, Any], fresh: pd.DataFrame, lateness_ms: int) -> None:
        """Keep per sensor the event times inside its lateness horizon, for dedup across batches."""
        seen: dict[str, list[int]] = {}
        new_ts = fresh.groupby("sensor_id")["ts_ms"].agg(list).to_dict() if len(fresh) else {}
        for sid in set(doc["seen"]) | set(new_ts):
            horizon = doc["newest"].get(sid, 0) - lateness_ms
            ts = np.concatenate([np.asarray(doc["seen"].get(sid, []), dtype="int64"),
                                 np.asarray(new_ts.get(sid, []), dtype="int64")])  # fmt: skip
            kept = np.unique(ts[ts >= horizon])
            if len(kept):
                seen[sid] = kept.tolist()
        doc["seen"] = seen

    def _score(self, device_id: str, batch: pd.DataFrame, doc: dict[str, Any]) -> pd.DataFrame:
        from millrace.processing.features import FEATURE_COLUMNS, device_step

        if batch.empty:
            return batch.assign(score=np.nan, is_anomaly=False, anomaly_kind=None, reason=None, top_features=None,
                                features="{}")  # fmt: skip
        batch = batch.assign(
            device_id=device_id,
            timestamp=pd.to_datetime(batch["ts_ms"], unit="ms", utc=True).astype("datetime64[ns, UTC]"),
        )
        feats, doc["feat"] = device_step(batch, doc["feat"], self.settings.processing)
        scored = _scorer(self.settings, self.scorer_factory).score(feats)
        interpolated = scored["interpolated"].astype(bool)
        scored["is_anomaly"] = scored["is_anomaly"].astype(bool) & ~interpolated  # never alert on invented data
        scored["anomaly_kind"] = scored["anomaly_kind"].where(scored["is_anomaly"], None)
        scored["features"] = _json_lines(scored[list(FEATURE_COLUMNS)].round(6))
        return scored

    @staticmethod
    def _unscored(rows: pd.DataFrame) -> pd.DataFrame:
        return rows.assign(interpolated=False, score=np.nan, is_anomaly=False, anomaly_kind=None, reason=None,
                           top_features=None, features="{}")  # fmt: skip

    @staticmethod
    def _reading_rows(readings: pd.DataFrame) -> pd.DataFrame:
        n = len(readings)
        if n == 0:
            return _frame({}, 0)
        rows = {col: readings[col].to_numpy() for col in STEP_OUTPUT_COLUMNS if col in readings.columns}
        rows["out"] = np.full(n, "reading", dtype=object)
        rows["timestamp"] = pd.to_datetime(readings["ts_ms"].to_numpy(), unit="ms", utc=True)
        rows["payload"] = [None] * n
        frame = _frame(rows, n)
        frame["score"] = frame["score"].astype("float64")
        return frame

    def _alert_rows(self, device_id: str, touched: list[episodes.Episode]) -> pd.DataFrame:
        threshold = self.settings.processing.zscore_threshold
        return _payload_rows(
            "alert", [episodes.to_alert(ep, device_id=device_id, zscore_threshold=threshold) for ep in touched],
            device_id,
        )  # fmt: skip

    @staticmethod
    def _status_rows(device_id: str, doc: dict[str, Any], sensor_ids: list[str], now_ms: int) -> pd.DataFrame:
        updated = _iso_ms(now_ms)
        payloads = []
        for sid in sensor_ids:
            track = doc["tracks"][sid]
            payloads.append({
                "sensor_id": sid, "device_id": device_id, "sensor_type": track["type"], "location": track["loc"],
                "last_event_time": _iso_ms(track["last_ts"]) if track["last_ts"] is not None else None,
                "state": "active" if track["active"] else "inactive", "expected_interval_s": track["interval_s"],
                "updated_at": updated,
            })  # fmt: skip
        return _payload_rows("status", payloads, device_id)


def _lookup(keys: pd.Series, table: dict[str, int]) -> np.ndarray:
    """float64 array of ``table[key]`` per row (NaN where absent), whatever the string dtype of ``keys``."""
    if not table or keys.empty:
        return np.full(len(keys), np.nan)
    return pd.Series(keys.to_numpy(dtype=object)).map(table).to_numpy(dtype="float64", na_value=np.nan)


def _json_lines(frame: pd.DataFrame) -> list[str]:
    """One JSON object per row, built by pandas in C rather than a Python loop over rows."""
    if frame.empty:
        return []
    text = frame.to_json(orient="records", lines=True)
    return text.rstrip("\n").split("\n")


def make_step(
    settings: Settings, *, source_topic: str, scorer_factory: Callable[[Settings], Any] | None = None
) -> Callable[..., Iterator[pd.DataFrame]]:
    return DeviceStep(settings, source_topic=source_topic, scorer_factory=scorer_factory)
