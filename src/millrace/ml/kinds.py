"""Naming the kind of a flagged reading: a classifier trained on the anomalous readings only.

The detector answers "is this reading anomalous?"; the namer answers "which kind, given that it is?". Kept
apart because the two questions want different inputs and different weights:

- inputs: the model inputs plus the jump counters (``jump_age``, ``jump_z``: how long ago the sensor last
  jumped, and by how much). They tell a level shift (jumped once, stays) from a drift or a ramping
  correlation break (never jumped) and a spike (jumped just now, by a lot), but as *detector* inputs they
  raised false alarms (see docs/detection-quality.md), so only the namer sees them;
- weights: the kinds' natural frequencies among anomalous readings. The detector is class-balanced (rare
  kinds must be found at all); naming with balanced weights names far too many readings after a rare kind -
  a level shift's first readings "spike" - which costs that kind its precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_KIND = 20  # labelled readings a kind needs to be named
MAX_ROWS = 60_000  # anomalous readings to fit on (a sample keeps the kinds' proportions)


@dataclass
class KindNamer:
    estimator: Any
    classes: tuple[str, ...]
    bias: np.ndarray | None = None  # per-kind multipliers chosen on validation (tune_bias)

    def proba(self, X: np.ndarray) -> np.ndarray:
        return self.estimator.predict_proba(X)

    def name(self, X: np.ndarray) -> np.ndarray:
        """The kind of each row of the kind matrix (see millrace.processing.scoring.kind_matrix)."""
        if not len(X):
            return np.empty(0, dtype=object)
        p = self.proba(X)
        return np.asarray(self.classes, dtype=object)[(p if self.bias is None else p * self.bias).argmax(axis=1)]


def fit_namer(X: np.ndarray, labels: np.ndarray, *, seed: int, max_rows: int = MAX_ROWS) -> KindNamer | None:
    """A namer for the kinds among ``labels`` (anomalous readings only); None when fewer than two kinds have
    ``MIN_KIND`` readings (then the detector's own naming stays)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    labels = np.asarray(labels, dtype=object)
    kinds, counts = np.unique(labels.astype(str), return_counts=True)
    known = [str(k) for k, c in zip(kinds, counts, strict=True) if c >= MIN_KIND and k != "anomaly"]
    if len(known) < 2:
        return None
    rows = np.flatnonzero(np.isin(labels, known))
    if len(rows) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_rows, replace=False))
    classes = tuple(sorted(known))
    y = np.searchsorted(np.array(classes), labels[rows].astype(str))
    model = HistGradientBoostingClassifier(
        max_iter=200, learning_rate=0.1, max_leaf_nodes=31, early_stopping=True, validation_fraction=0.1,
        random_state=seed, categorical_features=[X.shape[1] - 1],
    )  # fmt: skip
    model.fit(X[rows], y)
    return KindNamer(model, classes)


def tune_bias(
    proba: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], totals: dict[str, int], *,
    grid: np.ndarray | None = None, rounds: int = 3,
) -> tuple[np.ndarray, float]:  # fmt: skip
    """Per-kind multipliers on the kind probabilities of flagged validation readings that maximise the mean
    per-kind F1 (a reading counts for kind k when it is flagged and named k; recall over ``totals[k]``, every
    validation reading of that kind, flagged or not). Coordinate ascent over a small grid, so few readings of a
    kind cannot push its multiplier far. Returns (multipliers, mean F1 with them)."""
    grid = np.geomspace(1 / 8, 8, 13) if grid is None else grid
    bias = np.ones(len(classes))
    scored = [i for i, c in enumerate(classes) if totals.get(c, 0) >= MIN_KIND]
    if not len(proba) or not scored:
        return bias, 0.0
    codes = {c: i for i, c in enumerate(classes)}
    truth = np.array([codes.get(str(x), -1) for x in labels])

    def mean_f1(b: np.ndarray) -> float:
        named = (proba * b).argmax(axis=1)
        out = []
        for i in scored:
            tp = int(((named == i) & (truth == i)).sum())
            n_named = int((named == i).sum())
            p, r = (tp / n_named if n_named else 0.0), tp / totals[classes[i]]
            out.append(2 * p * r / (p + r) if p + r else 0.0)
        return float(np.mean(out))

    best = mean_f1(bias)
    for _ in range(rounds):
        improved = False
        for i in scored:
            for g in grid:
                trial = bias.copy()
                trial[i] = g
                f = mean_f1(trial)
                if f > best + 1e-9:
                    best, bias, improved = f, trial, True
        if not improved:
            break
    return bias, best
