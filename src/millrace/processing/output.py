"""The ways out of the stateful step: a :class:`StepSink` for alerts and readings, output rows for the rest.

The step (processing.stateful) gets a factory of sinks and calls it once per call of the step; the job injects
jobs.sink.worker_sink (store + alerts and predictions topics, one per Python worker), the tests a
:class:`MemorySink`. Everything else the step produces — window partials, sensor status, quality counters,
dead letters, and the alerts again as "alert_sent" rows for the driver to count — leaves as its output rows
(schema.STEP_OUTPUT, told apart by ``out``, content as JSON in ``payload``), built by the functions below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from millrace.config import Settings
from millrace.processing import episodes
from millrace.processing.schema import STEP_OUTPUT_COLUMNS
from millrace.processing.state import Episode, Track
from millrace.processing.transforms import partial_columns
from millrace.records import to_iso

STAGE = "validation"  # the dead letters' stage


class StepSink(Protocol):
    """Where one call of the stateful step (one state bucket, one micro-batch) puts its alerts and readings.

    When: in the process that runs the call (a Spark Python worker), before the call returns its output rows
    and before Spark commits the bucket's state. Per call at most one ``write_alerts`` and then at most one
    ``write_readings``, never with an empty batch: a call's alerts are written before its readings, so an
    alert is visible as soon as its bucket is computed. Calls for other buckets of the same micro-batch run in
    other processes, concurrently and in no particular order; nothing orders one call's readings after another
    call's alerts.

    Idempotent: a micro-batch that fails is replayed from the same offsets and state and writes the same
    alerts and readings again, so an implementation upserts on natural keys — readings on (sensor_id,
    timestamp), alerts on alert_id — and a replay changes nothing it stores. Messages to topics are
    at-least-once (a replay may repeat them; their keys tell repeats apart).

    Raises: a method returns once what it was given is durable (stored, and delivered where it produces
    messages), or raises — StoreUnavailable, KafkaUnavailable or any error — which fails the call and with
    it the micro-batch (Spark replays it). It never drops rows silently.
    """

    def write_alerts(self, alerts: Sequence[Mapping[str, Any]], sensor_types: Mapping[str, str]) -> None:
        """Alert episodes touched by the call (records.Alert dicts, stores.base.ALERT_FIELDS), each the
        episode's state at the end of the call; ``sensor_types`` maps each of their sensors to its type, from
        the bucket's state (an alert record names its sensors, not their types, which the recommendations
        need)."""
        ...

    def write_readings(self, readings: pd.DataFrame) -> None:
        """Cleaned, scored readings of the call, measured and interpolated, in no particular order: columns
        of stores.base.READING_COLUMNS but ``ingested_at`` (the sink stamps it), ``timestamp`` timezone-aware
        UTC."""
        ...


# The job's sink needs the store and topic settings, so a factory takes the whole Settings.
SinkFactory = Callable[[Settings], StepSink]


class MemorySink:
    """A StepSink that keeps, in memory and in order, exactly what it was given (it does not upsert: a test
    sees every write, a replay's included). ``factory`` is a SinkFactory returning this sink."""

    def __init__(self) -> None:
        self.writes: list[tuple[Literal["alerts", "readings"], Any]] = []
        self.sensor_types: dict[str, str] = {}  # every type the step handed over with its alerts

    def write_alerts(self, alerts: Sequence[Mapping[str, Any]], sensor_types: Mapping[str, str]) -> None:
        self.writes.append(("alerts", [dict(a) for a in alerts]))
        self.sensor_types.update(sensor_types)

    def write_readings(self, readings: pd.DataFrame) -> None:
        self.writes.append(("readings", readings.copy()))

    def factory(self, _settings: Settings) -> MemorySink:
        return self

    @property
    def order(self) -> list[str]:
        """The kinds of the writes, in call order ("alerts" / "readings")."""
        return [kind for kind, _ in self.writes]

    @property
    def alerts(self) -> list[dict[str, Any]]:
        """Every alert written, in order."""
        return [alert for kind, batch in self.writes if kind == "alerts" for alert in batch]

    @property
    def readings(self) -> pd.DataFrame:
        """Every reading written, in order, as one frame (empty without columns when none was)."""
        frames = [batch for kind, batch in self.writes if kind == "readings"]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ---------------------------------------------------------------------------------------------- output rows
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso_ms(ms: int) -> str:
    return to_iso(_EPOCH + timedelta(milliseconds=int(ms)))


def frame(columns: Mapping[str, Any], n: int) -> pd.DataFrame:
    """``n`` output rows with ``columns``; the other columns of schema.STEP_OUTPUT null."""
    return pd.DataFrame({col: columns[col] if col in columns else [None] * n for col in STEP_OUTPUT_COLUMNS})


def payload_rows(kind: str, payloads: list[dict[str, Any]], device_ids: list[Any] | None = None) -> pd.DataFrame:
    n = len(payloads)
    return frame(
        {
            "out": [kind] * n,
            "device_id": device_ids if device_ids is not None else [None] * n,
            "payload": [orjson.dumps(p).decode() for p in payloads],
        },
        n,
    )


def dead_letters(rows: pd.DataFrame, reasons: pd.Series, *, source: str, at_ms: int) -> pd.DataFrame:
    """records.DeadLetter dicts for ``rows`` (raw, kafka_partition, kafka_offset) as "dead" output rows."""
    at = iso_ms(at_ms)
    payloads = [
        {
            "reason": str(reason),
            "stage": STAGE,
            "source": source,
            "position": f"{int(p)}:{int(o)}",
            "raw": _text(raw),
            "at": at,
        }
        for reason, raw, p, o in zip(reasons, rows["raw"], rows["kafka_partition"], rows["kafka_offset"], strict=True)
    ]
    return payload_rows("dead", payloads)


def _text(raw: object) -> str:
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return bytes(raw).decode("utf-8", errors="replace")
    return "" if raw is None else str(raw)


def reencoded(rows: pd.DataFrame) -> list[str]:
    """Valid readings as JSON rebuilt from their parsed fields (their original bytes stay in the source topic,
    at the dead letter's position)."""
    fields = ("sensor_id", "device_id", "sensor_type", "value", "unit", "location", "status", "ground_truth")
    records = rows[list(fields)].astype(object).where(rows[list(fields)].notna(), None).to_dict("records")
    for record, ms in zip(records, rows["ts_ms"], strict=True):
        record["timestamp"] = iso_ms(ms)
    return [orjson.dumps(r).decode() for r in records]


def status_rows(tracks: Mapping[str, Track], sensor_ids: Sequence[str], now_ms: int) -> pd.DataFrame:
    """The sensor_status of ``sensor_ids`` (as their ``tracks`` say) as "status" output rows."""
    updated = iso_ms(now_ms)
    payloads, devices = [], []
    for sid in sensor_ids:
        track = tracks[sid]
        payloads.append(
            {
                "sensor_id": sid,
                "device_id": track.device_id,
                "sensor_type": track.sensor_type,
                "location": track.location,
                "last_event_time": iso_ms(track.last_ms),
                "state": "active" if track.active else "inactive",
                "expected_interval_s": track.interval_s,
                "updated_at": updated,
            }
        )
        devices.append(track.device_id)
    return payload_rows("status", payloads, devices)


def alert_rows(touched: Sequence[tuple[str, Episode]], zscore_threshold: float) -> pd.DataFrame:
    """Episodes touched, as (device_id, episode), as "alert" output rows (records.Alert dicts)."""
    alerts = [episodes.to_alert(ep, device_id=d, zscore_threshold=zscore_threshold) for d, ep in touched]
    return payload_rows("alert", alerts, [d for d, _ in touched])


def window_rows(readings: pd.DataFrame, window_s: int) -> pd.DataFrame:
    """The readings' tumbling-window partials (transforms.window_partials) as "window" output rows."""
    partials = partial_columns(readings, window_s)
    n = len(partials["scope"])
    if not n:
        return frame({}, 0)
    return frame({"out": ["window"] * n, "payload": text_column(json_objects(partials))}, n)


# ------------------------------------------------------------------------------------------------ JSON text
# A column of pandas' default string type: Arrow text handed over as it is, not converted from Python strings.
_TEXT = pd.StringDtype("pyarrow", na_value=np.nan)
_STR = pa.large_string()


def features_json(
    rows: pd.DataFrame, stored: Sequence[str], every: Sequence[str], flagged: np.ndarray
) -> pd.api.extensions.ExtensionArray:
    """Each row's features as one JSON object, values rounded to 6 decimals: the ``stored`` columns, and all of
    ``every`` where ``flagged``. A column of pandas' default string type."""
    text = json_objects({col: rows[col].to_numpy() for col in stored}, decimals=6)
    if flagged.any():
        at = np.flatnonzero(flagged)  # few rows: taken by position rather than masking every column
        full = json_objects({col: rows[col].to_numpy()[at] for col in every}, decimals=6)
        text = pc.replace_with_mask(text, pa.array(flagged), full)
    return text_column(text)


def text_column(text: pa.Array) -> pd.api.extensions.ExtensionArray:
    """Arrow text as a column of pandas' default string type, without a copy."""
    return pd.arrays.ArrowStringArray(text, dtype=_TEXT)


def json_objects(columns: Mapping[str, np.ndarray], *, decimals: int | None = None) -> pa.Array:
    """One JSON object text per row of ``columns`` (at least one; keys in their order), built column-wise by
    Arrow rather than row by row; each object parses to what pandas' ``to_json(orient="records")`` writes.

    Floats: with ``decimals``, rounded to that many places (as ``DataFrame.round``) and written as the
    shortest text that reads back the same (``1.0`` as ``1``); without, byte for byte as pandas writes them
    (:func:`pandas_float_text`). Either way NaN and infinities are ``null``, -0.0 is 0 and magnitudes beyond
    pandas' fixed-point range have its 10 significant digits, as in pandas. Integers and booleans as they
    are. Anything else is text, JSON-encoded once per distinct value; None is ``null``.
    """
    parts: list[pa.Array | pa.Scalar] = []
    for i, (name, values) in enumerate(columns.items()):
        parts.append(pa.scalar(("{" if i == 0 else ",") + orjson.dumps(name).decode() + ":", _STR))
        parts.append(_json_values(np.asarray(values), decimals))
    parts.append(pa.scalar("}", _STR))
    no_separator = pa.scalar("", _STR)
    return pc.binary_join_element_wise(*parts, no_separator, null_handling="replace", null_replacement="null")


def _json_values(values: np.ndarray, decimals: int | None) -> pa.Array:
    """The JSON text of each value, null where it is JSON's ``null``."""
    if values.dtype.kind == "f":
        floats = values.astype("float64", copy=False)
        return pandas_float_text(floats) if decimals is None else _rounded_float_text(floats, decimals)
    if values.dtype.kind in "iub":
        return pc.cast(pa.array(values), _STR)
    codes, distinct = pd.factorize(values)
    encoded = pa.array([orjson.dumps(v).decode() for v in distinct], _STR)
    return encoded.take(pa.array(codes, mask=codes < 0))


def _rounded_float_text(values: np.ndarray, decimals: int) -> pa.Array:
    # Beyond ~1e300 the scaled value overflows and rounds to an infinity (null), as DataFrame.round's does.
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = np.round(values, decimals) + 0.0  # + 0.0: -0.0 becomes 0.0
    nonfinite = ~np.isfinite(rounded)
    text = pc.cast(pa.array(rounded, mask=nonfinite if nonfinite.any() else None), _STR)
    return _in_exponent_form(text, rounded)


def pandas_float_text(values: np.ndarray) -> pa.Array:
    """float64 values as pandas' ``to_json`` writes them (its ujson, 10 decimals): the fraction scaled to
    10**10 and rounded in double precision (halves to odd), trailing zeros dropped, ``1.0`` for whole
    numbers; C's ``%.10g`` outside [1e-15, 1e16); NaN and infinities null. Byte for byte: values rounded
    any other way parse back slightly differently."""
    magnitude = np.abs(values)
    magnitude[~_fixed_point(magnitude)] = 0.0  # written otherwise below
    whole = np.trunc(magnitude)
    scaled = (magnitude - whole) * 1e10
    frac = np.trunc(scaled)
    rest = scaled - frac
    frac += (rest > 0.5) | ((rest == 0.5) & ((frac == 0) | (frac % 2 == 1)))
    carry = frac >= 1e10
    whole += carry
    frac[carry] = 0
    digits = pc.utf8_rtrim(pc.utf8_lpad(pc.cast(pa.array(frac.astype("int64")), _STR), 10, "0"), "0")
    text = pc.binary_join_element_wise(
        pc.if_else(pa.array(values < 0), pa.scalar("-", _STR), pa.scalar("", _STR)),
        pc.cast(pa.array(whole.astype("int64")), _STR),
        pa.scalar(".", _STR),
        pc.if_else(pa.array(frac == 0), pa.scalar("0", _STR), digits),
        pa.scalar("", _STR),
    )
    text = _in_exponent_form(text, values)
    finite = np.isfinite(values)
    return text if finite.all() else pc.if_else(pa.array(finite), text, pa.scalar(None, _STR))


def _fixed_point(magnitude: np.ndarray) -> np.ndarray:
    """Where pandas writes a float's magnitude in fixed point: 0, or within [1e-15, 1e16 - 1]."""
    return (magnitude <= 1e16 - 1) & ((magnitude == 0) | (magnitude >= 1e-15))


def _in_exponent_form(text: pa.Array, values: np.ndarray) -> pa.Array:
    """``text`` with the finite values pandas writes with C's ``%.10g`` written so."""
    magnitude = np.abs(values)
    exponent = np.isfinite(magnitude) & ~_fixed_point(magnitude)
    if not exponent.any():
        return text
    return pc.replace_with_mask(text, pa.array(exponent), pa.array([f"{v:.10g}" for v in values[exponent]], _STR))
