"""Simulate with several producer processes: one Python process is bound to one core by the GIL.

Worker ``i`` of ``n`` simulates the whole fleet but encodes and produces only devices ``d % n == i``
(:class:`~millrace.iot.simulator.Simulator` ``shard``), so every sensor is produced by exactly one
process and per-sensor order is kept. Each worker has its own :class:`~millrace.iot.sinks.KafkaSink` and
reports cumulative counters to the parent about twice a second; the parent merges them into one
:class:`~millrace.iot.live_stats.LiveStats` for the live display, the summary and ``--json``.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from millrace.config import Settings
from millrace.iot.fleet import FleetConfig
from millrace.iot.live_stats import LiveStats
from millrace.kafka.stats import DeliveryStats, LatencyHistogram
from millrace.telemetry import worker_environment

log = logging.getLogger(__name__)

REPORT_EVERY_S = 0.5


@dataclass
class _Job:
    settings: Settings
    cfg: FleetConfig
    duration_s: float | None
    count: int | None
    rate: float
    topic: str | None
    index: int
    workers: int


def _snapshot(index: int, sink_stats: DeliveryStats, live: LiveStats, done: bool, undelivered: int) -> dict:
    lat = sink_stats.latency
    return {
        "worker": index,
        "done": done,
        "undelivered": undelivered,
        "delivered": sink_stats.delivered,
        "failed": sink_stats.failed,
        "last_error": sink_stats.last_error,
        "latency": (dict(lat.counts), lat.total, lat.sum_s, lat.max_s),
        "sent": live.sent,
        "by_type": dict(live.by_type),
        "by_kind": dict(live.by_kind),
    }


def _worker(job: _Job, reports: Any, stop: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop (Ctrl-C reaches all)
    from millrace.iot.simulator import Simulator
    from millrace.iot.sinks import KafkaSink, pump

    sink = KafkaSink(job.settings, topic=job.topic)
    live = LiveStats(sink.stats)
    local_stop = threading.Event()
    finished = threading.Event()

    def report() -> None:
        while not finished.wait(REPORT_EVERY_S):
            if stop.is_set():
                local_stop.set()
            reports.put(_snapshot(job.index, sink.stats, live, False, 0))

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    error = None
    undelivered = 0
    try:
        simulator = Simulator(job.cfg, duration_s=job.duration_s, count=job.count, shard=(job.index, job.workers))
        pump(simulator.batches(), sink, live, rate=job.rate / job.workers, stop=local_stop)
    except Exception as exc:  # reported to the parent, which raises it
        error = f"worker {job.index}: {exc}"
    finally:
        undelivered = sink.flush(60.0)
        finished.set()
        reporter.join()
        final = _snapshot(job.index, sink.stats, live, True, undelivered)
        if error:
            final["error"] = error
        reports.put(final)


def run_workers(
    settings: Settings,
    cfg: FleetConfig,
    live: LiveStats,
    *,
    workers: int,
    duration_s: float | None = None,
    count: int | None = None,
    rate: float = 0.0,
    topic: str | None = None,
    stop: threading.Event | None = None,
    metrics_dir: Path | None = None,
) -> int:
    """Run ``workers`` producer processes; merge their statistics into ``live`` (whose ``stats`` are
    replaced by the sums) until all finish. Returns the number of messages still undelivered.

    ``metrics_dir``: the workers record their metrics there (prometheus_client's multiprocess mode), for the
    endpoint of this process to serve (telemetry.serve_metrics with multiprocess=True)."""
    stop = stop or threading.Event()
    ctx = mp.get_context("spawn")  # no inherited threads or Kafka handles
    reports = ctx.Queue()
    shared_stop = ctx.Event()
    procs = [
        ctx.Process(
            target=_worker,
            args=(_Job(settings, cfg, duration_s, count, rate, topic, i, workers), reports, shared_stop),
            name=f"millrace-sim-{i}",
            daemon=True,
        )
        for i in range(workers)
    ]
    with worker_environment(metrics_dir):  # spawned workers take the environment at start
        for proc in procs:
            proc.start()
    latest: dict[int, dict] = {}
    errors: list[str] = []
    while len([r for r in latest.values() if r["done"]]) < workers:
        if stop.is_set():
            shared_stop.set()
        try:
            snap = reports.get(timeout=0.2)
        except queue.Empty:
            dead = [p for p in procs if not p.is_alive() and not latest.get(procs.index(p), {}).get("done")]
            if dead and all(not p.is_alive() for p in procs):
                errors.append(f"{len(dead)} worker(s) exited without a final report (exit {dead[0].exitcode})")
                break
            continue
        latest[snap["worker"]] = snap
        if snap.get("error"):
            errors.append(snap["error"])
        _merge(live, latest)
    for proc in procs:
        proc.join(10)
    _merge(live, latest)
    if errors:
        from millrace.errors import MillraceError

        raise MillraceError("; ".join(errors))
    return sum(r["undelivered"] for r in latest.values())


def _merge(live: LiveStats, latest: dict[int, dict]) -> None:
    stats = live.stats
    hist = LatencyHistogram()
    by_type: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    delivered = failed = sent = 0
    for snap in latest.values():
        delivered += snap["delivered"]
        failed += snap["failed"]
        sent += snap["sent"]
        counts, total, sum_s, max_s = snap["latency"]
        hist.counts.update({int(k): v for k, v in counts.items()})
        hist.total += total
        hist.sum_s += sum_s
        hist.max_s = max(hist.max_s, max_s)
        by_type.update(snap["by_type"])
        by_kind.update(snap["by_kind"])
        if snap["last_error"]:
            stats.last_error = snap["last_error"]
    with stats.lock:
        stats.delivered, stats.failed, stats.latency = delivered, failed, hist
    live.sent, live.by_type, live.by_kind = sent, by_type, by_kind
    log.debug("merged %d worker reports at %.1f", len(latest), time.monotonic())
