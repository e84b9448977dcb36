"""Model registry round trip, hot switch on promote, detection metrics, evaluate and its input errors."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from millrace.config import load_settings
from millrace.errors import DataError, MillraceError
from millrace.iot.simulator import FleetConfig, simulate_frame
from millrace.ml import parallel, registry
from millrace.ml import train as train_module
from millrace.ml.detectors import Detector, fit_gate, fit_gradient_boosting, fit_kind_model, robust_z_detector
from millrace.ml.evaluate import ReadOptions, evaluate
from millrace.ml.follow import load_scorer
from millrace.ml.kinds import kind_f1s, tune_bias
from millrace.ml.metrics import best_threshold, binary_metrics, episode_per_kind
from millrace.ml.parallel import features_by_device, run_tasks
from millrace.ml.train import fit_unsupervised
from millrace.processing.features import FEATURE_COLUMNS, frame_features
from millrace.processing.scoring import (
    KIND_FEATURES,
    MODEL_FEATURES,
    Scorer,
    model_matrix,
    unknown_features,
)
from tests.unit.test_features import fleet_frame


def _info(name: str) -> dict:
    return {
        "detector": name,
        "metrics": {"validation": {"alarm_rate": 0.0}},
        "thresholds": {},
        "features": [],
        "importance": {"sensors": {}, "features": {}},
        "training": {"readings": 1},
    }


def test_registry_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "models"
    det = robust_z_detector(MODEL_FEATURES)
    det.threshold = 3.5
    v1 = registry.save_model(root, det, _info("robust_z"))
    v2 = registry.save_model(root, det, _info("robust_z"))
    assert (v1, v2) == ("v0001", "v0002")
    assert registry.versions(root) == ["v0001", "v0002"]
    info = registry.load_info(root, v1)
    assert info["version"] == "v0001" and info["detector"] == "robust_z" and info["created_at"]
    back = registry.load_bundle(root, v1)
    assert isinstance(back, Detector) and back.threshold == 3.5
    X = np.array([[1.0] * len(MODEL_FEATURES), [7.0] * len(MODEL_FEATURES)])
    assert np.array_equal(back.raw(X)[0], det.raw(X)[0])
    assert registry.promoted_version(root) is None
    registry.promote(root, v2)
    assert registry.promoted_version(root) == "v0002"
    settings = load_settings(state_dir=tmp_path)
    assert registry.promoted_info(settings)["version"] == "v0002"  # type: ignore[index]
    with pytest.raises(MillraceError, match="no model version 'v0009'"):
        registry.promote(root, "v0009")


def test_a_scorer_built_earlier_switches_to_a_newly_promoted_model(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path)
    root = registry.registry_root(settings)
    cfg = settings.processing
    feats = frame_features(fleet_frame(devices=1, steps=300), cfg, chunk=None)
    scorer = load_scorer(settings)
    assert scorer.version is None
    rules = scorer.score(feats)

    strict = robust_z_detector(MODEL_FEATURES)
    strict.threshold = 1e-6  # flags everything that has features
    registry.promote(root, registry.save_model(root, strict, _info("robust_z")))
    first = scorer.score(feats)
    assert scorer.version == "v0001"
    warm = feats["robust_z"].notna()
    assert first.loc[warm, "is_anomaly"].all() and not rules.loc[warm, "is_anomaly"].all()
    assert set(first.loc[warm, "anomaly_kind"]) <= {
        "model",
        "spike",
        "level_shift",
        "drift",
        "stuck",
        "noise_burst",
        "correlation_break",
    }

    lax = robust_z_detector(MODEL_FEATURES)
    lax.threshold = 1e9
    registry.promote(root, registry.save_model(root, lax, _info("robust_z")))
    second = scorer.score(feats)
    assert scorer.version == "v0002" and not second["is_anomaly"].any()

    # A model that needs a feature this version does not compute is refused; the running one stays.
    alien = robust_z_detector(
        ("z", "robust_z", "diff_z", "short_ref_z", "trend_z", "pair_resid_mean", "no_such_feature", "type_code")
    )
    registry.promote(root, registry.save_model(root, alien, _info("robust_z")))
    third = scorer.score(feats)
    assert scorer.version == "v0002" and not third["is_anomaly"].any()


def test_a_model_trained_on_fewer_features_scores_with_its_own_list() -> None:
    # A model saved before features were added: its inputs are a subset of today's feature columns.
    frame = simulate_frame(
        FleetConfig(devices=2, seed=12, anomaly_rate=0.15, start=datetime(2026, 2, 1, tzinfo=UTC)), duration_s=1800
    )
    frame["interpolated"] = False
    cfg = load_settings().processing
    feats = frame_features(frame, cfg, chunk=None)
    older = tuple(f for f in MODEL_FEATURES if f not in ("mid_ref_z", "trend_long_z"))
    X = model_matrix(feats, older)
    assert X.shape == (len(feats), len(MODEL_FEATURES) - 2)
    labels = train_module.labels_of(feats)
    assert labels is not None
    det = fit_gradient_boosting(X, labels, older, 0)
    det.threshold = 0.6
    scored = Scorer(cfg, detector=det).score(feats)
    score, _ = det.raw(X)
    assert np.allclose(scored["score"].to_numpy(), score / det.threshold)
    assert scored["is_anomaly"].sum() == (score / det.threshold >= 1.0).sum() > 0


def test_binary_metrics_and_threshold() -> None:
    truth = np.array([1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    flag = np.array([1, 1, 0, 1, 0, 0, 0, 0], dtype=bool)
    m = binary_metrics(truth, flag)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 4)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["false_alarm_rate"] == pytest.approx(1 / 5) and m["missed_alarm_rate"] == pytest.approx(1 / 3)
    scores = np.array([0.9, 0.8, 0.7, 0.75, 0.1, 0.2, 0.3, 0.05])
    assert best_threshold(scores, truth, max_false_alarm=0.0) == 0.8
    assert best_threshold(scores, truth, max_false_alarm=0.2) == 0.7


def labelled_csv(path: Path, *, seed: int, hours: float = 2.0, kinds: bool = False) -> pd.DataFrame:
    frame = simulate_frame(
        FleetConfig(devices=1, seed=seed, start=datetime(2026, 3, 1, tzinfo=UTC), anomaly_rate=0.05),
        duration_s=hours * 3600,
    )
    label = frame["ground_truth"] if kinds else (frame["ground_truth"] != "normal").astype(int)
    out = pd.DataFrame(
        {
            "ts": frame["timestamp"],
            "sensor": frame["sensor_id"],
            "type": frame["sensor_type"],
            "reading": frame["value"],
            "is_bad": label,
        }
    )
    out.to_csv(path, index=False, sep=";")
    return out


OPTS = ReadOptions(
    time_column="ts", label_column="is_bad", sensor_column="sensor", value_column="reading", type_column="type"
)


def test_evaluate_matches_metrics_computed_independently(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    rows = len(labelled_csv(a, seed=5)) + len(labelled_csv(b, seed=6))
    output = tmp_path / "scores.csv"
    result = evaluate(settings, [a, b], opts=OPTS, train_rows=3 * 3600, output=output, detector="reading:mahalanobis")
    scores = pd.read_csv(output)
    assert len(scores) == rows - 2 * 3 * 3600  # the first 3 * 3600 rows of each file are for fitting
    assert list(scores.columns[:1]) == ["time"] and {"score", "flag"} <= set(scores.columns)
    truth, flag = scores["label"] != "normal", scores["flag"] == 1
    tp, fp = int((truth & flag).sum()), int((~truth & flag).sum())
    fn, tn = int((truth & ~flag).sum()), int((~truth & ~flag).sum())
    assert (result["tp"], result["fp"], result["fn"], result["tn"]) == (tp, fp, fn, tn)
    assert result["precision"] == pytest.approx(tp / (tp + fp))
    assert result["recall"] == pytest.approx(tp / (tp + fn))
    assert result["false_alarm_rate"] == pytest.approx(fp / (fp + tn))
    assert result["missed_alarm_rate"] == pytest.approx(fn / (tp + fn))
    assert set(result["per_file"]) == {str(a), str(b)}
    assert (scores["score"] >= 1.0).eq(flag).all()  # flag is score over the threshold (or out of range)
    assert result["false_alarm_rate"] < 0.02 and result["recall"] > 0.2


def test_evaluate_with_train_file_reports_recall_per_kind(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path)
    clean = simulate_frame(
        FleetConfig(devices=1, seed=9, anomaly_rate=0.0, start=datetime(2026, 2, 1, tzinfo=UTC)), duration_s=1800
    )
    train_file = tmp_path / "clean.parquet"
    pd.DataFrame(
        {
            "ts": clean["timestamp"],
            "sensor": clean["sensor_id"],
            "type": clean["sensor_type"],
            "reading": clean["value"],
            "is_bad": 0,
        }
    ).to_parquet(train_file)
    test_file = tmp_path / "kinds.csv"
    written = labelled_csv(test_file, seed=7, kinds=True)
    result = evaluate(settings, [test_file], opts=OPTS, train_file=train_file, detector="reading:mahalanobis")
    expected = written["is_bad"].value_counts()
    assert result["readings"] == len(written)
    for kind, row in result["per_kind"].items():
        assert row["readings"] == expected[kind]


def test_fit_unsupervised_threshold_is_the_999th_percentile() -> None:
    cfg = load_settings().processing
    X = model_matrix(frame_features(fleet_frame(devices=1, steps=400), cfg, chunk=None))
    X = X[np.isfinite(X[:, 1])]
    det = fit_unsupervised(X, "isolation_forest")
    raw, _ = det.raw(X)
    assert np.mean(raw >= det.threshold) == pytest.approx(0.001, abs=0.002)
    assert Scorer(cfg, detector=det).detector is det


@pytest.mark.parametrize(
    ("content", "opts", "message"),
    [
        ("ts;sensor;type;reading\n2026-01-01T00:00:00Z;s;temperature;1\n",
         ReadOptions(sensor_column="sensor", value_column="reading", type_column="type"), "no label column"),
        ("ts;sensor;type;reading;is_bad\n2026-01-01T00:00:00Z;s;temperature;1;0\n",
         ReadOptions(time_column="when", label_column="is_bad"), "no time column 'when'"),
        ("", OPTS, "empty"),
        ("ts;sensor;type;reading;is_bad\n2026-01-01T00:00:00Z;s;temperature;abc;0\n"
         "2026-01-01T00:00:01Z;s;temperature;n/a;0\n", OPTS, "has no numeric values"),
    ],
)  # fmt: skip
def test_bad_inputs_give_clear_errors(tmp_path: Path, content: str, opts: ReadOptions, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        evaluate(load_settings(state_dir=tmp_path), [path], opts=opts, train_rows=1)


def test_features_by_device_on_two_workers_equal_one_pass() -> None:
    cfg = load_settings().processing
    frame = fleet_frame(devices=5, steps=300)
    frame["ground_truth"] = np.where(np.arange(len(frame)) % 97 == 0, "spike", "normal")
    frame.loc[3, "ground_truth"] = None
    one = frame_features(frame, cfg, chunk=None)
    many = features_by_device(frame, cfg, workers=2, min_rows=0)
    assert list(many.columns) == list(one.columns)
    assert list(many["sensor_id"]) == list(one["sensor_id"])
    assert list(many["timestamp"]) == list(one["timestamp"])
    assert list(many["ground_truth"].fillna("?")) == list(one["ground_truth"].fillna("?"))
    assert list(many.dtypes) == list(one.dtypes)
    left, right = one[list(FEATURE_COLUMNS)].to_numpy(), many[list(FEATURE_COLUMNS)].to_numpy()
    assert ((left == right) | (np.isnan(left) & np.isnan(right))).all()


def test_episode_per_kind_counts_episodes_and_flagged_events() -> None:
    # sensor a: normal, spike, normal, a 4-reading level shift, normal; sensor b: a shift, normal
    sensor = np.array(list("aaaaaaaa") + list("bbbb"))
    ts = np.r_[np.arange(8), np.arange(4)]
    shift = "level_shift"
    labels = np.array(
        ["normal", "spike", "normal", shift, shift, shift, shift, "normal", shift, shift, shift, "normal"], dtype=object
    )
    flag = np.array([0, 1, 0, 1, 1, 0, 1, 1, 0, 0, 0, 1], dtype=bool)
    kinds = np.array([None, "spike", None, "spike", shift, None, shift, shift, None, None, None, "spike"], dtype=object)
    score = np.array([0, 5, 0, 9, 3, 0, 2, 1, 0, 0, 0, 4.0])
    out = episode_per_kind(sensor, ts, labels, flag, kinds, score, merge=0)
    # Events: a{1} spike (right), a{3,4} named spike by its top score (wrong), a{6,7} shift (right), b{3} spike.
    assert out["spike"] | {} == {
        "episodes": 1,
        "found": 1,
        "events_named": 3,
        "events_correct": 1,
        "precision": 1 / 3,
        "recall": 1.0,
        "f1": 0.5,
    }
    assert (out[shift]["episodes"], out[shift]["found"], out[shift]["events_named"]) == (2, 0, 1)
    merged = episode_per_kind(sensor, ts, labels, flag, kinds, score, merge=5)  # a{1..7} is one event
    assert (merged["spike"]["events_named"], merged["spike"]["events_correct"]) == (2, 1)
    assert merged[shift]["events_named"] == 0


def test_run_tasks_returns_results_in_task_order() -> None:
    tasks = [partial(pow, 2, k) for k in range(7)]
    assert run_tasks(tasks, workers=2) == run_tasks(tasks, workers=1) == [2**k for k in range(7)]


def test_training_in_worker_processes_gives_the_same_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frame = simulate_frame(
        FleetConfig(devices=2, seed=11, anomaly_rate=0.15, start=datetime(2026, 2, 1, tzinfo=UTC)), duration_s=1800
    )
    settings = load_settings(state_dir=tmp_path)
    monkeypatch.setattr(train_module, "PARALLEL_FIT_ROWS", 10**12)
    monkeypatch.setattr(parallel, "MIN_PARALLEL_ROWS", 10**12)
    one = train_module.train(settings, frame, source="test", seed=3)
    monkeypatch.setattr(train_module, "PARALLEL_FIT_ROWS", 0)
    monkeypatch.setattr(parallel, "MIN_PARALLEL_ROWS", 0)
    many = train_module.train(settings, frame, source="test", seed=3)
    assert (one["version"], many["version"]) == ("v0001", "v0002")
    assert many["detector"] == one["detector"] and many["thresholds"] == one["thresholds"]
    for name, metrics in one["metrics"]["compared"].items():
        other = many["metrics"]["compared"][name]
        assert {k: v for k, v in other.items() if "seconds" not in k and k != "naming"} == {
            k: v for k, v in metrics.items() if "seconds" not in k and k != "naming"
        }
    naming = [
        {k: v for k, v in m["metrics"]["validation"]["naming"].items() if k != "namer_seconds"} for m in (one, many)
    ]
    assert naming[0] == naming[1] and naming[0]["chosen"] in {"detector", "detector+bias", "namer", "namer+bias"}


def test_tune_bias_raises_mean_kind_f1_on_skewed_probabilities() -> None:
    # Two kinds; the probabilities favour "a" too much: a multiplier on "b" fixes the naming.
    classes = ("a", "b")
    labels = np.array(["a"] * 50 + ["b"] * 50, dtype=object)
    proba = np.column_stack([np.full(100, 0.6), np.r_[np.full(50, 0.3), np.full(50, 0.5)]])
    plain, f1_plain = tune_bias(proba, labels, classes, {"a": 50, "b": 50}, rounds=0)
    assert list(plain) == [1.0, 1.0] and f1_plain == pytest.approx((2 / 3 + 0) / 2)
    bias, f1 = tune_bias(proba, labels, classes, {"a": 50, "b": 50})
    assert f1 == pytest.approx(1.0)
    assert ((proba * bias).argmax(axis=1) == np.r_[np.zeros(50), np.ones(50)]).all()


def test_tune_bias_finds_the_multipliers_of_a_full_argmax_search() -> None:
    # tune_bias re-takes only one kind against the others' best per trial; a plain coordinate ascent that
    # takes the argmax over every kind for every trial must find the same multipliers (ties included).
    rng = np.random.default_rng(5)
    classes = ("k0", "k1", "k2", "k3", "k4")
    index = rng.integers(-1, 5, 4000)  # -1: a label outside the classes
    labels = np.array([classes[i] if i >= 0 else "other" for i in index], dtype=object)
    proba = rng.random((4000, 5))
    proba[np.arange(4000), np.clip(index, 0, None)] += 0.6
    proba = np.round(proba * np.array([3.0, 0.2, 1.0, 5.0, 0.5]), 1)  # skewed, and many exact ties
    totals = {c: int((index == i).sum()) for i, c in enumerate(classes)}
    weight = rng.random(4000) * 3
    grid = np.geomspace(1 / 8, 8, 13)

    def mean_f1(b: np.ndarray) -> float:
        return float(np.mean(list(kind_f1s(proba, labels, classes, totals, b, weight).values())))

    expected, best = np.ones(5), mean_f1(np.ones(5))
    for _ in range(3):
        for i in range(5):
            for g in grid:
                trial = expected.copy()
                trial[i] = g
                if (f := mean_f1(trial)) > best + 1e-9:
                    best, expected = f, trial
    bias, f1 = tune_bias(proba, labels, classes, totals, weight=weight)
    assert list(bias) == list(expected) and f1 == pytest.approx(best, abs=1e-12)
    assert not np.allclose(bias, 1.0)  # the skew was corrected: the search moved


def test_weighted_metrics_count_a_row_as_many_readings() -> None:
    truth = np.array([1, 1, 0, 0, 0], dtype=bool)
    flag = np.array([1, 0, 1, 0, 0], dtype=bool)
    weight = np.array([1, 1, 3, 3, 3], dtype=float)
    repeated = np.repeat(np.arange(5), weight.astype(int))
    assert binary_metrics(truth, flag, weight) == binary_metrics(truth[repeated], flag[repeated])
    scores = np.array([0.9, 0.5, 0.8, 0.2, 0.1])
    for limit in (0.0, 0.34, 1.0):
        assert best_threshold(scores, truth, max_false_alarm=limit, weight=weight) == best_threshold(
            scores[repeated], truth[repeated], max_false_alarm=limit
        )


def test_validation_sample_keeps_every_anomaly_and_weights_the_normal_readings() -> None:
    rows = np.arange(10_000)
    truth = np.zeros(10_000, dtype=bool)
    truth[::100] = True  # 100 anomalous readings
    kept, weight = train_module._validation_sample(rows, truth, 1_000, np.random.default_rng(0))
    assert len(kept) == 1_000 and list(kept) == sorted(kept)
    assert truth[kept].sum() == 100 and (weight[truth[kept]] == 1.0).all()
    assert weight[~truth[kept]].sum() == pytest.approx(9_900)
    same, ones = train_module._validation_sample(rows[:500], truth, 1_000, np.random.default_rng(0))
    assert list(same) == list(rows[:500]) and (ones == 1.0).all()


def test_gradient_boosting_scores_with_its_gate_and_names_flagged_readings_with_the_kind_model() -> None:
    frame = simulate_frame(
        FleetConfig(devices=2, seed=12, anomaly_rate=0.15, start=datetime(2026, 2, 1, tzinfo=UTC)), duration_s=1800
    )
    frame["interpolated"] = False
    feats = frame_features(frame, load_settings().processing, chunk=None)
    X = model_matrix(feats)
    labels = train_module.labels_of(feats)
    assert labels is not None
    det = fit_gradient_boosting(X, labels, MODEL_FEATURES, 0)
    det.threshold = 0.6
    score, kind = det.raw(X)
    # The score is the gate's probability of "anomalous"; kinds come from the multi-class model, flagged only.
    assert np.array_equal(score, det.gate.predict_proba(X)[:, 1])
    flagged = score / det.threshold >= 1.0
    assert 0 < flagged.sum() < len(X)
    assert kind is not None and det.classes is not None
    normal = det.classes.index("normal")
    proba = det.estimator.predict_proba(X[flagged])
    proba[:, normal] = -1.0
    assert np.array_equal(kind[flagged], proba.argmax(axis=1)) and (kind[~flagged] == normal).all()
    assert set(np.asarray(det.classes)[kind[flagged]]) - {"normal"} == set(np.asarray(det.classes)[kind[flagged]])
    # The Scorer names exactly the flagged readings, with those kinds.
    scored = Scorer(load_settings().processing, detector=det).score(feats)
    model_flag = scored["is_anomaly"].to_numpy() & (scored["anomaly_kind"] != "out_of_range").to_numpy()
    assert np.array_equal(model_flag, flagged)
    assert scored["anomaly_kind"].to_numpy()[flagged].tolist() == np.asarray(det.classes)[kind[flagged]].tolist()
    # A model saved before gates existed scores with 1 - P(normal) of the multi-class model.
    det.gate = None
    old_score, old_kind = det.raw(X)
    assert np.allclose(old_score, 1.0 - det.estimator.predict_proba(X)[:, normal])
    assert old_kind is not None and len(old_kind) == len(X)


def test_a_kind_model_on_the_kind_features_names_from_them_in_the_scorer() -> None:
    frame = simulate_frame(
        FleetConfig(devices=2, seed=13, anomaly_rate=0.15, start=datetime(2026, 2, 1, tzinfo=UTC)), duration_s=1800
    )
    frame["interpolated"] = False
    feats = frame_features(frame, load_settings().processing, chunk=None)
    X, K = model_matrix(feats), model_matrix(feats, KIND_FEATURES)
    labels = train_module.labels_of(feats)
    assert labels is not None
    det = fit_gate(X, labels, MODEL_FEATURES, 0)
    det.estimator = fit_kind_model(K, labels, KIND_FEATURES, 0)
    det.kind_features = KIND_FEATURES
    det.threshold = 0.6
    with pytest.raises(ValueError, match="kind_rows"):
        det.raw(X)
    score, kind = det.raw(X, lambda rows: K[rows])
    flagged = score / det.threshold >= 1.0
    assert 0 < flagged.sum() < len(X) and kind is not None and det.classes is not None
    proba = det.estimator.predict_proba(K[flagged])
    proba[:, det.classes.index("normal")] = -1.0
    assert np.array_equal(kind[flagged], proba.argmax(axis=1))
    scored = Scorer(load_settings().processing, detector=det).score(feats)
    assert scored["anomaly_kind"].to_numpy()[flagged].tolist() == np.asarray(det.classes)[kind[flagged]].tolist()
    # A model whose kind model needs a feature this version does not compute cannot score.
    det.kind_features = (*KIND_FEATURES[:-1], "gone_feature", "type_code")
    assert unknown_features(det) == ["gone_feature"]


def test_training_warns_when_the_validation_period_holds_too_few_anomalies(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    calm = simulate_frame(FleetConfig(devices=1, seed=3, anomaly_rate=0.0, start=start), duration_s=1800)
    messages: list[str] = []
    train_module.train(settings, calm, source="test", progress=messages.append)
    assert [m for m in messages if m.startswith("warning")] == [
        "warning: the validation period (the last 30%) holds 0 anomalous readings: too few to compare detectors "
        "or set thresholds well; give more hours or more anomalies"
    ]
    busy = simulate_frame(FleetConfig(devices=1, seed=3, anomaly_rate=0.15, start=start), duration_s=1800)
    messages.clear()
    train_module.train(settings, busy, source="test", progress=messages.append)
    assert not [m for m in messages if m.startswith("warning")]


def test_cross_fitted_naming_scores_multipliers_on_the_half_they_were_not_tuned_on() -> None:
    classes = ("a", "b", "normal")
    p = np.tile([0.6, 0.4, 0.0], (400, 1))  # every reading looks a little more like "a"
    labels = np.array(["b"] * 200 + ["a"] * 200, dtype=object)  # first half all "b", second half all "a"
    weight = np.ones(400)
    folds = [np.arange(400) < 200, np.arange(400) >= 200]
    totals = [{"b": 200}, {"a": 200}]
    # As fitted: the first half named all wrong (mean F1 0), the second all right (1).
    assert train_module._cross_fitted(p, labels, classes, weight, folds, totals, rounds=0) == pytest.approx(0.5)
    # Multipliers tuned on one half turn every name to that half's kind: wrong on the other half.
    assert train_module._cross_fitted(p, labels, classes, weight, folds, totals, rounds=3) == pytest.approx(0.0)


def test_multipliers_name_only_when_they_win_by_the_margin() -> None:
    close = {"detector": 0.8557, "detector+bias": 0.8591, "namer": 0.8033, "namer+bias": 0.8071}
    assert train_module.pick_naming(close) == "detector"
    clear = {**close, "detector+bias": 0.8557 + train_module.BIAS_MARGIN + 0.001}
    assert train_module.pick_naming(clear) == "detector+bias"
    assert train_module.pick_naming({"detector": 0.70, "namer": 0.75, "namer+bias": 0.755}) == "namer"


def test_validation_is_the_end_of_each_devices_readings() -> None:
    # Device a: 10 readings on day 0 (the first not warm); device b: 20 readings three days later.
    devices = np.array(["a"] * 10 + ["b"] * 20)
    day = 86_400 * 10**9
    ts = np.concatenate([np.arange(10) * 10**9, 3 * day + np.arange(20) * 10**9])
    warm = np.ones(30, dtype=bool)
    warm[0] = False
    cutoff = train_module.validation_cutoffs(devices, ts, warm, 0.7)
    validation = warm & (ts >= cutoff)
    # a: quantile 0.7 of its warm seconds 1..9 is 6.6 -> 7, 8, 9; b: of 0..19 is 13.3 -> 14..19.
    assert list(np.flatnonzero(validation[:10])) == [7, 8, 9]
    assert list(np.flatnonzero(validation[10:])) == [14, 15, 16, 17, 18, 19]
    # One global cutoff would have left device a without a validation part.
    assert (ts[:10] < np.quantile(ts[warm], 0.7)).all()
