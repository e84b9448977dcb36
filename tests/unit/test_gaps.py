"""Gaps (processing.gaps.fill_gaps) over many sensors at once: the same points, counts and tracks as advancing
each sensor on its own, in sensor_id order."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from millrace.processing import gaps
from millrace.processing.state import Track

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in epoch ms


def readings(rows: list[tuple[str, float, float]], *, device: bool = True) -> pd.DataFrame:
    """(sensor, seconds after T0, value) rows as the step's fresh readings; sensor "sN" belongs to device dN%2."""
    frame = pd.DataFrame(
        {
            "sensor_id": pd.array([r[0] for r in rows], dtype="str"),
            "sensor_type": pd.array([f"type-{r[0]}" for r in rows], dtype="str"),
            "location": pd.array(["loc"] * len(rows), dtype="str"),
            "unit": pd.array(["C"] * len(rows), dtype="str"),
            "ts_ms": np.array([T0 + int(r[1] * 1000) for r in rows], dtype="int64"),
            "value": np.array([r[2] for r in rows], dtype="float64"),
        }
    )
    if device:
        frame["device_id"] = pd.array([f"d{int(r[0][1:]) % 2}" for r in rows], dtype="str")
    return frame


def one_sensor_at_a_time(
    fresh: pd.DataFrame, tracks: dict[str, Track], max_gap: int, inactive_after_s: float
) -> tuple[tuple[list[tuple[str, int, float, str]], int, int, list[str], list[str]], dict[str, Track]]:
    """The rule, sensor by sensor: ((interpolated rows, filled gaps, long gaps, went inactive, touched), tracks)."""
    new, points, filled, long_gaps, touched = dict(tracks), [], 0, 0, []
    for sid in sorted(set(fresh["sensor_id"])):
        rows = fresh[fresh["sensor_id"] == sid].sort_values("ts_ms", kind="stable")
        ts, values, prev = rows["ts_ms"].to_numpy(), rows["value"].to_numpy(), new.get(sid)
        if prev is not None:
            ahead = ts > prev.last_ms
            if not ahead.any():
                continue
            ts, values = np.concatenate(([prev.last_ms], ts[ahead])), np.concatenate(([prev.last_value], values[ahead]))
        steps, known = np.diff(ts) / 1000.0, prev.interval_s if prev is not None else None
        usable = steps[steps <= 3.0 * known] if known else steps
        usable = usable[usable > 0]
        interval = known
        if len(usable):
            median = float(np.median(usable))
            interval = median if not known else 0.7 * known + 0.3 * median
        reference = known or interval
        for i in range(len(steps)):
            if not reference or steps[i] <= 1.5 * reference or round(steps[i] / reference) - 1 < 1:
                continue
            missing = round(steps[i] / reference) - 1
            if missing > max_gap:
                long_gaps += 1
                continue
            filled += 1
            for k in range(1, missing + 1):
                frac = k / (missing + 1)
                at = int(round(ts[i] + frac * (ts[i + 1] - ts[i])))
                points.append((sid, at, float(values[i] + frac * (values[i + 1] - values[i])), f"type-{sid}"))
        first = rows.iloc[0]
        device = str(first["device_id"]) if "device_id" in rows else ""
        old = prev or Track(f"type-{sid}", "loc", "C", device, 0, 0.0)
        new[sid] = dataclasses.replace(
            old, last_ms=int(ts[-1]), last_value=float(values[-1]), interval_s=interval, active=True
        )
        touched.append(sid)
    went_inactive, new = gaps.inactive_by_event_time(new, inactive_after_s)
    return (points, filled, long_gaps, went_inactive, touched), new


def outcome(
    result: gaps.GapResult,
) -> tuple[list[tuple[str, int, float, str]], int, int, list[str], list[str]]:
    frame = result.interpolated
    points = (
        list(
            zip(frame["sensor_id"], frame["ts_ms"].tolist(), frame["value"].tolist(), frame["sensor_type"], strict=True)
        )
        if len(frame)
        else []
    )
    return points, result.gaps_interpolated, result.gaps_inactive, result.went_inactive, result.touched


