"""Pure transforms of the stream job on small DataFrames: dedup and lateness, gaps, episodes, windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from millrace.jobs.window_ledger import WindowLedger
from millrace.processing import episodes, gaps
from millrace.processing.transforms import drop_duplicates_and_late, finish_windows, timestamps_ms, window_partials

T0 = 1_800_000_000_000  # epoch ms


def rows(items: list[tuple[str, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sensor_id": [s for s, _ in items],
            "ts_ms": [T0 + t * 1000 for _, t in items],
            "kafka_partition": 0,
            "kafka_offset": range(len(items)),
        }
    )


def test_duplicates_in_batch_and_seen_before_are_dropped_first_copy_kept() -> None:
    batch = rows([("a", 1), ("a", 2), ("a", 1), ("b", 1), ("a", 3)])
    fresh, late, dups = drop_duplicates_and_late(batch, {"a": np.array([T0 + 3000])}, {}, 60_000)
    assert fresh["kafka_offset"].tolist() == [0, 1, 3]
    assert dups == 2 and late.empty


def test_late_is_judged_per_sensor_in_kafka_order_not_per_batch() -> None:
    # a@100 s, then a@30 s (70 s behind: late), then b@30 s (first of b: fine), then a@50 s (50 s: in time).
    batch = rows([("a", 100), ("a", 30), ("b", 30), ("a", 50)])
    fresh, late, _ = drop_duplicates_and_late(batch, {}, {}, 60_000)
    assert late["kafka_offset"].tolist() == [1]
    assert fresh["kafka_offset"].tolist() == [0, 2, 3]
    # The same with the newest time of a known from an earlier batch.
    fresh, late, _ = drop_duplicates_and_late(rows([("a", 30)]), {}, {"a": T0 + 100_000}, 60_000)
    assert len(late) == 1 and fresh.empty


def sensor_rows(times: list[float], values: list[float] | None = None) -> pd.DataFrame:
    values = values or [float(t) for t in times]
    return pd.DataFrame(
        {
            "sensor_id": "s",
            "sensor_type": "temperature",
            "location": "l",
            "unit": "C",
            "ts_ms": [T0 + int(t * 1000) for t in times],
            "value": values,
        }
    )


def test_short_gap_filled_on_the_grid_long_gap_reported() -> None:
    times = [0, 1, 2, 3, 6, 7, 8, 20, 21]  # 2 missing (4, 5) then 11 missing (9..19)
    result, tracks = gaps.fill_gaps(sensor_rows(times), {}, max_interpolated_gap=5, inactive_after_s=60)
    assert result.interpolated["ts_ms"].tolist() == [T0 + 4000, T0 + 5000]
    assert result.interpolated["value"].tolist() == [4.0, 5.0]
    assert (result.gaps_interpolated, result.gaps_inactive) == (1, 1)
    assert tracks["s"].last_ms == T0 + 21_000 and tracks["s"].interval_s == 1.0


def test_interval_learned_across_batches_and_gap_between_batches() -> None:
    _, tracks = gaps.fill_gaps(sensor_rows([0, 2, 4, 6]), {}, max_interpolated_gap=5, inactive_after_s=60)
    result, _ = gaps.fill_gaps(sensor_rows([10, 12]), tracks, max_interpolated_gap=5, inactive_after_s=60)
    assert result.interpolated["ts_ms"].tolist() == [T0 + 8000]


def test_silent_sensor_goes_inactive_by_event_time() -> None:
    both = pd.concat([sensor_rows([0, 1]), sensor_rows([0, 1, 90]).assign(sensor_id="t")])
    result, tracks = gaps.fill_gaps(both, {}, max_interpolated_gap=5, inactive_after_s=60)
    assert result.went_inactive == ["s"] and tracks["t"].active
    assert gaps.sweep_inactive(tracks)[0] == ["t"]


def scored(items: list[tuple[str, int, bool, float, str | None]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sensor_id": [i[0] for i in items],
            "ts_ms": [T0 + i[1] * 1000 for i in items],
            "is_anomaly": [i[2] for i in items],
            "score": [i[3] for i in items],
            "anomaly_kind": [i[4] for i in items],
            "reason": "r",
            "top_features": [["z"]] * len(items),
        }
    )


def test_one_alert_per_episode_even_with_many_readings_in_one_batch() -> None:
    batch = scored(
        [
            ("a", 1, True, 7.0, "spike"),
            ("b", 2, True, 9.0, "level_shift"),
            ("a", 3, False, 0.1, None),
            ("a", 4, True, 6.5, "spike"),
        ]
    )
    touched, open_ep = episodes.update(batch, None, device_id="d", location="l", newest_ms=T0 + 4000, quiet_s=30)
    assert len(touched) == 1 and open_ep is touched[0]
    alert = episodes.to_alert(touched[0], device_id="d", zscore_threshold=6.0)
    assert alert["sensor_ids"] == ["a", "b"] and alert["kind"] == "level_shift" and alert["readings"] == 3
    assert alert["status"] == "open" and alert["alert_id"] == episodes.alert_id("d", T0 + 1000)
    # Quiet for 30 s of event time: the episode closes; a new anomaly opens a second one.
    later = scored([("a", 40, False, 0.0, None), ("a", 80, True, 8.0, "spike")])
    touched, open_ep = episodes.update(later, open_ep, device_id="d", location="l", newest_ms=T0 + 80_000, quiet_s=30)
    assert [episodes.to_alert(e, device_id="d", zscore_threshold=6.0)["status"] for e in touched] == ["closed", "open"]
    assert touched[0].closed_ms == T0 + 34_000 and open_ep is touched[1]


def readings_frame() -> pd.DataFrame:
    ts = pd.to_datetime([T0, T0 + 10_000, T0 + 59_999, T0 + 60_000, T0 + 5_000], unit="ms", utc=True)
    return pd.DataFrame(
        {
            "sensor_id": ["a", "a", "a", "a", "b"],
            "sensor_type": "temperature",
            "location": "l1",
            "timestamp": ts,
            "value": [1.0, 3.0, 5.0, 10.0, 7.0],
            "is_anomaly": [False, True, False, False, True],
            "interpolated": [False, False, False, False, False],
        }
    )


def test_windows_per_sensor_and_type_location() -> None:
    out = finish_windows(window_partials(readings_frame(), 60), 60)
    a0 = out[(out["scope"] == "sensor") & (out["key"] == "a")].iloc[0]
    assert (a0["count"], a0["mean"], a0["min"], a0["max"], a0["anomaly_count"]) == (3, 3.0, 1.0, 5.0, 1)
    assert a0["stddev"] == 2.0 and a0["window_end"] - a0["window_start"] == pd.Timedelta(seconds=60)
    tl = out[(out["scope"] == "type_location") & (out["key"] == "temperature|l1")]
    assert tl["count"].tolist() == [4, 1] and tl["anomaly_count"].tolist() == [2, 0]


def test_ledger_merges_batches_and_a_replayed_batch_replaces_itself(tmp_path: Path) -> None:
    frame = readings_frame()
    ledger = WindowLedger(tmp_path / "w.db")
    ledger.record(0, window_partials(frame.iloc[:2], 60))
    merged = ledger.record(1, window_partials(frame.iloc[2:], 60))
    again = ledger.record(1, window_partials(frame.iloc[2:], 60))  # replay after a crash
    whole = finish_windows(window_partials(frame, 60), 60).sort_values(["scope", "key", "window_start"])
    for m in (merged, again):
        got = finish_windows(m, 60).sort_values(["scope", "key", "window_start"])
        assert got.reset_index(drop=True).equals(whole.reset_index(drop=True))
    assert ledger.prune(T0 + 60_000) > 0
    ledger.close()


def _random_readings(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sensors = [f"dev-{d}-{t}" for d in range(4) for t in ("temperature", "humidity", "current")]
    sid = rng.choice(sensors, n)
    return pd.DataFrame(
        {
            "sensor_id": pd.array(sid, dtype="str"),
            "sensor_type": pd.array([s.rsplit("-", 1)[1] for s in sid], dtype="str"),
            "location": rng.choice(np.array(["hall", "roof", None], dtype=object), n),
            "timestamp": pd.to_datetime(T0 + rng.integers(0, 300_000, n), unit="ms", utc=True),
            "value": rng.normal(20.0, 5.0, n),
            "is_anomaly": rng.choice(np.array([True, False, None], dtype=object), n),
            "interpolated": rng.random(n) < 0.1,
        }
    )


def _reference_partials(readings: pd.DataFrame, window_s: int) -> pd.DataFrame:
    """The window partials by a plain pandas groupby over the string keys: what window_partials must equal."""
    m = readings[~readings["interpolated"].astype(bool)]
    width = window_s * 1000
    base = pd.DataFrame(
        {
            "sensor_id": m["sensor_id"].to_numpy(dtype=object),
            "sensor_type": m["sensor_type"].to_numpy(dtype=object),
            "location": m["location"].fillna("").to_numpy(dtype=object),
            "window_start": (m["timestamp"].astype("datetime64[ms, UTC]").astype("int64").to_numpy() // width) * width,
            "value": m["value"].to_numpy(dtype="float64"),
            "sq": m["value"].to_numpy(dtype="float64") ** 2,
            "anomaly": m["is_anomaly"].fillna(False).astype(bool).astype("int64").to_numpy(),
        }
    )
    parts = []
    for scope, keys in (
        ("sensor", ["sensor_id", "sensor_type", "location"]),
        ("type_location", ["sensor_type", "location"]),
    ):
        agg = base.groupby([*keys, "window_start"], sort=True).agg(
            count=("value", "size"),
            sum=("value", "sum"),
            sumsq=("sq", "sum"),
            min=("value", "min"),
            max=("value", "max"),
            anomaly_count=("anomaly", "sum"),
        )
        agg = agg.reset_index()
        agg["key"] = agg["sensor_id"] if scope == "sensor" else agg["sensor_type"] + "|" + agg["location"]
        agg["scope"] = scope
        parts.append(agg)
    columns = ["scope", "key", "sensor_type", "location", "window_start", "count", "sum", "sumsq", "min", "max",
               "anomaly_count"]  # fmt: skip
    return pd.concat(parts, ignore_index=True)[columns]


def test_window_partials_equal_a_plain_groupby_value_for_value() -> None:
    for seed, n in ((1, 2_000), (2, 37), (3, 1)):
        readings = _random_readings(seed, n).sample(frac=1.0, random_state=seed)
        got = window_partials(readings, 60)
        want = _reference_partials(readings, 60)
        assert got.columns.tolist() == want.columns.tolist()
        assert len(got) == len(want) > 0
        for column in want.columns:  # exact: the same groups summed in the same order
            assert got[column].tolist() == want[column].tolist(), column


def test_dedup_over_partitions_out_of_kafka_order_keeps_each_reading_once_in_kafka_order() -> None:
    # Two partitions, rows shuffled: the verdicts follow (partition, offset) order whatever the rows' order.
    items = [("a", 10), ("a", 10), ("a", 100), ("a", 20), ("b", 10), ("b", 5), ("b", 10), ("a", 100)]
    batch = rows(items).assign(kafka_partition=[0, 0, 0, 0, 1, 1, 1, 1], kafka_offset=[0, 1, 2, 3, 0, 1, 2, 3])
    shuffled = batch.iloc[[5, 2, 7, 0, 6, 3, 1, 4]]
    fresh, late, dups = drop_duplicates_and_late(shuffled, {"b": np.array([T0 + 5000])}, {}, 60_000)
    # Partition 0: a@10, a@10 (duplicate), a@100, a@20 (80 s behind a@100: late). Partition 1: b@10, b@5 (seen
    # before), b@10 (duplicate), a@100 (duplicate of partition 0's, which comes first in that order).
    assert list(zip(fresh["kafka_partition"], fresh["kafka_offset"], strict=True)) == [(0, 0), (0, 2), (1, 0)]
    assert list(zip(late["kafka_partition"], late["kafka_offset"], strict=True)) == [(0, 3)]
    assert dups == 4


def _reference_admission(
    batch: pd.DataFrame, seen: dict[str, np.ndarray], newest: dict[str, int], lateness_ms: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
    """drop_duplicates_and_late row by row, in Kafka order: (fresh positions, late positions, duplicates)."""
    fresh, late, dups = [], [], 0
    top = dict(newest)
    keys = {sid: set(times.tolist()) for sid, times in seen.items()}
    for row in batch.sort_values(["kafka_partition", "kafka_offset"]).itertuples():
        sid, ts, position = row.sensor_id, int(row.ts_ms), (int(row.kafka_partition), int(row.kafka_offset))
        prior = top.get(sid)
        top[sid] = ts if prior is None else max(prior, ts)
        if prior is not None and ts < prior - lateness_ms:
            late.append(position)
        elif ts in keys.setdefault(sid, set()):
            dups += 1
        else:
            keys[sid].add(ts)
            fresh.append(position)
    return fresh, late, dups


def test_dedup_and_lateness_equal_a_row_by_row_pass_on_random_batches() -> None:
    rng = np.random.default_rng(7)
    for case in range(60):
        n = int(rng.integers(1, 300))
        sensors = [f"s{i}" for i in range(int(rng.integers(1, 6)))]
        batch = pd.DataFrame(
            {
                "sensor_id": pd.array(rng.choice(sensors, n), dtype="str" if case % 2 else "object"),
                "ts_ms": T0 + rng.integers(0, 120, n) * 1000,
                "kafka_partition": rng.integers(0, 3, n).astype("int32"),
                "kafka_offset": np.arange(n),
            }
        ).sample(frac=1.0, random_state=case)
        seen = {s: np.unique(T0 + rng.integers(0, 120, 10) * 1000) for s in sensors[::2]}
        newest = {s: T0 + int(rng.integers(0, 150)) * 1000 for s in sensors[1::2]}
        fresh, late, dups = drop_duplicates_and_late(batch, seen, newest, 30_000)
        want_fresh, want_late, want_dups = _reference_admission(batch, seen, newest, 30_000)
        assert list(zip(fresh["kafka_partition"], fresh["kafka_offset"], strict=True)) == want_fresh
        assert list(zip(late["kafka_partition"], late["kafka_offset"], strict=True)) == want_late
        assert dups == want_dups


def test_timestamps_ms_of_every_unit_naive_aware_and_nat() -> None:
    ns = [-1, -1_000_001, 1_500_000, 1_800_000_000_123_456_789, None]
    want = [-1, -2, 1, 1_800_000_000_123, np.iinfo("int64").min]  # floored, as pandas converts units
    for unit in ("s", "ms", "us", "ns"):
        naive = pd.Series(pd.to_datetime(ns, unit="ns")).dt.as_unit(unit)
        for series in (naive, naive.dt.tz_localize("UTC").dt.tz_convert("Europe/Paris")):
            expected = pd.to_datetime(series, utc=True).astype("datetime64[ms, UTC]").astype("int64").to_numpy()
            assert timestamps_ms(series).tolist() == expected.tolist()
            if unit != "s":
                assert timestamps_ms(series).tolist() == want
    text = pd.Series(["2026-01-01T00:00:00.123456Z", "2026-01-01T01:00:00.5+01:00"])
    assert timestamps_ms(text).tolist() == [1_767_225_600_123, 1_767_225_600_500]
