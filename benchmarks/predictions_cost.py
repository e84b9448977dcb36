"""What the predictions topic costs, per 1,000 readings, in the broker, the job's Python worker and the API.

The job's sink (jobs.sink.ReadingSink) sends each call's predictions to the predictions topic; the API's live
feed (services.feed) consumes them and publishes one event per reading on the WebSocket ``sensors`` channel.
This drives the real sink against one local broker (free ports, through millrace.runtime) and the real service
(uvicorn, one WebSocket client subscribed to ``sensors``, reading everything), with the two ways of packing:

- ``per-reading``: one JSON message per reading (how the sink produced them before, kept here to compare);
- ``per-sensor``: jobs.sink.prediction_messages, one message per sensor and call, its predictions as arrays.

Rounds alternate between the two (``--rounds`` each, interleaved, so both see the same load). A round: a worker
process (a Spark Python worker's part: the sink, with a store that keeps nothing — the store's cost does not
depend on the packing) writes ``--readings`` readings of ``--devices`` devices (6 sensors each) in calls of
``--per-call`` readings; the round ends when the API has published every reading's event. CPU seconds of the
worker (its whole process, librdkafka's threads included, from its first call to its last delivery), of the
broker and of the API process from the worker's first call until the API published the last event, per 1,000
readings; the load average around each round.

    .venv/bin/python benchmarks/predictions_cost.py --readings 100000 --rounds 2 --json-out preds.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import psutil

from millrace.config import Settings, load_settings
from millrace.runtime.process import free_port
from millrace.runtime.stack import Stack

MODES = ("per-reading", "per-sensor")
TYPES = ("temperature", "humidity", "pressure", "vibration", "voltage", "current")


def settings_for(root: Path, kafka_port: int, controller_port: int) -> Settings:
    return load_settings(
        state_dir=root,
        runtime={"kafka_port": kafka_port, "controller_port": controller_port, "kafka_heap": "512m"},
        kafka={"bootstrap_servers": f"127.0.0.1:{kafka_port}"},
        api={"auth": "none"},
        metrics={"enabled": False},
    )


def per_reading_messages(readings: pd.DataFrame) -> tuple[list[bytes], list[str]]:
    """One JSON message per reading, keyed by sensor_id: the predictions as the sink produced them before."""
    ms = pd.to_datetime(readings["timestamp"], utc=True).to_numpy(dtype="datetime64[ms]")
    preds = pd.DataFrame(
        {
            "sensor_id": readings["sensor_id"].to_numpy(dtype=object),
            "timestamp": np.char.add(np.datetime_as_string(ms, unit="ms"), "Z"),
            "device_id": readings["device_id"].to_numpy(dtype=object),
            "sensor_type": readings["sensor_type"].to_numpy(dtype=object),
            "location": readings["location"].to_numpy(dtype=object),
            "value": readings["value"].to_numpy(dtype="float64"),
            "score": readings["score"].to_numpy(dtype="float64"),
            "is_anomaly": readings["is_anomaly"].fillna(False).astype(bool).to_numpy(),
            "anomaly_kind": readings["anomaly_kind"].to_numpy(dtype=object),
            "interpolated": readings["interpolated"].astype(bool).to_numpy(),
        }
    )
    lines = preds.to_json(orient="records", lines=True).rstrip("\n").split("\n")
    return [line.encode() for line in lines], preds["sensor_id"].tolist()


def calls(readings: int, devices: int, per_call: int) -> list[pd.DataFrame]:
    """The readings as the step hands them to the sink: one frame per call, each sensor once a second."""
    sensors = [(f"dev-{d:04d}-{t}", f"dev-{d:04d}", t, f"loc-{d % 4:02d}") for d in range(devices) for t in TYPES]
    rng = np.random.default_rng(7)
    n = len(sensors)
    i = np.arange(readings)
    frame = pd.DataFrame(
        {
            "sensor_id": [sensors[k][0] for k in i % n],
            "device_id": [sensors[k][1] for k in i % n],
            "sensor_type": [sensors[k][2] for k in i % n],
            "location": [sensors[k][3] for k in i % n],
            "timestamp": pd.Timestamp("2026-03-01", tz="UTC") + pd.to_timedelta(i // n, unit="s"),
            "value": rng.normal(20, 2, readings).round(3),
            "score": rng.random(readings),
            "is_anomaly": rng.random(readings) < 0.01,
            "interpolated": False,
        }
    )
    frame["anomaly_kind"] = np.where(frame["is_anomaly"], "spike", None)
    return [frame.iloc[a : a + per_call].reset_index(drop=True) for a in range(0, readings, per_call)]


class NullStore:
    def upsert_readings(self, frame: pd.DataFrame) -> int:
        return len(frame)


def worker(args: argparse.Namespace) -> None:
    """One round's worker (a child process): the sink writes every call; prints its CPU seconds."""
    from millrace.jobs import sink as sink_module
    from millrace.processing.recommendations import load_table

    settings = settings_for(Path(args.state_dir), args.kafka_port, args.controller_port)
    if args.worker == "per-reading":
        sink_module.prediction_messages = per_reading_messages  # type: ignore[assignment]
    frames = calls(args.readings, args.devices, args.per_call)
    producer = sink_module.sink_producer(settings.kafka)
    sink = sink_module.ReadingSink(
        NullStore(),  # type: ignore[arg-type]
        producer,
        topics=settings.topics,
        store_backend="none",
        recommendations=load_table(None),
    )
    print("ready", flush=True)  # imports done, readings built: the parent starts its CPU readings now
    sys.stdin.readline()
    cpu0 = time.process_time()
    for frame in frames:
        sink.write_readings(frame)
    print(json.dumps({"cpu_s": time.process_time() - cpu0}), flush=True)


