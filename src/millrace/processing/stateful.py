"""The stateful step of the streaming job, run by ``applyInPandasWithState`` once per state bucket and batch.

Devices are hashed into a few buckets (``spark.state_buckets``, default: one per shuffle partition); one call
processes every device of its bucket that has readings in the micro-batch, vectorised across devices, so
the fixed cost of a call (pandas, Arrow, state (de)serialisation) is paid per bucket, not per device.

In order (:func:`process`): dead letters for invalid rows; duplicates and late events (per-sensor watermark =
newest event time - allowed lateness); gaps (interpolation / inactivity); features.devices_step; the injected
scorer; alert episodes per device; sensor status; data-quality counters. Alerts and readings leave through the
injected sink (processing.output.StepSink; in the job jobs.sink, to the store and the alerts and predictions
topics) — alerts first, so an alert is visible as soon as its bucket is computed rather than when the whole
micro-batch is. The rest leaves as rows of schema.STEP_OUTPUT, told apart by ``out``, for the driver: window
partials, sensor status, quality counters, dead letters, and the alerts again as "alert_sent" rows, only
counted.

The bucket's state is a processing.state.BucketState (typed, versioned, one JSON text in Spark's state store).
Each stage takes the state and returns the new one with what it produced; nothing is kept on the step object
between calls. A device silent for ``inactive_after_s`` of wall-clock time is swept (its sensors reported
inactive, its episode closed) by the next call of its bucket, or by the bucket's processing-time timeout when
the whole bucket went silent.

Determinism: the only clock read is the micro-batch time Spark fixes (``getCurrentProcessingTimeMs``), so a
batch replayed after a crash from the state Spark committed yields the same rows and the same state, and writes
the same alerts and readings to the sink, whose upserts change nothing.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import orjson
import pandas as pd

from millrace.config import ProcessingSettings, Settings
from millrace.processing import episodes, gaps
from millrace.processing import state as bucket_state
from millrace.processing.features import FEATURE_COLUMNS, devices_step
from millrace.processing.output import (
    SinkFactory,
    StepSink,
    alert_rows,
    dead_letters,
    features_json,
    payload_rows,
    reencoded,
    status_rows,
    window_rows,
)
from millrace.processing.schema import STEP_OUTPUT_COLUMNS
from millrace.processing.state import BucketState, Episode, Track
from millrace.processing.transforms import INVALID_GROUP, LATE_REASON, drop_duplicates_and_late, timestamps_ms

log = logging.getLogger(__name__)

# Stored with every reading (the enrichment: rolling statistics, rate, time since last, device
# context); a flagged reading carries every feature, for explaining it.
STORED_FEATURES: tuple[str, ...] = (
    "dt_s", "rate", "roll_mean", "roll_std", "z", "robust_z", "dev_max_abs_z", "pair_resid_z",
)  # fmt: skip


class StepScorer(Protocol):
    """What the step needs of processing.scoring.Scorer: the scores of featured readings. ``history`` maps each
    device to the past rows a device-level model needs; the scorer updates it in place (the step keeps it in
    the state)."""

    def score(self, features: pd.DataFrame, history: dict[str, Any] | None = None) -> pd.DataFrame: ...


ScorerFactory = Callable[[Settings], StepScorer]
_scorers: dict[str, StepScorer] = {}  # one scorer per Python worker process (workers are reused across batches)


def _scorer(settings: Settings, factory: ScorerFactory) -> StepScorer:
    key = settings.model_dump_json()
    if key not in _scorers:
        _scorers[key] = factory(settings)
    return _scorers[key]


@dataclass(frozen=True)
class StepResult:
    """What one call produces: output rows (alerts still as "alert"), the readings for the sink, the new state."""

    rows: pd.DataFrame
    readings: pd.DataFrame | None
    state: BucketState


class StatefulStep:
    """The function handed to applyInPandasWithState (picklable, as long as its factories are: the job's are
    module-level functions, bound to the settings by :func:`make_step`).

    The step reads only the processing settings; ``scorer`` and ``sink`` return the process's scorer and sink
    (built on first use in each Python worker and kept: workers are reused across batches). ``freeze_gc`` is for a
    process that runs nothing but the step (a Spark Python worker): see :func:`_freeze_once`.
    """

    def __init__(
        self,
        cfg: ProcessingSettings,
        *,
        source_topic: str,
        scorer: Callable[[], StepScorer],
        sink: Callable[[], StepSink],
        freeze_gc: bool = False,
    ) -> None:
        self.cfg = cfg
        self.freeze_gc = freeze_gc  # the job's workers: see _freeze_once
        self.source = source_topic
        self.scorer = scorer  # the job's follows the model registry (ml.follow.load_scorer, one per worker)
        # The job's writes to the store and the output topics (jobs.sink.worker_sink, one per worker): readings
        # are written here, in the executor, and reach the driver only as window partials.
        self.sink = sink

    def __call__(self, key: tuple[Any, ...], batches: Iterator[pd.DataFrame], state: Any) -> Iterator[pd.DataFrame]:
        if self.freeze_gc:
            _freeze_once()
        t = _CallTimer(str(key[0]))
        now_ms = int(state.getCurrentProcessingTimeMs())
        if state.hasTimedOut:
            result = timed_out(_load(state), now_ms, self.cfg)
        else:
            frame = pd.concat(list(batches), ignore_index=True)
            t.lap("input", rows=len(frame))
            if str(key[0]) == INVALID_GROUP:
                yield invalid_rows(frame, source=self.source, now_ms=now_ms)
                return
            loaded = _load(state)
            t.lap("state_load")
            result = process(frame, loaded, now_ms, cfg=self.cfg, source=self.source, scorer=self.scorer())
            t.lap("process")
        out = self._send(result, t)
        state.update((bucket_state.dumps(result.state),))
        t.lap("state_dump")
        if not state.hasTimedOut:
            state.setTimeoutDuration(int(self.cfg.inactive_after_s * 1000))
        yield out
        t.lap("output")
        t.done()

    def _send(self, result: StepResult, t: _CallTimer | None = None) -> pd.DataFrame:
        """Write the call's alerts, then its readings, to the sink; returns the output rows with the alerts
        marked "alert_sent", for the driver to count."""
        out = result.rows
        sink = self.sink()
        if t is not None:
            t.lap("sink_open")
        is_alert = (out["out"] == "alert").to_numpy()
        if is_alert.any():
            alerts = [orjson.loads(p) for p in out.loc[is_alert, "payload"]]
            sensors = result.state.sensors
            ids = {s for alert in alerts for s in alert.get("sensor_ids") or ()}
            sink.write_alerts(alerts, {s: sensors[s].track.sensor_type for s in sorted(ids) if s in sensors})
            out = out.assign(out=out["out"].mask(is_alert, "alert_sent"))
        if t is not None:
            t.lap("alerts")
        if result.readings is not None and len(result.readings):
            sink.write_readings(result.readings)
        if t is not None:
            t.lap("readings", **getattr(sink, "timings", {}))
        return out


TIMING_ENV = "MILLRACE_STEP_TIMING"  # a file: each call of the step appends its phases' times there (JSON lines)


def _runq_s() -> float:
    """Seconds this thread has waited on a run queue (Linux schedstat; 0 elsewhere)."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class _CallTimer:
    """Wall, thread-CPU and run-queue seconds per phase of one call of the step, appended as one JSON line to the
    file named by MILLRACE_STEP_TIMING (with the worker's pid and the call's start and end, epoch seconds);
    nothing when unset. For finding where a micro-batch waits, and whether on a lock or for a core."""

    def __init__(self, bucket: str) -> None:
        self.path = os.environ.get(TIMING_ENV)
        if not self.path:
            return
        # The process's CPU too (every thread: librdkafka's, and the worker's between calls).
        self.record: dict[str, Any] = {
            "pid": os.getpid(),
            "bucket": bucket,
            "start": time.time(),
            "process_cpu_start": time.process_time(),
        }
        self.wall, self.cpu, self.runq = time.perf_counter(), time.thread_time(), _runq_s()

    def lap(self, phase: str, **extra: Any) -> None:
        """[wall, CPU, run-queue wait] seconds since the last lap: wall minus CPU minus run-queue wait is
        time spent blocked (a lock, a socket, a sleep); the run-queue wait is time ready but given no core."""
        if not self.path:
            return
        wall, cpu, runq = time.perf_counter(), time.thread_time(), _runq_s()
        self.record[phase] = [round(wall - self.wall, 4), round(cpu - self.cpu, 4), round(runq - self.runq, 4)]
        self.record.update(extra)
        self.wall, self.cpu, self.runq = wall, cpu, runq

    def done(self) -> None:
        if not self.path:
            return
        self.record["end"] = time.time()
        self.record["process_cpu_end"] = time.process_time()
        with open(self.path, "ab") as f:
            f.write(orjson.dumps(self.record) + b"\n")


