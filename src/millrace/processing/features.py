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
                (the step_* features describe it then; measured: naming spikes suffered when both did)
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

from typing import Any

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
_SENSOR_COL = {name: i for i, name in enumerate(SENSOR_FEATURES)}


def empty_state() -> dict[str, Any]:
    """The state of a device that has not been seen yet."""
    return {"v": STATE_VERSION, "sensors": {}, "device": None}


def _current_state(state: dict[str, Any] | None) -> dict[str, Any]:
    """``state`` if it is of this STATE_VERSION; otherwise (none yet, or an older version) a fresh one."""
    return state if state is not None and state.get("v") == STATE_VERSION else empty_state()


# ---------------------------------------------------------------------------------------------- per sensor
def _new_sensor() -> dict[str, Any]:
    return {"x": [], "n": 0, "t": None, "run": 0, "b0": 0, "blocks": []}


def _sensors_step(values: np.ndarray, ts: np.ndarray, states: list[dict[str, Any]]) -> tuple[np.ndarray, list[dict]]:
    """Features (S x m x len(SENSOR_FEATURES)) of S sensors' readings (S x m, each row in time order), and their
    new states. The sensors share history length and reading count (so block boundaries align); every
    reduction runs over the contiguous last axis of a copy, so the numbers do not depend on S."""
    S, m = values.shape
    col = _SENSOR_COL
    n0, b0 = int(states[0]["n"]), int(states[0]["b0"])
    hx = np.array([st["x"] for st in states], dtype=float).reshape(S, -1)
    h = hx.shape[1]
    x = np.concatenate([hx, values], axis=1)
    out = np.full((S, m, len(SENSOR_FEATURES)), np.nan)

    # Reference baseline from completed blocks (the reading at batch index i has global index n0 + i).
    blocks = np.array([st["blocks"] for st in states], dtype=float).reshape(S, -1, 2)
    j0, j1 = n0 // BLOCK, (n0 + m) // BLOCK  # blocks completing inside this batch
    if j1 > j0:
        start = j0 * BLOCK - (n0 - h)
        seg = x[:, start : start + (j1 - j0) * BLOCK].reshape(S, j1 - j0, BLOCK)  # each row reduced alone
        blocks = np.concatenate(
            [blocks, np.stack([np.median(seg, axis=-1), seg.std(axis=-1, ddof=1)], axis=-1)], axis=1
        )
    ref_med, ref_scale = _reference(blocks, n0, m, b0)

    pos0 = h  # batch index i sits at x position h + i
    # Window statistics over win = x[p - ROLL : p + 1] (full windows only; rows are a contiguous tail).
    first_ok = max(0, ROLL - pos0)
    if first_ok < m:
        k = m - first_ok
        win = np.ascontiguousarray(sliding_window_view(x, ROLL + 1, axis=1)[:, pos0 + first_ok - ROLL :][:, :k])
        past = win[..., :ROLL]
        v = win[..., ROLL]
        rmed, rscale = ref_med[:, first_ok:], ref_scale[:, first_ok:]
        mean = past.mean(axis=-1)
        std = past.std(axis=-1, ddof=1)
        med, mad = _median_mad(x, pos0 + first_ok - ROLL, k, mean)
        floor = np.fmax(np.where(np.isnan(rscale), 0.0, 0.5 * rscale), tiny(med))
        o = out[:, first_ok:]
        o[..., col["roll_mean"]] = mean
        o[..., col["roll_std"]] = std
        o[..., col["z"]] = (v - mean) / np.fmax(std, floor)
        o[..., col["robust_z"]] = (v - med) / np.fmax(_MAD_TO_STD * mad, floor)
        o[..., col["short_ref_z"]] = (np.ascontiguousarray(win[..., -SHORT:]).mean(axis=-1) - rmed) / rscale
        o[..., col["noise_ratio"]] = np.ascontiguousarray(win[..., -NOISE:]).std(axis=-1, ddof=1) / rscale
        o[..., col["trend_z"]] = (win[..., -TREND:] * _TREND_WEIGHTS).sum(axis=-1) / rscale
    first_long = max(0, LONG - 1 - pos0)
    if first_long < m:
        k = m - first_long
        lw = sliding_window_view(x, LONG, axis=1)[:, pos0 + first_long - LONG + 1 :][:, :k]
        rmed, rscale = ref_med[:, first_long:], ref_scale[:, first_long:]
        o = out[:, first_long:]
        o[..., col["mid_ref_z"]] = (np.ascontiguousarray(lw[..., -ROLL:]).mean(axis=-1) - rmed) / rscale
        o[..., col["trend_long_z"]] = weighted_sum(x, pos0 + first_long - LONG + 1, k, _LONG_WEIGHTS) / rscale
    steps, levels = step_features(x, pos0, m)
    for name, feature in steps.items():
        out[..., col[name]] = feature

    # Previous value and time.
    prev_x = x[:, h - 1 : h - 1 + m] if h else np.concatenate([np.full((S, 1), np.nan), values[:, :-1]], axis=1)
    last_t = np.array([st["t"] if st["t"] is not None else -1 for st in states], dtype=np.int64)
    prev_t = np.concatenate([last_t[:, None], ts[:, :-1]], axis=1)
    dt = np.where(prev_t >= 0, (ts - prev_t) / _NS, np.nan)
    diff = values - prev_x
    out[..., col["dt_s"]] = dt
    with np.errstate(divide="ignore", invalid="ignore"):
        out[..., col["rate"]] = np.where(dt > 0, diff / dt, np.nan)
    out[..., col["diff_z"]] = diff / ref_scale
    out[..., col["ref_z"]] = (values - ref_med) / ref_scale

    # Runs of identical values, carried across batches.
    same = values == prev_x
    idx = np.broadcast_to(np.arange(m), (S, m))
    last_reset = np.maximum.accumulate(np.where(same, -1, idx), axis=1)
    carried = np.array([int(st["run"]) for st in states])[:, None]
    run = np.where(last_reset < 0, carried + idx + 1, idx - last_reset + 1)
    out[..., col["stuck_run"]] = run

    # Readings since the last jump, and its size, carried across batches.
    diff_z = out[..., col["diff_z"]]
    jump = np.abs(np.nan_to_num(diff_z, nan=0.0)) > JUMP
    last_jump = np.maximum.accumulate(np.where(jump, idx, -1), axis=1)
    carried_age = np.array([st.get("jage", JUMP_AGE_CAP) for st in states], dtype=float)[:, None]
    carried_z = np.array([st.get("jz", 0.0) for st in states], dtype=float)[:, None]
    age = np.where(last_jump < 0, carried_age + idx + 1, idx - last_jump)
    out[..., col["jump_age"]] = np.minimum(age, JUMP_AGE_CAP)
    at = np.take_along_axis(diff_z, np.maximum(last_jump, 0), axis=1)
    out[..., col["jump_z"]] = np.where(last_jump < 0, carried_z, at)

    # Readings since the last large step, and the level before it, carried across batches.
    shift_age, shift_level, last = shift_features(out[..., col["step_z"]], levels, states, JUMP_AGE_CAP)
    out[..., col["shift_age"]] = shift_age
    out[..., col["shift_level_z"]] = shift_level

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
            "jage": float(out[i, -1, col["jump_age"]]),
            "jz": float(out[i, -1, col["jump_z"]]),
            **last[i],
        }
        for i in range(S)
    ]
    return out, new_states


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


