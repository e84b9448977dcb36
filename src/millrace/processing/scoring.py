"""Anomaly scoring of featured readings: rules, statistics, kind heuristics and the promoted model.

The same :class:`Scorer` serves the stream job, ``ml evaluate`` and the notebook, so what evaluation reports
is what the live job does. Vectorised: per-row Python work happens only for flagged readings (reason, top
features).

Without a model a reading is anomalous when it is out of its physical range (settings.processing.ranges), or
when a deviation feature passes its threshold (robust z > processing.zscore_threshold, ...). With a promoted
model, out-of-range still applies and the model decides the rest; its kind comes from the model when it was
trained on kinds, otherwise from the heuristics, otherwise "model".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from millrace.config import ProcessingSettings
from millrace.processing.features import SHORT
from millrace.records import SENSOR_TYPES

# Model inputs: scale-free features only (raw values and rolling means are in sensor units), and the type.
MODEL_FEATURES: tuple[str, ...] = (
    "z", "robust_z", "diff_z", "ref_z", "short_ref_z", "trend_z", "noise_ratio", "stuck_run", "dt_s",
    "dev_max_abs_z", "dev_mean_abs_z", "pair_resid_z", "pair_resid_mean", "mid_ref_z", "trend_long_z",
    "pair_best_z", "pair_best_mean", "pair_mean_z", "pair_min_mean", "dev_resid_mean", "held_resid_z",
    "type_code",
)  # fmt: skip
# The kind models' inputs (the supervised detector's kind model and millrace.ml.kinds): the model inputs plus the
# jump and step counters, type last. The step features tell level shifts, drifts and spikes apart, so they name
# kinds; as detector inputs they made the gate worse. The partner-conditioned deviations (pair_best_*,
# pair_mean_z, pair_min_mean) are detector inputs. The measurements: docs/anomaly-model.md.
KIND_EXTRA: tuple[str, ...] = (
    "jump_age", "jump_z", "step_z", "step_max_z", "step_age", "step_level_z", "shift_age", "shift_level_z",
)  # fmt: skip
KIND_FEATURES: tuple[str, ...] = (*MODEL_FEATURES[:-1], *KIND_EXTRA, "type_code")
TYPE_CODES = {t: i for i, t in enumerate(SENSOR_TYPES)}
SCORE_COLUMNS = ("score", "is_anomaly", "anomaly_kind", "reason", "top_features")
# The kinds the rules tell apart, one per heuristic component (an object array: picking from it makes no strings).
HEURISTIC_KINDS = np.array(["spike", "level_shift", "drift", "stuck", "noise_burst", "correlation_break"], dtype=object)

# Heuristic rules: (kind, feature, threshold as a multiple of zscore_threshold or absolute)
STUCK_RUN = 20  # identical consecutive readings of a noisy sensor
NOISE_RATIO = 3.5
SHIFT_FRACTION = 0.75  # |short_ref_z| > SHIFT_FRACTION * zscore_threshold
TREND_FRACTION = 0.75
PAIR_FRACTION = 0.75


def model_matrix(features: pd.DataFrame, names: tuple[str, ...] = MODEL_FEATURES) -> np.ndarray:
    """The detector input: the feature columns ``names`` (default MODEL_FEATURES; a saved model scores with
    the list it was trained on), "type_code" last, as floats (NaN = not yet known)."""
    if not len(features):
        return np.zeros((0, len(names)))
    out = np.empty((len(features), len(names)))
    out[:, :-1] = features[list(names[:-1])].to_numpy(dtype=float)  # one block copy, not one per column
    codes, kinds = pd.factorize(features["sensor_type"], use_na_sentinel=False)  # no string copy of the column
    out[:, -1] = np.array([TYPE_CODES.get(k, len(SENSOR_TYPES)) for k in kinds], dtype=float)[codes]
    return out


def kind_matrix(features: pd.DataFrame, X: np.ndarray | None = None) -> np.ndarray:
    """The kind namer's input: KIND_FEATURES as float columns; ``X`` = model_matrix(features) if known."""
    X = model_matrix(features) if X is None else X
    extra = features[list(KIND_EXTRA)].to_numpy(dtype=float) if len(features) else np.zeros((0, len(KIND_EXTRA)))
    return np.column_stack([X[:, :-1], extra, X[:, -1:]])


