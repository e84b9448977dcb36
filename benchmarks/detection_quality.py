"""Detection quality on simulator ground truth: train on some seeds, test on other seeds and other days.

    .venv/bin/python benchmarks/detection_quality.py [--devices 6] [--train-hours 8] [--test-hours 4]
        [--rich-devices 12] [--rich-hours 8] [--rich-rate 0.15] [--fit-seed 0] [--skip-development]
        [--skip-tests] [--train-rates 0.15 0.15 0.15 0.15 0.15 0.15]

Training data: one fleet per ``--train-rates`` value, seeds 101, 102, ... with that anomaly rate, January
(default six at 0.15: chosen on the two development sets - dense anomalies and more fleets taught the
detector more, on sparse data too; docs/detection-quality.md).
Development data, in February, never trained on and scored like the tests - the referees, beside the
validation period, for choices between versions of the features, models or training data (the test seeds must
decide nothing): seeds 201 and 202 with anomaly rate ``--rich-rate`` (dense), and seeds 203 and 204 with
anomaly rate 0.02 (sparse), each ``--devices`` devices for ``--train-hours`` hours.
Test data (held out; never used to fit or to choose thresholds), in March:
- *default*: seeds 901 and 902 at the simulator's default anomaly_rate 0.02 (comparable with earlier runs);
- *rich*: seeds 901 and 902 with more devices and anomaly_rate ``--rich-rate``, so that every kind has
  hundreds of labelled readings (a spike lasts 1-3 readings: at rate 0.02 a small test holds a dozen).
  Dense anomalies change the data too (fewer normal readings per anomalous one; references and device
  context more often disturbed), so compare namings within one test set, not across them.
Each test is scored with the kept model twice: kinds named as chosen on validation (see "Naming the kind" in
docs/anomaly-model.md), and by the detector's own classes (namer and per-kind multipliers removed: the naming
before that choice existed) - a before/after on the same model and data - and by the rules alone.
Reading-level and event-level (episode) per-kind numbers; see docs/detection-quality.md.
``--fit-seed`` changes only the training's sampling and fits: the spread over a few seeds is the noise a
difference between two versions must beat (``--skip-tests`` for such runs).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from millrace.config import load_settings
from millrace.iot.simulator import FleetConfig, simulate_frame
from millrace.ml.metrics import binary_metrics, episode_per_kind, per_kind
from millrace.ml.registry import load_bundle, registry_root
from millrace.ml.train import featurize, labels_of, train
from millrace.processing.scoring import SCORE_COLUMNS, Scorer
from millrace.records import NORMAL

TRAIN_SEED0 = 101
TEST_SEEDS = (901, 902)
DEVELOPMENT_SEEDS = (201, 202)
SPARSE_DEVELOPMENT_SEEDS = (203, 204)


def _test_features(
    settings: Any, devices: int, hours: float, rate: float, seeds: tuple[int, ...] = TEST_SEEDS, month: int = 3
) -> pd.DataFrame:
    parts = []
    for i, seed in enumerate(seeds):
        cfg = FleetConfig(
            devices=devices, seed=seed, anomaly_rate=rate, start=datetime(2026, month, 10 + 5 * i, tzinfo=UTC)
        )
        feats = featurize(simulate_frame(cfg, duration_s=hours * 3600), settings.processing)
        feats["sensor_id"] = feats["sensor_id"] + f"-s{seed}"
        parts.append(feats)
    return pd.concat(parts, ignore_index=True)


def _measure(feats: pd.DataFrame, scorer: Scorer) -> dict[str, Any]:
    scored = scorer.score(feats)
    labels = labels_of(scored)
    assert labels is not None
    flag = scored["is_anomaly"].to_numpy(dtype=bool)
    kinds = scored["anomaly_kind"].to_numpy(dtype=object)
    ts = scored["timestamp"].to_numpy(dtype="datetime64[ns]").view("int64")
    return {
        "overall": binary_metrics(labels != NORMAL, flag),
        "per_kind": per_kind(labels, flag, kinds),
        "episodes": episode_per_kind(
            scored["sensor_id"].to_numpy(dtype=object), ts, labels, flag, kinds, scored["score"].to_numpy(dtype=float)
        ),
    }


def _print(title: str, runs: dict[str, dict[str, Any]]) -> None:
    m, d, r = runs["namer"], runs["detector"], runs["rules"]
    o = m["overall"]
    print(f"\n### {title}: {o['readings']:,} readings, {o['anomalies']:,} anomalous\n")
    print(
        "| kind | readings | detection recall | kind precision | kind recall | kind F1 | kind F1 (detector "
        "own naming) | episodes | episode F1 | episode F1 (detector's own naming) | rules recall |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind, row in m["per_kind"].items():
        ep, ep_d = m["episodes"].get(kind, {}), d["episodes"].get(kind, {})
        print(
            f"| {kind} | {row['readings']:,} | {row['recall']:.3f} | {row['kind_precision']:.3f} | "
            f"{row['kind_recall']:.3f} | **{row['kind_f1']:.3f}** | {d['per_kind'][kind]['kind_f1']:.3f} | "
            f"{ep.get('episodes', 0)} | {ep.get('f1', 0):.3f} | {ep_d.get('f1', 0):.3f} | "
            f"{r['per_kind'][kind]['recall']:.3f} |"
        )
    for name, run in (("model", m), ("rules", r)):
        x = run["overall"]
        print(
            f"| **all ({name})** | {x['anomalies']:,} | recall {x['recall']:.3f} | precision {x['precision']:.3f} "
            f"| F1 {x['f1']:.3f} | false alarms {x['false_alarm_rate']:.3%} | | | | | |"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=6)
    parser.add_argument("--train-hours", type=float, default=8.0)
    parser.add_argument("--test-hours", type=float, default=4.0)
    parser.add_argument("--rich-devices", type=int, default=12)
    parser.add_argument("--rich-hours", type=float, default=8.0)
    parser.add_argument("--rich-rate", type=float, default=0.15)
    parser.add_argument("--skip-development", action="store_true", help="leave out the development sets")
    parser.add_argument("--skip-tests", action="store_true", help="leave out the test sets (for choices)")
    parser.add_argument(
        "--fit-seed",
        type=int,
        default=0,
        help="seed of the training's sampling and fits (the data stay the same): runs with "
        "several show how much a number moves from one training to the next",
    )
    parser.add_argument(
        "--train-rates",
        type=float,
        nargs="+",
        default=[0.15] * 6,
        help="anomaly rate of each training seed (seeds 101, 102, ... one per rate)",
    )
    parser.add_argument("--json", type=Path, default=Path("detection_quality.json"))
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="millrace-quality-"))
    settings = load_settings(state_dir=state)

    t0 = time.monotonic()
    frames = []
    train_seeds = tuple(TRAIN_SEED0 + i for i in range(len(args.train_rates)))
    for i, (seed, rate) in enumerate(zip(train_seeds, args.train_rates, strict=True)):
        cfg = FleetConfig(
            devices=args.devices, seed=seed, anomaly_rate=rate, start=datetime(2026, 1, 1 + 3 * i, tzinfo=UTC)
        )
        frame = simulate_frame(cfg, duration_s=args.train_hours * 3600)
        frame["device_id"] = frame["device_id"] + f"-s{seed}"
        frame["sensor_id"] = frame["device_id"] + "-" + frame["sensor_type"]
        frames.append(frame)
    readings = pd.concat(frames, ignore_index=True)
    info = train(settings, readings, source=f"simulate seeds {train_seeds}", seed=args.fit_seed, progress=print)
    train_s = time.monotonic() - t0
    detector = load_bundle(registry_root(settings), info["version"])
    without_namer = copy.copy(detector)
    without_namer.namer, without_namer.kind_bias = None, None  # the naming before kinds were chosen on validation
    print(f"trained {info['detector']} on {len(readings):,} readings in {train_s:.0f} s")

    sets = {"development": (args.devices, args.train_hours, args.rich_rate, DEVELOPMENT_SEEDS, 2),
            "sparse_development": (args.devices, args.train_hours, 0.02, SPARSE_DEVELOPMENT_SEEDS, 2),
            "default": (args.devices, args.test_hours, 0.02, TEST_SEEDS, 3),
            "rich": (args.rich_devices, args.rich_hours, args.rich_rate, TEST_SEEDS, 3)}  # fmt: skip
    if args.skip_development:
        del sets["development"], sets["sparse_development"]
    if args.skip_tests:
        del sets["default"], sets["rich"]
    results: dict[str, Any] = {}
    for name, (devices, hours, rate, seeds, month) in sets.items():
        t1 = time.monotonic()
        feats = _test_features(settings, devices, hours, rate, seeds, month)
        runs = {
            "namer": _measure(feats, Scorer(settings.processing, detector=detector)),
            "detector": _measure(feats, Scorer(settings.processing, detector=without_namer)),
            "rules": _measure(
                feats.drop(columns=[c for c in SCORE_COLUMNS if c in feats]), Scorer(settings.processing)
            ),
        }
        del feats
        kind = "set (for choices; never trained on)" if "development" in name else "test"
        _print(f"{name} {kind} ({devices} devices x {len(seeds)} seeds, {hours:g} h, anomaly rate {rate:g})", runs)
        print(f"\n({time.monotonic() - t1:.0f} s)")
        results[name] = {"devices": devices, "hours": hours, "anomaly_rate": rate, **runs}
    args.json.write_text(
        json.dumps(
            {
                "detector": info["detector"],
                "train_seconds": train_s,
                "train_readings": len(readings),
                "compared": info["metrics"]["compared"],
                "development": results.pop("development", None),
                "sparse_development": results.pop("sparse_development", None),
                "tests": results,
                "args": vars(args) | {"json": str(args.json)},
            },
            indent=2,
            default=float,
        )
    )


if __name__ == "__main__":
    main()
