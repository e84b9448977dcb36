"""What Spark itself costs here: the job's Kafka source, parse and validation with no millrace step after it.

Stages (each drains the same backlog from a fresh checkpoint; CPU per 1,000 readings is split between the
Spark JVM, its Python workers and the driver):

- ``parse``: Kafka -> parse -> validate -> step input, then only a count of the valid rows in foreachBatch
  (counting valid rows forces the JSON parsing and every check);
- ``group``: the same plus the shuffle by ``gkey`` into ``applyInPandasWithState`` with a function that
  only counts its rows and keeps a tiny state (the per-group cost without millrace's step);

So the readings/s of ``parse`` is the ceiling of any Spark job reading this topic on this machine.

    .venv/bin/python benchmarks/spark_floor.py --backlog 400000 --max-offsets 100000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from stream_throughput import _topics, cpu_by_part, produce_backlog, settings_for  # noqa: E402

from millrace.processing.job import kafka_source_options  # noqa: E402
from millrace.processing.session import build_session  # noqa: E402
from millrace.runtime.process import free_port  # noqa: E402
from millrace.runtime.stack import Stack  # noqa: E402


def count_group(key: tuple[Any, ...], batches: Iterator[pd.DataFrame], state: Any) -> Iterator[pd.DataFrame]:
    n = sum(len(b) for b in batches)
    total = (state.get[0] if state.exists else 0) + n
    state.update((total,))
    yield pd.DataFrame({"gkey": [str(key[0])], "n": [n]})


def drain(spark: Any, settings: Any, stage: str, root: Path, backlog: int, max_offsets: int) -> dict[str, Any]:
    from millrace.processing.transforms import INVALID_GROUP, bucket_labels, parse, to_step_input, validate

    source = (
        spark.readStream.format("kafka").options(**kafka_source_options(settings))
        .option("subscribe", settings.topics.readings).option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", str(max_offsets)).load()
    )  # fmt: skip
    partitions = settings.spark.shuffle_partitions
    labels = bucket_labels(spark, partitions, partitions)
    frame = to_step_input(validate(parse(source), settings.processing), labels)
    if stage == "group-noraw":
        from pyspark.sql import functions as F

        frame = frame.withColumn("raw", F.when(F.col("reason").isNull(), F.lit(None)).otherwise(F.col("raw")))
    if stage.startswith("group"):
        from pyspark.sql.streaming.state import GroupStateTimeout

        frame = frame.groupBy("gkey").applyInPandasWithState(
            count_group, outputStructType="gkey string, n long", stateStructType="total long",
            outputMode="append", timeoutConf=GroupStateTimeout.NoTimeout,
        )  # fmt: skip
    marks: list[tuple[float, int, dict[str, float]]] = []

    def on_batch(df: Any, batch_id: int) -> None:
        if stage.startswith("group"):
            n = df.agg({"n": "sum"}).collect()[0][0] or 0
        else:
            n = df.where(df.gkey != INVALID_GROUP).count()
        marks.append((time.monotonic(), int(n), cpu_by_part()))

    query = (
        frame.writeStream.foreachBatch(on_batch).option("checkpointLocation", str(root / f"ck-{stage}"))
        .trigger(processingTime="1 second").start()
    )  # fmt: skip
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
        "readings_per_s_after_first_batch": round(rows / span) if span > 0 else None,
        "cpu_s_per_1000_by_part": {k: round(1000 * (last[2][k] - first[2][k]) / rows, 3) for k in last[2]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=400_000)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--max-offsets", type=int, default=100_000)
    parser.add_argument("--stage", choices=["parse", "group", "group-noraw"], action="append")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="millrace-spark-floor-"))
    kp, cp = free_port(), free_port()
    settings = settings_for(root, kp, cp, "floor", args.max_offsets)
    stack = Stack(settings)
    stack.up()
    try:
        _topics(settings)
        produce_backlog(settings, args.backlog, args.devices)
        spark = build_session(settings, app_name="millrace-spark-floor")
        for stage in args.stage or ["parse", "group"]:
            print(json.dumps(drain(spark, settings, stage, root, args.backlog, args.max_offsets)), flush=True)
    finally:
        stack.down()


if __name__ == "__main__":
    main()
