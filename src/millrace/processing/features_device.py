"""The device features (DEVICE_FEATURES) of one device's readings: its rows (timestamps) x sensors, the context
of its other sensors, the partner features (features_pair) and the all-sensor regression (devreg), carried
across batches in the device's state."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
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
    residual_z_rows,
)
from millrace.processing.features_pair import pair_blocks, partner_pairs, reference_windows
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


@dataclass(frozen=True, eq=False, slots=True)
class DeviceFeatureState:
    """What a device's features carry between batches, as arrays over its sensors ``cols`` (sorted sensor ids;
    rows x sensors where there are rows). Immutable: every array is read-only, and a batch builds a new value.
    Non-finite kept values are NaN (unknown). Equal when :func:`dump_device` writes the same."""

    cols: tuple[str, ...]
    types: tuple[str, ...]  # of cols
    n: int  # device rows so far
    origin: np.ndarray  # each sensor's first finite value (NaN: none yet); values are kept minus it
    last_v: np.ndarray  # the last row of values (forward-filled)
    last_absz: np.ndarray  # and of |ref_z|
    rows: np.ndarray  # the rows of the open block (n % BLOCK)
    tail: np.ndarray  # the last TAIL rows of values
    resid: np.ndarray  # the last SHORT - 1 rows of pair_resid_z
    best: np.ndarray  # the last ROLL - 1 rows of pair_best_z
    dtail: np.ndarray  # the last ROLL - 1 rows of the all-sensor residual
    b0: int  # the global block of the first pair block kept
    pairs: tuple[tuple[str, str], ...]  # partner_pairs(cols, types)
    blocks: tuple[np.ndarray, ...]  # per pair, its blocks' regression sums (blocks x 6)
    g0: int  # the global block of the first Gram triangle kept
    grams: np.ndarray  # the all-sensor regression's block Gram triangles (blocks x gram_size)
    held: tuple[dict[str, Any] | None, ...]  # per sensor, its held regression (devreg.held_residual)

    def __post_init__(self) -> None:
        for name in _ARRAYS:
            getattr(self, name).flags.writeable = False
        for blk in self.blocks:
            blk.flags.writeable = False

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeviceFeatureState) and dump_device(self) == dump_device(other)

    __hash__ = None  # type: ignore[assignment]


_ARRAYS = ("origin", "last_v", "last_absz", "rows", "tail", "resid", "best", "dtail", "grams")


def dump_device(st: DeviceFeatureState) -> dict[str, Any]:
    """The state as a JSON-able value: names and counts, and every array as one base64 text of little-endian
    float64 (exact, 10.7 characters a number where the regression sums took 18-20 as JSON text, and no float
    formatting or parsing)."""
    arrays = [getattr(st, name) for name in _ARRAYS] + list(st.blocks)
    raw = np.concatenate([a.ravel() for a in arrays]).astype("<f8").tobytes()
    return {
        "cols": list(st.cols),
        "types": list(st.types),
        "n": st.n,
        "b0": st.b0,
        "g0": st.g0,
        "open": len(st.rows),
        "grams": len(st.grams),
        "pairs": [f"{a}|{b}" for a, b in st.pairs],
        "blocks": [len(b) for b in st.blocks],
        "held": list(st.held),
        "f64": base64.b64encode(raw).decode("ascii"),
    }


def load_device(doc: Mapping[str, Any]) -> DeviceFeatureState:
    """The state :func:`dump_device` wrote; its arrays are views of one read-only buffer."""
    cols = tuple(str(c) for c in doc["cols"])
    ncol = len(cols)
    flat = np.frombuffer(base64.b64decode(doc["f64"]), dtype="<f8")
    shapes = {
        "origin": (ncol,),
        "last_v": (ncol,),
        "last_absz": (ncol,),
        "rows": (int(doc["open"]), ncol),
        "tail": (TAIL, ncol),
        "resid": (SHORT - 1, ncol),
        "best": (ROLL - 1, ncol),
        "dtail": (ROLL - 1, ncol),
        "grams": (int(doc["grams"]), gram_size(ncol)),
    }
    at = 0

    def take(shape: tuple[int, ...]) -> np.ndarray:
        nonlocal at
        size = int(np.prod(shape))
        at += size
        return flat[at - size : at].reshape(shape)

    arrays = {name: take(shapes[name]) for name in _ARRAYS}
    blocks = tuple(take((int(k), 6)) for k in doc["blocks"])
    if at != len(flat):
        raise ValueError(f"device feature state holds {len(flat)} numbers, its shapes {at}")
    pairs = tuple((a, b) for a, _, b in (str(p).partition("|") for p in doc["pairs"]))
    return DeviceFeatureState(
        cols=cols,
        types=tuple(str(t) for t in doc["types"]),
        n=int(doc["n"]),
        b0=int(doc["b0"]),
        g0=int(doc["g0"]),
        pairs=pairs,
        blocks=blocks,
        held=tuple(doc["held"]),
        **arrays,
    )


class _DeviceRows(NamedTuple):
    """A device's readings as rows (one per distinct timestamp) x sensor columns."""

    row: np.ndarray  # the row of each reading
    values: np.ndarray  # values minus each sensor's origin, forward-filled
    abs_z: np.ndarray  # |ref_z|, forward-filled
    step_z: np.ndarray  # step_z (not filled)
    origin: np.ndarray  # each sensor's first finite value (NaN: none yet)


