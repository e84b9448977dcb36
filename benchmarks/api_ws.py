"""Benchmark of the millrace service: REST latency over a filled SQLite store, WebSocket fan-out rate.

    .venv/bin/python benchmarks/api_ws.py [--sensors 60] [--readings 1000] [--clients 10] [--messages 20000]

REST: p50/p95 latency of the main endpoints through a real uvicorn server (httpx, sequential requests).
WebSocket: messages published straight into the hub (no Kafka, so this measures the fan-out path alone) and
received by N clients in threads of the same process; reports delivered messages/s per client, in total,
and drops. Everything shares one Python process and its GIL, so the figures are a lower bound.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import uvicorn
from websockets.sync.client import connect

from millrace.config import load_settings
from millrace.records import SENSOR_TYPES
from millrace.runtime.process import free_port
from millrace.services.app import create_app
from millrace.stores.sqlite import SqliteStore

T0 = datetime(2026, 3, 1, tzinfo=UTC)


@contextmanager
def served(app: Any) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start within 30 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def fill(store: SqliteStore, sensors: int, readings: int) -> list[str]:
    ids = []
    rng = np.random.default_rng(1)
    for n in range(sensors):
        device, kind = f"dev-{n // 6 + 1:04d}", SENSOR_TYPES[n % 6]
        sensor_id = f"{device}-{kind}"
        ids.append(sensor_id)
        ts = pd.date_range(T0, periods=readings, freq="1s", tz="UTC")
        store.upsert_readings(
            pd.DataFrame(
                {
                    "sensor_id": sensor_id,
                    "device_id": device,
                    "sensor_type": kind,
                    "location": f"loc-{n % 4 + 1:02d}",
                    "unit": "",
                    "timestamp": ts,
                    "value": rng.normal(20, 1, readings),
                    "status": "ok",
                    "interpolated": False,
                    "score": rng.random(readings),
                    "is_anomaly": rng.random(readings) < 0.01,
                    "features": "{}",
                }
            )
        )
    store.upsert_alerts(
        [
            {
                "alert_id": f"al-{i}",
                "device_id": "dev-0001",
                "sensor_ids": [ids[i % len(ids)]],
                "kind": "spike",
                "severity": "warning",
                "score": 5.0,
                "reason": "spike",
                "location": "loc-01",
                "opened_at": T0 + timedelta(seconds=i),
                "updated_at": T0 + timedelta(seconds=i + 5),
                "closed_at": None,
                "status": "open",
                "readings": 3,
                "top_features": [],
            }
            for i in range(200)
        ]
    )
    return ids


def rest(url: str, ids: list[str], n: int) -> dict[str, tuple[float, float]]:
    paths = {
        "GET /api/sensors": "/api/sensors",
        "GET readings (100 rows)": f"/api/sensors/{ids[0]}/readings?limit=100&offset=400",
        "GET /api/alerts?severity": "/api/alerts?severity=warning&limit=50",
        "GET /api/windows": "/api/windows?limit=100",
        "GET /api/quality": "/api/quality",
    }
    out = {}
    with httpx.Client(base_url=url) as client:
        for label, path in paths.items():
            client.get(path).raise_for_status()
            took = []
            for _ in range(n):
                t0 = time.perf_counter()
                client.get(path).raise_for_status()
                took.append((time.perf_counter() - t0) * 1000)
            out[label] = (statistics.median(took), float(np.percentile(took, 95)))
    return out


def fanout(url: str, hub, clients: int, messages: int, rate: float) -> dict[str, float]:  # type: ignore[no-untyped-def]
    received = [0] * clients
    ready = threading.Barrier(clients + 1)

    def reader(i: int) -> None:
        with connect(url.replace("http", "ws") + "/ws", compression=None, max_queue=None) as ws:
            ws.send('{"subscribe": ["sensors"]}')
            ws.recv(timeout=10)
            ready.wait()
            while received[i] < messages:
                try:
                    ws.recv(timeout=5)
                except TimeoutError:
                    return  # the rest was dropped
                received[i] += 1

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    payload = {
        "sensor_id": "dev-0001-temperature",
        "timestamp": "2026-03-01T00:00:00.000Z",
        "score": 0.5,
        "is_anomaly": False,
        "anomaly_kind": None,
        "location": "loc-01",
        "sensor_type": "temperature",
    }
    dropped_before = hub.stats()["dropped_total"]
    t0 = time.perf_counter()
    for n in range(messages):
        hub.publish("sensors", payload)
        if rate and n % 100 == 99:  # pace in steps of 100 messages
            ahead = t0 + (n + 1) / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
    publish_s = time.perf_counter() - t0
    for t in threads:
        t.join(120)
    total_s = time.perf_counter() - t0
    time.sleep(0.5)  # let closed clients be counted
    dropped = hub.stats()["dropped_total"] - dropped_before
    return {
        "publish_per_s": messages / publish_s,
        "delivered_per_s_per_client": statistics.mean(received) / total_s,
        "delivered_total_per_s": sum(received) / total_s,
        "dropped": dropped,
        "received_min": min(received),
        "seconds": total_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sensors", type=int, default=60)
    ap.add_argument("--readings", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--queue-size", type=int, default=1000)
    ap.add_argument("--rates", default="0,500,2000", help="publish rates (msg/s) to try; 0 = unpaced")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "bench.db")
        t0 = time.perf_counter()
        ids = fill(store, args.sensors, args.readings)
        print(
            f"store: {args.sensors} sensors x {args.readings} readings = {args.sensors * args.readings} rows, "
            f"200 alerts (filled in {time.perf_counter() - t0:.1f} s)"
        )
        settings = load_settings(state_dir=Path(tmp), kafka={"bootstrap_servers": "127.0.0.1:1"})
        app = create_app(settings, store=store, live=False, queue_size=args.queue_size)
        with served(app) as url:
            for label, (p50, p95) in rest(url, ids, args.requests).items():
                print(f"REST {label:28s} p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  ({args.requests} requests)")
            for rate in (float(x) for x in args.rates.split(",")):
                count = args.messages if not rate else min(args.messages, int(rate * 10))
                r = fanout(url, app.state.hub, args.clients, count, rate)
                print(
                    f"WS fan-out at {'max' if not rate else f'{rate:,.0f}/s'}: {count} messages x {args.clients} "
                    f"clients in {r['seconds']:.2f} s: published {r['publish_per_s']:,.0f} msg/s; delivered "
                    f"{r['delivered_per_s_per_client']:,.0f} msg/s per client, {r['delivered_total_per_s']:,.0f} "
                    f"frames/s in total; dropped {r['dropped']:.0f} (queue {args.queue_size}), slowest client "
                    f"got {r['received_min']:.0f}"
                )
        store.close()


if __name__ == "__main__":
    main()
