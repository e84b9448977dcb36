"""The typed state of the stateful step (processing.state) and each transition of it: every transition returns
new state and leaves its input as it was, the state round-trips through its one text column, another version
or an unreadable document starts fresh, and a whole step replayed from the committed state changes nothing."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from millrace.config import ProcessingSettings, load_settings
from millrace.processing import episodes, features, gaps, stateful
from millrace.processing.state import (
    STATE_VERSION,
    BucketState,
    DeviceState,
    Episode,
    SensorState,
    Track,
    dumps,
    loads,
    observe_devices,
    observe_sensors,
    pack_times,
)
from tests.unit.test_transforms_stateful import FakeState, _chunks, _fleet, make_step, payloads, run, step_input

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in epoch ms


def track(sensor_id: str = "d1-t", device_id: str = "d1", last_ms: int = T0, **kw: Any) -> Track:
    return Track(
        sensor_type=kw.pop("sensor_type", "temperature"),
        location="loc-1",
        unit="C",
        device_id=device_id,
        last_ms=last_ms,
        last_value=kw.pop("last_value", 20.0),
        **kw,
    )


def episode(**kw: Any) -> Episode:
    fields = {
        "id": episodes.alert_id("d1", T0),
        "opened_ms": T0,
        "updated_ms": T0 + 4_000,
        "sensor_ids": ("d1-t", "d1-p"),
        "kind": "spike",
        "score": 7.5,
        "reason": "spike on d1-t",
        "top_features": ("z", "robust_z"),
        "readings": 3,
        "location": "loc-1",
    }
    return Episode(**{**fields, **kw})


def bucket() -> BucketState:
    """Two devices: d1 with an open episode, feature state and a scorer history; d2 swept, without."""
    horizon = np.array([T0 - 2_000, T0 - 1_000, T0], dtype="int64")
    return BucketState(
        sensors={
            "d1-t": SensorState(newest_ms=T0, seen=pack_times(horizon), track=track(interval_s=1.0)),
            "d2-t": SensorState(
                newest_ms=T0 - 500,
                seen=pack_times(horizon - 500),
                track=track("d2-t", "d2", T0 - 500, interval_s=None, active=False),
            ),
        },
        devices={
            "d1": DeviceState(
                newest_ms=T0,
                location="loc-1",
                seen_at_ms=1_800_000_000_000,
                features=feature_state(),
                episode=episode(),
                history=[[1.0, 2.0], [3.0, 4.0]],
            ),
            "d2": DeviceState(newest_ms=T0 - 500, location="loc-2", seen_at_ms=1_799_999_000_000, swept=True),
        },
    )


def feature_state() -> dict[str, Any]:
    """A device's feature state after 2 blocks and a bit of readings of two partner sensors."""
    steps = 2 * features.BLOCK + 13
    times = pd.Timestamp("2026-01-01T00:00:00Z") + pd.to_timedelta(np.arange(steps), unit="s")
    frame = pd.concat(
        pd.DataFrame(
            {
                "sensor_id": f"d1-{kind[0]}",
                "device_id": "d1",
                "sensor_type": kind,
                "location": "loc-1",
                "timestamp": times,
                "value": level + np.sin(np.arange(steps) / 7.0),
                "interpolated": False,
            }
        )
        for kind, level in (("temperature", 20.0), ("humidity", 50.0))
    )
    _, st = features.device_step(frame, features.empty_state(), ProcessingSettings())
    return st


# ---------------------------------------------------------------------------------------------- persistence
def test_state_round_trips_through_its_text_column() -> None:
    state = bucket()
    text = dumps(state)
    doc = orjson.loads(text)
    assert (
        doc["v"] == STATE_VERSION and list(doc["sensors"]) == ["d1-t", "d2-t"] and list(doc["devices"]) == ["d1", "d2"]
    )
    assert doc["devices"]["d1"]["episode"]["sensor_ids"] == ["d1-t", "d1-p"]
    again = loads(text)
    assert again == state
    assert isinstance(again.devices["d1"].episode, Episode) and again.devices["d1"].episode.sensor_ids == (
        "d1-t",
        "d1-p",
    )
    assert (again.sensors["d1-t"].seen_times() == [T0 - 2_000, T0 - 1_000, T0]).all()
    assert dumps(again) == text  # byte for byte: a replay writes the same state
    kept = again.devices["d1"].features["device"]  # the device's feature arrays, as base64 of their bytes
    assert kept.cols == ("d1-h", "d1-t") and kept.pairs == (("d1-h", "d1-t"),) and kept.n == 2 * features.BLOCK + 13
    assert len(kept.blocks[0]) == 2 and not kept.tail.flags.writeable
    assert loads(dumps(BucketState())) == BucketState()


