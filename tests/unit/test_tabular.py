"""Reading recorded data sets: layouts, separators, column detection, sensor types, bad rows, errors (no
network)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from millrace.errors import DataError, TypeMappingError
from millrace.iot.tabular import normalize_label, read_table, sniff_separator
from millrace.iot.type_mapping import read_type_mapping
from millrace.records import GENERIC_TYPE

WIDE = """datetime;Temperature;Humidity;Accelerometer1RMS;anomaly
2026-01-01 00:00:00;21.5;40;0.2;0
2026-01-01 00:00:01;21.6;;0.21;0
2026-01-01 00:00:02;abc;41;0.22;1
not a time;21.7;41;0.22;0
2026-01-01 00:00:04;21.8;41;0.25;1;extra

2026-01-01 00:00:05;21.9;42;0.3;1
"""

LONG = """timestamp,sensor_id,sensor_type,value,device_id,label
2026-01-01T00:00:00Z,m1-t,temperature,20.1,m1,normal
2026-01-01T00:00:01Z,m1-h,humidity,x,m1,normal
1767225602,m1-t,temperature,20.3,m1,spike
2026-01-01T00:00:03Z,m1-h,humidity,,m1,normal
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_wide_layout_with_semicolons_labels_and_bad_rows(tmp_path: Path) -> None:
    table = read_table(_write(tmp_path, "pump-3.csv", WIDE))
    assert (table.layout, table.separator, table.rows) == ("wide", ";", 6)
    assert table.columns["time"] == "datetime" and table.columns["label"] == "anomaly"
    frame = table.frame
    assert list(frame["row"]) == [2, 2, 2, 3, 3, 8, 8, 8]  # file line numbers, header = line 1
    assert list(frame["sensor_id"][:3]) == [
        "pump-3-temperature",
        "pump-3-humidity",
        "pump-3-accelerometer1rms",
    ]
    assert list(frame["sensor_type"][:3]) == [GENERIC_TYPE] * 3  # nothing is read into the names
    assert list(frame["value"]) == [21.5, 40.0, 0.2, 21.6, 0.21, 21.9, 42.0, 0.3]
    assert list(frame["ground_truth"]) == ["normal"] * 5 + ["anomaly"] * 3
    assert frame["timestamp"].iloc[-1] == pd.Timestamp("2026-01-01T00:00:05Z")
    assert set(frame["device_id"]) == {"pump-3"} and set(frame["location"]) == {"loc-01"}
    assert table.bad_rows == [
        (4, "non-numeric value 'abc' in column 'Temperature'", "2026-01-01 00:00:02;abc;41;0.22;1"),
        (5, "unparseable time 'not a time'", "not a time;21.7;41;0.22;0"),
        (6, "expected 5 fields, found 6", "2026-01-01 00:00:04;21.8;41;0.25;1;extra"),
    ]


def test_long_layout_with_epoch_times_and_device_column(tmp_path: Path) -> None:
    table = read_table(_write(tmp_path, "long.csv", LONG))
    assert table.layout == "long" and table.separator == ","
    frame = table.frame
    assert list(frame["sensor_id"]) == ["m1-t", "m1-t"]
    assert list(frame["ground_truth"]) == ["normal", "spike"]
    assert list(frame["row"]) == [2, 4]
    assert frame["timestamp"].iloc[1] == pd.Timestamp(1767225602, unit="s", tz="UTC")
    assert [(n, reason) for n, reason, _ in table.bad_rows] == [
        (3, "non-numeric value 'x' in column 'value'"),
        (5, "empty value in column 'value'"),
    ]


def test_parquet_and_explicit_columns(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "when": pd.date_range("2026-01-01", periods=3, freq="s"),  # naive: taken as UTC
            "P1": [1000.0, 1001.0, None],
            "T1": [20.0, 21.0, 22.0],
            "state": ["NORMAL", "BROKEN", "NORMAL"],
        }
    )
    path = tmp_path / "plant.parquet"
    frame.to_parquet(path)
    table = read_table(path, time_column="when", label_column="state", device="press-7")
    assert table.layout == "wide" and table.separator is None
    assert list(table.frame["sensor_id"]) == ["press-7-p1", "press-7-t1"] * 2 + ["press-7-t1"]
    assert list(table.frame["row"]) == [1, 1, 2, 2, 3]
    assert list(table.frame["ground_truth"]) == ["normal", "normal", "broken", "broken", "normal"]
    assert str(table.frame["timestamp"].dtype) == "datetime64[ns, UTC]"


def test_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty"):
        read_table(_write(tmp_path, "empty.csv", ""))
    with pytest.raises(DataError, match="no label column 'nope'"):
        read_table(_write(tmp_path, "a.csv", WIDE), label_column="nope")
    with pytest.raises(DataError, match="no time column found"):
        read_table(_write(tmp_path, "b.csv", "a,b\n1,2\n"))
    with pytest.raises(DataError, match="column 'status' has no numeric values"):
        read_table(_write(tmp_path, "c.csv", "time,temp,status\n2026-01-01,1,on\n2026-01-02,2,off\n"))
    with pytest.raises(DataError, match="no data rows"):
        read_table(_write(tmp_path, "d.csv", "time,temp\n"))
    with pytest.raises(DataError, match="no such file"):
        read_table(tmp_path / "missing.csv")
    table = read_table(_write(tmp_path, "e.csv", "time,temp,status\n2026-01-01,1,on\n"), ignore_columns=["status"])
    assert list(table.frame["value"]) == [1.0]


