"""Per-reading features: the ONE implementation used by the stream job, training and evaluation.

A reading's features depend only on the reading itself and on the past of its device (never the future), so
a reading is scored the moment it arrives. :func:`device_step` processes a batch of one device's readings and
carries everything it needs in a small JSON-serialisable state (bounded: the last ``HISTORY`` values per
sensor, ``REF_BLOCKS`` block summaries, one partial block of device rows). Every statistic is computed from
whole windows or whole blocks, never from running sums, so any chronological chunking of a device's readings
(aligned on timestamps) yields exactly the same numbers: :func:`frame_features` over a whole frame equals
:func:`device_step` over micro-batches.

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
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from millrace.config import ProcessingSettings
from millrace.processing.devreg import (
    HELD_HISTORY,
    MIN_BLOCKS,
    block_grams,
    gram_size,
    held_residual,
    residual_fit,
    residual_z,
)
from millrace.processing.pairs import GOOD_FIT, pair_fit
from millrace.processing.steps import (
    LOCAL,
    SHIFT_STEP,
    STEP,
    STEP_SPAN,
    shift_features,
    step_features,
    tiny,
    weighted_sum,
)

ROLL = 30
SHORT = 5
NOISE = 10
TREND = 30
BLOCK = 60
REF_BLOCKS = 30
LONG = 120
JUMP = 4.0
JUMP_AGE_CAP = 100_000
HISTORY = max(ROLL, SHORT, NOISE, TREND, BLOCK, LONG, LOCAL + 1, STEP_SPAN + 2 * STEP - 1)
_TAIL = max(ROLL - 1, HELD_HISTORY)  # device rows of values kept for the next batch
STATE_VERSION = 1

SENSOR_FEATURES: tuple[str, ...] = (
    "dt_s", "roll_mean", "roll_std", "z", "robust_z", "rate", "diff_z", "ref_z", "short_ref_z", "trend_z",
    "noise_ratio", "stuck_run", "mid_ref_z", "trend_long_z", "jump_age", "jump_z", "step_z", "step_max_z",
    "step_age", "step_level_z", "shift_age", "shift_level_z",
)  # fmt: skip
DEVICE_FEATURES: tuple[str, ...] = (
    "dev_max_abs_z", "dev_mean_abs_z", "pair_resid_z", "pair_resid_mean", "pair_best_z", "pair_best_mean",
    "pair_mean_z", "pair_min_mean", "dev_resid_mean", "held_resid_z",
)  # fmt: skip
FEATURE_COLUMNS: tuple[str, ...] = SENSOR_FEATURES + DEVICE_FEATURES

# The sensor a sensor is checked against (by type). Pairs are unordered for the regression sums.
PARTNERS: dict[str, str] = {
    "current": "vibration",
    "vibration": "current",
    "humidity": "temperature",
    "temperature": "current",
    "voltage": "current",
    "pressure": "temperature",
}
_MAD_TO_STD = 1.4826
_NS = 1e9
# Least-squares slope over TREND points, scaled to the change across the window: sum(w * x).
_TREND_C = np.arange(TREND) - (TREND - 1) / 2.0
_TREND_WEIGHTS = _TREND_C * (TREND - 1) / float((_TREND_C * _TREND_C).sum())
_LONG_C = np.arange(LONG) - (LONG - 1) / 2.0
_LONG_WEIGHTS = _LONG_C * (LONG - 1) / float((_LONG_C * _LONG_C).sum())

Columns = dict[str, np.ndarray]
"""Named feature columns, all of one shape (sensors x readings per sensor, or readings)."""


def empty_state() -> dict[str, Any]:
    """The state of a device that has not been seen yet."""
    return {"v": STATE_VERSION, "sensors": {}, "device": None}


def _current_state(state: dict[str, Any] | None) -> dict[str, Any]:
    """``state`` if it is of this STATE_VERSION; otherwise (none yet, or an older version) a fresh one."""
    return state if state is not None and state.get("v") == STATE_VERSION else empty_state()


def _nan_columns(names: tuple[str, ...], shape: tuple[int, ...]) -> Columns:
    return {name: np.full(shape, np.nan) for name in names}


# ---------------------------------------------------------------------------------------------- per sensor
def _new_sensor() -> dict[str, Any]:
    return {"x": [], "n": 0, "t": None, "run": 0, "b0": 0, "blocks": []}


def _sensors_step(values: np.ndarray, ts: np.ndarray, states: list[dict[str, Any]]) -> tuple[Columns, list[dict]]:
    """SENSOR_FEATURES (S x m each) of S sensors' readings (S x m, each row in time order), and their new
    states. The sensors share history length and reading count (so block boundaries align); every reduction
    runs over the contiguous last axis of a copy, so the numbers do not depend on S."""
    S, m = values.shape
    n0, b0 = int(states[0]["n"]), int(states[0]["b0"])
    hx = np.array([st["x"] for st in states], dtype=float).reshape(S, -1)
    h = hx.shape[1]  # batch index i sits at x position h + i
    x = np.concatenate([hx, values], axis=1)
    blocks = _with_completed_blocks(x, h, n0, m, states)
    ref_med, ref_scale = _reference(blocks, n0, m, b0)

    feats = _window_features(x, h, m, ref_med, ref_scale)
    feats.update(_long_window_features(x, h, m, ref_med, ref_scale))
    steps, levels = step_features(x, h, m)
    feats.update(steps)
    prev_x = x[:, h - 1 : h - 1 + m] if h else np.concatenate([np.full((S, 1), np.nan), values[:, :-1]], axis=1)
    feats.update(_change_features(values, prev_x, ts, states, ref_med, ref_scale))
    run = _stuck_runs(values, prev_x, states)
    feats["stuck_run"] = run.astype(float)
    feats.update(_jump_features(feats["diff_z"], states))
    shift_age, shift_level, last = shift_features(feats["step_z"], levels, states, JUMP_AGE_CAP)
    feats["shift_age"], feats["shift_level_z"] = shift_age, shift_level

    cut = max(0, blocks.shape[1] - REF_BLOCKS)
    keep = x[:, -HISTORY:]
    kept_blocks = blocks[:, cut:]
    new_states = [
        {
            "x": keep[i].tolist(),
            "n": n0 + m,
            "t": int(ts[i, -1]),
            "run": int(run[i, -1]),
            "b0": b0 + cut,
            "blocks": kept_blocks[i].tolist(),
            "jage": float(feats["jump_age"][i, -1]),
            "jz": float(feats["jump_z"][i, -1]),
            **last[i],
        }
        for i in range(S)
    ]
    return feats, new_states


def _with_completed_blocks(x: np.ndarray, h: int, n0: int, m: int, states: list[dict[str, Any]]) -> np.ndarray:
    """The sensors' block summaries (S x blocks x (median, std)): the kept ones, then those completing in this
    batch (the reading at batch index i has global index n0 + i)."""
    S = x.shape[0]
    blocks = np.array([st["blocks"] for st in states], dtype=float).reshape(S, -1, 2)
    j0, j1 = n0 // BLOCK, (n0 + m) // BLOCK
    if j1 <= j0:
        return blocks
    start = j0 * BLOCK - (n0 - h)
    seg = x[:, start : start + (j1 - j0) * BLOCK].reshape(S, j1 - j0, BLOCK)  # each row reduced alone
    summaries = np.stack([np.median(seg, axis=-1), seg.std(axis=-1, ddof=1)], axis=-1)
    return np.concatenate([blocks, summaries], axis=1)


def _window_features(x: np.ndarray, h: int, m: int, ref_med: np.ndarray, ref_scale: np.ndarray) -> Columns:
    """Statistics of the window of ROLL values before each reading (NaN until there is a full one): roll_mean,
    roll_std, z, robust_z, and over the window's tail short_ref_z, noise_ratio, trend_z."""
    names = ("roll_mean", "roll_std", "z", "robust_z", "short_ref_z", "noise_ratio", "trend_z")
    S = x.shape[0]
    out = _nan_columns(names, (S, m))
    first = max(0, ROLL - h)
    if first >= m:
        return out
    k = m - first
    # win = x[p - ROLL : p + 1] per reading p, copied so that every reduction runs on a contiguous last axis.
    win = np.ascontiguousarray(sliding_window_view(x, ROLL + 1, axis=1)[:, h + first - ROLL :][:, :k])
    past, v = win[..., :ROLL], win[..., ROLL]
    rmed, rscale = ref_med[:, first:], ref_scale[:, first:]
    mean = past.mean(axis=-1)
    std = past.std(axis=-1, ddof=1)
    med, mad = _median_mad(x, h + first - ROLL, k, mean)
    floor = np.fmax(np.where(np.isnan(rscale), 0.0, 0.5 * rscale), tiny(med))
    values = {
        "roll_mean": mean,
        "roll_std": std,
        "z": (v - mean) / np.fmax(std, floor),
        "robust_z": (v - med) / np.fmax(_MAD_TO_STD * mad, floor),
        "short_ref_z": (np.ascontiguousarray(win[..., -SHORT:]).mean(axis=-1) - rmed) / rscale,
        "noise_ratio": np.ascontiguousarray(win[..., -NOISE:]).std(axis=-1, ddof=1) / rscale,
        "trend_z": (win[..., -TREND:] * _TREND_WEIGHTS).sum(axis=-1) / rscale,
    }
    for name, value in values.items():
        out[name][:, first:] = value
    return out


