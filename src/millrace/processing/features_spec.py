"""What the per-reading features are (names, window sizes, partner types) and the helpers their families share:
features_sensor (each sensor's own history), features_pair (partner regressions), features_device (the
device's rows and context); features.py puts them together."""

from __future__ import annotations

import numpy as np

from millrace.processing.devreg import HELD_HISTORY
from millrace.processing.steps import LOCAL, STEP, STEP_SPAN

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
TAIL = max(ROLL - 1, HELD_HISTORY)  # device rows of values kept for the next batch

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

Columns = dict[str, np.ndarray]
"""Named feature columns, all of one shape (sensors x readings per sensor, or readings)."""


def nan_columns(names: tuple[str, ...], shape: tuple[int, ...]) -> Columns:
    return {name: np.full(shape, np.nan) for name in names}


def completing_blocks(full: np.ndarray, n0: int) -> np.ndarray | None:
    """The device blocks (blocks x BLOCK rows x sensors) that complete in this batch, or None. ``full``: the
    rows of the open block, then the batch's."""
    j0, j1 = n0 // BLOCK, (n0 + len(full) - n0 % BLOCK) // BLOCK
    if j1 <= j0:
        return None
    return full[: (j1 - j0) * BLOCK].reshape(j1 - j0, BLOCK, full.shape[1])
