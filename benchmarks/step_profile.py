"""CPU cost of the stream job's Python step per reading, by phase, without Spark.

Drives processing.stateful.StatefulStep directly, the way ``applyInPandasWithState`` calls it: the simulator's
readings (20 devices, one reading per sensor and second, 2 % of sensor-time in anomaly episodes) are cut into
micro-batches of ``--batch`` readings; each micro-batch is split over the job's state buckets (devices dealt
round-robin into ``spark.state_buckets``, default 2) and each bucket is one call with its own GroupState (a
small fake here) and a MemorySink (processing.output). The scorer is the job's (ml.follow.load_scorer; with an
empty registry: the rules).

Before measuring, ``--warmup`` readings per sensor are fed through the step, so every device has full
reference windows, as in a job that has been running for a while. Each batch size then starts from that same
state and runs ``--readings`` readings.

Reports per batch size: CPU µs per reading of this process (``time.process_time``, unprofiled), then the
same run again under cProfile (timer: process time) split by phase. Phase times are cumulative times of the
functions that implement them (cProfile inflates call-heavy code; the shares are what to read); "other" is
the rest of the step (frame plumbing in the step itself).

    .venv/bin/python benchmarks/step_profile.py [--batch 2000 10000 50000] [--readings 100000] [--json-out f]

Single-threaded like a Spark Python worker: OMP/BLAS threads are pinned to 1.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import cProfile  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from millrace.config import Settings, load_settings  # noqa: E402
from millrace.iot.simulator import FleetConfig, simulate_frame  # noqa: E402
from millrace.ml.follow import load_scorer  # noqa: E402
from millrace.processing.output import MemorySink  # noqa: E402
from millrace.processing.stateful import make_step  # noqa: E402

# Phases: (label, functions as (file name ending, function name)); a phase's time is the sum of the
# cumulative times of its functions (none of them calls another phase's function). Names of both layouts of
# the step (methods of StatefulStep before the typed state, module functions after) are listed: absent ones
# count nothing.
PHASES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("state load + save (JSON)", (("processing/state.py", "loads"), ("processing/state.py", "dumps"))),
    ("dedup and lateness", (("processing/transforms.py", "drop_duplicates_and_late"),)),
    ("gaps", (("processing/gaps.py", "fill_gaps"),)),
    ("features (features.devices_step)", (("processing/features.py", "devices_step"),)),
    ("scoring (Scorer.score)", (("processing/scoring.py", "score"),)),
    ("JSON text (stored features, rows)", (("processing/output.py", "json_lines"),
                                           ("processing/output.py", "features_json"),
                                           ("processing/stateful.py", "_json_lines"))),
    ("window partials", (("processing/transforms.py", "window_partials"),
                         ("processing/transforms.py", "partial_columns"))),
    ("episodes and alerts", (("processing/stateful.py", "fold_episodes"), ("processing/stateful.py", "_episodes"))),
    ("sink (MemorySink: a copy)", (("processing/output.py", "write_readings"),)),
)  # fmt: skip


class FakeGroupState:
    """The parts of pyspark's GroupState the step uses, holding the bucket's state tuple."""

    def __init__(self) -> None:
        self.value: tuple[Any, ...] | None = None
        self.now_ms = 0
        self.hasTimedOut = False
        self.timeout_ms: int | None = None

    @property
    def exists(self) -> bool:
        return self.value is not None

    @property
    def get(self) -> tuple[Any, ...]:
        assert self.value is not None
        return self.value

    def update(self, value: tuple[Any, ...]) -> None:
        self.value = tuple(value)

    def remove(self) -> None:
        self.value = None

    def setTimeoutDuration(self, ms: int) -> None:  # noqa: N802 - pyspark's name
        self.timeout_ms = ms

    def getCurrentProcessingTimeMs(self) -> int:  # noqa: N802 - pyspark's name
        return self.now_ms


def step_input(frame: pd.DataFrame, first_offset: int) -> pd.DataFrame:
    """Readings as the job's shuffle hands them to the step (transforms.to_step_input; valid rows)."""
    n = len(frame)
    return pd.DataFrame(
        {
            "gkey": frame["bucket"].to_numpy(),
            "reason": [None] * n,
            "raw": [None] * n,
            "kafka_partition": np.zeros(n, dtype=np.int32),
            "kafka_offset": np.arange(first_offset, first_offset + n, dtype=np.int64),
            "sensor_id": frame["sensor_id"].to_numpy(),
            "device_id": frame["device_id"].to_numpy(),
            "sensor_type": frame["sensor_type"].to_numpy(),
            "location": frame["location"].to_numpy(),
            "unit": frame["unit"].to_numpy(),
            "status": frame["status"].to_numpy(),
            "value": frame["value"].to_numpy(),
            "timestamp": frame["timestamp"].dt.tz_localize(None).to_numpy(),
            "ground_truth": frame["ground_truth"].to_numpy(),
        }
    )