def _long_window_features(x: np.ndarray, h: int, m: int, ref_med: np.ndarray, ref_scale: np.ndarray) -> Columns:
    """Over the last LONG values ending at each reading (NaN until there are as many): mid_ref_z (the mean of
    the last ROLL of them against the reference) and trend_long_z."""
    S = x.shape[0]
    out = _nan_columns(("mid_ref_z", "trend_long_z"), (S, m))
    first = max(0, LONG - 1 - h)
    if first >= m:
        return out
    k = m - first
    lw = sliding_window_view(x, LONG, axis=1)[:, h + first - LONG + 1 :][:, :k]
    rmed, rscale = ref_med[:, first:], ref_scale[:, first:]
    out["mid_ref_z"][:, first:] = (np.ascontiguousarray(lw[..., -ROLL:]).mean(axis=-1) - rmed) / rscale
    out["trend_long_z"][:, first:] = weighted_sum(x, h + first - LONG + 1, k, _LONG_WEIGHTS) / rscale
    return out


def _change_features(
    values: np.ndarray,
    prev_x: np.ndarray,
    ts: np.ndarray,
    states: list[dict[str, Any]],
    ref_med: np.ndarray,
    ref_scale: np.ndarray,
) -> Columns:
    """dt_s, rate and diff_z against each reading's previous one (the last batch's for the first), ref_z."""
    last_t = np.array([st["t"] if st["t"] is not None else -1 for st in states], dtype=np.int64)
    prev_t = np.concatenate([last_t[:, None], ts[:, :-1]], axis=1)
    dt = np.where(prev_t >= 0, (ts - prev_t) / _NS, np.nan)
    diff = values - prev_x
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(dt > 0, diff / dt, np.nan)
    return {"dt_s": dt, "rate": rate, "diff_z": diff / ref_scale, "ref_z": (values - ref_med) / ref_scale}


