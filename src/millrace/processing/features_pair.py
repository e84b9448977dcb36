"""The partner features (pair_resid_z, pair_best_z, pair_mean_z, pair_min_mean): each sensor regressed on the
sensors of its partner types (PARTNERS), from regression sums kept per block of device rows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from millrace.processing.features_spec import (
    BLOCK,
    PARTNERS,
    REF_BLOCKS,
    ROLL,
    Columns,
    completing_blocks,
    nan_columns,
)
from millrace.processing.pairs import GOOD_FIT


def _pair_sums(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Regression sums (n, sum x, sum y, sum x^2, sum y^2, sum xy) over the pairs where both are finite, one
    row per block (``x``/``y``: ... x blocks x rows, C-contiguous; each block is reduced on its own along the
    last axis, so the numbers do not depend on how many blocks or pairs a batch completes)."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = np.where(ok, x, 0.0), np.where(ok, y, 0.0)
    # Element-wise products, not dot(): BLAS kernels may round differently with alignment.
    return np.stack(
        [
            ok.sum(axis=-1).astype(float),
            x.sum(axis=-1),
            y.sum(axis=-1),
            (x * x).sum(axis=-1),
            (y * y).sum(axis=-1),
            (x * y).sum(axis=-1),
        ],
        axis=-1,
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


def partner_pairs(cols: tuple[str, ...], types: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The device's (unordered, sorted) pairs of a sensor and a partner of its type (PARTNERS); ``types``
    are those of ``cols``."""
    type_of = dict(zip(cols, types, strict=True))
    found = {tuple(sorted((a, p))) for a in cols for p in cols if a != p and PARTNERS.get(type_of[a]) == type_of[p]}
    return tuple(sorted((a, b) for a, b in found))


_NO_BLOCKS = np.zeros((0, 6))
_NO_BLOCKS.flags.writeable = False


def pair_blocks(
    full: np.ndarray,
    n0: int,
    b0: int,
    pairs: tuple[tuple[str, str], ...],
    cols: tuple[str, ...],
    kept: Mapping[tuple[str, str], np.ndarray],
) -> list[np.ndarray]:
    """Per pair, the regression sums (blocks x 6) of the device blocks since ``b0``: the ``kept`` ones, then
    those completing in this batch."""
    j0 = n0 // BLOCK
    seg = completing_blocks(full, n0)
    out = [kept.get(pair, _NO_BLOCKS) for pair in pairs]
    if seg is None:
        return out
    ci = {sid: i for i, sid in enumerate(cols)}
    # Every pair's blocks at once: pairs x blocks x BLOCK rows, each block still reduced on its own.
    first = np.ascontiguousarray(np.moveaxis(seg[:, :, [ci[a] for a, _ in pairs]], 2, 0))
    second = np.ascontiguousarray(np.moveaxis(seg[:, :, [ci[b] for _, b in pairs]], 2, 0))
    sums = _pair_sums(first, second)
    for k in range(len(pairs)):
        late = j0 - b0 - len(out[k])  # a pair that appeared late: empty earlier blocks
        parts = [out[k], np.zeros((late, 6))] if late > 0 else [out[k]]
        out[k] = np.concatenate([*parts, sums[k]])
    return out


_SWAP = [0, 2, 1, 4, 3, 5]  # the sums with the pair's two sensors swapped: the second becomes the target


def reference_windows(blocks: list[np.ndarray], b0: int, r_values: np.ndarray) -> np.ndarray:
    """The reference windows of each pair (sums, blocks x 6) for each block of rows ``r_values``, twice: with
    the pair's first sensor as the target (pairs.pair_fit's y, sums column 1), then its second;
    (pairs x 2 x blocks of rows, 6, REF_BLOCKS). Their fits are rows of one pairs.pair_fit call, which reduces
    every window on its own: one call for every pair of every device gives each the numbers of its own."""
    if not blocks:
        return np.zeros((0, 6, REF_BLOCKS))
    if len({len(blk) for blk in blocks}) == 1:  # the usual case: every pair since the same block, at once
        sums = np.stack(blocks)
        padded = np.concatenate([np.zeros((len(blocks), REF_BLOCKS, 6)), sums], axis=1)
        starts = np.clip(r_values - b0, 0, sums.shape[1])
        win = sliding_window_view(padded, REF_BLOCKS, axis=1)[:, starts]  # pairs x r x 6 x REF_BLOCKS
        return np.stack([win, win[:, :, _SWAP]], axis=1).reshape(-1, 6, REF_BLOCKS)
    parts = []
    for blk in blocks:
        win = _reference_windows(blk, b0, r_values)
        parts += [win, win[:, _SWAP]]
    return np.concatenate(parts)


