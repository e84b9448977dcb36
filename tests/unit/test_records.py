"""Each record that crosses a process boundary is spelled once (millrace.records); these tests guard the seams
where it is used: the simulator's encoder, the stream job's Spark schema, the store's columns, the alerts of
the stateful step.

A field added in one place only fails here (checked by adding one to each in turn):
- to SensorReading only: test_reading_wire_covers_the_record (and to_dict has no place for it);
- to records.READING_WIRE only: to_dict raises AttributeError (test_reading_round_trip), and the simulator
  refuses to encode a field it has no value for (test_simulator_output_is_the_record);
- to processing.schema.READING_JSON by hand (no longer derived): test_spark_reading_schema_is_the_wire_format;
- a reading field neither stored nor declared unstored: test_store_columns_extend_the_reading;
- to records.Alert (episodes.to_alert builds an Alert, so the dict follows) without a store column:
  test_sqlite_tables_have_the_record_columns; the same for a reading or window column.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime

import orjson
import pandas as pd
import pytest

from millrace import records
from millrace.iot.replay import reading_messages
from millrace.iot.simulator import FleetConfig, Simulator
from millrace.processing import episodes
from millrace.processing.transforms import finish_windows, merge_partials, window_partials
from millrace.records import (
    ALERT_FIELDS,
    READING_COLUMNS,
    READING_ROW,
    READING_UNSTORED,
    READING_WIRE,
    WINDOW_COLUMNS,
    Alert,
    SensorReading,
    WindowMetric,
    field_types,
    wire_leaves,
)

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def _key_order(data: dict) -> list:
    return [(k, _key_order(v) if isinstance(v, dict) else None) for k, v in data.items()]


def test_reading_wire_covers_the_record() -> None:
    leaves = {f.name for f in wire_leaves(READING_WIRE)}
    assert leaves == {f.name for f in fields(SensorReading)}
    assert records.READING_REQUIRED == ("sensor_id", "sensor_type", "value", "timestamp")


def test_reading_round_trip() -> None:
    full = SensorReading("s-1", "d-1", "humidity", 51.0, "%", "loc-01", T0, "ok", "SHT45", 80.5, 7, "normal")
    data = full.to_dict()
    assert list(data) == [f.name for f in READING_WIRE]
    assert data["metadata"] == {"unit": "%", "sensor_model": "SHT45", "battery_level": 80.5}
    assert data["timestamp"] == "2025-03-01T00:00:00.000Z"
    assert SensorReading.from_dict(orjson.loads(orjson.dumps(data))) == full
    bare = SensorReading("s-1", "d-1", "humidity", 51.0, "%", "loc-01", T0)
    omitted = {f.name for f in READING_WIRE if f.omit_none}
    assert set(bare.to_dict()) == {f.name for f in READING_WIRE} - omitted
    assert bare.to_dict()["metadata"]["battery_level"] is None


@pytest.mark.parametrize("interval_s", [1.0, 3600.0])  # 3600: batteries run low, status "low_battery"
def test_simulator_output_is_the_record(interval_s: float) -> None:
    cfg = FleetConfig(devices=3, locations=2, seed=4, anomaly_rate=0.1, interval_s=interval_s, start=T0)
    values = [m.value for m in Simulator(cfg, count=3000).messages()]
    statuses = set()
    for value in values:
        data = orjson.loads(value)
        reading = SensorReading.from_dict(data)
        encoded = reading.to_dict()
        # Same keys in the same order, nested included, and the same values: the hand-built encoder writes
        # what the record's encoder would (it writes whole floats without ".0", which JSON reads the same).
        assert _key_order(data) == _key_order(encoded)
        assert data == encoded
        assert reading.seq is not None and reading.ground_truth is not None and reading.battery_level is not None
        assert reading.sensor_model
        statuses.add(reading.status)
    assert statuses == ({"ok", "low_battery"} if interval_s > 1 else {"ok"})


def test_simulator_refuses_a_wire_field_it_cannot_fill(monkeypatch: pytest.MonkeyPatch) -> None:
    from millrace.iot import simulator

    extra = (*READING_WIRE, records.WireField("firmware", str))
    monkeypatch.setattr(simulator, "READING_WIRE", extra)
    with pytest.raises(ValueError, match="firmware"):
        Simulator(FleetConfig(devices=1, seed=1, start=T0), count=1)


def test_replay_messages_are_the_record() -> None:
    frame = pd.DataFrame(
        {
            "sensor_id": ["s-1"],
            "device_id": ["d-1"],
            "sensor_type": ["voltage"],
            "value": [230.5],
            "unit": ["V"],
            "location": ["loc-01"],
            "timestamp": [pd.Timestamp(T0)],
            "ground_truth": ["spike"],
        }
    )
    (msg,) = reading_messages(frame)
    data = orjson.loads(msg.value)
    assert list(data) == [f.name for f in READING_WIRE if not (f.omit_none and f.name == "seq")]
    assert SensorReading.from_dict(data).to_dict() == data


def test_spark_reading_schema_is_the_wire_format() -> None:
    from pyspark.sql.types import DoubleType, LongType, StringType, StructType

    from millrace.processing.schema import READ_AS_TEXT, READING_JSON

    spark_type = {str: StringType(), float: DoubleType(), int: LongType(), datetime: StringType()}

    def expected(spec: tuple[records.WireField, ...], top: bool) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        for f in spec:
            if f.fields:
                out.append((f.name, expected(f.fields, False)))
            else:
                out.append((f.name, StringType() if top and f.name in READ_AS_TEXT else spark_type[f.value_type]))
        return out

    def actual(schema: StructType) -> list[tuple[str, object]]:
        return [(f.name, actual(f.dataType) if isinstance(f.dataType, StructType) else f.dataType) for f in schema]

    assert actual(READING_JSON) == expected(READING_WIRE, True)
    # Read as text on purpose (the job converts them and names a failure); everything else keeps its type.
    assert READ_AS_TEXT == ("value", "timestamp")


def test_store_columns_extend_the_reading() -> None:
    from millrace.processing.schema import STEP_OUTPUT_COLUMNS
    from millrace.stores import base, convert

    assert base.READING_COLUMNS == READING_COLUMNS == tuple(READING_ROW)
    wire_types = {f.name: f.value_type for f in READING_WIRE}
    reading_part = [c for c in READING_COLUMNS if c in wire_types]
    # The reading's fields the store keeps appear in the store's column order, with the reading's types;
    # every other top-level wire field is declared unstored.
    assert reading_part == [
        "sensor_id", "device_id", "sensor_type", "location", "unit", "timestamp", "value", "status", "ground_truth"
    ]  # fmt: skip
    assert all(READING_ROW[c] is wire_types[c] for c in reading_part)
    assert set(reading_part) | set(READING_UNSTORED) == set(wire_types)
    assert not set(reading_part) & set(READING_UNSTORED)
    assert tuple(c for c in READING_COLUMNS if c not in wire_types) == records.PROCESSING_COLUMNS
    # The stateful step hands its sink every column but ingested_at (the sink stamps it).
    step_reading = [c for c in STEP_OUTPUT_COLUMNS if c not in ("out", "payload")]
    assert set(step_reading) == set(READING_COLUMNS) - {"ingested_at"}
    # The store's conversions group the columns by the record's types.
    grouped = (
        convert.READING_TIME_COLUMNS
        + convert.READING_BOOL_COLUMNS
        + convert.READING_INT_COLUMNS
        + convert.READING_FLOAT_COLUMNS
    )
    assert set(grouped) == {c for c, t in READING_ROW.items() if t is not str}
    assert convert.ALERT_TIME_FIELDS == ("opened_at", "updated_at", "closed_at")
    window = convert.WINDOW_TIME_COLUMNS + convert.WINDOW_INT_COLUMNS + convert.WINDOW_FLOAT_COLUMNS
    assert set(window) == {c for c, t in field_types(WindowMetric).items() if t is not str}


def test_to_alert_has_the_alert_fields() -> None:
    assert tuple(f.name for f in fields(Alert)) == ALERT_FIELDS
    from millrace.stores import base

    assert base.ALERT_FIELDS == ALERT_FIELDS
    ms = int(T0.timestamp() * 1000)
    scored = pd.DataFrame(
        {
            "ts_ms": [ms, ms + 1000],
            "sensor_id": ["d-1-temperature", "d-1-humidity"],
            "is_anomaly": [True, True],
            "score": [4.2, 9.1],
            "anomaly_kind": ["statistical", "out_of_range"],
            "reason": ["z 4.2", "above 100"],
            "top_features": [["z"], ["value"]],
        }
    )
    touched, open_ep = episodes.update(scored, None, device_id="d-1", location="loc-01", newest_ms=ms, quiet_s=60)
    closed = episodes.close(touched[0], 60)
    for ep in (touched[0], closed):
        alert = episodes.to_alert(ep, device_id="d-1", zscore_threshold=3.0)
        assert tuple(alert) == ALERT_FIELDS
        types = field_types(Alert)
        for name, value in alert.items():
            if value is None:
                assert name in ("closed_at", "recommendation", "recommendation_id")  # the sink sets the last two
            elif types[name] is datetime:
                assert records.parse_iso(value).tzinfo is not None
            elif types[name] is tuple:
                assert isinstance(value, list)
            else:
                assert isinstance(value, types[name]), name
    assert alert["status"] == "closed" and alert["severity"] == "critical"
    assert alert["sensor_ids"] == ["d-1-humidity", "d-1-temperature"]
    assert alert["opened_at"] == "2025-03-01T00:00:00.000Z" and alert["closed_at"] == "2025-03-01T00:01:01.000Z"
    assert open_ep is not None


def test_finished_windows_are_the_window_record() -> None:
    readings = pd.DataFrame(
        {
            "sensor_id": ["s-1", "s-1", "s-2"],
            "sensor_type": ["voltage"] * 3,
            "location": ["loc-01"] * 3,
            "timestamp": pd.to_datetime([T0, T0, T0], utc=True),
            "value": [1.0, 3.0, 2.0],
            "is_anomaly": [False, True, False],
            "interpolated": [False, False, False],
        }
    )
    partials = window_partials(readings, 60)
    windows = finish_windows(merge_partials(partials.to_dict("records")), 60)
    assert tuple(windows.columns) == WINDOW_COLUMNS
    row = windows.iloc[0].to_dict()
    types = field_types(WindowMetric)
    for name, value in row.items():
        expected = {datetime: pd.Timestamp, int: int, float: float, str: str}[types[name]]
        assert isinstance(value, expected), name


def test_sqlite_tables_have_the_record_columns(tmp_path) -> None:  # noqa: ANN001
    import sqlite3

    from millrace.stores.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "s.db")
    store.count("sensor_metrics")  # opens the file and creates the tables
    store.close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        for table, names in (
            ("sensor_metrics", READING_COLUMNS),
            ("anomaly_alerts", ALERT_FIELDS),
            ("windowed_metrics", WINDOW_COLUMNS),
        ):
            columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            assert columns == set(names), table
