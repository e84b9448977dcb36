"""Device-level detectors: calibration to the target false-alarm rate on fresh normal data, contributions,
unit independence, the stream path's history, and ``ml evaluate`` on wide files (colliding names, one sensor)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from millrace.config import load_settings
from millrace.ml.calibration import calibrate
from millrace.ml.device import choose, fit_device_model, moving_mean
from millrace.ml.device_readings import score_readings
from millrace.ml.evaluate import ReadOptions, evaluate

SENSORS = tuple(f"s{i}" for i in range(6))


def process(n: int, seed: int, *, p: int = 6) -> np.ndarray:
    """A correlated, autocorrelated normal process: AR(1) latent factors mixed into p sensors plus noise."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(0).normal(size=(2, p))
    z = np.zeros((n, 2))
    for t in range(1, n):
        z[t] = 0.6 * z[t - 1] + rng.normal(size=2)
    return z @ mix + 0.5 * rng.normal(size=(n, p)) + np.arange(p) * 10.0


def test_calibrate_puts_the_threshold_at_the_target_tail() -> None:
    held = np.random.default_rng(1).exponential(2.0, 200_000)
    cal = calibrate(held, 0.01)
    # Exponential(scale 2): P(X > t) = exp(-t/2) = 0.01 at t = 2 ln 100 = 9.21.
    assert cal.threshold == pytest.approx(2 * np.log(100), rel=0.02)
    assert cal.score(np.array([cal.threshold]))[0] == pytest.approx(1.0)
    assert cal.score(np.array([0.0]))[0] == 0.0
    assert cal.tail(np.array([4 * np.log(100)]))[0] == pytest.approx(1e-4, rel=0.1)  # far beyond the data


@pytest.mark.parametrize("detector", ["pca", "dpca", "mcd", "iforest"])
def test_each_detector_meets_its_false_alarm_target_on_fresh_normal_data(detector: str) -> None:
    model = fit_device_model(process(3000, 1), SENSORS, detector=detector, target_far=0.02, windows=(1, 3, 10))
    fresh = process(40_000, 2)
    achieved = model.score(fresh).flag.mean()
    assert 0.5 * 0.02 <= achieved <= 2.0 * 0.02, achieved


def test_the_univariate_detector_meets_its_target_and_catches_a_level_shift() -> None:
    series = process(3000, 3, p=1)
    model = fit_device_model(series, ("flow",), target_far=0.02)
    assert model.name == "univariate"
    fresh = process(40_000, 4, p=1)
    assert 0.01 <= model.score(fresh).flag.mean() <= 0.04
    shifted = fresh[:400].copy()
    shifted[200:] += 6.0 * series.std()
    flags = model.score(shifted, history=fresh[-100:]).flag
    assert flags[200:205].any()


def test_contributions_add_up_to_the_statistic_and_name_the_sensor_that_moved() -> None:
    model = fit_device_model(process(2000, 5), SENSORS, detector="mcd")
    rows = process(50, 6)
    rows[30:, 4] += 25.0
    scores = model.score(rows)
    raw_stat, contrib = model.core.statistic(
        (rows - model.core.center) / model.core.scale  # no missing values: standardize is this
    )
    np.testing.assert_allclose(contrib.sum(axis=1), raw_stat, rtol=1e-9)
    assert scores.flag[30:].all()
    assert {t[0] for t in model.top_sensors(scores.contributions[30:])} == {"s4"}


def test_units_do_not_matter() -> None:
    base = process(2000, 7)
    model = fit_device_model(base, SENSORS, detector="pca")
    scaled = base * np.array([1, 1000, 1, 1, 0.001, 1]) + np.array([0, 1e5, 0, -300, 0, 0])
    other = fit_device_model(scaled, SENSORS, detector="pca")
    test = process(500, 8)
    test_scaled = test * np.array([1, 1000, 1, 1, 0.001, 1]) + np.array([0, 1e5, 0, -300, 0, 0])
    np.testing.assert_allclose(model.score(test).score, other.score(test_scaled).score, rtol=1e-6, atol=1e-9)


def test_auto_picks_from_the_rows_and_says_why() -> None:
    assert choose(process(500, 9, p=1))[0] == "univariate"
    assert choose(process(500, 9))[0] == "mcd"
    name, windows, why = choose(process(20, 9))
    assert name == "pca" and windows == (1, 3, 10) and "20 training rows" in why


def test_moving_mean_is_trailing() -> None:
    np.testing.assert_allclose(moving_mean(np.array([1.0, 2.0, 3.0, 4.0]), 2), [1.0, 1.5, 2.5, 3.5])


