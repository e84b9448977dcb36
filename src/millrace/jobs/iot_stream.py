"""The streaming query graph of ``millrace iot process``: Kafka -> parse/validate -> stateful step per bucket of
devices (dedup, lateness, gaps, features, scoring, episodes; alerts and readings written by its sink,
jobs.sink, in the executors) -> foreachBatch writer (windows, status, quality, dead letters: store + Kafka)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from millrace import telemetry
from millrace.config import KafkaSettings, Settings
from millrace.jobs.progress import ProgressOffsets, progress_offsets
from millrace.jobs.retention import start_retention
from millrace.jobs.session import checkpoint_dir
from millrace.jobs.writers import BatchStats, BatchWriter
from millrace.ml.follow import load_scorer
from millrace.telemetry import MetricsServer

log = logging.getLogger(__name__)

QUERY_NAME = "iot-process"
INITIALIZING = "Initializing sources"  # a streaming query's status message until its first trigger


@dataclass(frozen=True)
class JobOptions:
    checkpoint: Path
    starting_offsets: str = "earliest"  # used only when the checkpoint is new
    trigger_s: float = 1.0
    max_offsets_per_trigger: int = 200_000
    topic: str | None = None  # default settings.topics.readings
    scorer_factory: Callable[[Settings], Any] = load_scorer  # follows the promoted model (tests swap it)


def default_options(settings: Settings, **overrides: Any) -> JobOptions:
    base: dict[str, Any] = {
        "checkpoint": checkpoint_dir(settings.state_dir, QUERY_NAME),
        "trigger_s": settings.spark.trigger_seconds,
        "max_offsets_per_trigger": settings.spark.max_offsets_per_trigger,
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    return JobOptions(**base)


def kafka_source_options(kafka: KafkaSettings) -> dict[str, str]:
    """Spark Kafka source options (``kafka.*``) equivalent to the librdkafka settings of millrace clients
    (TLS truststore and SASL login included: the job works against a secured cluster by settings alone)."""
    from millrace.kafka.client_config import java_client_config

    return {f"kafka.{key}": value for key, value in java_client_config(kafka).items()}


def bucket_labels(spark: Any, buckets: int, partitions: int) -> list[str]:
    """Group keys for ``buckets`` state buckets that fall into distinct shuffle partitions (as far as there are
    partitions), so that the buckets' Python calls run in parallel. Spark places a group key in partition
    ``pmod(hash(key), partitions)`` — the same Murmur3 hash as SQL ``hash()`` — so this asks Spark itself (one
    small job on ``spark``)."""
    rows = (
        spark.range(0, 64 * buckets)
        .selectExpr(
            "concat('b', cast(id AS string)) AS label",
            f"pmod(hash(concat('b', cast(id AS string))), {partitions}) AS p",
        )
        .collect()
    )
    free: dict[int, list[str]] = {}
    for row in rows:
        free.setdefault(int(row["p"]), []).append(str(row["label"]))
    labels = []
    for i in range(buckets):
        wanted = free.get(i % partitions) or next(v for v in free.values() if v)
        labels.append(wanted.pop(0))
    return labels


def start_query(spark: Any, settings: Settings, options: JobOptions, writer: Callable[[Any, int], None]) -> Any:
    """Build and start the streaming query; returns the StreamingQuery."""
    from pyspark.sql.streaming.state import GroupStateTimeout

    from millrace.processing.schema import STEP_OUTPUT, STEP_STATE
    from millrace.processing.stateful import make_step
    from millrace.processing.transforms import parse, to_step_input, validate

    topic = options.topic or settings.topics.readings
    reader = (
        spark.readStream.format("kafka")
        .options(**kafka_source_options(settings.kafka))
        .option("subscribe", topic)
        .option("startingOffsets", options.starting_offsets)
        .option("maxOffsetsPerTrigger", str(options.max_offsets_per_trigger))
        # Records deleted by retention before the job read them are reported by Spark, not fatal.
        .option("failOnDataLoss", "false")
    )
    partitions = settings.spark.shuffle_partitions
    labels = bucket_labels(spark, settings.spark.state_buckets or partitions, partitions)
    steps = to_step_input(validate(parse(reader.load()), settings.processing), labels)
    # Shipped to the Python workers by pickle as a reference to this module path (jobs.sink.worker_sink).
    from millrace.jobs.sink import worker_sink

    out = steps.groupBy("gkey").applyInPandasWithState(
        make_step(
            settings,
            source_topic=topic,
            scorer_factory=options.scorer_factory,
            sink_factory=worker_sink,
            freeze_gc=True,  # a Spark Python worker runs nothing else
        ),
        outputStructType=STEP_OUTPUT,
        stateStructType=STEP_STATE,
        outputMode="append",
        timeoutConf=GroupStateTimeout.ProcessingTimeTimeout,
    )
    options.checkpoint.mkdir(parents=True, exist_ok=True)
    return (
        out.writeStream.queryName(QUERY_NAME)
        .foreachBatch(writer)
        .option("checkpointLocation", str(options.checkpoint / "query"))
        .trigger(processingTime=f"{options.trigger_s} seconds")
        .start()
    )


def make_writer(
    settings: Settings, options: JobOptions, on_batch: Callable[[BatchStats], None] | None = None
) -> BatchWriter:
    """The job's foreachBatch writer on its own store connection and producer."""
    from millrace.kafka.producer import make_producer
    from millrace.processing.recommendations import load_table
    from millrace.stores.factory import open_store

    # The executors' sinks read the recommendations table too; a bad user file fails here, at start, with one
    # line naming the key (exit 2), rather than in a Spark worker — and before anything is opened.
    load_table(settings.processing.recommendations_file)
    k = settings.kafka
    producer = make_producer(
        k.client_config(), compression=k.compression, linger_ms=k.linger_ms, batch_size=k.batch_size
    )
    return BatchWriter(
        open_store(settings),
        producer,
        processing=settings.processing,
        topics=settings.topics,
        store_backend=settings.store.backend,
        ledger_path=options.checkpoint / "windows.db",
        on_batch=on_batch,
    )


