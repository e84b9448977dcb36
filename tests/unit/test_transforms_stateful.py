"""The per-device stateful step without Spark: a fake GroupState drives stateful.StatefulStep over batches, and
a MemorySink (processing.output) keeps the alerts and readings it writes."""

from __future__ import annotations

from typing import Any

import orjson
import pandas as pd
import pytest

from millrace.config import load_settings
from millrace.iot.simulator import FleetConfig, simulate_frame
from millrace.ml.follow import load_scorer
from millrace.processing import stateful
from millrace.processing.output import MemorySink
from millrace.processing.stateful import StatefulStep
from millrace.processing.transforms import INVALID_GROUP


class FakeState:
    """The parts of pyspark's GroupState that StatefulStep uses."""

    def __init__(self, now_ms: int) -> None:
        self.doc: str | None = None
        self.now_ms = now_ms
        self.hasTimedOut = False
        self.timeout_ms: int | None = None

    @property
    def exists(self) -> bool:
        return self.doc is not None

    @property
    def get(self) -> tuple[str]:
        assert self.doc is not None
        return (self.doc,)

    def update(self, value: tuple[str]) -> None:
        self.doc = value[0]

    def setTimeoutDuration(self, ms: int) -> None:  # noqa: N802 - pyspark's name
        self.timeout_ms = ms

    def getCurrentProcessingTimeMs(self) -> int:  # noqa: N802
        return self.now_ms


def step_input(frame: pd.DataFrame, first_offset: int = 0) -> pd.DataFrame:
    n = len(frame)
    return pd.DataFrame(
        {
            "gkey": frame["device_id"].to_numpy(),
            "reason": [None] * n,
            "raw": [orjson.dumps({"sensor_id": s}) for s in frame["sensor_id"]],
            "kafka_partition": [0] * n,
            "kafka_offset": list(range(first_offset, first_offset + n)),
            "sensor_id": frame["sensor_id"].to_numpy(),
            "device_id": frame["device_id"].to_numpy(),
            "sensor_type": frame["sensor_type"].to_numpy(),
            "location": frame["location"].to_numpy(),
            "unit": frame["unit"].to_numpy(),
            "status": ["ok"] * n,
            "value": frame["value"].to_numpy(),
            "timestamp": frame["timestamp"].dt.tz_localize(None).to_numpy(),
            "ground_truth": frame["ground_truth"],
        }
    )


@pytest.fixture
def settings(tmp_path: Any) -> Any:
    return load_settings(state_dir=tmp_path)


@pytest.fixture
def device_frame() -> pd.DataFrame:
    cfg = FleetConfig(devices=1, seed=7, anomaly_rate=0.0, start=pd.Timestamp("2026-01-01", tz="UTC").to_pydatetime())
    return simulate_frame(cfg, duration_s=120)


