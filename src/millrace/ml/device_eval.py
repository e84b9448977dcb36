"""``ml evaluate`` with a device-level detector (:mod:`millrace.ml.device`): one row per device and time.

Readings become device rows: a row is one device at one time, one column per sensor (a wide file's own
rows; a long file's readings pivoted), anomalous when any of its readings is labelled anomalous. The
detector is fitted on the training rows (``train_rows`` per file, or a separate ``train_file``, or the
promoted device model), the rest is scored, and the result has three levels:

- rows: precision, recall, F1, false- and missed-alarm rates of the per-row flags;
- events (label runs): flags become alert episodes (:func:`millrace.ml.events.alert_episodes`: ``min_run``
  flagged rows raise an alert, ``quiet`` unflagged rows close it) - events detected, false alerts per day,
  detection delay;
- NAB: the alerts' raised rows scored against the label runs as windows, under the three profiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from millrace.errors import DataError
from millrace.ml import events as ev
from millrace.ml.device import DEFAULT_TARGET_FAR, DeviceModel, fit_device_model
from millrace.ml.device_readings import ROW_COLUMNS, device_rows
from millrace.ml.metrics import binary_metrics


@dataclass(frozen=True)
class AlertRule:
    """How per-row flags become alerts (the hysteresis of an alert episode). Without ``quiet`` an alert closes
    as the stream job's episodes do: after ``quiet_s`` of event time without a flagged row (rows counted at
    the series' median spacing)."""

    min_run: int = 1  # consecutive flagged rows that raise an alert
    quiet: int | None = None  # consecutive unflagged rows that close it
    quiet_s: float = 30.0  # processing.episode_quiet_s, when quiet is None

    def quiet_rows(self, times: pd.DatetimeIndex) -> int:
        if self.quiet is not None:
            return self.quiet
        steps = np.diff(times.as_unit("ns").asi8) / 1e9 if len(times) > 1 else np.zeros(0)
        step = float(np.median(steps[steps > 0])) if (steps > 0).any() else 0.0
        return max(1, int(np.ceil(self.quiet_s / step))) if step > 0 else 1


def evaluate_devices(
    tables: Sequence[tuple[str, pd.DataFrame]],
    *,
    train_rows: int | None = None,
    train: pd.DataFrame | None = None,
    model: DeviceModel | None = None,
    detector: str = "auto",
    target_far: float = DEFAULT_TARGET_FAR,
    alerts: AlertRule | None = None,
    seed: int = 0,
) -> tuple[dict[str, Any], pd.DataFrame, DeviceModel]:
    """Metrics over ``tables`` ((name, readings) per file), the scored rows, and the model. Exactly one of
    ``train_rows`` (fit per file on its first rows), ``train`` (readings to fit on) or ``model``."""
    scored: list[pd.DataFrame] = []
    fitted = model
    if train is not None:
        fitted = _fit(*device_rows(train), detector=detector, target_far=target_far, seed=seed)
    for name, readings in tables:
        rows, _ = device_rows(readings, name)
        history: dict[str, np.ndarray] = {}
        if train_rows is not None:
            numbers = np.sort(rows["row"].unique())
            if train_rows >= len(numbers):
                raise DataError(f"{name}: --train-rows {train_rows} leaves nothing to score ({len(numbers)} rows)")
            first = rows["row"] < numbers[train_rows]
            head, sensors = rows[first], tuple(c for c in rows.columns if c not in ROW_COLUMNS)
            fitted = _fit(head, sensors, detector=detector, target_far=target_far, seed=seed)
            history = {d: _matrix(g, fitted.sensors) for d, g in head.groupby("device_id", sort=False)}
            rows = rows[~first]
        assert fitted is not None
        scored.append(score_rows(fitted, rows, history))
    assert fitted is not None
    pooled = pd.concat(scored, ignore_index=True)
    return summarize(pooled, fitted, alerts or AlertRule()), pooled, fitted


def _fit(rows: pd.DataFrame, sensors: tuple[str, ...], **kw: Any) -> DeviceModel:
    V = np.vstack([_matrix(g, sensors) for _, g in rows.groupby("device_id", sort=False)])  # noqa: N806
    if len(V) < 40:
        raise DataError(f"{len(V)} training rows are too few to fit a device-level detector (need 40)")
    try:
        return fit_device_model(V, sensors, **kw)
    except ValueError as exc:
        raise DataError(str(exc)) from exc


def _matrix(rows: pd.DataFrame, sensors: Sequence[str]) -> np.ndarray:
    return rows.reindex(columns=list(sensors)).to_numpy(dtype=float)


