"""Thresholds set to a false-alarm rate, and one score scale for every detector.

A detector's raw statistic means nothing across detectors or files (a T² of 40 and an isolation depth of 0.6
cannot be compared). :func:`calibrate` takes the statistic on *held-back* normal rows - rows the detector was
not fitted on, so in-sample over-fit does not make the threshold too low - and models its upper tail:

- below the 90th percentile of the held-back scores, the empirical survival function;
- above it, an exponential tail (peaks over threshold: the excesses over the 90th percentile are taken as
  exponential with their mean). A 1 % false-alarm rate from 500 held-back rows would otherwise rest on the 5
  largest of them; the exponential fit uses the largest 50. Quadratic statistics (T², SPE, squared
  residuals) have tails close to exponential.

The tail probability p of a raw score is then put on one scale, ``score = log(p) / log(target_far)``: 0 for a
typical row, 1.0 exactly at the threshold (p = target_far), 2.0 at p = target_far², whatever the detector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TAIL_FRACTION = 0.10  # the exponential tail starts at the 90th percentile of the held-back scores
MIN_HELD_BACK = 20


@dataclass(frozen=True)
class Calibration:
    """The upper tail of a detector's statistic on held-back normal rows, and the threshold it gives."""

    quantiles: np.ndarray  # the held-back scores' quantiles at QUANTILE_LEVELS (the empirical body)
    tail_start: float  # u: the (1 - TAIL_FRACTION) quantile
    tail_scale: float  # mean excess over u (the exponential tail's scale)
    target_far: float
    threshold: float  # raw statistic whose tail probability is target_far
    held_back: int  # rows the calibration saw

    def tail(self, raw: np.ndarray) -> np.ndarray:
        """P(statistic >= raw) on normal data: the empirical body, then the exponential tail."""
        raw = np.asarray(raw, dtype=float)
        levels = QUANTILE_LEVELS
        # Survival from the interpolated quantile function (monotone in raw).
        body = 1.0 - np.interp(raw, self.quantiles, levels, left=0.0, right=levels[-1])
        excess = np.maximum(raw - self.tail_start, 0.0)
        tail = TAIL_FRACTION * np.exp(-excess / self.tail_scale)
        p = np.where(raw > self.tail_start, tail, body)
        return np.clip(np.nan_to_num(p, nan=1.0), 1e-300, 1.0)

    def score(self, raw: np.ndarray) -> np.ndarray:
        """log(p) / log(target_far): 1.0 at the threshold, on the same scale for every detector."""
        return np.maximum(np.log(self.tail(raw)) / np.log(self.target_far), 0.0)


QUANTILE_LEVELS = np.linspace(0.0, 1.0 - TAIL_FRACTION, 91)


def calibrate(held_back: np.ndarray, target_far: float) -> Calibration:
    """The calibration of a statistic from its values on held-back normal rows (NaN ignored)."""
    if not 0.0 < target_far < 0.5:
        raise ValueError(f"target false-alarm rate must be in (0, 0.5), got {target_far}")
    scores = np.asarray(held_back, dtype=float)
    scores = scores[np.isfinite(scores)]
    if len(scores) < MIN_HELD_BACK:
        raise ValueError(f"{len(scores)} held-back rows are too few to set a threshold (need {MIN_HELD_BACK})")
    quantiles = np.quantile(scores, QUANTILE_LEVELS)
    start = float(quantiles[-1])
    excess = scores[scores > start] - start
    # A tail with no spread (a constant statistic) still needs a positive scale: a hair above the body's.
    spread = float(quantiles[-1] - quantiles[len(quantiles) // 2])
    scale = max(float(excess.mean()) if len(excess) else 0.0, 1e-6 * max(spread, abs(start), 1.0))
    if target_far >= TAIL_FRACTION:
        threshold = float(np.quantile(scores, 1.0 - target_far))
    else:
        threshold = start + scale * np.log(TAIL_FRACTION / target_far)
    return Calibration(quantiles, start, scale, target_far, threshold, len(scores))