_RULE_INPUTS = ("value", "stuck_run", "roll_std", "robust_z", "short_ref_z", "ref_z", "trend_z", "noise_ratio",
                "pair_resid_mean")  # fmt: skip


# Where a scorer gets its model from, asked before every call: (version, detector), or None for rules only.
# millrace.ml.follow.PromotedModel follows the promoted model of the registry (the stream job's scorer).
ModelSource = Callable[[], tuple[str, Any] | None]


class Scorer:
    """Scores featured readings. ``detector`` fixes one model (evaluation); ``model_source`` is asked for the
    current model before every call (and once here), so a scorer built by :func:`millrace.ml.follow.load_scorer`
    scores the first batch after ``ml promote`` returns with the new model. Neither: rules only."""

    def __init__(
        self, processing: ProcessingSettings, *, detector: Any = None, model_source: ModelSource | None = None
    ) -> None:
        self.processing = processing
        self.detector = detector
        self.version: str | None = None
        self.model_source = model_source
        low = {t: r.low for t, r in processing.ranges.items()}
        high = {t: r.high for t, r in processing.ranges.items()}
        self._low, self._high = low, high
        self._follow()

    def _follow(self) -> None:
        if self.model_source is not None:
            self.version, self.detector = self.model_source() or (None, None)

    # ------------------------------------------------------------------ scoring
    def score(self, features: pd.DataFrame, history: dict[str, Any] | None = None) -> pd.DataFrame:
        """``features`` as returned by device_step / frame_features; returns it with SCORE_COLUMNS added.
        ``history``: per device, the past rows a device-level model needs (the stream job keeps it in its state;
        updated here); per-reading models ignore it."""
        self._follow()
        if getattr(self.detector, "level", None) == "device":
            added = self.detector.score_readings(features, {} if history is None else history)
            kept = features.drop(columns=[c for c in SCORE_COLUMNS if c in features.columns])
            return pd.concat([kept, added], axis=1)
        n = len(features)
        if n == 0:
            out = features.copy()
            for name, dtype in zip(SCORE_COLUMNS, (float, bool, object, object, object), strict=True):
                out[name] = pd.Series(dtype=dtype)
            return out
        thr = self.processing.zscore_threshold
        # Column by column: a float column is a view, a frame of the columns would be two copies.
        values = features["value"].to_numpy(dtype=float)
        col = {name: _nan_to_zero(features[name].to_numpy(dtype=float)) for name in _RULE_INPUTS}
        # Types as codes of the Arrow column: converting 50,000 strings to numpy to find a handful costs more
        # than the rest of the rules.
        type_codes, types = pd.factorize(features["sensor_type"], use_na_sentinel=False)
        low = np.array([self._low.get(t, np.nan) for t in types])[type_codes]
        high = np.array([self._high.get(t, np.nan) for t in types])[type_codes]
        with np.errstate(invalid="ignore"):
            out_of_range = (values < low) | (values > high) | ~np.isfinite(values)

        comps = _heuristics(col, thr)
        if self.detector is None:
            score, flag, kind = _rules(comps, col, thr)
        else:
            score, flag, kind = self._model_scores(features, comps, out_of_range)
        # A range violation is a data-quality flag with its own kind and reason, not a verdict on the reading's
        # behaviour: it keeps the model's (or the rules') score, so a sensor whose unit its type's range does not
        # fit cannot top the scores on every reading.
        flag = flag | out_of_range
        kind[out_of_range] = "out_of_range"
        kind[~flag] = None
        idx = np.flatnonzero(flag)
        reasons, tops = self._explain(
            features, idx, kind[idx], values[idx], low[idx], high[idx], types[type_codes[idx]].tolist()
        )
        added = pd.DataFrame(
            {
                "score": score.astype(float),
                "is_anomaly": flag,
                "anomaly_kind": _texts(kind) if len(idx) else kind,
                "reason": _texts_at(reasons, idx, n),
                "top_features": _lists_at(tops, idx, n),
            },
            index=features.index,
        )
        return pd.concat([features.drop(columns=[c for c in SCORE_COLUMNS if c in features.columns]), added], axis=1)

    def _model_scores(
        self, features: pd.DataFrame, comps: np.ndarray, out_of_range: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(score, flag, kind) from the model; the kind as the model, its namer or the heuristics (``comps``)
        give it."""
        det = self.detector
        X = model_matrix(features, model_features(det))
        kind_names = getattr(det, "kind_features", None)
        raw, kind_idx = det.raw(
            X, None if not kind_names else lambda rows: model_matrix(features.iloc[rows], tuple(kind_names))
        )
        score = raw / det.threshold
        flag = score >= 1.0
        if kind_idx is not None and det.classes is not None:
            kind = np.asarray(det.classes, dtype=object)[kind_idx]
        else:  # a flagged reading is named by its strongest heuristic when that passes its threshold
            kind = np.full(len(score), None, dtype=object)
            at = np.flatnonzero(flag)
            rows = comps[at]
            best = rows.argmax(axis=1)
            kind[at] = np.where(rows[np.arange(len(at)), best] >= 1.0, HEURISTIC_KINDS[best], "model")
        namer = getattr(det, "namer", None)  # models saved before namers have none
        named = np.flatnonzero(flag & ~out_of_range)
        if namer is not None and len(named):
            kind[named] = namer.name(kind_matrix(features.iloc[named], X[named]))
        return score, flag, kind

    def _explain(
        self,
        features: pd.DataFrame,
        idx: np.ndarray,
        kinds: np.ndarray,
        values: np.ndarray,
        low: np.ndarray,
        high: np.ndarray,
        types: list[Any],
    ) -> tuple[list[str], list[list[str]]]:
        """The reason and the three top features of the flagged rows ``idx``: the features that deviate most
        (from the model's normal readings; without a model, by their own size). Formatted from Python floats
        and lists in one pass: numpy scalars are slow to format one by one."""
        if not len(idx):
            return [], []
        det = self.detector
        known = model_features(det) if det is not None else MODEL_FEATURES
        names = [f for f in known if f != "type_code"]
        # Column by column: selecting the columns as a frame would copy them for every reading.
        X = np.nan_to_num(np.column_stack([features[f].to_numpy(dtype=float)[idx] for f in names]), nan=0.0)
        if det is not None and len(det.center) == len(known):
            dev = np.abs(X - det.center[:-1]) / np.maximum(det.spread[:-1], 1e-9) * det.weights[:-1]
        else:
            dev = np.abs(X)
            dev[:, names.index("noise_ratio")] = np.abs(X[:, names.index("noise_ratio")] - 1.0)
            dev[:, names.index("stuck_run")] = X[:, names.index("stuck_run")] / STUCK_RUN
            dev[:, names.index("dt_s")] = 0.0
        top = np.argsort(-dev, axis=1)[:, :3]
        feats = np.asarray(names, dtype=object)[top]
        at = np.arange(len(idx))
        first, second = X[at, top[:, 0]].tolist(), X[at, top[:, 1]].tolist()
        shown = zip(feats[:, 0].tolist(), first, feats[:, 1].tolist(), second, strict=True)
        sensors = features["sensor_id"].array.take(idx).tolist()
        rows = zip(kinds.tolist(), sensors, types, values.tolist(), low.tolist(), high.tolist(), shown, strict=True)
        reasons = [
            f"{t} {v:g} outside [{lo:g}, {hi:g}] on {s}"
            if k == "out_of_range"
            else f"{k} on {s} ({t} {v:g}): {n1} {x1:.1f}, {n2} {x2:.1f}"
            for k, s, t, v, lo, hi, (n1, x1, n2, x2) in rows
        ]
        out_of_range = kinds == "out_of_range"  # their top features: the value, then the first two
        feats[out_of_range, 1:] = feats[out_of_range, :2]
        feats[out_of_range, 0] = "value"
        return reasons, feats.tolist()


def _rules(comps: np.ndarray, col: dict[str, np.ndarray], thr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(score, flag, kind) without a model. The slow-baseline components (shift, trend) only name the kind:
    load-following sensors (current, vibration) leave their slow baseline all day. Flags come from the local
    robust z, stuck runs, noise bursts and partner residuals. Kinds are named for the flagged readings only."""
    score = comps[:, [0, 3, 4, 5]].max(axis=1)
    flag = score >= 1.0
    kind = np.full(len(score), None, dtype=object)
    at = np.flatnonzero(flag)
    kind[at] = HEURISTIC_KINDS[comps[at].argmax(axis=1)]
    # A jump is a spike until the readings before it moved too (then the level moved).
    jump = at[comps[at, 0] >= 1.0]
    before = np.abs(SHORT * col["short_ref_z"][jump] - col["ref_z"][jump]) / (SHORT - 1)
    kind[jump] = np.where(before >= 0.5 * thr, "level_shift", "spike")
    return score, flag, kind


def _nan_to_zero(x: np.ndarray) -> np.ndarray:
    """``np.nan_to_num(x, nan=0.0)`` (NaN as 0, infinities as the largest finite floats), copying ``x`` only when
    it holds a value that is not finite."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return x
    out = x.copy()
    out[bad] = np.nan_to_num(x[bad], nan=0.0)
    return out


def _heuristics(col: dict[str, np.ndarray], thr: float) -> np.ndarray:
    """The heuristic components, one column per HEURISTIC_KINDS, each scaled so that 1.0 is its threshold."""
    stuck_run = col["stuck_run"]
    noisy = col["roll_std"] > 0  # a sensor that was alive before it froze
    return np.column_stack(
        [
            np.abs(col["robust_z"]) / thr,
            np.abs(col["short_ref_z"]) / (SHIFT_FRACTION * thr),
            np.abs(col["trend_z"]) / (TREND_FRACTION * thr),
            np.where(noisy | (stuck_run > STUCK_RUN), stuck_run / STUCK_RUN, 0.0),
            col["noise_ratio"] / NOISE_RATIO,
            np.abs(col["pair_resid_mean"]) / (PAIR_FRACTION * thr),
        ]
    )


def _texts(values: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """Strings and None as the "str" column the DataFrame constructor infers, converted by Arrow in one call
    (the constructor checks every element in Python first)."""
    return pd.array(pa.array(values, type=pa.large_string(), from_pandas=True), dtype="str")


def _texts_at(texts: list[str], idx: np.ndarray, n: int) -> pd.api.extensions.ExtensionArray:
    """A "str" column of ``n`` rows: ``texts`` at rows ``idx``, "" elsewhere (an Arrow take)."""
    pick = np.zeros(n, dtype=np.int64)
    pick[idx] = np.arange(1, len(idx) + 1)
    return pd.array(pa.array(["", *texts], type=pa.large_string()).take(pick), dtype="str")


def _lists_at(lists: list[list[str]], idx: np.ndarray, n: int) -> np.ndarray:
    """An object column of ``n`` rows: ``lists`` at rows ``idx``, None elsewhere (consumers read None as none)."""
    out = np.full(n, None, dtype=object)
    out[idx] = lists
    return out


def model_features(detector: Any) -> tuple[str, ...]:
    """The model inputs ``detector`` was trained on ("type_code" last)."""
    names = tuple(getattr(detector, "features", ()) or ())
    return names if names and names[-1] == "type_code" else MODEL_FEATURES


def unknown_features(detector: Any) -> list[str]:
    """Inputs of ``detector`` that the feature code no longer computes (such a model cannot score)."""
    from millrace.processing.features import FEATURE_COLUMNS

    names = (*model_features(detector)[:-1], *(getattr(detector, "kind_features", None) or ("type_code",))[:-1])
    return list(dict.fromkeys(f for f in names if f not in FEATURE_COLUMNS))