def score_rows(model: DeviceModel, rows: pd.DataFrame, history: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """``rows`` (ROW_COLUMNS + sensors) with score, tail probability, flag, the top sensors, sensors out of
    their learned range, and one ``contribution:<sensor>`` column per model sensor; per device in time order."""
    parts = []
    for device, group in rows.groupby("device_id", sort=False):
        s = model.score(_matrix(group, model.sensors), (history or {}).get(str(device)))
        part = group[list(ROW_COLUMNS)].copy()
        part["score"] = s.score
        part["tail_probability"] = s.tail
        part["flag"] = s.flag
        part["sensors"] = [";".join(t) for t in model.top_sensors(s.contributions)]
        names = np.asarray(model.sensors, dtype=object)
        part["out_of_range"] = [";".join(names[r]) for r in s.out_of_range]
        contrib = pd.DataFrame(s.contributions, index=group.index, columns=[f"contribution:{n}" for n in model.sensors])
        parts.append(pd.concat([part, contrib], axis=1))
    return pd.concat(parts, ignore_index=True) if parts else rows[list(ROW_COLUMNS)].copy()


def summarize(scored: pd.DataFrame, model: DeviceModel, rule: AlertRule) -> dict[str, Any]:
    """Row, event and NAB metrics of scored device rows (alerts per file and device)."""
    truth = scored["label"].to_numpy(dtype=bool)
    flags = scored["flag"].to_numpy(dtype=bool)
    result: dict[str, Any] = {"unit": "device row", "model": model.summary(), **binary_metrics(truth, flags)}
    event_parts: list[dict[str, Any]] = []
    nab: dict[str, list[ev.NabScore]] = {p: [] for p in ev.NAB_PROFILES}
    alert_rows = np.zeros(len(scored), dtype=bool)
    quiet_rows: list[int] = []
    for _, group in scored.groupby(["file", "device_id"], sort=False):
        idx = group.index.to_numpy()
        times = pd.DatetimeIndex(group["timestamp"])
        quiet = rule.quiet_rows(times)
        quiet_rows.append(quiet)
        alerts = ev.alert_episodes(flags[idx], min_run=rule.min_run, quiet=quiet)
        raised = ev.raised_mask(alerts, len(idx))
        alert_rows[idx] = raised
        event_parts.append(ev.event_metrics(times, truth[idx], alerts))
        windows = ev.label_events(truth[idx])
        for profile, score in ev.nab_scores(raised, windows, len(idx)).items():
            nab[profile].append(score)
    scored["alert"] = alert_rows
    result["events"] = _pooled_events(event_parts)
    result["nab"] = {p: _nab_dict(ev.nab_total(scores)) for p, scores in nab.items() if scores}
    result["alert_rule"] = {
        "min_run": rule.min_run,
        "quiet_rows": sorted(set(quiet_rows)),
        "quiet_s": None if rule.quiet is not None else rule.quiet_s,
    }
    return result


def _pooled_events(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Event metrics summed over series; delays averaged over detected events (median of the series' medians
    is not a median, so the pooled median is left to the per-row output)."""
    total = {k: sum(p[k] for p in parts) for k in ("events", "events_detected", "alerts", "false_alerts")}
    days = sum(p["span_days"] or 0.0 for p in parts)
    detected = total["events_detected"]
    delay = sum((p["detection_delay_mean_s"] or 0.0) * p["events_detected"] for p in parts)
    delay_rows = sum((p["detection_delay_mean_rows"] or 0.0) * p["events_detected"] for p in parts)
    medians = [p["detection_delay_median_s"] for p in parts if p["detection_delay_median_s"] is not None]
    return {
        **total,
        "event_recall": detected / total["events"] if total["events"] else None,
        "false_alerts_per_day": total["false_alerts"] / days if days > 0 else None,
        "detection_delay_mean_s": delay / detected if detected else None,
        "detection_delay_mean_rows": delay_rows / detected if detected else None,
        "detection_delay_median_s": float(np.median(medians)) if len(parts) == 1 and medians else None,
    }


def _nab_dict(score: ev.NabScore) -> dict[str, Any]:
    return {"score": score.normalised, "raw": score.raw, "tp": score.tp, "fp": score.fp, "fn": score.fn}


def write_rows(scored: pd.DataFrame, path: Path, *, per_sensor: bool = False) -> None:
    """One row per scored input row: time, file, device, row, label, score, tail probability, flag, alert,
    top sensors, sensors out of their learned range; ``per_sensor`` adds each sensor's contribution."""
    cols = [
        "file",
        "device_id",
        "row",
        "label",
        "score",
        "tail_probability",
        "flag",
        "alert",
        "sensors",
        "out_of_range",
    ]
    table = scored[cols].copy()
    table.insert(0, "time", pd.DatetimeIndex(scored["timestamp"]).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    table["label"] = table["label"].astype(int)
    table["flag"] = table["flag"].astype(int)
    table["alert"] = table["alert"].astype(int)
    table["score"] = np.floor(table["score"] * 1e6) / 1e6  # cut, so 0.9999996 is not written as the threshold
    if per_sensor:
        table = pd.concat([table, scored[[c for c in scored.columns if c.startswith("contribution:")]]], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".parquet", ".pq"):
        table.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False)
