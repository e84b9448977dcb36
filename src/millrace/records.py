"""The data contracts that cross Kafka topics, the store and the API.

Records are frozen dataclasses (cheap on hot paths) with ``to_dict``/``from_dict`` for JSON. Timestamps are
timezone-aware UTC datetimes in memory and ISO 8601 strings with a ``Z`` suffix on the wire.
"""

from __future__ import annotations

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
        out: dict[str, Any] = {
            "sensor_id": self.sensor_id,
            "device_id": self.device_id,
            "sensor_type": self.sensor_type,
            "value": self.value,
            "unit": self.unit,
            "location": self.location,
            "timestamp": to_iso(self.timestamp),
            "status": self.status,
            "metadata": {
                "unit": self.unit,
                "sensor_model": self.sensor_model,
                "battery_level": self.battery_level,
            },
        }
        if self.seq is not None:
            out["seq"] = self.seq
        if self.ground_truth is not None:
            out[GROUND_TRUTH_FIELD] = self.ground_truth
        return out

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


# The columns of a window row in the store (windowed_metrics) and of the job's finished windows.
WINDOW_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(WindowMetric))
