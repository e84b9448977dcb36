"""The readings a store writes for a frame shaped as the stateful step hands it to the sink, checked row by row
against a plain per-value conversion: the SQLite rows (values, SQL types, row order) and the columns the
MongoDB store builds its documents from."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from millrace.stores import convert
from millrace.stores import sqlite as sqlite_store
from millrace.stores.base import READING_COLUMNS
from millrace.stores.sqlite import SqliteStore

T0 = pd.Timestamp("2026-03-01T12:00:00", tz="UTC")
TYPES = ("temperature", "humidity", "pressure", "vibration", "current", "voltage")
INGESTED_AT = pd.Timestamp("2026-03-01T12:05:00.123456", tz="UTC")


def step_frame(seconds: int = 70, *, interpolated: bool = True) -> pd.DataFrame:
    """Three devices' six sensors, one reading per second in time order as the step emits them, then late
    rows and rows repeating a key (the last one is kept). With ``interpolated``: interpolated readings (no
    Kafka position, no ground truth) make the Kafka columns objects with Nones, as in the step's output."""
    sensors = [(f"dev-{d:04d}", t, f"loc-{d:02d}") for d in (1, 2, 3) for t in TYPES]
    n = seconds * len(sensors)
    rng = np.random.default_rng(19)
    s = np.arange(n) // len(sensors)
    device, kind, location = (np.array([sensors[i % len(sensors)][j] for i in range(n)]) for j in range(3))
    frame = pd.DataFrame(
        {
            "sensor_id": np.char.add(np.char.add(device, "-"), kind),
            "device_id": device,
            "sensor_type": kind,
            "location": location,
            "unit": np.where(kind == "temperature", "C", "u"),
            "status": "ok",
            "timestamp": T0 + pd.to_timedelta(s * 1000 + rng.integers(0, 1000, n), unit="ms"),
            "value": rng.normal(20.0, 5.0, n),
            "interpolated": False,
            "score": rng.random(n),
            "is_anomaly": rng.random(n) < 0.05,
            "anomaly_kind": None,
            "features": [f'{{"z":{z:.6f},"rate":{r:.3f}}}' for z, r in rng.normal(0.0, 1.0, (n, 2))],
            "ground_truth": "normal",
            "kafka_partition": (np.arange(n) % 3).astype(np.int32),
            "kafka_offset": np.arange(n, dtype=np.int64) + 10**9,
        }
    )
    frame.loc[frame["is_anomaly"], "anomaly_kind"] = "spike"
    frame.loc[rng.random(n) < 0.03, "score"] = np.nan  # no score yet (warming up)
    frame["timestamp"] = frame["timestamp"].astype("datetime64[us, UTC]")
    if interpolated:
        gap = rng.random(n) < 0.02
        frame["kafka_partition"] = frame["kafka_partition"].astype(object)
        frame["kafka_offset"] = frame["kafka_offset"].astype(object)
        frame.loc[gap, ["kafka_partition", "kafka_offset", "ground_truth"]] = None
        frame.loc[gap, ["interpolated", "status"]] = (True, "interpolated")
    late = frame.sample(25, random_state=1).assign(timestamp=lambda f: f["timestamp"] - pd.Timedelta(minutes=5))
    repeated = frame.sample(12, random_state=2).assign(value=-1.0, score=np.nan, anomaly_kind="level_shift")
    frame = pd.concat([frame, late, repeated], ignore_index=True)
    for name in ("sensor_id", "device_id", "sensor_type", "location", "unit", "status", "features"):
        frame[name] = frame[name].astype("str")  # pandas' Arrow-backed strings, as the step's output
    if not interpolated:
        frame["anomaly_kind"] = frame["anomaly_kind"].astype("str")  # NaN where there is none
        frame["ground_truth"] = frame["ground_truth"].astype("str")
    return frame


def missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def plain(name: str, value: Any, *, int_bools: bool) -> Any:
    """One value as the store keeps it, converted on its own."""
    if missing(value):
        return None
    if name in convert.READING_TIME_COLUMNS:
        return convert.ms_of(value)
    if name in convert.READING_BOOL_COLUMNS:
        return int(bool(value)) if int_bools else bool(value)
    if name in convert.READING_INT_COLUMNS:
        return int(value)
    if name in convert.READING_FLOAT_COLUMNS:
        return float(value)
    return str(value)