def stop_gracefully(query: Any, writer: BatchWriter, timeout_s: float = 15.0) -> None:
    """Stop at a micro-batch boundary when one comes within ``timeout_s`` (stopping inside a batch is safe
    too: the batch is replayed from the checkpoint next time)."""
    if query.isActive and query.status.get("isTriggerActive"):
        done = writer.batches
        deadline = time.monotonic() + timeout_s
        while query.isActive and writer.batches == done and time.monotonic() < deadline:
            try:
                query.awaitTermination(0.1)
            except Exception:  # it failed meanwhile: stop() below still cleans up
                break
    query.stop()


@dataclass
class RunResult:
    batches: int
    input_rows: int
    restarts: int
    elapsed_s: float


def run(
    settings: Settings,
    options: JobOptions,
    *,
    master: str | None = None,
    duration_s: float | None = None,
    until_idle_s: float | None = None,
    on_batch: Callable[[BatchStats], None] | None = None,
    max_restarts: int = 5,
    should_stop: Callable[[], bool] = lambda: False,
) -> RunResult:
    """Run the job until ``duration_s`` passes, no input arrived for ``until_idle_s`` (after at least one
    batch), ``should_stop()`` turns true, or forever. A query that fails (a broker restart outlasting the
    client retries, say) is restarted from its checkpoint up to ``max_restarts`` times in a row."""
    from millrace.errors import MillraceError
    from millrace.jobs.session import build_session

    spark = build_session(settings, master=master, app_name="millrace-iot-process")
    if should_stop():  # stopped while the JVM started: nothing to clean up
        return RunResult(0, 0, 0, 0.0)
    batches = 0

    def counted(stats: BatchStats) -> None:
        nonlocal batches
        batches += 1
        if on_batch is not None:
            on_batch(stats)

    writer = make_writer(settings, options, counted)
    progress = progress_offsets(settings.kafka, settings.spark.consumer_group)
    retention = start_retention(settings)  # deletes expired rows every store.retention_interval_s
    started = time.monotonic()
    restarts = failures = 0
    metrics = None
    try:
        metrics = start_metrics(settings, spark)
        while not should_stop():
            query = start_query(spark, settings, options, writer)
            reason = _watch(query, writer, started, duration_s, until_idle_s, should_stop, progress)
            if reason != "failed" or should_stop():  # Ctrl-C also reaches the JVM: no restart then
                with contextlib.suppress(Exception):
                    stop_gracefully(query, writer)
                if progress is not None:
                    progress.finish(query)
                break
            error = query.exception()
            failures += 1
            if failures > max_restarts:
                raise MillraceError(f"the streaming query failed {failures} times in a row; last error: {error}")
            restarts += 1
            log.warning("streaming query failed (%s); restarting from the checkpoint", str(error).splitlines()[0])
            time.sleep(min(2.0 * failures, 10.0))  # back off before reconnecting to the broker
            if writer.last is not None and writer.last.input_rows:
                failures = 0
    finally:
        writer.close()
        if retention is not None:
            retention.stop()
        if metrics is not None:
            stop_metrics(metrics, spark)
    return RunResult(batches, writer.total_input, restarts, time.monotonic() - started)


