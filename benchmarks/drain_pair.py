"""The drain target of issue 19 — the job's throughput against Spark's floor — in ONE run on one broker.

The machine is shared: two runs minutes apart see different loads, so a ratio of their rates says little. This
runs both drains in one process, on one local broker (free ports) and one SparkSession, back to back
(``--order`` says which first), on the same backlog: ``--backlog`` clean simulator readings of ``--devices``
devices, generated once and produced to two topics before either drain starts. Then

- the floor (benchmarks/spark_floor.py's ``group`` query: the job's Kafka source, parse, validation and shuffle
  into an ``applyInPandasWithState`` that only counts) drains its topic, and
- the job (benchmarks/stream_throughput.py's throughput run: the whole ``millrace iot process`` query into a
  SQLite store and the output topics) drains the other,

both with micro-batches of up to ``--max-offsets`` records. For each it reports readings/s steady (the readings
after the first micro-batch, which pays worker start-up, over the time between the first and the last batch
end — the same count for both), CPU seconds per 1,000 of those readings by part (driver — this process —, Spark
JVM, Python workers, broker; sampled every 0.5 s and at each batch end, so a worker that exits keeps its CPU),
the load average before and after, and the peak RSS of all but the broker (the JVM is shared, so the second
drain's peak includes heap the first one grew). Then the job / floor ratio of the steady rates and of the CPU.

Whichever query runs second finds the JVM's code already compiled for the source, the parsing and the shuffle
they share, and drains faster for it (the floor 48k readings/s first, 58k second, the job 31k and 36k, on one
quiet machine). ``--warmup`` readings (default 200,000) are therefore drained first by both queries, each from
its own topic into its own store, unmeasured; then the measured drains run in ``--order`` on a warm JVM.
``--warmup 0`` measures the cold order effect instead.

    .venv/bin/python benchmarks/drain_pair.py --backlog 600000 --devices 20 --json-out drain.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
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
from latency_pair import CpuSampler, load  # noqa: E402

from millrace.jobs.session import build_session  # noqa: E402
from millrace.runtime.process import free_port  # noqa: E402
from millrace.runtime.stack import Stack  # noqa: E402

PARTS = ("driver", "jvm", "python_workers", "broker")


def measured(name: str, drain: Any) -> dict[str, Any]:
    """Run ``drain(cpu)`` (``cpu()`` a fresh CPU-by-part reading, for each batch end) with the load, wall time
    and peak RSS around it; its result keyed the same for both queries."""
    load0, t0 = load(), time.monotonic()
    with CpuSampler() as sampler:
        result = drain(sampler.now)
    parts = result["cpu_s_per_1000_by_part"]
    out = {
        "query": name,
        "readings": result["readings"],
        "batches": len(result["batch_rows"]),
        "batch_rows": result["batch_rows"],
        "readings_per_s_steady": result["readings_per_s_after_first_batch"],
        "cpu_s_per_1000_by_part": {k: parts[k] for k in PARTS},
        "cpu_s_per_1000_but_broker": round(sum(parts[k] for k in PARTS if k != "broker"), 3),
        "peak_rss_mb": round(sampler.peak_rss_mb),
        "wall_s": round(time.monotonic() - t0, 1),
        "load": [load0, load()],
        "detail": result,
    }
    print(json.dumps({k: v for k, v in out.items() if k not in ("detail", "batch_rows")}), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=600_000, help="readings, produced once to both topics")
    parser.add_argument("--devices", type=int, default=20, help="simulated devices (6 sensors each)")
    parser.add_argument("--max-offsets", type=int, default=100_000, help="maxOffsetsPerTrigger of both queries")
    parser.add_argument("--order", choices=["floor-first", "job-first"], default="floor-first")
    parser.add_argument(
        "--warmup", type=int, default=200_000, help="readings both queries drain first, unmeasured (0: none)"
    )
    parser.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark property")
    parser.add_argument("--json-out", type=Path, help="write the whole result here as JSON")
    parser.add_argument(
        "--step-timing",
        type=Path,
        help="file for the job's per-call phase times (processing.stateful, MILLRACE_STEP_TIMING); also keeps "
        "Spark's progress of every micro-batch and, with the UI on (--spark-conf spark.ui.enabled=true), the "
        "stages' task times in the JSON output",
    )
    args = parser.parse_args()
    if args.backlog < 1 or args.devices < 1 or args.max_offsets < 1 or args.warmup < 0:
        parser.error("--backlog, --devices and --max-offsets must be at least 1, --warmup at least 0")
    root = Path(tempfile.mkdtemp(prefix="millrace-drain-pair-"))
    kp, cp = free_port(), free_port()
    spark_opts: dict[str, Any] = {"conf": dict(kv.split("=", 1) for kv in args.spark_conf)}
    floor_s = stream_throughput.settings_for(root, kp, cp, "floor", args.max_offsets, spark_opts)
    job_s = stream_throughput.settings_for(root, kp, cp, "job", args.max_offsets, spark_opts)
    warm_s = {
        name: stream_throughput.settings_for(root, kp, cp, f"warm-{name}", args.max_offsets, spark_opts)
        for name in ("floor", "job")
    }
    out: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": psutil.cpu_count(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    stack = Stack(floor_s)
    stack.up()
    spark = None
    try:
        for settings in (floor_s, job_s, *warm_s.values()):
            stream_throughput._topics(settings)
        warm_fleet = None
        if args.warmup:
            print(f"producing {args.warmup:,} warm-up readings to two topics", file=sys.stderr, flush=True)
            warm_fleet = stream_throughput.produce_backlog(
                floor_s, args.warmup, args.devices, topics=tuple(s.topics.readings for s in warm_s.values())
            )
        t0 = time.monotonic()
        print(f"producing {args.backlog:,} readings to two topics", file=sys.stderr, flush=True)
        fleet = stream_throughput.produce_backlog(
            floor_s, args.backlog, args.devices, topics=(floor_s.topics.readings, job_s.topics.readings)
        )
        out["produce_s"] = round(time.monotonic() - t0, 1)
        if args.step_timing:  # read by the Python workers, which inherit the JVM's environment
            os.environ["MILLRACE_STEP_TIMING"] = str(args.step_timing.resolve())
        spark = build_session(floor_s, app_name="millrace-drain-pair")  # the job's run() gets the same one
        progress = ProgressLog(spark) if args.step_timing else None
        runs = {
            "floor": lambda cpu: spark_floor.drain(
                spark, floor_s, "group", root, args.backlog, args.max_offsets, cpu=cpu
            ),
            "job": lambda cpu: stream_throughput.throughput(
                job_s, args.backlog, args.devices, produced=fleet, cpu_parts=cpu
            ),
        }
        order = ["floor", "job"] if args.order == "floor-first" else ["job", "floor"]
        if warm_fleet is not None:
            warm = {
                "floor": lambda cpu: spark_floor.drain(
                    spark, warm_s["floor"], "group", root / "warm", args.warmup, args.max_offsets, cpu=cpu
                ),
                "job": lambda cpu: stream_throughput.throughput(
                    warm_s["job"], args.warmup, args.devices, produced=warm_fleet, cpu_parts=cpu
                ),
            }
            for name in order:
                print(f"warming up: {name}", file=sys.stderr, flush=True)
                t1 = time.monotonic()
                with CpuSampler() as sampler:
                    warm[name](sampler.now)
                out[f"warmup_{name}_s"] = round(time.monotonic() - t1, 1)
                print(f"warm-up {name}: {args.warmup:,} readings in {out[f'warmup_{name}_s']} s", flush=True)
            if progress is not None:
                progress.batches.clear()
            if args.step_timing and args.step_timing.exists():
                args.step_timing.unlink()
        for name in order:
            print(f"draining: {name}", file=sys.stderr, flush=True)
            out[name] = measured(name, runs[name])
        if progress is not None:
            out["progress"] = progress.batches
            out["stages"] = stage_times(spark)
            out["step_calls"] = step_calls(args.step_timing)
            print(json.dumps({"step_calls": out["step_calls"]}), flush=True)
    finally:
        if spark is not None:  # its Python workers' producers first, then the broker they talk to
            spark.stop()
        stack.down()
    floor, job = out["floor"], out["job"]
    if floor["readings_per_s_steady"] and job["readings_per_s_steady"]:
        out["job_over_floor"] = {
            "readings_per_s_steady": round(job["readings_per_s_steady"] / floor["readings_per_s_steady"], 2),
            # floor / job CPU per reading: the job's efficiency against the floor's, as a throughput ratio
            "cpu_floor_over_job_but_broker": round(
                floor["cpu_s_per_1000_but_broker"] / job["cpu_s_per_1000_but_broker"], 2
            ),
        }
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=2))
    print(table(out))


class ProgressLog:
    """Spark's progress of every micro-batch of every query of ``spark`` (a StreamingQueryListener): the
    phases of a batch (durationMs) and its state operator's times."""

    def __init__(self, spark: Any) -> None:
        from pyspark.sql.streaming import StreamingQueryListener

        batches: list[dict[str, Any]] = []
        self.batches = batches

        class Listener(StreamingQueryListener):
            def onQueryStarted(self, event: Any) -> None:
                pass

            def onQueryProgress(self, event: Any) -> None:
                p = event.progress
                if not p.numInputRows:
                    return
                batches.append(
                    {
                        "query": p.name,
                        "batch": p.batchId,
                        "rows": p.numInputRows,
                        "timestamp": p.timestamp,
                        "durationMs": dict(p.durationMs),
                        "state": [
                            {
                                k: getattr(op, k, None)
                                for k in ("numRowsTotal", "allUpdatesTimeMs", "commitTimeMs", "memoryUsedBytes")
                            }
                            for op in p.stateOperators
                        ],
                    }
                )

            def onQueryIdle(self, event: Any) -> None:
                pass

            def onQueryTerminated(self, event: Any) -> None:
                pass

        spark.streams.addListener(Listener())


