"""Gaps per sensor: learn the expected interval, interpolate short gaps, report long ones as inactivity.

Works on the fresh readings of one or many devices (inside the stateful step), vectorised across sensors
with numpy; event-time inactivity is judged per device. What a sensor carries across micro-batches is its
:class:`~millrace.processing.state.Track`. Every function here takes tracks and returns new ones; it never
changes the mapping it was given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
import pandas as pd

from millrace.processing.state import Track

__all__ = ["GapResult", "Track", "fill_gaps", "inactive_by_event_time", "sweep_inactive"]

GAP_FACTOR = 1.5  # a step longer than 1.5 expected intervals misses at least one reading
INTERVAL_WEIGHT = 0.3  # weight of a batch's median step in the learned interval (EWMA)
_META = ("sensor_type", "location", "unit")


@dataclass(frozen=True)
class GapResult:
    interpolated: pd.DataFrame  # sensor_id, sensor_type, location, unit, ts_ms, value
    gaps_interpolated: int = 0
    gaps_inactive: int = 0  # gaps longer than max_interpolated_gap intervals
    went_inactive: list[str] = field(default_factory=list)  # sensors now reported inactive
    touched: list[str] = field(default_factory=list)  # sensors with new readings


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
    runs = _Runs.of(fresh, tracks)
    intervals = runs.intervals()
    points, interpolated, inactive = runs.fill(intervals, max_interpolated_gap)
    new = dict(tracks)
    for r, (sid, meta) in enumerate(zip(runs.sensor_ids, runs.meta, strict=True)):
        last = runs.ends[r] - 1  # a moved track is active again
        new[sid] = Track(*meta, int(runs.ts[last]), float(runs.values[last]), intervals[r], active=True)
    went_inactive, new = inactive_by_event_time(new, inactive_after_s)
    result = GapResult(
        interpolated=points.frame(runs.sensor_ids, new),
        gaps_interpolated=interpolated,
        gaps_inactive=inactive,
        went_inactive=went_inactive,
        touched=list(runs.sensor_ids),
    )
    return result, new


class _Points(NamedTuple):
    """Interpolated points: the run (sensor) of each, its event time and value."""

    run: np.ndarray
    ts_ms: np.ndarray
    values: np.ndarray

    def frame(self, sensor_ids: list[str], tracks: Mapping[str, Track]) -> pd.DataFrame:
        if not len(self.run):
            return pd.DataFrame()
        of_run = [tracks[s] for s in sensor_ids]
        return pd.DataFrame(
            {
                "sensor_id": np.asarray(sensor_ids, dtype=object)[self.run],
                "ts_ms": self.ts_ms,
                "value": self.values,
                "sensor_type": np.asarray([t.sensor_type for t in of_run], dtype=object)[self.run],
                "location": np.asarray([t.location for t in of_run], dtype=object)[self.run],
                "unit": np.asarray([t.unit for t in of_run], dtype=object)[self.run],
            }
        )


@dataclass(frozen=True)
class _Runs:
    """One run per sensor that moves forward in the batch (in sensor_id order): its readings newer than its
    track's last one, in event-time order, led by that last reading when it has a track. The runs sit end to end
    in ``ts``/``values``, run r at ``ends[r-1]:ends[r]``, so every sensor's steps, interval and gaps are
    computed at once: a call holds hundreds of sensors with a few hundred readings each, and numpy's fixed cost
    per call, paid per sensor, would be most of the work."""

    sensor_ids: list[str]
    prev: list[Track | None]
    meta: list[tuple[str, str, str, str]]  # type, location, unit, device: the track's, else the first reading's
    ends: np.ndarray
    ts: np.ndarray  # int64 ms
    values: np.ndarray

    @classmethod
    def of(cls, fresh: pd.DataFrame, tracks: Mapping[str, Track]) -> _Runs:
        if not len(fresh):
            return cls([], [], [], np.zeros(0, dtype=np.intp), np.zeros(0, dtype="int64"), np.zeros(0))
        names, firsts, code, ts, values = _by_sensor(fresh)
        prev = [tracks.get(str(s)) for s in names.tolist()]
        last_ms = np.array([np.iinfo(np.int64).min if p is None else p.last_ms for p in prev], dtype="int64")
        ahead = ts > last_ms[code]
        code, ts, values = code[ahead], ts[ahead], values[ahead]
        counts = np.bincount(code, minlength=len(names))
        moving = np.flatnonzero(counts)
        kept = [prev[k] for k in moving]
        led = np.array([p is not None for p in kept], dtype=bool)
        leads = [p for p in kept if p is not None]
        at = np.searchsorted(code, moving[led])
        return cls(
            sensor_ids=[str(s) for s in names[moving].tolist()],
            prev=kept,
            meta=_meta(fresh, kept, firsts[moving]),
            ends=np.cumsum(counts[moving] + led),
            ts=np.insert(ts, at, np.array([p.last_ms for p in leads], dtype="int64")),
            values=np.insert(values, at, np.array([p.last_value for p in leads], dtype="float64")),
        )

    def steps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(seconds, run, first point) of every step between two consecutive points of a run."""
        run = np.repeat(np.arange(len(self.ends)), np.diff(self.ends, prepend=0))
        within = np.flatnonzero(run[1:] == run[:-1])
        return np.diff(self.ts)[within] / 1000.0, run[within], within

    def known(self) -> np.ndarray:
        """The interval each run's track had learned (0: none yet)."""
        return np.array([p.interval_s if p is not None and p.interval_s else 0.0 for p in self.prev])

    def intervals(self) -> list[float | None]:
        """Each run's expected interval after the batch (seconds): the median of its steps, blended into the
        known interval (EWMA); steps over three known intervals are gaps, not samples of the interval. A run
        without a usable step keeps its track's interval (None for a new sensor)."""
        steps, run, _ = self.steps()
        known = self.known()
        usable = (steps > 0) & ((known[run] == 0) | (steps <= 3.0 * known[run]))
        median, found = _medians(steps[usable], run[usable], len(self.prev))
        blended = np.where(known == 0, median, (1 - INTERVAL_WEIGHT) * known + INTERVAL_WEIGHT * median)
        return [
            float(b) if f else (None if p is None else p.interval_s)
            for b, f, p in zip(blended.tolist(), found.tolist(), self.prev, strict=True)
        ]

    def fill(self, intervals: list[float | None], max_interpolated_gap: int) -> tuple[_Points, int, int]:
        """The points interpolated into the runs' short gaps, how many gaps were filled and how many were too
        long. A gap is a step over GAP_FACTOR reference intervals: the track's known one, else the new one."""
        steps, run, first = self.steps()
        reference = np.array([k or (iv or 0.0) for k, iv in zip(self.known().tolist(), intervals, strict=True)])
        ref = reference[run]
        gap = np.flatnonzero((ref > 0) & (steps > GAP_FACTOR * ref))
        missing = np.round(steps[gap] / ref[gap]).astype(np.int64) - 1
        too_long = (missing >= 1) & (missing > max_interpolated_gap)
        short = (missing >= 1) & (missing <= max_interpolated_gap)
        gap, missing = gap[short], missing[short]
        of_gap = np.repeat(np.arange(len(gap)), missing)
        # The k-th of a gap's m points sits k/(m+1) of the way across it.
        k = np.arange(len(of_gap)) - np.repeat(np.cumsum(missing) - missing, missing) + 1
        frac = k / (missing[of_gap] + 1)
        a = first[gap][of_gap]  # the point before each gap, then the one after it
        ts = (self.ts[a] + frac * (self.ts[a + 1] - self.ts[a])).round().astype("int64")
        values = self.values[a] + frac * (self.values[a + 1] - self.values[a])
        return _Points(run[gap][of_gap], ts, values), len(gap), int(too_long.sum())