@pytest.mark.parametrize(
    "text",
    [
        None,
        orjson.dumps({"v": STATE_VERSION - 1, "newest": {}, "seen": {}, "tracks": {}, "devices": {}}).decode(),
        orjson.dumps({"v": STATE_VERSION + 1, "sensors": {}, "devices": {}}).decode(),
        "{not json",
        "null",
        "[1, 2]",
        # this version, but a track with a field it does not have: unreadable
        dumps(bucket()).replace('"last_value"', '"last_v"'),
        # this version, but a device without its location
        dumps(bucket()).replace('"location":"loc-2",', ""),
    ],
    ids=["none", "older", "newer", "not-json", "null", "list", "foreign-field", "missing-field"],
)
def test_another_version_or_an_unreadable_document_starts_fresh(text: str | None) -> None:
    assert loads(text) == BucketState()


def test_the_state_is_frozen() -> None:
    state = bucket()
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.devices["d1"].swept = True  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.sensors["d1-t"].track.active = False  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------- dedup horizon
def test_dedup_horizon_moves_with_the_newest_event_time_and_keeps_the_lateness() -> None:
    before = bucket()
    text = dumps(before)
    new_tracks = {**before.tracks(), "d1-t": track(last_ms=T0 + 30_000, interval_s=1.0), "d3-t": track("d3-t", "d3")}
    times = {"d1-t": np.array([T0 + 30_000, T0 + 10_000, T0 - 1_000]), "d3-t": np.array([T0 + 5, T0 + 3])}
    sensors = observe_sensors(before.sensors, times, new_tracks, lateness_ms=20_000)
    assert list(sensors) == ["d1-t", "d2-t", "d3-t"]
    d1 = sensors["d1-t"]
    # Newest 30 s: the horizon keeps what is no older than 10 s (T0 - 2 s, T0 - 1 s and T0 fell out).
    assert d1.newest_ms == T0 + 30_000 and d1.seen_times().tolist() == [T0 + 10_000, T0 + 30_000]
    assert d1.track is new_tracks["d1-t"]
    # A sensor without fresh readings keeps its horizon: nothing newer arrived to move it.
    assert sensors["d2-t"] is before.sensors["d2-t"]
    # A new sensor: its own times, sorted; an older reading never moves the newest time back.
    assert sensors["d3-t"].newest_ms == T0 + 5 and sensors["d3-t"].seen_times().tolist() == [T0 + 3, T0 + 5]
    assert dumps(before) == text  # the input is unchanged


def test_devices_seen_now_are_no_longer_swept() -> None:
    before = bucket()
    text = dumps(before)
    devices = observe_devices(
        before.devices, {"d2": T0 - 9_000, "d3": T0 + 1}, {"d2": "loc-9", "d3": "loc-3"}, now_ms=1_800_000_060_000
    )
    assert list(devices) == ["d1", "d2", "d3"] and devices["d1"] is before.devices["d1"]
    # d2's newest event time stays (the batch brought only older readings); it is seen now, no longer swept.
    assert devices["d2"] == DeviceState(newest_ms=T0 - 500, location="loc-9", seen_at_ms=1_800_000_060_000)
    assert devices["d3"] == DeviceState(newest_ms=T0 + 1, location="loc-3", seen_at_ms=1_800_000_060_000)
    assert dumps(before) == text


# ---------------------------------------------------------------------------------------------- gap track
def readings(sensor_id: str, seconds: list[float], device_id: str = "d1") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sensor_id": sensor_id,
            "device_id": device_id,
            "sensor_type": "temperature",
            "location": "loc-1",
            "unit": "C",
            "ts_ms": [T0 + int(s * 1000) for s in seconds],
            "value": [float(s) for s in seconds],
        }
    )


def test_gap_track_advances_in_a_new_mapping() -> None:
    result, tracks = gaps.fill_gaps(readings("a", [0, 2, 4]), {}, max_interpolated_gap=5, inactive_after_s=60)
    assert tracks == {"a": track("a", last_ms=T0 + 4_000, last_value=4.0, interval_s=2.0)}
    assert result.touched == ["a"] and result.interpolated.empty
    before = dict(tracks)
    # 10 s later: four readings missing on the 2 s grid are filled; the interval blends in the new median.
    result, after = gaps.fill_gaps(readings("a", [14, 15]), tracks, max_interpolated_gap=5, inactive_after_s=60)
    assert result.interpolated["ts_ms"].tolist() == [T0 + 6_000, T0 + 8_000, T0 + 10_000, T0 + 12_000]
    assert result.interpolated["value"].tolist() == [6.0, 8.0, 10.0, 12.0]
    assert (result.gaps_interpolated, result.gaps_inactive) == (1, 0)
    assert after["a"] == track("a", last_ms=T0 + 15_000, last_value=15.0, interval_s=0.7 * 2.0 + 0.3 * 1.0)
    assert tracks == before and tracks["a"].last_ms == T0 + 4_000  # the input is unchanged
    # A reading behind the track's last one neither moves it nor opens a gap.
    result, same = gaps.fill_gaps(readings("a", [13]), after, max_interpolated_gap=5, inactive_after_s=60)
    assert same == after and result.touched == [] and result.interpolated.empty


