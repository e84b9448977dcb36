"""Readings to train on from the store (what the stream job has processed)."""

from __future__ import annotations

from collections import deque
from datetime import datetime
from typing import TYPE_CHECKING

from millrace.config import Settings
from millrace.errors import DataError, UsageError

if TYPE_CHECKING:  # pandas is imported on use: the CLI imports this module for DEFAULT_WINDOW_HOURS
    import pandas as pd

    from millrace.stores.base import Store

COLUMNS = ("sensor_id", "device_id", "sensor_type", "location", "timestamp", "value", "ground_truth")


# `ml train --source store` trains on this many hours of readings, ending at the newest stored one.
DEFAULT_WINDOW_HOURS = 24.0
PAGE = 50_000


def store_readings(
    settings: Settings, *, window_hours: float = DEFAULT_WINDOW_HOURS, per_sensor: int = 200_000
) -> pd.DataFrame:
    """The most recent readings in the store's sensor_metrics: those whose event time lies within
    ``window_hours`` before the newest stored reading (of any sensor; the bound is inclusive), and of those at
    most the ``per_sensor`` newest of each sensor; interpolated readings are then left out.

    The window ends at the newest reading rather than at the wall clock, so a store filled from a recording
    (replayed with its own timestamps) trains on the end of the recording."""
    import pandas as pd

    from millrace.stores.factory import open_store

    if not window_hours > 0:
        raise UsageError(f"expected hours > 0, got {window_hours!r}", param_hint="--window")
    store = open_store(settings)
    try:
        latest = store.latest_readings()
        if not latest:
            raise DataError("the store has no readings yet; run the stream job (millrace iot process) first")
        newest = max(pd.Timestamp(row["timestamp"]) for row in latest)
        since = (newest - pd.Timedelta(hours=window_hours)).to_pydatetime()
        rows: list[dict] = []
        for row in latest:
            rows.extend(_newest(store, row["sensor_id"], since, per_sensor))
    finally:
        store.close()
    frame = pd.DataFrame(rows)
    if "interpolated" in frame:
        frame = frame[~frame["interpolated"].fillna(False).astype(bool)]
    if frame.empty:
        raise DataError(f"the store has no measured readings in the {window_hours:g} h before its newest one")
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).dt.as_unit("ns")
    for col in COLUMNS:
        if col not in frame:
            frame[col] = None
    return frame[list(COLUMNS)].reset_index(drop=True)


def _newest(store: Store, sensor_id: str, since: datetime, limit: int) -> list[dict]:
    """The last ``limit`` readings of a sensor from ``since`` on, in event-time order (the store pages them
    oldest first)."""
    kept: deque[dict] = deque(maxlen=limit)
    offset = 0
    while True:
        page = store.readings(sensor_id, start=since, limit=PAGE, offset=offset)
        kept.extend(page)
        if len(page) < PAGE:
            return list(kept)
        offset += len(page)
