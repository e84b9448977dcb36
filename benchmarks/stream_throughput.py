"""End-to-end benchmark of `millrace iot process`: simulator -> Kafka -> Spark job -> SQLite store.

Two measurements on one local broker (free ports, 512 MB heap) and the job in this process:

1. throughput: a backlog of ``--backlog`` readings is produced first; the job drains it with micro-batches of
   up to ``--max-offsets`` records; readings/s = input records / time from the first to the last batch with
   input (Spark start-up excluded and reported separately);
2. latency: readings produced at ``--rate`` readings/s for ``--warmup`` + ``--seconds`` while the job runs
   (trigger 1 s); for each alert opened after the warm-up, the time from producing the reading that opened
   it to the alert's row appearing in the store (polled every 50 ms). Reports p50/p99.

Also reports the job's memory (RSS of this process, the Spark JVM and its Python workers).

    .venv/bin/python benchmarks/stream_throughput.py --backlog 300000 --rate 10000 --seconds 60 --json-out r.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from millrace.config import Settings, load_settings
from millrace.iot.simulator import FleetConfig, Simulator
from millrace.jobs.iot_stream import default_options, run
from millrace.jobs.writers import BatchStats
from millrace.kafka.producer import make_producer
from millrace.runtime.process import free_port
from millrace.runtime.stack import Stack
from millrace.stores.sqlite import SqliteStore


def memory_mb() -> float:
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a worker may exit while we look
            total += child.memory_info().rss
    return total / 2**20


def cpu_by_part() -> dict[str, float]:
    """CPU seconds so far of the driver (this Python process: the foreachBatch writer), the Spark JVM, the
    Python workers (the stateful step, the readings' store writes and predictions) and the Kafka broker."""
    me = psutil.Process()
    times = me.cpu_times()
    parts = {"driver": times.user + times.system, "jvm": 0.0, "python_workers": 0.0, "broker": 0.0}
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            t = child.cpu_times()
            if "java" not in child.name():
                part = "python_workers"
            else:  # the Kafka broker is a child too (the stack is started here): counted apart from the job
                part = "broker" if "kafka.Kafka" in " ".join(child.cmdline()) else "jvm"
            parts[part] += t.user + t.system
    return parts


def settings_for(
    root: Path, kafka_port: int, controller_port: int, name: str, max_offsets: int, spark: dict[str, Any] | None = None
) -> Settings:
    return load_settings(
        state_dir=root / name,
        runtime={"kafka_port": kafka_port, "controller_port": controller_port, "kafka_heap": "512m"},
        kafka={"bootstrap_servers": f"127.0.0.1:{kafka_port}"},
        topics={"readings": f"bench.{name}.readings"},
        spark={"max_offsets_per_trigger": max_offsets, "driver_memory": "2g", **(spark or {})},
    )


def produce_backlog(settings: Settings, backlog: int, devices: int, topics: Sequence[str] = ()) -> FleetConfig:
    """``backlog`` clean simulator readings on the readings topic (or on each of ``topics``: the same readings,
    generated once), delivered; returns the fleet used."""
    cfg = FleetConfig(devices=devices, interval_s=1.0, seed=5)
    producer = make_producer(settings.kafka.client_config())
    sent = 0
    for batch in Simulator(cfg, count=backlog).batches():
        for key, value in zip(batch.keys, batch.values, strict=True):
            for topic in topics or (settings.topics.readings,):
                producer.produce(topic, value, key)
        sent += len(batch)
        if sent >= backlog:
            break
    producer.flush(120)
    return cfg


def throughput(
    settings: Settings,
    backlog: int,
    devices: int,
    *,
    produced: FleetConfig | None = None,
    cpu_parts: Callable[[], dict[str, float]] = cpu_by_part,
) -> dict[str, Any]:
    """The job drains a backlog of ``backlog`` readings (produced here unless ``produced`` names the fleet of a
    backlog already on the topic); ``cpu_parts()`` reads the CPU by part after each micro-batch."""
    cfg = produced or produce_backlog(settings, backlog, devices)
    batches: list[tuple[float, BatchStats]] = []
    cpu: list[float] = []
    parts: list[dict[str, float]] = []
    peak = [0.0]

    def on_batch(stats: BatchStats) -> None:
        batches.append((time.monotonic(), stats))
        parts.append(cpu_parts())
        cpu.append(sum(v for k, v in parts[-1].items() if k != "broker"))
        peak[0] = max(peak[0], memory_mb())

    started = time.monotonic()
    result = run(settings, default_options(settings), until_idle_s=5.0, on_batch=on_batch)
    with_input = [(t, s) for t, s in batches if s.input_rows]
    first_start = with_input[0][0] - with_input[0][1].duration_s
    span = with_input[-1][0] - first_start
    steady = with_input[1:] if len(with_input) > 2 else with_input  # the first batch pays worker start-up
    steady_span = sum(s.duration_s for _, s in steady)
    # CPU per reading over the batches after the first (worker start-up excluded): holds up on a busy machine,
    # where wall-clock rates mostly measure the other tenants.
    idx = [i for i, (_, s) in enumerate(batches) if s.input_rows]
    cpu_rows = sum(batches[i][1].input_rows for i in idx[1:])
    cpu_used = cpu[idx[-1]] - cpu[idx[0]] if len(idx) > 1 else float("nan")
    cpu_parts = (
        {k: round(1000 * (parts[idx[-1]][k] - parts[idx[0]][k]) / cpu_rows, 3) for k in parts[0]} if cpu_rows else {}
    )
    stage_s = {
        "collect": round(sum(s.collect_s for _, s in steady), 1),
        "write": round(sum(s.duration_s - s.collect_s for _, s in steady), 1),
    }
    return {
        "readings": result.input_rows,
        "devices": devices,
        "sensors": cfg.sensors,
        "batches_with_input": len(with_input),
        "startup_s": round(first_start - started, 1),
        "drain_s": round(span, 2),
        "readings_per_s": round(result.input_rows / span, 0),
        # as spark_floor.drain counts it: the readings after the first batch over the time between batch ends
        "readings_per_s_after_first_batch": round(
            sum(s.input_rows for _, s in with_input[1:]) / (with_input[-1][0] - with_input[0][0])
        )
        if len(with_input) > 1
        else None,
        "steady_readings_per_s": round(sum(s.input_rows for _, s in steady) / steady_span, 0),
        "batch_s": [round(s.duration_s, 2) for _, s in with_input],
        "batch_rows": [s.input_rows for _, s in with_input],
        "peak_memory_mb": round(peak[0], 0),
        "cpu_s_per_1000_readings": round(1000 * cpu_used / cpu_rows, 3) if cpu_rows else None,
        "readings_per_cpu_s": round(cpu_rows / cpu_used, 0) if cpu_rows else None,
        "cpu_s_per_1000_by_part": cpu_parts,
        "steady_stage_s": stage_s,
    }


def live_fleet(rate: int, devices: int) -> FleetConfig:
    """A fleet whose event time advances with the wall clock when produced at ``rate`` readings/s."""
    return FleetConfig(
        devices=devices, interval_s=devices * 6 / rate, seed=9, anomaly_rate=0.02, start=datetime.now(UTC)
    )


def produce_at_rate(
    settings: Settings, cfg: FleetConfig, rate: int, seconds: float, on_sent: Callable[[str, bytes], None]
) -> int:
    """Produce the fleet's readings paced at ``rate`` per second for ``seconds``; returns how many."""
    producer = make_producer(settings.kafka.client_config(), linger_ms=5)
    t0 = time.monotonic()
    sent = 0
    for batch in Simulator(cfg, duration_s=seconds).batches():
        for key, value in zip(batch.keys, batch.values, strict=True):
            due = t0 + sent / rate
            while time.monotonic() < due:
                producer.poll(0.0005)
            producer.produce(settings.topics.readings, value, key)
            on_sent(key, value)
            sent += 1
    producer.flush(60)
    return sent


def latency(settings: Settings, rate: int, seconds: float, devices: int, warmup_s: float) -> dict[str, Any]:
    cfg = live_fleet(rate, devices)
    sensors, interval = cfg.sensors, cfg.interval_s
    produced: dict[tuple[str, str], float] = {}
    stop = threading.Event()
    job_done = threading.Event()
    batches: list[BatchStats] = []

    def job() -> None:
        try:
            run(
                settings,
                default_options(settings, starting_offsets="latest"),
                on_batch=batches.append,
                should_stop=stop.is_set,
            )
        finally:
            job_done.set()

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    while not batches:  # the query is up and has its starting offsets
        time.sleep(0.2)
    seen: dict[str, float] = {}
    watching = threading.Event()
    watching.set()
    store = SqliteStore(settings.sqlite_path)

    def watch() -> None:  # when each alert first appears in the store, while the readings are produced
        while watching.is_set():
            now = time.time()
            for alert in store.alerts(limit=100_000):
                seen.setdefault(alert["alert_id"], now)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    def sent_at(key: str, value: bytes) -> None:
        ts = value[value.find(b'"timestamp":"') + 13 :][:24].decode()
        produced[(key, ts[:23])] = time.time()

    t0 = time.monotonic()
    wall0 = time.time()
    sent = produce_at_rate(settings, cfg, rate, seconds + warmup_s, sent_at)
    produce_s = time.monotonic() - t0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the job has caught up (a batch without input)
        time.sleep(0.2)
        if batches and batches[-1].input_rows == 0 and time.monotonic() - t0 > produce_s + 2:
            break
    progress = query_progress()
    progress_p90 = query_progress(90.0)
    time.sleep(0.2)
    watching.clear()
    watcher.join(10)
    alerts = store.alerts(limit=100_000)
    store.close()
    stop.set()
    job_done.wait(60)
    lat = []
    for alert in alerts:
        opened = alert["opened_at"]
        key_ts = opened.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:23]
        times = [produced[(sid, key_ts)] for sid in alert["sensor_ids"] if (sid, key_ts) in produced]
        # Only alerts opened after the warm-up (Python workers started, JIT warm, start-up backlog drained).
        if times and alert["alert_id"] in seen and min(times) >= wall0 + warmup_s:
            lat.append(seen[alert["alert_id"]] - min(times))
    arr = np.array(lat) if lat else np.array([np.nan])
    stored = stored_latency(settings, produced, wall0 + warmup_s)
    return {
        "rate_target": rate,
        "warmup_s": warmup_s,
        "measured_s": seconds,
        "rate_achieved": round(sent / produce_s, 0),
        "sensors": sensors,
        "interval_s": round(interval, 4),
        "alerts_measured": len(lat),
        "latency_p50_s": round(float(np.nanpercentile(arr, 50)), 2),
        "latency_p99_s": round(float(np.nanpercentile(arr, 99)), 2),
        "latency_max_s": round(float(np.nanmax(arr)), 2),
        "readings_measured": int(stored.size),
        "reading_latency_p50_s": round(float(np.percentile(stored, 50)), 2) if stored.size else None,
        "reading_latency_p99_s": round(float(np.percentile(stored, 99)), 2) if stored.size else None,
        "batch_s_p50": round(float(np.median([b.duration_s for b in batches if b.input_rows] or [np.nan])), 2),
        "batches": [(b.input_rows, round(b.collect_s, 2), round(b.duration_s, 2)) for b in batches],
        "batch_parts_ms_p50": progress,
        "batch_parts_ms_p90": progress_p90,
    }