def test_gap_track_goes_inactive_by_event_time_and_by_sweep() -> None:
    both = pd.concat([readings("a", [0, 1]), readings("b", [0, 1, 90])])
    result, tracks = gaps.fill_gaps(both, {}, max_interpolated_gap=5, inactive_after_s=60)
    assert result.went_inactive == ["a"] and not tracks["a"].active and tracks["b"].active
    gone, swept = gaps.sweep_inactive(tracks, "d1")
    assert gone == ["b"] and not swept["b"].active and tracks["b"].active
    assert gaps.sweep_inactive(swept, "d1") == ([], swept)  # reported once


# ---------------------------------------------------------------------------------------------- episodes
def scored(rows: list[tuple[str, float, bool, float, str | None]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sensor_id": [r[0] for r in rows],
            "ts_ms": [T0 + int(r[1] * 1000) for r in rows],
            "is_anomaly": [r[2] for r in rows],
            "score": [r[3] for r in rows],
            "anomaly_kind": [r[4] for r in rows],
            "reason": [f"{r[4]} on {r[0]}" for r in rows],
            "top_features": [["z"]] * len(rows),
        }
    )


def test_episode_opens_extends_closes_and_expires() -> None:
    fold = {"device_id": "d1", "location": "loc-1", "quiet_s": 30}
    # Open: two anomalous readings of two sensors, one batch, one episode; the peak reading gives kind and reason.
    touched, open_ep = episodes.update(
        scored([("a", 1, True, 5.0, "spike"), ("b", 2, True, 9.0, "level_shift"), ("a", 3, False, 0.1, None)]),
        None,
        newest_ms=T0 + 3_000,
        **fold,
    )
    assert touched == [open_ep]
    assert open_ep == Episode(
        id=episodes.alert_id("d1", T0 + 1_000),
        opened_ms=T0 + 1_000,
        updated_ms=T0 + 2_000,
        sensor_ids=("a", "b"),
        kind="level_shift",
        score=9.0,
        reason="level_shift on b",
        top_features=("z",),
        readings=2,
        location="loc-1",
    )
    # Extend: a lower score adds a reading but keeps the peak; the open episode given is left as it was.
    touched, extended = episodes.update(scored([("a", 20, True, 6.0, "spike")]), open_ep, newest_ms=T0 + 20_000, **fold)
    assert extended == dataclasses.replace(open_ep, updated_ms=T0 + 20_000, readings=3)
    assert touched == [extended] and open_ep.readings == 2 and open_ep.updated_ms == T0 + 2_000
    # Expire: the device's newest reading 30 s past the last anomalous one closes it, without a new anomaly.
    assert episodes.expire(extended, T0 + 50_000, 30) is None
    closed = episodes.expire(extended, T0 + 50_001, 30)
    assert closed == dataclasses.replace(extended, closed_ms=T0 + 50_000) and extended.closed_ms is None
    # Close and reopen: an anomaly more than 30 s after the last one closes the episode and opens another.
    touched, reopened = episodes.update(
        scored([("b", 60, True, 4.0, "drift")]), extended, newest_ms=T0 + 60_000, **fold
    )
    assert touched == [dataclasses.replace(extended, closed_ms=T0 + 50_000), reopened]
    assert reopened is not None and reopened.opened_ms == T0 + 60_000 and reopened.sensor_ids == ("b",)
    alerts = [episodes.to_alert(ep, device_id="d1", zscore_threshold=3.0) for ep in touched]
    assert [(a["status"], a["readings"], a["sensor_ids"]) for a in alerts] == [
        ("closed", 3, ["a", "b"]),
        ("open", 1, ["b"]),
    ]


