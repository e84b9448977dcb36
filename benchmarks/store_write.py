"""Benchmark of the store: bulk upserts of readings and windows as the streaming job sends them (new keys,
then the same keys again), and the reads the dashboard makes, for SQLite and for MongoDB.

    .venv/bin/python benchmarks/store_write.py [--backend sqlite|mongodb] [--rows 10000 40000]
        [--sensors 120] [--repeat 7] [--breakdown] [--mongodb-uri mongodb://...]
    .venv/bin/python benchmarks/store_write.py --sink [--repeat 7]

The readings frame is built the way the job's foreachBatch writer gets it: an Arrow batch in the stateful
step's output schema (8-feature JSON text per reading, a few alert rows mixed in) converted by pyspark's
own Arrow-to-pandas code (plain ``Table.to_pandas`` when pyspark is not installed), filtered to the
readings and given ``ingested_at`` as the writer does. So the store sees pandas' Arrow-backed ``str``
columns, object-dtype booleans and float-dtype Kafka offsets, not a tidy hand-made frame.

SQLite runs on a temp file. MongoDB uses ``--mongodb-uri`` when given, otherwise starts the local
MongoDB-wire server through millrace.runtime (a real mongod if installed, else FerretDB) on a free port.
Per batch size, each repeat writes a fresh batch (new keys), then the same batch again (every row an
update), into a store that keeps growing; then windows and sensor status rows. Medians over the repeats
are reported, as wall time and as the CPU time of this process (SQLite works in-process, so CPU time is
what the call costs on an idle core — the number that holds up on a shared machine), with the best
(least) CPU time of the repeats, the closest to an idle machine. The load average is printed next to them.

``--sink`` times the stream job's sink instead (jobs.sink.ReadingSink.write_readings into SQLite, its
producer a stand-in that delivers nothing), whole and by piece, on a frame the stateful step itself
produced (benchmarks/step_profile.py's step after a warm-up): the frame the sink gets in the job.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from millrace.config import TopicSettings, load_settings
from millrace.records import SENSOR_TYPES, WINDOW_COLUMNS
from millrace.runtime.mongodb import mongodb_spec
from millrace.runtime.process import ProcessManager, free_port
from millrace.stores.base import Store

T0 = datetime(2026, 3, 1, tzinfo=UTC)
STORED_FEATURES = ("dt_s", "rate", "roll_mean", "roll_std", "z", "robust_z", "dev_max_abs_z", "pair_resid_z")
ALERT_ROWS = 20  # non-reading rows of the step output mixed into every batch


def _step_output_schema() -> Any:
    from millrace.processing.schema import STEP_OUTPUT

    return STEP_OUTPUT


def job_frame(rows: int, sensors: int, start: datetime) -> pd.DataFrame:
    """``rows`` scored readings as the writer passes them to ``upsert_readings``: round-robin over
    ``sensors`` sensors, one reading per sensor per second from ``start``."""
    rng = np.random.default_rng(rows + sensors)
    idx = np.arange(rows)
    per_device = len(SENSOR_TYPES)
    sensor_ids = np.array(
        [f"dev-{s // per_device:04d}-{SENSOR_TYPES[s % per_device]}" for s in range(sensors)], dtype=object
    )
    sid = sensor_ids[idx % sensors]
    start_ms = int(start.timestamp() * 1000)
    features = pd.DataFrame(rng.normal(0.0, 1.0, (rows, len(STORED_FEATURES))).round(6), columns=list(STORED_FEATURES))
    features_json = features.to_json(orient="records", lines=True).rstrip("\n").split("\n")
    is_anomaly = rng.random(rows) < 0.01

    def pad(values: Any, fill: Any = None) -> list[Any]:
        return list(values) + [fill] * ALERT_ROWS

    columns: dict[str, Any] = {
        "out": ["reading"] * rows + ["alert"] * ALERT_ROWS,
        "sensor_id": pad(sid),
        "device_id": pad(s.rsplit("-", 1)[0] for s in sid),
        "sensor_type": pad(s.rsplit("-", 1)[1] for s in sid),
        "location": pad(np.array(["loc-01", "loc-02", "loc-03"], dtype=object)[(idx // per_device) % 3]),
        "unit": pad(["u"] * rows),
        "status": pad(["ok"] * rows),
        "timestamp": pa.array(pad((start_ms + (idx // sensors) * 1000).tolist()), pa.int64())
        .cast(pa.timestamp("ms", tz="UTC"))
        .cast(pa.timestamp("us", tz="UTC")),
        "value": pad(rng.normal(20.0, 2.0, rows).tolist()),
        "interpolated": pad([False] * rows),
        "score": pad(rng.random(rows).tolist()),
        "is_anomaly": pad(is_anomaly.tolist()),
        "anomaly_kind": pad(np.where(is_anomaly, "statistical", None).tolist()),
        "features": pad(features_json),
        "ground_truth": pad(["normal"] * rows),
        "kafka_partition": pad((idx % 3).tolist()),
        "kafka_offset": pad(idx.tolist()),
        "payload": [None] * rows + ['{"alert_id": "a"}'] * ALERT_ROWS,
    }
    try:
        schema = _step_output_schema()
        from pyspark.sql.pandas.conversion import _convert_arrow_table_to_pandas
    except ImportError:
        table = pa.table(
            {name: pa.array(values) if isinstance(values, list) else values for name, values in columns.items()}
        )
        out = table.to_pandas()
    else:
        names = [f.name for f in schema.fields]
        table = pa.table(
            [pa.array(columns[n]) if isinstance(columns[n], list) else columns[n] for n in names], names=names
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pyspark warns about pandas 3
            out = _convert_arrow_table_to_pandas(table, schema, timezone="UTC")
    readings = out[out["out"] == "reading"]
    return readings.assign(
        timestamp=pd.to_datetime(readings["timestamp"], utc=True),
        ingested_at=pd.Timestamp(time.time(), unit="s", tz="UTC"),
    )


def window_frame(rows: int, start: datetime) -> pd.DataFrame:
    """``rows`` one-minute windows (per sensor and per type x location) as finish_windows returns them."""
    rng = np.random.default_rng(rows)
    idx = np.arange(rows)
    keys = 1000
    scope = np.where(idx % keys < 900, "sensor", "type_location").astype(object)
    key = np.array([f"k-{k:04d}" for k in range(keys)], dtype=object)[idx % keys]
    window_start = pd.Timestamp(start) + pd.to_timedelta((idx // keys) * 60, unit="s")
    frame = pd.DataFrame(
        {
            "scope": scope,
            "key": key,
            "sensor_type": "temperature",
            "location": "loc-01",
            "window_start": window_start,
            "window_end": window_start + pd.Timedelta(seconds=60),
            "count": rng.integers(1, 60, rows),
            "mean": rng.normal(20, 2, rows),
            "min": rng.normal(15, 1, rows),
            "max": rng.normal(25, 1, rows),
            "stddev": rng.random(rows),
            "anomaly_count": rng.integers(0, 3, rows),
        }
    )
    return frame[list(WINDOW_COLUMNS)]


def status_rows(rows: int, at: datetime) -> list[dict[str, Any]]:
    """Sensor status rows as the writer decodes them from the step's JSON payloads (ISO time strings)."""

    def iso(t: datetime) -> str:
        return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    return [
        {
            "sensor_id": f"dev-{i // 6:04d}-{SENSOR_TYPES[i % 6]}",
            "device_id": f"dev-{i // 6:04d}",
            "sensor_type": SENSOR_TYPES[i % 6],
            "location": "loc-01",
            "last_event_time": iso(at + timedelta(seconds=i)),
            "state": "active",
            "expected_interval_s": 1.0,
            "updated_at": iso(at + timedelta(hours=1)),
        }
        for i in range(rows)
    ]