def _by_sensor(fresh: pd.DataFrame) -> tuple[pd.Index, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The readings in (sensor_id, ts_ms) order: the sensor ids (sorted), the row of each one's first reading,
    and per reading its sensor's code, event time and value; readings without a sensor id left out. The ids are
    factorized on the Arrow column: converting them to Python strings would cost more than the gaps."""
    codes, names = pd.factorize(fresh["sensor_id"], sort=True)
    all_ts = fresh["ts_ms"].to_numpy(dtype="int64")
    order = np.lexsort((all_ts, codes))
    order = order[codes[order] >= 0]
    code = codes[order]
    firsts = order[np.searchsorted(code, np.arange(len(names)))]
    return names, firsts, code, all_ts[order], fresh["value"].to_numpy(dtype="float64")[order]


def _meta(fresh: pd.DataFrame, tracks: list[Track | None], firsts: np.ndarray) -> list[tuple[str, str, str, str]]:
    """Type, location, unit and device of each sensor: its track's, else those of its first reading ``firsts``
    (taken from the columns for the new sensors only)."""
    new = [i for i, t in enumerate(tracks) if t is None]
    first: dict[int, tuple[str, str, str, str]] = {}
    if new:
        rows = firsts[new]
        types, locations, units = ([str(x) for x in fresh[c].iloc[rows].tolist()] for c in _META)
        devices = [str(x) for x in fresh["device_id"].iloc[rows].tolist()] if "device_id" in fresh else [""] * len(new)
        first = dict(zip(new, zip(types, locations, units, devices, strict=True), strict=True))
    return [first[i] if t is None else (t.sensor_type, t.location, t.unit, t.device_id) for i, t in enumerate(tracks)]


def _medians(values: np.ndarray, groups: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group 0..n-1: the median of its ``values`` (as np.median: the mean of the two middle ones for an even
    count; NaN for none) and whether it has any."""
    counts = np.bincount(groups, minlength=n)
    found = counts > 0
    if not len(values):
        return np.full(n, np.nan), found
    ordered = values[np.lexsort((values, groups))]
    mid = np.minimum(np.cumsum(counts) - counts + counts // 2, len(ordered) - 1)
    upper, lower = ordered[mid], ordered[np.maximum(mid - 1, 0)]
    return np.where(found, np.where(counts % 2 == 1, upper, (lower + upper) / 2), np.nan), found


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
