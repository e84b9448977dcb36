"""The device features (DEVICE_FEATURES) of one device's readings: its rows (timestamps) x sensors, the context
of its other sensors, the partner features (features_pair) and the all-sensor regression (devreg), carried
across batches in the device's state."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from millrace.processing.devreg import (
    HELD_HISTORY,
    MIN_BLOCKS,
    block_grams,
    gram_size,
    held_residual,
    residual_fit,
    residual_z,
)
from millrace.processing.features_pair import pair_blocks, pair_features, partner_pairs
from millrace.processing.features_spec import (
    BLOCK,
    REF_BLOCKS,
    ROLL,
    SHORT,
    TAIL,
    Columns,
    completing_blocks,
)
from millrace.processing.steps import SHIFT_STEP


def _ffill(matrix: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Forward-fill NaNs down the rows, starting from ``first`` (the last known row)."""
    full = np.vstack([first[None, :], matrix])
    mask = np.isnan(full)
    idx = np.where(~mask, np.arange(len(full))[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    return full[idx, np.arange(full.shape[1])][1:]


class _DeviceRows(NamedTuple):
    """A device's readings as rows (one per distinct timestamp) x sensor columns."""

    row: np.ndarray  # the row of each reading
    values: np.ndarray  # values minus each sensor's origin, forward-filled
    abs_z: np.ndarray  # |ref_z|, forward-filled
    step_z: np.ndarray  # step_z (not filled)
    origin: dict[str, float | None]  # each sensor's first finite value


def device_rows_step(
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
    pairs = partner_pairs(cols, types)
    blocks = pair_blocks(full, n0, pairs, cols, dev)
    grams, g0 = _gram_blocks(full, n0, cols, dev)
    dev_z, fits = _all_sensor_residuals(V, grams, g0, r_values, r_index)
    v_hist = np.vstack([_tail_rows(dev.get("tail"), cols, TAIL), V])
    means = _window_sum(v_hist[TAIL - (ROLL - 1) :], ROLL) / ROLL  # of the last ROLL rows, per row
    pair = pair_features(V, means, pairs, blocks, int(dev["b0"]), r_values, r_index, cols)
    resid_hist = np.vstack([_tail_rows(dev["resid"], cols, SHORT - 1), pair["pair_resid_z"]])
    best_hist = np.vstack([_tail_rows(dev.get("best"), cols, ROLL - 1), pair["pair_best_z"]])
    dz_hist = np.vstack([_tail_rows(dev.get("dtail"), cols, ROLL - 1), dev_z])
    old_held = dev.get("held") or {}
    held = old_held["s"] if old_held.get("cols") == cols else [None] * ncol
    held_z, held = held_residual(v_hist[TAIL - HELD_HISTORY :], rows.step_z, fits, r_index, held, SHIFT_STEP)
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
        "tail": _by_sensor(v_hist[-TAIL:], cols),
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


def _gram_blocks(full: np.ndarray, n0: int, cols: list[str], dev: dict[str, Any]) -> tuple[list, int]:
    """The all-sensor regression's block Gram triangles since block g0, with those completing in this batch,
    and g0 (afresh when the device's sensors change)."""
    old = dev.get("grams") or {}
    same_cols = old.get("cols") == cols
    g0 = int(old["b0"]) if same_cols else n0 // BLOCK
    grams = [list(g) for g in old.get("g", [])] if same_cols else []
    seg = completing_blocks(full, n0)
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