def stage_times(spark: Any) -> list[dict[str, Any]]:
    """Per stage: tasks, executor run and CPU time, shuffle read, from the Spark UI's REST API (empty when the
    UI is off)."""
    import urllib.request

    url = spark.sparkContext.uiWebUrl
    if not url:
        return []
    app = spark.sparkContext.applicationId
    with urllib.request.urlopen(f"{url}/api/v1/applications/{app}/stages?status=complete", timeout=30) as r:
        stages = json.load(r)
    keys = ("stageId", "name", "numTasks", "executorRunTime", "executorCpuTime", "shuffleReadBytes",
            "shuffleWriteBytes", "submissionTime", "completionTime")  # fmt: skip
    return [{k: s.get(k) for k in keys} for s in stages]


def step_calls(path: Path) -> dict[str, Any]:
    """The job's step calls of at least 1,000 readings after its first micro-batch (worker start-up), summed
    from the timing log: wall, thread CPU, run-queue wait (ready, no core free) and the rest (blocked: the
    store's write lock, disk, Kafka deliveries), in seconds."""
    calls = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    calls = [c for c in calls if (c.get("rows") or 0) >= 1000]
    first = min((c["start"] for c in calls), default=0.0)
    calls = [c for c in calls if c["start"] > first + 0.5]  # the first batch's calls start together
    sums = [sum(v[i] for v in c.values() if isinstance(v, list)) for c in calls for i in range(3)]
    wall, cpu, runq = (round(sum(sums[i::3]), 2) for i in range(3))
    return {"calls": len(calls), "wall_s": wall, "cpu_s": cpu, "runq_s": runq, "blocked_s": round(wall - cpu - runq, 2)}


def table(out: dict[str, Any]) -> str:
    """The two drains side by side, as a Markdown table."""
    rows = [
        ("readings/s steady", "readings_per_s_steady", "{:,.0f}"),
        ("micro-batches", "batches", "{}"),
        *((f"CPU s / 1,000: {p}", p, "{:.3f}") for p in PARTS),
        ("CPU s / 1,000: all but the broker", "cpu_s_per_1000_but_broker", "{:.3f}"),
        ("peak RSS, MB (all but the broker)", "peak_rss_mb", "{:,}"),
        ("load before → after", "load", "{0[0]} → {0[1]}"),
        ("wall, s", "wall_s", "{}"),
    ]
    lines = ["| | floor | job |", "|---|---:|---:|"]
    for label, key, fmt in rows:
        cells = []
        for q in ("floor", "job"):
            r = out[q]
            value = r["cpu_s_per_1000_by_part"][key] if key in PARTS else r[key]
            cells.append(fmt.format(value) if value is not None else "—")
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    ratio = out.get("job_over_floor")
    if ratio:
        lines.append(
            f"\njob / floor readings/s steady: {ratio['readings_per_s_steady']}; floor / job CPU per reading "
            f"(all but the broker): {ratio['cpu_floor_over_job_but_broker']}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
