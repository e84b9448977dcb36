"""Training: featurize readings with the stream job's feature code, fit several detectors, keep the best by a
validation metric, record it in the registry with thresholds, metrics, importance and a training summary.

Validation is a time split (the last ``validation_fraction`` of the period), so the detector is judged on a
period it has not seen. With labels the threshold maximises F1 at a false-alarm rate <= 1 % and the best
detector has the highest validation F1; without labels the threshold is the 99.9th percentile of the scores of
the training period and the multivariate ``mahalanobis`` detector is kept (no metric can rank them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from millrace.config import ProcessingSettings, Settings
from millrace.errors import DataError, missing_extra
from millrace.ml import detectors as D
from millrace.ml.explain import permutation_importance
from millrace.ml.kinds import MAX_ROWS as NAMER_MAX_ROWS
from millrace.ml.kinds import KindNamer, fit_namer, kind_f1s, tune_bias
from millrace.ml.metrics import best_threshold, binary_metrics, per_kind
from millrace.ml.parallel import features_by_device, run_tasks
from millrace.ml.registry import promote, registry_root, save_model
from millrace.processing.scoring import KIND_EXTRA, KIND_FEATURES, MODEL_FEATURES, kind_matrix, model_matrix
from millrace.records import GROUND_TRUTH_FIELD, NORMAL

log = logging.getLogger(__name__)

DETECTORS: tuple[str, ...] = ("robust_z", "isolation_forest", "mahalanobis", "gradient_boosting")
UNLABELLED_CHOICE = "mahalanobis"
MAX_FALSE_ALARM = 0.01
MIN_VALIDATION_ANOMALIES = 50  # labelled anomalous readings in the validation period below which training warns
UNLABELLED_QUANTILE = 0.999
MAX_KIND_LOSS = 0.1  # a naming may lose a kind at most this much validation F1 against the detector's own
# Per-kind multipliers are chosen only when they win by more than this (cross-fitted mean kind F1): in two
# trainings they won by 0.003 and lost by 0.002 - a spike class of ~36 validation readings decides such
# margins - while the development set named better without them both times (mean kind F1 0.012 and 0.015).
BIAS_MARGIN = 0.01
MAX_KIND_FIT_ROWS = 12_000  # readings of one anomaly kind the supervised detector is fitted on, at most
# Normal readings the kind model is fitted on, at most (of the gate's): it names flagged readings only. On the
# detection-quality benchmark's validation 50,000 instead of 100,000 gave mean kind F1 0.846 vs 0.831, in 71 %
# of the fitting time (20,000: 0.836).
KIND_NORMAL_ROWS = 50_000
PARALLEL_FIT_ROWS = 300_000  # sampled rows from which fitting in worker processes pays off
_SLOWEST_FIRST = ("gradient_boosting", "isolation_forest", "mahalanobis", "robust_z")
_FEATURE_INPUTS = ("sensor_id", "device_id", "sensor_type", "location", "timestamp", "value", "interpolated")


def featurize(readings: pd.DataFrame, processing: ProcessingSettings, *, workers: int | None = None) -> pd.DataFrame:
    """Features for a long frame of readings (columns as read_table/simulate_frame give them); large frames
    are featurized on ``workers`` processes (default: every usable core), devices split among them."""
    if readings.empty:
        raise DataError("no readings to learn from")
    # Only what features, labels and outputs use: fewer (string) columns to carry through sorts and copies.
    keep = [c for c in (*_FEATURE_INPUTS, GROUND_TRUTH_FIELD, "row") if c in readings.columns]
    frame = readings[keep].copy()
    if "interpolated" not in frame:
        frame["interpolated"] = False
    if "location" not in frame:
        frame["location"] = ""
    frame["device_id"] = frame["device_id"].fillna(frame["sensor_id"])
    return features_by_device(frame, processing, workers=workers)


def labels_of(features: pd.DataFrame) -> np.ndarray | None:
    """Per-reading labels ("normal" or a kind / "anomaly"), or None when the data carry none."""
    if GROUND_TRUTH_FIELD not in features or features[GROUND_TRUTH_FIELD].isna().all():
        return None
    return features[GROUND_TRUTH_FIELD].fillna(NORMAL).astype(str).to_numpy(dtype=object)


def _fit(name: str, X: np.ndarray, labels: np.ndarray | None, seed: int) -> D.Detector:
    features = MODEL_FEATURES
    if name == "robust_z":
        return D.robust_z_detector(features)
    if name == "isolation_forest":
        return D.fit_isolation_forest(X, features, seed)
    if name == "mahalanobis":
        return D.fit_mahalanobis(X, features, seed)
    if name == "gradient_boosting":  # the gate; its kind model is fitted beside it (fit_kind_model)
        assert labels is not None
        return D.fit_gate(X, labels, features, seed)
    raise DataError(f"unknown detector {name!r}; known: {', '.join(DETECTORS)}")


def fit_unsupervised(X: np.ndarray, name: str = UNLABELLED_CHOICE, *, seed: int = 0) -> D.Detector:
    """A detector fitted on (presumed) normal readings, thresholded at the 99.9th percentile of their scores.
    Used by ``ml evaluate --train-rows/--train-file``."""
    mature = np.isfinite(X).all(axis=1)
    if mature.sum() >= 200:  # features with their full history; early rows would blur "normal"
        X = X[mature]
    det = _fit(name, X, None, seed)
    raw = det.score(X)
    det.threshold = max(float(np.quantile(raw, UNLABELLED_QUANTILE)), 1e-9)
    _describe_normal(det, X)
    return det


def validation_cutoffs(devices: np.ndarray, ts: np.ndarray, warm: np.ndarray, q: float) -> np.ndarray:
    """Per row, its device's time before which it is fitted on (the ``q`` quantile of the device's warm
    timestamps): validation is the end of *each* device's readings, so data sets of different periods (files
    of other days, fleets simulated at other anomaly rates) all have a validation part."""
    codes, uniques = pd.factorize(devices)
    per_device = np.full(len(uniques), np.inf)
    frame = pd.DataFrame({"code": codes[warm], "ts": ts[warm]})
    quantiles = frame.groupby("code")["ts"].quantile(q)
    per_device[quantiles.index.to_numpy()] = quantiles.to_numpy()
    return per_device[codes]


def _describe_normal(det: D.Detector, X: np.ndarray) -> None:
    Xf = np.nan_to_num(X, nan=0.0)
    det.center = np.median(Xf, axis=0)
    q75, q25 = np.percentile(Xf, [75, 25], axis=0)
    det.spread = np.maximum((q75 - q25) / 1.349, 1e-6)
    det.weights = np.ones(X.shape[1])


def _sample(rows: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(rows, limit, replace=False)) if len(rows) > limit else rows


def _per_kind_sample(rows: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """At most ``MAX_KIND_FIT_ROWS`` rows of each kind (the supervised fit's cost grows with its rows; the
    class weights rebalance the kinds anyway)."""
    kinds = labels[rows].astype(str)
    return [_sample(rows[kinds == k], MAX_KIND_FIT_ROWS, rng) for k in np.unique(kinds)]


def _validation_sample(
    rows: np.ndarray, truth: np.ndarray | None, limit: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """At most ``limit`` validation rows and the readings each stands for. Every anomalous row is kept (up to
    half the limit) and normal rows fill the rest, weighted by the inverse of their sampled share: rare kinds
    keep all their readings for the choices made on validation (a uniform sample of a day left 11 of a few
    dozen spike readings), and the weighted counts estimate the whole period's."""
    if len(rows) <= limit:
        return rows, np.ones(len(rows))
    if truth is None:
        kept = _sample(rows, limit, rng)
        return kept, np.full(len(kept), len(rows) / len(kept))
    bad, good = rows[truth[rows]], rows[~truth[rows]]
    bad_kept = _sample(bad, limit // 2, rng)
    good_kept = _sample(good, limit - len(bad_kept), rng)
    kept = np.concatenate([bad_kept, good_kept])
    weight = np.concatenate(
        [
            np.full(len(bad_kept), len(bad) / max(len(bad_kept), 1)),
            np.full(len(good_kept), len(good) / max(len(good_kept), 1)),
        ]
    )
    order = np.argsort(kept, kind="stable")
    return kept[order], weight[order]


def train(
    settings: Settings,
    readings: pd.DataFrame,
    *,
    source: str,
    detectors: Sequence[str] | None = None,
    seed: int = 0,
    validation_fraction: float = 0.3,
    max_fit_rows: int = 100_000,
    max_validation_rows: int = 400_000,
    make_promoted: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fit, compare, register (and optionally promote) a detector; returns the registered model.json."""
    try:
        import sklearn  # noqa: F401
    except ModuleNotFoundError as exc:
        raise missing_extra("scikit-learn", "ml") from exc
    from threadpoolctl import threadpool_limits

    # One native thread per fit: on a shared machine OpenMP teams spinning at barriers cost far more than
    # they gain (measured: a 2-device training went from minutes to seconds of wall time).
    with threadpool_limits(limits=1):
        return _train(
            settings,
            readings,
            source=source,
            detectors=detectors,
            seed=seed,
            validation_fraction=validation_fraction,
            max_fit_rows=max_fit_rows,
            max_validation_rows=max_validation_rows,
            make_promoted=make_promoted,
            progress=progress,
        )


def _train(
    settings: Settings,
    readings: pd.DataFrame,
    *,
    source: str,
    detectors: Sequence[str] | None,
    seed: int,
    validation_fraction: float,
    max_fit_rows: int,
    max_validation_rows: int,
    make_promoted: bool,
    progress: Callable[[str], None] | None,
) -> dict[str, Any]:
    say = progress or (lambda _msg: None)
    started = time.monotonic()
    rng = np.random.default_rng(seed)
    feats = featurize(readings, settings.processing)
    say(f"features for {len(feats):,} readings in {time.monotonic() - started:.1f} s")
    labels = labels_of(feats)
    names = list(detectors or DETECTORS)
    if labels is None:
        names = [n for n in names if n != "gradient_boosting"]
    ts = feats["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    warm = np.isfinite(feats["robust_z"].to_numpy(dtype=float))
    if warm.sum() < 100:
        raise DataError(f"too few readings after warm-up to train on ({int(warm.sum())}); give more data")
    cutoff = validation_cutoffs(feats["device_id"].to_numpy(), ts, warm, 1.0 - validation_fraction)
    fit_rows = np.flatnonzero(warm & (ts < cutoff))
    truth = None if labels is None else labels != NORMAL
    val_rows, val_weight = _validation_sample(
        np.flatnonzero(warm & (ts >= cutoff)), truth, max_validation_rows, np.random.default_rng(seed + 1)
    )
    normal_fit = fit_rows if truth is None else fit_rows[~truth[fit_rows]]
    unsup_rows = _sample(normal_fit, max_fit_rows, rng)
    supervised_rows = kind_rows = None
    if truth is not None and labels is not None and "gradient_boosting" in names:
        per_kind_rows = _per_kind_sample(fit_rows[truth[fit_rows]], labels, rng)
        supervised_normal = _sample(normal_fit, max_fit_rows, rng)
        supervised_rows = np.sort(np.concatenate([supervised_normal, *per_kind_rows]))
        kind_rows = np.sort(np.concatenate([_sample(supervised_normal, KIND_NORMAL_ROWS, rng), *per_kind_rows]))
    # The model matrix of the sampled rows only (a day of a fleet is millions of rows; we fit on a sample).
    # The kind namer fits on a sample of the anomalous readings (the kinds' proportions kept), so only those
    # need a model matrix: with dense anomalies, all of them would be most of it.
    anomalous_fit = fit_rows[truth[fit_rows]] if truth is not None else fit_rows[:0]
    anomalous_fit = _sample(anomalous_fit, NAMER_MAX_ROWS, rng)
    needed = np.unique(
        np.concatenate([unsup_rows, val_rows, anomalous_fit, *([] if supervised_rows is None else [supervised_rows])])
    )
    matrix = model_matrix(feats[[*MODEL_FEATURES[:-1], "sensor_type"]].take(needed))  # only the columns it reads

    def X_of(rows: np.ndarray) -> np.ndarray:  # noqa: N802 - the model matrix of these feature rows
        return matrix[np.searchsorted(needed, rows)]

    kinds_matrix = kind_matrix(feats[list(KIND_EXTRA)].take(needed), matrix) if labels is not None else matrix

    def K_of(rows: np.ndarray) -> np.ndarray:  # noqa: N802 - the kind models' matrix of these feature rows
        return kinds_matrix[np.searchsorted(needed, rows)]

    say(f"model matrix of {len(needed):,} sampled readings; {len(val_rows):,} validate")
    if truth is not None:
        val_anomalies = int(truth[np.flatnonzero(warm & (ts >= cutoff))].sum())
        if val_anomalies < MIN_VALIDATION_ANOMALIES:
            say(
                f"warning: the validation period (the last {validation_fraction:.0%}) holds {val_anomalies} anomalous "
                "readings: too few to compare detectors or set thresholds well; give more hours or more anomalies"
            )

    def fit_one(name: str) -> tuple[D.Detector, dict[str, Any], np.ndarray]:
        t0 = time.monotonic()
        if name == "gradient_boosting":
            assert labels is not None and supervised_rows is not None
            det = _fit(name, X_of(supervised_rows), labels[supervised_rows], seed)
        else:
            det = _fit(name, X_of(unsup_rows), None, seed)
        X_val = X_of(val_rows)
        raw_val = det.score(X_val)
        if truth is not None:
            det.threshold = max(
                best_threshold(raw_val, truth[val_rows], max_false_alarm=MAX_FALSE_ALARM, weight=val_weight), 1e-9
            )
            flag = raw_val >= det.threshold
            metrics = binary_metrics(truth[val_rows], flag, val_weight)
            # Recall per kind; the supervised detector's kind precision/F1 come once its kind model is in.
            metrics["per_kind"] = per_kind(labels[val_rows], flag, None, val_weight)  # type: ignore[index]
        else:
            raw_fit = det.score(X_of(unsup_rows))
            det.threshold = max(float(np.quantile(raw_fit, UNLABELLED_QUANTILE)), 1e-9)
            metrics = {"alarm_rate": float(np.mean(raw_val >= det.threshold)), "readings": len(val_rows)}
        metrics["fit_seconds"] = round(time.monotonic() - t0, 2)
        return det, metrics, raw_val

    def fit_kind_model() -> tuple[Any, float]:
        t0 = time.monotonic()
        assert labels is not None and kind_rows is not None
        model = D.fit_kind_model(K_of(kind_rows), labels[kind_rows], KIND_FEATURES, seed)
        return model, time.monotonic() - t0

    def fit_kinds() -> tuple[KindNamer | None, float]:
        t0 = time.monotonic()
        assert labels is not None
        return fit_namer(K_of(anomalous_fit), labels[anomalous_fit], seed=seed), time.monotonic() - t0

    # Independent fits, the slowest first, on every core for large inputs (the same models either way): the
    # supervised kind model, the detectors (the supervised one is its gate), the kind namer.
    supervised = supervised_rows is not None
    tasks: list[Callable[[], Any]] = [
        *([fit_kind_model] if supervised else []),
        *(partial(fit_one, n) for n in sorted(names, key=_SLOWEST_FIRST.index)),
        *([fit_kinds] if labels is not None else []),
    ]
    outputs = run_tasks(tasks, workers=None if len(needed) >= PARALLEL_FIT_ROWS else 1)
    kind_model = outputs.pop(0) if supervised else None
    namer_fit = outputs.pop() if labels is not None else None
    results: dict[str, dict[str, Any]] = {}
    fitted: dict[str, D.Detector] = {}
    raw_of: dict[str, np.ndarray] = {}
    kind_proba: np.ndarray | None = None  # the kind model's probabilities of the flagged validation readings
    by_name = {out[0].name: out for out in outputs}
    for name in names:  # in the order asked for
        fitted[name], results[name], raw_of[name] = by_name[name]
        metrics = results[name]
        if name == "gradient_boosting" and kind_model is not None:
            assert labels is not None
            kind_proba = _attach_kind_model(
                fitted[name], metrics, kind_model, labels[val_rows], K_of(val_rows), raw_of[name], val_weight
            )
        say(
            f"{name}: "
            + (f"F1 {metrics['f1']:.3f}" if "f1" in metrics else f"alarms {metrics['alarm_rate']:.2%}")
            + f" ({metrics['fit_seconds']:.0f} s)"
        )

    best = (
        max(names, key=lambda n: results[n]["f1"])
        if truth is not None
        else (UNLABELLED_CHOICE if UNLABELLED_CHOICE in names else names[0])
    )
    det = fitted[best]
    _describe_normal(det, X_of(unsup_rows))
    if truth is not None and labels is not None:
        assert namer_fit is not None
        _choose_naming(
            det,
            results[best],
            namer_fit,
            labels,
            K_of,
            val_rows,
            val_weight,
            raw_of[best],
            len(anomalous_fit),
            kind_proba if best == "gradient_boosting" else None,
        )
        say(f"kinds named by: {results[best].get('naming', {}).get('chosen', 'the detector')}")
    # Importance on a validation sample rich in anomalies.
    val_truth = None if truth is None else truth[val_rows]
    pick = (
        val_rows
        if val_truth is None
        else np.concatenate([_sample(val_rows[val_truth], 4000, rng), _sample(val_rows[~val_truth], 8000, rng)])
    )
    pick = _sample(pick, 12000, rng)
    importance = permutation_importance(det, X_of(pick), None if truth is None else truth[pick], seed=seed)
    weights = np.array([importance["features"].get(f, 0.0) for f in MODEL_FEATURES])
    det.weights = 0.05 + weights / (weights.max() if weights.max() > 0 else 1.0)
    say(f"kept {best}; importance computed")

    info = {
        "detector": best,
        "metrics": {"validation": results[best], "compared": results},
        "thresholds": {"score": 1.0, "raw": det.threshold, "max_false_alarm": MAX_FALSE_ALARM},
        "features": list(MODEL_FEATURES),
        "importance": importance,
        "training": summarize(
            feats,
            labels,
            source=source,
            seconds=time.monotonic() - started,
            fit_rows=len(fit_rows),
            validation_rows=len(val_rows),
        ),
    }
    root = registry_root(settings)
    version = save_model(root, det, info)
    if make_promoted:
        promote(root, version)
    from millrace.ml.registry import load_info

    return load_info(root, version)


def _attach_kind_model(
    det: D.Detector,
    metrics: dict[str, Any],
    kind_model: tuple[Any, float],
    val_labels: np.ndarray,
    K_val: np.ndarray,
    raw_val: np.ndarray,
    val_weight: np.ndarray,
) -> np.ndarray:
    """Give the supervised detector its kind model (on the kind matrix, KIND_FEATURES) and its validation kind
    precision/F1 (flagged readings named by the kind model, as the Scorer names them). Returns the kind model's
    probabilities of the flagged validation readings (the naming choice needs them again)."""
    assert det.classes is not None
    det.estimator, seconds = kind_model
    det.kind_features = KIND_FEATURES
    flag = raw_val >= det.threshold
    proba = det.estimator.predict_proba(K_val[flag]) if flag.any() else np.zeros((0, len(det.classes)))
    kinds = np.full(len(flag), None, dtype=object)
    kinds[flag] = np.asarray(det.classes, dtype=object)[det.kind_index_from(proba)]
    metrics["per_kind"] = per_kind(val_labels, flag, kinds, val_weight)
    metrics["kind_model_seconds"] = round(seconds, 2)
    metrics["kind_model_rounds"] = int(getattr(det.estimator, "n_iter_", 0))  # < 100: early stopping ended it
    metrics["fit_seconds"] = round(metrics["fit_seconds"] + seconds, 2)  # the gate's and the kind model's
    return proba


def _kind_totals(labels: np.ndarray, weight: np.ndarray) -> dict[str, int]:
    """Readings of each anomaly kind (weighted: the readings each row stands for)."""
    anomalous = labels != NORMAL
    kinds, inverse = np.unique(labels[anomalous].astype(str), return_inverse=True)
    counts = np.bincount(inverse, weights=weight[anomalous], minlength=len(kinds))
    return {str(k): round(c) for k, c in zip(kinds, counts, strict=True)}


def _cross_fitted(
    p: np.ndarray,
    labels: np.ndarray,
    classes: tuple[str, ...],
    weight: np.ndarray,
    folds: list[np.ndarray],
    fold_totals: list[dict[str, int]],
    rounds: int,
) -> float:
    """Mean per-kind F1 of a naming on each half of the flagged validation readings, with multipliers tuned on
    the other half (none when ``rounds`` is 0), averaged over the halves (kinds too rare in a half skipped)."""
    scores = []
    for k, part in enumerate(folds):
        other = folds[1 - k]
        bias, _ = tune_bias(p[other], labels[other], classes, fold_totals[1 - k], rounds=rounds, weight=weight[other])
        f1s = kind_f1s(p[part], labels[part], classes, fold_totals[k], bias, weight[part])
        if f1s:
            scores.append(float(np.mean(list(f1s.values()))))
    return float(np.mean(scores)) if scores else 0.0


def pick_naming(scores: dict[str, float]) -> str:
    """The naming with the best score, where one with multipliers ("...+bias") must win by BIAS_MARGIN."""
    return max(scores, key=lambda k: scores[k] - BIAS_MARGIN * k.count("+"))


def _choose_naming(
    det: D.Detector,
    metrics: dict[str, Any],
    namer_fit: tuple[KindNamer | None, float],
    labels: np.ndarray,
    K_of: Callable[[np.ndarray], np.ndarray],
    val_rows: np.ndarray,
    val_weight: np.ndarray,
    raw: np.ndarray,
    rows: int,
    kind_proba: np.ndarray | None = None,
) -> None:
    """How flagged readings get their kind, chosen on validation by the mean per-kind F1: the supervised
    detector's own classes or the kind namer, each as fitted or with per-kind multipliers (tune_bias). Sets
    ``det.namer`` / ``det.kind_bias``; re-measures per-kind validation numbers (the detector's own stay as
    ``per_kind_detector``). ``kind_proba``: the detector's kind-model probabilities of the flagged validation
    readings, when already computed."""
    namer, seconds = namer_fit
    flag = raw >= det.threshold
    flagged = val_rows[flag]
    w_flagged = val_weight[flag]
    val_labels = labels[val_rows]
    totals = _kind_totals(val_labels, val_weight)
    options: dict[str, tuple[float, np.ndarray | None]] = {}
    per_kind_f1: dict[str, dict[str, float]] = {}
    candidates: list[tuple[str, np.ndarray, tuple[str, ...]]] = []
    if det.name == "gradient_boosting" and det.classes is not None:
        kind_proba = det.estimator.predict_proba(K_of(flagged)) if kind_proba is None else kind_proba
        p = kind_proba.copy()
        p[:, det.classes.index(NORMAL)] = 0.0
        candidates.append(("detector", p, det.classes))
    if namer is not None:
        candidates.append(("namer", namer.proba(K_of(flagged)), namer.classes))
    # Two halves of the validation period (rows come in time order), for judging the multipliers on
    # readings they were not tuned on.
    half = val_rows[len(val_rows) // 2] if len(val_rows) else 0
    folds = [flagged < half, flagged >= half]
    fold_totals = [_kind_totals(val_labels[part], val_weight[part]) for part in (val_rows < half, val_rows >= half)]
    cross: dict[str, float] = {}
    for name, p, classes in candidates:
        for label, rounds in ((name, 0), (f"{name}+bias", 3)):
            bias, f1 = tune_bias(p, labels[flagged], classes, totals, rounds=rounds, weight=w_flagged)
            options[label] = (f1, None if rounds == 0 else bias)
            per_kind_f1[label] = kind_f1s(p, labels[flagged], classes, totals, bias, w_flagged)
            cross[label] = _cross_fitted(p, labels[flagged], classes, w_flagged, folds, fold_totals, rounds)
    if not options:
        return
    # The best mean per-kind F1 among namings that lose no kind more than MAX_KIND_LOSS against the
    # detector's own naming (a better mean must not come from giving up a kind); multipliers must win by
    # BIAS_MARGIN.
    # Ranked cross-fitted: multipliers tuned on one half of validation, scored on the other, and the other
    # way round - tuned and scored on the same readings they look better than they name new data.
    base = per_kind_f1.get("detector", {})
    fair = [o for o in options if all(per_kind_f1[o].get(k, 0.0) >= f - MAX_KIND_LOSS for k, f in base.items())]
    chosen = pick_naming({k: cross.get(k, options[k][0]) for k in fair or ["detector"]})
    chosen_bias = options[chosen][1]
    det.namer = namer if chosen.startswith("namer") else None
    if det.namer is not None:
        det.namer.bias = chosen_bias
    else:
        det.kind_bias = chosen_bias
    if det.namer is not None:
        named = det.namer.name(K_of(flagged))
    else:
        assert det.classes is not None
        index = det.kind_index_from(kind_proba) if kind_proba is not None else det.kind_index(K_of(flagged))
        named = np.asarray(det.classes, dtype=object)[index]
    kinds = np.full(len(val_rows), None, dtype=object)
    kinds[flag] = named
    metrics["per_kind_detector"] = metrics.get("per_kind")
    metrics["per_kind"] = per_kind(val_labels, flag, kinds, val_weight)
    classes = (det.namer.classes if det.namer is not None else det.classes) or ()
    metrics["naming"] = {
        "chosen": chosen,
        "mean_kind_f1": {k: round(v[0], 4) for k, v in options.items()},
        "cross_fitted_mean_kind_f1": {k: round(v, 4) for k, v in cross.items()},
        "kind_f1": {o: {k: round(f, 4) for k, f in v.items()} for o, v in per_kind_f1.items()},
        "bias": None if chosen_bias is None else dict(zip(classes, np.round(chosen_bias, 3).tolist(), strict=True)),
        "namer_rows": rows,
        "namer_seconds": round(seconds, 2),
        "namer_classes": None if namer is None else list(namer.classes),
    }


def summarize(
    feats: pd.DataFrame,
    labels: np.ndarray | None,
    *,
    source: str,
    seconds: float,
    fit_rows: int,
    validation_rows: int,
) -> dict[str, Any]:
    counts = {} if labels is None else pd.Series(labels).value_counts().to_dict()
    return {
        "source": source,
        "readings": len(feats),
        "sensors": int(feats["sensor_id"].nunique()),
        "devices": int(feats["device_id"].nunique()),
        "sensor_types": sorted(feats["sensor_type"].dropna().unique().tolist()),
        "start": str(feats["timestamp"].min()),
        "end": str(feats["timestamp"].max()),
        "labelled": labels is not None,
        "labels": {str(k): int(v) for k, v in counts.items()},
        "fit_rows": fit_rows,
        "validation_rows": validation_rows,
        "seconds": round(seconds, 1),
    }
