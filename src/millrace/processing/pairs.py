"""Regressions of a sensor on its partner over the reference blocks (used by :mod:`millrace.processing.features`).

Inputs are per-block sums (n, a, b, a^2, b^2, ab) of the last ``REF_BLOCKS`` completed blocks of a sensor
pair, one reference window per row group; outputs are the regression's moments and a block-mean regression.
Pure functions of their inputs, so features stay identical however readings are batched.
"""

from __future__ import annotations

import numpy as np

_MAD_TO_STD = 1.4826

ADMIT_PASSES = 1  # fit, leave out the outlying blocks, refit (a second pass measured worse on validation)
GOOD_FIT = 0.5  # a partner "explains" a sensor when it leaves at most this share of the block means' variance
PAIR_MEAN_BLOCKS = 10  # reference blocks the block-mean regression needs
PAIR_ADMIT = 4.0  # a reference block enters the pair regression when its mean residual is within this many
# robust spreads of the blocks' mean residuals: an anomaly in the reference window must not teach the regression


_FIT_CACHE: dict[tuple[bytes, int, int], tuple[np.ndarray, ...]] = {}
_FIT_CACHE_SIZE = 4096  # entries (a few reference windows per call: streaming micro-batches)
_FIT_CACHE_WINDOWS = 4  # calls with more reference windows (training's long batches) are not cached


def pair_fit(win: np.ndarray, iy: int, ix: int) -> tuple[np.ndarray, ...]:
    """:func:`_pair_fit`, remembered per process for small inputs. The reference window changes only when a
    block completes (every BLOCK readings), so a stream's micro-batches refit the same window many times; the
    result is a pure function of ``win``, so the numbers are the same either way."""
    if win.shape[0] > _FIT_CACHE_WINDOWS:
        return _pair_fit(win, iy, ix)
    key = (np.ascontiguousarray(win).tobytes() + bytes(str(win.shape), "ascii"), iy, ix)
    hit = _FIT_CACHE.get(key)
    if hit is None:
        if len(_FIT_CACHE) >= _FIT_CACHE_SIZE:
            _FIT_CACHE.pop(next(iter(_FIT_CACHE)))  # the oldest entry
        hit = _FIT_CACHE[key] = _pair_fit(win, iy, ix)
    return hit


def _pair_fit(win: np.ndarray, iy: int, ix: int) -> tuple[np.ndarray, ...]:
    """Regression of y on x over each reference window of block sums ``win`` (r x 6 x blocks; sums n, a, b,
    a^2, b^2, ab; y is a when ``iy`` is 0, else b): n, mean y, mean x, var y, var x, cov of the blocks
    admitted, then the block-mean regression of :func:`_block_fit` over them. Admission: a block-mean fit
    on every block gives each block's mean residual; the blocks whose mean residual lies more than
    PAIR_ADMIT robust spreads (1.4826 MAD; at least half the median within-block residual RMS) from the
    median are left out and the fit is redone (ADMIT_PASSES times) - unless that would leave fewer than half
    of the blocks: a real change of regime is followed once it fills half the window."""
    nb = win[:, 0]
    sy, sx = win[:, 1 + iy], win[:, 1 + ix]
    syy, sxx, sxy = win[:, 3 + iy], win[:, 3 + ix], win[:, 5]

    def fit(w: np.ndarray) -> tuple[np.ndarray, ...]:
        n = (nb * w).sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            my, mx = (sy * w).sum(axis=-1) / n, (sx * w).sum(axis=-1) / n
            vy = (syy * w).sum(axis=-1) / n - my * my
            vx = (sxx * w).sum(axis=-1) / n - mx * mx
            cov = (sxy * w).sum(axis=-1) / n - my * mx
        return n, my, mx, vy, vx, cov

    used = (nb > 0).astype(float)
    w = used
    for _ in range(ADMIT_PASSES):
        c, beta, _, _ = _block_fit(nb, sy, sx, w, need=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            b = beta[:, None]
            su = sy - b * sx  # per block: sum of u = y - beta x, and of u^2
            mean_u = su / nb
            mean_r = np.where(nb > 0, mean_u - c[:, None], np.nan)
            within = np.where(nb > 0, (syy - 2 * b * sxy + b * b * sxx) / nb - mean_u * mean_u, np.nan)
        ok = np.isfinite(mean_r).any(axis=-1)
        typical, center, spread = (np.full(len(nb), np.nan) for _ in range(3))
        typical[ok] = nanmedian(within[ok])
        center[ok] = nanmedian(mean_r[ok])
        dev = np.abs(mean_r - center[:, None])
        spread[ok] = _MAD_TO_STD * nanmedian(dev[ok])
        limit = np.fmax(PAIR_ADMIT * spread, 0.5 * np.sqrt(np.maximum(typical, 0.0)))
        admit = used * (dev <= limit[:, None])
        enough = admit.sum(axis=-1) * 2 >= used.sum(axis=-1)
        w = np.where(enough[:, None], admit, used)
    return (*fit(w), *_block_fit(nb, sy, sx, w))


def nanmedian(a: np.ndarray) -> np.ndarray:
    """np.nanmedian(a, axis=-1) of a 2-D array, the same numbers (the mean of the two middle order statistics
    of the non-NaN values; NaN for a row without any), by one sort: numpy takes a masked-array path for short
    rows that costs a hundred times more per call, and this runs for every pair of every device per batch."""
    srt = np.sort(a, axis=-1)  # NaN last
    count = np.count_nonzero(~np.isnan(a), axis=-1)
    high = count // 2
    low = np.where(count % 2 == 1, high, high - 1)
    last = a.shape[-1] - 1
    lo = np.take_along_axis(srt, np.clip(low, 0, last)[:, None], axis=-1)[:, 0]
    hi = np.take_along_axis(srt, np.clip(high, 0, last)[:, None], axis=-1)[:, 0]
    return np.where(count > 0, (lo + hi) / 2.0, np.nan)


def _block_fit(nb: np.ndarray, sy: np.ndarray, sx: np.ndarray, w: np.ndarray, need: int = 0) -> tuple[np.ndarray, ...]:
    """Regression of the block means of y on those of x over the admitted blocks (weights ``w``), each block
    counting once: averaging removes the partner's noise, which would otherwise flatten the slope. Returns
    intercept, slope, the variance of the block-mean residuals and the unexplained share of the block
    means' variance (infinite with fewer than ``need`` blocks, default PAIR_MEAN_BLOCKS)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        w = w * (nb > 0)
        k = w.sum(axis=-1)
        ym, xm = np.where(nb > 0, sy / nb, 0.0), np.where(nb > 0, sx / nb, 0.0)
        my, mx = (ym * w).sum(axis=-1) / k, (xm * w).sum(axis=-1) / k
        dy, dx = (ym - my[:, None]) * w, (xm - mx[:, None]) * w
        vy, vx, cov = (dy * dy).sum(axis=-1) / k, (dx * dx).sum(axis=-1) / k, (dy * dx).sum(axis=-1) / k
        beta = np.where(vx > 0, cov / vx, 0.0)
        res = np.maximum(vy - beta * cov, 0.0)
        c = my - beta * mx
        ratio = np.where(k >= (need or PAIR_MEAN_BLOCKS), res / np.fmax(vy, 1e-300), np.inf)
    return c, beta, res, ratio
