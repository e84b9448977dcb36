"""Throughput of the feature code and of the Scorer, per core.

    .venv/bin/python benchmarks/scoring.py [--devices 10] [--hours 2]

Reports readings per second of wall time and per CPU second of this process (the honest per-core figure on a
shared machine). Single-threaded: OMP/BLAS threads are pinned to 1.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from millrace.config import ProcessingSettings  # noqa: E402
from millrace.iot.simulator import FleetConfig, simulate_frame  # noqa: E402
from millrace.ml.detectors import fit_gradient_boosting  # noqa: E402
from millrace.ml.metrics import best_threshold  # noqa: E402
from millrace.ml.train import MAX_FALSE_ALARM, fit_unsupervised, labels_of  # noqa: E402
from millrace.processing.features import device_step, empty_state, frame_features  # noqa: E402
from millrace.processing.scoring import KIND_FEATURES, MODEL_FEATURES, Scorer, model_matrix  # noqa: E402
from millrace.records import NORMAL  # noqa: E402


def timed(label: str, n: int, fn: Callable[[], Any]) -> Any:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"| {label} | {n:,} | {wall:.2f} | {n / wall:,.0f} | {n / max(cpu, 1e-9):,.0f} |")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--hours", type=float, default=2.0)
    args = parser.parse_args()
    cfg = ProcessingSettings()
    frame = simulate_frame(
        FleetConfig(devices=args.devices, seed=5, start=datetime(2026, 1, 1, tzinfo=UTC)), duration_s=args.hours * 3600
    )
    frame["interpolated"] = False
    n = len(frame)
    print("| step | readings | wall s | readings/s (wall) | readings/s per CPU-second |")
    print("|---|---:|---:|---:|---:|")
    feats = timed("frame_features (one pass per device)", n, lambda: frame_features(frame, cfg, chunk=None))

    one = frame[frame["device_id"] == "dev-0001"].copy()
    one = one[one["timestamp"] < one["timestamp"].min() + np.timedelta64(30, "m")]
    for span in ("1s", "10s", "100s"):
        batches = [b for _, b in one.groupby(one["timestamp"].dt.floor(span))]

        def stream(batches: list = batches) -> None:
            state = empty_state()
            for batch in batches:
                _, state = device_step(batch, state, cfg)

        per = len(one) // len(batches)
        timed(f"device_step, one device, {span} micro-batches ({per} readings each)", len(one), stream)
        scorer = Scorer(cfg)
        featured = [device_step(b, empty_state(), cfg)[0] for b in batches[:200]]
        timed(
            f"Scorer.score, {per} readings per call",
            sum(map(len, featured)),
            lambda featured=featured, scorer=scorer: [scorer.score(f) for f in featured],
        )
    timed("Scorer: rules + robust z", n, lambda: Scorer(cfg).score(feats))
    X = model_matrix(feats)
    warm = np.isfinite(X[:, 1])
    maha = fit_unsupervised(X[warm][:200_000], "mahalanobis")
    timed("Scorer: mahalanobis model", n, lambda: Scorer(cfg, detector=maha).score(feats))
    labels = labels_of(feats)
    assert labels is not None
    rows = np.flatnonzero(warm)[:300_000]
    # As training fits it: the kind model on the kind-namer inputs (KIND_FEATURES).
    K = model_matrix(feats.iloc[rows], KIND_FEATURES)
    hgb = fit_gradient_boosting(X[rows], labels[rows], MODEL_FEATURES, 0, kinds=(K, KIND_FEATURES))
    # The threshold as training chooses it (best F1 at <= 1 % false alarms), so the share of flagged readings -
    # the only ones the multi-class model names - is what a trained model flags.
    truth = labels[rows] != NORMAL
    hgb.threshold = best_threshold(hgb.score(X[rows]), truth, max_false_alarm=MAX_FALSE_ALARM)
    scored = timed(
        "Scorer: gradient_boosting model (binary gate + kinds of flagged readings)",
        n,
        lambda: Scorer(cfg, detector=hgb).score(feats),
    )
    timed(
        "frame_features + Scorer with gradient_boosting (the whole batch path)",
        n,
        lambda: Scorer(cfg, detector=hgb).score(frame_features(frame, cfg, chunk=None)),
    )
    gate_trees = hgb.gate.n_iter_
    # As models saved before the gate score: 1 - P(normal) of a multi-class model on the detector's inputs.
    old = fit_gradient_boosting(X[rows], labels[rows], MODEL_FEATURES, 0)
    old.gate, old.threshold = None, hgb.threshold
    timed(
        "Scorer: gradient_boosting, multi-class model only (before the gate)",
        n,
        lambda: Scorer(cfg, detector=old).score(feats),
    )
    flagged = float(scored["is_anomaly"].mean())
    rounds, classes = hgb.estimator.n_iter_, len(hgb.classes or ())
    print(
        f"\ngradient boosting: gate {gate_trees} trees on every reading; kinds {rounds} rounds x {classes} "
        f"classes = {rounds * classes} trees, on the {flagged:.2%} flagged readings only"
    )


if __name__ == "__main__":
    main()