def expected_rows(frame: pd.DataFrame, *, int_bools: bool = True) -> list[tuple[Any, ...]]:
    """The frame's rows as plain values in frame order, a row whose key a later row repeats left out."""
    records = frame.assign(ingested_at=INGESTED_AT).to_dict("records")
    last = {(r["sensor_id"], convert.ms_of(r["timestamp"])): i for i, r in enumerate(records)}
    kept = sorted(last.values())
    return [tuple(plain(c, records[i].get(c), int_bools=int_bools) for c in READING_COLUMNS) for i in kept]


def sql_type(value: Any) -> str:
    return {type(None): "null", int: "integer", float: "real", str: "text"}[type(value)]


def stored(path: Path) -> tuple[list[int], list[tuple[Any, ...]], list[tuple[str, ...]]]:
    columns = ", ".join(READING_COLUMNS)
    types = ", ".join(f"typeof({c})" for c in READING_COLUMNS)
    with sqlite3.connect(path) as conn:
        rows = conn.execute(f"SELECT rowid, {columns}, {types} FROM sensor_metrics ORDER BY rowid").fetchall()
    width = len(READING_COLUMNS)
    return [r[0] for r in rows], [r[1 : 1 + width] for r in rows], [r[1 + width :] for r in rows]


@pytest.mark.parametrize("interpolated", [True, False], ids=["interpolated rows", "measured rows only"])
@pytest.mark.parametrize("parameter_limit", [None, 999, 40], ids=["default", "999 parameters", "40 parameters"])
def test_sqlite_rows_are_the_readings_converted_one_value_at_a_time(
    tmp_path: Path, interpolated: bool, parameter_limit: int | None
) -> None:
    frame = step_frame(interpolated=interpolated)
    expected = expected_rows(frame)
    assert len(frame) == 1297 and len(expected) == 1285  # 12 rows repeat a key
    store = SqliteStore(tmp_path / "s.db")
    if parameter_limit is not None:  # an SQLite built with fewer parameters per statement
        store._conn().setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, parameter_limit)
    assert store.upsert_readings(frame.assign(ingested_at=INGESTED_AT)) == len(expected)
    rowids, rows, types = stored(tmp_path / "s.db")
    assert rowids == list(range(1, len(expected) + 1))
    assert rows == expected
    assert types == [tuple(sql_type(v) for v in row) for row in expected]
    kinds = {c: {t[i] for t in types} for i, c in enumerate(READING_COLUMNS)}
    assert kinds["score"] == {"real", "null"} and kinds["interpolated"] == {"integer"}
    assert kinds["kafka_offset"] == ({"integer", "null"} if interpolated else {"integer"})


def test_a_second_write_of_the_same_keys_updates_the_rows_in_place(tmp_path: Path) -> None:
    frame = step_frame()
    store = SqliteStore(tmp_path / "s.db")
    store.upsert_readings(frame.assign(ingested_at=INGESTED_AT))
    rowids, _, _ = stored(tmp_path / "s.db")
    changed = frame.assign(value=frame["value"] * 2, is_anomaly=~frame["is_anomaly"], anomaly_kind=None)
    assert store.upsert_readings(changed.assign(ingested_at=INGESTED_AT)) == len(rowids)
    again, rows, _ = stored(tmp_path / "s.db")
    assert again == rowids and rows == expected_rows(changed)


def test_the_statement_of_many_readings_is_the_one_row_upsert_repeated() -> None:
    one = sqlite_store.READINGS_SQL
    three = sqlite_store._readings_sql(3)
    row = "(" + ", ".join("?" * len(READING_COLUMNS)) + ")"
    assert three == one.replace(f"VALUES {row}", f"VALUES {row}, {row}, {row}")
    assert three.count("?") == 3 * len(READING_COLUMNS)


def test_mongodb_columns_are_the_readings_converted_one_value_at_a_time() -> None:
    frame = step_frame()
    cols = convert.reading_columns(frame.assign(ingested_at=INGESTED_AT))
    rows = list(zip(*(cols[c] for c in READING_COLUMNS), strict=True))
    expected = expected_rows(frame, int_bools=False)
    assert rows == expected
    assert [tuple(type(v) for v in row) for row in rows] == [tuple(type(v) for v in row) for row in expected]