class Bench:
    """The step, one fake GroupState per bucket, and the readings in production order."""

    def __init__(self, settings: Settings, readings: pd.DataFrame, buckets: int) -> None:
        self.sink = MemorySink()
        self.step = make_step(
            settings, source_topic="readings", scorer_factory=load_scorer, sink_factory=self.sink.factory
        )
        devices = sorted(readings["device_id"].unique())
        labels = {d: f"b{i % buckets}" for i, d in enumerate(devices)}
        self.readings = readings.assign(bucket=readings["device_id"].map(labels))
        self.states = {f"b{i}": FakeGroupState() for i in range(buckets)}
        self.offset = 0

    def calls(self, lo: int, hi: int, batch: int) -> list[tuple[int, list[tuple[str, pd.DataFrame]]]]:
        """readings[lo:hi] as micro-batches of ``batch``: (processing time, [(bucket, step input)]), built
        before anything is timed (in the job, Spark builds them)."""
        out = []
        for start in range(lo, hi, batch):
            part = self.readings.iloc[start : min(hi, start + batch)]
            # Spark fixes the batch's processing time; here: just after its newest event (no device goes silent).
            now_ms = int(part["timestamp"].max().value // 1_000_000) + 1000
            buckets = []
            for key, rows in part.groupby("bucket", sort=True):
                buckets.append((str(key), step_input(rows, self.offset)))
                self.offset += len(rows)
            out.append((now_ms, buckets))
        return out

    def run(self, calls: list[tuple[int, list[tuple[str, pd.DataFrame]]]]) -> int:
        """Feed the micro-batches through the step; returns the readings fed."""
        fed = 0
        for now_ms, buckets in calls:
            for key, rows in buckets:
                state = self.states[key]
                state.now_ms = now_ms
                for _ in self.step((key,), iter([rows]), state):
                    pass
                fed += len(rows)
            self.sink.writes.clear()
        return fed

    def snapshot(self) -> dict[str, tuple[Any, ...] | None]:
        return {k: s.value for k, s in self.states.items()}

    def restore(self, snap: dict[str, tuple[Any, ...] | None]) -> None:
        for k, value in snap.items():
            self.states[k].value = value


def phase_times(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative process-time seconds per phase, from a cProfile run."""
    raw: dict[tuple[str, int, str], Any] = stats.stats  # type: ignore[attr-defined]
    out: dict[str, float] = {}
    for label, funcs in PHASES:
        total = 0.0
        for (file, _line, name), (_cc, _nc, _tt, ct, _callers) in raw.items():
            if any(file.endswith(suffix) and name == fn for suffix, fn in funcs):
                total += ct
        out[label] = total
    return out


def measure(bench: Bench, snap: dict[str, Any], lo: int, n: int, batch: int) -> dict[str, Any]:
    calls = bench.calls(lo, lo + n, batch)
    bench.restore(snap)
    cpu = time.process_time()
    fed = bench.run(calls)
    clean = time.process_time() - cpu

    bench.restore(snap)
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    bench.run(calls)
    prof.disable()
    stats = pstats.Stats(prof)
    profiled = stats.total_tt  # type: ignore[attr-defined]
    phases = phase_times(stats)
    phases["other"] = max(0.0, profiled - sum(phases.values()))
    return {
        "batch": batch,
        "readings": fed,
        "us_per_reading": clean / fed * 1e6,
        "profiled_us_per_reading": profiled / fed * 1e6,
        "phases_us_per_reading": {k: v / fed * 1e6 for k, v in phases.items()},
        "top": top_functions(stats, fed),
    }


def top_functions(stats: pstats.Stats, fed: int, k: int = 12) -> list[tuple[str, float]]:
    """The functions with the most own time (µs per reading), for finding where the time goes."""
    raw = stats.stats  # type: ignore[attr-defined]
    rows = sorted(raw.items(), key=lambda item: -item[1][2])[:k]
    return [(f"{Path(file).name}:{line}({name})", tt / fed * 1e6) for (file, line, name), (_, _, tt, _, _) in rows]


def readings_frame(devices: int, steps: int, seed: int) -> pd.DataFrame:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    cfg = FleetConfig(devices=devices, interval_s=1.0, seed=seed, anomaly_rate=0.02, start=start)
    return simulate_frame(cfg, duration_s=steps).sort_values(["timestamp", "sensor_id"], kind="stable")


def table(results: list[dict[str, Any]]) -> Iterator[str]:
    labels = [label for label, _ in PHASES] + ["other"]
    yield "| phase | " + " | ".join(f"{r['batch']:,} / batch" for r in results) + " |"
    yield "|---|" + "---:|" * len(results)
    clean = " | ".join(f"**{r['us_per_reading']:.1f}**" for r in results)
    profiled = " | ".join(f"{r['profiled_us_per_reading']:.1f}" for r in results)
    yield f"| **CPU µs per reading (unprofiled)** | {clean} |"
    yield f"| CPU µs per reading under cProfile | {profiled} |"
    for label in labels:
        cells = []
        for r in results:
            us = r["phases_us_per_reading"][label]
            cells.append(f"{us:.1f} ({us / r['profiled_us_per_reading']:.0%})")
        yield f"| {label} | " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[2_000, 10_000, 50_000], help="readings per micro-batch")
    ap.add_argument("--readings", type=int, default=100_000, help="measured readings per batch size")
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=1_860, help="readings per sensor fed before measuring")
    ap.add_argument("--buckets", type=int, default=None, help="state buckets (default: the settings')")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--top", action="store_true", help="also list the functions with the most own time")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(state_dir=Path(tmp))
        buckets = args.buckets or settings.spark.state_buckets or settings.spark.shuffle_partitions
        sensors = args.devices * 6
        steps = args.warmup + -(-args.readings // sensors) + 1
        readings = readings_frame(args.devices, steps, args.seed)
        bench = Bench(settings, readings, buckets)
        warm = args.warmup * sensors
        cpu = time.process_time()
        bench.run(bench.calls(0, warm, 50_000))
        print(f"warm-up: {warm:,} readings ({time.process_time() - cpu:.1f} CPU s), {buckets} buckets")
        gc.collect()
        gc.freeze()  # as the job's Python workers do after their first call (processing.stateful._freeze_once)
        snap = bench.snapshot()
        n = min(args.readings, len(readings) - warm)
        results = []
        for batch in args.batch:
            results.append(measure(bench, snap, warm, n, batch))
            r = results[-1]
            print(f"batch {batch:,}: {r['us_per_reading']:.1f} CPU µs per reading ({n:,} readings)", flush=True)
            if args.top:
                for name, us in r["top"]:
                    print(f"    {us:7.2f} µs  {name}")
    print()
    print("\n".join(table(results)))
    if args.json_out:
        args.json_out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}))


if __name__ == "__main__":
    main()
