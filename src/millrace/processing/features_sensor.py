"""The per-sensor features (SENSOR_FEATURES): statistics of each sensor's own history, computed for many
sensors at once (sensors x readings), carried across batches in a small state per sensor."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from millrace.processing.features_spec import (
    BLOCK,
    HISTORY,
    JUMP,
    JUMP_AGE_CAP,
    LONG,
    NOISE,
    REF_BLOCKS,
    ROLL,
    SHORT,
    TREND,
    Columns,
    nan_columns,
)
from millrace.processing.steps import shift_features, step_features, tiny, weighted_sum

_MAD_TO_STD = 1.4826
_NS = 1e9
# Least-squares slope over TREND points, scaled to the change across the window: sum(w * x).
_TREND_C = np.arange(TREND) - (TREND - 1) / 2.0
_TREND_WEIGHTS = _TREND_C * (TREND - 1) / float((_TREND_C * _TREND_C).sum())
_LONG_C = np.arange(LONG) - (LONG - 1) / 2.0
_LONG_WEIGHTS = _LONG_C * (LONG - 1) / float((_LONG_C * _LONG_C).sum())


def new_sensor() -> dict[str, Any]:
    return {"x": [], "n": 0, "t": None, "run": 0, "b0": 0, "blocks": []}


def sensors_step(values: np.ndarray, ts: np.ndarray, states: list[dict[str, Any]]) -> tuple[Columns, list[dict]]:
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
    # Python numbers, each array converted by one tolist (the same ints and floats as item by item).
    columns = zip(
        x[:, -HISTORY:].tolist(),
        ts[:, -1].tolist(),
        run[:, -1].tolist(),
        blocks[:, cut:].tolist(),
        feats["jump_age"][:, -1].tolist(),
        feats["jump_z"][:, -1].tolist(),
        last,
        strict=True,
    )
    new_states = [
        {"x": kx, "n": n0 + m, "t": t, "run": r, "b0": b0 + cut, "blocks": kb, "jage": ja, "jz": jz, **shift}
        for kx, t, r, kb, ja, jz, shift in columns
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
    out = nan_columns(names, (S, m))
    first = max(0, ROLL - h)
    if first >= m:
        return out
    k = m - first
    # win = x[p - ROLL : p + 1] per reading p, copied so that every reduction runs on a contiguous last axis.
    win = np.ascontiguousarray(sliding_window_view(x, ROLL + 1, axis=1)[:, h + first - ROLL :][:, :k])
    past, v = win[..., :ROLL], win[..., ROLL]
    rmed, rscale = ref_med[:, first:], ref_scale[:, first:]
    mean = past.mean(axis=-1)
    std = past.std(axis=-1, ddof=1, mean=mean[..., None])  # numpy std with the mean above (not summed twice)
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
    out = nan_columns(("mid_ref_z", "trend_long_z"), (S, m))
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
