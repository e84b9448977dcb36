"""The typed state of the stream job's stateful step: what one state bucket carries from a micro-batch to the next.

A state bucket (processing.stateful) holds the devices hashed to it. Its :class:`BucketState` has

- per sensor a :class:`SensorState`: its newest event time (its watermark is that minus the allowed lateness),
  the event times inside the lateness horizon (dedup, packed by :func:`pack_times`) and its gap :class:`Track`
  (processing.gaps);
- per device a :class:`DeviceState`: its feature state (processing.features; opaque here), its open alert
  :class:`Episode` (processing.episodes), its newest event time and location, the wall-clock time of its last
  readings, whether it was already reported silent, and the past rows a device-level model needs (the
  Scorer's; opaque here).

Contract:

- Values are immutable: the dataclasses are frozen, and the mappings inside them are never changed once the
  value is built. A transition (:func:`observe_sensors`, :func:`observe_devices`, gaps.fill_gaps,
  episodes.update, ...) returns new state and leaves its input as it was, so the state Spark committed before a
  micro-batch is still valid when that batch is replayed.
- Deterministic: a transition reads no clock (the caller passes Spark's micro-batch time) and no randomness, and
  mappings keep insertion order, which follows the order of the input; so the same state, input and time give
  the same new state and the same :func:`dumps` text.
- Stored as one text column (schema.STEP_STATE): :func:`dumps` writes JSON (orjson) tagged with
  :data:`STATE_VERSION`; ``loads(dumps(s)) == s``. :func:`loads` starts fresh — an empty bucket — when there is
  no document, when it carries another version, or when it cannot be read (logged). There are no compatibility
  shims: bump :data:`STATE_VERSION` whenever the layout or meaning of a field changes. The feature state
  carries its own version inside the opaque value (features.dump_state / load_state).
- Not guaranteed across a fresh start: the dedup horizon is lost (a re-delivered reading is stored again, which
  the store's upsert makes a no-op), the expected intervals are learned again, and an episode open at that
  moment is never closed by the job (its alert stays "open").
"""

from __future__ import annotations

import base64
import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import orjson

from millrace.processing import features

log = logging.getLogger(__name__)

STATE_VERSION = 4  # 3: the schemaless document of millrace 0.x before typed state


@dataclass(frozen=True, slots=True)
class Track:
    """A sensor's gap track (processing.gaps): what it is and where, its last reading in event-time order, its
    learned expected interval (None until two readings were seen) and whether it is reported active."""

    sensor_type: str
    location: str
    unit: str
    device_id: str
    last_ms: int  # event time of the newest reading fed to the features, epoch ms
    last_value: float
    interval_s: float | None = None
    active: bool = True


@dataclass(frozen=True, slots=True)
class Episode:
    """An alert episode of one device (processing.episodes): its anomalous readings so far and the peak one."""

    id: str  # the alert id: episodes.alert_id(device, opening event time)
    opened_ms: int
    updated_ms: int  # event time of its newest anomalous reading
    sensor_ids: tuple[str, ...]  # in the order they turned anomalous
    kind: str  # of the highest-scoring reading
    score: float
    reason: str
    top_features: tuple[str, ...]
    readings: int  # anomalous readings folded in
    location: str
    closed_ms: int | None = None  # set when it closed (quiet for episode_quiet_s, or its device went silent)


@dataclass(frozen=True, slots=True)
class SensorState:
    newest_ms: int  # newest event time seen, in any order
    seen: str  # event times inside the lateness horizon, pack_times
    track: Track

    def seen_times(self) -> np.ndarray:
        return unpack_times(self.seen)


@dataclass(frozen=True, slots=True)
class DeviceState:
    newest_ms: int  # newest event time seen
    location: str
    seen_at_ms: int  # wall-clock (micro-batch) time of its last readings
    swept: bool = False  # already reported silent (wall clock) since its last readings
    features: Any = None  # processing.features' state, opaque; None before the first readings scored
    episode: Episode | None = None  # open episode
    history: Any = None  # the Scorer's past rows of the device (device-level model), opaque


@dataclass(frozen=True, slots=True)
class BucketState:
    sensors: Mapping[str, SensorState] = field(default_factory=dict)
    devices: Mapping[str, DeviceState] = field(default_factory=dict)

    def tracks(self) -> dict[str, Track]:
        return {sid: s.track for sid, s in self.sensors.items()}

    def with_tracks(self, tracks: Mapping[str, Track]) -> BucketState:
        """The state with each sensor's track taken from ``tracks`` (sensors without one there keep theirs)."""
        sensors = {
            sid: s if tracks.get(sid, s.track) is s.track else replace(s, track=tracks[sid])
            for sid, s in self.sensors.items()
        }
        return replace(self, sensors=sensors)


