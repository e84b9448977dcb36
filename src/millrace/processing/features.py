"""Per-reading features: the ONE implementation used by the stream job, training and evaluation.

A reading's features depend only on the reading itself and on the past of its device (never the future), so
a reading is scored the moment it arrives. :func:`device_step` processes a batch of one device's readings and
carries everything it needs in a small state, JSON-able through :func:`dump_state` (bounded: the last
``HISTORY`` values per sensor, ``REF_BLOCKS`` block summaries, one partial block of device rows). Every
statistic is computed from whole windows or whole blocks, never from running sums, so any chronological
chunking of a device's readings (aligned on timestamps) yields exactly the same numbers: :func:`frame_features`
over a whole frame equals :func:`device_step` over micro-batches.

Per sensor (own history):
  dt_s          seconds since the sensor's previous reading
  roll_mean/std mean and sample std of the previous ``ROLL`` values
  z             (value - roll_mean) / roll_std
  robust_z      (value - median) / (1.4826 MAD) over the previous ``ROLL`` values
  rate          change per second since the previous reading
  diff_z        change since the previous reading in units of the reference noise
  ref_z         deviation from the slow reference baseline (median of the last ``REF_BLOCKS`` completed block
                medians; scale = median of their standard deviations), in noise units
  short_ref_z   the same for the mean of the last ``SHORT`` values (sustained shifts)
  trend_z       least-squares change over the last ``TREND`` values, in noise units (drift)
  noise_ratio   std of the last ``NOISE`` values / reference noise (noise bursts; 0 when stuck)
  stuck_run     consecutive identical values ending here
  mid_ref_z     like short_ref_z for the mean of the last ``ROLL`` values (a shift is flat, a drift grows)
  trend_long_z  least-squares change over the last ``LONG`` values, in noise units (slow drift)
  jump_age      readings since the last jump (|diff_z| > ``JUMP``), capped at ``JUMP_AGE_CAP``: a level shift
                jumped once, a drift or a ramp never did
  jump_z        diff_z of that jump (0 before any jump)
  step_z        mean of the last ``STEP`` values minus the mean of the ``STEP`` before them, in units of the
                *local* noise (from the last ``LOCAL`` consecutive differences, which a slow movement of the
                sensor with the load or the day does not inflate as it does the reference scale)
  step_max_z    the largest step_z-like step within the last ``STEP_SPAN`` readings (signed), local noise units
  step_age      readings since that step (0 .. STEP_SPAN - 1)
  step_level_z  the mean of the last ``STEP`` values minus the mean of the ``STEP`` values before that step,
                along the step's sign, in local noise units: a level shift keeps its step, a spike returns
  shift_age     readings since the last step of at least ``SHIFT_STEP`` local noise units (|step_z|), carried
                across batches without limit (capped at ``JUMP_AGE_CAP``): a level shift stepped once, however
                long ago; a drift never did. NaN while that step is within the last ``STEP_SPAN`` readings
                (the step_* features describe it then; both at once made spikes be named worse)
  shift_level_z the mean of the last ``STEP`` values minus the mean of the ``STEP`` values ending 2 * STEP
                readings before that step, along its sign, in local noise units (NaN like shift_age, and
                before any large step)
Device context (the other sensors of the device, as of the reading's time):
  dev_max_abs_z  largest |ref_z| among the device's other sensors
  dev_mean_abs_z mean |ref_z| over the device's sensors
  pair_resid_z   residual against the partner sensor (current~vibration, humidity~temperature,
                 voltage~current, pressure~temperature) from a regression over the reference blocks,
                 in residual-noise units
  pair_resid_mean mean pair_resid_z over the device's last ``SHORT`` rows (sustained correlation breaks)
  pair_best_z    residual against the partner that explains the sensor best (smallest unexplained share of
                 its variance over the reference blocks), in residual-noise units
  pair_best_mean mean pair_best_z over the device's last ``ROLL`` rows
  pair_mean_z    the sensor's mean over the last ``ROLL`` device rows against what its best partner's mean
                 predicts, from a regression of block means on block means (no slope flattening by the
                 partner's noise): an offset on a sensor that follows the load or the day shows against what
                 the partner explains, not against the sensor's own movement
  pair_min_mean  the smallest |pair_mean_z|-like deviation over the partners that explain at least half the
                 block means' variance (``GOOD_FIT``): an anomaly on one partner breaks only its own pairs
  dev_resid_mean the residual of the sensor regressed on ALL the device's other sensors at once (over the
                 last ``REF_BLOCKS`` completed blocks of device rows, :mod:`millrace.processing.devreg`),
                 in residual-spread units, averaged over the last ``ROLL`` device rows (times sqrt(ROLL), so
                 it is ~N(0, 1) on normal data): a sustained offset that the partners together do not explain;
                 its spread is the median block's residual spread (an offset inside the window inflates the
                 pooled one)
  held_resid_z   the same residual against the regression in force when the sensor last stepped (|step_z| >=
                 SHIFT_STEP, its level before normal), for ``HELD_SPAN`` rows from the step, averaged over the
                 last ROLL rows minus the level before the step: a long level shift bends the sliding
                 regression as it enters the reference blocks, the held one does not move (NaN otherwise)
The pair regressions use only the reference blocks that are not themselves off (``pairs.PAIR_ADMIT``), so an
anomaly inside the 30-minute reference window does not teach the regression or inflate its noise.

Where each family lives: features_sensor (SENSOR_FEATURES, sensors x readings at once), features_pair (the
partner regressions), features_device (the device's rows, context and all-sensor regression); names, window
sizes and partner types in features_spec. This module puts them together for a batch of many devices.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from millrace.config import ProcessingSettings
from millrace.processing.features_device import (
    DeviceBatch,
    DeviceFeatureState,
    PreparedRows,
    dump_device,
    finish_rows,
    load_device,
    pair_columns,
    prepare_rows,
)
from millrace.processing.features_pair import pair_features
from millrace.processing.features_sensor import new_sensor, sensors_step
from millrace.processing.features_spec import (
    BLOCK,
    DEVICE_FEATURES,
    FEATURE_COLUMNS,
    HISTORY,
    JUMP,
    JUMP_AGE_CAP,
    LONG,
    NOISE,
    PARTNERS,
    REF_BLOCKS,
    ROLL,
    SENSOR_FEATURES,
    SHORT,
    TREND,
)
from millrace.processing.pairs import pair_fit

__all__ = [
    "BLOCK", "DEVICE_FEATURES", "FEATURE_COLUMNS", "HISTORY", "JUMP", "JUMP_AGE_CAP", "LONG", "NOISE", "PARTNERS",
    "REF_BLOCKS", "ROLL", "SENSOR_FEATURES", "SHORT", "STATE_VERSION", "TREND", "device_step", "devices_step",
    "dump_state", "empty_state", "frame_features", "load_state",
]  # fmt: skip

STATE_VERSION = 2  # 2: the device's state as arrays (features_device.DeviceFeatureState)


def empty_state() -> dict[str, Any]:
    """The state of a device that has not been seen yet."""
    return {"v": STATE_VERSION, "sensors": {}, "device": None}


def _current_state(state: dict[str, Any] | None) -> dict[str, Any]:
    """``state`` if it is of this STATE_VERSION; otherwise (none yet, or an older version) a fresh one."""
    return state if state is not None and state.get("v") == STATE_VERSION else empty_state()


# ---------------------------------------------------------------------------------------------- public API
_COLUMN = {name: i for i, name in enumerate(FEATURE_COLUMNS)}


def device_step(
    batch: pd.DataFrame, state: dict[str, Any], cfg: ProcessingSettings
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Features for a batch of ONE device's readings, and the device's new state.

    ``batch`` has sensor_id, device_id, sensor_type, location, timestamp (datetime64[ns, UTC]), value and
    interpolated, in any order; other columns are carried through. Returns the rows sorted by
    (timestamp, sensor_id) with FEATURE_COLUMNS added. ``state`` is not modified; pass the returned state to
    the next call. Batches must come in event-time order (the stream job orders within its lateness bound).
    ``cfg`` is accepted so thresholds can move into settings without changing callers.
    """
    if batch.empty:
        return batch.assign(**{name: pd.Series(dtype=float) for name in FEATURE_COLUMNS}), state
    device = str(batch["device_id"].iloc[0])
    frame, states = devices_step(batch.assign(device_id=device), {device: state}, cfg)
    return frame, states[device]