def pair_features(
    V: np.ndarray,
    means: np.ndarray,
    pairs: tuple[tuple[int, int], ...],
    fits: tuple[np.ndarray, ...],
    row_block: np.ndarray,
) -> Columns:
    """pair_resid_z, pair_best_z, pair_mean_z and pair_min_mean (rows x sensors) against each sensor's
    partners (``pairs`` of sensor columns), from ``fits``: pairs.pair_fit of :func:`reference_windows` (the
    regressions over the REF_BLOCKS blocks before each block of rows), pairs x 2 x blocks each, and
    ``row_block``, the block of each row. Element by element, so the rows of several devices with the same
    sensor types can be computed at once."""
    shape = V.shape
    out = nan_columns(("pair_resid_z", "pair_best_z", "pair_mean_z", "pair_min_mean"), shape)
    best_ratio, mean_ratio = np.full(shape, np.inf), np.full(shape, np.inf)
    for k, (a, b) in enumerate(pairs):
        for side, (t, p) in enumerate(((a, b), (b, a))):
            fit = _row_fit(_PairFit(*(f[k, side] for f in fits)), row_block)
            _update_mean_deviation(out, mean_ratio, fit, means[:, t], means[:, p], t)
            _update_residual(out, best_ratio, fit, V[:, t], V[:, p], t)
    return out


class _RowFit(NamedTuple):
    """What the features take of a _PairFit, per row (each block's numbers repeated for its rows)."""

    enough: np.ndarray  # the fit has 2 * BLOCK readings
    my: np.ndarray
    mx: np.ndarray
    beta: np.ndarray  # the regression of values: slope,
    scale: np.ndarray  # residual scale,
    ratio: np.ndarray  # unexplained share of the target's variance
    bc: np.ndarray  # block-mean regression: intercept,
    bbeta: np.ndarray  # slope,
    bscale: np.ndarray  # the scale of a ROLL-row mean's deviation,
    bratio: np.ndarray  # unexplained share of the block means' variance


def _row_fit(fit: _PairFit, row_block: np.ndarray) -> _RowFit:
    """The fit's derived numbers per block (a few per device), then gathered for the rows in one take."""
    with np.errstate(invalid="ignore", divide="ignore"):
        res_var = np.maximum(fit.vy - fit.cov * fit.cov / fit.vx, 0.0)
        per_block = _RowFit(
            enough=(fit.n >= 2 * BLOCK).astype(float),
            my=fit.my,
            mx=fit.mx,
            beta=fit.cov / fit.vx,
            scale=np.fmax(np.sqrt(res_var), 0.05 * np.sqrt(np.maximum(fit.vy, 0.0)) + 1e-9),
            ratio=res_var / np.fmax(fit.vy, 1e-300),
            bc=fit.bc,
            bbeta=fit.bbeta,
            # The block means' residual spread plus the noise a ROLL-reading mean keeps.
            bscale=np.sqrt(fit.bres + res_var / ROLL) + 1e-9,
            bratio=fit.bratio,
        )
    rows = np.stack(per_block)[:, row_block]
    return _RowFit(rows[0] > 0, *rows[1:])


def _reference_windows(sums: np.ndarray, b0: int, r_values: np.ndarray) -> np.ndarray:
    """The reference window of each block of rows: the REF_BLOCKS blocks of sums before it (zero sums before
    the first one), as a (r, 6, REF_BLOCKS) array reduced on its last axis, row by row."""
    padded = np.vstack([np.zeros((REF_BLOCKS, 6)), sums])
    starts = np.clip(r_values - b0, 0, len(sums))
    return np.ascontiguousarray(sliding_window_view(padded, REF_BLOCKS, axis=0)[starts])


def _update_mean_deviation(
    out: Columns, mean_ratio: np.ndarray, fit: _RowFit, ym: np.ndarray, xm: np.ndarray, t: int
) -> None:
    """Sensor ``t``'s mean of the last ROLL rows (``ym``) against what its partner's (``xm``) predicts from the
    block-mean regression: pair_mean_z keeps the partner that explains the sensor best, pair_min_mean the
    smallest deviation over the partners that explain most of its movement (an anomaly on one partner breaks
    only the pairs it is in)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        zm = np.where(fit.enough, (ym - fit.bc - fit.bbeta * xm) / fit.bscale, np.nan)
    mean_z, min_z = out["pair_mean_z"], out["pair_min_mean"]
    better = np.isfinite(zm) & (fit.bratio < mean_ratio[:, t])
    mean_z[:, t] = np.where(better, zm, mean_z[:, t])
    mean_ratio[:, t] = np.where(better, fit.bratio, mean_ratio[:, t])
    cur = min_z[:, t]
    take = np.isfinite(zm) & (fit.bratio < GOOD_FIT) & ~(np.abs(cur) <= np.abs(zm))
    min_z[:, t] = np.where(take, zm, cur)


def _update_residual(out: Columns, best_ratio: np.ndarray, fit: _RowFit, y: np.ndarray, x: np.ndarray, t: int) -> None:
    """Sensor ``t``'s value ``y`` against its partner's ``x`` from the regression of values: pair_resid_z keeps
    the largest residual over the partners, pair_best_z the one of the partner that explains it best."""
    resid, best = out["pair_resid_z"], out["pair_best_z"]
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(fit.enough, (y - (fit.my + fit.beta * (x - fit.mx))) / fit.scale, np.nan)
        cur = resid[:, t]
        keep_cur = np.isfinite(cur) & ~(np.abs(z) > np.abs(cur))
        resid[:, t] = np.where(keep_cur, cur, z)
        # The unexplained share of the sensor's variance: the smaller, the better the partner.
        ratio = np.where(np.isfinite(z), fit.ratio, np.inf)
        better = ratio < best_ratio[:, t]
        best[:, t] = np.where(better, z, best[:, t])
        best_ratio[:, t] = np.where(better, ratio, best_ratio[:, t])