@contextmanager
def open_backend(backend: str, mongodb_uri: str | None) -> Iterator[Store]:
    with tempfile.TemporaryDirectory() as tmp:
        if backend == "sqlite":
            from millrace.stores.sqlite import SqliteStore

            store = SqliteStore(Path(tmp) / "bench.db")
            try:
                yield store
            finally:
                store.close()
            return
        from millrace.stores.mongo import MongoStore

        manager = None
        if mongodb_uri is None:
            settings = load_settings(
                state_dir=Path(tmp), store={"backend": "mongodb", "mongodb_uri": f"mongodb://127.0.0.1:{free_port()}"}
            )
            manager = ProcessManager(settings.state_dir)
            manager.start(mongodb_spec(settings))
            mongodb_uri = settings.store.mongodb_uri
        store = MongoStore(mongodb_uri, f"bench{os.getpid()}")
        try:
            yield store
        finally:
            store.drop()
            if manager is not None:
                manager.stop("mongodb")


@dataclass
class Timings:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def run(self, fn: Callable[[], Any]) -> None:
        started, started_cpu = time.perf_counter(), time.process_time()
        fn()
        self.cpu.append(time.process_time() - started_cpu)
        self.wall.append(time.perf_counter() - started)

    def line(self, name: str, rows: int) -> str:
        wall, cpu, best = statistics.median(self.wall), statistics.median(self.cpu), min(self.cpu)
        return (
            f"{name:<28} wall {wall:6.3f} s ({rows / wall:>7,.0f} rows/s)  "
            f"CPU {cpu:6.3f} s ({rows / cpu:>7,.0f} rows/s, {cpu / rows * 1e6:5.2f} ms per 1,000 rows)  "
            f"best CPU {best:6.3f} s ({rows / best:>7,.0f} rows/s)"
        )