class DeviceBatch(NamedTuple):
    """One device's readings of a batch, sorted by (timestamp, sensor_id); ``codes`` index ``cols``."""

    codes: np.ndarray
    cols: tuple[str, ...]
    types: tuple[str, ...]
    ts: np.ndarray
    values: np.ndarray
    ref_z: np.ndarray
    step_z: np.ndarray


class PreparedRows(NamedTuple):
    """What :func:`prepare_rows` computed of a device's batch, for :func:`finish_rows`."""

    batch: DeviceBatch
    prev: DeviceFeatureState | None
    rows: _DeviceRows
    n0: int
    r_index: np.ndarray  # the block of rows of each row (into the blocks of rows)
    full: np.ndarray  # the rows of the open block, then the batch's
    pairs: tuple[tuple[str, str], ...]
    blocks: list[np.ndarray]
    grams: np.ndarray
    g0: int
    dev_z: np.ndarray
    fits: list
    v_hist: np.ndarray
    means: np.ndarray
    windows: np.ndarray  # reference_windows of the pairs: pairs.pair_fit them, for finish_rows


def prepare_rows(b: DeviceBatch, prev: DeviceFeatureState | None) -> PreparedRows:
    """The first part of a device's DEVICE_FEATURES: its rows, the blocks completing, the all-sensor residuals
    and the pairs' reference windows. Their fits (pairs.pair_fit of ``windows``) are computed for many
    devices at once by the caller, then :func:`finish_rows` completes the features."""
    cols = b.cols
    index = None if prev is None or prev.cols == cols else np.array([cols.index(c) for c in prev.cols])
    rows = _device_rows(b, prev, index)
    V, nrow = rows.values, len(rows.values)
    n0 = prev.n if prev is not None else 0
    first_block = n0 // BLOCK  # the blocks of the rows: consecutive, from the open one
    r_index = (n0 + np.arange(nrow)) // BLOCK - first_block
    r_values = np.arange(first_block, first_block + int(r_index[-1]) + 1)
    full = np.vstack([_kept(prev, "rows", index, n0 % BLOCK, len(cols)), V])  # the open block's rows, then V
    pairs = partner_pairs(cols, b.types)
    b0 = prev.b0 if prev is not None else 0
    blocks = pair_blocks(
        full, n0, b0, pairs, cols, dict(zip(prev.pairs, prev.blocks, strict=True)) if prev is not None else {}
    )
    grams, g0 = _gram_blocks(full, n0, cols, prev)
    dev_z, fits = _all_sensor_residuals(V, grams, g0, r_values, r_index)
    v_hist = np.vstack([_kept(prev, "tail", index, TAIL, len(cols)), V])
    means = _window_sum(v_hist[TAIL - (ROLL - 1) :], ROLL) / ROLL  # of the last ROLL rows, per row
    windows = reference_windows(blocks, b0, r_values)
    return PreparedRows(b, prev, rows, n0, r_index, full, pairs, blocks, grams, g0, dev_z, fits, v_hist, means, windows)


