"""Steps in a sensor's values, in units of its local noise (used by :mod:`millrace.processing.features`).

The local noise comes from the last ``LOCAL`` consecutive differences (mean |difference| x sqrt(pi) / 2 for
independent noise): a sensor that follows the load or the day moves slowly, so its differences - unlike the
spread of its values in a reference block - stay at the noise. A *step* is the mean of the last ``STEP``
values minus the mean of the ``STEP`` values before them. A level shift steps once and keeps the level; a
spike steps and returns; a drift never steps. Every sum runs over a whole window in a fixed order, so the
numbers do not depend on how readings are batched.
"""

from __future__ import annotations

from typing import Any

import numpy as np

STEP = 5  # values averaged on each side of a step
STEP_SPAN = 60  # readings searched for the largest step
LOCAL = 119  # consecutive differences in the local noise
SHIFT_STEP = 6.0  # |step_z| from which a step is remembered beyond the span (a shift)
_ABS_DIFF_TO_STD = float(np.sqrt(np.pi) / 2.0)  # E|a - b| = 2 sigma / sqrt(pi) for independent noise
_STEP_SE = float(np.sqrt(2.0 / STEP))  # noise std of a difference of two means of STEP values


def tiny(level: np.ndarray | float) -> np.ndarray:
    """The smallest scale a feature divides by at this level (a constant sensor has zero spread)."""
    return 1e-9 + 1e-6 * np.abs(level)


def weighted_sum(x: np.ndarray, start: int, k: int, weights: np.ndarray) -> np.ndarray:
    """sum_j weights[j] * x[:, start + i + j] for i < k, accumulated in j order (the same numbers for any
    chunking), without a k x len(weights) temporary."""
    if (weights == weights[0]).all():
        # One weight: each value's product is the same in every window, so it is computed once.
        xw = x[:, start : start + k + len(weights) - 1] * weights[0]
        acc = xw[:, :k].copy()
        for j in range(1, len(weights)):
            acc += xw[:, j : j + k]
        return acc
    acc = x[:, start : start + k] * weights[0]
    tmp = np.empty_like(acc)
    for j in range(1, len(weights)):
        np.multiply(x[:, start + j : start + j + k], weights[j], out=tmp)
        acc += tmp
    return acc