_calls = 0  # calls of the step in this process (with freeze_gc)
FREEZE_AT_CALL = 2


def _freeze_once() -> None:
    """At a worker's second call, move every object it then holds (pyspark, pandas, the scorer and the sink the
    first call opened) out of the garbage collector's reach: each full collection would otherwise walk them all
    again, several times per call, although they live as long as the worker (a fifth of the worker's CPU, in
    docs/benchmarks/stream-cost.md). The first call's garbage is collected first; objects created later are
    collected as usual."""
    global _calls
    _calls += 1
    if _calls == FREEZE_AT_CALL:
        gc.collect()
        gc.freeze()


def _load(state: Any) -> BucketState:
    return bucket_state.loads(state.get[0] if state.exists else None)


# ---------------------------------------------------------------------------------------------- invalid rows
def invalid_rows(frame: pd.DataFrame, *, source: str, now_ms: int) -> pd.DataFrame:
    """Rows that failed validation: dead letters with their original bytes, and their counts by reason."""
    counts = frame["reason"].value_counts()
    quality = {f"invalid_{reason}": int(n) for reason, n in counts.items()}
    quality["invalid"] = int(len(frame))
    return pd.concat(
        [dead_letters(frame, frame["reason"], source=source, at_ms=now_ms), payload_rows("quality", [quality])],
        ignore_index=True,
    )