def pair_columns(p: PreparedRows) -> tuple[tuple[int, int], ...]:
    """The device's partner pairs as pairs of its sensor columns (the same for devices with the same types)."""
    ci = {sid: i for i, sid in enumerate(p.batch.cols)}
    return tuple((ci[a], ci[b]) for a, b in p.pairs)


def finish_rows(p: PreparedRows, pair: Columns) -> tuple[Columns, DeviceFeatureState]:
    """DEVICE_FEATURES (one value per reading) of the device's batch, given its partner features
    (features_pair.pair_features of its rows, rows x sensors; all NaN without partners), and the device's new
    state."""
    b, prev, rows = p.batch, p.prev, p.rows
    cols, ncol = b.cols, len(b.cols)
    index = None if prev is None or prev.cols == cols else np.array([cols.index(c) for c in prev.cols])
    V, nrow = rows.values, len(rows.values)
    resid_hist = np.vstack([_kept(prev, "resid", index, SHORT - 1, ncol), pair["pair_resid_z"]])
    best_hist = np.vstack([_kept(prev, "best", index, ROLL - 1, ncol), pair["pair_best_z"]])
    dz_hist = np.vstack([_kept(prev, "dtail", index, ROLL - 1, ncol), p.dev_z])
    held = list(prev.held) if prev is not None and index is None else [None] * ncol
    held_z, held = held_residual(p.v_hist[TAIL - HELD_HISTORY :], rows.step_z, p.fits, p.r_index, held, SHIFT_STEP)
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
    feats = _context_features(rows.abs_z, rows.row, b.codes)
    feats.update({name: matrix[rows.row, b.codes] for name, matrix in matrices.items()})

    keep = (p.n0 + nrow) % BLOCK
    longest = max((len(blk) for blk in p.blocks), default=0)
    cut = max(0, longest - REF_BLOCKS)
    new = DeviceFeatureState(
        cols=cols,
        types=b.types,
        n=p.n0 + nrow,
        origin=rows.origin,
        last_v=_known(V[-1]),
        last_absz=_known(rows.abs_z[-1]),
        rows=_known(p.full[len(p.full) - keep :]),
        tail=_known(p.v_hist[-TAIL:]),
        resid=_known(resid_hist[-(SHORT - 1) :]),
        best=_known(best_hist[-(ROLL - 1) :]),
        dtail=_known(dz_hist[-(ROLL - 1) :]),
        b0=(prev.b0 if prev is not None else 0) + cut if p.blocks else (p.n0 + nrow) // BLOCK,
        pairs=p.pairs,
        blocks=tuple(_known(blk[cut:]) for blk in p.blocks),
        g0=p.g0 + max(0, len(p.grams) - REF_BLOCKS),
        grams=_known(p.grams[-REF_BLOCKS:]),
        held=tuple(held),
    )
    return feats, new


