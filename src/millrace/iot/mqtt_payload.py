"""Map an MQTT topic + payload to a :class:`SensorReading` (and back to a topic), with a reason on failure.

Topics end in ``<location>/<device_id>/<sensor_type>`` (default pattern ``sensors/+/+/+``). The payload is
either the full JSON reading (the wire format of ``millrace.iot.readings``; with ``sensor_id`` present it
must also carry ``value``, ``timestamp`` and ``sensor_type``), a JSON object with at least ``value`` (the
rest comes from the topic, the time is the arrival time), or a bare number. Fields in the payload win over the topic.
Anything else raises :class:`PayloadError` whose message is the dead-letter reason.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import orjson

from millrace.records import UNITS, SensorReading, parse_iso


class PayloadError(ValueError):
    """An MQTT message that is not a reading; ``str(exc)`` is the reason recorded in the dead letter."""


def topic_levels(topic: str) -> tuple[str, str, str]:
    """(location, device_id, sensor_type) from the last three levels of ``topic``."""
    levels = topic.split("/")
    if len(levels) < 3:
        raise PayloadError(f"topic {topic!r} has fewer than 3 levels (expected .../<location>/<device>/<type>)")
    location, device_id, sensor_type = levels[-3:]
    for name, value in (("location", location), ("device", device_id), ("sensor type", sensor_type)):
        if not value:
            raise PayloadError(f"topic {topic!r} has an empty {name} level")
    return location, device_id, sensor_type


def topic_for(pattern: str, location: str, device_id: str, sensor_type: str) -> str:
    """The publish topic for a reading under a subscription ``pattern`` (its ``+`` levels, or a final ``#``).

    ``sensors/+/+/+`` -> ``sensors/loc-01/dev-0001/temperature``;
    ``plant/#`` -> ``plant/loc-01/dev-0001/temperature``.
    """
    values = [location, device_id, sensor_type]
    levels = pattern.split("/")
    if levels[0] == "$share" and len(levels) > 2:  # MQTT 5 shared subscription: $share/<group>/<filter>
        levels = levels[2:]
    if levels[-1] == "#":
        levels = levels[:-1] + ["+", "+", "+"]
    wildcards = [i for i, level in enumerate(levels) if level == "+"]
    if len(wildcards) < 3:
        raise ValueError(f"topic pattern {pattern!r} needs three + levels (location, device, type) or a final #")
    for index, value in zip(wildcards[-3:], values, strict=True):
        levels[index] = value
    if "+" in levels:
        raise ValueError(f"topic pattern {pattern!r} has more than three + levels")
    return "/".join(levels)


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError(f"field {field!r} is {_type_name(value)}, expected a number")
    number = float(value)
    if not math.isfinite(number):
        raise PayloadError(f"field {field!r} is not a finite number")
    return number


def _text(data: dict[str, Any], field: str, default: str) -> str:
    value = data.get(field)
    if value is None:
        return default
    if not isinstance(value, str):
        raise PayloadError(f"field {field!r} is {_type_name(value)}, expected a string")
    if not value:
        raise PayloadError(f"field {field!r} is empty")
    return value


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), f"a {type(value).__name__}"
    )


def _timestamp(value: Any, received_at: datetime) -> datetime:
    if value is None:
        return received_at
    if isinstance(value, str):
        try:
            return parse_iso(value)
        except ValueError:
            raise PayloadError(f"field 'timestamp' is not ISO 8601: {value!r}") from None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        seconds = value / 1000.0 if value > 1e11 else float(value)  # epoch milliseconds or seconds
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            raise PayloadError(f"field 'timestamp' is out of range: {value!r}") from None
    raise PayloadError(f"field 'timestamp' is {_type_name(value)}, expected ISO 8601 text or epoch seconds")


def decode(payload: bytes) -> Any:
    """The payload as JSON (a bare number is JSON too); PayloadError naming what is wrong."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("payload is not UTF-8") from None
    if not text.strip():
        raise PayloadError("empty payload")
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if text.lstrip()[:1] in ("{", "[", '"'):
            raise PayloadError(f"invalid JSON: {exc}") from None
        raise PayloadError(f"payload is neither a number nor a JSON object: {text[:40]!r}") from None


def reading_from_mqtt(topic: str, payload: bytes, *, received_at: datetime | None = None) -> SensorReading:
    """The reading an MQTT message carries (see the module docstring); PayloadError when there is none."""
    location, device_id, sensor_type = topic_levels(topic)
    data = decode(payload)
    received = received_at or datetime.now(UTC)
    if isinstance(data, int | float) and not isinstance(data, bool):
        data = {"value": data}
    if not isinstance(data, dict):
        raise PayloadError(f"payload is {_type_name(data)}, expected a JSON object or a number")
    if "value" not in data:
        raise PayloadError("missing field 'value'")
    if "sensor_id" in data:  # a full reading (the Kafka wire format) must be complete, not patched from the topic
        for name in ("timestamp", "sensor_type"):
            if name not in data:
                raise PayloadError(f"missing field {name!r} in a full reading")
    value = _number(data["value"], "value")
    sensor_type = _text(data, "sensor_type", sensor_type)
    device_id = _text(data, "device_id", device_id)
    meta = data.get("metadata")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise PayloadError(f"field 'metadata' is {_type_name(meta)}, expected an object")
    battery = meta.get("battery_level")
    seq = data.get("seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
        raise PayloadError(f"field 'seq' is {_type_name(seq)}, expected an integer")
    ground_truth = data.get("ground_truth")
    if ground_truth is not None and not isinstance(ground_truth, str):
        raise PayloadError(f"field 'ground_truth' is {_type_name(ground_truth)}, expected a string")
    return SensorReading(
        sensor_id=_text(data, "sensor_id", f"{device_id}-{sensor_type}"),
        device_id=device_id,
        sensor_type=sensor_type,
        value=value,
        unit=_text(data, "unit", str(meta.get("unit") or UNITS.get(sensor_type, ""))),
        location=_text(data, "location", location),
        timestamp=_timestamp(data.get("timestamp"), received),
        status=_text(data, "status", "ok"),
        sensor_model=str(meta.get("sensor_model") or ""),
        battery_level=None if battery is None else _number(battery, "metadata.battery_level"),
        seq=seq,
        ground_truth=ground_truth,
    )
