"""Value conversions shared by the store backends.

Both backends keep event times at millisecond precision (BSON dates have no more, and the wire format writes
milliseconds): every timestamp is floored to whole milliseconds since the Unix epoch on the way in and comes
back as a timezone-aware UTC ``datetime``.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from millrace.records import READING_ROW, WINDOW_COLUMNS, Alert, WindowMetric, field_types
from millrace.stores.base import ALERT_FIELDS, COLLECTIONS, READING_COLUMNS, dimensions_text

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The missing value of columns shaped for sqlite3 binding (frame_arrays(sqlite=True)): SQLite binds a NaN
# double as NULL (sqlite3_bind_double), so a NaN is stored, and read back, exactly as None would be.
SQLITE_NULL = float("nan")
NAT_I8 = np.iinfo(np.int64).min  # NaT as int64


def _of_type(columns: Mapping[str, type], value_type: type) -> tuple[str, ...]:
    return tuple(name for name, t in columns.items() if t is value_type)


# Columns by the type of their values, from the records' definitions.
READING_TIME_COLUMNS = _of_type(READING_ROW, datetime)  # timestamp, ingested_at
READING_BOOL_COLUMNS = _of_type(READING_ROW, bool)  # interpolated, is_anomaly
READING_INT_COLUMNS = _of_type(READING_ROW, int)  # kafka_partition, kafka_offset
READING_FLOAT_COLUMNS = _of_type(READING_ROW, float)  # value, score
WINDOW_TIME_COLUMNS = _of_type(field_types(WindowMetric), datetime)  # window_start, window_end
WINDOW_INT_COLUMNS = _of_type(field_types(WindowMetric), int)  # count, anomaly_count
WINDOW_FLOAT_COLUMNS = _of_type(field_types(WindowMetric), float)  # mean, min, max, stddev
ALERT_TIME_FIELDS = _of_type(field_types(Alert), datetime)  # opened_at, updated_at, closed_at

# Operator lifecycle rank: a change to a lower rank is a backwards move. "closed" is the job saying the
# episode ended; an operator may still acknowledge or resolve a closed alert.
STATUS_RANK: dict[str, int] = {"open": 0, "closed": 0, "acknowledged": 1, "resolved": 2}
JOB_STATUSES = ("open", "closed")
OPERATOR_STATUSES = ("acknowledged", "resolved")

RETENTION_FIELDS: dict[str, str] = {
    # collection -> the time field compared with the retention cutoff
    "sensor_metrics": "timestamp",
    "anomaly_alerts": "updated_at",
    "alert_events": "at",  # events go with their alert; this field only orders them
    "windowed_metrics": "window_end",
    "data_quality": "recorded_at",
    "sensor_status": "last_event_time",
    "shop_analytics": "computed_at",  # a whole run expires together
}


def check_collection(name: str) -> None:
    if name not in COLLECTIONS:
        raise KeyError(f"unknown collection {name!r} (known: {', '.join(COLLECTIONS)})")


def ms_of(value: Any) -> int | None:
    """Milliseconds since the epoch (floored) for a datetime, pandas Timestamp, ISO string or None."""
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str):
        try:  # the stdlib parser is ~30x cheaper than pandas' for the usual ISO 8601 forms
            value = datetime.fromisoformat(value)
        except ValueError:  # e.g. more than microsecond digits: pandas parses those
            value = pd.Timestamp(value.replace("Z", "+00:00"))
    if isinstance(value, np.datetime64):
        value = pd.Timestamp(value)
    if isinstance(value, pd.Timestamp):
        if value.tzinfo is None:
            value = value.tz_localize(UTC)
        return int(value.as_unit("ns").value // 1_000_000)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        delta = value - EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    raise TypeError(f"not a timestamp: {value!r}")


def dt_of(ms: int | None) -> datetime | None:
    """The aware UTC datetime for epoch milliseconds (exact, no float rounding)."""
    if ms is None:
        return None
    return EPOCH + timedelta(milliseconds=int(ms))


def ms_column(series: pd.Series, *, null: Any = None) -> list[Any]:
    """Epoch milliseconds for a column of datetimes (any resolution, naive = UTC) or ISO strings; missing
    values become ``null``."""
    values, missing = _ms_values(series)
    return _with_nulls(values, missing, null).tolist()


def _ms_values(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Epoch milliseconds (int64, floored) of a column of datetimes or ISO strings, and its missing mask."""
    if isinstance(series.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(series.dtype):
        # The common case, without pandas' per-call overhead: the UTC instant (naive = UTC) as int64 ns.
        ns_i8 = series.to_numpy(dtype="datetime64[ns]").view(np.int64)
        return ns_i8 // 1_000_000, ns_i8 == NAT_I8
    # strings, Python datetimes, pandas Timestamps (object or str dtype)
    ns = pd.to_datetime(series, utc=True, format="ISO8601").dt.as_unit("ns")
    return ns.to_numpy(dtype="datetime64[ns]").astype("int64") // 1_000_000, ns.isna().to_numpy()


def _with_nulls(values: np.ndarray, missing: np.ndarray, null: Any) -> np.ndarray:
    """``values`` with ``null`` where ``missing`` (as Python objects then), unchanged when nothing is missing."""
    if not missing.any():
        return values
    filled = values.astype(object)
    filled[missing] = null
    return filled


def _nullable(
    series: pd.Series, kind: str, *, null: Any = None, int_bools: bool = False, label: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """One column as an array whose ``tolist()`` gives its Python values, with every flavour of missing (NaN,
    NaT, None, pd.NA) as ``null``, and the mask of the missing ones; booleans as 0/1 ints when ``int_bools``.

    A ``label`` column (strings with few distinct values) is converted once per distinct value: each value of
    pandas' Arrow-backed strings would otherwise become a Python str of its own.
    """
    if kind == "object":
        if label and isinstance(series.dtype, pd.StringDtype):
            codes, uniques = pd.factorize(series)
            distinct = np.empty(len(uniques) + 1, dtype=object)
            distinct[:-1] = uniques.to_numpy(dtype=object)
            distinct[-1] = null  # a missing value's code is -1: it picks this one
            return distinct[codes], codes < 0
        if series.dtype == object:  # one look at each object for what is missing, not two
            values = series.to_numpy(dtype=object, copy=True)
            missing = pd.isna(values)
            values[missing] = null
            return values, missing
        return series.to_numpy(dtype=object, na_value=null), series.isna().to_numpy()
    if kind == "float":
        arr = _floats(series)
        missing = np.isnan(arr)
        if null is SQLITE_NULL:
            return arr, missing  # NaN already is the marker's value: nothing to replace
        return _with_nulls(arr, missing, null), missing
    if kind == "int":
        if pd.api.types.is_integer_dtype(series.dtype) and not series.hasnans:
            return series.to_numpy(dtype=np.int64), np.zeros(len(series), dtype=bool)
        arr = _floats(series)
        missing = np.isnan(arr)
        return _with_nulls(np.where(missing, 0, arr).astype(np.int64), missing, null), missing
    if kind == "bool":
        if series.dtype == np.bool_:
            flags = series.to_numpy()
            missing = np.zeros(len(flags), dtype=bool)
        else:
            missing = series.isna().to_numpy()
            flags = np.zeros(len(series), dtype=bool)
            flags[~missing] = series.to_numpy(dtype=object)[~missing].astype(bool)
        return _with_nulls(flags.astype(np.int64) if int_bools else flags, missing, null), missing
    raise ValueError(f"unknown column kind {kind!r}")


def _floats(series: pd.Series) -> np.ndarray:
    """A column as float64, NaN where a value is missing or not a number (pd.to_numeric's coercion)."""
    if pd.api.types.is_float_dtype(series.dtype):
        return series.to_numpy(dtype="float64", na_value=np.nan)
    if series.dtype == object:
        # Numbers among Nones (the Kafka positions of a batch with interpolated readings): Arrow reads them in
        # one pass, where to_numeric and its check for missing values look at every object again.
        with contextlib.suppress(pa.ArrowException, OverflowError):
            numbers = pa.array(series.to_numpy(), from_pandas=True)
            if pa.types.is_integer(numbers.type) or pa.types.is_floating(numbers.type):
                return numbers.to_numpy(zero_copy_only=False).astype("float64", copy=False)
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def as_lists(arrays: Mapping[str, np.ndarray]) -> dict[str, list[Any]]:
    """Columns of :func:`frame_arrays` as lists of plain Python values."""
    return {c: values.tolist() for c, values in arrays.items()}


def frame_arrays(
    rows: pd.DataFrame,
    columns: tuple[str, ...],
    *,
    key: tuple[str, ...],
    times: tuple[str, ...],
    ints: tuple[str, ...] = (),
    floats: tuple[str, ...] = (),
    bools: tuple[str, ...] = (),
    labels: tuple[str, ...] = (),
    sqlite: bool = False,
) -> dict[str, np.ndarray]:
    """Columns for ``columns`` as numpy arrays whose items (``tolist()``) are plain Python values (missing
    optional columns become None), one row per ``key``.

    Times become epoch milliseconds. Rows repeating a key keep the last occurrence, as a sequence of
    upserts would; key columns must not be null. ``labels`` are string columns with few distinct values
    (only a matter of cost: see _nullable).

    ``sqlite=True`` shapes the values for ``sqlite3`` parameter binding: a missing value is SQLITE_NULL
    (a float NaN, which SQLite binds as NULL) and a boolean is the int 0/1 SQLite stores anyway. The
    stored values are the same as with None and bools, but sqlite3 binds exact ints, floats and strs
    directly, while None and bools go through its adapter lookup — several times the cost per value.
    """
    null = SQLITE_NULL if sqlite else None
    unknown = [c for c in key if c not in rows.columns]
    if unknown:
        raise ValueError(f"rows lack the key column(s) {', '.join(unknown)}")
    values: dict[str, np.ndarray] = {}
    missing: dict[str, np.ndarray] = {}
    for col in columns:
        if col not in rows.columns:
            values[col] = np.full(len(rows), null, dtype=object)
        elif col in times:
            ms, missing[col] = _ms_values(rows[col])
            values[col] = _with_nulls(ms, missing[col], null)
        else:
            kind = "int" if col in ints else "float" if col in floats else "bool" if col in bools else "object"
            values[col], missing[col] = _nullable(rows[col], kind, null=null, int_bools=sqlite, label=col in labels)
    for col in key:
        if missing[col].any():
            raise ValueError(f"key column {col} has null values")
    repeated = _repeated([values[c] if c in times else rows[c] for c in key])
    if repeated is not None:
        keep = np.flatnonzero(~repeated)
        values = {c: v[keep] for c, v in values.items()}
    return values


def _repeated(keys: list[Any]) -> np.ndarray | None:
    """The mask of rows whose key a later row repeats, or None when every key is unique (the usual case).

    Each key column's codes are folded into one code per row, factorized again after each column so that it
    stays below the row count (and the product below int64's range): hashing ints, not tuples of values.
    """
    codes, distinct = pd.factorize(keys[0])
    for column in keys[1:]:
        column_codes, column_distinct = pd.factorize(column)
        codes, distinct = pd.factorize(codes * len(column_distinct) + column_codes)
    if len(distinct) == len(codes):
        return None
    # A row followed by one with the same key is superseded by it.
    return pd.Series(codes).duplicated(keep="last").to_numpy()


# String columns of a reading with few distinct values in a batch: its sensor's fields, its status, its label.
READING_LABEL_COLUMNS = ("sensor_id", "device_id", "sensor_type", "location", "unit", "status", "ground_truth")


def reading_columns(rows: pd.DataFrame, *, sqlite: bool = False) -> dict[str, list[Any]]:
    return as_lists(reading_arrays(rows, sqlite=sqlite))


def reading_arrays(rows: pd.DataFrame, *, sqlite: bool = False) -> dict[str, np.ndarray]:
    return frame_arrays(
        rows,
        READING_COLUMNS,
        key=("sensor_id", "timestamp"),
        times=READING_TIME_COLUMNS,
        ints=READING_INT_COLUMNS,
        floats=READING_FLOAT_COLUMNS,
        bools=READING_BOOL_COLUMNS,
        labels=READING_LABEL_COLUMNS,
        sqlite=sqlite,
    )


def window_columns(rows: pd.DataFrame, *, sqlite: bool = False) -> dict[str, list[Any]]:
    arrays = frame_arrays(
        rows,
        WINDOW_COLUMNS,
        key=("scope", "key", "window_start"),
        times=WINDOW_TIME_COLUMNS,
        ints=WINDOW_INT_COLUMNS,
        floats=WINDOW_FLOAT_COLUMNS,
        sqlite=sqlite,
    )
    return as_lists(arrays)


def alert_values(alert: Mapping[str, Any]) -> dict[str, Any]:
    """One alert as plain values: times in epoch ms, lists as lists, status checked."""
    if not alert.get("alert_id"):
        raise ValueError("an alert needs an alert_id")
    out: dict[str, Any] = {}
    for name in ALERT_FIELDS:
        value = alert.get(name)
        if name in ALERT_TIME_FIELDS:
            value = ms_of(value)
        elif name in ("sensor_ids", "top_features"):
            value = [str(v) for v in (value or ())]
        elif name == "score":
            value = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
        elif name == "readings":
            value = 1 if value is None else int(value)
        out[name] = value
    status = out["status"] or "open"
    if status not in JOB_STATUSES:
        raise ValueError(f"alert {out['alert_id']}: the job may only set status open or closed, not {status!r}")
    out["status"] = status
    if out["opened_at"] is None:
        raise ValueError(f"alert {out['alert_id']} has no opened_at")
    if out["updated_at"] is None:
        out["updated_at"] = out["opened_at"]
    if status == "closed" and out["closed_at"] is None:
        out["closed_at"] = out["updated_at"]
    return out


EVENT_RANK = {"opened": 0, "acknowledged": 1, "resolved": 2, "closed": 3}


def order_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Lifecycle events in the order they happened (ties broken by the lifecycle order)."""
    return sorted(events, key=lambda e: (e["at"], EVENT_RANK.get(e["event"], 9)))


def check_lifecycle(alert_id: str, current: str, target: str) -> bool:
    """Whether an operator move ``current`` -> ``target`` changes anything; ValueError when it goes back."""
    if target not in OPERATOR_STATUSES:
        raise ValueError(f"alert status can be set to acknowledged or resolved, not {target!r}")
    if STATUS_RANK[target] < STATUS_RANK[current]:
        raise ValueError(f"alert {alert_id} is {current}; it cannot go back to {target}")
    return current != target


def status_values(row: Mapping[str, Any]) -> dict[str, Any]:
    if not row.get("sensor_id"):
        raise ValueError("a sensor status row needs a sensor_id")
    interval = row.get("expected_interval_s")
    return {
        "sensor_id": str(row["sensor_id"]),
        "device_id": row.get("device_id"),
        "sensor_type": row.get("sensor_type"),
        "location": row.get("location"),
        "last_event_time": ms_of(row.get("last_event_time")),
        "state": row.get("state") or "active",
        "expected_interval_s": None if interval is None else float(interval),
        "updated_at": ms_of(row.get("updated_at")) or ms_of(datetime.now(UTC)),
    }


def retention_by_collection(retention_days: float, per_collection: Mapping[str, float] | None) -> dict[str, float]:
    """The retention in days of each collection with a time limit of its own (alert_events go with their
    alerts); ``per_collection`` overrides ``retention_days`` by name, KeyError for an unknown name."""
    overrides = dict(per_collection or {})
    for name in overrides:
        check_collection(name)
    return {name: float(overrides.get(name, retention_days)) for name in COLLECTIONS if name != "alert_events"}


def cutoffs(now: datetime, retention_days: float, per_collection: Mapping[str, float] | None) -> dict[str, int]:
    """The retention cutoff (epoch ms) per collection; alert_events follow their alerts."""
    now_ms = ms_of(now)
    assert now_ms is not None
    days = retention_by_collection(retention_days, per_collection)
    return {name: now_ms - int(d * 86_400_000) for name, d in days.items()}


def analytics_values(row: Mapping[str, Any]) -> dict[str, Any]:
    """A shop analytics row for storing: times as epoch ms, dimensions as canonical JSON text, value a float;
    ValueError naming what is missing or wrong."""
    metric = row.get("metric")
    if not isinstance(metric, str) or not metric:
        raise ValueError("an analytics row needs a metric name")
    dimensions = row.get("dimensions") or {}
    if not isinstance(dimensions, Mapping):
        raise ValueError(f"the dimensions of {metric} must be a mapping of strings")
    out: dict[str, Any] = {"metric": metric, "dimensions": dimensions_text(dimensions)}
    for name in ("computed_at", "window_start", "window_end"):
        ms = ms_of(row.get(name))
        if ms is None:
            raise ValueError(f"an analytics row of {metric} needs {name}")
        out[name] = ms
    value = row.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"the value of {metric} must be a finite number, not {value!r}")
    out["value"] = float(value)
    return out


def analytics_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored analytics row as ``latest_analytics`` returns it: the browsed row with its dimensions as a dict."""
    text = row.get("dimensions") or "{}"
    return dict(row, dimensions=json.loads(text) if isinstance(text, str) else dict(text))
