"""Prometheus metrics of every millrace process: the metric objects, the HTTP endpoint and its file_sd target.

The names, labels and discovery are a contract with the monitoring runtime, its alert rules and dashboards
(docs/metrics.md): change them there first. Metrics live in prometheus_client's default registry; a process
serves them with :func:`serve_metrics`, which also registers the endpoint for Prometheus' file-based service
discovery (``<state_dir>/metrics/targets/<component>-<pid>.json``, written atomically, removed on stop).

Worker processes that record metrics for a process that serves them (the stream job's Python workers, the
simulator's producer processes) run in prometheus_client's multiprocess mode: the serving process hands them
``PROMETHEUS_MULTIPROC_DIR`` (:attr:`MetricsServer.multiproc_dir`) but never sets it for itself — its own
metrics stay in the ordinary registry, and the endpoint serves both, samples of one series summed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Sample

from millrace.errors import PortInUseError

log = logging.getLogger(__name__)

# The *_created series double the series count and nothing here reads them (Prometheus 2.x ignores them).
disable_created_metrics()

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
COMPONENTS = ("stream", "api", "ingest", "mqtt-bridge")
DATA_QUALITY_PROBLEMS = ("gap", "late", "duplicate", "out_of_range", "invalid", "cross_sensor")

# Kafka round trips at linger.ms 20 land in the tens of milliseconds; a broker failover in seconds.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0)
_STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

PRODUCED = Counter("millrace_produced_total", "Records acknowledged by Kafka.", ["topic"])
PRODUCE_FAILED = Counter("millrace_produce_failed_total", "Kafka delivery failures.", ["topic"])
DELIVERY_LATENCY = Histogram(
    "millrace_delivery_latency_seconds", "produce() to delivery callback.", ["topic"], buckets=_LATENCY_BUCKETS
)
CONSUMED = Counter("millrace_consumed_total", "Records consumed from Kafka.", ["topic", "group"])
DEAD_LETTERS = Counter("millrace_dead_letters_total", "Records sent to the dead-letter topic.", ["reason"])
DATA_QUALITY = Counter("millrace_data_quality_total", "Data-quality problems found by the stream job.", ["problem"])
STREAM_BATCHES = Counter("millrace_stream_batches_total", "Micro-batches the stream job finished.")
STREAM_BATCH_DURATION = Histogram(
    "millrace_stream_batch_duration_seconds", "One micro-batch of the stream job, end to end.", buckets=_BATCH_BUCKETS
)
STREAM_INPUT_ROWS = Counter("millrace_stream_input_rows_total", "Rows the stream job read from Kafka.")
STREAM_ROWS_PROCESSED = Counter("millrace_stream_rows_processed_total", "Readings the stream job stored.")
# Gauges are set by the serving process only; in a worker (multiprocess mode) they are created at import with
# value 0, and "max" keeps those out of the way without a per-pid label.
STREAM_LAST_BATCH = Gauge(
    "millrace_stream_last_batch_timestamp_seconds",
    "Unix time at which the stream job last finished a micro-batch.",
    multiprocess_mode="max",
)
STREAM_LAG = Gauge(
    "millrace_stream_lag_records",
    "The stream job's consumer-group lag: end offset minus committed.",
    ["topic"],
    multiprocess_mode="max",
)
STORE_WRITE = Histogram(
    "millrace_store_write_seconds", "One store write call.", ["backend", "collection"], buckets=_STORE_BUCKETS
)
ALERTS = Counter("millrace_alerts_total", "Alert episodes written by the stream job.", ["kind", "severity"])
WS_CLIENTS = Gauge("millrace_ws_clients", "Connected WebSocket clients.", multiprocess_mode="max")
WS_DROPPED = Counter("millrace_ws_dropped_total", "WebSocket frames dropped on a full client queue.")
API_REQUEST = Histogram(
    "millrace_api_request_seconds", "API request latency by route template.", ["method", "route", "status"],
    buckets=_API_BUCKETS,
)  # fmt: skip


@dataclass
class MetricsServer:
    """A running endpoint: where it listens, its target file and (for forking components) the workers'
    multiprocess directory. :meth:`close` stops it and removes both."""

    component: str
    host: str
    port: int
    target: Path
    multiproc_dir: Path | None = None
    _server: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{scrape_host(self.host)}:{self.port}/metrics"

    def close(self) -> None:
        target = self.target
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.multiproc_dir is not None:
            shutil.rmtree(self.multiproc_dir, ignore_errors=True)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def targets_dir(state_dir: Path) -> Path:
    return state_dir / "metrics" / "targets"


def scrape_host(host: str) -> str:
    """The address Prometheus should scrape for an endpoint bound to ``host`` (a wildcard bind: loopback)."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def register_target(
    component: str, state_dir: Path, host: str, port: int, *, labels: dict[str, str] | None = None
) -> Path:
    """Write ``<state_dir>/metrics/targets/<component>-<pid>.json`` atomically (tmp file + rename) and return
    its path; files of processes no longer alive are removed first."""
    directory = targets_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_targets(directory)
    instance = f"{component}-{os.getpid()}"
    body = [
        {
            "targets": [f"{scrape_host(host)}:{port}"],
            "labels": {"job": f"millrace-{component}", "instance": instance, **(labels or {})},
        }
    ]
    path = directory / f"{instance}.json"
    tmp = directory / f".{instance}.json.tmp"
    tmp.write_text(json.dumps(body), encoding="utf-8")
    tmp.replace(path)
    return path


