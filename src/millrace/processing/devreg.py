"""A regression of every sensor on all the other sensors of its device (used by :mod:`millrace.processing.features`).

Sensors of one machine move together (with its load, the day, the weather); the pair regressions of
:mod:`millrace.processing.pairs` use one partner each, this one uses them all at once, so what the partners
explain together is taken out of each sensor and a small offset on a sensor that follows the load shows.
The regression of each reference window comes from the cross-product sums (Gram matrix of [1, values]) of
its completed blocks of device rows, accumulated in block order; the residual of each row is in units of
the regression's residual spread. Pure functions of their inputs, so features stay identical however
readings are batched.
"""

from __future__ import annotations

import functools

import numpy as np

MIN_BLOCKS = 10  # reference blocks (with every sensor known) the regression needs
_SPREAD = 1e-6  # a sensor whose values barely move in the window is neither a predictor nor predicted


def gram_size(sensors: int) -> int:
    """Numbers stored per block: the upper triangle of the (sensors + 1)^2 Gram matrix."""
    return (sensors + 1) * (sensors + 2) // 2


def block_grams(seg: np.ndarray) -> np.ndarray:
    """Gram matrices of [1, values] of each block (``seg``: blocks x rows x sensors), their upper triangles
    (blocks x gram_size), summed row by row in order; a block with an unknown value gets NaN."""
    nb, rows, ncol = seg.shape
    a = np.concatenate([np.ones((nb, rows, 1)), seg], axis=2)
    iu, ju = _triangle(ncol + 1)
    # accumulate runs strictly in row order (unlike add.reduce's pairwise sums): its last row is the sum
    return np.add.accumulate(a[:, :, iu] * a[:, :, ju], axis=1)[:, -1]


@functools.cache
def _triangle(k: int) -> tuple[np.ndarray, np.ndarray]:
    """np.triu_indices(k), read-only (shared by every call)."""
    iu, ju = np.triu_indices(k)
    iu.flags.writeable = False
    ju.flags.writeable = False
    return iu, ju


