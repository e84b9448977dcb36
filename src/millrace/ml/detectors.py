"""Detectors the trainer compares. Each is a picklable :class:`Detector` that turns the model matrix (see
:func:`millrace.processing.scoring.model_matrix`) into an anomaly score (higher = more anomalous) and, when it
was trained with kinds, a kind per reading.

- ``robust_z``: no fitting; the largest per-reading deviation feature (the statistical baseline);
- ``isolation_forest``: scikit-learn IsolationForest on normal (or unlabelled) readings;
- ``mahalanobis``: per sensor type, the robust Mahalanobis distance of the reading's feature vector - which
  includes the device context, so the whole device is seen at once - from normal behaviour;
- ``gradient_boosting``: supervised, only when the training data carry labels. Two
  HistGradientBoostingClassifiers fitted on the same class-balanced rows: a binary *gate* (anomalous or not)
  gives the score, P(anomalous); a multi-class model over normal + anomaly kinds names the kind (most probable
  anomaly kind) of the readings the gate flags. Scoring every reading costs one tree per boosting round
  instead of one per class (8 here); the kinds cost the multi-class trees on the few flagged readings only.
  Models saved before the gate existed score with 1 - P(normal) of the multi-class model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Inputs the unsupervised detectors leave out: counters that are no Gaussian-like "distance from normal", and
# the partner-conditioned deviations and the all-sensor residual, which need 10 reference blocks and so are
# unknown (0 in the unsupervised view) through much of a short fitting period - a detector fitted on the first
# rows of a file then alarms on them later (`ml evaluate --train-rows`: false alarms 3.6 % instead of < 2 %).
SUPERVISED_ONLY = (
    "jump_age", "jump_z", "pair_best_z", "pair_best_mean", "pair_mean_z", "pair_min_mean", "dev_resid_mean",
    "held_resid_z",
)  # fmt: skip
MIN_CLASS = 20  # readings a kind needs to be learnt as a class of its own
GATE_ROUNDS = 50  # boosting rounds (trees) of the binary gate, at most
KIND_L2 = 1.0  # L2 regularisation of the kind model's leaf values (see fit_kind_model)
DEVIATION_FEATURES = ("robust_z", "diff_z", "short_ref_z", "trend_z", "pair_resid_mean")


@dataclass
class Detector:
    name: str
    features: tuple[str, ...]
    estimator: Any = None
    classes: tuple[str, ...] | None = None  # supervised: label of each probability column
    threshold: float = 1.0  # raw score at or above which a reading is anomalous
    center: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per feature, on normal readings
    spread: np.ndarray = field(default_factory=lambda: np.ones(0))
    weights: np.ndarray = field(default_factory=lambda: np.ones(0))  # importance, for top features
    namer: Any = None  # a millrace.ml.kinds.KindNamer naming flagged readings (labelled training only)
    kind_bias: np.ndarray | None = None  # supervised: per-class multipliers for naming, chosen on validation
    gate: Any = None  # supervised: the binary anomalous-or-not model that gives the score
    # supervised: the kind model's inputs when they are not ``features`` (a wider matrix: see kind_index)
    kind_features: tuple[str, ...] | None = None

    def raw(
        self, X: np.ndarray, kind_rows: Callable[[np.ndarray], np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(score, kind index into ``classes`` or None) for the model matrix X (NaN = unknown). With a gate the
        kind index is meaningful only where ``score / threshold >= 1`` (elsewhere: the "normal" class).
        ``kind_rows(rows)`` gives the kind model's matrix of those rows when it has ``kind_features``."""
        if self.name != "gradient_boosting":
            return self.score(X), None
        assert self.classes is not None
        normal = self.classes.index("normal")
        if getattr(self, "gate", None) is None:  # a model saved before gates: one multi-class pass
            proba = self.estimator.predict_proba(X)
            return 1.0 - proba[:, normal], self.kind_index_from(proba)
        score = self.score(X)
        kind = np.full(len(X), normal, dtype=np.intp)
        flagged = np.flatnonzero(score / self.threshold >= 1.0)  # exactly the Scorer's test
        if len(flagged):
            if getattr(self, "kind_features", None):  # models saved before kind_features name from X
                if kind_rows is None:
                    raise ValueError("this model names kinds from its kind_features: pass kind_rows")
                kind[flagged] = self.kind_index(kind_rows(flagged))
            else:
                kind[flagged] = self.kind_index(X[flagged])
        return score, kind

    def kind_index(self, X: np.ndarray) -> np.ndarray:
        """Supervised: the most probable anomaly kind of each row (index into ``classes``) of the kind model's
        matrix (``kind_features`` columns; the model matrix when that is None)."""
        return self.kind_index_from(self.estimator.predict_proba(X)) if len(X) else np.zeros(0, dtype=np.intp)

    def kind_index_from(self, proba: np.ndarray) -> np.ndarray:
        assert self.classes is not None
        bias = getattr(self, "kind_bias", None)  # models saved before kind_bias have none
        anomalous = proba * bias if bias is not None else proba.copy()
        anomalous[:, self.classes.index("normal")] = -1.0
        return anomalous.argmax(axis=1)

    def score(self, X: np.ndarray) -> np.ndarray:
        """The anomaly score alone (higher = more anomalous): what thresholds and importance need."""
        if self.name == "robust_z":
            cols = [self.features.index(f) for f in DEVIATION_FEATURES]
            return np.nan_to_num(np.abs(X[:, cols]), nan=0.0).max(axis=1)
        if self.name == "gradient_boosting":
            gate = getattr(self, "gate", None)
            if gate is not None:
                return gate.predict_proba(X)[:, 1]
            assert self.classes is not None
            return 1.0 - self.estimator.predict_proba(X)[:, self.classes.index("normal")]
        Xf = _unsupervised_view(X, self.features)
        if self.name == "isolation_forest":
            return -self.estimator.score_samples(Xf)
        if self.name == "mahalanobis":
            types = Xf[:, -1].astype(int)
            out = np.zeros(len(Xf))
            for code, (mu, prec) in self.estimator.items():
                sel = types == code
                if sel.any():
                    d = Xf[sel, :-1] - mu
                    out[sel] = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, prec, d), 0.0))
            return out
        raise ValueError(f"unknown detector {self.name}")


