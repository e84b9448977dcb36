"""Benchmark of the store: bulk upserts of readings (new keys, then the same keys again) and the reads the
dashboard makes, for SQLite and for MongoDB.

    .venv/bin/python benchmarks/store_write.py [--backend sqlite|mongodb] [--rows 50000] [--sensors 60]
        [--repeat 5] [--mongodb-uri mongodb://...]

SQLite runs on a temp file. MongoDB uses ``--mongodb-uri`` when given, otherwise starts the local
MongoDB-wire server through millrace.runtime (a real mongod if installed, else FerretDB) on a free port.
Each repeat writes a fresh batch of ``--rows`` readings (new keys), then the same batch again (every row an
update), into a store that keeps growing; the median and the best of the repeats are reported. The load
average is printed because the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from millrace.config import load_settings
from millrace.records import SENSOR_TYPES
from millrace.runtime.mongodb import mongodb_spec
from millrace.runtime.process import ProcessManager, free_port
from millrace.stores.base import Store

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def batch(rows: int, sensors: int, start: datetime) -> pd.DataFrame:
    """``rows`` enriched readings, round-robin over ``sensors`` sensors, one per sensor per second."""
    rng = np.random.default_rng(rows + sensors)
    idx = np.arange(rows)
    devices = [f"dev-{d:04d}" for d in range(sensors // len(SENSOR_TYPES) + 1)]
    sensor_ids = [f"{devices[s // len(SENSOR_TYPES)]}-{SENSOR_TYPES[s % len(SENSOR_TYPES)]}" for s in range(sensors)]
    sid = np.array(sensor_ids, dtype=object)[idx % sensors]
    return pd.DataFrame(
        {
            "sensor_id": sid,
            "device_id": [s.rsplit("-", 1)[0] for s in sid],
            "sensor_type": [s.rsplit("-", 1)[1] for s in sid],
            "location": np.array(["loc-01", "loc-02", "loc-03"], dtype=object)[idx % 3],
            "unit": "u",
            "timestamp": pd.Timestamp(start) + pd.to_timedelta(idx // sensors, unit="s"),
            "value": rng.normal(20.0, 2.0, rows),
            "status": "ok",
            "interpolated": False,
            "score": rng.random(rows),
            "is_anomaly": rng.random(rows) < 0.01,
            "anomaly_kind": None,
            "features": '{"rolling_mean": 20.1, "robust_z": 0.3}',
            "ground_truth": "normal",
            "kafka_partition": idx % 3,
            "kafka_offset": idx,
            "ingested_at": pd.Timestamp.now(tz="UTC"),
        }
    )


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


def timed(fn: Callable[[], Any], cpu: list[float] | None = None) -> float:
    """Wall time of ``fn``; its CPU time in this process is appended to ``cpu`` (for a shared machine, CPU
    time is what the call would take on an idle core: SQLite works in-process)."""
    started, started_cpu = time.perf_counter(), time.process_time()
    fn()
    if cpu is not None:
        cpu.append(time.process_time() - started_cpu)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "mongodb"), default="sqlite")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--sensors", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--mongodb-uri", default=None)
    args = parser.parse_args()

    inserts: list[float] = []
    updates: list[float] = []
    inserts_cpu: list[float] = []
    updates_cpu: list[float] = []
    with open_backend(args.backend, args.mongodb_uri) as store:
        for r in range(args.repeat):
            frame = batch(args.rows, args.sensors, T0 + timedelta(days=r))
            inserts.append(timed(lambda f=frame: store.upsert_readings(f), inserts_cpu))
            updates.append(timed(lambda f=frame: store.upsert_readings(f), updates_cpu))
        total = store.count("sensor_metrics")
        assert total == args.rows * args.repeat, (total, args.rows * args.repeat)
        sensor = store.latest_readings()[0]["sensor_id"]
        latest = [timed(store.latest_readings) for _ in range(5)]
        page = [timed(lambda: store.readings(sensor, start=T0 + timedelta(days=1), limit=500)) for _ in range(5)]

    def line(name: str, values: list[float], cpu: list[float], rows: int) -> str:
        med, best, med_cpu = statistics.median(values), min(values), statistics.median(cpu)
        return (
            f"{name:<22} median {med:7.3f} s ({rows / med:>9,.0f} rows/s)   best {best:7.3f} s   "
            f"client CPU median {med_cpu:6.3f} s"
        )

    load = os.getloadavg()
    print(f"backend {args.backend}; {args.rows:,} readings x {args.repeat} batches over {args.sensors} sensors")
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs")
    print(line("upsert (new keys)", inserts, inserts_cpu, args.rows))
    print(line("upsert (same keys)", updates, updates_cpu, args.rows))
    print(f"{'latest_readings':<22} median {statistics.median(latest) * 1000:7.1f} ms over {total:,} stored rows")
    print(f"{'readings page (500)':<22} median {statistics.median(page) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