def stored_latency(settings: Settings, produced: dict[tuple[str, str], float], since: float) -> np.ndarray:
    """Seconds from producing each reading (produced at or after ``since``) to the executor writing it to the
    store (its ``ingested_at``, taken as the write starts): every reading, not only the few that open alerts."""
    import sqlite3

    import pandas as pd

    with contextlib.closing(sqlite3.connect(settings.sqlite_path)) as conn:
        rows = conn.execute("SELECT sensor_id, timestamp, ingested_at FROM sensor_metrics WHERE interpolated = 0")
        stored = pd.DataFrame(rows.fetchall(), columns=["sensor_id", "ts", "ingested_ms"])
    keys = list(produced)
    times = pd.to_datetime([k[1] for k in keys], format="%Y-%m-%dT%H:%M:%S.%f", utc=True)
    sent = pd.DataFrame(
        {
            "sensor_id": [k[0] for k in keys],
            "ts": times.to_numpy(dtype="datetime64[ms]").astype("int64"),
            "produced_s": list(produced.values()),
        }
    )
    both = sent[sent["produced_s"] >= since].merge(stored, on=["sensor_id", "ts"])
    return (both["ingested_ms"] / 1000 - both["produced_s"]).to_numpy()


PROGRESS_PARTS = ("triggerExecution", "queryPlanning", "latestOffset", "walCommit", "addBatch", "commitOffsets")
STATE_PARTS = ("allUpdatesTimeMs", "allRemovalsTimeMs", "commitTimeMs")


