"""The data contracts that cross Kafka topics, the store and the API.

Records are frozen dataclasses (cheap on hot paths) with ``to_dict``/``from_dict`` for JSON. Timestamps are
timezone-aware UTC datetimes in memory and ISO 8601 strings with a ``Z`` suffix on the wire.
"""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal

SENSOR_TYPES: tuple[str, ...] = ("temperature", "humidity", "pressure", "vibration", "voltage", "current")
UNITS: dict[str, str] = {
    "temperature": "°C",
    "humidity": "%",
    "pressure": "hPa",
    "vibration": "g",
    "voltage": "V",
    "current": "A",
}
# The type of a sensor whose type nobody declared (a recorded column the user did not map to a type): it
# carries no physical range, so validation accepts it and scoring never range-checks it.
GENERIC_TYPE = "generic"
ANOMALY_KINDS: tuple[str, ...] = (
    "spike",
    "level_shift",
    "drift",
    "stuck",
    "dropout",
    "noise_burst",
    "correlation_break",
)
NORMAL = "normal"
# The field that carries the simulator's (or a labelled data set's) ground truth. Detection code must never
# read it; only scoring/evaluation does.
GROUND_TRUTH_FIELD = "ground_truth"

Severity = Literal["info", "warning", "critical"]
AlertStatus = Literal["open", "acknowledged", "resolved", "closed"]


def to_iso(ts: datetime) -> str:
    """UTC ISO 8601 with millisecond precision and a Z suffix."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    """Parse an ISO 8601 timestamp; naive values are taken as UTC."""
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class WireField:
    """One field of a record's JSON on the wire.

    ``value_type`` is the type of the value in memory: ``str``, ``float``, ``int``, ``datetime`` (ISO 8601
    text with a Z suffix on the wire, :func:`to_iso`) or ``dict`` for a nested object whose fields are
    ``fields``. A ``required`` field must be present for a message to be a reading at all; an ``omit_none``
    field is left out of the JSON when its value is None (otherwise it is written as null).
    """

    name: str
    value_type: type
    required: bool = False
    omit_none: bool = False
    fields: tuple[WireField, ...] = ()


def _wire_dict(record: object, spec: tuple[WireField, ...]) -> dict[str, Any]:
    """A record's JSON object: each field of ``spec`` from the record's attribute of the same name."""
    out: dict[str, Any] = {}
    for f in spec:
        if f.fields:
            out[f.name] = _wire_dict(record, f.fields)
            continue
        value = getattr(record, f.name)
        if value is None:
            if not f.omit_none:
                out[f.name] = None
        elif f.value_type is datetime:
            out[f.name] = to_iso(value)
        else:
            out[f.name] = value
    return out


def wire_leaves(spec: tuple[WireField, ...]) -> tuple[WireField, ...]:
    """The fields of ``spec`` that carry values (nested objects flattened), in wire order."""
    return tuple(leaf for f in spec for leaf in (wire_leaves(f.fields) if f.fields else (f,)))


@dataclass(frozen=True, slots=True)
class SensorReading:
    """One measurement, keyed in Kafka by ``sensor_id``.

    A superset of the seed lab's record (sensor_id, sensor_type, value, location, timestamp, status,
    metadata{unit, sensor_model, battery_level}).
    """

    sensor_id: str
    device_id: str
    sensor_type: str
    value: float
    unit: str
    location: str
    timestamp: datetime  # event time, UTC
    status: str = "ok"
    sensor_model: str = ""
    battery_level: float | None = None
    seq: int | None = None  # per-sensor sequence number from the source, when it has one
    ground_truth: str | None = None  # "normal" or an anomaly kind; never read by detection

    def to_dict(self) -> dict[str, Any]:
        """The wire format (:data:`READING_WIRE`)."""
        return _wire_dict(self, READING_WIRE)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SensorReading:
        meta = data.get("metadata") or {}
        return cls(
            sensor_id=str(data["sensor_id"]),
            device_id=str(data.get("device_id") or data["sensor_id"]),
            sensor_type=str(data["sensor_type"]),
            value=float(data["value"]),
            unit=str(data.get("unit") or meta.get("unit") or UNITS.get(data["sensor_type"], "")),
            location=str(data.get("location", "")),
            timestamp=parse_iso(str(data["timestamp"])),
            status=str(data.get("status", "ok")),
            sensor_model=str(meta.get("sensor_model", "")),
            battery_level=meta.get("battery_level"),
            seq=data.get("seq"),
            ground_truth=data.get(GROUND_TRUTH_FIELD),
        )


# The reading on the wire (Kafka topic millrace.iot.readings, MQTT, replay), in key order: the one definition
# of its JSON. SensorReading.to_dict, the simulator's encoder and the stream job's Spark schema
# (processing.schema.READING_JSON) derive from it. Every leaf is a SensorReading attribute of the same name.
READING_WIRE: tuple[WireField, ...] = (
    WireField("sensor_id", str, required=True),
    WireField("device_id", str),
    WireField("sensor_type", str, required=True),
    WireField("value", float, required=True),
    WireField("unit", str),
    WireField("location", str),
    WireField("timestamp", datetime, required=True),
    WireField("status", str),
    WireField(
        "metadata",
        dict,
        fields=(WireField("unit", str), WireField("sensor_model", str), WireField("battery_level", float)),
    ),
    WireField("seq", int, omit_none=True),
    WireField(GROUND_TRUTH_FIELD, str, omit_none=True),
)
# The fields without which a message is not a reading (validation's missing_field).
READING_REQUIRED: tuple[str, ...] = tuple(f.name for f in READING_WIRE if f.required)
_READING_WIRE_TYPES: dict[str, type] = {f.name: f.value_type for f in READING_WIRE}


def _reading(*names: str) -> dict[str, type]:
    """Top-level fields of the reading's wire format with their types (KeyError for a name it does not have)."""
    return {name: _READING_WIRE_TYPES[name] for name in names}


