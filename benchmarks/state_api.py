"""Spark's two Python stateful APIs on a count-only operator: per-micro-batch fixed cost and throughput.

The same shape as the stream job's stateful stage without Kafka or millrace's step: a ``rate-micro-batch``
source (exactly ``rows`` rows per micro-batch, so every variant sees the same input), reading-like columns
(device, sensor, value, event time), a shuffle by state bucket (2 buckets, as the job on 2 partitions) into a
stateful operator whose Python function only counts its rows and keeps the count as state. Variants:

- ``apply``: ``applyInPandasWithState`` on the default (HDFS-backed, in-memory) state store — the job's API;
- ``apply-rocksdb``: the same on the RocksDB state store provider;
- ``tws``: ``transformWithStateInPandas`` (Spark 4) with a ValueState; it requires the RocksDB provider.

For each variant and each ``--rows`` (rows per micro-batch) it runs ``--batches`` micro-batches back to back
(trigger 0) after ``--warmup`` unmeasured ones, and reports from Spark's own progress per batch: the median
``triggerExecution`` (the micro-batch's wall time: planning, the shuffle, the Python calls, the state commit),
and rows per second. With tiny batches the median is the fixed cost of a micro-batch.

    .venv/bin/python benchmarks/state_api.py [--rows 100 100000] [--batches 8] [--variant apply tws]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from millrace.config import load_settings
from millrace.jobs.session import build_session

ROCKSDB = "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
HDFS = "org.apache.spark.sql.execution.streaming.state.HDFSBackedStateStoreProvider"
VARIANTS = ("apply", "apply-rocksdb", "tws")


def count_apply(key: tuple[Any, ...], batches: Iterator[pd.DataFrame], state: Any) -> Iterator[pd.DataFrame]:
    n = sum(len(b) for b in batches)
    total = (state.get[0] if state.exists else 0) + n
    state.update((total,))
    yield pd.DataFrame({"gkey": [str(key[0])], "n": [n]})


def count_processor() -> Any:
    from pyspark.sql.streaming.stateful_processor import StatefulProcessor

    class Count(StatefulProcessor):
        def init(self, handle: Any) -> None:
            self.total = handle.getValueState("total", "total long")

        def handleInputRows(self, key: Any, rows: Any, timerValues: Any) -> Iterator[pd.DataFrame]:  # noqa: N802, N803
            n = sum(len(b) for b in rows)
            total = (self.total.get()[0] if self.total.exists() else 0) + n
            self.total.update((total,))
            yield pd.DataFrame({"gkey": [str(key[0])], "n": [n]})

        def close(self) -> None:
            pass

    return Count()


def readings(spark: Any, rows: int) -> Any:
    from pyspark.sql import functions as F

    source = (
        spark.readStream.format("rate-micro-batch")
        .option("rowsPerBatch", str(rows))
        .option("numPartitions", "2")
        .option("advanceMillisPerBatch", "1000")
        .load()
    )
    device = F.concat(F.lit("dev-"), F.lpad((F.col("value") % 20).cast("string"), 4, "0"))
    return source.select(
        F.when(F.col("value") % 20 < 10, F.lit("b0")).otherwise(F.lit("b1")).alias("gkey"),
        device.alias("device_id"),
        F.concat(device, F.lit("-"), (F.col("value") % 6).cast("string")).alias("sensor_id"),
        (F.rand(7) * 10).alias("value"),
        F.col("timestamp"),
    )


def run(spark: Any, variant: str, rows: int, batches: int, warmup: int, root: Path) -> dict[str, Any]:
    spark.conf.set("spark.sql.streaming.stateStore.providerClass", HDFS if variant == "apply" else ROCKSDB)
    grouped = readings(spark, rows).groupBy("gkey")
    if variant == "tws":
        frame = grouped.transformWithStateInPandas(
            statefulProcessor=count_processor(),
            outputStructType="gkey string, n long",
            outputMode="Update",
            timeMode="None",
        )
    else:
        from pyspark.sql.streaming.state import GroupStateTimeout

        frame = grouped.applyInPandasWithState(
            count_apply,
            outputStructType="gkey string, n long",
            stateStructType="total long",
            outputMode="update",
            timeoutConf=GroupStateTimeout.NoTimeout,
        )
    counted: list[int] = []

    def on_batch(df: Any, batch_id: int) -> None:
        counted.append(int(df.agg({"n": "sum"}).collect()[0][0] or 0))

    query = (
        frame.writeStream.foreachBatch(on_batch)
        .outputMode("update")
        .option("checkpointLocation", str(root / f"ck-{variant}-{rows}"))
        .trigger(processingTime="0 seconds")
        .start()
    )

    def measured() -> list[dict[str, Any]]:
        return [p for p in query.recentProgress if p["numInputRows"]][warmup : warmup + batches]

    deadline = time.monotonic() + 900
    while len(measured()) < batches and time.monotonic() < deadline:
        query.awaitTermination(0.2)
    progress = measured()
    query.stop()
    if not progress:
        raise SystemExit(f"{variant}: no measured micro-batch within the deadline")
    if any(n != rows for n in counted[warmup : warmup + batches]):
        raise SystemExit(f"{variant}: the operator counted {counted} rows, expected {rows} per batch")
    ms = [p["durationMs"]["triggerExecution"] for p in progress]
    total_rows = sum(p["numInputRows"] for p in progress)
    return {
        "variant": variant,
        "rows_per_batch": rows,
        "batches": len(progress),
        "batch_ms_p50": statistics.median(ms),
        "batch_ms_min": min(ms),
        "rows_per_s": round(total_rows / (sum(ms) / 1000)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100, 100_000], help="rows per micro-batch")
    ap.add_argument("--batches", type=int, default=8, help="measured micro-batches per run")
    ap.add_argument("--warmup", type=int, default=3, help="unmeasured micro-batches first")
    ap.add_argument("--variant", choices=VARIANTS, nargs="+", default=list(VARIANTS))
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="millrace-state-api-"))
    settings = load_settings(state_dir=root)
    spark = build_session(settings, app_name="millrace-state-api")
    spark.sparkContext.setLogLevel("ERROR")
    print(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load": os.getloadavg()}))
    for rows in args.rows:
        for variant in args.variant:
            print(json.dumps(run(spark, variant, rows, args.batches, args.warmup, root)), flush=True)
    print(json.dumps({"load": os.getloadavg()}))
    spark.stop()


if __name__ == "__main__":
    main()
