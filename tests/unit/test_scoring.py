"""Scorer: rules, statistics and kinds without a model; vectorised output columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from millrace.config import ProcessingSettings
from millrace.iot.tabular import read_table
from millrace.ml.detectors import robust_z_detector
from millrace.processing.features import frame_features
from millrace.processing.scoring import KIND_FEATURES, MODEL_FEATURES, SCORE_COLUMNS, Scorer
from millrace.records import GENERIC_TYPE
from tests.unit.test_features import fleet_frame

# Ranges wide enough that nothing is out of them: the same scorer with no range in effect.
UNBOUNDED = {"low": -1e12, "high": 1e12}


def scored(frame: pd.DataFrame) -> pd.DataFrame:
    cfg = ProcessingSettings()
    return Scorer(cfg).score(frame_features(frame, cfg, chunk=None))


def test_clean_data_raises_almost_no_alarms() -> None:
    out = scored(fleet_frame(devices=2, steps=600))
    assert set(SCORE_COLUMNS) <= set(out.columns)
    assert out["is_anomaly"].mean() < 0.005
    assert out.loc[~out["is_anomaly"], "anomaly_kind"].isna().all()
    assert (out.loc[~out["is_anomaly"], "reason"] == "").all()


def test_out_of_range_spike_and_stuck_are_named() -> None:
    frame = fleet_frame(devices=1, steps=600)
    temp = frame.index[frame["sensor_type"] == "temperature"]
    hum = frame.index[frame["sensor_type"] == "humidity"]
    press = frame.index[frame["sensor_type"] == "pressure"]
    frame.loc[temp[300], "value"] += 6.0  # 20 sigma, one reading
    frame.loc[hum[400], "value"] = 140.0  # humidity above 100 %
    frame.loc[press[450:520], "value"] = frame.loc[press[449], "value"]  # frozen
    cfg = ProcessingSettings()
    feats = frame_features(frame, cfg, chunk=None)
    out = Scorer(cfg).score(feats).set_index(["sensor_id", "timestamp"])
    ts = frame["timestamp"]
    spike = out.loc[("dev-0001-temperature", ts[temp[300]])]
    assert spike["is_anomaly"] and spike["anomaly_kind"] == "spike" and spike["score"] > 1
    assert "robust_z" in spike["top_features"] and "spike on dev-0001-temperature" in spike["reason"]
    oor = out.loc[("dev-0001-humidity", ts[hum[400]])]
    assert oor["is_anomaly"] and oor["anomaly_kind"] == "out_of_range"
    assert oor["reason"] == "humidity 140 outside [0, 100] on dev-0001-humidity"
    # The range flags the reading; its score is the rules' own, as if there were no range.
    unranged = Scorer(ProcessingSettings(ranges={"humidity": UNBOUNDED})).score(feats)
    unranged = unranged.set_index(["sensor_id", "timestamp"]).loc[("dev-0001-humidity", ts[hum[400]])]
    assert unranged["anomaly_kind"] != "out_of_range" and oor["score"] == unranged["score"]
    stuck = out.loc[("dev-0001-pressure", ts[press[500]])]
    assert stuck["is_anomaly"] and stuck["anomaly_kind"] == "stuck"
    early = out.loc[("dev-0001-pressure", ts[press[455]])]
    assert not early["is_anomaly"]  # a few equal readings are not yet "stuck"


def test_empty_frame_gets_columns() -> None:
    cfg = ProcessingSettings()
    empty = frame_features(fleet_frame(devices=1, steps=1).iloc[:0], cfg)
    out = Scorer(cfg).score(empty)
    assert out.empty and set(SCORE_COLUMNS) <= set(out.columns)


def test_nan_value_is_flagged_not_crashing() -> None:
    frame = fleet_frame(devices=1, steps=100)
    frame.loc[frame.index[-1], "value"] = np.nan
    out = scored(frame)
    assert out.iloc[-1]["is_anomaly"] or out["is_anomaly"].iloc[-6:].any()


class _Namer:
    """Names every reading it is given "drift" and records the kind matrices it saw."""

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def name(self, X: np.ndarray) -> np.ndarray:
        self.seen.append(X)
        return np.full(len(X), "drift", dtype=object)


def test_a_model_with_a_namer_names_only_its_flagged_readings() -> None:
    cfg = ProcessingSettings()
    frame = fleet_frame(devices=1, steps=400)
    hum = frame.index[frame["sensor_type"] == "humidity"]
    frame.loc[hum[350], "value"] = 140.0  # out of range: named by the rule, not the namer
    feats = frame_features(frame, cfg, chunk=None)
    det = robust_z_detector(MODEL_FEATURES)
    det.threshold = 3.0
    det.namer = _Namer()
    out = Scorer(cfg, detector=det).score(feats)
    flagged = out["is_anomaly"] & (out["anomaly_kind"] != "out_of_range")
    assert flagged.sum() > 0 and (out.loc[flagged, "anomaly_kind"] == "drift").all()
    assert (out["anomaly_kind"] == "out_of_range").sum() == 1
    assert out.loc[~out["is_anomaly"], "anomaly_kind"].isna().all()
    (X,) = det.namer.seen
    assert X.shape == (int(flagged.sum()), len(KIND_FEATURES))
    jump = KIND_FEATURES.index("jump_age")
    np.testing.assert_array_equal(X[:, jump], out.loc[flagged, "jump_age"].to_numpy(dtype=float))


def _rig(tmp_path: Path, rows: int = 400) -> Path:
    """A wide recording in units unlike the simulator's: pressure in bar, temperature in kelvin, current in
    mA - every value outside the built-in range of the type its column is named after."""
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(
        {
            "time": pd.date_range("2026-01-01", periods=rows, freq="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Pressure": np.round(2.5 + rng.normal(0, 0.02, rows), 4),
            "Temperature": np.round(350.0 + rng.normal(0, 0.3, rows), 3),
            "Current": np.round(4000.0 + rng.normal(0, 15.0, rows), 2),
        }
    )
    path = tmp_path / "rig.csv"
    frame.to_csv(path, index=False)
    return path


def test_a_recording_in_other_units_is_not_out_of_range_unless_mapped(tmp_path: Path) -> None:
    path = _rig(tmp_path)
    cfg = ProcessingSettings()
    plain = frame_features(read_table(path).frame.assign(interpolated=False), cfg, chunk=None)
    out = Scorer(cfg).score(plain)
    assert set(out["sensor_type"]) == {GENERIC_TYPE} and len(out) == 1200
    assert not (out["anomaly_kind"] == "out_of_range").any()
    assert not out["is_anomaly"].any()  # steady noise: nothing at all to flag

    mapped = read_table(path, types={"Pressure": "pressure"}).frame.assign(interpolated=False)
    feats = frame_features(mapped, cfg, chunk=None)
    out = Scorer(cfg).score(feats)
    pressure = out["sensor_id"] == "rig-pressure"
    assert out.loc[pressure, "is_anomaly"].all() and (out.loc[pressure, "anomaly_kind"] == "out_of_range").all()
    first = out[pressure].iloc[0]
    assert first["reason"] == f"pressure {first['value']:g} outside [800, 1200] on rig-pressure"
    assert not out.loc[~pressure, "is_anomaly"].any()
    # Flagged, but not forced to the top: every score is the one the rules give with no range in effect.
    unranged = Scorer(ProcessingSettings(ranges={"pressure": UNBOUNDED})).score(feats)
    assert not unranged["is_anomaly"].any()
    np.testing.assert_array_equal(out["score"].to_numpy(), unranged["score"].to_numpy())
    assert out.loc[pressure, "score"].max() < 1.0


def test_flagged_readings_carry_their_reason_and_top_features_and_the_columns_keep_their_types() -> None:
    frame = fleet_frame(devices=1, steps=600)
    temp = frame.index[frame["sensor_type"] == "temperature"]
    frame.loc[temp[300], "value"] += 6.0
    cfg = ProcessingSettings()
    out = Scorer(cfg).score(frame_features(frame, cfg, chunk=None))
    assert [str(out[c].dtype) for c in SCORE_COLUMNS] == ["float64", "bool", "str", "str", "object"]
    flagged, calm = out[out["is_anomaly"]], out[~out["is_anomaly"]]
    assert len(flagged) and calm["top_features"].isna().all() and (calm["reason"] == "").all()
    names = [f for f in MODEL_FEATURES if f != "type_code"]
    for _, row in flagged.iterrows():
        # Without a model the top features are the largest in size (noise as its distance from 1, stuck runs
        # in multiples of a stuck run, the reading interval never), in that order.
        size = {f: abs(float(np.nan_to_num(row[f]))) for f in names}
        size["noise_ratio"] = abs(float(np.nan_to_num(row["noise_ratio"])) - 1.0)
        size["stuck_run"] = float(np.nan_to_num(row["stuck_run"])) / 20
        size["dt_s"] = 0.0
        top = row["top_features"]
        assert isinstance(top, list) and len(top) == 3
        assert [size[f] for f in top] == sorted(size.values(), reverse=True)[:3]
        first, second = (f"{f} {float(np.nan_to_num(row[f])):.1f}" for f in top[:2])
        sensor = f"{row['sensor_type']} {row['value']:g}"
        assert row["reason"] == f"{row['anomaly_kind']} on {row['sensor_id']} ({sensor}): {first}, {second}"
    # Nothing flagged: the kind column holds only None (object), the reasons are empty text.
    quiet = Scorer(ProcessingSettings(zscore_threshold=1e9)).score(frame_features(frame.iloc[:50], cfg, chunk=None))
    assert not quiet["is_anomaly"].any() and quiet["anomaly_kind"].dtype == object
    assert quiet["anomaly_kind"].isna().all() and str(quiet["reason"].dtype) == "str"
