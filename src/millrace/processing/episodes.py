"""Alert episodes: one alert per anomaly episode of a device, opened, updated while it lasts, closed.

Anomalous readings of one device belong to the same episode while consecutive ones are at most
``quiet_s`` apart in event time; the episode closes once the device's newest reading is ``quiet_s`` past its
last anomalous one (or the device goes silent). Each micro-batch emits the final state of every episode it
touched once — two anomalous readings of one episode in one batch give one alert row, not two. The alert id
derives from the device and the opening event time, so a replayed batch upserts the same row.

An episode is a frozen :class:`~millrace.processing.state.Episode`: the functions here return new ones.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from millrace.processing.state import Episode
from millrace.records import Alert, Severity

__all__ = ["Anomalies", "Episode", "alert_id", "by_device", "close", "expire", "severity", "to_alert", "update"]

CRITICAL_KINDS = frozenset({"out_of_range", "correlation_break"})


def alert_id(device_id: str, opened_ms: int) -> str:
    digest = hashlib.sha1(f"{device_id}|{opened_ms}".encode()).hexdigest()[:16]
    return f"al-{digest}"


@dataclass(frozen=True)
class Anomalies:
    """One device's anomalous readings of a batch in (ts_ms, sensor_id) order: their positions in the scored
    frame, event times, sensor ids and scores. The rows of one episode are a slice; the fields an episode takes
    from its highest-scoring reading are read for that reading only. Built from one device's rows by
    :meth:`of`, or for every device of a batch at once by :func:`by_device`."""

    scored: pd.DataFrame
    at: np.ndarray  # the rows' positions in ``scored``
    ts: np.ndarray  # int64 ms
    sensor_ids: list[str]
    scores: np.ndarray  # a NaN score counts as 0

    @classmethod
    def of(cls, scored: pd.DataFrame) -> Anomalies:
        """The anomalous readings of ``scored`` (one device's)."""
        at = _flagged(scored)
        return cls.at_rows(scored, at[_order(scored, at)])

    @classmethod
    def at_rows(cls, scored: pd.DataFrame, at: np.ndarray) -> Anomalies:
        """The readings at positions ``at`` of ``scored``, already in order."""
        scores = scored["score"].to_numpy(dtype="float64")[at]
        return cls(
            scored=scored,
            at=at,
            ts=scored["ts_ms"].to_numpy(dtype="int64")[at],
            sensor_ids=[str(s) for s in scored["sensor_id"].array.take(at).tolist()],
            scores=np.nan_to_num(scores, nan=0.0, posinf=np.inf, neginf=-np.inf),
        )

    def part(self, start: int, stop: int) -> Anomalies:
        """Rows ``start:stop`` (one device's of a batch's)."""
        return Anomalies(
            self.scored, self.at[start:stop], self.ts[start:stop], self.sensor_ids[start:stop], self.scores[start:stop]
        )

    def opens(self, updated_ms: int | None, quiet_ms: int) -> np.ndarray:
        """The rows that open an episode: more than ``quiet_ms`` after the newest anomalous reading before them
        (``updated_ms``: the open episode's, which may be newer than the batch's first rows). Without an open
        episode the first row opens one."""
        if updated_ms is None:
            gaps = np.diff(self.ts) > quiet_ms
            return np.concatenate(([0], np.flatnonzero(gaps) + 1))
        newest = np.maximum(updated_ms, np.concatenate(([updated_ms], self.ts[:-1])))
        return np.flatnonzero(self.ts - newest > quiet_ms)

    def peak(self, start: int, stop: int) -> tuple[float, int]:
        """(score, row) of the first highest-scoring row of ``start:stop``."""
        row = start + int(np.argmax(self.scores[start:stop]))
        return float(self.scores[row]), row

    def fields(self, row: int) -> dict[str, Any]:
        """The fields an episode takes from its highest-scoring reading ``row``."""
        at = self.at[row]
        kind, reason, top = (self.scored[c].iat[at] for c in ("anomaly_kind", "reason", "top_features"))
        return {
            "score": float(self.scores[row]),
            "kind": kind or "statistical",
            "reason": str(reason or ""),
            "top_features": tuple(str(f) for f in (top if top is not None else [])),
        }

    def open(self, start: int, stop: int, device_id: str, location: str) -> Episode:
        """The episode of rows ``start:stop``."""
        ts = int(self.ts[start])
        return Episode(
            id=alert_id(device_id, ts),
            opened_ms=ts,
            updated_ms=int(self.ts[stop - 1]),
            sensor_ids=tuple(dict.fromkeys(self.sensor_ids[start:stop])),
            readings=stop - start,
            location=location,
            **self.fields(self.peak(start, stop)[1]),
        )

    def extend(self, ep: Episode, start: int, stop: int) -> Episode:
        """``ep`` continued by rows ``start:stop``; their peak replaces its own when it scores higher."""
        score, row = self.peak(start, stop)
        return replace(
            ep,
            opened_ms=min(ep.opened_ms, int(self.ts[start])),
            updated_ms=max(ep.updated_ms, int(self.ts[stop - 1])),
            readings=ep.readings + stop - start,
            sensor_ids=tuple(dict.fromkeys((*ep.sensor_ids, *self.sensor_ids[start:stop]))),
            **(self.fields(row) if score > ep.score else {}),
        )


def by_device(readings: pd.DataFrame) -> dict[str, Anomalies]:
    """The anomalous readings of each device of a batch (device_id, ts_ms, sensor_id, is_anomaly, score,
    anomaly_kind, reason, top_features; rows without a device id left out), for :func:`update`. One pass over
    the batch with numpy: a filtered copy of the batch grouped into a frame per device costs more than the
    episodes."""
    at = _flagged(readings)
    devices, names = pd.factorize(readings["device_id"].iloc[at])
    at, devices = at[devices >= 0], devices[devices >= 0]
    order = _order(readings, at, devices)
    rows = Anomalies.at_rows(readings, at[order])
    bounds = np.searchsorted(devices[order], np.arange(len(names) + 1))
    return {str(name): rows.part(bounds[k], bounds[k + 1]) for k, name in enumerate(names)}


def _flagged(scored: pd.DataFrame) -> np.ndarray:
    """Positions of the anomalous rows (a missing flag is False)."""
    return np.flatnonzero(scored["is_anomaly"].to_numpy(dtype=bool, na_value=False))


def _order(scored: pd.DataFrame, at: np.ndarray, *major: np.ndarray) -> np.ndarray:
    """The stable order of rows ``at`` by the ``major`` keys, then ts_ms, then sensor_id."""
    sensors = pd.factorize(scored["sensor_id"].iloc[at], sort=True, use_na_sentinel=False)[0]
    return np.lexsort((sensors, scored["ts_ms"].to_numpy(dtype="int64")[at], *major))


def update(
    scored: pd.DataFrame | Anomalies,
    episode: Episode | None,
    *,
    device_id: str,
    location: str,
    newest_ms: int | None,
    quiet_s: float,
) -> tuple[list[Episode], Episode | None]:
    """Fold one batch of scored readings (ts_ms, sensor_id, is_anomaly, score, anomaly_kind, reason,
    top_features), or their :class:`Anomalies`, into the device's open ``episode`` (None: none open). Returns
    the episodes touched, each as it is at the end of the batch (closed ones with ``closed_ms``), and the
    episode still open (or None)."""
    quiet_ms = int(quiet_s * 1000)
    touched: dict[str, Episode] = {}
    rows = scored if isinstance(scored, Anomalies) else Anomalies.of(scored)
    if len(rows.ts):
        opens = rows.opens(None if episode is None else episode.updated_ms, quiet_ms)
        bounds = [*opens.tolist(), len(rows.ts)]
        if episode is not None and bounds[0] > 0:  # the batch's first anomalous readings continue the episode
            episode = rows.extend(episode, 0, bounds[0])
            touched[episode.id] = episode
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            if episode is not None:
                touched[episode.id] = close(episode, quiet_s)
            episode = rows.open(start, stop, device_id, location)
            touched[episode.id] = episode
    closed = expire(episode, newest_ms, quiet_s)
    if closed is not None:
        touched[closed.id] = closed
        episode = None
    return list(touched.values()), episode


def expire(episode: Episode | None, newest_ms: int | None, quiet_s: float) -> Episode | None:
    """The episode, closed, when the device's newest reading is ``quiet_s`` past its last anomalous one."""
    if episode is not None and newest_ms is not None and newest_ms - episode.updated_ms > int(quiet_s * 1000):
        return close(episode, quiet_s)
    return None


def close(episode: Episode, quiet_s: float) -> Episode:
    """The episode closed ``quiet_s`` after its last anomalous reading."""
    return replace(episode, closed_ms=episode.updated_ms + int(quiet_s * 1000))


def severity(ep: Episode, zscore_threshold: float) -> Severity:
    if ep.kind in CRITICAL_KINDS or len(ep.sensor_ids) > 1 or ep.score >= 2 * zscore_threshold:
        return "critical"
    return "warning"


def to_alert(ep: Episode, *, device_id: str, zscore_threshold: float) -> dict[str, Any]:
    """The episode as a records.Alert dict (Alert.to_dict: ISO timestamps, lists for the tuples)."""

    def utc(ms: int) -> datetime:
        return pd.Timestamp(ms, unit="ms", tz="UTC").to_pydatetime()

    return Alert(
        alert_id=ep.id,
        device_id=device_id,
        sensor_ids=tuple(sorted(ep.sensor_ids)),
        kind=ep.kind,
        severity=severity(ep, zscore_threshold),
        score=round(float(ep.score), 6),
        reason=ep.reason,
        location=ep.location,
        opened_at=utc(ep.opened_ms),
        updated_at=utc(ep.updated_ms),
        closed_at=None if ep.closed_ms is None else utc(ep.closed_ms),
        status="closed" if ep.closed_ms is not None else "open",
        readings=ep.readings,
        top_features=ep.top_features,
    ).to_dict()
