"""What Spark itself costs here: the job's Kafka source, parse and validation with no millrace step after it.

Stages (each drains the same backlog from a fresh checkpoint; CPU per 1,000 readings is split between the
Spark JVM, its Python workers and the driver):

- ``parse``: Kafka -> parse -> validate -> step input, then only a count of the valid rows in foreachBatch
  (counting valid rows forces the JSON parsing and every check);
- ``group``: the same plus the shuffle by ``gkey`` into ``applyInPandasWithState`` with a function that
  only counts its rows and keeps a tiny state (the per-group cost without millrace's step);

So the readings/s of ``parse`` is the ceiling of any Spark job reading this topic on this machine.

With ``--rate R`` it measures latency instead: the simulator produces R readings/s (event time = wall clock)
for ``--warmup`` + ``--seconds`` while the ``group`` query runs; each reading's latency is the time from its
production to the end of the micro-batch that carried it through the stateful operator to the driver — the
least any Spark job with a Python stateful step can add here, before computing anything.

    .venv/bin/python benchmarks/spark_floor.py --backlog 400000 --max-offsets 100000
    .venv/bin/python benchmarks/spark_floor.py --rate 10000 --seconds 60 --warmup 60 [--trigger 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from stream_throughput import (  # noqa: E402
    _topics,
    cpu_by_part,
    live_fleet,
    produce_at_rate,
    produce_backlog,
    query_progress,
    settings_for,
)

from millrace.jobs.iot_stream import bucket_labels, kafka_source_options  # noqa: E402
from millrace.jobs.session import build_session  # noqa: E402
from millrace.runtime.process import free_port  # noqa: E402
from millrace.runtime.stack import Stack  # noqa: E402

HIST_MS = 10  # event times are binned to 10 ms for the latency digest


def count_group(key: tuple[Any, ...], batches: Iterator[pd.DataFrame], state: Any) -> Iterator[pd.DataFrame]:
    """Counts the rows and keeps a tiny state; also returns the batch's event times as a 10 ms histogram."""
    frames = list(batches)
    n = sum(len(b) for b in frames)
    total = (state.get[0] if state.exists else 0) + n
    state.update((total,))
    ms = np.concatenate([b["timestamp"].to_numpy("datetime64[ms]").astype(np.int64) for b in frames]) if n else []
    bins, counts = np.unique(np.asarray(ms, dtype=np.int64) // HIST_MS, return_counts=True)
    yield pd.DataFrame({"gkey": [str(key[0])], "n": [n], "bins": [bins.tolist()], "counts": [counts.tolist()]})


def group_frame(spark: Any, settings: Any, starting: str, max_offsets: int) -> Any:
    """The job's own Kafka source, parse, validation and shuffle into a counting ``applyInPandasWithState``."""
    from pyspark.sql.streaming.state import GroupStateTimeout

    from millrace.processing.transforms import parse, to_step_input, validate

    source = (
        spark.readStream.format("kafka")
        .options(**kafka_source_options(settings.kafka))
        .option("subscribe", settings.topics.readings)
        .option("startingOffsets", starting)
        .option("maxOffsetsPerTrigger", str(max_offsets))
        .load()
    )
    partitions = settings.spark.shuffle_partitions
    labels = bucket_labels(spark, partitions, partitions)
    return (
        to_step_input(validate(parse(source), settings.processing), labels)
        .groupBy("gkey")
        .applyInPandasWithState(
            count_group,
            outputStructType="gkey string, n long, bins array<long>, counts array<long>",
            stateStructType="total long",
            outputMode="append",
            timeoutConf=GroupStateTimeout.NoTimeout,
        )
    )


def drain(
    spark: Any,
    settings: Any,
    stage: str,
    root: Path,
    backlog: int,
    max_offsets: int,
    cpu: Callable[[], dict[str, float]] = cpu_by_part,
) -> dict[str, Any]:
    """Drain ``backlog`` valid readings from the readings topic with the ``stage`` query; CPU by part is read
    with ``cpu()`` after each micro-batch."""
    from millrace.processing.transforms import INVALID_GROUP, parse, to_step_input, validate

    if stage == "group":
        frame = group_frame(spark, settings, "earliest", max_offsets)
    else:
        source = (
            spark.readStream.format("kafka")
            .options(**kafka_source_options(settings.kafka))
            .option("subscribe", settings.topics.readings)
            .option("startingOffsets", "earliest")
            .option("maxOffsetsPerTrigger", str(max_offsets))
            .load()
        )
        partitions = settings.spark.shuffle_partitions
        labels = bucket_labels(spark, partitions, partitions)
        frame = to_step_input(validate(parse(source), settings.processing), labels)
    if stage == "group-noraw":
        from pyspark.sql import functions as F
        from pyspark.sql.streaming.state import GroupStateTimeout

        frame = frame.withColumn("raw", F.when(F.col("reason").isNull(), F.lit(None)).otherwise(F.col("raw")))
        frame = frame.groupBy("gkey").applyInPandasWithState(
            count_group,
            outputStructType="gkey string, n long, bins array<long>, counts array<long>",
            stateStructType="total long",
            outputMode="append",
            timeoutConf=GroupStateTimeout.NoTimeout,
        )
    marks: list[tuple[float, int, dict[str, float]]] = []

    def on_batch(df: Any, batch_id: int) -> None:
        if stage.startswith("group"):
            n = df.agg({"n": "sum"}).collect()[0][0] or 0
        else:
            n = df.where(df.gkey != INVALID_GROUP).count()
        marks.append((time.monotonic(), int(n), cpu()))

    query = (
        frame.writeStream.foreachBatch(on_batch)
        .option("checkpointLocation", str(root / f"ck-{stage}"))
        .trigger(processingTime="1 second")
        .start()
    )
    deadline = time.monotonic() + 1800
    while sum(n for _, n, _ in marks) < backlog and time.monotonic() < deadline:
        query.awaitTermination(0.5)
    query.stop()
    with_input = [m for m in marks if m[1]]
    first, last = with_input[0], with_input[-1]
    rows = sum(n for _, n, _ in with_input[1:])  # the first batch pays JIT and worker start-up
    span = last[0] - first[0]
    return {
        "stage": stage,
        "readings": sum(n for _, n, _ in with_input),
        "batches": len(with_input),
        "batch_rows": [n for _, n, _ in with_input],
        "readings_per_s_after_first_batch": round(rows / span) if span > 0 else None,
        "cpu_s_per_1000_by_part": {k: round(1000 * (last[2][k] - first[2][k]) / rows, 3) for k in last[2]},
    }


def latency(spark: Any, settings: Any, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Per-reading latency of the ``group`` query while readings are produced at ``args.rate``."""
    frame = group_frame(spark, settings, "latest", args.max_offsets)
    hist: dict[int, int] = {}  # latency in 10 ms units -> readings
    measure_from = [float("inf")]
    batches: list[int] = []

    def on_batch(df: Any, batch_id: int) -> None:
        rows = df.collect()
        end_ms = time.time() * 1000
        for row in rows:
            for b, c in zip(row["bins"], row["counts"], strict=True):
                if b * HIST_MS >= measure_from[0]:
                    lat = int((end_ms - b * HIST_MS) // HIST_MS)
                    hist[lat] = hist.get(lat, 0) + c
        batches.append(sum(r["n"] for r in rows))

    query = (
        frame.writeStream.foreachBatch(on_batch)
        .option("checkpointLocation", str(root / "ck-latency"))
        .trigger(processingTime=f"{args.trigger} seconds")
        .start()
    )
    deadline = time.monotonic() + 120
    while not batches and time.monotonic() < deadline:  # started, with its starting offsets
        query.awaitTermination(0.2)
    measure_from[0] = (time.time() + args.warmup) * 1000
    sent = produce_at_rate(
        settings, live_fleet(args.rate, args.devices), args.rate, args.warmup + args.seconds, lambda key, value: None
    )
    done = len(batches)
    deadline = time.monotonic() + 60
    while (len(batches) <= done or batches[-1]) and time.monotonic() < deadline:  # caught up: a batch without input
        query.awaitTermination(0.2)
    parts = query_progress()
    parts_p90 = query_progress(90.0)
    query.stop()
    lat = np.repeat(np.array(sorted(hist), dtype=float) * HIST_MS / 1000, [hist[k] for k in sorted(hist)])
    return {
        "rate": args.rate,
        "trigger_s": args.trigger,
        "sent": sent,
        "readings_measured": int(lat.size),
        "latency_p50_s": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
        "latency_p99_s": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
        "latency_max_s": round(float(lat.max()), 2) if lat.size else None,
        "batch_parts_ms_p50": parts,
        "batch_parts_ms_p90": parts_p90,
        "batch_rows": batches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=400_000)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--max-offsets", type=int, default=100_000)
    parser.add_argument("--stage", choices=["parse", "group", "group-noraw"], action="append")
    parser.add_argument("--rate", type=int, help="measure latency at this many readings/s instead of draining")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured production after the warm-up")
    parser.add_argument("--warmup", type=float, default=60.0)
    parser.add_argument("--trigger", type=float, default=1.0, help="micro-batch trigger in seconds (0 = back to back)")
    parser.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark property")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="millrace-spark-floor-"))
    kp, cp = free_port(), free_port()
    spark_conf = {"conf": dict(kv.split("=", 1) for kv in args.spark_conf)}
    settings = settings_for(root, kp, cp, "floor", args.max_offsets, spark_conf)
    stack = Stack(settings)
    stack.up()
    try:
        _topics(settings)
        if args.rate:
            spark = build_session(settings, app_name="millrace-spark-floor")
            print(json.dumps(latency(spark, settings, root, args)), flush=True)
            return
        produce_backlog(settings, args.backlog, args.devices)
        spark = build_session(settings, app_name="millrace-spark-floor")
        for stage in args.stage or ["parse", "group"]:
            print(json.dumps(drain(spark, settings, stage, root, args.backlog, args.max_offsets)), flush=True)
    finally:
        stack.down()


if __name__ == "__main__":
    main()
