"""``ml train`` of a device-level detector (:mod:`millrace.ml.device`) and what ``--detector auto`` picks.

``auto`` picks from the training readings alone: labelled readings with enough anomalies train the supervised
per-reading detectors (:mod:`millrace.ml.train`, which learn the kinds the labels name); anything else - an
unlabelled recording, a store of real devices - trains a device-level detector calibrated to the target
false-alarm rate, whose own ``auto`` picks the statistic from the rows (:func:`millrace.ml.device.choose`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from millrace.config import Settings
from millrace.errors import DataError
from millrace.ml.device import DEFAULT_TARGET_FAR, DETECTORS, fit_device_model
from millrace.ml.device_readings import device_rows
from millrace.records import NORMAL

MIN_LABELLED_ANOMALIES = 20  # anomalous readings the supervised detectors need to learn from labels


def wants_supervised(readings: pd.DataFrame) -> tuple[bool, str]:
    """(train the supervised per-reading detectors?, why) for ``--detector auto``."""
    truth = readings["ground_truth"] if "ground_truth" in readings else pd.Series(dtype=object)
    anomalous = int((truth.notna() & (truth != NORMAL)).sum())
    if anomalous >= MIN_LABELLED_ANOMALIES:
        return True, f"{anomalous:,} labelled anomalous readings: supervised detectors learn what the labels name"
    return False, (
        f"{anomalous} labelled anomalous readings (< {MIN_LABELLED_ANOMALIES}): a device-level detector learns "
        "normal behaviour from the rows"
    )


def train_device(
    settings: Settings,
    readings: pd.DataFrame,
    *,
    source: str,
    detector: str = "auto",
    target_far: float = DEFAULT_TARGET_FAR,
    seed: int = 0,
    make_promoted: bool = False,
    why: str = "",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fit a device-level detector on the (normal) readings, register it (and promote it); model.json."""
    from millrace.ml.registry import promote, registry_root, save_model

    if detector != "auto" and detector not in DETECTORS:
        raise DataError(f"unknown device-level detector {detector!r}; one of auto, {', '.join(DETECTORS)}")
    say = progress or (lambda _m: None)
    truth = readings["ground_truth"] if "ground_truth" in readings else pd.Series(dtype=object)
    normal = readings[~(truth.notna() & (truth != NORMAL)).to_numpy()] if len(truth) else readings
    rows, sensors = device_rows(normal)
    parts = [g[list(sensors)].to_numpy(dtype=float) for _, g in rows.groupby("device_id", sort=False)]
    V = np.vstack(parts) if parts else np.zeros((0, len(sensors)))  # noqa: N806
    say(f"{len(V):,} device rows of {len(sensors)} sensors from {rows['device_id'].nunique()} device(s)")
    started = time.monotonic()
    try:
        model = fit_device_model(V, sensors, detector=detector, target_far=target_far, seed=seed)
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    fit_s = time.monotonic() - started
    say(f"{model.name}: {model.why}")
    scores = model.score(V)
    alarm_rate = float(np.mean(scores.flag)) if len(V) else 0.0
    info: dict[str, Any] = {
        "detector": model.name,
        "level": "device",
        "why": " ; ".join(w for w in (why, model.why) if w),
        "features": list(sensors),
        "thresholds": {"raw": model.threshold, "score": 1.0},
        "metrics": {
            "validation": {
                "alarm_rate": alarm_rate,
                "target_far": target_far,
                "held_back_rows": model.calibration.held_back,
            },
            "compared": {model.name: {"alarm_rate": alarm_rate, "fit_seconds": round(fit_s, 2)}},
        },
        "training": {
            "source": source,
            "readings": int(np.isfinite(V).sum()),
            "rows": len(V),
            "devices": int(rows["device_id"].nunique()),
            "sensors": list(sensors),
            "seed": seed,
        },
        "importance": sensor_shares(scores.raw, scores.contributions, sensors),
        "model": model.summary(),
    }
    root = registry_root(settings)
    version = save_model(root, model, info)
    if make_promoted:
        promote(root, version)
    return {**info, "version": version}


def sensor_shares(raw: np.ndarray, contributions: np.ndarray, sensors: tuple[str, ...]) -> dict[str, Any]:
    """``ml explain`` for a device-level model: each sensor's share of the statistic on the 1 % highest-scoring
    training rows - the sensors that move when the device looks least normal (no labels needed)."""
    top = raw >= np.quantile(raw, 0.99) if len(raw) else np.zeros(0, dtype=bool)
    positive = np.maximum(contributions[top], 0.0)
    total = positive.sum()
    share = positive.sum(axis=0) / total if total > 0 else np.zeros(len(sensors))
    ranked = dict(sorted(zip(sensors, (round(float(v), 6) for v in share), strict=True), key=lambda kv: -kv[1]))
    return {
        "baseline": {"metric": "share of the statistic, top 1 % of training rows"},
        "sensors": ranked,
        "features": ranked,
    }
