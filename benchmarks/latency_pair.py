"""Latency of the stream job beside Spark's floor at one production rate, in ONE run on one broker.

The machine is shared: two runs minutes apart see different loads, so a ratio of their latencies says little.
This runs both queries in one process on one local broker, back to back (``--order`` says which first): the
floor (benchmarks/spark_floor.py's ``group`` query: the job's source, parse, validation and shuffle into an
``applyInPandasWithState`` that only counts) and the job (benchmarks/stream_throughput.py's latency run), each
for ``--warmup`` + ``--seconds`` of production at ``--rate`` readings/s. For each it reports:

- latency p50 / p99 / max: the floor's from production to the end of the micro-batch that carried a reading to
  the driver, the job's from production to the executor writing it to the store (``ingested_at``) and to each
  alert appearing in the store;
- the micro-batch broken down by Spark's own progress (latestOffset, queryPlanning, walCommit, addBatch,
  commitOffsets; the state operator's update and commit time) at p50 and p90, and for the job the driver's
  share of addBatch (collect = executors: source, shuffle, stateful step, the sink's store writes and
  predictions; write = the foreachBatch writer: window ledger, store writes, Kafka);
- CPU seconds per 1,000 readings produced, by part (Spark JVM, Python workers, this process — driver and the
  producer both —, broker), over each query's whole run, and the load average before and after.

    .venv/bin/python benchmarks/latency_pair.py --rate 10000 --seconds 60 --warmup 30 --json-out pair.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

HERE = str(Path(__file__).parent)
sys.path.insert(0, HERE)
# The floor's counting function is pickled by reference to its module: the Python workers (which inherit the
# environment) must find it too.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH")) if p)
import spark_floor  # noqa: E402
import stream_throughput  # noqa: E402

from millrace.jobs.session import build_session  # noqa: E402
from millrace.runtime.process import free_port  # noqa: E402
from millrace.runtime.stack import Stack  # noqa: E402


def load() -> float:
    return round(psutil.getloadavg()[0], 1)


class CpuSampler:
    """CPU seconds by part (stream_throughput.cpu_by_part's parts) of this process and its descendants, sampled
    every ``every_s``: a process that exits in between (Spark restarts Python workers) keeps the CPU it had at
    its last sample instead of vanishing from the sum. Also the peak of the summed RSS of all but the broker
    (``peak_rss_mb``: the driver, the Spark JVM and its Python workers) over the samples."""

    def __init__(self, every_s: float = 0.5) -> None:
        self.every_s = every_s
        self.seen: dict[int, tuple[str, float]] = {}
        self.peak_rss_mb = 0.0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        me = psutil.Process()
        t = me.cpu_times()
        seen = {me.pid: ("driver", t.user + t.system)}
        rss = me.memory_info().rss
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                t = child.cpu_times()
                if "java" not in child.name():
                    part = "python_workers"
                else:
                    part = "broker" if "kafka.Kafka" in " ".join(child.cmdline()) else "jvm"
                seen[child.pid] = (part, t.user + t.system)
                if part != "broker":
                    rss += child.memory_info().rss
        with self.lock:
            self.seen.update(seen)
            self.peak_rss_mb = max(self.peak_rss_mb, rss / 2**20)

    def now(self) -> dict[str, float]:
        """A fresh sample's totals (for a reading at a micro-batch's end)."""
        self.sample()
        return self.totals()

    def worker_pids(self) -> set[int]:
        with self.lock:
            return {pid for pid, (part, _) in self.seen.items() if part == "python_workers"}

    def totals(self) -> dict[str, float]:
        out = {"driver": 0.0, "jvm": 0.0, "python_workers": 0.0, "broker": 0.0}
        with self.lock:
            for part, cpu in self.seen.values():
                out[part] += cpu
        return out

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.sample()

    def __enter__(self) -> CpuSampler:
        self.sample()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.sample()


def measured(name: str, fn: Any) -> dict[str, Any]:
    """Run ``fn()`` and add its wall time, CPU by part and the load around it to its result."""
    load0, t0 = load(), time.monotonic()
    with CpuSampler() as cpu:
        before, workers_before = cpu.totals(), cpu.worker_pids()
        result = fn()
    after = cpu.totals()
    # Python processes that appeared during the run (Spark's daemon, its workers): many more than the state
    # buckets would mean workers started per micro-batch (imports, scorer, store and producer each time).
    result["python_processes_started"] = len(cpu.worker_pids() - workers_before)
    sent = result.get("sent") or round(result["rate_achieved"] * (result["warmup_s"] + result["measured_s"]))
    result.update(
        query=name,
        wall_s=round(time.monotonic() - t0, 1),
        load=[load0, load()],
        cpu_s_per_1000_by_part={k: round(1000 * (after[k] - before[k]) / sent, 4) for k in after},
    )
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured production after the warm-up")
    parser.add_argument("--warmup", type=float, default=30.0)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--max-offsets", type=int, default=200_000, help="maxOffsetsPerTrigger of both queries")
    parser.add_argument("--trigger", type=float, default=1.0, help="micro-batch trigger of both queries, seconds")
    parser.add_argument("--order", choices=["floor-first", "job-first"], default="floor-first")
    parser.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark property")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="millrace-latency-pair-"))
    kp, cp = free_port(), free_port()
    spark_opts: dict[str, Any] = {
        "conf": dict(kv.split("=", 1) for kv in args.spark_conf),
        "trigger_seconds": args.trigger,
    }
    floor_s = stream_throughput.settings_for(root, kp, cp, "floor", args.max_offsets, spark_opts)
    job_s = stream_throughput.settings_for(root, kp, cp, "job", args.max_offsets, spark_opts)
    out: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": psutil.cpu_count(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    stack = Stack(floor_s)
    stack.up()
    try:
        stream_throughput._topics(floor_s)
        stream_throughput._topics(job_s)
        spark = build_session(floor_s, app_name="millrace-latency-pair")  # the job's run() gets the same one
        floor_args = argparse.Namespace(
            rate=args.rate,
            seconds=args.seconds,
            warmup=args.warmup,
            devices=args.devices,
            max_offsets=args.max_offsets,
            trigger=args.trigger,
        )
        runs = {
            "floor": lambda: spark_floor.latency(spark, floor_s, root, floor_args),
            "job": lambda: stream_throughput.latency(job_s, args.rate, args.seconds, args.devices, args.warmup),
        }
        order = ["floor", "job"] if args.order == "floor-first" else ["job", "floor"]
        for name in order:
            out[name] = measured(name, runs[name])
    finally:
        stack.down()
    floor, job = out["floor"], out["job"]
    if floor.get("latency_p99_s") and job.get("reading_latency_p99_s"):
        out["job_over_floor_p99"] = {
            "readings": round(job["reading_latency_p99_s"] / floor["latency_p99_s"], 2),
            "alerts": round(job["latency_p99_s"] / floor["latency_p99_s"], 2),
        }
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: out[k] for k in ("date", "job_over_floor_p99") if k in out}, indent=2))


if __name__ == "__main__":
    main()
