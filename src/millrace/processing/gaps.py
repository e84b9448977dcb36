"""Gaps per sensor: learn the expected interval, interpolate short gaps, report long ones as inactivity.

Works on the fresh readings of one or many devices (inside the stateful step), vectorised per sensor with
numpy; event-time inactivity is judged per device. What a sensor carries across micro-batches is its
:class:`~millrace.processing.state.Track`. Every function here takes tracks and returns new ones; it never
changes the mapping it was given.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from millrace.processing.state import Track

__all__ = ["GapResult", "Track", "fill_gaps", "inactive_by_event_time", "sweep_inactive"]

GAP_FACTOR = 1.5  # a step longer than 1.5 expected intervals misses at least one reading
INTERVAL_WEIGHT = 0.3  # weight of a batch's median step in the learned interval (EWMA)


@dataclass(frozen=True)
class GapResult:
    interpolated: pd.DataFrame  # sensor_id, sensor_type, location, unit, ts_ms, value
    gaps_interpolated: int = 0
    gaps_inactive: int = 0  # gaps longer than max_interpolated_gap intervals
    went_inactive: list[str] = field(default_factory=list)  # sensors now reported inactive
    touched: list[str] = field(default_factory=list)  # sensors with new readings


@dataclass
class _Filled:
    """Interpolated points and gap counts, gathered over the sensors of one batch."""

    sensor_ids: list[np.ndarray] = field(default_factory=list)
    ts_ms: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    interpolated: int = 0
    inactive: int = 0

    def frame(self, tracks: Mapping[str, Track]) -> pd.DataFrame:
        if not self.sensor_ids:
            return pd.DataFrame()
        frame = pd.DataFrame(
            {
                "sensor_id": np.concatenate(self.sensor_ids),
                "ts_ms": np.concatenate(self.ts_ms),
                "value": np.concatenate(self.values),
            }
        )
        frame["sensor_type"] = frame["sensor_id"].map(lambda s: tracks[s].sensor_type)
        frame["location"] = frame["sensor_id"].map(lambda s: tracks[s].location)
        frame["unit"] = frame["sensor_id"].map(lambda s: tracks[s].unit)
        return frame


def fill_gaps(
    fresh: pd.DataFrame,
    tracks: Mapping[str, Track],
    *,
    max_interpolated_gap: int,
    inactive_after_s: float,
) -> tuple[GapResult, dict[str, Track]]:
    """Advance ``tracks`` with ``fresh`` readings (sensor_id, sensor_type, location, unit, ts_ms, value and
    optionally device_id); returns what happened and the tracks after the batch (every track of ``tracks``,
    in order, then the new sensors' in sensor_id order).

    Only readings newer than a sensor's last one move it forward; an out-of-order reading inside the lateness
    is kept by the caller but neither opens nor fills a gap. A gap of k missing readings (k <= the maximum) is
    filled with k linearly interpolated points on the expected grid; a longer one is reported as inactivity,
    never invented. After the batch, a sensor whose last reading lags the device's newest one by more than
    ``inactive_after_s`` is inactive (event-time detection; the wall-clock sweep is the caller's timeout).
    """
    new = dict(tracks)
    filled = _Filled()
    touched: list[str] = []
    for sid, meta, ts, values in _by_sensor(fresh):
        prev = new.get(sid)
        if prev is not None:
            forward = ts > prev.last_ms
            if not forward.any():
                continue
            ts = np.concatenate(([prev.last_ms], ts[forward]))
            values = np.concatenate(([prev.last_value], values[forward]))
        new[sid] = _advance(sid, prev, meta, ts, values, filled, max_interpolated_gap)
        touched.append(sid)
    went_inactive, new = inactive_by_event_time(new, inactive_after_s)
    result = GapResult(
        interpolated=filled.frame(new),
        gaps_interpolated=filled.interpolated,
        gaps_inactive=filled.inactive,
        went_inactive=went_inactive,
        touched=touched,
    )
    return result, new


def _by_sensor(fresh: pd.DataFrame) -> Iterator[tuple[str, tuple[str, str, str, str], np.ndarray, np.ndarray]]:
    """Per sensor (in sensor_id order): its id, (type, location, unit, device) of its first reading, and its
    event times and values in event-time order. One factorize and one sort for the batch, then array slices."""
    if not len(fresh):
        return
    # Factorized and taken in Arrow: only the first reading's metadata of each sensor becomes Python strings.
    codes, names = pd.factorize(fresh["sensor_id"], sort=True)
    all_ts = fresh["ts_ms"].to_numpy(dtype="int64")
    all_values = fresh["value"].to_numpy(dtype="float64")
    order = np.lexsort((all_ts, codes))
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    firsts = order[bounds[:-1]]
    types, locations, units = (fresh[c].iloc[firsts].tolist() for c in ("sensor_type", "location", "unit"))
    devices = fresh["device_id"].iloc[firsts].tolist() if "device_id" in fresh else [""] * len(names)
    for k, sensor_id in enumerate(names):
        rows = order[bounds[k] : bounds[k + 1]]
        meta = (str(types[k]), str(locations[k]), str(units[k]), str(devices[k]))
        yield str(sensor_id), meta, all_ts[rows], all_values[rows]


def _advance(
    sid: str,
    prev: Track | None,
    meta: tuple[str, str, str, str],
    ts: np.ndarray,
    values: np.ndarray,
    filled: _Filled,
    max_interpolated_gap: int,
) -> Track:
    """The sensor's track after readings ``ts``/``values`` (event-time order, led by its previous last reading
    when it had one); the gaps between them go to ``filled``."""
    steps = np.diff(ts) / 1000.0
    known = prev.interval_s if prev is not None else None
    interval = _learn_interval(steps, known)
    reference = known or interval
    if len(steps) and reference:
        for i in np.nonzero(steps > GAP_FACTOR * reference)[0]:
            missing = int(round(steps[i] / reference)) - 1
            if missing < 1:
                continue
            if missing > max_interpolated_gap:
                filled.inactive += 1
                continue
            frac = np.arange(1, missing + 1) / (missing + 1)
            filled.sensor_ids.append(np.full(missing, sid, dtype=object))
            filled.ts_ms.append((ts[i] + frac * (ts[i + 1] - ts[i])).round().astype("int64"))
            filled.values.append(values[i] + frac * (values[i + 1] - values[i]))
            filled.interpolated += 1
    last_ms, last_value = int(ts[-1]), float(values[-1])
    if prev is None:
        sensor_type, location, unit, device_id = meta
        return Track(sensor_type, location, unit, device_id, last_ms, last_value, interval)
    return replace(prev, interval_s=interval, last_ms=last_ms, last_value=last_value, active=True)


def _learn_interval(steps: np.ndarray, interval: float | None) -> float | None:
    """The expected interval after ``steps`` (seconds): their median, blended into the known interval (EWMA);
    steps over three known intervals are gaps, not samples of the interval."""
    usable = steps[steps <= (3.0 * interval)] if interval else steps
    usable = usable[usable > 0]
    if not len(usable):
        return interval
    median = float(np.median(usable))
    return median if not interval else (1 - INTERVAL_WEIGHT) * interval + INTERVAL_WEIGHT * median


def inactive_by_event_time(tracks: Mapping[str, Track], inactive_after_s: float) -> tuple[list[str], dict[str, Track]]:
    """Sensors whose last reading lags their device's newest one by more than ``inactive_after_s`` become
    inactive; returns those that were active, and the tracks after."""
    newest: dict[str, int] = {}
    for track in tracks.values():
        newest[track.device_id] = max(newest.get(track.device_id, track.last_ms), track.last_ms)
    limit = inactive_after_s * 1000
    gone = [sid for sid, t in tracks.items() if t.active and newest[t.device_id] - t.last_ms > limit]
    return gone, _deactivated(tracks, gone)


def sweep_inactive(tracks: Mapping[str, Track], device_id: str | None = None) -> tuple[list[str], dict[str, Track]]:
    """The device went silent (wall-clock timeout): every active sensor (of ``device_id``, if given) becomes
    inactive. Returns those sensors, and the tracks after."""
    gone = [sid for sid, t in tracks.items() if t.active and (device_id is None or t.device_id == device_id)]
    return gone, _deactivated(tracks, gone)


def _deactivated(tracks: Mapping[str, Track], sensor_ids: list[str]) -> dict[str, Track]:
    new = dict(tracks)
    for sid in sensor_ids:
        new[sid] = replace(new[sid], active=False)
    return new