def _device_step(
    sids: np.ndarray,
    codes: np.ndarray,
    cols: list[str],
    types: dict[str, str],
    ts: np.ndarray,
    values: np.ndarray,
    ref_z: np.ndarray,
    step_z: np.ndarray,
    dev: dict[str, Any],
) -> tuple[np.ndarray, dict[str, Any]]:
    """Device-context features for readings sorted by (timestamp, sensor_id); ``codes`` index ``cols``."""
    del sids
    ncol = len(cols)
    origin: dict[str, float | None] = {**{sid: None for sid in cols}, **dev["origin"]}
    for j in np.unique(codes):
        if origin[cols[j]] is None:
            finite = values[(codes == j) & np.isfinite(values)]
            if len(finite):
                origin[cols[j]] = float(finite[0])
    org = np.array([origin[s] if origin[s] is not None else 0.0 for s in cols])
    uts, row = np.unique(ts, return_inverse=True)
    nrow = len(uts)

    vals = np.full((nrow, ncol), np.nan)
    vals[row, codes] = values - org[codes]
    absz = np.full((nrow, ncol), np.nan)
    absz[row, codes] = np.abs(ref_z)
    steps = np.full((nrow, ncol), np.nan)
    steps[row, codes] = step_z
    V = _ffill(vals, np.array([_f(dev["last_v"].get(s)) for s in cols]))
    A = _ffill(absz, np.array([_f(dev["last_absz"].get(s)) for s in cols]))

    out = np.full((len(values), len(DEVICE_FEATURES)), np.nan)
    A0 = np.where(np.isnan(A), 0.0, A)
    if ncol > 1:
        top = np.argmax(A0, axis=1)
        first = A0[np.arange(nrow), top]
        rest = A0.copy()
        rest[np.arange(nrow), top] = -np.inf
        second = rest.max(axis=1)
        out[:, 0] = np.where(top[row] == codes, second[row], first[row])
    else:
        out[:, 0] = 0.0
    counted = np.isfinite(A).sum(axis=1)
    out[:, 1] = np.where(counted > 0, A0.sum(axis=1) / np.maximum(counted, 1), np.nan)[row]

    # Regression of each sensor on its partner over the reference blocks of device rows.
    n0 = int(dev["n"])
    k = n0 % BLOCK
    partial = np.array([[_f(v) for v in dev["rows"].get(s, [None] * k)] for s in cols], dtype=float)
    full = np.vstack([partial.reshape(ncol, k).T, V])
    ci = {sid: i for i, sid in enumerate(cols)}
    pairs = sorted({tuple(sorted((a, p))) for a in cols for p in cols if a != p and PARTNERS.get(types[a]) == types[p]})
    b0 = int(dev["b0"])
    blocks: dict[str, list[list[float]]] = {f"{a}|{b}": list(dev["blocks"].get(f"{a}|{b}", [])) for a, b in pairs}
    j0, j1 = n0 // BLOCK, (n0 + nrow) // BLOCK  # blocks completing inside this batch
    # The all-sensor regression's block Gram matrices since block g0 (afresh when the device's sensors change).
    old_grams = dev.get("grams") or {}  # absent in states written before this feature
    same_cols = old_grams.get("cols") == cols
    g0 = int(old_grams["b0"]) if same_cols else j0
    grams = [list(g) for g in old_grams.get("g", [])] if same_cols else []
    if j1 > j0:
        seg = full[j0 * BLOCK - (n0 - k) : j1 * BLOCK - (n0 - k)].reshape(j1 - j0, BLOCK, ncol)
        for a, b in pairs:
            blk = blocks[f"{a}|{b}"]
            blk.extend([[0.0] * 6] * (j0 - b0 - len(blk)))  # a pair that appeared late: empty earlier blocks
            blk.extend(_pair_sums(seg[:, :, ci[a]], seg[:, :, ci[b]]).tolist())
        grams.extend(block_grams(seg).tolist())
    r = (n0 + np.arange(nrow)) // BLOCK
    r_values, r_index = np.unique(r, return_inverse=True)
    # Residual against all the other sensors: one regression per block-of-rows, from its REF_BLOCKS blocks.
    dev_z = np.full((nrow, ncol), np.nan)
    fits: list = [None] * len(r_values)
    if ncol > 1:
        gram_rows = np.asarray(grams, dtype=float).reshape(-1, gram_size(ncol))
        r_bounds = np.searchsorted(r_index, np.arange(len(r_values) + 1))  # rows come in time order
        for i, rv in enumerate(r_values):
            lo, hi = max(0, rv - REF_BLOCKS - g0), max(0, rv - g0)
            window = gram_rows[lo:hi]
            window = window[np.isfinite(window).all(axis=1)]
            fits[i] = residual_fit(window, BLOCK) if len(window) >= MIN_BLOCKS else None
            if fits[i] is not None:
                at = slice(r_bounds[i], r_bounds[i + 1])
                dev_z[at] = residual_z(V[at], fits[i])
    old_dtail = dev.get("dtail") or {}
    prev_dz = np.array([[_f(v) for v in old_dtail.get(s) or [None] * (ROLL - 1)] for s in cols], dtype=float)
    dz_hist = np.vstack([prev_dz.reshape(ncol, ROLL - 1).T, dev_z])
    resid = np.full((nrow, ncol), np.nan)
    best = np.full((nrow, ncol), np.nan)  # residual against the partner that explains the sensor best
    best_ratio = np.full((nrow, ncol), np.inf)
    # The mean of the last ROLL device rows of every sensor, against the partner's (block-mean regression).
    old_tail = dev.get("tail") or {}  # absent in states written before this feature
    tail = np.array([_padded(old_tail.get(s), _TAIL) for s in cols], dtype=float)
    v_hist = np.vstack([tail.reshape(ncol, _TAIL).T, V])
    means = _window_sum(v_hist[_TAIL - (ROLL - 1) :], ROLL) / ROLL
    mean_z = np.full((nrow, ncol), np.nan)
    mean_ratio = np.full((nrow, ncol), np.inf)
    min_z = np.full((nrow, ncol), np.nan)
    for a, b in pairs:
        pair_blocks = np.asarray(blocks[f"{a}|{b}"], dtype=float).reshape(-1, 6)
        # The reference window of each block-of-rows: the REF_BLOCKS blocks before it (zero sums before the
        # first one), as a (r, 6, REF_BLOCKS) array reduced on its last axis, row by row.
        padded = np.vstack([np.zeros((REF_BLOCKS, 6)), pair_blocks])
        starts = np.clip(r_values - b0, 0, len(pair_blocks))
        win = np.ascontiguousarray(sliding_window_view(padded, REF_BLOCKS, axis=0)[starts])
        va, vb = V[:, ci[a]], V[:, ci[b]]
        for target, y, x, iy, ix in ((a, va, vb, 0, 1), (b, vb, va, 1, 0)):
            n, my, mx, vy, vx, cov, bc, bbeta, bres, bratio = (f[r_index] for f in pair_fit(win, iy, ix))
            ym, xm = means[:, ci[target]], means[:, ci[b if target == a else a]]
            with np.errstate(invalid="ignore", divide="ignore"):
                # Scale: the block means' residual spread plus the noise a ROLL-reading mean keeps.
                bscale = np.sqrt(bres + np.maximum(vy - cov * cov / vx, 0.0) / ROLL) + 1e-9
                zm = np.where(n >= 2 * BLOCK, (ym - bc - bbeta * xm) / bscale, np.nan)
            better = np.isfinite(zm) & (bratio < mean_ratio[:, ci[target]])
            mean_z[:, ci[target]] = np.where(better, zm, mean_z[:, ci[target]])
            mean_ratio[:, ci[target]] = np.where(better, bratio, mean_ratio[:, ci[target]])
            # Against every partner that explains most of the sensor's movement, the smallest deviation: an
            # anomaly on one partner breaks only the pairs it is in.
            cur = min_z[:, ci[target]]
            take = np.isfinite(zm) & (bratio < GOOD_FIT) & ~(np.abs(cur) <= np.abs(zm))
            min_z[:, ci[target]] = np.where(take, zm, cur)
            with np.errstate(invalid="ignore", divide="ignore"):
                beta = cov / vx
                res_var = np.maximum(vy - cov * cov / vx, 0.0)
                scale = np.fmax(np.sqrt(res_var), 0.05 * np.sqrt(np.maximum(vy, 0.0)) + 1e-9)
                z = np.where(n >= 2 * BLOCK, (y - (my + beta * (x - mx))) / scale, np.nan)
                cur = resid[:, ci[target]]
                keep_cur = np.isfinite(cur) & ~(np.abs(z) > np.abs(cur))
                resid[:, ci[target]] = np.where(keep_cur, cur, z)
                # The unexplained share of the sensor's variance: the smaller, the better the partner.
                ratio = np.where(np.isfinite(z), res_var / np.fmax(vy, 1e-300), np.inf)
                better = ratio < best_ratio[:, ci[target]]
                best[:, ci[target]] = np.where(better, z, best[:, ci[target]])
                best_ratio[:, ci[target]] = np.where(better, ratio, best_ratio[:, ci[target]])
    out[:, 2] = resid[row, codes]
    prev = np.array([[_f(v) for v in dev["resid"].get(s) or [None] * (SHORT - 1)] for s in cols], dtype=float)
    hist = np.vstack([prev.reshape(ncol, SHORT - 1).T, resid])
    roll = sliding_window_view(hist, SHORT, axis=0).mean(axis=2)  # rows x cols
    out[:, 3] = roll[row, codes]
    out[:, 4] = best[row, codes]
    old_best = dev.get("best") or {}  # absent in states written before this feature
    prev = np.array([[_f(v) for v in old_best.get(s) or [None] * (ROLL - 1)] for s in cols], dtype=float)
    best_hist = np.vstack([prev.reshape(ncol, ROLL - 1).T, best])
    out[:, 5] = (_window_sum(best_hist, ROLL) / ROLL)[row, codes]
    out[:, 6] = mean_z[row, codes]
    out[:, 7] = min_z[row, codes]
    out[:, 8] = (_window_sum(dz_hist, ROLL) / np.sqrt(ROLL))[row, codes]
    old_held = dev.get("held") or {}  # absent in states written before this feature
    held = old_held["s"] if old_held.get("cols") == cols else [None] * ncol
    held_z, held = held_residual(v_hist[_TAIL - HELD_HISTORY :], steps, fits, r_index, held, SHIFT_STEP)
    out[:, 9] = held_z[row, codes]

    keep = (n0 + nrow) % BLOCK
    longest = max((len(b) for b in blocks.values()), default=0)
    cut = max(0, longest - REF_BLOCKS)
    new_dev = {
        "types": types,
        "origin": origin,
        "last_v": {s: _num(V[-1, i]) for i, s in enumerate(cols)},
        "last_absz": {s: _num(A[-1, i]) for i, s in enumerate(cols)},
        "rows": {s: _nums(full[len(full) - keep :, i]) if keep else [] for i, s in enumerate(cols)},
        "n": n0 + nrow,
        "b0": b0 + cut if blocks else (n0 + nrow) // BLOCK,
        "blocks": {key: blk[cut:] for key, blk in blocks.items()},
        "resid": {s: _nums(hist[-(SHORT - 1) :, i]) for i, s in enumerate(cols)},
        "best": {s: _nums(best_hist[-(ROLL - 1) :, i]) for i, s in enumerate(cols)},
        "tail": {s: _nums(v_hist[-_TAIL:, i]) for i, s in enumerate(cols)},
        "dtail": {s: _nums(dz_hist[-(ROLL - 1) :, i]) for i, s in enumerate(cols)},
        "grams": {
            "cols": cols,
            "b0": g0 + max(0, len(grams) - REF_BLOCKS),
            "g": [_nums(np.asarray(g)) for g in grams[-REF_BLOCKS:]],
        },
        "held": {"cols": cols, "s": held},
    }
    return out, new_dev