# ---------------------------------------------------------------------------------------------- sweep
def test_sweep_reports_a_silent_device_once_and_closes_its_episode() -> None:
    cfg = ProcessingSettings()
    inactive_ms = int(cfg.inactive_after_s * 1000)
    seen = 1_800_000_000_000
    before = bucket()
    d1 = dataclasses.replace(before.devices["d1"], seen_at_ms=seen)
    before = dataclasses.replace(before, devices={**before.devices, "d1": d1})
    text = dumps(before)
    # Not silent long enough, or present in the batch: nothing happens (d2 was already reported).
    for now, present in ((seen + inactive_ms - 1, set()), (seen + inactive_ms, {"d1"})):
        rows, after, swept = stateful.sweep(before, now, present, cfg)
        assert (rows, after, swept) == ([], before, 0)
    rows, after, swept = stateful.sweep(before, seen + inactive_ms, set(), cfg)
    assert swept == 1 and dumps(before) == text
    out = pd.concat(rows, ignore_index=True)
    status = payloads(out, "status")
    assert [(s["sensor_id"], s["state"]) for s in status] == [("d1-t", "inactive")]
    (alert,) = payloads(out, "alert")
    assert alert["alert_id"] == episode().id and alert["status"] == "closed"
    assert alert["closed_at"] == "2026-01-01T00:00:34.000Z" and alert["sensor_ids"] == ["d1-p", "d1-t"]
    assert after.devices["d1"] == dataclasses.replace(d1, swept=True, episode=None)
    assert not after.sensors["d1-t"].track.active and after.sensors["d2-t"] == before.sensors["d2-t"]
    # Reported once: the next sweep finds nothing to say.
    assert stateful.sweep(after, seen + 2 * inactive_ms, set(), cfg) == ([], after, 0)
    # A timed-out bucket sweeps whoever is not yet reported, however recently seen.
    rows, timed_out, swept = stateful.sweep(before, seen + 1, set(), cfg, timed_out=True)
    assert swept == 1 and timed_out == after


# ---------------------------------------------------------------------------------------------- whole step
def test_a_replayed_step_yields_the_same_rows_writes_and_state(tmp_path: Any) -> None:
    """Every call is run, then replayed from the state committed before it (the batch failed after the call):
    the same output rows, the same sink writes, the same new state."""
    settings = load_settings(state_dir=tmp_path)
    step, sink = make_step(settings)
    state = FakeState(now_ms=1_800_000_000_000)
    kinds: list[str] = []
    for i, chunk in enumerate(_chunks(_fleet(devices=3, seconds=300, anomaly_rate=0.3), 60)):
        rows = step_input(chunk, first_offset=i * 10_000)
        state.now_ms += 60_000
        committed, before = state.doc, len(sink.writes)
        first = run(step, state, "b0", rows)
        first_state, written = state.doc, sink.writes[before:]
        state.doc = committed
        again = run(step, state, "b0", rows)
        replayed = sink.writes[before + len(written) :]
        pd.testing.assert_frame_equal(first, again)
        assert state.doc == first_state and state.doc != committed
        assert [kind for kind, _ in written] == [kind for kind, _ in replayed]
        for (kind, batch), (_, batch_again) in zip(written, replayed, strict=True):
            if kind == "alerts":
                assert batch == batch_again
            else:
                pd.testing.assert_frame_equal(batch, batch_again)
        kinds += [kind for kind, _ in written]
    assert kinds.count("readings") == 5 and kinds.count("alerts") > 0  # alerts were replayed too
    # The state the step wrote is this version's, with every sensor and device of the fleet.
    stored = loads(state.doc)
    assert len(stored.sensors) == 18 and sorted(stored.devices) == ["dev-0001", "dev-0002", "dev-0003"]
    assert all(dev.features is not None for dev in stored.devices.values())


def test_a_state_of_another_version_starts_the_bucket_fresh(tmp_path: Any) -> None:
    """After a version bump the step forgets the old state: a reading inside the old dedup horizon is no longer
    a duplicate, and the device starts over (new tracks, new feature state)."""
    settings = load_settings(state_dir=tmp_path)
    frame = _fleet(devices=1, seconds=60)
    step, sink = make_step(settings)
    state = FakeState(now_ms=1_800_000_000_000)
    run(step, state, "b0", step_input(frame))
    assert state.doc is not None
    again = step_input(frame.iloc[-6:], first_offset=1_000)
    out = run(step, state, "b0", again)
    assert payloads(out, "quality")[0]["duplicates"] == 6
    state.doc = state.doc.replace(f'"v":{STATE_VERSION}', f'"v":{STATE_VERSION - 1}', 1)
    written = len(sink.readings)
    out = run(step, state, "b0", again)
    quality = payloads(out, "quality")[0]
    assert (quality["duplicates"], quality["valid"]) == (0, 6)
    assert len(sink.readings) == written + 6
    fresh = loads(state.doc)
    assert len(fresh.sensors) == 6 and all(s.track.interval_s is None for s in fresh.sensors.values())
