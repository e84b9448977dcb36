"""Pure transforms of the streaming job: Spark column expressions (parse, validate, step input) and pandas logic
(dedup, late events, window partials). They build query plans and frames but run no Spark job, create no
SparkSession and do no I/O; jobs.iot_stream wires them into the query."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from millrace.config import ProcessingSettings
from millrace.records import GENERIC_TYPE, WINDOW_COLUMNS

# Dead-letter reasons produced by validation, in the order they are checked (the first failing one is kept).
REASONS: tuple[str, ...] = (
    "malformed",            # not JSON, or not a JSON object
    "missing_field",        # sensor_id, sensor_type, value or timestamp absent
    "bad_value",            # value not a number, NaN or infinite
    "bad_timestamp",        # timestamp not ISO 8601
    "unknown_sensor_type",  # no range configured for it, and not the generic type (no range by declaration)
    "out_of_range",         # outside the physical range of its type
    "future_timestamp",     # more than max_future_s ahead of the batch time
    "too_old",              # more than max_age_s behind the batch time
)  # fmt: skip
LATE_REASON = "late"  # older than its sensor's watermark (newest event time so far - allowed lateness)
INVALID_GROUP = "~invalid"  # grouping key of rows that failed validation


# ---------------------------------------------------------------------------------------------- Spark side
def parse(kafka_rows):  # noqa: ANN001, ANN201 - pyspark DataFrame in, DataFrame out
    """Kafka source rows -> one row per message with the JSON fields, ``raw`` text and source position.

    Columns: kafka_partition, kafka_offset, raw (text), raw_bytes, json_ok, sensor_id, device_id, sensor_type,
    value (double or null), value_text, unit, location, ts_text, timestamp (or null), status, ground_truth.
    """
    from pyspark.sql import functions as F

    from millrace.processing.schema import READING_JSON

    raw = F.col("value").cast("string")
    parsed = kafka_rows.select(
        F.col("partition").alias("kafka_partition"),
        F.col("offset").alias("kafka_offset"),
        raw.alias("raw"),
        F.col("value").alias("raw_bytes"),
        F.from_json(raw, READING_JSON, {"mode": "PERMISSIVE"}).alias("j"),
    )
    ts_text = F.col("j.timestamp")
    value_text = F.col("j.value")
    return parsed.select(
        "kafka_partition",
        "kafka_offset",
        "raw",
        "raw_bytes",
        # from_json yields a struct of nulls for input that is not a JSON object.
        (F.col("j").isNotNull() & F.trim(F.col("raw")).startswith("{")).alias("json_ok"),
        F.col("j.sensor_id").alias("sensor_id"),
        F.coalesce(F.col("j.device_id"), F.col("j.sensor_id")).alias("device_id"),
        F.col("j.sensor_type").alias("sensor_type"),
        value_text.alias("value_text"),
        F.expr("try_cast(j.value AS DOUBLE)").alias("value"),
        F.coalesce(F.col("j.unit"), F.col("j.metadata.unit"), F.lit("")).alias("unit"),
        F.coalesce(F.col("j.location"), F.lit("")).alias("location"),
        ts_text.alias("ts_text"),
        F.expr("try_to_timestamp(j.timestamp)").alias("timestamp"),
        F.coalesce(F.col("j.status"), F.lit("ok")).alias("status"),
        F.col("j.ground_truth").alias("ground_truth"),
    )


def validate(parsed, cfg: ProcessingSettings, now=None):  # noqa: ANN001, ANN201
    """Add ``reason``: null for a usable reading, else the first failing check of :data:`REASONS`.

    ``now`` is the reference time for timestamp sanity (default ``current_timestamp()``, which a streaming
    query fixes per micro-batch, so a replayed batch is judged the same way).
    """
    from pyspark.sql import functions as F

    now = F.current_timestamp() if now is None else now
    # The generic type declares that a sensor has no physical range (an unmapped column of a recording): it is
    # known, and always in range.
    known = F.col("sensor_type") == F.lit(GENERIC_TYPE)
    in_range = known
    for sensor_type, rng in sorted(cfg.ranges.items()):
        is_type = F.col("sensor_type") == F.lit(sensor_type)
        known = known | is_type
        in_range = in_range | (is_type & F.col("value").between(rng.low, rng.high))
    missing = (
        F.col("sensor_id").isNull()
        | (F.col("sensor_id") == "")
        | F.col("sensor_type").isNull()
        | F.col("value_text").isNull()
        | F.col("ts_text").isNull()
    )
    bad_value = F.col("value").isNull() | F.isnan("value") | (F.abs(F.col("value")) == float("inf"))
    ts_seconds = F.col("timestamp").cast("double")
    now_seconds = now.cast("double")
    reason = (
        F.when(~F.col("json_ok"), F.lit("malformed"))
        .when(missing, F.lit("missing_field"))
        .when(bad_value, F.lit("bad_value"))
        .when(F.col("timestamp").isNull(), F.lit("bad_timestamp"))
        .when(~known, F.lit("unknown_sensor_type"))
        .when(~in_range, F.lit("out_of_range"))
        .when(ts_seconds > now_seconds + F.lit(cfg.max_future_s), F.lit("future_timestamp"))
        .when(ts_seconds < now_seconds - F.lit(cfg.max_age_s), F.lit("too_old"))
    )
    return parsed.withColumn("reason", reason)


def to_step_input(validated, labels: list[str]):  # noqa: ANN001, ANN201
    """The columns the stateful step needs, grouped by state bucket: ``labels[hash(device_id) mod len(labels)]``
    (the job picks the labels: ``jobs.iot_stream.bucket_labels``). ``raw`` is the original message bytes
    (binary: it need not be valid UTF-8) of invalid rows only: shipping every reading's bytes through the
    shuffle costs a quarter of Spark's own CPU time here, and a valid reading that turns out late is
    dead-lettered re-encoded from its fields, with its source position."""
    from pyspark.sql import functions as F

    ok = F.col("reason").isNull()
    slot = F.pmod(F.hash("device_id"), F.lit(len(labels))) + 1
    bucket = F.element_at(F.array(*[F.lit(label) for label in labels]), slot)
    return validated.select(
        F.when(ok, bucket).otherwise(F.lit(INVALID_GROUP)).alias("gkey"),
        "reason",
        F.when(ok, F.lit(None).cast("binary")).otherwise(F.col("raw_bytes")).alias("raw"),
        F.col("kafka_partition").cast("int").alias("kafka_partition"),
        "kafka_offset",
        "sensor_id",
        "device_id",
        "sensor_type",
        "location",
        "unit",
        "status",
        "value",
        "timestamp",
        "ground_truth",
    )


# --------------------------------------------------------------------------------------------- pandas side
_TICKS_PER_MS = {"ms": 1, "us": 1_000, "ns": 1_000_000}
_NAT = np.iinfo("int64").min  # NaT as an integer


def timestamps_ms(series: pd.Series) -> np.ndarray:
    """datetime64 (any unit; naive taken as UTC) -> int64 epoch milliseconds, floored as pandas converts units;
    NaT stays NaT's integer."""
    times = series.array
    if not isinstance(times, pd.arrays.DatetimeArray) or times.unit not in _TICKS_PER_MS:
        return timestamps_ms(pd.to_datetime(series, utc=True).astype("datetime64[ms, UTC]"))
    # The datetimes' integers divided, rather than pandas' parse and two unit conversions.
    ticks = times.asi8
    ms = ticks // _TICKS_PER_MS[times.unit]
    ms[ticks == _NAT] = _NAT
    return ms