def run(step: StatefulStep, state: FakeState, key: str, frame: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(list(step((key,), iter([frame]), state)), ignore_index=True)


def payloads(out: pd.DataFrame, kind: str) -> list[dict[str, Any]]:
    return [orjson.loads(p) for p in out.loc[out["out"] == kind, "payload"]]


def make_step(settings: Any, source_topic: str = "t") -> tuple[StatefulStep, MemorySink]:
    sink = MemorySink()
    step = stateful.make_step(
        settings, source_topic=source_topic, scorer_factory=load_scorer, sink_factory=sink.factory
    )
    return step, sink


def test_every_reading_once_and_duplicates_dropped_across_batches(settings: Any, device_frame: pd.DataFrame) -> None:
    step, sink = make_step(settings)
    state = FakeState(now_ms=1_800_000_000_000)
    rows = step_input(device_frame)
    first = rows.iloc[:300]
    # The second batch starts with 10 copies of the first batch's last readings (duplicates across batches),
    # and repeats 10 of its own readings at its end (duplicates within a batch).
    resent = rows.iloc[290:300].assign(kafka_offset=range(1000, 1010))
    again = rows.iloc[700:710].assign(kafka_offset=range(2000, 2010))
    second = pd.concat([resent, rows.iloc[300:].assign(kafka_offset=range(1010, 1430)), again])
    run(step, state, "dev-0001", first)
    out2 = run(step, state, "dev-0001", second)
    readings = sink.readings
    assert len(readings) == len(device_frame) == 720
    assert not readings["interpolated"].any()
    assert readings[["sensor_id", "timestamp"]].duplicated().sum() == 0
    quality = payloads(out2, "quality")[0]
    assert quality["duplicates"] == 20 and quality["valid"] == 420 and quality["late"] == 0
    assert state.timeout_ms == int(settings.processing.inactive_after_s * 1000)


def test_gap_interpolated_and_long_gap_reported(settings: Any, device_frame: pd.DataFrame) -> None:
    step, sink = make_step(settings)
    state = FakeState(now_ms=1_800_000_000_000)
    temp = device_frame[device_frame["sensor_type"] == "temperature"].reset_index(drop=True)
    kept = temp.drop(index=[50, 51, 52]).drop(index=range(70, 80))  # 3 missing (filled), 10 missing (gap)
    out = run(step, state, "dev-0001", step_input(kept))
    readings = sink.readings
    filled = readings[readings["interpolated"]]
    assert sorted(filled["timestamp"]) == sorted(temp.loc[[50, 51, 52], "timestamp"])
    quality = payloads(out, "quality")[0]
    assert quality["gaps_interpolated"] == 1 and quality["gaps_inactive"] == 1 and quality["interpolated"] == 3


def test_late_reading_is_a_dead_letter_with_its_position(settings: Any, device_frame: pd.DataFrame) -> None:
    step, _ = make_step(settings, "readings")
    state = FakeState(now_ms=1_800_000_000_000)
    temp = device_frame[device_frame["sensor_type"] == "temperature"].reset_index(drop=True)
    rows = step_input(temp)
    late = rows.iloc[[5]].assign(kafka_offset=999)  # 115 s behind the newest reading: beyond 60 s lateness
    out = run(step, state, "dev-0001", pd.concat([rows.drop(index=5), late]))
    dead = payloads(out, "dead")
    assert [(d["reason"], d["position"], d["source"]) for d in dead] == [("late", "0:999", "readings")]
    # The reading, re-encoded from its fields (the job ships original bytes for invalid rows only).
    reading = orjson.loads(dead[0]["raw"])
    assert reading["sensor_id"] == temp.loc[5, "sensor_id"] and reading["value"] == temp.loc[5, "value"]
    assert pd.Timestamp(reading["timestamp"]) == temp.loc[5, "timestamp"]


def test_invalid_rows_become_dead_letters_with_original_bytes(settings: Any) -> None:
    step, sink = make_step(settings, "readings")
    frame = pd.DataFrame(
        {
            "gkey": [INVALID_GROUP] * 2,
            "reason": ["malformed", "out_of_range"],
            "raw": [b"\xff{oops", b'{"v":1}'],
            "kafka_partition": [2, 1],
            "kafka_offset": [7, 8],
        }
    )
    out = run(step, FakeState(now_ms=0), INVALID_GROUP, frame)
    dead = payloads(out, "dead")
    assert [(d["reason"], d["position"], d["raw"]) for d in dead] == [
        ("malformed", "2:7", "\ufffd{oops"),
        ("out_of_range", "1:8", '{"v":1}'),
    ]
    assert payloads(out, "quality") == [{"invalid_malformed": 1, "invalid_out_of_range": 1, "invalid": 2}]
    assert sink.writes == []


def test_wall_clock_timeout_reports_sensors_inactive(settings: Any, device_frame: pd.DataFrame) -> None:
    step, _ = make_step(settings)
    state = FakeState(now_ms=1_800_000_000_000)
    run(step, state, "dev-0001", step_input(device_frame))
    state.hasTimedOut = True
    out = run(step, state, "dev-0001", pd.DataFrame())
    statuses = payloads(out, "status")
    assert len(statuses) == 6 and {s["state"] for s in statuses} == {"inactive"}
    assert payloads(out, "quality") == [{"inactive_sensors": 6}]


def _fleet(devices: int, seconds: int, anomaly_rate: float = 0.0, seed: int = 11) -> pd.DataFrame:
    cfg = FleetConfig(
        devices=devices,
        seed=seed,
        anomaly_rate=anomaly_rate,
        start=pd.Timestamp("2026-01-01", tz="UTC").to_pydatetime(),
    )
    return simulate_frame(cfg, duration_s=seconds).sort_values(["timestamp", "sensor_id"]).reset_index(drop=True)


def _chunks(frame: pd.DataFrame, seconds: int) -> list[pd.DataFrame]:
    keys = (frame["timestamp"] - frame["timestamp"].min()).dt.total_seconds() // seconds
    return [part for _, part in frame.groupby(keys, sort=True)]


def test_a_bucket_of_devices_gives_each_device_what_it_gets_alone(settings: Any) -> None:
    frame = _fleet(devices=3, seconds=900, anomaly_rate=0.3)
    step, together_sink = make_step(settings)
    alone_step, alone_sink = make_step(settings)
    together_state = FakeState(now_ms=1_800_000_000_000)
    together = [
        run(step, together_state, "b0", step_input(c, first_offset=i * 10_000))
        for i, c in enumerate(_chunks(frame, 60))
    ]
    alone = []
    for _, device in frame.groupby("device_id"):
        state = FakeState(now_ms=1_800_000_000_000)
        alone += [
            run(alone_step, state, "b0", step_input(c, first_offset=i * 10_000))
            for i, c in enumerate(_chunks(device, 60))
        ]
    a, b = pd.concat(together, ignore_index=True), pd.concat(alone, ignore_index=True)
    cols = ["sensor_id", "timestamp", "value", "interpolated", "score", "is_anomaly", "anomaly_kind", "features"]
    key = ["sensor_id", "timestamp"]
    ra = together_sink.readings.sort_values(key)[cols].reset_index(drop=True)
    rb = alone_sink.readings.sort_values(key)[cols].reset_index(drop=True)
    assert len(ra) == len(frame)
    for part in (ra, rb):
        part["anomaly_kind"] = part["anomaly_kind"].astype(object).where(part["anomaly_kind"].notna(), None)
    pd.testing.assert_frame_equal(ra, rb)
    alerts_a = sorted(orjson.dumps(p) for p in together_sink.alerts)
    alerts_b = sorted(orjson.dumps(p) for p in alone_sink.alerts)
    assert alerts_a == alerts_b and len(alerts_a) > 0
    assert sorted(orjson.dumps(p) for p in payloads(b, "alert_sent")) == alerts_b  # counted by the driver
    assert sum(payloads(a, "quality")[i].get("valid", 0) for i in range(len(together))) == len(frame)


def test_a_silent_device_is_swept_while_its_bucket_keeps_running(settings: Any) -> None:
    frame = _fleet(devices=2, seconds=120)
    step, _ = make_step(settings)
    state = FakeState(now_ms=1_800_000_000_000)
    run(step, state, "b0", step_input(frame[frame["timestamp"] < frame["timestamp"].min() + pd.Timedelta(seconds=60)]))
    rest = frame[frame["timestamp"] >= frame["timestamp"].min() + pd.Timedelta(seconds=60)]
    only_one = step_input(rest[rest["device_id"] == "dev-0001"], first_offset=5_000)
    # Within inactive_after_s of wall-clock time: dev-0002 is not reported yet.
    state.now_ms += 1_000
    out = run(step, state, "b0", only_one.iloc[:100])
    assert [s for s in payloads(out, "status") if s["state"] == "inactive"] == []
    state.now_ms += int(settings.processing.inactive_after_s * 1000)
    out = run(step, state, "b0", only_one.iloc[100:])
    inactive = sorted(s["sensor_id"] for s in payloads(out, "status") if s["state"] == "inactive")
    assert len(inactive) == 6 and all(s.startswith("dev-0002") for s in inactive)
    assert payloads(out, "quality")[0]["inactive_sensors"] == 6
    # Reported once: the next call says nothing more about dev-0002.
    state.now_ms += 1_000
    out = run(step, state, "b0", only_one.iloc[:0])
    assert [s for s in payloads(out, "status") if s["state"] == "inactive"] == []


def test_readings_and_alerts_leave_through_the_sink_and_windows_as_partials(settings: Any) -> None:
    from millrace.processing.transforms import finish_windows, merge_partials, window_partials

    frame = _fleet(devices=2, seconds=300, anomaly_rate=0.3)
    step, sink = make_step(settings)
    state = FakeState(now_ms=1_800_000_000_000)
    outs = [run(step, state, "b0", step_input(c, first_offset=i * 10_000)) for i, c in enumerate(_chunks(frame, 90))]
    out = pd.concat(outs, ignore_index=True)
    assert set(out["out"]) <= {"window", "alert_sent", "status", "dead", "quality"}  # no reading rows
    written = sink.readings
    assert len(written) == len(frame)
    assert sorted(zip(written["sensor_id"], written["timestamp"], strict=True)) == sorted(
        zip(frame["sensor_id"], frame["timestamp"], strict=True)
    )
    # Window partials of all calls merge into the windows computed from all readings at once.
    windows = finish_windows(merge_partials(payloads(out, "window")), 60)
    whole = finish_windows(window_partials(written, 60), 60)
    key = ["scope", "key", "window_start"]
    pd.testing.assert_frame_equal(
        windows.sort_values(key).reset_index(drop=True),
        whole.sort_values(key).reset_index(drop=True),
        check_dtype=False,
    )
    assert windows["count"].sum() == 2 * len(frame)  # per sensor and per type x location
    # Alerts: written by the sink before the call's readings; the driver gets them back only to count them.
    alerts = sorted(orjson.dumps(a) for a in sink.alerts)
    assert len(alerts) > 0 and (out["out"] == "alert").sum() == 0
    assert sorted(orjson.dumps(p) for p in payloads(out, "alert_sent")) == alerts
    first_alerts = sink.order.index("alerts")
    assert sink.order[first_alerts + 1] == "readings" and sink.order.count("readings") == len(outs)


def test_dedup_horizon_is_packed_small_and_round_trips() -> None:
    import numpy as np

    from millrace.processing.state import pack_times, unpack_times

    regular = np.arange(1_800_000_000_000, 1_800_000_060_000, 12, dtype="int64")  # 60 s at 83 readings/s
    text = pack_times(regular)
    assert len(text) < 1_000 and (unpack_times(text) == regular).all()
    for ts in (np.empty(0, dtype="int64"), np.array([-86_400_000, 0, 7, 1_800_000_000_000], dtype="int64")):
        assert (unpack_times(pack_times(ts)) == ts).all()


def test_a_replayed_call_writes_the_same_alerts_and_readings(settings: Any) -> None:
    """A micro-batch replayed after a crash runs from the same state and batch time: the sink is given the same
    alerts and readings, which its upserts make a no-op."""
    chunks = _chunks(_fleet(devices=2, seconds=180, anomaly_rate=0.3), 90)
    step, sink = make_step(settings)
    state = FakeState(now_ms=1_800_000_000_000)
    run(step, state, "b0", step_input(chunks[0]))
    committed = state.doc
    rows = step_input(chunks[1], first_offset=10_000)
    before = len(sink.writes)
    first = run(step, state, "b0", rows)
    written = sink.writes[before:]
    state.doc = committed  # the state Spark had committed before the batch failed
    again = run(step, state, "b0", rows)
    replayed = sink.writes[before + len(written) :]
    pd.testing.assert_frame_equal(first, again)
    assert [kind for kind, _ in written] == [kind for kind, _ in replayed] == ["alerts", "readings"]
    assert written[0][1] == replayed[0][1]
    pd.testing.assert_frame_equal(written[1][1], replayed[1][1])


@pytest.mark.parametrize("freeze_gc", [True, False])
def test_a_worker_step_freezes_the_collector_once_at_its_second_call(
    settings: Any, device_frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch, freeze_gc: bool
) -> None:
    # gc itself is replaced: freezing the test runner's objects would outlive this test.
    calls: list[str] = []

    class FakeGc:
        def collect(self) -> int:
            calls.append("collect")
            return 0

        def freeze(self) -> None:
            calls.append("freeze")

    monkeypatch.setattr(stateful, "gc", FakeGc())
    monkeypatch.setattr(stateful, "_calls", 0)
    sink = MemorySink()
    step = stateful.make_step(
        settings, source_topic="t", scorer_factory=load_scorer, sink_factory=sink.factory, freeze_gc=freeze_gc
    )
    state = FakeState(now_ms=1_800_000_000_000)
    rows = step_input(device_frame)
    seen = []
    for part in (rows.iloc[:200], rows.iloc[200:400], rows.iloc[400:]):
        run(step, state, "dev-0001", part)
        seen.append(list(calls))
    # the first call's garbage collected, then everything frozen, once; nothing without freeze_gc
    expected = ["collect", "freeze"] if freeze_gc else []
    assert seen == [[], expected, expected]
    assert len(sink.readings) == 720
