"""``ml evaluate``: run the stream job's detector over labelled recordings and report how good it is.

Each file is read like ``iot replay`` reads it (CSV/Parquet, long or wide) and featurized as a whole - so the
scored readings have the history the live job would have had - then scored with :class:`Scorer`:

- ``train_file``: an unsupervised detector is fitted on that (anomaly-free) recording;
- ``train_rows=N``: per file, fitted on its first N rows and only the rest is scored;
- neither: the current scorer (the promoted model, or the rules when none is promoted).

Several files give pooled metrics. Labels are 0/1 (or normal/anomaly or kind names); per-kind recall is
reported when the labels name kinds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from millrace.config import Settings
from millrace.errors import DataError
from millrace.ml.device import DEFAULT_TARGET_FAR
from millrace.ml.device import DETECTORS as DEVICE_DETECTORS
from millrace.ml.device_eval import AlertRule, evaluate_devices, write_rows
from millrace.ml.follow import load_scorer
from millrace.ml.metrics import binary_metrics, per_kind
from millrace.ml.train import featurize, fit_unsupervised, labels_of
from millrace.processing.scoring import Scorer, model_matrix
from millrace.records import NORMAL


@dataclass(frozen=True)
class ReadOptions:
    """How to read a recording (the options of ``iot replay``)."""

    sep: str | None = None
    time_column: str | None = None
    label_column: str | None = None
    layout: str = "auto"
    sensor_column: str | None = None
    value_column: str | None = None
    type_column: str | None = None
    ignore_columns: tuple[str, ...] = field(default_factory=tuple)
    types: Mapping[str, str] | None = None  # column or sensor name -> sensor type (--types FILE)


def read_readings(path: Path, opts: ReadOptions, *, need_labels: bool) -> pd.DataFrame:
    from millrace.iot.tabular import read_table

    table = read_table(
        path,
        sep=opts.sep,
        time_column=opts.time_column,
        label_column=opts.label_column,
        layout=opts.layout,  # type: ignore[arg-type]
        sensor_column=opts.sensor_column,
        value_column=opts.value_column,
        type_column=opts.type_column,
        ignore_columns=opts.ignore_columns,
        types=opts.types,
    )
    frame = table.frame
    if frame.empty:
        raise DataError(f"{path}: no usable readings ({len(table.bad_rows)} bad rows)")
    if need_labels and (table.columns.get("label") is None or frame["ground_truth"].isna().all()):
        raise DataError(f"{path}: no label column found; name the 0/1 column with --label-column")
    return frame


READING_DETECTORS = {f"reading:{name}": name for name in ("robust_z", "isolation_forest", "mahalanobis")}


def evaluate(
    settings: Settings,
    files: Sequence[Path],
    *,
    opts: ReadOptions,
    train_rows: int | None = None,
    train_file: Path | None = None,
    detector: str = "auto",
    output: Path | None = None,
    seed: int = 0,
    target_far: float = DEFAULT_TARGET_FAR,
    alerts: AlertRule | None = None,
    per_sensor: bool = False,
) -> dict[str, Any]:
    """Pooled metrics over ``files`` (see the module docstring); writes the scores to ``output``.

    ``detector``: ``auto`` or a device-level detector (pca, dpca, mcd, iforest, univariate) scores device rows
    (:mod:`millrace.ml.device_eval`: row, event and NAB metrics); ``reading:<name>`` (robust_z,
    isolation_forest, mahalanobis) scores each reading from its features, as before. Without training options
    the promoted model scores, at its own level."""
    if not files:
        raise DataError("give at least one file to evaluate")
    if train_rows is not None and train_file is not None:
        raise DataError("use --train-rows or --train-file, not both")
    if detector not in READING_DETECTORS and detector != "auto" and detector not in DEVICE_DETECTORS:
        known = ", ".join(["auto", *DEVICE_DETECTORS, *READING_DETECTORS])
        raise DataError(f"unknown detector {detector!r}; one of {known}")
    if not 0.0 < target_far < 0.5:
        raise DataError(f"--target-far must be between 0 and 0.5 (a rate), got {target_far:g}")
    promoted = load_scorer(settings) if train_rows is None and train_file is None else None
    if detector not in READING_DETECTORS and (promoted is None or getattr(promoted.detector, "level", "") == "device"):
        rule = alerts or AlertRule(quiet_s=settings.processing.episode_quiet_s)
        return _evaluate_devices(
            files,
            opts=opts,
            train_rows=train_rows,
            train_file=train_file,
            detector=detector,
            seed=seed,
            target_far=target_far,
            alerts=rule,
            output=output,
            per_sensor=per_sensor,
            model=promoted.detector if promoted is not None else None,
            version=promoted.version if promoted is not None else None,
        )
    detector = READING_DETECTORS.get(detector, "mahalanobis")
    fixed: Scorer | None = None
    mode = "current scorer"
    if train_file is not None:
        train_feats = featurize(read_readings(train_file, opts, need_labels=False), settings.processing)
        X = model_matrix(train_feats)
        det = fit_unsupervised(X[np.isfinite(X[:, 1])], detector, seed=seed)
        fixed, mode = Scorer(settings.processing, detector=det), f"{detector} fitted on {train_file}"
    elif train_rows is None:
        fixed = promoted
        assert fixed is not None
        mode = f"promoted model {fixed.version}" if fixed.version else "rules (no promoted model)"
    else:
        mode = f"{detector} fitted on the first {train_rows} rows of each file"

    scored: list[pd.DataFrame] = []
    per_file: dict[str, Any] = {}
    for path in files:
        feats = featurize(read_readings(path, opts, need_labels=True), settings.processing)
        scorer = fixed
        if train_rows is not None:
            row_numbers = np.sort(feats["row"].unique())
            if train_rows >= len(row_numbers):
                raise DataError(f"{path}: --train-rows {train_rows} leaves nothing to score ({len(row_numbers)} rows)")
            first = feats["row"] < row_numbers[train_rows]
            X = model_matrix(feats[first])
            usable = np.isfinite(X[:, 1])
            if usable.sum() < 10:
                raise DataError(f"{path}: the first {train_rows} rows give too few readings to fit on")
            scorer = Scorer(settings.processing, detector=fit_unsupervised(X[usable], detector, seed=seed))
            feats = feats[~first].reset_index(drop=True)
        assert scorer is not None
        out = scorer.score(feats)
        out["file"] = str(path)
        labels = labels_of(out)
        assert labels is not None
        per_file[str(path)] = binary_metrics(labels != NORMAL, out["is_anomaly"].to_numpy())
        scored.append(out)

    pooled = pd.concat(scored, ignore_index=True)
    labels = labels_of(pooled)
    assert labels is not None
    flag = pooled["is_anomaly"].to_numpy(dtype=bool)
    result: dict[str, Any] = {"mode": mode, "files": [str(f) for f in files], **binary_metrics(labels != NORMAL, flag)}
    if set(labels) - {NORMAL, "anomaly"}:
        result["per_kind"] = per_kind(labels, flag, pooled["anomaly_kind"].to_numpy(dtype=object))
    if len(files) > 1:
        result["per_file"] = per_file
    if output is not None:
        write_scores(pooled, output)
        result["output"] = str(output)
    return result


def _evaluate_devices(
    files: Sequence[Path],
    *,
    opts: ReadOptions,
    train_rows: int | None,
    train_file: Path | None,
    detector: str,
    seed: int,
    target_far: float,
    alerts: AlertRule,
    output: Path | None,
    per_sensor: bool,
    model: Any,
    version: str | None,
) -> dict[str, Any]:
    tables = [(str(p), read_readings(p, opts, need_labels=True)) for p in files]
    # The training recording needs no label column (a column named like one is still recognised as such).
    train = read_readings(train_file, replace(opts, label_column=None), need_labels=False) if train_file else None
    if train_file is not None:
        mode = f"device-level {detector} fitted on {train_file}"
    elif train_rows is not None:
        mode = f"device-level {detector} fitted on the first {train_rows} rows of each file"
    else:
        if model is None:
            raise DataError("no model is promoted: give --train-rows N or --train-file FILE to fit one")
        mode = f"promoted model {version}"
    result, scored, fitted = evaluate_devices(
        tables,
        train_rows=train_rows,
        train=train,
        model=model,
        detector=detector,
        target_far=target_far,
        alerts=alerts,
        seed=seed,
    )
    result = {"mode": mode, "files": [str(f) for f in files], **result}
    if len(files) > 1:
        result["per_file"] = {
            name: binary_metrics(g["label"].to_numpy(dtype=bool), g["flag"].to_numpy(dtype=bool))
            for name, g in scored.groupby("file", sort=False)
        }
    if output is not None:
        write_rows(scored, output, per_sensor=per_sensor)
        result["output"] = str(output)
    return result


def write_scores(scored: pd.DataFrame, path: Path) -> None:
    """One row per scored reading: time, file, row, sensor_id, value, label, score, flag, kind. Scores are cut
    (not rounded) to 6 decimals, so a score just under the threshold 1.0 is not written as 1.0."""
    table = pd.DataFrame(
        {
            "time": scored["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "file": scored["file"],
            "row": scored["row"],
            "sensor_id": scored["sensor_id"],
            "value": scored["value"],
            "label": scored["ground_truth"],
            "score": np.floor(scored["score"] * 1e6) / 1e6,
            "flag": scored["is_anomaly"].astype(int),
            "kind": scored["anomaly_kind"],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".parquet", ".pq"):
        table.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False)