def test_helpers() -> None:
    assert sniff_separator("a\tb\tc\n1\t2\t3\n") == "\t"
    assert sniff_separator("a|b\n1|2\n") == "|"
    assert sniff_separator("single\n1\n") == ","
    assert [normalize_label(v) for v in (0, "1", "true", "Level Shift", "NORMAL", None)] == [
        "normal",
        "anomaly",
        "anomaly",
        "level_shift",
        "normal",
        "normal",
    ]


# A test rig recorded in units unlike the simulator's: bar, kelvin, milliampere. Every value is outside the
# built-in range of the type its column is named after (pressure 800-1200 hPa, temperature -50-150 degC,
# current 0-200 A).
RIG = """time,Pressure,Temperature,Current,anomaly
2026-01-01T00:00:00Z,2.51,350.2,4012,0
2026-01-01T00:00:01Z,2.49,350.4,3998,0
2026-01-01T00:00:02Z,2.50,,4005,1
"""


def test_columns_named_after_known_types_get_no_type_unless_mapped(tmp_path: Path) -> None:
    table = read_table(_write(tmp_path, "rig.csv", RIG))
    frame = table.frame
    assert list(frame["sensor_id"][:3]) == ["rig-pressure", "rig-temperature", "rig-current"]
    assert set(frame["sensor_type"]) == {GENERIC_TYPE}
    assert set(frame["unit"]) == {""}
    assert len(frame) == 8

    mapped = read_table(_write(tmp_path, "rig.csv", RIG), types={"Pressure": "pressure_bar", "Current": "current"})
    by_sensor = mapped.frame.groupby("sensor_id")[["sensor_type", "unit"]].first()
    assert by_sensor.to_dict("index") == {
        "rig-pressure": {"sensor_type": "pressure_bar", "unit": ""},
        "rig-temperature": {"sensor_type": GENERIC_TYPE, "unit": ""},
        "rig-current": {"sensor_type": "current", "unit": "A"},
    }
    assert list(mapped.frame["value"]) == list(frame["value"])


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("types.toml", '# rig\nPressure = "pressure_bar"\n"Current" = " current "\n'),
        ("types.csv", "column,type\nPressure,pressure_bar\n\nCurrent, current\n"),
        ("types.csv", "Pressure,pressure_bar\nCurrent,current\n"),  # no header
    ],
)
def test_a_mapping_file_gives_the_types(tmp_path: Path, name: str, text: str) -> None:
    mapping = read_type_mapping(_write(tmp_path, name, text))
    assert mapping == {"Pressure": "pressure_bar", "Current": "current"}
    frame = read_table(_write(tmp_path, "rig.csv", RIG), types=mapping).frame
    assert dict(zip(frame["sensor_id"], frame["sensor_type"], strict=True)) == {
        "rig-pressure": "pressure_bar",
        "rig-temperature": GENERIC_TYPE,
        "rig-current": "current",
    }


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("t.yaml", "Pressure: bar\n", "a type mapping is a .toml or .csv file, not '.yaml'"),
        ("t.toml", "Pressure = \n", "invalid TOML: Invalid value (at line 1, column 12)"),
        ("t.toml", "Pressure = 3\n", "'Pressure' must map to a type name (a string), not 3"),
        ("t.toml", "[Pressure]\nunit = 'bar'\n", "'Pressure' must map to a type name (a string), not a table"),
        ("t.toml", 'Pressure = " "\n', "empty type for 'Pressure'"),
        ("t.toml", "# nothing\n", "the type mapping maps no column"),
        ("t.csv", "column,type\nPressure,pressure,bar\n", "line 2: expected 2 fields (column,type), found 3"),
        ("t.csv", "Pressure,\n", "line 1: empty type for 'Pressure'"),
        ("t.csv", ",pressure\n", "line 1: empty column name"),
        ("t.csv", "Pressure,a\nCurrent,b\nPressure,c\n", "line 3: 'Pressure' is mapped already on line 1"),
        ("t.csv", "column,type\n", "the type mapping maps no column"),
    ],
)
def test_a_bad_mapping_file_is_one_clear_error(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = _write(tmp_path, name, text)
    with pytest.raises(DataError) as caught:
        read_type_mapping(path)
    assert isinstance(caught.value, TypeMappingError) and caught.value.exit_code == 2  # a usage error in the CLI
    assert str(caught.value) == f"{path}: {message}"


def test_long_layout_types_come_from_the_type_column_or_the_mapping(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = """timestamp,sensor,type,value
2026-01-01T00:00:00Z,P1,pressure,1001.5
2026-01-01T00:00:00Z,T1,Temp,21.5
2026-01-01T00:00:00Z,F1,,3.5
"""
    path = _write(tmp_path, "long.csv", text)
    frame = read_table(path).frame
    assert list(frame["sensor_id"]) == ["P1", "T1", "F1"]
    assert list(frame["sensor_type"]) == ["pressure", "Temp", GENERIC_TYPE]  # as written; empty = none
    assert list(frame["unit"]) == ["hPa", "", ""]
    with caplog.at_level("WARNING", logger="millrace.iot.tabular"):
        frame = read_table(path, types={"T1": "temperature", "P1": "generic", "X9": "flow"}).frame
    assert list(frame["sensor_type"]) == [GENERIC_TYPE, "temperature", GENERIC_TYPE]  # the mapping wins
    assert [r.getMessage() for r in caplog.records] == [f"{path}: the type mapping names no sensor of the file: 'X9'"]
    # Without a sensor column the type column names the sensors: the id keeps the name as written.
    only_types = read_table(_write(tmp_path, "types.csv", "timestamp,type,value\n2026-01-01,Flow Rate,3\n")).frame
    assert (only_types["sensor_id"].iloc[0], only_types["sensor_type"].iloc[0]) == ("types-flow-rate", "Flow Rate")