def _unsupervised_view(X: np.ndarray, features: tuple[str, ...]) -> np.ndarray:
    keep = [i for i, f in enumerate(features) if f not in SUPERVISED_ONLY]
    return np.nan_to_num(X[:, keep], nan=0.0)


def fit_isolation_forest(X: np.ndarray, features: tuple[str, ...], seed: int) -> Detector:
    from sklearn.ensemble import IsolationForest

    model = IsolationForest(n_estimators=100, max_samples=512, random_state=seed, n_jobs=1)
    model.fit(_unsupervised_view(X, features))
    return Detector("isolation_forest", features, model)


def fit_mahalanobis(X: np.ndarray, features: tuple[str, ...], seed: int) -> Detector:
    """Per sensor type: median and covariance of the feature vectors winsorised at their 0.5/99.5 percentiles
    (robust to the few anomalies an unlabelled training set holds, and fast)."""
    Xf = _unsupervised_view(X, features)
    types = Xf[:, -1].astype(int)
    params: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    rng = np.random.default_rng(seed)
    for code in np.unique(types):
        rows = Xf[types == code, :-1]
        if len(rows) > 50_000:
            rows = rows[rng.choice(len(rows), 50_000, replace=False)]
        lo, hi = np.percentile(rows, [0.5, 99.5], axis=0)
        clipped = np.clip(rows, lo, hi)
        cov = np.cov(clipped, rowvar=False) + np.eye(rows.shape[1]) * 1e-6
        params[int(code)] = (np.median(rows, axis=0), np.linalg.pinv(cov))
    return Detector("mahalanobis", features, params)


def fit_gradient_boosting(
    X: np.ndarray,
    labels: np.ndarray,
    features: tuple[str, ...],
    seed: int,
    kinds: tuple[np.ndarray, tuple[str, ...]] | None = None,
) -> Detector:
    """The supervised detector: the gate and the kind model (training fits the two in separate workers).
    ``kinds``: the kind model's own (matrix, feature names), same rows as X; default: X and ``features``."""
    det = fit_gate(X, labels, features, seed)
    K, names = kinds if kinds is not None else (X, features)
    det.estimator = fit_kind_model(K, labels, names, seed)
    det.kind_features = names if kinds is not None else None
    return det


