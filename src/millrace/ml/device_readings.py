"""Readings <-> device rows, and device-level scoring of readings (the stream job's path).

A device row is one device at one time with one column per sensor; a sensor's column is its *key*, its id
without the ``<device>-`` prefix, so every device of a fleet (and a wide file's columns) share the keys.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from millrace.ml.device import fill_missing
from millrace.records import NORMAL

ROW_COLUMNS = ("file", "device_id", "timestamp", "row", "label")


def sensor_keys(readings: pd.DataFrame) -> pd.Series:
    """A sensor's name within its device: its id without the ``<device>-`` prefix (the same key on every
    device of a fleet, and a wide file's column slug)."""
    sid = readings["sensor_id"].astype(str)
    dev = readings["device_id"].astype(str) + "-"
    return pd.Series(
        [s[len(d) :] if s.startswith(d) else s for s, d in zip(sid, dev, strict=True)], index=readings.index
    )


def device_rows(readings: pd.DataFrame, file: str = "") -> tuple[pd.DataFrame, tuple[str, ...]]:
    """(rows, sensors): one row per (device, time) in time order per device - ROW_COLUMNS then one column per
    sensor (NaN = not measured at that time)."""
    frame = readings.assign(key=sensor_keys(readings))
    if "row" not in frame:  # readings that come from no file (the simulator, the store)
        frame["row"] = -1
    if "ground_truth" not in frame:
        frame["ground_truth"] = None
    frame = frame.drop_duplicates(["device_id", "timestamp", "key"], keep="last")
    values = frame.set_index(["device_id", "timestamp", "key"])["value"].unstack("key")
    sensors = tuple(str(c) for c in values.columns)
    grouped = frame.groupby(["device_id", "timestamp"], sort=True)
    truth = frame["ground_truth"].astype(object)
    anomalous = (truth.notna() & (truth != NORMAL)).groupby([frame["device_id"], frame["timestamp"]]).any()
    rows = pd.DataFrame(
        {"file": file, "row": grouped["row"].min(), "label": anomalous.reindex(values.index).to_numpy()},
        index=values.index,
    )
    out = pd.concat([rows, values], axis=1).reset_index()
    return out[[*ROW_COLUMNS, *sensors]], sensors


def score_readings(model: Any, readings: pd.DataFrame, history: dict[str, list[list[float]]]) -> pd.DataFrame:
    """Per reading of ``readings`` (any devices, any order): the device row's score, flag, kind "model", a
    reason and the top sensors - the Scorer's columns. ``history`` (device -> its last rows of values in
    ``model.sensors`` order) gives each device's past and is updated with the rows scored here, so the next
    micro-batch continues where this one ended (the stream job keeps it in its state). A sensor missing from
    a row takes its previous value (else its training mean); a device row split across two micro-batches is
    scored in each, with what has arrived."""
    n = len(readings)
    score = np.zeros(n)
    flag = np.zeros(n, dtype=bool)
    reasons = np.full(n, "", dtype=object)
    tops = np.full(n, None, dtype=object)
    if n:
        frame = readings.assign(key=sensor_keys(readings), _pos=np.arange(n))
        known = frame[frame["key"].isin(model.sensors)]
        values = (
            known.drop_duplicates(["device_id", "timestamp", "key"], keep="last")
            .set_index(["device_id", "timestamp", "key"])["value"]
            .unstack("key")
            .reindex(columns=list(model.sensors))
        )
        row_of = pd.Series(np.arange(len(values)), index=values.index)
        matrix = values.to_numpy(dtype=float)
        row_score = np.zeros(len(values))
        row_flag = np.zeros(len(values), dtype=bool)
        row_top: list[list[str]] = [[] for _ in range(len(values))]
        devices = values.index.get_level_values(0).to_numpy()
        for device in pd.unique(devices):
            idx = np.flatnonzero(devices == device)
            past = history.get(str(device))
            s = model.score(matrix[idx], np.asarray(past, dtype=float) if past else None)
            row_score[idx], row_flag[idx] = s.score, s.flag
            for i, names in zip(idx, model.top_sensors(s.contributions), strict=True):
                row_top[i] = names
            # The past is kept with its gaps filled as the score filled them, so the next batch sees the same.
            keep = np.vstack([np.asarray(past, dtype=float), matrix[idx]]) if past else matrix[idx]
            filled = fill_missing(keep, model.core.center)
            history[str(device)] = np.round(filled[-model.history :], 9).tolist() if model.history else []
        rows = row_of.reindex(pd.MultiIndex.from_arrays([frame["device_id"], frame["timestamp"]])).to_numpy()
        has = ~pd.isna(rows)
        r = rows[has].astype(int)
        score[has], flag[has] = row_score[r], row_flag[r]
        for pos in np.flatnonzero(flag):
            names = row_top[int(rows[pos])]
            tops[pos] = names
            reasons[pos] = f"{model.name} score {score[pos]:.2f} on {frame['device_id'].iat[pos]}: " + (
                ", ".join(names) if names else "no single sensor stands out"
            )
    kind = np.full(len(flag), None, dtype=object)
    kind[flag] = "model"
    return pd.DataFrame(
        {"score": score, "is_anomaly": flag, "anomaly_kind": kind, "reason": reasons, "top_features": tops},
        index=readings.index,
    )