def query_progress(percentile: float = 50.0) -> dict[str, float]:
    """Milliseconds per part of the running query's recent micro-batches with input (Spark's own query
    progress), at ``percentile`` over the batches (the median by default): where a batch's time goes."""
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()
    recent = [p for q in spark.streams.active for p in q.recentProgress if p.numInputRows]
    parts: dict[str, list[float]] = {}
    for p in recent[len(recent) // 3 :]:  # the later two thirds: after start-up
        for key in PROGRESS_PARTS:
            parts.setdefault(key, []).append(p.durationMs.get(key, 0))
        for op in p.stateOperators:
            for key in STATE_PARTS:
                parts.setdefault(f"state.{key}", []).append(getattr(op, key, 0) or 0)
        parts.setdefault("rows", []).append(p.numInputRows)
    return {k: float(np.percentile(v, percentile)) for k, v in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=300_000)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--max-offsets", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured production after the warm-up")
    parser.add_argument("--warmup", type=float, default=30.0, help="production at the rate before measuring")
    parser.add_argument("--skip", choices=["throughput", "latency"], action="append", default=[])
    parser.add_argument("--trigger", type=float, default=None, help="micro-batch trigger in seconds (0 = back to back)")
    parser.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark property")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="millrace-stream-bench-"))
    kp, cp = free_port(), free_port()
    spark: dict[str, Any] = {"conf": dict(kv.split("=", 1) for kv in args.spark_conf)}
    if args.trigger is not None:
        spark["trigger_seconds"] = args.trigger
    base = settings_for(root, kp, cp, "stack", args.max_offsets)
    stack = Stack(base)
    stack.up()
    out: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": psutil.cpu_count(),
        "load_avg_start": [round(x, 1) for x in psutil.getloadavg()],
    }
    try:
        if "throughput" not in args.skip:
            s = settings_for(root, kp, cp, "throughput", args.max_offsets, spark)
            _topics(s)
            out["throughput"] = throughput(s, args.backlog, args.devices)
            print(json.dumps(out["throughput"]), flush=True)
        if "latency" not in args.skip:
            s = settings_for(root, kp, cp, "latency", args.max_offsets, spark)
            _topics(s)
            out["latency"] = latency(s, args.rate, args.seconds, args.devices, args.warmup)
            print(json.dumps(out["latency"]), flush=True)
    finally:
        out["load_avg_end"] = [round(x, 1) for x in psutil.getloadavg()]
        stack.down()
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


def _topics(settings: Settings) -> None:
    from millrace.kafka.admin import apply_topics
    from millrace.kafka.topics import declared_topics

    apply_topics(settings.kafka.client_config(), declared_topics(settings.topics))


if __name__ == "__main__":
    main()