class _Batch(NamedTuple):
    """A batch's readings sorted by (device, timestamp, sensor), with its (device, sensor) pairs."""

    frame: pd.DataFrame  # the rows in that order
    ts: np.ndarray  # int64 ns
    values: np.ndarray
    dev: np.ndarray  # device index of each row (into devices)
    pair: np.ndarray  # pair index of each row
    devices: list[str]  # sorted
    pair_dev: np.ndarray  # device index of each pair (pairs sorted by device, then sensor id)
    pair_sid: np.ndarray  # sensor id of each pair
    pair_type: np.ndarray  # sensor type of each pair (of its first reading)


def devices_step(
    batch: pd.DataFrame, states: dict[str, dict[str, Any]], cfg: ProcessingSettings
) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """:func:`device_step` for the readings of MANY devices at once (the numbers are the same per device).

    ``states`` maps device_id to its state (absent: a new device). Returns the rows sorted by (device_id,
    timestamp, sensor_id) with FEATURE_COLUMNS added, and the new states of the devices in ``batch``.
    Sensors of all devices that share history length, reading count and batch size are computed together,
    so the per-call cost is paid once per batch, not once per device.
    """
    del cfg  # window sizes are module constants today
    if batch.empty:
        return batch.assign(**{name: pd.Series(dtype=float) for name in FEATURE_COLUMNS}), {}
    b = _sorted_batch(batch)
    olds = {d: _current_state(states.get(d)) for d in b.devices}
    # Features x rows: each feature is written along a contiguous row, and the array is already the layout of
    # a pandas float block, so the frame takes it without a transposing copy.
    feats = np.full((len(FEATURE_COLUMNS), len(b.frame)), np.nan)
    sensors = _sensor_features(b, olds, feats)
    devices = _device_features(b, olds, feats)
    new = {d: {"v": STATE_VERSION, "sensors": sensors[d], "device": devices[d]} for d in b.devices}
    frame = pd.concat([b.frame, pd.DataFrame(feats.T, columns=list(FEATURE_COLUMNS), copy=False)], axis=1)
    return frame, new