def test_sensors_with_and_without_tracks_advance_together() -> None:
    known = Track("type-s1", "loc", "C", "d1", T0 + 10_000, 10.0, interval_s=2.0)
    behind = Track("type-s3", "loc", "C", "d1", T0 + 50_000, 5.0, interval_s=1.0, active=False)
    fresh = readings(
        [
            ("s2", 3, 3.0), ("s2", 0, 0.0), ("s2", 1, 1.0), ("s2", 2, 2.0), ("s2", 5, 5.0),  # one missing at 4 s
            ("s1", 16, 16.0), ("s1", 18, 18.0), ("s1", 20, 20.0),  # two missing (12, 14) after the track's last one
            ("s3", 40, 4.0),  # older than its track: moves nothing
            ("s4", 0, 1.0), ("s4", 30, 1.0),  # one step: its own interval, no gap
        ]
    )  # fmt: skip
    result, tracks = gaps.fill_gaps(fresh, {"s3": behind, "s1": known}, max_interpolated_gap=5, inactive_after_s=60)
    assert outcome(result) == (
        [
            ("s1", T0 + 12_000, 12.0, "type-s1"),
            ("s1", T0 + 14_000, 14.0, "type-s1"),
            ("s2", T0 + 4_000, 4.0, "type-s2"),
        ],
        2,
        0,
        [],
        ["s1", "s2", "s4"],
    )
    assert list(tracks) == ["s3", "s1", "s2", "s4"]
    assert tracks["s3"] is behind
    assert tracks["s1"] == dataclasses.replace(
        known, last_ms=T0 + 20_000, last_value=20.0, interval_s=0.7 * 2.0 + 0.3 * 2.0
    )
    assert tracks["s2"] == Track("type-s2", "loc", "C", "d0", T0 + 5_000, 5.0, interval_s=1.0)
    assert tracks["s4"] == Track("type-s4", "loc", "C", "d0", T0 + 30_000, 1.0, interval_s=30.0)
    assert str(result.interpolated["sensor_id"].dtype) == "str"


@pytest.mark.parametrize("seed", range(4))
def test_a_batch_of_many_sensors_advances_as_each_sensor_alone(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(80):
        rows: list[tuple[str, float, float]] = []
        tracks: dict[str, Track] = {}
        for s in range(int(rng.integers(1, 7))):
            sid, step = f"s{s}", float(rng.choice([0.5, 1.0, 2.0, 5.0]))
            offsets = rng.choice(
                [step, step, step, 2 * step, 3.4 * step, 6 * step, 0.0, 40 * step], int(rng.integers(0, 20))
            )
            times = float(rng.integers(-20, 20)) + np.cumsum(offsets)
            rows += [(sid, float(t), float(rng.normal())) for t in rng.permutation(times)]
            if rng.random() < 0.5:
                interval = rng.choice([None, 0.7, 1.0, 2.0])
                tracks[sid] = Track(
                    f"type-{sid}", "loc", "C", f"d{s % 2}", T0 + int(rng.integers(-10, 30)) * 1000, float(rng.normal()),
                    interval_s=None if interval is None else float(interval), active=bool(rng.random() < 0.8),
                )  # fmt: skip
        fresh = readings(rows, device=bool(rng.random() < 0.8))
        max_gap, inactive_after_s = int(rng.choice([0, 2, 5])), float(rng.choice([5.0, 60.0]))
        expected, expected_tracks = one_sensor_at_a_time(fresh, tracks, max_gap, inactive_after_s)
        result, after = gaps.fill_gaps(fresh, tracks, max_interpolated_gap=max_gap, inactive_after_s=inactive_after_s)
        assert outcome(result) == expected
        assert list(after.items()) == list(expected_tracks.items())