def fit_gate(X: np.ndarray, labels: np.ndarray, features: tuple[str, ...], seed: int) -> Detector:
    """The supervised detector without its kind model (``estimator`` None until fit_kind_model's is set)."""
    X, y, classes, weight = _supervised_rows(X, labels)
    # The gate scores every reading, so its cost is the scoring speed: half the rounds at twice the rate
    # (validation F1 0.862 vs 0.865 with 100 rounds at 0.1, at ~1.5x the readings per second; see
    # docs/anomaly-model.md).
    gate = _boosting(features, seed, rounds=GATE_ROUNDS, learning_rate=0.2)
    gate.fit(X, (y != classes.index("normal")).astype(np.int8), sample_weight=weight)
    return Detector("gradient_boosting", features, None, classes=classes, gate=gate)


def fit_kind_model(X: np.ndarray, labels: np.ndarray, features: tuple[str, ...], seed: int) -> Any:
    """The multi-class model over normal + each anomaly kind (classes as fit_gate gives them)."""
    X, y, _, weight = _supervised_rows(X, labels)
    # L2 on the leaf values: with class weights up to 50 a leaf of confidently mis-predicted rows has a
    # near-zero hessian, and without it one such leaf could blow the model up mid-fit (validation log-loss
    # 0.12 -> 12 in one round on one of four sampling seeds; early stopping keeps the rounds up to there).
    model = _boosting(features, seed, rounds=100, learning_rate=0.1, l2=KIND_L2)
    model.fit(X, y, sample_weight=weight)
    return model


def fit_ready(X: np.ndarray) -> np.ndarray:
    """``X`` with every column that holds no known value set to 0: the boosting's binning needs a value, and
    a feature that is never known in a short training set (one that needs an hour of history, or a step to
    happen) must not stop the fit. A constant column is never split on; NaN at scoring goes with the most
    readings, as for any feature the fit saw no NaN of."""
    unknown = ~np.isfinite(X).any(axis=0) if len(X) else np.zeros(X.shape[1], dtype=bool)
    if not unknown.any():
        return X
    X = X.copy()
    X[:, unknown] = 0.0
    return X


def _supervised_rows(X: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], np.ndarray]:
    """(X, class index per row, classes, class-balanced sample weights): kinds with fewer than MIN_CLASS
    readings become "anomaly" (dropped when that is still too few)."""
    labels = np.asarray(labels, dtype=object).copy()
    kinds, counts = np.unique(labels, return_counts=True)
    rare = {k for k, c in zip(kinds, counts, strict=True) if c < MIN_CLASS and k != "normal"}
    labels[np.isin(labels, list(rare))] = "anomaly"  # too few to learn as a kind of its own
    if 0 < (labels == "anomaly").sum() < MIN_CLASS:
        X, labels = X[labels != "anomaly"], labels[labels != "anomaly"]
    X = fit_ready(X)
    classes = tuple(sorted(set(labels.tolist())))
    y = np.searchsorted(np.array(classes), labels)
    # Balance: every anomaly kind weighs as much in total as a tenth of the normal readings.
    counts = np.bincount(y, minlength=len(classes)).astype(float)
    normal = classes.index("normal")
    target = counts[normal] / 10.0
    class_weight = np.where(np.arange(len(classes)) == normal, 1.0, target / np.maximum(counts, 1.0))
    class_weight = np.clip(class_weight, 1.0, 50.0)
    return X, y, classes, class_weight[y]


def _boosting(features: tuple[str, ...], seed: int, *, rounds: int, learning_rate: float, l2: float = 0.0) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        max_iter=rounds,
        learning_rate=learning_rate,
        max_leaf_nodes=31,
        early_stopping=True,
        validation_fraction=0.1,
        random_state=seed,
        categorical_features=[len(features) - 1],
        l2_regularization=l2,
    )


def robust_z_detector(features: tuple[str, ...]) -> Detector:
    return Detector("robust_z", features)