def _sorted_batch(batch: pd.DataFrame) -> _Batch:
    dev_codes, dev_names = pd.factorize(batch["device_id"], sort=True)
    # Sensors are ordered by name inside a device: rank unique (device, sensor) pairs.
    sid_codes, sid_names = pd.factorize(batch["sensor_id"], sort=True)
    pair_keys, pair_codes = np.unique(dev_codes.astype(np.int64) * len(sid_names) + sid_codes, return_inverse=True)
    raw_ts = batch["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    order = np.lexsort((pair_codes, raw_ts, dev_codes))
    in_order = bool((order[1:] > order[:-1]).all())
    frame = batch.reset_index(drop=True) if in_order else batch.take(order).reset_index(drop=True)
    first_of_pair = np.unique(pair_codes, return_index=True)[1]
    return _Batch(
        frame=frame,
        ts=raw_ts[order],
        values=frame["value"].to_numpy(dtype=float),
        dev=dev_codes[order],
        pair=pair_codes[order],
        devices=[str(d) for d in dev_names],
        pair_dev=pair_keys // len(sid_names),
        pair_sid=np.asarray(sid_names, dtype=object)[pair_keys % len(sid_names)],
        pair_type=batch["sensor_type"].array.take(first_of_pair).to_numpy(dtype=object),  # few leave Arrow
    )


def _sensor_features(
    b: _Batch, olds: dict[str, dict[str, Any]], feats: np.ndarray
) -> dict[str, dict[str, dict[str, Any]]]:
    """Writes SENSOR_FEATURES into ``feats``; returns the new sensor states per device. Sensors (of any device)
    with the same history length, count so far and batch size are computed together."""
    sensors = {d: dict(olds[d]["sensors"]) for d in b.devices}
    by_pair = np.argsort(b.pair, kind="stable")
    bounds = np.searchsorted(b.pair[by_pair], np.arange(len(b.pair_sid) + 1))
    keys = [(b.devices[b.pair_dev[u]], str(b.pair_sid[u])) for u in range(len(b.pair_sid))]
    groups: dict[tuple[int, int, int], list[int]] = {}
    for u, (d, sid) in enumerate(keys):
        st = sensors[d].get(sid) or new_sensor()
        groups.setdefault((len(st["x"]), int(st["n"]), int(bounds[u + 1] - bounds[u])), []).append(u)
    for members in groups.values():
        idx = np.stack([by_pair[bounds[u] : bounds[u + 1]] for u in members])
        group_states = [sensors[keys[u][0]].get(keys[u][1]) or new_sensor() for u in members]
        out, new_states = sensors_step(b.values[idx], b.ts[idx], group_states)
        at = idx.ravel()
        for name, column in out.items():
            feats[_COLUMN[name], at] = column.ravel()
        for u, st in zip(members, new_states, strict=True):
            sensors[keys[u][0]][keys[u][1]] = st
    return sensors


def _device_features(b: _Batch, olds: dict[str, dict[str, Any]], feats: np.ndarray) -> dict[str, DeviceFeatureState]:
    """Writes DEVICE_FEATURES into ``feats`` (from the sensor features there); returns the new device states.
    The partner regressions of every device are fitted in one call (each reference window on its own, so each
    device gets the numbers it would get alone)."""
    ref_z, step_z = feats[_COLUMN["ref_z"]], feats[_COLUMN["step_z"]]
    dev_bounds = np.searchsorted(b.dev, np.arange(len(b.devices) + 1))
    pair_bounds = np.searchsorted(b.pair_dev, np.arange(len(b.devices) + 1))
    prepared: list[PreparedRows] = []
    for d, name in enumerate(b.devices):
        lo, hi = dev_bounds[d], dev_bounds[d + 1]
        prev: DeviceFeatureState | None = olds[name]["device"]
        types = dict(zip(prev.cols, prev.types, strict=True)) if prev is not None else {}
        first_pair, last_pair = pair_bounds[d], pair_bounds[d + 1]
        for u in range(first_pair, last_pair):
            types.setdefault(str(b.pair_sid[u]), str(b.pair_type[u]))
        cols = tuple(sorted(types))
        col_of = {sid: i for i, sid in enumerate(cols)}
        local = np.array([col_of[str(sid)] for sid in b.pair_sid[first_pair:last_pair]], dtype=np.int64)
        batch = DeviceBatch(
            codes=local[b.pair[lo:hi] - first_pair],
            cols=cols,
            types=tuple(types[sid] for sid in cols),
            ts=b.ts[lo:hi],
            values=b.values[lo:hi],
            ref_z=ref_z[lo:hi],
            step_z=step_z[lo:hi],
        )
        prepared.append(prepare_rows(batch, prev))
    pairs = _pair_features(prepared)
    new: dict[str, DeviceFeatureState] = {}
    for d, (name, p) in enumerate(zip(b.devices, prepared, strict=True)):
        out, new[name] = finish_rows(p, pairs[d])
        lo, hi = dev_bounds[d], dev_bounds[d + 1]
        for feature, column in out.items():
            feats[_COLUMN[feature], lo:hi] = column
    return new


_PAIR_FEATURES = ("pair_resid_z", "pair_best_z", "pair_mean_z", "pair_min_mean")


def _pair_features(prepared: list[PreparedRows]) -> list[dict[str, np.ndarray]]:
    """features_pair.pair_features of each device: the reference windows of all of them fitted in one
    pairs.pair_fit (each window on its own), the features computed at once for the rows of the devices with
    the same sensor types (element by element): per device the numbers it gets alone."""
    at = np.cumsum([0] + [len(p.windows) for p in prepared])
    fits = pair_fit(np.concatenate([p.windows for p in prepared]), 0, 1) if at[-1] else ()
    out = [{name: np.full(p.rows.values.shape, np.nan) for name in _PAIR_FEATURES} for p in prepared]
    groups: dict[tuple[tuple[str, ...], tuple[tuple[int, int], ...]], list[int]] = {}
    for d, p in enumerate(prepared):
        if p.pairs:
            groups.setdefault((p.batch.types, pair_columns(p)), []).append(d)
    for (_, pairs), members in groups.items():
        # The members' fits side by side (pairs x 2 x their blocks of rows), and each row's block among them.
        first = np.cumsum([0] + [(at[d + 1] - at[d]) // (2 * len(pairs)) for d in members])
        together = pair_features(
            np.vstack([prepared[d].rows.values for d in members]),
            np.vstack([prepared[d].means for d in members]),
            pairs,
            tuple(np.concatenate([f[at[d] : at[d + 1]].reshape(len(pairs), 2, -1) for d in members], 2) for f in fits),
            np.concatenate([prepared[d].r_index + first[i] for i, d in enumerate(members)]),
        )
        bounds = np.cumsum([0] + [len(prepared[d].rows.values) for d in members])
        for i, d in enumerate(members):
            out[d] = {name: column[bounds[i] : bounds[i + 1]] for name, column in together.items()}
    return out


def frame_features(readings: pd.DataFrame, cfg: ProcessingSettings, *, chunk: str | None = "1min") -> pd.DataFrame:
    """Features for a whole frame offline: per device, :func:`device_step` over chronological chunks.

    Gives the same numbers as the stream job; ``chunk`` (a pandas frequency, or None for one pass per device)
    only trades memory for speed. Returns all rows sorted by (timestamp, sensor_id)."""
    if readings.empty:
        return readings.assign(**{name: pd.Series(dtype=float) for name in FEATURE_COLUMNS})
    frames: list[pd.DataFrame] = []
    for _, device in readings.groupby("device_id", sort=True):
        state = empty_state()
        if chunk is None:
            parts = [device]
        else:
            keys = device["timestamp"].dt.floor(chunk)
            parts = [part for _, part in device.groupby(keys, sort=True)]
        for part in parts:
            feats, state = device_step(part, state, cfg)
            frames.append(feats)
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["timestamp", "sensor_id"], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- persistence
def dump_state(st: dict[str, Any]) -> dict[str, Any]:
    """A device's feature state as a JSON-able value (what the stream job keeps in Spark's state store): the
    sensors' as they are, the device's arrays as base64 of their bytes (features_device.dump_device)."""
    device = st["device"]
    return {"v": st["v"], "sensors": st["sensors"], "device": None if device is None else dump_device(device)}


def load_state(obj: Any) -> dict[str, Any]:
    """The feature state :func:`dump_state` wrote; a fresh one for a state of another STATE_VERSION."""
    if not isinstance(obj, dict) or obj.get("v") != STATE_VERSION:
        return empty_state()
    device = obj["device"]
    return {"v": STATE_VERSION, "sensors": obj["sensors"], "device": None if device is None else load_device(device)}