# ---------------------------------------------------------------------------------------------- valid rows
def process(
    frame: pd.DataFrame, bucket: BucketState, now_ms: int, *, cfg: ProcessingSettings, source: str, scorer: StepScorer
) -> StepResult:
    """One call of the step on the valid readings ``frame`` of a bucket (schema.STEP_INPUT_COLUMNS)."""
    lateness_ms = int(cfg.allowed_lateness_s * 1000)
    frame = frame.assign(ts_ms=timestamps_ms(frame["timestamp"]))
    fresh, late, duplicates = _admit(frame, bucket, lateness_ms)
    # Readings older than their sensor's newest one (inside the lateness) are stored, but not fed to the
    # features: those need event-time order per sensor.
    behind = fresh["ts_ms"].to_numpy(dtype="float64") <= _lookup(
        fresh["sensor_id"], {sid: s.track.last_ms for sid, s in bucket.sensors.items()}
    )
    ahead = fresh[~behind]
    gap, tracks = gaps.fill_gaps(
        ahead, bucket.tracks(), max_interpolated_gap=cfg.max_interpolated_gap, inactive_after_s=cfg.inactive_after_s
    )
    bucket, present = _observe(bucket, fresh, tracks, now_ms, lateness_ms)
    scored, bucket = score(_with_interpolated(ahead, gap.interpolated, tracks), bucket, cfg, scorer)
    readings = scored if not behind.any() else pd.concat([scored, _unscored(fresh[behind])], ignore_index=True)
    stored = _stored(readings)
    touched, bucket = fold_episodes(readings, bucket, present, cfg.episode_quiet_s)
    swept_rows, bucket, swept = sweep(bucket, now_ms, present, cfg)
    quality = {
        "valid": int(len(fresh)),
        "duplicates": duplicates,
        "late": int(len(late)),
        "out_of_order": int(behind.sum()),
        "interpolated": int(len(gap.interpolated)),
        "gaps_interpolated": gap.gaps_interpolated,
        "gaps_inactive": gap.gaps_inactive,
        "inactive_sensors": len(gap.went_inactive) + swept,
    }
    parts = [
        _late_rows(late, source, now_ms),
        window_rows(stored, cfg.window_s),
        alert_rows(touched, cfg.zscore_threshold),
        status_rows(tracks, sorted(set(gap.touched) | set(gap.went_inactive)), now_ms),
        *swept_rows,
        payload_rows("quality", [quality]),
    ]
    return StepResult(pd.concat([p for p in parts if len(p)], ignore_index=True), stored, bucket)


def timed_out(bucket: BucketState, now_ms: int, cfg: ProcessingSettings) -> StepResult:
    """The bucket got no readings for ``inactive_after_s`` of wall-clock time: every device not yet reported
    silent is swept."""
    rows, bucket, swept = sweep(bucket, now_ms, set(), cfg, timed_out=True)
    rows.append(payload_rows("quality", [{"inactive_sensors": swept}]))
    return StepResult(pd.concat(rows, ignore_index=True), None, bucket)


