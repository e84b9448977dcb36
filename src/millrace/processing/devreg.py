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
    iu, ju = np.triu_indices(ncol + 1)
    acc = a[:, 0, iu] * a[:, 0, ju]
    for t in range(1, rows):
        acc += a[:, t, iu] * a[:, t, ju]
    return acc


def residual_z(values: np.ndarray, grams: np.ndarray, rows: int) -> np.ndarray:
    """Residual of each sensor against all the others for rows ``values`` (n x sensors), from the summed
    Gram triangle ``grams`` of the reference blocks (``rows`` rows in all), in units of the regression's
    residual spread (NaN where a sensor or a value is unknown, or the window too short)."""
    n, ncol = values.shape
    out = np.full((n, ncol), np.nan)
    k = ncol + 1
    G = np.empty((k, k))
    iu, ju = np.triu_indices(k)
    G[iu, ju] = grams
    G[ju, iu] = grams
    if rows <= 0 or not np.isfinite(G).all():
        return out
    mean = G[0, 1:] / rows
    var = np.diag(G)[1:] / rows - mean * mean
    good = np.flatnonzero(var > _SPREAD * (1.0 + mean * mean))
    if len(good) < 2:
        return out
    keep = np.concatenate([[0], good + 1])
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        P = np.linalg.inv(G[np.ix_(keep, keep)])
        a = np.concatenate([np.ones((n, 1)), values[:, good]], axis=1)
        diag = np.diag(P)[1:]
        # Row i of P . a over P_ii is the residual of sensor i regressed on the others (and a constant);
        # 1 / P_ii is its residual sum of squares over the window.
        # Accumulated column by column (no matrix product: BLAS may round differently with the row count).
        dot = a[:, :1] * P[1:, 0][None, :]
        for j in range(1, len(keep)):
            dot = dot + a[:, j : j + 1] * P[1:, j][None, :]
        resid = dot / diag
        spread = np.sqrt(1.0 / (diag * rows))
        z = resid / spread
    out[:, good] = np.where(np.isfinite(z), z, np.nan)
    return out