def start_metrics(settings: Settings, spark: Any) -> MetricsServer | None:
    """The driver's metrics endpoint (component ``stream``, docs/metrics.md). The Python workers store and
    produce too: they record into the endpoint's multiprocess directory, handed to them as
    PROMETHEUS_MULTIPROC_DIR through the SparkContext's executor environment (Spark starts a worker daemon per
    distinct environment, so a run's workers never write into another run's directory)."""
    environment = spark.sparkContext.environment
    environment.pop(telemetry.MULTIPROC_ENV, None)
    if not settings.metrics.enabled:
        return None
    m = settings.metrics
    server = telemetry.serve_metrics("stream", settings.state_dir, m.stream_port, host=m.host, multiprocess=True)
    environment[telemetry.MULTIPROC_ENV] = str(server.multiproc_dir)
    return server


def stop_metrics(server: MetricsServer, spark: Any) -> None:
    with contextlib.suppress(Exception):  # the session may be gone already
        spark.sparkContext.environment.pop(telemetry.MULTIPROC_ENV, None)
    server.close()


def _watch(
    query: Any,
    writer: BatchWriter,
    started: float,
    duration_s: float | None,
    until_idle_s: float | None,
    should_stop: Callable[[], bool],
    progress: ProgressOffsets | None = None,
) -> str:
    watching = time.monotonic()
    while True:
        try:
            if query.awaitTermination(0.5):
                return "finished"
        except Exception:  # StreamingQueryException: the query died; its checkpoint is intact
            return "failed"
        if progress is not None:  # the offsets of the batches Spark committed since the last look
            progress.poll(query)
        if not query.isActive:
            return "failed" if query.exception() is not None else "finished"
        if query.exception() is not None:
            return "failed"
        now = time.monotonic()
        if should_stop():
            return "stopped"
        if duration_s is not None and now - started >= duration_s:
            return "duration"
        if until_idle_s is not None and _idle(writer, now, until_idle_s, watching, lambda: query.status):
            return "idle"


def _idle(writer: BatchWriter, now: float, idle_s: float, since: float, status: Callable[[], dict[str, Any]]) -> bool:
    """No input for ``idle_s`` seconds, counted from the last input or, when there was none, from ``since``
    (the query's start: a restarted job with nothing left to read stops too); the latest micro-batch, if
    any, had no input; and the query is neither starting nor inside a micro-batch (a slow batch or a slow
    start does not count as idle). ``status`` is the query's status, asked only when the rest holds."""
    last = writer.last
    if now - max(since, writer.last_input_at) < idle_s or (last is not None and last.input_rows > 0):
        return False
    current = status()
    return not (
        current.get("isTriggerActive") or current.get("isDataAvailable") or current.get("message") == INITIALIZING
    )
