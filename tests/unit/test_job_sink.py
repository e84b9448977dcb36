"""The job's sink (jobs.sink) without a broker or a store: the predictions packed per sensor and unpacked by the
live feed into exactly the per-reading events the sensors channel carries, the order of the writes, and a
delivery failure failing the call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from millrace.config import TopicSettings
from millrace.errors import KafkaUnavailable
from millrace.jobs.sink import PREDICTION_SENSOR, ReadingSink, prediction_messages
from millrace.processing.recommendations import load_table
from millrace.services.feed import unpack_predictions
from millrace.stores.convert import ms_of
from tests.unit.test_store_readings import step_frame

T0 = pd.Timestamp("2026-03-01T12:00:00", tz="UTC")


def readings() -> pd.DataFrame:
    """Two sensors, rows out of time order, an interpolated reading, a NaN score, and a sensor whose location
    changes within the batch (a second run of it)."""
    rows = [
        ("dev-0002-humidity", "dev-0002", "humidity", "loc-02", 3, 41.25, 0.5, False, None, False),
        ("dev-0001-temperature", "dev-0001", "temperature", "loc-01", 2, 21.5, 7.5, True, "spike", False),
        ("dev-0001-temperature", "dev-0001", "temperature", "loc-01", 0, 20.0, 0.25, False, None, False),
        ("dev-0002-humidity", "dev-0002", "humidity", "loc-02", 1, 40.0, np.nan, None, None, True),
        ("dev-0001-temperature", "dev-0001", "temperature", "loc-01", 1, 20.123456789012345, 0.3, False, None, False),
        ("dev-0002-humidity", "dev-0002", "humidity", "loc-03", 5, 42.0, 0.1, False, np.nan, False),
    ]
    cols = ["sensor_id", "device_id", "sensor_type", "location", "s", "value", "score", "is_anomaly"]
    frame = pd.DataFrame(rows, columns=[*cols, "anomaly_kind", "interpolated"])
    frame["timestamp"] = T0 + pd.to_timedelta(frame.pop("s"), unit="s")
    return frame


def event(sensor: str, device: str, kind: str, loc: str, s: int, value: float, score: Any, anomaly: bool,
          anomaly_kind: str | None, interpolated: bool) -> dict[str, Any]:  # fmt: skip
    return {
        "sensor_id": sensor,
        "timestamp": f"2026-03-01T12:00:{s:02d}.000Z",
        "device_id": device,
        "sensor_type": kind,
        "location": loc,
        "value": value,
        "score": score,
        "is_anomaly": anomaly,
        "anomaly_kind": anomaly_kind,
        "interpolated": interpolated,
    }


def test_packed_per_sensor_and_unpacked_into_the_per_reading_events() -> None:
    values, keys = prediction_messages(readings())
    assert keys == ["dev-0001-temperature", "dev-0002-humidity", "dev-0002-humidity"]
    messages = [orjson.loads(v) for v in values]
    assert messages[0] == {
        "sensor_id": "dev-0001-temperature",
        "device_id": "dev-0001",
        "sensor_type": "temperature",
        "location": "loc-01",
        "timestamp_ms": [int(T0.value // 10**6) + 1000 * s for s in (0, 1, 2)],
        "value": [20.0, 20.123456789012345, 21.5],
        "score": [0.25, 0.3, 7.5],
        "is_anomaly": [False, False, True],
        "anomaly_kind": [None, None, "spike"],
        "interpolated": [False, False, False],
    }
    events = [e for m in messages for e in unpack_predictions(m)]
    t, h = ("dev-0001-temperature", "dev-0001", "temperature"), ("dev-0002-humidity", "dev-0002", "humidity")
    assert events == [
        event(*t, "loc-01", 0, 20.0, 0.25, False, None, False),
        event(*t, "loc-01", 1, 20.123456789012345, 0.3, False, None, False),
        event(*t, "loc-01", 2, 21.5, 7.5, True, "spike", False),
        event(*h, "loc-02", 1, 40.0, None, False, None, True),
        event(*h, "loc-02", 3, 41.25, 0.5, False, None, False),
        event(*h, "loc-03", 5, 42.0, 0.1, False, None, False),
    ]
    assert [list(e) for e in events] == [list(events[0])] * len(events)  # the fields in one order, as before


def test_a_long_run_is_split_in_order() -> None:
    n = 2_345
    frame = pd.DataFrame(
        {
            "sensor_id": "dev-0001-voltage",
            "device_id": "dev-0001",
            "sensor_type": "voltage",
            "location": "loc-01",
            "timestamp": T0 + pd.to_timedelta(np.arange(n)[::-1], unit="s"),  # newest first
            "value": np.arange(n, dtype=float)[::-1],
            "score": 0.0,
            "is_anomaly": False,
            "anomaly_kind": None,
            "interpolated": False,
        }
    )
    values, keys = prediction_messages(frame, limit=1_000)
    assert keys == ["dev-0001-voltage"] * 3
    events = [e for v in values for e in unpack_predictions(orjson.loads(v))]
    assert [len(orjson.loads(v)["value"]) for v in values] == [1_000, 1_000, 345]
    assert [e["value"] for e in events] == [float(i) for i in range(n)]
    assert events[-1]["timestamp"] == (T0 + pd.Timedelta(seconds=n - 1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def reference_messages(frame: pd.DataFrame, limit: int) -> tuple[list[dict[str, Any]], list[str]]:
    """prediction_messages' messages (parsed) built one reading at a time: by sensor, then by event time, a
    new message where a sensor field changes or ``limit`` readings are reached."""
    records = frame.to_dict("records")
    order = sorted(range(len(records)), key=lambda i: (records[i]["sensor_id"], ms_of(records[i]["timestamp"])))
    runs: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    for i in order:
        sensor = {c: records[i][c] for c in PREDICTION_SENSOR}
        if not runs or runs[-1][0] != sensor or len(runs[-1][1]) == limit:
            runs.append((sensor, []))
        runs[-1][1].append(records[i])
    messages = []
    for sensor, rows in runs:
        messages.append(
            {
                **sensor,
                "timestamp_ms": [ms_of(r["timestamp"]) for r in rows],
                "value": [r["value"] for r in rows],
                "score": [None if np.isnan(r["score"]) else r["score"] for r in rows],
                "is_anomaly": [bool(r["is_anomaly"]) for r in rows],
                "anomaly_kind": [r["anomaly_kind"] if isinstance(r["anomaly_kind"], str) else None for r in rows],
                "interpolated": [bool(r["interpolated"]) for r in rows],
            }
        )
    return messages, [m["sensor_id"] for m in messages]


@pytest.mark.parametrize("interpolated", [True, False], ids=["interpolated rows", "measured rows only"])
def test_the_step_frame_s_messages_are_its_readings_one_at_a_time(interpolated: bool) -> None:
    frame = step_frame(interpolated=interpolated)
    frame.loc[frame.index[300:340], "location"] = "loc-09"  # a second run of some sensors
    for limit in (1_000, 7):
        values, keys = prediction_messages(frame, limit=limit)
        messages, expected_keys = reference_messages(frame, limit)
        assert keys == expected_keys and [orjson.loads(v) for v in values] == messages
        assert len(set(keys)) == 18 and len(keys) > (18 if limit == 1_000 else len(frame) // 7)


def test_one_prediction_object_is_published_as_it_is_and_bad_arrays_are_refused() -> None:
    single = {"sensor_id": "dev-0001-temperature", "timestamp": "2026-03-01T12:00:00.000Z", "score": 0.5}
    assert unpack_predictions(single) == [single]
    bad = orjson.loads(prediction_messages(readings())[0][0])
    bad["score"] = bad["score"][:-1]
    with pytest.raises(ValueError):
        unpack_predictions(bad)
    del bad["score"]
    with pytest.raises(KeyError):
        unpack_predictions(bad)


class FakeStore:
    def __init__(self) -> None:
        self.writes: list[tuple[str, Any]] = []

    def upsert_readings(self, frame: pd.DataFrame) -> int:
        self.writes.append(("readings", frame))
        return len(frame)

    def upsert_alerts(self, alerts: Sequence[Mapping[str, Any]]) -> int:
        self.writes.append(("alerts", list(alerts)))
        return len(alerts)


class FakeProducer:
    """Delivers everything on flush, or fails the next ``fail`` flushes with one message lost."""

    def __init__(self, fail: int = 0) -> None:
        self.stats = SimpleNamespace(failed=0, last_error=None)
        self.sent: list[tuple[str, bytes, Any]] = []
        self.pending = 0
        self.fail = fail

    def produce(self, topic: str, value: bytes, key: Any = None) -> None:
        self.sent.append((topic, value, key))
        self.pending += 1

    def produce_batch(self, topic: str, values: Any, keys: Any) -> int:
        n = 0
        for value, key in zip(values, keys, strict=True):
            self.produce(topic, value, key)
            n += 1
        return n

    def flush(self, timeout_s: float = 60.0) -> int:
        self.pending = 0
        if self.fail:
            self.fail -= 1
            self.stats.failed += 1
            self.stats.last_error = "broker down"
        return 0


def sink(producer: FakeProducer, store: FakeStore) -> ReadingSink:
    return ReadingSink(
        store, producer, topics=TopicSettings(), store_backend="sqlite", recommendations=load_table(None)
    )


def test_the_sink_stores_then_produces_one_message_per_sensor() -> None:
    store, producer = FakeStore(), FakeProducer()
    alert = {
        "alert_id": "al-1",
        "device_id": "dev-0001",
        "sensor_ids": ["dev-0001-temperature"],
        "kind": "spike",
        "severity": "critical",
        "status": "open",
    }
    s = sink(producer, store)
    s.write_alerts([alert], {"dev-0001-temperature": "temperature"})
    s.write_readings(readings())
    topics = TopicSettings()
    assert [kind for kind, _ in store.writes] == ["alerts", "readings"]
    assert store.writes[1][1]["ingested_at"].notna().all() and len(store.writes[1][1]) == 6
    assert [(t, k) for t, _, k in producer.sent] == [
        (topics.alerts, "al-1"),
        (topics.recommendations, "al-1"),
        (topics.predictions, "dev-0001-temperature"),
        (topics.predictions, "dev-0002-humidity"),
        (topics.predictions, "dev-0002-humidity"),
    ]
    assert orjson.loads(producer.sent[0][1])["recommendation_id"]


def test_a_lost_message_fails_the_call() -> None:
    s = sink(FakeProducer(fail=1), FakeStore())
    with pytest.raises(KafkaUnavailable, match="1 predictions messages not delivered: broker down"):
        s.write_readings(readings())