def sqlite_breakdown(store: Any, frame: pd.DataFrame) -> tuple[float, float, float, float]:
    """CPU seconds of one SqliteStore.upsert_readings, by step: frame -> columns, the statements' parameters
    (before the write lock), the statements (binding, SQLite's b-tree work), commit (WAL write and any
    automatic checkpoint)."""
    from millrace.stores import convert
    from millrace.stores import sqlite as sqlite_store

    started = time.process_time()
    values = convert.reading_arrays(frame, sqlite=True)
    converted = time.process_time()
    conn = store._conn()
    per_statement = sqlite_store._readings_per_statement(conn)
    many, rest = sqlite_store._reading_params(values, per_statement)
    prepared = time.process_time()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(sqlite_store._readings_sql(per_statement), many)
    conn.executemany(sqlite_store.READINGS_SQL, rest)
    executed = time.process_time()
    conn.execute("COMMIT")
    return converted - started, prepared - converted, executed - prepared, time.process_time() - executed


class _SinkProducer:
    """The sink's producer, delivering nothing: the sink's own CPU is what is timed."""

    stats = SimpleNamespace(failed=0, last_error=None)

    def produce(self, topic: str, value: bytes, key: str | bytes | None = None) -> None:
        pass

    def produce_batch(self, topic: str, values: Any, keys: Any) -> int:
        return len(values)

    def flush(self, timeout_s: float = 60.0) -> int:
        return 0


def step_readings(readings: int = 50_000) -> pd.DataFrame:
    """A readings frame as the stateful step hands it to the sink: benchmarks/step_profile.py's step (20
    devices, two state buckets) warmed up with 31 minutes of readings, then one call of about ``readings``."""
    import step_profile

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(state_dir=Path(tmp))
        warm = 1_860 * 120
        bench = step_profile.Bench(settings, step_profile.readings_frame(20, 1_860 + 1_000, 5), 2)
        bench.run(bench.calls(0, warm, 50_000))
        (now_ms, buckets), *_ = bench.calls(warm, warm + 2 * readings, 2 * readings)
        key, rows = buckets[0]
        state = bench.states[key]
        state.now_ms = now_ms
        for _ in bench.step((key,), iter([rows]), state):
            pass
    return next(frame for kind, frame in bench.sink.writes if kind == "readings")