def _stuck_runs(values: np.ndarray, prev_x: np.ndarray, states: list[dict[str, Any]]) -> np.ndarray:
    """Consecutive identical values ending at each reading (int, S x m), carried across batches."""
    S, m = values.shape
    idx = np.broadcast_to(np.arange(m), (S, m))
    last_reset = np.maximum.accumulate(np.where(values == prev_x, -1, idx), axis=1)
    carried = np.array([int(st["run"]) for st in states])[:, None]
    return np.where(last_reset < 0, carried + idx + 1, idx - last_reset + 1)


def _jump_features(diff_z: np.ndarray, states: list[dict[str, Any]]) -> Columns:
    """jump_age (readings since the last |diff_z| > JUMP, capped) and jump_z (its size), carried across
    batches."""
    S, m = diff_z.shape
    idx = np.broadcast_to(np.arange(m), (S, m))
    jump = np.abs(np.nan_to_num(diff_z, nan=0.0)) > JUMP
    last_jump = np.maximum.accumulate(np.where(jump, idx, -1), axis=1)
    carried_age = np.array([st.get("jage", JUMP_AGE_CAP) for st in states], dtype=float)[:, None]
    carried_z = np.array([st.get("jz", 0.0) for st in states], dtype=float)[:, None]
    age = np.where(last_jump < 0, carried_age + idx + 1, idx - last_jump)
    at = np.take_along_axis(diff_z, np.maximum(last_jump, 0), axis=1)
    return {"jump_age": np.minimum(age, JUMP_AGE_CAP), "jump_z": np.where(last_jump < 0, carried_z, at)}


