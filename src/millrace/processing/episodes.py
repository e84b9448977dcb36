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
from dataclasses import replace
from datetime import datetime
from typing import Any

import pandas as pd

from millrace.processing.state import Episode
from millrace.records import Alert, Severity

__all__ = ["Episode", "alert_id", "close", "expire", "severity", "to_alert", "update"]

CRITICAL_KINDS = frozenset({"out_of_range", "correlation_break"})


def alert_id(device_id: str, opened_ms: int) -> str:
    digest = hashlib.sha1(f"{device_id}|{opened_ms}".encode()).hexdigest()[:16]
    return f"al-{digest}"


def _peak(row: Any) -> dict[str, Any]:
    """The fields an episode takes from its highest-scoring reading (a NaN score counts as 0)."""
    return {
        "score": float(row.score) if row.score == row.score else 0.0,
        "kind": row.anomaly_kind or "statistical",
        "reason": str(row.reason or ""),
        "top_features": tuple(str(f) for f in (row.top_features if row.top_features is not None else [])),
    }


def _open(row: Any, device_id: str, location: str) -> Episode:
    ts = int(row.ts_ms)
    return Episode(
        id=alert_id(device_id, ts),
        opened_ms=ts,
        updated_ms=ts,
        sensor_ids=(str(row.sensor_id),),
        readings=1,
        location=location,
        **_peak(row),
    )


def _extend(ep: Episode, row: Any) -> Episode:
    ts, sensor_id, peak = int(row.ts_ms), str(row.sensor_id), _peak(row)
    return replace(
        ep,
        opened_ms=min(ep.opened_ms, ts),
        updated_ms=max(ep.updated_ms, ts),
        readings=ep.readings + 1,
        sensor_ids=ep.sensor_ids if sensor_id in ep.sensor_ids else (*ep.sensor_ids, sensor_id),
        **(peak if peak["score"] > ep.score else {}),
    )


def update(
    scored: pd.DataFrame,
    episode: Episode | None,
    *,
    device_id: str,
    location: str,
    newest_ms: int | None,
    quiet_s: float,
) -> tuple[list[Episode], Episode | None]:
    """Fold one batch of scored readings (ts_ms, sensor_id, is_anomaly, score, anomaly_kind, reason,
    top_features) into the device's open ``episode`` (None: none open). Returns the episodes touched, each as it
    is at the end of the batch (closed ones with ``closed_ms``), and the episode still open (or None)."""
    quiet_ms = int(quiet_s * 1000)
    touched: dict[str, Episode] = {}
    anomalous = scored[scored["is_anomaly"].fillna(False).astype(bool)]
    for row in anomalous.sort_values(["ts_ms", "sensor_id"], kind="stable").itertuples(index=False):
        if episode is not None and int(row.ts_ms) - episode.updated_ms > quiet_ms:
            touched[episode.id] = close(episode, quiet_s)
            episode = None
        episode = _open(row, device_id, location) if episode is None else _extend(episode, row)
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
