"""Readings to train on from the store (what the stream job has processed)."""

from __future__ import annotations

import pandas as pd

from millrace.config import Settings
from millrace.errors import DataError

COLUMNS = ("sensor_id", "device_id", "sensor_type", "location", "timestamp", "value", "ground_truth")


def store_readings(settings: Settings, *, per_sensor: int = 200_000) -> pd.DataFrame:
    """Every sensor's readings (measured ones only, up to ``per_sensor`` each) from sensor_metrics."""
    from millrace.stores.factory import open_store

    store = open_store(settings)
    rows: list[dict] = []
    for latest in store.latest_readings():
        rows.extend(store.readings(latest["sensor_id"], limit=per_sensor))
    if not rows:
        raise DataError("the store has no readings yet; run the stream job (millrace iot process) first")
    frame = pd.DataFrame(rows)
    if "interpolated" in frame:
        frame = frame[~frame["interpolated"].fillna(False).astype(bool)]
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).dt.as_unit("ns")
    for col in COLUMNS:
        if col not in frame:
            frame[col] = None
    return frame[list(COLUMNS)].reset_index(drop=True)