def step_features(x: np.ndarray, pos0: int, m: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Features of the m readings at positions pos0 .. pos0 + m - 1 of the sensors' histories ``x`` (S rows,
    time along the row); a reading needs LOCAL + 1 values before it (NaN without them). Returns the features
    ``step_z``, ``step_max_z``, ``step_age``, ``step_level_z`` (S x m each) and, for :func:`shift_features`,
    per reading: ``now`` (mean of its last STEP values), ``before`` (mean of the STEP values ending 2 * STEP
    readings earlier) and ``local`` (the local noise)."""
    S = x.shape[0]
    names = ("step_z", "step_max_z", "step_age", "step_level_z", "now", "before", "local")
    full = {name: np.full((S, m), np.nan) for name in names}
    need = LOCAL + 1
    first = max(0, need - pos0)
    if first < m:
        k = m - first
        p0 = pos0 + first
        # Local noise of reading p from |x[q] - x[q - 1]|, q = p - LOCAL .. p - 1 (the reading itself excluded).
        d = np.abs(np.diff(x[:, p0 - need : p0 + k - 1], axis=1))  # d[:, j]: q = p0 - LOCAL + j
        local = weighted_sum(d, 0, k, np.full(LOCAL, 1.0 / LOCAL)) * _ABS_DIFF_TO_STD
        local = np.fmax(local, tiny(x[:, p0 : p0 + k]))
        # Means of STEP values ending at q = p0 - span .. p0 + k - 1 (span: the oldest step's "before" mean).
        span = STEP_SPAN - 1 + STEP
        means = weighted_sum(x, p0 - span - STEP + 1, k + span, np.full(STEP, 1.0 / STEP))
        steps = means[:, STEP:] - means[:, :-STEP]  # steps[:, u]: q = p0 - STEP_SPAN + 1 + u
        arg = _largest_in_span(np.abs(steps), k)
        rows = np.arange(k)[None, :] + arg
        top = np.take_along_axis(steps, rows, axis=1)
        before_top = np.take_along_axis(means, rows, axis=1)  # the mean of the STEP values before that step
        values = {
            "step_z": steps[:, STEP_SPAN - 1 :] / (local * _STEP_SE),
            "step_max_z": top / (local * _STEP_SE),
            "step_age": (STEP_SPAN - 1 - arg).astype(float),
            "step_level_z": (means[:, span:] - before_top) / local * np.sign(top),
            "now": means[:, span:],
            "before": means[:, span - 2 * STEP : span - 2 * STEP + k],
            "local": local,
        }
        for name, value in values.items():
            full[name][:, first:] = value
    features = {name: full[name] for name in names[:4]}
    levels = {name: full[name] for name in names[4:]}
    return features, levels


def _largest_in_span(size: np.ndarray, k: int) -> np.ndarray:
    """For i < k, the offset j < STEP_SPAN of the largest size[:, i + j], the oldest (smallest j) on ties."""
    if np.isnan(size).any():  # NaN never wins a comparison: scan in order, as the definition reads
        return _largest_in_span_scan(size, k)
    # "The newer one only when strictly larger" is associative and idempotent, so the span is covered by two
    # overlapping power-of-two windows, each built by doubling: a few passes instead of one per offset.
    val, at = size, np.broadcast_to(np.arange(size.shape[1]), size.shape)
    width = 1
    while 2 * width <= STEP_SPAN:
        newer = val[:, width:] > val[:, :-width]
        val = np.where(newer, val[:, width:], val[:, :-width])
        at = np.where(newer, at[:, width:], at[:, :-width])
        width *= 2
    late = STEP_SPAN - width  # the second window starts here
    newer = val[:, late : late + k] > val[:, :k]
    return np.where(newer, at[:, late : late + k], at[:, :k]) - np.arange(k)


def _largest_in_span_scan(size: np.ndarray, k: int) -> np.ndarray:
    best = size[:, :k].copy()
    arg = np.zeros(best.shape, dtype=np.intp)
    newer = np.empty(best.shape, dtype=bool)
    for j in range(1, STEP_SPAN):
        cand = size[:, j : j + k]
        np.greater(cand, best, out=newer)
        np.copyto(best, cand, where=newer)
        np.copyto(arg, j, where=newer)
    return arg


def shift_features(
    step_z: np.ndarray, levels: dict[str, np.ndarray], states: list[dict[str, Any]], cap: float
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """``shift_age`` and ``shift_level_z`` (S x m) of readings whose step_z and levels :func:`step_features`
    gave, carried across batches in the sensors' ``states`` (keys ``sage``, ``sbefore``, ``ssign``; absent:
    no shift yet). Both are NaN while the shift is within the last STEP_SPAN readings. Also returns each
    sensor's new state keys."""
    S, m = step_z.shape
    idx = np.broadcast_to(np.arange(m), (S, m))
    shift = np.abs(np.nan_to_num(step_z, nan=0.0)) >= SHIFT_STEP
    last_shift = np.maximum.accumulate(np.where(shift, idx, -1), axis=1)
    at = np.maximum(last_shift, 0)
    fresh = last_shift >= 0
    carried_age = np.array([st.get("sage", cap) for st in states], dtype=float)[:, None]
    carried_before = np.array([np.nan if st.get("sbefore") is None else st["sbefore"] for st in states], dtype=float)[
        :, None
    ]
    carried_sign = np.array([st.get("ssign", 0.0) for st in states], dtype=float)[:, None]
    before = np.where(fresh, np.take_along_axis(levels["before"], at, axis=1), carried_before)
    sign = np.where(fresh, np.sign(np.take_along_axis(step_z, at, axis=1)), carried_sign)
    age = np.minimum(np.where(fresh, idx - last_shift, carried_age + idx + 1), cap)
    with np.errstate(invalid="ignore"):
        level = np.where(sign != 0, (levels["now"] - before) / levels["local"] * sign, np.nan)
    recent = age < STEP_SPAN  # the step features still see that step: shift_* are unknown (NaN)
    last = [
        {"sage": a, "sbefore": None if np.isnan(b) else b, "ssign": g}
        for a, b, g in zip(age[:, -1].tolist(), before[:, -1].tolist(), sign[:, -1].tolist(), strict=True)
    ]
    return np.where(recent, np.nan, age), np.where(recent, np.nan, level), last