def sink_parts(store: Any, repeat: int) -> None:
    """CPU µs per reading of ReadingSink.write_readings on a SQLite store, whole and by piece, each repeat
    on new keys (the step's frame moved on in time) into a store that keeps growing."""
    from millrace.jobs.sink import ReadingSink, prediction_messages
    from millrace.processing.recommendations import load_table

    frame = step_readings()
    n = len(frame)
    span = frame["timestamp"].max() - frame["timestamp"].min() + pd.Timedelta(seconds=1)
    frames = (frame.assign(timestamp=frame["timestamp"] + span * k) for k in range(1, 2 * repeat + 11))
    for moved in itertools.islice(frames, 10):  # a store of ten calls' readings to write into
        store.upsert_readings(moved.assign(ingested_at=pd.Timestamp.now(tz="UTC")))
    sink = ReadingSink(
        store, _SinkProducer(), topics=TopicSettings(), store_backend="sqlite", recommendations=load_table(None)
    )
    times: dict[str, list[float]] = {}
    for _ in range(repeat):
        started = time.process_time()
        sink.write_readings(next(frames))
        times.setdefault("write_readings", []).append(time.process_time() - started)
        moved = next(frames)
        started = time.process_time()
        prediction_messages(moved)
        times.setdefault("  prediction_messages", []).append(time.process_time() - started)
        started = time.process_time()
        stamped = moved.assign(ingested_at=pd.Timestamp.now(tz="UTC"))
        times.setdefault("  assign ingested_at", []).append(time.process_time() - started)
        parts = sqlite_breakdown(store, stamped)
        for name, seconds in zip(("conversion", "parameters", "statements", "commit"), parts, strict=True):
            times.setdefault(f"  upsert: {name}", []).append(seconds)
    print(f"ReadingSink.write_readings, {n:,} readings of the stateful step per call, {repeat} repeats:")
    for name, seconds in times.items():
        best, median = min(seconds) / n * 1e6, statistics.median(seconds) / n * 1e6
        print(f"{name:<28} CPU per reading: best {best:5.2f} us, median {median:5.2f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "mongodb"), default="sqlite")
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 40_000])
    parser.add_argument("--sensors", type=int, default=120, help="20 devices x 6 types, as the stream benchmark")
    parser.add_argument("--windows", type=int, default=10_000, help="rows per upsert_windows batch (0: skip)")
    parser.add_argument("--status", type=int, default=1200, help="rows per upsert_sensor_status call (0: skip)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--mongodb-uri", default=None)
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="SQLite: also time conversion / parameters / statements / commit separately",
    )
    parser.add_argument(
        "--sink",
        action="store_true",
        help="SQLite, instead of the above: the job's sink (ReadingSink.write_readings) by piece, on a frame of "
        "the stateful step (after a warm-up of the step)",
    )
    args = parser.parse_args()
    if args.sink:
        if args.backend != "sqlite":
            parser.error("--sink times the SQLite store only")
        with open_backend("sqlite", None) as store:
            sink_parts(store, args.repeat)
        return

    load = os.getloadavg()
    print(f"backend {args.backend}; readings over {args.sensors} sensors, {args.repeat} repeats per size")
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs at start")
    with open_backend(args.backend, args.mongodb_uri) as store:
        day = 0
        expected = 0
        for rows in args.rows:
            inserts, updates = Timings(), Timings()
            for _ in range(args.repeat):
                frame = job_frame(rows, args.sensors, T0 + timedelta(days=day))
                day += 1
                inserts.run(lambda f=frame: store.upsert_readings(f))
                updates.run(lambda f=frame: store.upsert_readings(f))
                expected += rows
            print(inserts.line(f"readings {rows:,} (new keys)", rows))
            print(updates.line(f"readings {rows:,} (same keys)", rows))
            if args.breakdown and args.backend == "sqlite":
                steps = []
                for _ in range(args.repeat):
                    steps.append(sqlite_breakdown(store, job_frame(rows, args.sensors, T0 + timedelta(days=day))))
                    day += 1
                    expected += rows
                conv, params, execute, commit = (statistics.median(s) / rows * 1e6 for s in zip(*steps, strict=True))
                print(
                    f"{'':<28} CPU per reading, new keys: conversion {conv:.2f} us, parameters {params:.2f} us, "
                    f"statements {execute:.2f} us, commit {commit:.2f} us"
                )
        total = store.count("sensor_metrics")
        assert total == expected, (total, expected)
        if args.windows:
            w_inserts, w_updates = Timings(), Timings()
            for r in range(args.repeat):
                frame = window_frame(args.windows, T0 + timedelta(days=r))
                w_inserts.run(lambda f=frame: store.upsert_windows(f))
                w_updates.run(lambda f=frame: store.upsert_windows(f))
            print(w_inserts.line(f"windows {args.windows:,} (new keys)", args.windows))
            print(w_updates.line(f"windows {args.windows:,} (same keys)", args.windows))
        if args.status:
            s_timings = Timings()
            for r in range(args.repeat):
                rows = status_rows(args.status, T0 + timedelta(days=r))
                s_timings.run(lambda rows=rows: store.upsert_sensor_status(rows))
            print(s_timings.line(f"sensor status {args.status:,} rows", args.status))
        latest, page = Timings(), Timings()
        sensor = store.latest_readings()[0]["sensor_id"]
        for _ in range(5):
            latest.run(store.latest_readings)
            page.run(lambda: store.readings(sensor, start=T0 + timedelta(days=1), limit=500))
    load = os.getloadavg()
    print(f"{'latest_readings':<28} median {statistics.median(latest.wall) * 1000:7.1f} ms over {total:,} rows")
    print(f"{'readings page (500)':<28} median {statistics.median(page.wall) * 1000:7.1f} ms")
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the end")


if __name__ == "__main__":
    main()