def residual_fit(window: np.ndarray, block_rows: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The regression of each sensor on all the others over the reference blocks ``window`` (their Gram
    triangles, blocks x gram_size, ``block_rows`` rows each): ``(W, spread)``, where row i of W (sensors x
    sensors + 1) weighs [1, values] into sensor i's residual (zeros for the sensors left out, a NaN row for a
    sensor not fitted) and ``spread`` is its residual spread. None when the window cannot be fitted.

    The spread is the median over the blocks of each block's residual mean square, not the pooled one: an
    offset that has lasted a few blocks already inflates the pooled spread enough to hide itself (a level
    shift of 5 noise sigmas over 5 of 30 blocks nearly triples it), while the median block stays normal."""
    ncol = (int(np.sqrt(8 * window.shape[1] + 1)) - 1) // 2 - 1
    k = ncol + 1
    rows = len(window) * block_rows
    grams = window[0].copy()
    for b in range(1, len(window)):  # in block order: the same sums however the rows were batched
        grams += window[b]
    iu, ju = _triangle(k)
    G = np.empty((k, k))
    G[iu, ju] = grams
    G[ju, iu] = grams
    if rows <= 0 or not np.isfinite(G).all():
        return None
    mean = G[0, 1:] / rows
    var = np.diag(G)[1:] / rows - mean * mean
    good = np.flatnonzero(var > _SPREAD * (1.0 + mean * mean))
    if len(good) < 2:
        return None
    keep = np.concatenate([[0], good + 1])
    blocks = np.empty((len(window), k, k))
    blocks[:, iu, ju] = window
    blocks[:, ju, iu] = window
    blocks = blocks[:, keep][:, :, keep]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        P = np.linalg.inv(G[np.ix_(keep, keep)])
        # Row i of P . a over P_ii is the residual of sensor i regressed on the others (and a constant), so
        # Wk = P[1:] / P_ii holds each sensor's residual weights and Wk G_b Wk' its residual sum of squares
        # over block b.
        Wk = P[1:] / np.diag(P)[1:, None]
        # einsum's own loops (optimize=False: no BLAS), over inputs of the same shape for the same window.
        ss = np.einsum("bij,si,sj->bs", blocks, Wk, Wk, optimize=False)
        spread = np.full(ncol, np.nan)
        spread[good] = np.sqrt(np.maximum(np.median(ss, axis=0), 0.0) / block_rows)
    W = np.full((ncol, k), np.nan)
    W[good] = 0.0
    W[np.ix_(good, keep)] = Wk
    return W, spread


def residuals(values: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Residuals (n x len(w)) of rows ``values`` (n x sensors) with the weights ``w`` (rows of W, or one row),
    accumulated over the weighted columns only, in column order (a sensor left out may be unknown)."""
    w = np.atleast_2d(w)
    used = np.flatnonzero(np.any(w != 0.0, axis=0))
    a = np.concatenate([np.ones((len(values), 1)), values], axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        dot = a[:, used[0] : used[0] + 1] * w[:, used[0]][None, :]
        for j in used[1:]:
            dot = dot + a[:, j : j + 1] * w[:, j][None, :]
    return dot


def residual_z(values: np.ndarray, fit: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Residual of each sensor against all the others for rows ``values`` (n x sensors), with a
    :func:`residual_fit` result, in units of the residual spread (NaN where a sensor or a value is unknown)."""
    out = np.full(values.shape, np.nan)
    W, spread = fit
    good = np.flatnonzero(np.isfinite(spread))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = residuals(values, W[good]) / spread[good]
    out[:, good] = np.where(np.isfinite(z), z, np.nan)
    return out


def residual_z_rows(values: np.ndarray, fits: list, fit_of_row: np.ndarray) -> np.ndarray:
    """:func:`residual_z` of each row of ``values`` with the fit ``fits[fit_of_row[row]]`` (NaN where that is
    None), all rows at once when the fits weigh the same columns (the usual case): the same products added in
    the same column order as one :func:`residual_z` call per fit."""
    out = np.full(values.shape, np.nan)
    have = [i for i, fit in enumerate(fits) if fit is not None]
    if not have:
        return out
    weights = np.stack([fits[i][0] for i in have])  # fits x sensors x (sensors + 1); NaN rows: not fitted
    spreads = np.stack([fits[i][1] for i in have])
    # The columns each fit's residuals use (residuals' ``used``, over its fitted sensors).
    used = np.any((weights != 0.0) & np.isfinite(spreads)[:, :, None], axis=1)
    if not (used == used[0]).all():
        for i in have:
            at = fit_of_row == i
            out[at] = residual_z(values[at], fits[i])
        return out
    cols = np.flatnonzero(used[0])
    slot = np.full(len(fits), -1)
    slot[have] = np.arange(len(have))
    rows = np.flatnonzero(slot[fit_of_row] >= 0)
    W, spread = weights[slot[fit_of_row[rows]]], spreads[slot[fit_of_row[rows]]]
    a = np.concatenate([np.ones((len(rows), 1)), values[rows]], axis=1)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        dot = a[:, cols[0], None] * W[:, :, cols[0]]
        for j in cols[1:]:
            dot = dot + a[:, j, None] * W[:, :, j]
        z = dot / spread
    out[rows] = np.where(np.isfinite(z), z, np.nan)
    return out


# The residual against a regression held from the moment a sensor stepped (``held_residual``).
HELD_SPAN = 900  # device rows a held regression is followed (a level shift lasts up to 600, a drift 900)
HELD_MEAN = 30  # device rows the held residual is averaged over
HELD_PRE = 30  # device rows of the level before the step ...
HELD_GAP = 10  # ... ending this many rows before the step is noticed (it shows a few rows late)
HELD_PRE_OK = 6.0  # a step is held only when the level before it was normal (|mean z| below this)
HELD_HISTORY = HELD_PRE + HELD_GAP  # device rows the caller keeps before each batch


def held_residual(
    V: np.ndarray, step: np.ndarray, fits: list, fit_of_row: np.ndarray, held: list, trigger: float
) -> tuple[np.ndarray, list]:
    """The all-sensor residual of each sensor against the regression it had when it last stepped.

    A level shift bends the sliding regression as it enters the reference blocks (it is hidden after a few
    blocks); the regression in force when the sensor stepped by ``trigger`` local noise units does not move.
    From such a step (when the sensor's level before it was normal under that regression) for HELD_SPAN rows:
    the mean held residual of the last HELD_MEAN rows minus the level before the step, in residual-spread
    units times sqrt(HELD_MEAN) (NaN otherwise). A spike or a load step returns to the level, a shift stays.

    ``V``: HELD_HISTORY rows of history then the batch's rows (device rows x sensors); ``step``: step_z per
    batch row and sensor; ``fits``: :func:`residual_fit` results (or None), ``fit_of_row`` indexes them per
    batch row; ``held``: per sensor None or {"w", "sp", "pre", "left"} from the previous batch. Returns the
    feature (batch rows x sensors) and the new ``held``. Sequential in rows, so any batching gives the same.
    """
    nrow, ncol = step.shape
    h = len(V) - nrow
    out = np.full((nrow, ncol), np.nan)
    new: list = []
    stepped = np.abs(np.nan_to_num(step, nan=0.0)) >= trigger
    for i in range(ncol):
        cur = held[i]
        if cur is None and not stepped[:, i].any():  # the usual case: nothing held, no step
            new.append(None)
            continue
        candidates = np.flatnonzero(stepped[:, i])
        t, c = 0, 0
        while t < nrow:
            if cur is not None and cur["left"] > 0:
                n = min(int(cur["left"]), nrow - t)
                w = np.asarray(cur["w"], dtype=float)
                e = residuals(V[h + t - (HELD_MEAN - 1) : h + t + n], w)[:, 0]
                acc = e[:n].copy()
                for j in range(1, HELD_MEAN):  # window sums in row order (batch-independent rounding)
                    acc += e[j : j + n]
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[t : t + n, i] = (acc / HELD_MEAN - cur["pre"]) / cur["sp"] * np.sqrt(HELD_MEAN)
                cur = {**cur, "left": int(cur["left"]) - n}
                t += n
                continue
            while c < len(candidates) and candidates[c] < t:
                c += 1
            if c == len(candidates):
                break
            t = int(candidates[c])
            fit = fits[fit_of_row[t]]
            if fit is not None and np.isfinite(fit[1][i]) and fit[1][i] > 0:
                w, sp = fit[0][i], float(fit[1][i])
                e = residuals(V[h + t - HELD_HISTORY : h + t - HELD_GAP], w)[:, 0]
                pre = float(e[0])
                for j in range(1, HELD_PRE):
                    pre += float(e[j])
                pre /= HELD_PRE
                if np.isfinite(pre) and abs(pre) / sp * np.sqrt(HELD_PRE) <= HELD_PRE_OK:
                    cur = {"w": w.tolist(), "sp": sp, "pre": pre, "left": HELD_SPAN}
                    continue
            t += 1
        new.append(cur if cur is not None and cur["left"] > 0 else None)
    return out, new