def _admit(frame: pd.DataFrame, bucket: BucketState, lateness_ms: int) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(fresh, late, duplicate count): transforms.drop_duplicates_and_late against the sensors' state."""
    sensors = bucket.sensors
    seen = {sid: sensors[sid].seen_times() for sid in frame["sensor_id"].unique() if sid in sensors}
    newest = {sid: s.newest_ms for sid, s in sensors.items()}
    return drop_duplicates_and_late(frame, seen, newest, lateness_ms)


def _late_rows(late: pd.DataFrame, source: str, now_ms: int) -> pd.DataFrame:
    if not len(late):
        return late
    late = late.assign(raw=reencoded(late))
    return dead_letters(late, pd.Series([LATE_REASON] * len(late)), source=source, at_ms=now_ms)


def _observe(
    bucket: BucketState, fresh: pd.DataFrame, tracks: Mapping[str, Track], now_ms: int, lateness_ms: int
) -> tuple[BucketState, set[str]]:
    """The bucket after its fresh readings (new tracks, watermarks, dedup horizons, devices seen now), and the
    devices present in the batch."""
    sensors = bucket_state.observe_sensors(bucket.sensors, _split(fresh, "sensor_id", "ts_ms"), tracks, lateness_ms)
    newest: dict[str, int] = {}
    locations: dict[str, str] = {}
    if len(fresh):
        by_device = fresh.groupby("device_id", sort=False)
        newest = {str(d): int(ts) for d, ts in by_device["ts_ms"].max().items()}
        locations = {str(d): str(loc) for d, loc in by_device["location"].first().items()}
    devices = bucket_state.observe_devices(bucket.devices, newest, locations, now_ms)
    return BucketState(sensors=sensors, devices=devices), set(newest)


def _split(frame: pd.DataFrame, key: str, column: str) -> dict[str, np.ndarray]:
    """``frame[column]`` as int64 arrays per value of ``key`` (in order of appearance)."""
    if not len(frame):
        return {}
    codes, names = pd.factorize(frame[key])  # on the column itself: no Python string per row
    order = np.argsort(codes, kind="stable")
    values = frame[column].to_numpy(dtype="int64")[order]
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    return {str(name): values[bounds[k] : bounds[k + 1]] for k, name in enumerate(names)}


def _with_interpolated(ahead: pd.DataFrame, filled: pd.DataFrame, tracks: Mapping[str, Track]) -> pd.DataFrame:
    """The readings fed to the features: measured ones, and the points interpolated into short gaps."""
    measured = ahead.assign(interpolated=False)
    if not len(filled):
        return measured
    filled = filled.assign(
        device_id=filled["sensor_id"].map(lambda s: tracks[s].device_id),
        interpolated=True,
        status="interpolated",
        ground_truth=None,
        kafka_partition=None,
        kafka_offset=None,
    )
    return pd.concat([measured, filled], ignore_index=True)


def score(
    batch: pd.DataFrame, bucket: BucketState, cfg: ProcessingSettings, scorer: StepScorer
) -> tuple[pd.DataFrame, BucketState]:
    """Features and scores of ``batch``, and the bucket with its devices' new feature state and history."""
    if batch.empty:
        return _unscored(batch), bucket
    batch = batch.assign(
        timestamp=pd.to_datetime(batch["ts_ms"], unit="ms", utc=True).astype("datetime64[ns, UTC]"),
    )
    devices = dict(bucket.devices)
    feature_states = {d: dev.features for d, dev in devices.items() if dev.features is not None}
    feats, new_states = devices_step(batch, feature_states, cfg)
    # A device-level model needs each device's last rows of values (lags, smoothing): kept in the state.
    history = {d: devices[d].history for d in new_states if devices[d].history}
    scored = scorer.score(feats, history=history)
    for device_id, st in new_states.items():
        devices[device_id] = replace(devices[device_id], features=st)
    for device_id, rows in history.items():
        devices[device_id] = replace(devices[device_id], history=rows)
    interpolated = scored["interpolated"].astype(bool).to_numpy()
    flagged = scored["is_anomaly"].astype(bool).to_numpy() & ~interpolated  # never alert on invented data
    scored["is_anomaly"] = flagged
    scored["anomaly_kind"] = scored["anomaly_kind"].where(flagged, None)
    scored["features"] = features_json(scored, STORED_FEATURES, FEATURE_COLUMNS, flagged)
    return scored, replace(bucket, devices=devices)


