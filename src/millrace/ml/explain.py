"""Which sensors and features predict anomalies: permutation importance of a fitted detector.

Per feature: shuffle that feature across readings and measure how much the detector's average precision
drops (with labels), or how much its scores move (without). Per sensor type: shuffle the readings of that
sensor type among themselves - all their features at once - which removes what that sensor tells the
detector about its own anomalies and, through the device context, about its neighbours'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from millrace.processing.scoring import MODEL_FEATURES, TYPE_CODES


def _quality(det: Any, X: np.ndarray, truth: np.ndarray | None, reference: np.ndarray) -> float:
    raw = det.score(X)
    if truth is not None and truth.any():
        from sklearn.metrics import average_precision_score

        return float(average_precision_score(truth, raw))
    # Unlabelled: agreement with the unshuffled scores (1 = unchanged).
    return float(1.0 - np.mean(np.abs(raw - reference)) / (np.mean(np.abs(reference)) + 1e-12))


def permutation_importance(
    det: Any, X: np.ndarray, truth: np.ndarray | None, *, seed: int = 0, repeats: int = 1
) -> dict[str, Any]:
    """{"features": {name: drop}, "sensors": {sensor_type: drop}}, largest first; drops below 0 are 0."""
    rng = np.random.default_rng(seed)
    reference = det.score(X)
    base = _quality(det, X, truth, reference)
    features: dict[str, float] = {}
    for j, name in enumerate(MODEL_FEATURES):
        if name == "type_code":
            continue
        drops = []
        for _ in range(repeats):
            shuffled = X.copy()
            shuffled[:, j] = X[rng.permutation(len(X)), j]
            drops.append(base - _quality(det, shuffled, truth, reference))
        features[name] = max(0.0, float(np.mean(drops)))
    sensors: dict[str, float] = {}
    types = X[:, -1].astype(int)
    for name, code in TYPE_CODES.items():
        rows = np.flatnonzero(types == code)
        if len(rows) < 2:
            continue
        drops = []
        for _ in range(repeats):
            shuffled = X.copy()
            shuffled[rows] = X[rows[rng.permutation(len(rows))]]
            drops.append(base - _quality(det, shuffled, truth, reference))
        sensors[name] = max(0.0, float(np.mean(drops)))
    return {
        "features": dict(sorted(features.items(), key=lambda kv: -kv[1])),
        "sensors": dict(sorted(sensors.items(), key=lambda kv: -kv[1])),
        "baseline": {"metric": "average_precision" if truth is not None else "score_agreement", "value": base},
    }


def plot_importance(importance: dict[str, Any], path: Path, *, title: str = "") -> Path:
    """A PNG with two horizontal bar charts: per sensor type and per feature."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key in zip(axes, ("sensors", "features"), strict=True):
        items = list(importance.get(key, {}).items())[::-1]
        ax.barh([k for k, _ in items], [v for _, v in items], color="#2b6cb0")
        ax.set_title(f"importance per {key[:-1]}")
        ax.set_xlabel("drop in " + importance.get("baseline", {}).get("metric", "quality"))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