def drop_duplicates_and_late(
    rows: pd.DataFrame, seen: Mapping[str, np.ndarray], newest: Mapping[str, int], lateness_ms: int
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Split one device's valid readings into (fresh, late, duplicate count).

    Late: older than its sensor's watermark — the newest event time of that sensor seen *before* it in Kafka
    order (``newest`` from earlier batches, then earlier rows of this batch) minus ``lateness_ms``. A sensor's
    readings share a partition (key = sensor_id), so this does not depend on how records fall into
    micro-batches. Late readings are returned for the dead-letter topic, not dropped.
    Duplicate: the (sensor_id, timestamp) of a reading seen before — earlier in this batch (the first in Kafka
    order wins) or in ``seen`` (per sensor, epoch ms inside the lateness horizon).
    ``rows`` needs sensor_id, ts_ms, kafka_partition, kafka_offset.
    """
    if rows.empty:
        return rows, rows, 0
    order = np.lexsort((rows["kafka_offset"].to_numpy(), rows["kafka_partition"].to_numpy()))
    # Usually already in Kafka order (the shuffle keeps each source partition's rows in offset order): then the
    # frame is kept as it is (a stable sort would return it unchanged, index included).
    ordered = rows if bool((order[1:] > order[:-1]).all()) else rows.take(order)
    ts = ordered["ts_ms"].to_numpy(dtype="int64")
    # Sensors as integer codes, factorized on the column as it is (Arrow strings are not turned into Python
    # objects); the state's tables are looked up once per distinct sensor, not once per row.
    sensor, names = pd.factorize(ordered["sensor_id"], use_na_sentinel=False)
    before = pd.Series(ts).groupby(sensor, sort=False).cummax().groupby(sensor, sort=False).shift(1)
    prior = before.to_numpy(dtype="float64", na_value=np.nan)
    if newest:
        prior = np.fmax(prior, np.array([newest.get(name, np.nan) for name in names], dtype="float64")[sensor])
    late_mask = ts < (prior - lateness_ms)  # NaN (first reading of a sensor) compares False
    keys = _keys(sensor, ts)
    dup = np.zeros(len(ordered), dtype=bool)
    dup[~late_mask] = pd.Series(keys[~late_mask]).duplicated(keep="first").to_numpy()
    seen_keys = _seen_keys(names, seen)
    if len(seen_keys):
        dup |= ~late_mask & pd.Series(keys).isin(seen_keys).to_numpy()  # hashed: np.isin sorts both
    late = ordered[late_mask] if late_mask.any() else ordered.iloc[:0]
    return ordered[~late_mask & ~dup], late, int(dup.sum())


def _seen_keys(names: pd.Index, seen: Mapping[str, np.ndarray]) -> np.ndarray:
    """The _keys of the times in ``seen``, each sensor under its code (its position in ``names``)."""
    keys = [
        _keys(np.full(len(seen[name]), code), np.asarray(seen[name], dtype="int64"))
        for code, name in enumerate(names)
        if len(seen.get(name, ()))
    ]
    return np.concatenate(keys) if keys else np.empty(0, dtype="int64")


def _keys(codes: np.ndarray, ts_ms: np.ndarray) -> np.ndarray:
    """One int64 per (sensor code, epoch ms); event times within +-139 years of 1970, codes below 2**20."""
    return codes.astype("int64") * (1 << 43) + (ts_ms + (1 << 42))


def window_partials(readings: pd.DataFrame, window_s: int) -> pd.DataFrame:
    """Mergeable tumbling-window partial aggregates of one micro-batch, per sensor and per type x location.

    Columns: scope, key, sensor_type, location, window_start (epoch ms), count, sum, sumsq, min, max,
    anomaly_count; rows sorted by their group keys within each scope. Interpolated points are not measurements
    and are left out.
    """
    columns = partial_columns(readings, window_s)
    if not len(columns["scope"]):
        return pd.DataFrame(columns=list(_PARTIAL_COLUMNS))
    return pd.DataFrame(columns)


def partial_columns(readings: pd.DataFrame, window_s: int) -> dict[str, np.ndarray]:
    """:func:`window_partials` as arrays (text as object arrays), for callers that need no frame."""
    measured = readings[~readings["interpolated"].astype(bool)] if len(readings) else readings
    if measured.empty:
        return {col: np.empty(0, dtype=object) for col in _PARTIAL_COLUMNS}
    width = window_s * 1000
    # Each key column factorized (sorted) once, and the keys of both scopes folded into one int64 group code
    # whose order is the keys' lexicographic order, sensors first, then the type x location groups under a
    # sensor code one past the last: one groupby on an integer instead of one per scope on strings, with the
    # same groups, the same row order inside each group (pandas' sums are order-compensated, so the same
    # numbers) and the same sorted output.
    sid_c, sids = _sorted_codes(measured["sensor_id"])
    typ_c, types = _sorted_codes(measured["sensor_type"])
    loc_c, locs = _sorted_codes(measured["location"].fillna(""))
    win_c, starts = pd.factorize((timestamps_ms(measured["timestamp"]) // width) * width, sort=True)
    per_sensor = len(types) * len(locs) * len(starts)
    type_loc_win = (typ_c * len(locs) + loc_c) * len(starts) + win_c
    code = np.concatenate([sid_c * per_sensor + type_loc_win, len(sids) * per_sensor + type_loc_win])
    value = np.tile(measured["value"].to_numpy(dtype="float64"), 2)
    anomaly = np.tile(measured["is_anomaly"].fillna(False).astype(bool).to_numpy(dtype="int64"), 2)
    by = pd.DataFrame({"value": value, "sq": value * value, "anomaly": anomaly}).groupby(code, sort=True)
    sums = by.sum()  # value, sq, anomaly: one pass
    group = sums.index.to_numpy(dtype="int64")
    sensor, type_loc = group // per_sensor, (group % per_sensor) // len(starts)
    by_type = sensor == len(sids)
    sensor_type, location = types[type_loc // len(locs)], locs[type_loc % len(locs)]
    key = sids[np.minimum(sensor, len(sids) - 1)]
    key[by_type] = [f"{t}|{loc}" for t, loc in zip(sensor_type[by_type], location[by_type], strict=True)]
    value_by = by["value"]
    return {
        "scope": np.where(by_type, "type_location", "sensor").astype(object),
        "key": key,
        "sensor_type": sensor_type,
        "location": location,
        "window_start": starts[group % len(starts)],
        "count": by.size().to_numpy(),
        "sum": sums["value"].to_numpy(),
        "sumsq": sums["sq"].to_numpy(),
        "min": value_by.min().to_numpy(),
        "max": value_by.max().to_numpy(),
        "anomaly_count": sums["anomaly"].to_numpy(),
    }


def _sorted_codes(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """int64 codes of ``column``'s values in sorted order, and the values (object array). Factorized as the
    column is stored: Arrow strings are encoded by Arrow, not turned into Python objects first."""
    codes, values = pd.factorize(column, sort=True)
    return codes.astype("int64"), np.asarray(values, dtype=object)


_PARTIAL_COLUMNS = ("scope", "key", "sensor_type", "location", "window_start", "count", "sum", "sumsq", "min", "max",
                    "anomaly_count")  # fmt: skip


def merge_partials(rows: list[dict]) -> pd.DataFrame:
    """Partials of several producers (the step's buckets) of one micro-batch -> one row per window."""
    if not rows:
        return pd.DataFrame(columns=list(_PARTIAL_COLUMNS))
    frame = pd.DataFrame(rows, columns=list(_PARTIAL_COLUMNS))
    merged = frame.groupby(["scope", "key", "window_start"], sort=True, as_index=False).agg(
        sensor_type=("sensor_type", "first"),
        location=("location", "first"),
        count=("count", "sum"),
        sum=("sum", "sum"),
        sumsq=("sumsq", "sum"),
        min=("min", "min"),
        max=("max", "max"),
        anomaly_count=("anomaly_count", "sum"),
    )
    return merged[list(_PARTIAL_COLUMNS)]


def finish_windows(merged: pd.DataFrame, window_s: int) -> pd.DataFrame:
    """Merged partials (summed count/sum/sumsq, min of min, max of max) -> records.WINDOW_COLUMNS rows."""
    out = merged.copy()
    count = out["count"].astype("float64")
    mean = out["sum"] / count
    # Sample standard deviation from the sums; clipped at 0 against rounding (a constant signal).
    var = (out["sumsq"] - count * mean * mean) / (count - 1).where(count > 1)
    out["mean"] = mean
    out["stddev"] = np.sqrt(var.clip(lower=0)).fillna(0.0)
    start = pd.to_datetime(out["window_start"].astype("int64"), unit="ms", utc=True)
    out["window_start"] = start
    out["window_end"] = start + pd.Timedelta(seconds=window_s)
    out["count"] = out["count"].astype("int64")
    out["anomaly_count"] = out["anomaly_count"].astype("int64")
    return out[list(WINDOW_COLUMNS)].reset_index(drop=True)
