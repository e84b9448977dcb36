"""The simulator's normal behaviour, anomaly ground truth, determinism and wire format (no network)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import orjson
import pandas as pd
import pytest

from millrace.iot.fleet import NOISE_SIGMA, FleetConfig
from millrace.iot.simulator import Simulator, simulate_frame
from millrace.records import ANOMALY_KINDS, NORMAL, SENSOR_TYPES, SensorReading

START = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)


def _cfg(**kw: object) -> FleetConfig:
    base: dict[str, object] = {"devices": 4, "locations": 2, "start": START, "seed": 7}
    base.update(kw)
    return FleetConfig(**base)  # type: ignore[arg-type]


def _paired(kind: str, rate: float = 0.2, duration_s: float = 4 * 3600, interval_s: float = 5.0) -> pd.DataFrame:
    """Readings with only ``kind`` anomalies, joined to the same fleet without anomalies (same noise)."""
    anomalous = simulate_frame(
        _cfg(anomaly_rate=rate, anomaly_kinds=(kind,), interval_s=interval_s), duration_s=duration_s
    )
    clean = simulate_frame(_cfg(anomaly_rate=0.0, interval_s=interval_s), duration_s=duration_s)
    both = anomalous.merge(clean[["sensor_id", "seq", "value"]], on=["sensor_id", "seq"], suffixes=("", "_clean"))
    both["sigma"] = both["sensor_type"].map(NOISE_SIGMA)
    both["diff_sigma"] = (both["value"] - both["value_clean"]) / both["sigma"]
    return both


def test_frame_columns_types_and_order() -> None:
    frame = simulate_frame(_cfg(), duration_s=120)
    assert list(frame.columns) == [
        "sensor_id", "device_id", "sensor_type", "value", "unit", "location", "timestamp", "status",
        "sensor_model", "battery_level", "seq", "ground_truth",
    ]  # fmt: skip
    assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert len(frame) <= 4 * 6 * 120 and frame["timestamp"].is_monotonic_increasing
    assert set(frame["sensor_type"]) == set(SENSOR_TYPES)
    assert frame["sensor_id"].iloc[0] == "dev-0001-temperature" and frame["location"].iloc[6] == "loc-02"
    assert frame["timestamp"].iloc[0] == pd.Timestamp(START)
    assert set(frame["ground_truth"]) <= {NORMAL, *ANOMALY_KINDS}


def test_same_seed_same_data_and_shorter_run_is_a_prefix() -> None:
    a = simulate_frame(_cfg(anomaly_rate=0.1), duration_s=900)
    b = simulate_frame(_cfg(anomaly_rate=0.1), duration_s=900)
    pd.testing.assert_frame_equal(a, b)
    c = simulate_frame(_cfg(anomaly_rate=0.1, seed=8), duration_s=900)
    assert not np.array_equal(a["value"].to_numpy(), c["value"].to_numpy())
    head = simulate_frame(_cfg(anomaly_rate=0.1), count=1000)
    pd.testing.assert_frame_equal(head, a.iloc[:1000].reset_index(drop=True))
    faulty = _cfg(anomaly_rate=0.1, duplicate=0.05, out_of_order=0.05, late=0.05, malformed=0.05, impossible=0.05)
    first = [(m.key, m.value, m.kind) for m in Simulator(faulty, duration_s=600).messages()]
    second = [(m.key, m.value, m.kind) for m in Simulator(faulty, duration_s=600).messages()]
    assert first == second


def test_messages_match_frame_and_the_reading_contract() -> None:
    cfg = _cfg(anomaly_rate=0.1)
    frame = simulate_frame(cfg, duration_s=600)
    messages = list(Simulator(cfg, duration_s=600).messages())
    assert len(messages) == len(frame)
    for msg, row in zip(messages, frame.itertuples(index=False), strict=True):
        data = orjson.loads(msg.value)
        assert SensorReading.from_dict(data).to_dict() == data
        assert msg.key == data["sensor_id"] == row.sensor_id
        assert msg.kind == data["ground_truth"] == row.ground_truth
        assert (msg.sensor_type, msg.location, msg.device_id) == (
            row.sensor_type,
            row.location,
            row.device_id,
        )
        assert data["value"] == row.value and data["seq"] == row.seq
        assert data["timestamp"] == row.timestamp.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        assert data["metadata"] == {
            "unit": row.unit,
            "sensor_model": row.sensor_model,
            "battery_level": row.battery_level,
        }


def test_normal_behaviour_correlations_and_noise() -> None:
    frame = simulate_frame(_cfg(anomaly_rate=0.0, interval_s=10.0), duration_s=12 * 3600)
    assert set(frame["ground_truth"]) == {NORMAL}
    for _, device in frame.groupby("device_id"):
        wide = device.pivot(index="timestamp", columns="sensor_type", values="value")
        assert wide["current"].corr(wide["vibration"]) > 0.8  # both rise under load
        assert wide["temperature"].corr(wide["humidity"]) < -0.5  # humidity falls as temperature rises
        # Step-to-step changes are mostly noise: their std is close to sqrt(2) sigma.
        for sensor_type in ("temperature", "voltage"):
            step_std = wide[sensor_type].diff().std()
            assert 1.1 < step_std / NOISE_SIGMA[sensor_type] < 2.0


def test_anomaly_share_follows_the_rate() -> None:
    frame = simulate_frame(_cfg(devices=10, anomaly_rate=0.05, interval_s=2.0), duration_s=24 * 3600)
    expected = 10 * 6 * 24 * 3600 / 2.0
    share = (frame["ground_truth"] != NORMAL).mean() + (expected - len(frame)) / expected  # dropouts: no rows
    assert 0.03 < share < 0.07
    assert set(frame["ground_truth"]) == {NORMAL, *ANOMALY_KINDS}


@pytest.mark.parametrize("kind", [k for k in ANOMALY_KINDS if k != "dropout"])
def test_ground_truth_matches_what_the_anomaly_did(kind: str) -> None:
    both = _paired(kind)
    labelled = both[both["ground_truth"] == kind]
    normal = both[both["ground_truth"] == NORMAL]
    assert len(labelled) > 20
    assert set(both["ground_truth"]) == {NORMAL, kind}
    assert (normal["diff_sigma"].abs() < 1e-6 / normal["sigma"] + 0.01).all()  # untouched (up to rounding)
    diff = labelled["diff_sigma"].abs()
    if kind == "spike":
        assert (diff >= 7.9).all() and (diff <= 15.1).all()
    elif kind == "level_shift":
        assert (diff >= 4.9).all() and (diff <= 10.1).all()
    elif kind == "drift":
        for _, run in labelled.groupby("sensor_id"):
            assert run["diff_sigma"].abs().max() > 7.9
        assert (diff <= 20.1).all()
    elif kind == "noise_burst":
        assert diff.std() > 2.0
    elif kind == "stuck":
        for _, sensor in both.groupby("sensor_id"):
            stuck = sensor["ground_truth"].eq(kind).to_numpy()
            values = sensor["value"].to_numpy()
            starts = np.flatnonzero(stuck & ~np.r_[False, stuck[:-1]])
            for s in starts:
                end = s
                while end + 1 < len(stuck) and stuck[end + 1]:
                    end += 1
                assert s > 0 and (values[s : end + 1] == values[s - 1]).all()
    elif kind == "correlation_break":
        assert set(labelled["sensor_type"]) == {"temperature"}
        assert (labelled["diff_sigma"] > 0).all() and labelled["diff_sigma"].max() > 9.9
        rows = labelled[["device_id", "seq"]]
        vib = both[both["sensor_type"] == "vibration"].merge(rows, on=["device_id", "seq"])
        assert len(vib) == len(labelled) and (vib["diff_sigma"].abs() < 0.01).all()  # vibration stays normal


def test_dropout_emits_no_readings_and_labels_the_reading_after_the_gap() -> None:
    cfg_kw = {"anomaly_kinds": ("dropout",), "interval_s": 5.0}
    frame = simulate_frame(_cfg(anomaly_rate=0.2, **cfg_kw), duration_s=4 * 3600)
    full = 4 * 6 * (4 * 3600 // 5)
    assert len(frame) < full
    gaps = 0
    for _, sensor in frame.groupby("sensor_id"):
        seq = sensor["seq"].to_numpy()
        jump = np.diff(seq) > 1
        labelled = sensor["ground_truth"].to_numpy()[1:] == "dropout"
        assert (jump == labelled).all()  # a reading is labelled dropout exactly when a gap precedes it
        gaps += int(jump.sum())
    assert gaps > 3
    assert (frame["ground_truth"] == "dropout").sum() == gaps


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="anomaly kinds"):
        FleetConfig(anomaly_kinds=("explosion",))
    with pytest.raises(ValueError, match="fault rate"):
        FleetConfig(malformed=2.0)
    with pytest.raises(ValueError, match="sensor types"):
        FleetConfig(sensor_types=("smell",))


def test_shards_partition_the_fleet_by_device() -> None:
    cfg = _cfg(devices=5, anomaly_rate=0.1)
    whole = [(m.key, m.value) for m in Simulator(cfg, count=7000).messages()]
    shards = [[(m.key, m.value) for m in Simulator(cfg, count=7000, shard=(i, 3)).messages()] for i in range(3)]
    assert sorted(whole) == sorted(x for shard in shards for x in shard)
    for i, shard in enumerate(shards):
        assert {int(key.split("-")[1]) % 3 for key, _ in shard} == {(i + 1) % 3}  # dev-0001 is device 0
        assert shard == [x for x in whole if x in set(shard)]  # order kept within a shard
    with pytest.raises(ValueError, match="shard"):
        Simulator(cfg, count=10, shard=(3, 3))
