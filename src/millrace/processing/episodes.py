"""Alert episodes: one alert per anomaly episode of a device, opened, updated while it lasts, closed.

Anomalous readings of one device belong to the same episode while consecutive ones are at most
``quiet_s`` apart in event time; the episode closes once the device's newest reading is ``quiet_s`` past its
last anomalous one (or the device goes silent). Each micro-batch emits the final state of every episode it
touched once — two anomalous readings of one episode in one batch give one alert row, not two. The alert id
derives from the device and the opening event time, so a replayed batch upserts the same row.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from millrace.records import Alert, Severity

Episode = dict[str, Any]
CRITICAL_KINDS = frozenset({"out_of_range", "correlation_break"})


def alert_id(device_id: str, opened_ms: int) -> str:
    digest = hashlib.sha1(f"{device_id}|{opened_ms}".encode()).hexdigest()[:16]
    return f"al-{digest}"


def _open(row: Any, device_id: str, location: str) -> Episode:
    return {
        "id": alert_id(device_id, int(row.ts_ms)),
        "opened": int(row.ts_ms),
        "updated": int(row.ts_ms),
        "sensors": [],
        "kind": None,
        "score": -np.inf,
        "reason": "",
        "top": [],
        "n": 0,
        "loc": location,
        "closed": None,
    }


def _add(ep: Episode, row: Any) -> None:
    ep["opened"] = min(ep["opened"], int(row.ts_ms))
    ep["updated"] = max(ep["updated"], int(row.ts_ms))
    ep["n"] += 1
    if row.sensor_id not in ep["sensors"]:
        ep["sensors"].append(str(row.sensor_id))
    score = float(row.score) if row.score == row.score else 0.0
    if score > ep["score"] or ep["kind"] is None:
        ep["score"] = score
        ep["kind"] = row.anomaly_kind or "statistical"
        ep["reason"] = str(row.reason or "")
        ep["top"] = [str(f) for f in (row.top_features if row.top_features is not None else [])]


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
    top_features) into the device's open ``episode``. Returns (episodes touched, open episode or None)."""
    quiet_ms = int(quiet_s * 1000)
    touched: dict[str, Episode] = {}
    anomalous = scored[scored["is_anomaly"].fillna(False).astype(bool)]
    for row in anomalous.sort_values(["ts_ms", "sensor_id"], kind="stable").itertuples(index=False):
        ts = int(row.ts_ms)
        if episode is not None and ts - episode["updated"] > quiet_ms:
            episode["closed"] = episode["updated"] + quiet_ms
            touched[episode["id"]] = episode
            episode = None
        if episode is None:
            episode = _open(row, device_id, location)
        _add(episode, row)
        touched[episode["id"]] = episode
    closed = expire(episode, newest_ms, quiet_s)
    if closed is not None:
        touched[closed["id"]] = closed
        episode = None
    return list(touched.values()), episode


def expire(episode: Episode | None, newest_ms: int | None, quiet_s: float) -> Episode | None:
    """The episode, closed, when the device's newest reading is ``quiet_s`` past its last anomalous one."""
    if episode is not None and newest_ms is not None and newest_ms - episode["updated"] > int(quiet_s * 1000):
        return close(episode, quiet_s)
    return None


def close(episode: Episode, quiet_s: float) -> Episode:
    episode["closed"] = episode["updated"] + int(quiet_s * 1000)
    return episode


def severity(ep: Episode, zscore_threshold: float) -> Severity:
    if ep["kind"] in CRITICAL_KINDS or len(ep["sensors"]) > 1 or ep["score"] >= 2 * zscore_threshold:
        return "critical"
    return "warning"


def to_alert(ep: Episode, *, device_id: str, zscore_threshold: float) -> dict[str, Any]:
    """The episode as a records.Alert dict (Alert.to_dict: ISO timestamps, lists for the tuples)."""

    def utc(ms: int) -> datetime:
        return pd.Timestamp(ms, unit="ms", tz="UTC").to_pydatetime()

    return Alert(
        alert_id=ep["id"],
        device_id=device_id,
        sensor_ids=tuple(sorted(ep["sensors"])),
        kind=ep["kind"],
        severity=severity(ep, zscore_threshold),
        score=round(float(ep["score"]), 6),
        reason=ep["reason"],
        location=ep["loc"],
        opened_at=utc(ep["opened"]),
        updated_at=utc(ep["updated"]),
        closed_at=None if ep["closed"] is None else utc(ep["closed"]),
        status="closed" if ep["closed"] is not None else "open",
        readings=int(ep["n"]),
        top_features=tuple(ep["top"]),
    ).to_dict()
