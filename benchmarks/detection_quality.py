"""Detection quality on simulator ground truth: train on some seeds, test on other seeds and other days.

    .venv/bin/python benchmarks/detection_quality.py [--devices 10] [--train-hours 12] [--test-hours 6]

Training data: seeds 101 and 102 (anomaly_rate 0.05 so that rare kinds have examples), January.
Test data: seeds 901 and 902 at the default anomaly_rate 0.02, in March (held-out days and devices' noise).
The test seeds are never used to fit or to choose thresholds. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from millrace.config import load_settings
from millrace.iot.simulator import FleetConfig, simulate_frame
from millrace.ml.metrics import binary_metrics, per_kind
from millrace.ml.registry import load_bundle, registry_root
from millrace.ml.train import featurize, labels_of, train
from millrace.processing.scoring import Scorer
from millrace.records import NORMAL

TRAIN_SEEDS = (101, 102)
TEST_SEEDS = (901, 902)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--train-hours", type=float, default=12.0)
    parser.add_argument("--test-hours", type=float, default=6.0)
    parser.add_argument("--json", type=Path, default=Path("detection_quality.json"))
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="millrace-quality-"))
    settings = load_settings(state_dir=state)

    t0 = time.monotonic()
    frames = []
    for i, seed in enumerate(TRAIN_SEEDS):
        cfg = FleetConfig(devices=args.devices, seed=seed, anomaly_rate=0.05,
                          start=datetime(2026, 1, 1 + 3 * i, tzinfo=UTC))  # fmt: skip
        frame = simulate_frame(cfg, duration_s=args.train_hours * 3600)
        frame["device_id"] = frame["device_id"] + f"-s{seed}"
        frame["sensor_id"] = frame["device_id"] + "-" + frame["sensor_type"]
        frames.append(frame)
    readings = pd.concat(frames, ignore_index=True)
    info = train(settings, readings, source=f"simulate seeds {TRAIN_SEEDS}", seed=0, progress=print)
    train_s = time.monotonic() - t0
    detector = load_bundle(registry_root(settings), info["version"])
    print(f"trained {info['detector']} on {len(readings):,} readings in {train_s:.0f} s")

    scored = []
    for i, seed in enumerate(TEST_SEEDS):
        cfg = FleetConfig(devices=args.devices, seed=seed, start=datetime(2026, 3, 10 + 5 * i, tzinfo=UTC))
        feats = featurize(simulate_frame(cfg, duration_s=args.test_hours * 3600), settings.processing)
        scored.append(Scorer(settings.processing, detector=detector).score(feats))
    out = pd.concat(scored, ignore_index=True)
    labels = labels_of(out)
    assert labels is not None
    flag = out["is_anomaly"].to_numpy(dtype=bool)
    overall = binary_metrics(labels != NORMAL, flag)
    kinds = per_kind(labels, flag, out["anomaly_kind"].to_numpy(dtype=object))
    rules = Scorer(settings.processing).score(pd.concat(scored, ignore_index=True).drop(
        columns=["score", "is_anomaly", "anomaly_kind", "reason", "top_features"]))  # fmt: skip
    rules_flag = rules["is_anomaly"].to_numpy(dtype=bool)
    rules_overall = binary_metrics(labels != NORMAL, rules_flag)
    rules_kinds = per_kind(labels, rules_flag, rules["anomaly_kind"].to_numpy(dtype=object))

    print(f"\nmodel {info['detector']} | test readings {overall['readings']:,} | anomalies {overall['anomalies']:,}")
    print("| kind | readings | detection recall | kind precision | kind recall | kind F1 | rules recall |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind, row in kinds.items():
        print(f"| {kind} | {row['readings']} | {row['recall']:.3f} | {row['kind_precision']:.3f} | "
              f"{row['kind_recall']:.3f} | {row['kind_f1']:.3f} | {rules_kinds[kind]['recall']:.3f} |")  # fmt: skip
    for name, m in (("model", overall), ("rules", rules_overall)):
        print(f"| **all ({name})** | {m['anomalies']} | recall {m['recall']:.3f} | precision {m['precision']:.3f} "
              f"| F1 {m['f1']:.3f} | false alarms {m['false_alarm_rate']:.3%} | |")  # fmt: skip
    args.json.write_text(json.dumps({
        "detector": info["detector"], "train_seconds": train_s, "train_readings": len(readings),
        "compared": info["metrics"]["compared"], "test": overall, "per_kind": kinds,
        "rules": {"test": rules_overall, "per_kind": rules_kinds}, "args": vars(args) | {"json": str(args.json)},
    }, indent=2, default=float))  # fmt: skip
    np.set_printoptions(precision=3)


if __name__ == "__main__":
    main()
