"""Gaps per sensor: learn the expected interval, interpolate short gaps, report long ones as inactivity.

Works on the fresh readings of one or many devices (inside the stateful step), vectorised per sensor with
numpy; event-time inactivity is judged per device.
A sensor's track (JSON-serialisable dict) carries what is needed across micro-batches:
``{"type", "loc", "unit", "dev", "last_ts" (epoch ms), "last_v", "interval_s", "active"}``.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

GAP_FACTOR = 1.5  # a step longer than 1.5 expected intervals misses at least one reading
INTERVAL_WEIGHT = 0.3  # weight of a batch's median step in the learned interval (EWMA)

Track = dict[str, Any]


@dataclass
class GapResult:
    interpolated: pd.DataFrame  # sensor_id, sensor_type, location, unit, ts_ms, value
    gaps_interpolated: int = 0
    gaps_inactive: int = 0  # gaps longer than max_interpolated_gap intervals
    went_inactive: list[str] = field(default_factory=list)  # sensors now reported inactive
    touched: list[str] = field(default_factory=list)  # sensors with new readings


def new_track(sensor_type: str, location: str, unit: str, device_id: str = "") -> Track:
    return {
        "type": sensor_type,
        "loc": location,
        "unit": unit,
        "dev": device_id,
        "last_ts": None,
        "last_v": None,
        "interval_s": None,
        "active": True,
    }


def fill_gaps(
    fresh: pd.DataFrame,
    tracks: MutableMapping[str, Track],
    *,
    max_interpolated_gap: int,
    inactive_after_s: float,
) -> GapResult:
    """Update ``tracks`` with ``fresh`` readings (sensor_id, sensor_type, location, unit, ts_ms, value).

    Only readings newer than a sensor's last one move it forward; an out-of-order reading inside the lateness
    is kept by the caller but neither opens nor fills a gap. A gap of k missing readings (k <= the maximum) is
    filled with k linearly interpolated points on the expected grid; a longer one is reported as inactivity,
    never invented. After the batch, a sensor whose last reading lags the device's newest one by more than
    ``inactive_after_s`` is inactive (event-time detection; the wall-clock sweep is the caller's timeout).
    """
    out: dict[str, list[np.ndarray]] = {"sensor_id": [], "ts_ms": [], "value": []}
    result = GapResult(interpolated=pd.DataFrame())
    if len(fresh):
        # Plain numpy per sensor: one factorize and one sort for the batch, then array slices.
        codes, names = pd.factorize(fresh["sensor_id"].to_numpy(dtype=object), sort=True)
        all_ts = fresh["ts_ms"].to_numpy(dtype="int64")
        all_values = fresh["value"].to_numpy(dtype="float64")
        order = np.lexsort((all_ts, codes))
        bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
        columns = {c: fresh[c].to_numpy(dtype=object) for c in ("sensor_type", "location", "unit")}
        devices = fresh["device_id"].to_numpy(dtype=object) if "device_id" in fresh else None
    else:
        names = []
    for k, sensor_id in enumerate(names):
        sid = str(sensor_id)
        rows = order[bounds[k] : bounds[k + 1]]
        track = tracks.get(sid)
        if track is None:
            first = rows[0]
            dev = str(devices[first]) if devices is not None else ""
            track = tracks[sid] = new_track(
                str(columns["sensor_type"][first]), str(columns["location"][first]), str(columns["unit"][first]), dev
            )
        ts, values = all_ts[rows], all_values[rows]  # in event-time order
        last_ts = track["last_ts"]
        if last_ts is not None:
            forward = ts > last_ts
            if not forward.any():
                continue
            ts, values = ts[forward], values[forward]
        fts, fvalues = ts, values
        if last_ts is not None:
            fts = np.concatenate(([last_ts], fts))
            fvalues = np.concatenate(([track["last_v"]], fvalues))
        steps = np.diff(fts) / 1000.0
        interval = track["interval_s"]
        if len(steps):
            usable = steps[steps <= (3.0 * interval)] if interval else steps
            usable = usable[usable > 0]
            if len(usable):
                median = float(np.median(usable))
                interval = median if not interval else (1 - INTERVAL_WEIGHT) * interval + INTERVAL_WEIGHT * median
            reference = track["interval_s"] or interval
            if reference:
                gap_at = np.nonzero(steps > GAP_FACTOR * reference)[0]
                for i in gap_at:
                    missing = int(round(steps[i] / reference)) - 1
                    if missing < 1:
                        continue
                    if missing > max_interpolated_gap:
                        result.gaps_inactive += 1
                        continue
                    frac = np.arange(1, missing + 1) / (missing + 1)
                    out["sensor_id"].append(np.full(missing, sid, dtype=object))
                    out["ts_ms"].append((fts[i] + frac * (fts[i + 1] - fts[i])).round().astype("int64"))
                    out["value"].append(fvalues[i] + frac * (fvalues[i + 1] - fvalues[i]))
                    result.gaps_interpolated += 1
        track["interval_s"] = interval
        track["last_ts"] = int(fts[-1])
        track["last_v"] = float(fvalues[-1])
        track["active"] = True
        result.touched.append(sid)
    if out["sensor_id"]:
        frame = pd.DataFrame({key: np.concatenate(parts) for key, parts in out.items()})
        frame["sensor_type"] = frame["sensor_id"].map(lambda s: tracks[s]["type"])
        frame["location"] = frame["sensor_id"].map(lambda s: tracks[s]["loc"])
        frame["unit"] = frame["sensor_id"].map(lambda s: tracks[s]["unit"])
        result.interpolated = frame
    result.went_inactive = inactive_by_event_time(tracks, inactive_after_s)
    return result


def inactive_by_event_time(tracks: MutableMapping[str, Track], inactive_after_s: float) -> list[str]:
    """Sensors whose last reading lags their device's newest one by more than ``inactive_after_s`` become
    inactive; returns them (only those that were active)."""
    newest: dict[str, int] = {}
    for track in tracks.values():
        if track["last_ts"] is not None:
            dev = track.get("dev", "")
            newest[dev] = max(newest.get(dev, track["last_ts"]), track["last_ts"])
    gone = []
    for sid, track in tracks.items():
        if (
            track["active"]
            and track["last_ts"] is not None
            and newest[track.get("dev", "")] - track["last_ts"] > inactive_after_s * 1000
        ):
            track["active"] = False
            gone.append(sid)
    return gone


def sweep_inactive(tracks: MutableMapping[str, Track], device_id: str | None = None) -> list[str]:
    """The device went silent (wall-clock timeout): every active sensor (of ``device_id``, if given) becomes
    inactive."""
    gone = [sid for sid, t in tracks.items() if t["active"] and (device_id is None or t.get("dev") == device_id)]
    for sid in gone:
        tracks[sid]["active"] = False
    return gone