def _device_rows(b: DeviceBatch, prev: DeviceFeatureState | None, index: np.ndarray | None) -> _DeviceRows:
    """The readings on the device's grid of rows (timestamps) x sensors; values and |ref_z| carry forward
    from the last known ones (of this batch, else of the previous)."""
    codes, values, ncol = b.codes, b.values, len(b.cols)
    origin = _kept(prev, "origin", index, None, ncol).copy()
    for j in np.flatnonzero(np.isnan(origin)):  # sensors without an origin yet (a sensor not in the batch: none)
        finite = values[(codes == j) & np.isfinite(values)]
        if len(finite):
            origin[j] = float(finite[0])
    org = np.where(np.isnan(origin), 0.0, origin)
    # The readings come in timestamp order: a row starts where the timestamp changes.
    row = np.cumsum(np.concatenate([[True], b.ts[1:] != b.ts[:-1]])) - 1
    shape = (int(row[-1]) + 1, ncol)

    def grid(column: np.ndarray) -> np.ndarray:
        out = np.full(shape, np.nan)
        out[row, codes] = column
        return out

    return _DeviceRows(
        row=row,
        values=_ffill(grid(values - org[codes]), _kept(prev, "last_v", index, None, ncol)),
        abs_z=_ffill(grid(np.abs(b.ref_z)), _kept(prev, "last_absz", index, None, ncol)),
        step_z=grid(b.step_z),
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


def _gram_blocks(
    full: np.ndarray, n0: int, cols: tuple[str, ...], prev: DeviceFeatureState | None
) -> tuple[np.ndarray, int]:
    """The all-sensor regression's block Gram triangles since block g0, with those completing in this batch,
    and g0 (afresh when the device's sensors change)."""
    same_cols = prev is not None and prev.cols == cols
    g0 = prev.g0 if prev is not None and same_cols else n0 // BLOCK
    grams = prev.grams if prev is not None and same_cols else np.zeros((0, gram_size(len(cols))))
    seg = completing_blocks(full, n0)
    if seg is not None:
        grams = np.concatenate([grams, block_grams(seg)])
    return grams, g0


def _all_sensor_residuals(
    V: np.ndarray, grams: np.ndarray, g0: int, r_values: np.ndarray, r_index: np.ndarray
) -> tuple[np.ndarray, list]:
    """Each sensor's residual against all the others (rows x sensors): one regression per block of rows, from
    the REF_BLOCKS blocks before it; and those regressions (None where too few blocks)."""
    nrow, ncol = V.shape
    dev_z = np.full((nrow, ncol), np.nan)
    fits: list = [None] * len(r_values)
    if ncol < 2:
        return dev_z, fits
    for i, rv in enumerate(r_values):
        window = grams[max(0, rv - REF_BLOCKS - g0) : max(0, rv - g0)]
        window = window[np.isfinite(window).all(axis=1)]
        fits[i] = _residual_fit(window) if len(window) >= MIN_BLOCKS else None
    return residual_z_rows(V, fits, r_index), fits


_FITS: dict[bytes, tuple[np.ndarray, np.ndarray] | None] = {}
_FITS_SIZE = 1024  # entries: a few per device (the windows of a micro-batch's blocks of rows)


def _residual_fit(window: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """devreg.residual_fit of a reference window of Gram triangles, remembered per process: a window changes
    only when a block of rows completes, so a stream's consecutive micro-batches fit the same one (the first
    block of rows of a batch is the last of the one before). A pure function of the window: the same numbers."""
    key = window.tobytes() + bytes(str(window.shape), "ascii")
    if key in _FITS:
        return _FITS[key]
    if len(_FITS) >= _FITS_SIZE:
        _FITS.pop(next(iter(_FITS)))  # the oldest entry
    fit = residual_fit(window, BLOCK)
    if fit is not None:
        for part in fit:
            part.flags.writeable = False  # shared by the calls that hit it
    _FITS[key] = fit
    return fit


def _window_sum(hist: np.ndarray, w: int) -> np.ndarray:
    """Sums of ``w`` consecutive rows of ``hist`` (rows - w + 1 of them), added in row order: the same
    numbers however the rows are split into batches (numpy's pairwise sums depend on the array's shape)."""
    n = len(hist) - w + 1
    acc = hist[:n].copy()
    for j in range(1, w):
        acc += hist[j : j + n]
    return acc


def _kept(prev: DeviceFeatureState | None, name: str, index: np.ndarray | None, n: int | None, ncol: int) -> np.ndarray:
    """A kept array of ``prev`` on this batch's sensors (``index``: where its sensors are among them, None when
    they are the same): ``n`` rows x sensors, or one value per sensor when ``n`` is None; NaN for a sensor it
    does not know, and everywhere without ``prev``."""
    shape = (ncol,) if n is None else (n, ncol)
    if prev is None:
        return np.full(shape, np.nan)
    kept: np.ndarray = getattr(prev, name)
    if index is None:
        return kept
    out = np.full(shape, np.nan)
    out[..., index] = kept
    return out


def _known(values: np.ndarray) -> np.ndarray:
    """``values`` to keep: a new array, NaN where not finite (unknown)."""
    return np.where(np.isfinite(values), values, np.nan)
