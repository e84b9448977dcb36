"""Value conversions shared by the store backends.

Both backends keep event times at millisecond precision (BSON dates have no more, and the wire format writes
milliseconds): every timestamp is floored to whole milliseconds since the Unix epoch on the way in and comes
back as a timezone-aware UTC ``datetime``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from millrace.records import READING_ROW, WINDOW_COLUMNS, Alert, WindowMetric, field_types
from millrace.stores.base import ALERT_FIELDS, COLLECTIONS, READING_COLUMNS, dimensions_text

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The missing value of columns shaped for sqlite3 binding (frame_columns(sqlite=True)): SQLite binds a NaN
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
    if isinstance(series.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(series.dtype):
        # The common case, without pandas' per-call overhead: the UTC instant (naive = UTC) as int64 ns.
        ns_i8 = series.to_numpy(dtype="datetime64[ns]").view(np.int64)
        values = ns_i8 // 1_000_000
        mask = ns_i8 == NAT_I8
        if not mask.any():
            return values.tolist()
        filled = values.astype(object)
        filled[mask] = null
        return filled.tolist()
    ts = series
    if not isinstance(ts.dtype, pd.DatetimeTZDtype):
        if pd.api.types.is_datetime64_dtype(ts.dtype):
            ts = ts.dt.tz_localize(UTC)  # naive = UTC
        else:  # strings, Python datetimes, pandas Timestamps (object or str dtype)
            ts = pd.to_datetime(ts, utc=True, format="ISO8601")
    ns = ts.dt.as_unit("ns")
    mask = ns.isna().to_numpy()
    values = ns.to_numpy(dtype="datetime64[ns]").astype("int64") // 1_000_000
    out: list[Any] = values.tolist()
    if mask.any():
        for i in np.flatnonzero(mask):
            out[i] = null
    return out


def _nullable(series: pd.Series, kind: str, *, null: Any = None, int_bools: bool = False) -> list[Any]:
    """Python values for one column, with every flavour of missing (NaN, NaT, None, pd.NA) as ``null``;
    booleans as 0/1 ints when ``int_bools``."""
    if kind == "object":
        return series.to_numpy(dtype=object, na_value=null).tolist()
    values: np.ndarray  # of Python objects, to fill with ``null`` where ``mask``
    if kind == "float":
        numeric = series if pd.api.types.is_float_dtype(series.dtype) else pd.to_numeric(series, errors="coerce")
        arr = numeric.to_numpy(dtype="float64", na_value=np.nan)
        mask = np.isnan(arr)
        if null is SQLITE_NULL or not mask.any():
            return arr.tolist()  # (NaN already is the marker's value: nothing to replace)
        values = arr.astype(object)
    elif kind == "int":
        mask = series.isna().to_numpy()
        if pd.api.types.is_integer_dtype(series.dtype) and not mask.any():
            return series.to_numpy(dtype=np.int64).tolist()
        numeric = series if pd.api.types.is_float_dtype(series.dtype) else pd.to_numeric(series, errors="coerce")
        arr = numeric.to_numpy(dtype="float64", na_value=np.nan)
        mask = np.isnan(arr)
        values = np.where(mask, 0, arr).astype(np.int64).astype(object)
    elif kind == "bool":
        mask = series.isna().to_numpy()
        flags = np.zeros(len(series), dtype=bool)
        flags[~mask] = series.to_numpy(dtype=object)[~mask].astype(bool)
        if not mask.any():
            return (flags.astype(np.int64) if int_bools else flags).tolist()
        values = (flags.astype(np.int64) if int_bools else flags).astype(object)
    else:
        raise ValueError(f"unknown column kind {kind!r}")
    if mask.any():
        values[mask] = null
    return values.tolist()


def frame_columns(
    rows: pd.DataFrame,
    columns: tuple[str, ...],
    *,
    key: tuple[str, ...],
    times: tuple[str, ...],
    ints: tuple[str, ...] = (),
    floats: tuple[str, ...] = (),
    bools: tuple[str, ...] = (),
    sqlite: bool = False,
) -> dict[str, list[Any]]:
    """Plain Python columns for ``columns`` (missing optional columns become None), one row per ``key``.

    Times become epoch milliseconds. Rows repeating a key keep the last occurrence, as a sequence of
    upserts would; key columns must not be null.

    ``sqlite=True`` shapes the values for ``sqlite3`` parameter binding: a missing value is SQLITE_NULL
    (a float NaN, which SQLite binds as NULL) and a boolean is the int 0/1 SQLite stores anyway. The
    stored values are the same as with None and bools, but sqlite3 binds exact ints, floats and strs
    directly, while None and bools go through its adapter lookup — several times the cost per value.
    """
    null = SQLITE_NULL if sqlite else None
    unknown = [c for c in key if c not in rows.columns]
    if unknown:
        raise ValueError(f"rows lack the key column(s) {', '.join(unknown)}")
    n = len(rows)
    out: dict[str, list[Any]] = {}
    for col in columns:
        if col not in rows.columns:
            out[col] = [null] * n
        elif col in times:
            out[col] = ms_column(rows[col], null=null)
        elif col in ints:
            out[col] = _nullable(rows[col], "int", null=null)
        elif col in floats:
            out[col] = _nullable(rows[col], "float", null=null)
        elif col in bools:
            out[col] = _nullable(rows[col], "bool", null=null, int_bools=sqlite)
        else:
            out[col] = _nullable(rows[col], "object", null=null)
    for col in key:
        if null in out[col]:  # the marker itself (an identity match), not any NaN
            raise ValueError(f"key column {col} has null values")
    repeated = _repeated([out[c] if c in times else rows[c] for c in key])
    if repeated is not None:
        keep = np.flatnonzero(~repeated)
        out = {c: [vals[i] for i in keep] for c, vals in out.items()}
    return out


def _repeated(keys: list[Any]) -> np.ndarray | None:
    """The mask of rows whose key a later row repeats, or None when every key is unique (the usual case).

    Sort-based on factorized codes: cheaper than hashing tuples of Python values.
    """
    codes = [pd.factorize(np.asarray(k) if isinstance(k, list) else k)[0] for k in keys]
    order = np.lexsort(codes[::-1])  # stable: rows of one key stay in their original order
    same = np.ones(len(order) - 1, dtype=bool) if len(order) else np.zeros(0, dtype=bool)
    for c in codes:
        sorted_codes = c[order]
        same &= sorted_codes[1:] == sorted_codes[:-1]
    if not same.any():
        return None
    repeated = np.zeros(len(order), dtype=bool)
    repeated[order[:-1][same]] = True  # a row followed by one with the same key is superseded by it
    return repeated


def reading_columns(rows: pd.DataFrame, *, sqlite: bool = False) -> dict[str, list[Any]]:
    return frame_columns(
        rows,
        READING_COLUMNS,
        key=("sensor_id", "timestamp"),
        times=READING_TIME_COLUMNS,
        ints=READING_INT_COLUMNS,
        floats=READING_FLOAT_COLUMNS,
        bools=READING_BOOL_COLUMNS,
        sqlite=sqlite,
    )


def window_columns(rows: pd.DataFrame, *, sqlite: bool = False) -> dict[str, list[Any]]:
    return frame_columns(
        rows,
        WINDOW_COLUMNS,
        key=("scope", "key", "window_start"),
        times=WINDOW_TIME_COLUMNS,
        ints=WINDOW_INT_COLUMNS,
        floats=WINDOW_FLOAT_COLUMNS,
        sqlite=sqlite,
    )


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
