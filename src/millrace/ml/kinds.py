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

from millrace.ml.detectors import fit_ready

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
        max_iter=200,
        learning_rate=0.1,
        max_leaf_nodes=31,
        early_stopping=True,
        validation_fraction=0.1,
        random_state=seed,
        categorical_features=[X.shape[1] - 1],
    )
    model.fit(fit_ready(X[rows]), y)
    return KindNamer(model, classes)


def tune_bias(
    proba: np.ndarray,
    labels: np.ndarray,
    classes: tuple[str, ...],
    totals: dict[str, int],
    *,
    grid: np.ndarray | None = None,
    rounds: int = 3,
    weight: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Per-kind multipliers on the kind probabilities of flagged validation readings that maximise the mean
    per-kind F1 (a reading counts for kind k when it is flagged and named k; recall over ``totals[k]``, every
    validation reading of that kind, flagged or not; ``weight``: readings each row stands for). Coordinate
    ascent over a small grid, so few readings of a kind cannot push its multiplier far. Returns (multipliers,
    mean F1 with them)."""
    grid = np.geomspace(1 / 8, 8, 13) if grid is None else grid
    bias = np.ones(len(classes))
    scored = [i for i, c in enumerate(classes) if totals.get(c, 0) >= MIN_KIND]
    if not len(proba) or not scored:
        return bias, 0.0

    truth = _codes(labels, classes)  # once: the string comparison is most of a trial's cost
    w = None if weight is None else np.asarray(weight, dtype=float)

    def mean_f1(named: np.ndarray) -> float:
        return float(np.mean(list(_named_f1s(named, truth, classes, totals, w).values())))

    best = mean_f1((proba * bias).argmax(axis=1))
    for _ in range(rounds):
        improved = False
        for i in scored:
            # Trials move only kind i's multiplier: the best of the other kinds is computed once, and a trial's
            # naming is argmax(proba * trial) exactly (ties to the lower index, as argmax breaks them).
            others = proba * bias
            others[:, i] = -np.inf
            other_kind = others.argmax(axis=1)
            other_best = others[np.arange(len(others)), other_kind]
            for g in grid:
                mine = proba[:, i] * g
                wins = (mine > other_best) | ((mine == other_best) & (i < other_kind))
                f = mean_f1(np.where(wins, i, other_kind))
                if f > best + 1e-9:
                    best, bias, improved = f, bias.copy(), True
                    bias[i] = g
        if not improved:
            break
    return bias, best


def kind_f1s(
    proba: np.ndarray,
    labels: np.ndarray,
    classes: tuple[str, ...],
    totals: dict[str, int],
    bias: np.ndarray | None = None,
    weight: np.ndarray | None = None,
) -> dict[str, float]:
    """Per-kind F1 of naming flagged readings by ``argmax(proba * bias)``, for the kinds with ``MIN_KIND``
    readings in ``totals`` (every validation reading of the kind, flagged or not). ``labels`` may be given
    as their indices in ``classes`` already (an int array: what tune_bias does once, not per trial)."""
    named = (proba if bias is None else proba * bias).argmax(axis=1) if len(proba) else np.zeros(0, dtype=int)
    labels = np.asarray(labels)
    truth = labels if labels.dtype.kind in "iu" else _codes(labels, classes)
    return _named_f1s(named, truth, classes, totals, None if weight is None else np.asarray(weight, dtype=float))


def _named_f1s(
    named: np.ndarray,
    truth: np.ndarray,
    classes: tuple[str, ...],
    totals: dict[str, int],
    w: np.ndarray | None,
) -> dict[str, float]:
    """kind_f1s of readings named ``named`` whose labels are ``truth`` (both indices into ``classes``)."""
    n = len(classes)
    # One weighted count of (named, truth) pairs; truth -1 (a label outside classes) counts as named only.
    pairs = np.bincount(named * (n + 1) + (truth + 1), weights=w, minlength=n * (n + 1)).reshape(n, n + 1)
    out: dict[str, float] = {}
    for i, kind in enumerate(classes):
        if totals.get(kind, 0) < MIN_KIND:
            continue
        tp = float(pairs[i, i + 1])
        n_named = float(pairs[i].sum())
        p, r = (tp / n_named if n_named else 0.0), tp / totals[kind]
        out[kind] = 2 * p * r / (p + r) if p + r else 0.0
    return out


def _codes(labels: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    """Index of each label in ``classes``, -1 when absent (vectorised)."""
    labs = np.asarray(labels, dtype=object).astype(str)
    order = np.argsort(np.asarray(classes, dtype=str))
    ranked = np.asarray(classes, dtype=str)[order]
    pos = np.clip(np.searchsorted(ranked, labs), 0, len(ranked) - 1)
    return np.where(ranked[pos] == labs, order[pos], -1)