# ---------------------------------------------------------------------------------------------- transitions
def observe_sensors(
    sensors: Mapping[str, SensorState],
    times: Mapping[str, np.ndarray],
    tracks: Mapping[str, Track],
    lateness_ms: int,
) -> dict[str, SensorState]:
    """The sensors after a batch. ``times``: the event times (epoch ms) of each sensor's fresh readings (neither
    duplicate nor late); ``tracks``: every sensor's track after the batch (gaps.fill_gaps gives one to each
    sensor with fresh readings). A sensor with fresh readings moves its newest event time forward and keeps in
    its dedup horizon the event times no older than that minus ``lateness_ms``; the others keep theirs, as
    nothing newer arrived to move it."""
    out: dict[str, SensorState] = {}
    for sid, track in tracks.items():
        prev = sensors.get(sid)
        ts = times.get(sid)
        if ts is None or not len(ts):
            if prev is None:
                raise ValueError(f"sensor {sid!r} has a track but was never observed")
            out[sid] = prev if prev.track is track else replace(prev, track=track)
            continue
        ts = np.asarray(ts, dtype="int64")
        newest = int(ts.max()) if prev is None else max(prev.newest_ms, int(ts.max()))
        if prev is not None:
            ts = np.concatenate([prev.seen_times(), ts])
        out[sid] = SensorState(
            newest_ms=newest, seen=pack_times(np.unique(ts[ts >= newest - lateness_ms])), track=track
        )
    return out


def observe_devices(
    devices: Mapping[str, DeviceState], newest: Mapping[str, int], locations: Mapping[str, str], now_ms: int
) -> dict[str, DeviceState]:
    """The devices after a batch in which those of ``newest`` (device -> newest event time of its fresh
    readings) sent readings at wall-clock ``now_ms``: their newest event time moves forward, they are seen now
    and no longer swept."""
    out = dict(devices)
    for device_id, ts in newest.items():
        prev = devices.get(device_id)
        if prev is None:
            out[device_id] = DeviceState(newest_ms=int(ts), location=locations[device_id], seen_at_ms=now_ms)
        else:
            out[device_id] = replace(
                prev,
                newest_ms=max(int(ts), prev.newest_ms),
                location=locations[device_id],
                seen_at_ms=now_ms,
                swept=False,
            )
    return out


# ---------------------------------------------------------------------------------------------- persistence
def dumps(state: BucketState) -> str:
    """The state as the text of the state column."""
    doc = {
        "v": STATE_VERSION,
        "sensors": state.sensors,  # dataclasses: orjson writes their fields
        "devices": {device_id: _dump_device(dev) for device_id, dev in state.devices.items()},
    }
    return orjson.dumps(doc).decode()


def loads(text: str | bytes | None) -> BucketState:
    """The state :func:`dumps` wrote; an empty bucket when ``text`` is None, of another version or unreadable."""
    if text is None:
        return BucketState()
    try:
        doc = orjson.loads(text)
        if not isinstance(doc, dict) or doc.get("v") != STATE_VERSION:
            version = doc.get("v") if isinstance(doc, dict) else None
            log.info("bucket state of version %s, not %s: starting fresh", version, STATE_VERSION)
            return BucketState()
        return BucketState(
            sensors={sid: _load_sensor(s) for sid, s in doc["sensors"].items()},
            devices={device_id: _load_device(d) for device_id, d in doc["devices"].items()},
        )
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
        log.warning("bucket state unreadable (%s: %s): starting fresh", type(exc).__name__, exc)
        return BucketState()


def _dump_device(dev: DeviceState) -> dict[str, Any]:
    # Field by field rather than dataclasses.asdict, which would deep-copy the opaque values; orjson writes the
    # episode (a dataclass) itself.
    doc = {name: getattr(dev, name) for name in DeviceState.__dataclass_fields__}
    doc["features"] = None if dev.features is None else features.dump_state(dev.features)
    return doc


def _load_sensor(doc: dict[str, Any]) -> SensorState:
    return SensorState(newest_ms=int(doc["newest_ms"]), seen=str(doc["seen"]), track=Track(**doc["track"]))


def _load_device(doc: dict[str, Any]) -> DeviceState:
    ep = doc.pop("episode")
    feats = doc.pop("features")
    return DeviceState(
        **doc,
        features=None if feats is None else features.load_state(feats),
        episode=None if ep is None else _load_episode(ep),
    )


def _load_episode(doc: dict[str, Any]) -> Episode:
    return Episode(**{**doc, "sensor_ids": tuple(doc["sensor_ids"]), "top_features": tuple(doc["top_features"])})


def pack_times(ts: np.ndarray) -> str:
    """Sorted epoch-ms times as compact text: zlib-compressed int64 steps, base64. A sensor's dedup horizon
    holds rate x lateness times (5,000 at 83 readings/s and 60 s); as JSON numbers that made the state
    megabytes per bucket, rewritten every micro-batch, while regular steps compress to a few bytes."""
    steps = np.diff(np.asarray(ts, dtype="int64"), prepend=np.int64(0))
    return base64.b64encode(zlib.compress(steps.tobytes(), 1)).decode("ascii")


def unpack_times(text: str) -> np.ndarray:
    return np.cumsum(np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype="int64"))