def remove_stale_targets(directory: Path) -> list[Path]:
    """Remove target files whose process is gone (killed before it could remove its own)."""
    removed = []
    for path in directory.glob("*-*.json"):
        pid = path.stem.rpartition("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def serve_metrics(
    component: str, state_dir: Path, port: int, *, host: str = "127.0.0.1", multiprocess: bool = False
) -> MetricsServer:
    """Serve this process's metrics on ``host:port`` (0: an ephemeral port) and register the target.

    ``multiprocess``: the component's workers record metrics too; a fresh
    ``<state_dir>/metrics/multiproc/<component>-<pid>/`` is created for them (hand it to them as
    ``PROMETHEUS_MULTIPROC_DIR``) and served with this process's own. Raises PortInUseError when the port is
    taken."""
    multiproc_dir = None
    if multiprocess:
        parent = state_dir / "metrics" / "multiproc"
        for stale in parent.glob("*-*"):  # left by a killed run: its counts were served by nobody since
            pid = stale.name.rpartition("-")[2]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        multiproc_dir = parent / f"{component}-{os.getpid()}"
        shutil.rmtree(multiproc_dir, ignore_errors=True)
        multiproc_dir.mkdir(parents=True)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Combined(multiproc_dir))
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        if multiproc_dir is not None:
            shutil.rmtree(multiproc_dir, ignore_errors=True)
        raise PortInUseError(
            f"metrics endpoint of {component}: cannot listen on {host}:{port} ({exc.strerror}); "
            "set another port in [metrics] (0 = any free port)"
        ) from None
    bound = int(server.server_port)
    target = register_target(component, state_dir, host, bound)
    log.info("metrics of %s on http://%s:%d/metrics (target %s)", component, host, bound, target)
    return MetricsServer(component, host, bound, target, multiproc_dir, server)


@contextlib.contextmanager
def serving(
    component: str, state_dir: Path, port: int, *, host: str, enabled: bool = True, multiprocess: bool = False
) -> Iterator[MetricsServer | None]:
    """:func:`serve_metrics` for the duration of a ``with`` block (None when ``enabled`` is false)."""
    if not enabled:
        yield None
        return
    server = serve_metrics(component, state_dir, port, host=host, multiprocess=multiprocess)
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def worker_environment(multiproc_dir: Path | None) -> Iterator[None]:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` while worker processes are started (they inherit the environment),
    then restore it. This process keeps its own registry: its prometheus_client is imported already."""
    if multiproc_dir is None:
        yield
        return
    before = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = str(multiproc_dir)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = before


def exposition(multiproc_dir: Path | None = None) -> bytes:
    """The text exposition of this process's metrics (and its workers', when ``multiproc_dir`` is given)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Combined(multiproc_dir))
    return generate_latest(registry)


class Combined:
    """A collector of the default registry plus the multiprocess files of ``multiproc_dir``: one family per
    name, samples of the same series summed (a gauge keeps the largest value, ``_created`` the earliest)."""

    def __init__(self, multiproc_dir: Path | None = None, registry: CollectorRegistry = REGISTRY) -> None:
        self.multiproc_dir = multiproc_dir
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        sources: list[Iterable[Metric]] = [self.registry.collect()]
        if self.multiproc_dir is not None and self.multiproc_dir.is_dir():
            sources.append(MultiProcessCollector(None, path=str(self.multiproc_dir)).collect())
        families: dict[str, Metric] = {}
        for source in sources:
            for metric in source:
                known = families.get(metric.name)
                if known is None:
                    known = families[metric.name] = Metric(metric.name, metric.documentation, metric.type)
                known.samples.extend(metric.samples)
        for family in families.values():
            family.samples = _summed(family.type, family.samples)
            yield family


def _summed(kind: str, samples: list[Sample]) -> list[Sample]:
    merged: dict[tuple[str, tuple[tuple[str, str], ...]], Sample] = {}
    for sample in samples:
        key = (sample.name, tuple(sorted(sample.labels.items())))
        known = merged.get(key)
        if known is None:
            merged[key] = sample
        elif sample.name.endswith("_created"):
            merged[key] = known._replace(value=min(known.value, sample.value))
        elif kind == "gauge":
            merged[key] = known._replace(value=max(known.value, sample.value))
        else:
            merged[key] = known._replace(value=known.value + sample.value)
    return list(merged.values())