def _unscored(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.assign(
        interpolated=rows.get("interpolated", False),
        score=np.nan,
        is_anomaly=False,
        anomaly_kind=None,
        reason=None,
        top_features=None,
        features="{}",
    )


def _stored(readings: pd.DataFrame) -> pd.DataFrame:
    """The readings as the sink takes them: the reading columns of schema.STEP_OUTPUT, the timestamp from the
    event-time ms."""
    keep = [col for col in STEP_OUTPUT_COLUMNS if col in readings.columns]
    return readings[keep].assign(timestamp=pd.to_datetime(readings["ts_ms"].to_numpy(), unit="ms", utc=True))


def fold_episodes(
    readings: pd.DataFrame, bucket: BucketState, present: set[str], quiet_s: float
) -> tuple[list[tuple[str, Episode]], BucketState]:
    """Fold anomalous readings into each present device's episode; close episodes gone quiet in event time.
    Returns the episodes touched, as (device_id, episode), and the bucket with the devices' open episodes."""
    by_device = episodes.by_device(readings) if len(readings) else {}
    devices = dict(bucket.devices)
    touched: list[tuple[str, Episode]] = []
    for device_id in sorted(present):
        dev = devices[device_id]
        rows = by_device.get(device_id)
        if rows is not None:
            eps, episode = episodes.update(
                rows,
                dev.episode,
                device_id=device_id,
                location=dev.location,
                newest_ms=dev.newest_ms,
                quiet_s=quiet_s,
            )
            touched.extend((device_id, ep) for ep in eps)
        else:
            closed = episodes.expire(dev.episode, dev.newest_ms, quiet_s)
            if closed is None:
                continue
            touched.append((device_id, closed))
            episode = None
        devices[device_id] = replace(dev, episode=episode)
    return touched, replace(bucket, devices=devices)


def sweep(
    bucket: BucketState, now_ms: int, present: set[str], cfg: ProcessingSettings, *, timed_out: bool = False
) -> tuple[list[pd.DataFrame], BucketState, int]:
    """Devices without readings for ``inactive_after_s`` of wall-clock time (all of them when the bucket timed
    out), not yet reported: their sensors become inactive and their open episode closes. Returns the status and
    alert rows, the bucket after, and how many sensors went inactive."""
    inactive_ms = int(cfg.inactive_after_s * 1000)
    rows: list[pd.DataFrame] = []
    swept = 0
    tracks = bucket.tracks()
    devices = dict(bucket.devices)
    silent = [
        device_id
        for device_id, dev in bucket.devices.items()
        if device_id not in present and not dev.swept and (timed_out or now_ms - dev.seen_at_ms >= inactive_ms)
    ]
    if not silent:
        return rows, bucket, 0
    for device_id in silent:
        dev = devices[device_id]
        gone, tracks = gaps.sweep_inactive(tracks, device_id)
        swept += len(gone)
        rows.append(status_rows(tracks, gone, now_ms))
        if dev.episode is not None:
            closed = episodes.close(dev.episode, cfg.episode_quiet_s)
            rows.append(alert_rows([(device_id, closed)], cfg.zscore_threshold))
        devices[device_id] = replace(dev, swept=True, episode=None)
    return rows, replace(bucket, devices=devices).with_tracks(tracks), swept


def _lookup(keys: pd.Series, table: dict[str, int]) -> np.ndarray:
    """float64 array of ``table[key]`` per row (NaN where absent), whatever the string dtype of ``keys``."""
    if not table or keys.empty:
        return np.full(len(keys), np.nan)
    codes, names = pd.factorize(keys, use_na_sentinel=False)  # a lookup per distinct key
    return np.array([table.get(name, np.nan) for name in names], dtype="float64")[codes]


def make_step(
    settings: Settings,
    *,
    source_topic: str,
    scorer_factory: ScorerFactory,
    sink_factory: SinkFactory,
    freeze_gc: bool = False,
) -> Callable[..., Iterator[pd.DataFrame]]:
    """The job's step: the processing settings, and the scorer and sink factories bound to ``settings`` (they
    need the registry, the store and the topics)."""
    return StatefulStep(
        settings.processing,
        source_topic=source_topic,
        scorer=functools.partial(_scorer, settings, scorer_factory),
        sink=functools.partial(sink_factory, settings),
        freeze_gc=freeze_gc,
    )
