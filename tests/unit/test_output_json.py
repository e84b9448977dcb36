"""The step's JSON texts built column-wise by Arrow (processing.output): each must parse to what pandas'
``to_json`` wrote for the same rows, and pandas' float text is reproduced byte for byte."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import orjson
import pandas as pd

from millrace.processing.output import features_json, json_objects, pandas_float_text, window_rows
from millrace.processing.transforms import window_partials

T0 = 1_800_000_000_000  # epoch ms

EDGES = [
    0.0, -0.0, 1.0, -1.0, 0.5, 0.1, 0.7, 1 / 2048, 2.5e-10, 1.5e-10, 5e-11, 4.9e-11, 1e-15, 9.99e-16, 5e-324,
    -1e-320, 0.99999999995, 0.999999999949, -9.99999999995, 123456.000001, 369832.99126299993, 1e15 + 0.3,
    1e16 - 1, 1e16, 9999999999999998.0, 1.2345678901234567e21, 1e300, np.nan, np.inf, -np.inf,
]  # fmt: skip


def pandas_lines(frame: pd.DataFrame) -> list[str]:
    return frame.to_json(orient="records", lines=True).rstrip("\n").split("\n") if len(frame) else []


def parsed(texts: Iterable[str]) -> list[dict]:
    return [orjson.loads(t) for t in texts]


def random_floats(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [
            rng.normal(size=n) * 10.0 ** rng.integers(-20, 22, n),  # every magnitude, all 17 digits
            np.round(rng.normal(size=n) * 10.0 ** rng.integers(-7, 12, n), 3),  # measurement-like
            rng.integers(-(2**62), 2**62, n).view("float64"),  # any bit pattern: NaNs, denormals, huge
            np.array(EDGES),
        ]
    )


def test_pandas_float_text_is_pandas_to_json_byte_for_byte() -> None:
    values = random_floats(1, 50_000)
    want = [line[len('{"x":') : -1] for line in pandas_lines(pd.DataFrame({"x": values}))]
    got = ["null" if text is None else text for text in pandas_float_text(values).to_pylist()]
    assert got == want
    assert pandas_float_text(np.array([-0.0, 1.0, 0.1, 1e-16, np.inf])).to_pylist() == [
        "0.0", "1.0", "0.1", "1e-16", None,
    ]  # fmt: skip


def test_rounded_floats_parse_as_pandas_writes_the_rounded_frame() -> None:
    values = random_floats(2, 20_000)
    frame = pd.DataFrame({"b": values, "a": values[::-1].copy(), "c": 1.0})
    got = json_objects({col: frame[col].to_numpy() for col in frame.columns}, decimals=6).to_pylist()
    with np.errstate(over="ignore", invalid="ignore"):  # beyond ~1e300 pandas' rounding overflows to inf (null)
        want = pandas_lines(frame.round(6))
    assert parsed(got) == parsed(want)
    assert all(list(orjson.loads(text)) == ["b", "a", "c"] for text in got[:100])  # keys in column order


def test_rounded_floats_exact_text_null_for_nan_none_and_infinities() -> None:
    frame = pd.DataFrame({"x": [np.nan, None, np.inf, -np.inf, -0.0, 1.0, 2.5e-7, -1.2345674, 1e20, 1e-7]})
    texts = json_objects({"x": frame["x"].to_numpy()}, decimals=6).to_pylist()
    assert texts == [
        '{"x":null}', '{"x":null}', '{"x":null}', '{"x":null}', '{"x":0}', '{"x":1}', '{"x":0}',
        '{"x":-1.234567}', '{"x":1e+20}', '{"x":0}',
    ]  # fmt: skip
    assert parsed(texts) == parsed(pandas_lines(frame.round(6)))


def test_text_ints_and_booleans_parse_as_pandas_writes_them() -> None:
    frame = pd.DataFrame(
        {
            "name": np.array(['a/b "q"', "ü\u2028", None, "tab\tnl\n", "", 'a/b "q"'], dtype=object),
            "n": np.array([0, -1, 2**62, 7, 8, 9], dtype="int64"),
            "flag": [True, False, True, False, True, False],
            "x": [0.1, np.nan, 1e-16, 2.0, -3.5, 1e17],
        }
    )
    got = json_objects({col: frame[col].to_numpy() for col in frame.columns}).to_pylist()
    assert parsed(got) == parsed(pandas_lines(frame))
    assert got[2] == '{"name":null,"n":4611686018427387904,"flag":true,"x":1e-16}'


def test_no_rows_no_texts() -> None:
    empty = {"a": np.empty(0), "b": np.empty(0, dtype="int64"), "c": np.empty(0, dtype=object)}
    assert json_objects(empty).to_pylist() == []
    assert json_objects(empty, decimals=6).to_pylist() == []
    frame = pd.DataFrame({"a": np.empty(0), "b": np.empty(0)})
    assert len(features_json(frame, ["a"], ["a", "b"], np.zeros(0, dtype=bool))) == 0


def test_features_json_stored_columns_and_every_column_where_flagged() -> None:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({name: rng.normal(size=500) * 100 for name in ("a", "b", "c", "d")})
    frame.loc[::7, "b"] = np.nan
    flagged = rng.random(500) < 0.1
    text = features_json(frame, ["b", "a"], ["a", "b", "c", "d"], flagged)
    column = frame.assign(features=text)["features"]
    assert column.dtype == pd.Series(["x"]).dtype  # pandas' default string type, as a column of str gets
    want = np.asarray(pandas_lines(frame[["b", "a"]].round(6)), dtype=object)
    want[flagged] = pandas_lines(frame.loc[flagged, ["a", "b", "c", "d"]].round(6))
    got = parsed(column)
    assert got == parsed(want)
    assert [list(obj) for obj in got] == [["a", "b", "c", "d"] if f else ["b", "a"] for f in flagged]


def test_window_rows_payloads_parse_as_pandas_writes_the_partials() -> None:
    rng = np.random.default_rng(4)
    n = 3_000
    sensors = [f"dev-{d}-{t}" for d in range(5) for t in ("temperature", "current")]
    sid = rng.choice(sensors, n)
    readings = pd.DataFrame(
        {
            "sensor_id": pd.array(sid, dtype="str"),
            "sensor_type": pd.array([s.rsplit("-", 1)[1] for s in sid], dtype="str"),
            "location": rng.choice(np.array(["hall", "roof/2", None], dtype=object), n),
            "timestamp": pd.to_datetime(T0 + rng.integers(0, 600_000, n), unit="ms", utc=True),
            "value": rng.normal(20.0, 5.0, n) * 10.0 ** rng.integers(-12, 8, n),
            "is_anomaly": rng.random(n) < 0.05,
            "interpolated": rng.random(n) < 0.1,
        }
    )
    rows = window_rows(readings, 60)
    partials = window_partials(readings, 60)
    assert rows["out"].tolist() == ["window"] * len(partials) and len(partials) > 40
    got = parsed(rows["payload"])
    assert got == parsed(pandas_lines(partials))
    assert all(list(obj) == partials.columns.tolist() for obj in got)
    assert len(window_rows(readings.iloc[:0], 60)) == 0
    assert len(window_rows(readings.assign(interpolated=True), 60)) == 0