# A processed reading as the store keeps it (sensor_metrics) and the stream job's sink receives it: the
# reading's fields the store keeps, then what processing adds, in column order, each with the type of its
# values (any may be None). The source's metadata and ``seq`` (READING_UNSTORED) are not kept.
READING_ROW: dict[str, type] = {
    **_reading("sensor_id", "device_id", "sensor_type", "location", "unit", "timestamp", "value", "status"),
    "interpolated": bool,  # filled by gap interpolation, not measured
    "score": float,  # anomaly score (higher = more anomalous)
    "is_anomaly": bool,
    "anomaly_kind": str,  # None, out_of_range, statistical, model, correlation_break, ...
    "features": str,  # JSON object of feature name -> value
    **_reading(GROUND_TRUTH_FIELD),  # the source's label, kept for evaluation only
    "kafka_partition": int,  # where the reading came from (None if interpolated)
    "kafka_offset": int,
    "ingested_at": datetime,  # when the job processed it
}
READING_COLUMNS: tuple[str, ...] = tuple(READING_ROW)
READING_UNSTORED: tuple[str, ...] = ("metadata", "seq")
# The columns processing adds to the reading's fields.
PROCESSING_COLUMNS: tuple[str, ...] = tuple(name for name in READING_ROW if name not in _READING_WIRE_TYPES)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Something that could not be used, kept with why and where it came from. Nothing is dropped silently."""

    reason: str
    stage: str  # "replay", "mqtt-bridge", "validation", ...
    source: str  # topic, file path or MQTT topic
    position: str  # "partition:offset", "row N", MQTT message id, ...
    raw: str  # the original bytes, decoded as UTF-8 with replacement
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = to_iso(self.at)
        return data


@dataclass(frozen=True, slots=True)
class Alert:
    """One anomaly episode: opened, updated while it lasts, closed. Keyed by ``alert_id``."""

    alert_id: str
    device_id: str
    sensor_ids: tuple[str, ...]
    kind: str
    severity: Severity
    score: float
    reason: str
    location: str
    opened_at: datetime
    updated_at: datetime
    closed_at: datetime | None = None
    status: AlertStatus = "open"
    readings: int = 1
    top_features: tuple[str, ...] = ()
    # The operator's recommended action (processing.recommendations), attached by the job's sink: None in
    # what the stateful step emits.
    recommendation: str | None = None
    recommendation_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sensor_ids"] = list(self.sensor_ids)
        data["top_features"] = list(self.top_features)
        for key in ("opened_at", "updated_at", "closed_at"):
            value = getattr(self, key)
            data[key] = to_iso(value) if value else None
        return data


@dataclass(frozen=True, slots=True)
class WindowMetric:
    """A tumbling-window aggregate per sensor (scope "sensor") or per type x location ("type_location")."""

    scope: Literal["sensor", "type_location"]
    key: str  # sensor_id, or "<sensor_type>|<location>"
    sensor_type: str
    location: str
    window_start: datetime
    window_end: datetime
    count: int
    mean: float
    min: float
    max: float
    stddev: float
    anomaly_count: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["window_start"] = to_iso(self.window_start)
        data["window_end"] = to_iso(self.window_end)
        return data


def field_types(cls: type) -> dict[str, type]:
    """A record's fields in order with the type of their values (``X | None`` gives X; a Literal gives str;
    a tuple gives tuple)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, type] = {}
    for f in fields(cls):
        hint = hints[f.name]
        if isinstance(hint, types.UnionType):
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        if typing.get_origin(hint) is Literal:
            hint = type(typing.get_args(hint)[0])
        origin = typing.get_origin(hint)
        out[f.name] = origin if isinstance(origin, type) else hint
    return out


# The fields of an alert episode: what the stateful step emits (processing.episodes.to_alert), the store
# keeps (anomaly_alerts) and the alerts topic carries.
ALERT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Alert))
# The columns of a window row in the store (windowed_metrics) and of the job's finished windows.
WINDOW_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(WindowMetric))