def _reference(blocks: np.ndarray, n0: int, m: int, b0: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference median and scale (S x m) of the readings with global indices n0 .. n0+m-1: the medians of
    the block medians and block stds of the last ``REF_BLOCKS`` completed blocks (``blocks`` holds the
    blocks from global block b0 on). One value per block-of-readings, computed once and repeated."""
    S = blocks.shape[0]
    first, last = n0 // BLOCK, (n0 + m - 1) // BLOCK
    rvs = np.arange(first, last + 1)
    med_of = np.full((S, len(rvs)), np.nan)
    scale_of = np.full((S, len(rvs)), np.nan)
    full = rvs - b0 >= REF_BLOCKS  # a full reference window (the usual case): all at once
    if full.any():
        starts = rvs[full] - REF_BLOCKS - b0
        win = sliding_window_view(blocks, REF_BLOCKS, axis=1)[:, starts[0] : starts[-1] + 1]  # S x r x 2 x k
        med_of[:, full] = np.median(win[:, :, 0], axis=-1)
        scale_of[:, full] = np.median(win[:, :, 1], axis=-1)
    for i in np.flatnonzero(~full & (rvs - b0 > 0)):  # the first REF_BLOCKS blocks of a sensor's life
        lo, hi = max(0, rvs[i] - REF_BLOCKS - b0), rvs[i] - b0
        med_of[:, i] = np.median(blocks[:, lo:hi, 0], axis=1)
        scale_of[:, i] = np.median(blocks[:, lo:hi, 1], axis=1)
    scale_of = np.fmax(scale_of, tiny(med_of))
    at = (n0 + np.arange(m)) // BLOCK - first
    return med_of[:, at], scale_of[:, at]


_SORT_COLUMNS = 8192  # windows sorted per step (bounded temporaries; the numbers do not depend on it)


def _median_mad(x: np.ndarray, start: int, k: int, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and MAD of the k windows x[:, start + i : start + i + ROLL] (S x k each). Sorting whole
    windows (SIMD sort) is several times faster than np.median's partition on short rows, and gives the
    same values (the mean of the two middle order statistics). A window holding NaN gives NaN, like
    np.median (``mean`` is NaN exactly there)."""
    S = x.shape[0]
    med = np.empty((S, k))
    mad = np.empty((S, k))
    lo_i, hi_i = (ROLL - 1) // 2, ROLL // 2
    view = sliding_window_view(x, ROLL, axis=1)
    for c in range(0, k, _SORT_COLUMNS):
        e = min(k, c + _SORT_COLUMNS)
        srt = np.sort(view[:, start + c : start + e], axis=-1)
        md = (srt[..., lo_i] + srt[..., hi_i]) / 2.0
        dev = np.abs(srt - md[..., None])
        dev.sort(axis=-1)
        med[:, c:e] = md
        mad[:, c:e] = (dev[..., lo_i] + dev[..., hi_i]) / 2.0
    bad = np.isnan(mean)
    if bad.any():
        med[bad] = np.nan
        mad[bad] = np.nan
    return med, mad


# ---------------------------------------------------------------------------------------------- per device
def _ffill(matrix: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Forward-fill NaNs down the rows, starting from ``first`` (the last known row)."""
    full = np.vstack([first[None, :], matrix])
    mask = np.isnan(full)
    idx = np.where(~mask, np.arange(len(full))[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    return full[idx, np.arange(full.shape[1])][1:]


def _pair_sums(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Regression sums (n, sum x, sum y, sum x^2, sum y^2, sum xy) over the pairs where both are finite, one
    row per block (rows of ``x``/``y``; each row is reduced on its own, so the numbers do not depend on how
    many blocks a batch completes)."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = np.where(ok, x, 0.0), np.where(ok, y, 0.0)
    # Element-wise products, not dot(): BLAS kernels may round differently with alignment.
    return np.stack(
        [
            ok.sum(axis=1).astype(float),
            x.sum(axis=1),
            y.sum(axis=1),
            (x * x).sum(axis=1),
            (y * y).sum(axis=1),
            (x * y).sum(axis=1),
        ],
        axis=1,
    )


class _PairFit(NamedTuple):
    """pairs.pair_fit's regression of a target sensor on its partner, per device row."""

    n: np.ndarray  # readings in the reference blocks
    my: np.ndarray  # target mean
    mx: np.ndarray  # partner mean
    vy: np.ndarray  # target variance
    vx: np.ndarray  # partner variance
    cov: np.ndarray
    bc: np.ndarray  # block-mean regression: intercept,
    bbeta: np.ndarray  # slope,
    bres: np.ndarray  # residual variance
    bratio: np.ndarray  # and unexplained share of the target's block-mean variance


class _DeviceRows(NamedTuple):
    """A device's readings as rows (one per distinct timestamp) x sensor columns."""

    row: np.ndarray  # the row of each reading
    values: np.ndarray  # values minus each sensor's origin, forward-filled
    abs_z: np.ndarray  # |ref_z|, forward-filled
    step_z: np.ndarray  # step_z (not filled)
    origin: dict[str, float | None]  # each sensor's first finite value


def _device_step(
    codes: np.ndarray,
    cols: list[str],
    types: dict[str, str],
    ts: np.ndarray,
    values: np.ndarray,
    ref_z: np.ndarray,
    step_z: np.ndarray,
    dev: dict[str, Any],
) -> tuple[Columns, dict[str, Any]]:
    """DEVICE_FEATURES (one value per reading) of one device's readings sorted by (timestamp, sensor_id),
    ``codes`` indexing ``cols``, and the device's new state."""
    rows = _device_rows(codes, cols, ts, values, ref_z, step_z, dev)
    V, nrow, ncol = rows.values, len(rows.values), len(cols)
    n0 = int(dev["n"])
    r_values, r_index = np.unique((n0 + np.arange(nrow)) // BLOCK, return_inverse=True)  # blocks of the rows
    full = np.vstack([_tail_rows(dev["rows"], cols, n0 % BLOCK), V])  # the rows of the open block, then V
    pairs = _pairs(cols, types)
    blocks = _pair_blocks(full, n0, pairs, cols, dev)
    grams, g0 = _gram_blocks(full, n0, cols, dev)
    dev_z, fits = _all_sensor_residuals(V, grams, g0, r_values, r_index)
    v_hist = np.vstack([_tail_rows(dev.get("tail"), cols, _TAIL), V])
    means = _window_sum(v_hist[_TAIL - (ROLL - 1) :], ROLL) / ROLL  # of the last ROLL rows, per row
    pair = _pair_features(V, means, pairs, blocks, int(dev["b0"]), r_values, r_index, cols)
    resid_hist = np.vstack([_tail_rows(dev["resid"], cols, SHORT - 1), pair["pair_resid_z"]])
    best_hist = np.vstack([_tail_rows(dev.get("best"), cols, ROLL - 1), pair["pair_best_z"]])
    dz_hist = np.vstack([_tail_rows(dev.get("dtail"), cols, ROLL - 1), dev_z])
    old_held = dev.get("held") or {}
    held = old_held["s"] if old_held.get("cols") == cols else [None] * ncol
    held_z, held = held_residual(v_hist[_TAIL - HELD_HISTORY :], rows.step_z, fits, r_index, held, SHIFT_STEP)
    matrices = {
        "pair_resid_z": pair["pair_resid_z"],
        "pair_resid_mean": sliding_window_view(resid_hist, SHORT, axis=0).mean(axis=2),
        "pair_best_z": pair["pair_best_z"],
        "pair_best_mean": _window_sum(best_hist, ROLL) / ROLL,
        "pair_mean_z": pair["pair_mean_z"],
        "pair_min_mean": pair["pair_min_mean"],
        "dev_resid_mean": _window_sum(dz_hist, ROLL) / np.sqrt(ROLL),
        "held_resid_z": held_z,
    }
    feats = _context_features(rows.abs_z, rows.row, codes)
    feats.update({name: matrix[rows.row, codes] for name, matrix in matrices.items()})

    keep = (n0 + nrow) % BLOCK
    longest = max((len(b) for b in blocks.values()), default=0)
    cut = max(0, longest - REF_BLOCKS)
    new_dev = {
        "types": types,
        "origin": rows.origin,
        "last_v": {s: _num(V[-1, i]) for i, s in enumerate(cols)},
        "last_absz": {s: _num(rows.abs_z[-1, i]) for i, s in enumerate(cols)},
        "rows": _by_sensor(full[len(full) - keep :], cols) if keep else {s: [] for s in cols},
        "n": n0 + nrow,
        "b0": int(dev["b0"]) + cut if blocks else (n0 + nrow) // BLOCK,
        "blocks": {key: blk[cut:] for key, blk in blocks.items()},
        "resid": _by_sensor(resid_hist[-(SHORT - 1) :], cols),
        "best": _by_sensor(best_hist[-(ROLL - 1) :], cols),
        "tail": _by_sensor(v_hist[-_TAIL:], cols),
        "dtail": _by_sensor(dz_hist[-(ROLL - 1) :], cols),
        "grams": {
            "cols": cols,
            "b0": g0 + max(0, len(grams) - REF_BLOCKS),
            "g": [_nums(np.asarray(g)) for g in grams[-REF_BLOCKS:]],
        },
        "held": {"cols": cols, "s": held},
    }
    return feats, new_dev


def _device_rows(
    codes: np.ndarray,
    cols: list[str],
    ts: np.ndarray,
    values: np.ndarray,
    ref_z: np.ndarray,
    step_z: np.ndarray,
    dev: dict[str, Any],
) -> _DeviceRows:
    """The readings on the device's grid of rows (timestamps) x sensors; values and |ref_z| carry forward
    from the last known ones (of this batch, else of the previous)."""
    origin: dict[str, float | None] = {**{sid: None for sid in cols}, **dev["origin"]}
    for j in np.unique(codes):
        if origin[cols[j]] is None:
            finite = values[(codes == j) & np.isfinite(values)]
            if len(finite):
                origin[cols[j]] = float(finite[0])
    org = np.array([origin[s] if origin[s] is not None else 0.0 for s in cols])
    uts, row = np.unique(ts, return_inverse=True)
    shape = (len(uts), len(cols))

    def grid(column: np.ndarray) -> np.ndarray:
        out = np.full(shape, np.nan)
        out[row, codes] = column
        return out

    last_v = np.array([_f(dev["last_v"].get(s)) for s in cols])
    last_absz = np.array([_f(dev["last_absz"].get(s)) for s in cols])
    return _DeviceRows(
        row=row,
        values=_ffill(grid(values - org[codes]), last_v),
        abs_z=_ffill(grid(np.abs(ref_z)), last_absz),
        step_z=grid(step_z),
        origin=origin,
    )


def _context_features(abs_z: np.ndarray, row: np.ndarray, codes: np.ndarray) -> Columns:
    """dev_max_abs_z (the largest |ref_z| among the reading's other sensors) and dev_mean_abs_z, per reading."""
    nrow, ncol = abs_z.shape
    A0 = np.where(np.isnan(abs_z), 0.0, abs_z)
    if ncol > 1:
        top = np.argmax(A0, axis=1)
        first = A0[np.arange(nrow), top]
        rest = A0.copy()
        rest[np.arange(nrow), top] = -np.inf
        second = rest.max(axis=1)
        max_other = np.where(top[row] == codes, second[row], first[row])
    else:
        max_other = np.zeros(len(codes))
    counted = np.isfinite(abs_z).sum(axis=1)
    mean_abs = np.where(counted > 0, A0.sum(axis=1) / np.maximum(counted, 1), np.nan)[row]
    return {"dev_max_abs_z": max_other, "dev_mean_abs_z": mean_abs}


def _pairs(cols: list[str], types: dict[str, str]) -> list[tuple[str, str]]:
    """The device's (unordered, sorted) pairs of a sensor and a partner of its type (PARTNERS)."""
    found = {tuple(sorted((a, p))) for a in cols for p in cols if a != p and PARTNERS.get(types[a]) == types[p]}
    return sorted((a, b) for a, b in found)


def _completing(full: np.ndarray, n0: int) -> np.ndarray | None:
    """The device blocks (blocks x BLOCK rows x sensors) that complete in this batch, or None. ``full``: the
    rows of the open block, then the batch's."""
    j0, j1 = n0 // BLOCK, (n0 + len(full) - n0 % BLOCK) // BLOCK
    if j1 <= j0:
        return None
    return full[: (j1 - j0) * BLOCK].reshape(j1 - j0, BLOCK, full.shape[1])


def _pair_blocks(
    full: np.ndarray, n0: int, pairs: list[tuple[str, str]], cols: list[str], dev: dict[str, Any]
) -> dict[str, list[list[float]]]:
    """Per pair "a|b", the regression sums of the device blocks since the device's b0, with the blocks
    completing in this batch."""
    b0, j0 = int(dev["b0"]), n0 // BLOCK
    blocks = {f"{a}|{b}": list(dev["blocks"].get(f"{a}|{b}", [])) for a, b in pairs}
    seg = _completing(full, n0)
    if seg is not None:
        ci = {sid: i for i, sid in enumerate(cols)}
        for a, b in pairs:
            blk = blocks[f"{a}|{b}"]
            blk.extend([[0.0] * 6] * (j0 - b0 - len(blk)))  # a pair that appeared late: empty earlier blocks
            blk.extend(_pair_sums(seg[:, :, ci[a]], seg[:, :, ci[b]]).tolist())
    return blocks


def _gram_blocks(full: np.ndarray, n0: int, cols: list[str], dev: dict[str, Any]) -> tuple[list, int]:
    """The all-sensor regression's block Gram triangles since block g0, with those completing in this batch,
    and g0 (afresh when the device's sensors change)."""
    old = dev.get("grams") or {}
    same_cols = old.get("cols") == cols
    g0 = int(old["b0"]) if same_cols else n0 // BLOCK
    grams = [list(g) for g in old.get("g", [])] if same_cols else []
    seg = _completing(full, n0)
    if seg is not None:
        grams.extend(block_grams(seg).tolist())
    return grams, g0


def _all_sensor_residuals(
    V: np.ndarray, grams: list, g0: int, r_values: np.ndarray, r_index: np.ndarray
) -> tuple[np.ndarray, list]:
    """Each sensor's residual against all the others (rows x sensors): one regression per block of rows, from
    the REF_BLOCKS blocks before it; and those regressions (None where too few blocks)."""
    nrow, ncol = V.shape
    dev_z = np.full((nrow, ncol), np.nan)
    fits: list = [None] * len(r_values)
    if ncol < 2:
        return dev_z, fits
    gram_rows = np.asarray(grams, dtype=float).reshape(-1, gram_size(ncol))
    r_bounds = np.searchsorted(r_index, np.arange(len(r_values) + 1))  # rows come in time order
    for i, rv in enumerate(r_values):
        window = gram_rows[max(0, rv - REF_BLOCKS - g0) : max(0, rv - g0)]
        window = window[np.isfinite(window).all(axis=1)]
        fits[i] = residual_fit(window, BLOCK) if len(window) >= MIN_BLOCKS else None
        if fits[i] is not None:
            at = slice(r_bounds[i], r_bounds[i + 1])
            dev_z[at] = residual_z(V[at], fits[i])
    return dev_z, fits


def _pair_features(
    V: np.ndarray,
    means: np.ndarray,
    pairs: list[tuple[str, str]],
    blocks: dict[str, list[list[float]]],
    b0: int,
    r_values: np.ndarray,
    r_index: np.ndarray,
    cols: list[str],
) -> Columns:
    """pair_resid_z, pair_best_z, pair_mean_z and pair_min_mean (rows x sensors) against each sensor's
    partners, from regressions over the REF_BLOCKS blocks before each row's block."""
    shape = V.shape
    out = _nan_columns(("pair_resid_z", "pair_best_z", "pair_mean_z", "pair_min_mean"), shape)
    best_ratio, mean_ratio = np.full(shape, np.inf), np.full(shape, np.inf)
    ci = {sid: i for i, sid in enumerate(cols)}
    for a, b in pairs:
        win = _reference_windows(blocks[f"{a}|{b}"], b0, r_values)
        for t, p, iy, ix in ((ci[a], ci[b], 0, 1), (ci[b], ci[a], 1, 0)):
            fit = _PairFit(*(f[r_index] for f in pair_fit(win, iy, ix)))
            _update_mean_deviation(out, mean_ratio, fit, means[:, t], means[:, p], t)
            _update_residual(out, best_ratio, fit, V[:, t], V[:, p], t)
    return out


def _reference_windows(pair_blocks: list[list[float]], b0: int, r_values: np.ndarray) -> np.ndarray:
    """The reference window of each block of rows: the REF_BLOCKS blocks of sums before it (zero sums before
    the first one), as a (r, 6, REF_BLOCKS) array reduced on its last axis, row by row."""
    sums = np.asarray(pair_blocks, dtype=float).reshape(-1, 6)
    padded = np.vstack([np.zeros((REF_BLOCKS, 6)), sums])
    starts = np.clip(r_values - b0, 0, len(sums))
    return np.ascontiguousarray(sliding_window_view(padded, REF_BLOCKS, axis=0)[starts])


def _update_mean_deviation(
    out: Columns, mean_ratio: np.ndarray, fit: _PairFit, ym: np.ndarray, xm: np.ndarray, t: int
) -> None:
    """Sensor ``t``'s mean of the last ROLL rows (``ym``) against what its partner's (``xm``) predicts from the
    block-mean regression: pair_mean_z keeps the partner that explains the sensor best, pair_min_mean the
    smallest deviation over the partners that explain most of its movement (an anomaly on one partner breaks
    only the pairs it is in)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        # Scale: the block means' residual spread plus the noise a ROLL-reading mean keeps.
        bscale = np.sqrt(fit.bres + np.maximum(fit.vy - fit.cov * fit.cov / fit.vx, 0.0) / ROLL) + 1e-9
        zm = np.where(fit.n >= 2 * BLOCK, (ym - fit.bc - fit.bbeta * xm) / bscale, np.nan)
    mean_z, min_z = out["pair_mean_z"], out["pair_min_mean"]
    better = np.isfinite(zm) & (fit.bratio < mean_ratio[:, t])
    mean_z[:, t] = np.where(better, zm, mean_z[:, t])
    mean_ratio[:, t] = np.where(better, fit.bratio, mean_ratio[:, t])
    cur = min_z[:, t]
    take = np.isfinite(zm) & (fit.bratio < GOOD_FIT) & ~(np.abs(cur) <= np.abs(zm))
    min_z[:, t] = np.where(take, zm, cur)


def _update_residual(out: Columns, best_ratio: np.ndarray, fit: _PairFit, y: np.ndarray, x: np.ndarray, t: int) -> None:
    """Sensor ``t``'s value ``y`` against its partner's ``x`` from the regression of values: pair_resid_z keeps
    the largest residual over the partners, pair_best_z the one of the partner that explains it best."""
    resid, best = out["pair_resid_z"], out["pair_best_z"]
    with np.errstate(invalid="ignore", divide="ignore"):
        beta = fit.cov / fit.vx
        res_var = np.maximum(fit.vy - fit.cov * fit.cov / fit.vx, 0.0)
        scale = np.fmax(np.sqrt(res_var), 0.05 * np.sqrt(np.maximum(fit.vy, 0.0)) + 1e-9)
        z = np.where(fit.n >= 2 * BLOCK, (y - (fit.my + beta * (x - fit.mx))) / scale, np.nan)
        cur = resid[:, t]
        keep_cur = np.isfinite(cur) & ~(np.abs(z) > np.abs(cur))
        resid[:, t] = np.where(keep_cur, cur, z)
        # The unexplained share of the sensor's variance: the smaller, the better the partner.
        ratio = np.where(np.isfinite(z), res_var / np.fmax(fit.vy, 1e-300), np.inf)
        better = ratio < best_ratio[:, t]
        best[:, t] = np.where(better, z, best[:, t])
        best_ratio[:, t] = np.where(better, ratio, best_ratio[:, t])


def _window_sum(hist: np.ndarray, w: int) -> np.ndarray:
    """Sums of ``w`` consecutive rows of ``hist`` (rows - w + 1 of them), added in row order: the same
    numbers however the rows are split into batches (numpy's pairwise sums depend on the array's shape)."""
    n = len(hist) - w + 1
    acc = hist[:n].copy()
    for j in range(1, w):
        acc += hist[j : j + n]
    return acc


def _tail_rows(stored: dict[str, list] | None, cols: list[str], n: int) -> np.ndarray:
    """The last ``n`` rows (n x sensors) kept per sensor in a state (NaN where a sensor has fewer or none)."""
    lists = [(stored or {}).get(s) for s in cols]
    if all(v is not None and len(v) == n for v in lists):  # the usual case: numpy reads None as NaN
        return np.array(lists, dtype=float).reshape(len(cols), n).T
    return np.array([_padded(v, n) for v in lists], dtype=float).reshape(len(cols), n).T


def _by_sensor(rows: np.ndarray, cols: list[str]) -> dict[str, list[float | None]]:
    """Rows (rows x sensors) as per-sensor lists for the state (NaN -> None)."""
    return {s: _nums(rows[:, i]) for i, s in enumerate(cols)}


def _padded(values: list | None, n: int) -> list:
    """The last ``n`` of ``values`` (NaN-padded in front: a state written with a shorter tail)."""
    values = list(values or [])
    values = values[max(0, len(values) - n) :]
    return [np.nan] * (n - len(values)) + [_f(v) for v in values]


def _f(value: float | None) -> float:
    return np.nan if value is None else value


def _nums(values: np.ndarray) -> list[float | None]:
    return [None if v != v else v for v in values.tolist()]  # NaN -> None (JSON null)


def _num(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


# ---------------------------------------------------------------------------------------------- public API
_EMPTY_DEVICE: dict[str, Any] = {
    "types": {},
    "origin": {},
    "last_v": {},
    "last_absz": {},
    "rows": {},
    "n": 0,
    "b0": 0,
    "blocks": {},
    "resid": {},
    "best": {},
    "tail": {},
}
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
    feats = np.full((len(b.frame), len(FEATURE_COLUMNS)), np.nan)
    sensors = _sensor_features(b, olds, feats)
    devices = _device_features(b, olds, feats)
    new = {d: {"v": STATE_VERSION, "sensors": sensors[d], "device": devices[d]} for d in b.devices}
    frame = pd.concat([b.frame, pd.DataFrame(feats, columns=list(FEATURE_COLUMNS))], axis=1)
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
        pair_type=batch["sensor_type"].to_numpy(dtype=object)[first_of_pair],
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
        st = sensors[d].get(sid) or _new_sensor()
        groups.setdefault((len(st["x"]), int(st["n"]), int(bounds[u + 1] - bounds[u])), []).append(u)
    for members in groups.values():
        idx = np.stack([by_pair[bounds[u] : bounds[u + 1]] for u in members])
        group_states = [sensors[keys[u][0]].get(keys[u][1]) or _new_sensor() for u in members]
        out, new_states = _sensors_step(b.values[idx], b.ts[idx], group_states)
        at = idx.ravel()
        for name, column in out.items():
            feats[at, _COLUMN[name]] = column.ravel()
        for u, st in zip(members, new_states, strict=True):
            sensors[keys[u][0]][keys[u][1]] = st
    return sensors


def _device_features(b: _Batch, olds: dict[str, dict[str, Any]], feats: np.ndarray) -> dict[str, dict[str, Any]]:
    """Writes DEVICE_FEATURES into ``feats`` (from the sensor features there); returns the new device states."""
    ref_z, step_z = feats[:, _COLUMN["ref_z"]], feats[:, _COLUMN["step_z"]]
    dev_bounds = np.searchsorted(b.dev, np.arange(len(b.devices) + 1))
    pair_bounds = np.searchsorted(b.pair_dev, np.arange(len(b.devices) + 1))
    new: dict[str, dict[str, Any]] = {}
    for d, name in enumerate(b.devices):
        lo, hi = dev_bounds[d], dev_bounds[d + 1]
        prev_dev = olds[name]["device"] or _EMPTY_DEVICE
        types: dict[str, str] = dict(prev_dev["types"])
        first_pair, last_pair = pair_bounds[d], pair_bounds[d + 1]
        for u in range(first_pair, last_pair):
            types.setdefault(str(b.pair_sid[u]), str(b.pair_type[u]))
        cols = sorted(types)
        col_of = {sid: i for i, sid in enumerate(cols)}
        local = np.array([col_of[str(sid)] for sid in b.pair_sid[first_pair:last_pair]], dtype=np.int64)
        out, new[name] = _device_step(
            local[b.pair[lo:hi] - first_pair],
            cols,
            types,
            b.ts[lo:hi],
            b.values[lo:hi],
            ref_z[lo:hi],
            step_z[lo:hi],
            prev_dev,
        )
        for feature, column in out.items():
            feats[lo:hi, _COLUMN[feature]] = column
    return new


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
def dump_state(st: dict[str, Any]) -> Any:
    """A device's feature state as a JSON-able value (what the stream job keeps in Spark's state store)."""
    return st


def load_state(obj: Any) -> dict[str, Any]:
    """The feature state :func:`dump_state` wrote (any version: :func:`devices_step` starts an older one afresh)."""
    return obj