def _window_sum(hist: np.ndarray, w: int) -> np.ndarray:
    """Sums of ``w`` consecutive rows of ``hist`` (rows - w + 1 of them), added in row order: the same
    numbers however the rows are split into batches (numpy's pairwise sums depend on the array's shape)."""
    n = len(hist) - w + 1
    acc = hist[:n].copy()
    for j in range(1, w):
        acc += hist[j : j + n]
    return acc


def _padded(values: list | None, n: int) -> list:
    """The last ``n`` of ``values`` (None-padded in front: a state written with a shorter tail)."""
    values = list(values or [])[-n:]
    return [_f(v) for v in [None] * (n - len(values)) + values]


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
    dev_codes, dev_names = pd.factorize(batch["device_id"], sort=True)
    # Sensors are ordered by name inside a device: rank unique (device, sensor) pairs.
    sid_codes, sid_names = pd.factorize(batch["sensor_id"], sort=True)
    pair_keys, pair_codes = np.unique(dev_codes.astype(np.int64) * len(sid_names) + sid_codes, return_inverse=True)
    pair_dev = pair_keys // len(sid_names)
    pair_sid = np.asarray(sid_names, dtype=object)[pair_keys % len(sid_names)]
    raw_ts = batch["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    order = np.lexsort((pair_codes, raw_ts, dev_codes))
    in_order = bool((order[1:] > order[:-1]).all())
    frame = batch.reset_index(drop=True) if in_order else batch.take(order).reset_index(drop=True)
    ts, inv, dev = raw_ts[order], pair_codes[order], dev_codes[order]
    values = frame["value"].to_numpy(dtype=float)
    dev_names = [str(d) for d in dev_names]
    olds = {d: _current_state(states.get(d)) for d in dev_names}

    feats = np.full((len(frame), len(FEATURE_COLUMNS)), np.nan)
    nf = len(SENSOR_FEATURES)
    sensors = {d: dict(olds[d]["sensors"]) for d in dev_names}
    by_pair = np.argsort(inv, kind="stable")
    bounds = np.searchsorted(inv[by_pair], np.arange(len(pair_sid) + 1))
    # Sensors (of any device) with the same history length, count so far and batch size go together.
    groups: dict[tuple[int, int, int], list[int]] = {}
    for u in range(len(pair_sid)):
        st = sensors[dev_names[pair_dev[u]]].get(str(pair_sid[u])) or _new_sensor()
        groups.setdefault((len(st["x"]), int(st["n"]), int(bounds[u + 1] - bounds[u])), []).append(u)
    for members in groups.values():
        idx = np.stack([by_pair[bounds[u] : bounds[u + 1]] for u in members])
        group_states = [sensors[dev_names[pair_dev[u]]].get(str(pair_sid[u])) or _new_sensor() for u in members]
        out, new_states = _sensors_step(values[idx], ts[idx], group_states)
        feats[idx.ravel(), :nf] = out.reshape(-1, nf)
        for u, st in zip(members, new_states, strict=True):
            sensors[dev_names[pair_dev[u]]][str(pair_sid[u])] = st

    ref_z = feats[:, SENSOR_FEATURES.index("ref_z")]
    step_z = feats[:, SENSOR_FEATURES.index("step_z")]
    types_in = batch["sensor_type"].to_numpy(dtype=object)
    first_of_pair = np.unique(pair_codes, return_index=True)[1]
    dev_bounds = np.searchsorted(dev, np.arange(len(dev_names) + 1))
    pair_bounds = np.searchsorted(pair_dev, np.arange(len(dev_names) + 1))
    new: dict[str, dict[str, Any]] = {}
    for d, name in enumerate(dev_names):
        lo, hi = dev_bounds[d], dev_bounds[d + 1]
        prev_dev = olds[name]["device"] or _EMPTY_DEVICE
        types: dict[str, str] = dict(prev_dev["types"])
        for u in range(pair_bounds[d], pair_bounds[d + 1]):
            types.setdefault(str(pair_sid[u]), str(types_in[first_of_pair[u]]))
        cols = sorted(types)
        col_of = {sid: i for i, sid in enumerate(cols)}
        first_pair = pair_bounds[d]
        local = np.array([col_of[str(sid)] for sid in pair_sid[first_pair : pair_bounds[d + 1]]], dtype=np.int64)
        codes = local[inv[lo:hi] - first_pair]
        feats[lo:hi, nf:], device = _device_step(
            pair_sid[inv[lo:hi]],
            codes,
            cols,
            types,
            ts[lo:hi],
            values[lo:hi],
            ref_z[lo:hi],
            step_z[lo:hi],
            prev_dev,
        )
        new[name] = {"v": STATE_VERSION, "sensors": sensors[name], "device": device}
    frame = pd.concat([frame, pd.DataFrame(feats, columns=list(FEATURE_COLUMNS))], axis=1)
    return frame, new


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
