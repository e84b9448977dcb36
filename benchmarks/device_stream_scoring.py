"""The stream job's device-level scoring path per core: readings of a simulated fleet in micro-batches of event
time, pivoted into device rows and scored with each device's past carried from batch to batch (what
``Scorer.score`` does in the job for a promoted device-level model).

    .venv/bin/python benchmarks/device_stream_scoring.py [--devices 20] [--minutes 10] [--batch-s 5 30]

Reports readings per CPU second of this process (single-threaded: OMP/BLAS threads pinned to 1).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import time  # noqa: E402

import numpy as np  # noqa: E402

from millrace.iot.simulator import FleetConfig, simulate_frame  # noqa: E402
from millrace.ml.device import fit_device_model  # noqa: E402
from millrace.ml.device_readings import device_rows, score_readings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=20, help="devices of six sensors each")
    parser.add_argument("--minutes", type=float, default=10.0, help="event time scored")
    parser.add_argument("--batch-s", type=float, nargs="+", default=[5.0, 30.0], help="micro-batch spans, seconds")
    args = parser.parse_args()
    train = simulate_frame(FleetConfig(devices=args.devices, seed=3, anomaly_rate=0.0), duration_s=1200)
    rows, sensors = device_rows(train)
    matrix = np.vstack([g[list(sensors)].to_numpy(float) for _, g in rows.groupby("device_id")])
    model = fit_device_model(matrix, sensors)
    print(f"model: {model.name} ({model.why})")
    test = simulate_frame(FleetConfig(devices=args.devices, seed=3, anomaly_rate=0.02), duration_s=args.minutes * 60)
    print("| micro-batch | batches | readings per batch | readings per CPU-second |")
    print("|---:|---:|---:|---:|")
    for span in args.batch_s:
        batches = [g for _, g in test.groupby(test["timestamp"].dt.floor(f"{int(span * 1000)}ms"))]
        history: dict[str, list[list[float]]] = {}
        cpu = time.process_time()
        for batch in batches:
            score_readings(model, batch, history)
        cpu = time.process_time() - cpu
        print(f"| {span:g} s | {len(batches)} | {len(test) // len(batches):,} | {len(test) / cpu:,.0f} |")


if __name__ == "__main__":
    main()