def test_stream_scoring_in_batches_equals_scoring_at_once() -> None:
    """The stream job scores micro-batch by micro-batch with each device's past in its state; the result must
    be what scoring the whole series at once gives (a replayed batch then changes nothing either)."""
    model = fit_device_model(process(2000, 10), SENSORS, detector="dpca", windows=(1, 3, 10))
    values = process(120, 11)
    values[60:80, 2] += 8.0
    times = pd.date_range("2026-01-01", periods=len(values), freq="1s", tz="UTC")
    readings = pd.DataFrame(
        [
            {"sensor_id": f"d1-{s}", "device_id": "d1", "timestamp": t, "value": values[i, j]}
            for i, t in enumerate(times)
            for j, s in enumerate(SENSORS)
        ]
    )
    whole = score_readings(model, readings, {})
    history: dict[str, list[list[float]]] = {}
    cuts = [0, 6 * 25, 6 * 70, len(readings)]
    parts = [score_readings(model, readings.iloc[a:b], history) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    batched = pd.concat(parts)
    np.testing.assert_allclose(batched["score"].to_numpy(), whole["score"].to_numpy(), rtol=1e-9, atol=1e-12)
    assert batched["is_anomaly"].tolist() == whole["is_anomaly"].tolist()
    assert whole["is_anomaly"].iloc[6 * 60 : 6 * 80].all()
    assert set(whole.loc[whole["is_anomaly"], "anomaly_kind"]) == {"model"}


def wide_file(path: Path, rows: int, *, seed: int, fault_from: int | None = None) -> Path:
    """A recording in units nothing built in expects: pressure in bar, temperature in kelvin, current in mA."""
    values = process(rows, seed, p=3)
    values = values - values.mean(axis=0)
    if fault_from is not None:
        values[fault_from:, 0] += 4.0
    label = np.zeros(rows, dtype=int)
    if fault_from is not None:
        label[fault_from:] = 1
    pd.DataFrame(
        {
            "time": pd.date_range("2026-01-01", periods=rows, freq="1min", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Pressure": 2.5 + 0.02 * values[:, 0],
            "Temperature": 350 + 0.3 * values[:, 1],
            "Current": 4000 + 15 * values[:, 2],
            "label": label,
        }
    ).to_csv(path, index=False)
    return path


def test_evaluate_a_wide_file_whose_names_collide_with_built_in_types(tmp_path: Path) -> None:
    """Columns named Pressure/Temperature/Current in other units: no range flags, calibrated false alarms,
    the fault found, one output row per input row naming Pressure."""
    path = wide_file(tmp_path / "plant.csv", 3000, seed=12, fault_from=2500)
    out = tmp_path / "scores.csv"
    result = evaluate(
        load_settings(state_dir=tmp_path),
        [path],
        opts=ReadOptions(label_column="label"),
        train_rows=2000,
        output=out,
        per_sensor=True,
    )
    assert result["unit"] == "device row" and result["model"]["detector"] == "mcd"
    assert result["readings"] == 1000 and result["anomalies"] == 500
    assert result["false_alarm_rate"] <= 0.03 and result["recall"] >= 0.95
    assert result["events"]["events"] == 1 and result["events"]["events_detected"] == 1
    assert result["nab"]["standard"]["tp"] == 1
    rows = pd.read_csv(out)
    assert len(rows) == 1000 and rows["row"].tolist() == list(range(2002, 3002))  # header = line 1
    # No built-in range applies; the learned ones (training span with a margin) flag only the faulty pressure.
    assert rows.loc[rows["label"] == 0, "out_of_range"].isna().all()
    assert set(rows["out_of_range"].dropna()) <= {"pressure"}
    assert (rows.loc[rows["flag"] == 1, "sensors"].str.split(";").str[0] == "pressure").mean() > 0.9
    assert {"contribution:pressure", "contribution:temperature", "contribution:current"} <= set(rows.columns)


def test_evaluate_a_single_sensor_file(tmp_path: Path) -> None:
    series = process(2400, 13, p=1)[:, 0]
    label = np.zeros(len(series), dtype=int)
    series[2000:2100] += 5 * series[:2000].std()
    label[2000:2100] = 1
    path = tmp_path / "flow.csv"
    pd.DataFrame(
        {
            "timestamp": pd.date_range("2026-01-01", periods=len(series), freq="5min", tz="UTC"),
            "flow": series,
            "label": label,
        }
    ).to_csv(path, index=False)
    result = evaluate(
        load_settings(state_dir=tmp_path), [path], opts=ReadOptions(label_column="label"), train_rows=1500
    )
    assert result["model"]["detector"] == "univariate"
    assert result["events"]["events_detected"] == 1
    assert result["false_alarm_rate"] <= 0.05


def test_alerts_close_like_the_stream_jobs_episodes_unless_told_otherwise() -> None:
    from millrace.ml.device_eval import AlertRule

    times = pd.date_range("2026-01-01", periods=100, freq="5s", tz="UTC")
    assert AlertRule(quiet_s=30.0).quiet_rows(times) == 6  # 30 s of event time at one row per 5 s
    assert AlertRule(quiet=2, quiet_s=30.0).quiet_rows(times) == 2
    assert AlertRule(quiet_s=30.0).quiet_rows(times[:1]) == 1