def serve(args: argparse.Namespace) -> None:
    """The API (a child process): the service with its live feed, on ``--api-port``."""
    import uvicorn

    from millrace.services.app import create_app

    settings = settings_for(Path(args.state_dir), args.kafka_port, args.controller_port)
    app = create_app(settings, queue_size=10 * args.readings)
    uvicorn.run(app, host="127.0.0.1", port=args.api_port, log_level="warning")


def cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=100_000, help="readings per round")
    parser.add_argument("--devices", type=int, default=20, help="simulated devices (6 sensors each)")
    parser.add_argument("--per-call", type=int, default=5_000, help="readings per call of the sink")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per packing, interleaved")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    for name in ("--state-dir", "--kafka-port", "--controller-port", "--api-port"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker or args.serve:
        args.kafka_port, args.controller_port = int(args.kafka_port), int(args.controller_port)
        if args.api_port:
            args.api_port = int(args.api_port)
        (worker if args.worker else serve)(args)
        return
    root = Path(tempfile.mkdtemp(prefix="millrace-predictions-cost-"))
    kp, cp, ap = free_port(), free_port(), free_port()
    settings = settings_for(root, kp, cp)
    child = [sys.executable, __file__, "--state-dir", str(root), "--kafka-port", str(kp), "--controller-port", str(cp)]
    child += ["--readings", str(args.readings), "--devices", str(args.devices), "--per-call", str(args.per_call)]
    stack = Stack(settings)
    stack.up()
    api = None
    out: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "args": vars(args) | {}}
    out["args"] = {k: str(v) for k, v in vars(args).items() if v is not None}
    try:
        from millrace.kafka.admin import apply_topics
        from millrace.kafka.topics import declared_topics

        apply_topics(settings.kafka.client_config(), declared_topics(settings.topics))
        broker = next(p for p in psutil.Process().children(recursive=True) if "kafka.Kafka" in " ".join(p.cmdline()))
        api = subprocess.Popen([*child, "--serve", "--api-port", str(ap)], env=os.environ.copy())
        url = f"http://127.0.0.1:{ap}"
        health = _wait(lambda: _health(url), 90, "the API's live feed")
        received = [0]
        client = threading.Thread(target=_ws_client, args=(url, received), daemon=True)
        client.start()
        _wait(lambda: len(_health(url, ready=False)["websocket"]["clients"]) == 1 or None, 30, "the client")
        api_proc = psutil.Process(api.pid)
        # What the broker and the API burn with nothing to do (a part of each round's CPU that packing cannot save)
        idle0, idle_api0, t_idle = cpu(broker), cpu(api_proc), time.monotonic()
        time.sleep(5.0)
        idle_s = time.monotonic() - t_idle
        out["idle_cpu_s_per_s"] = {
            "broker": round((cpu(broker) - idle0) / idle_s, 4),
            "api": round((cpu(api_proc) - idle_api0) / idle_s, 4),
        }
        rounds = []
        for i in range(args.rounds * 2):
            mode = MODES[i % 2]
            published = _health(url, ready=False)["websocket"]["published"]["sensors"]
            proc = subprocess.Popen(
                [*child, "--worker", mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            assert proc.stdin is not None and proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit(f"the {mode} worker failed to start")
            load0, broker0, api0, t0 = psutil.getloadavg()[0], cpu(broker), cpu(api_proc), time.monotonic()
            proc.stdin.write("go\n")
            proc.stdin.flush()
            worker_cpu = json.loads(proc.stdout.readline())["cpu_s"]
            if proc.wait(60) != 0:
                raise SystemExit(f"the {mode} worker failed")
            target = published + args.readings
            _wait(
                lambda t=target: _health(url, ready=False)["websocket"]["published"]["sensors"] >= t or None,
                600,
                "every event published",
            )
            per = 1000 / args.readings
            row = {
                "mode": mode,
                "wall_s": round(time.monotonic() - t0, 1),
                "worker": round(worker_cpu * per, 4),
                "broker": round((cpu(broker) - broker0) * per, 4),
                "api": round((cpu(api_proc) - api0) * per, 4),
                "load": [round(load0, 1), round(psutil.getloadavg()[0], 1)],
            }
            rounds.append(row)
            print(json.dumps(row), flush=True)
        health = _health(url, ready=False)
        out["rounds"] = rounds
        out["api_feed"] = health["feed"]
        out["ws_client_received"] = received[0]
        out["mean"] = {
            mode: {
                part: round(float(np.mean([r[part] for r in rounds if r["mode"] == mode])), 4)
                for part in ("worker", "broker", "api")
            }
            for mode in MODES
        }
    finally:
        if api is not None:
            api.terminate()
            api.wait(30)
        stack.down()
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: out[k] for k in ("idle_cpu_s_per_s", "mean")}, indent=2))


def _health(url: str, ready: bool = True) -> Any:
    try:
        health = httpx.get(f"{url}/api/health", timeout=5).json()
    except httpx.HTTPError:
        return None
    return health if not ready or health["feed"]["ready"] else None


def _wait(probe: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.2)
    raise SystemExit(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _ws_client(url: str, received: list[int]) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with connect(url.replace("http://", "ws://") + "/ws", compression=None, max_queue=None) as conn:
        conn.send(json.dumps({"subscribe": ["sensors"]}))
        with contextlib.suppress(ConnectionClosed):  # the API stops at the end of the run
            while True:
                conn.recv()
                received[0] += 1


if __name__ == "__main__":
    main()
