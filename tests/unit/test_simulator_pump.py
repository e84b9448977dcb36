"""pump/prefetch and LiveStats with an in-memory sink (no network)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from millrace.iot.fleet import FleetConfig
from millrace.iot.live_stats import LiveStats
from millrace.iot.messages import Message, MessageBatch
from millrace.iot.simulator import Simulator
from millrace.iot.sinks import pump
from millrace.kafka.stats import DeliveryStats


class ListSink:
    """A test double of the Sink protocol: 'delivers' every message at once."""

    def __init__(self) -> None:
        self.stats = DeliveryStats()
        self.messages: list[Message] = []

    def send(self, msg: Message) -> None:
        self.messages.append(msg)
        self.stats.delivered += 1

    def poll(self) -> None:
        pass

    def flush(self, timeout_s: float = 60.0) -> int:
        return 0

    def close(self) -> None:
        pass


def _sim(count: int) -> Simulator:
    return Simulator(FleetConfig(devices=2, start=datetime(2026, 1, 1, tzinfo=UTC), anomaly_rate=0.2), count=count)


def test_pump_sends_everything_in_order_and_counts_labels() -> None:
    sink = ListSink()
    live = LiveStats(sink.stats)
    assert pump(_sim(200_000).batches(), sink, live) == 200_000
    assert sink.messages == list(_sim(200_000).messages())
    assert live.sent == 200_000 and sum(live.by_type.values()) == 200_000
    assert live.by_kind == {k: sum(m.kind == k for m in sink.messages) for k in live.by_kind}
    data = live.to_json()
    assert (data["sent"], data["delivered"], data["failed"]) == (200_000, 200_000, 0)
    assert data["process"]["cpu_s"] > 0 and data["process"]["max_rss_mb"] > 10


def test_pump_keeps_the_rate_and_stops_on_request() -> None:
    sink = ListSink()
    started = time.monotonic()
    pump(_sim(600).batches(), sink, rate=1000.0)
    elapsed = time.monotonic() - started
    assert len(sink.messages) == 600 and 0.5 <= elapsed < 2.0  # 600 messages at 1000/s: about 0.6 s

    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    sink = ListSink()
    pump(Simulator(FleetConfig(devices=2), duration_s=None).batches(), sink, rate=1000.0, stop=stop)
    assert 200 <= len(sink.messages) <= 1200  # stopped after about a second at 1000/s


def test_a_failing_source_raises_in_the_caller() -> None:
    def broken() -> Iterator[MessageBatch]:
        yield MessageBatch(["k"], [b"v"], ["temperature"], ["normal"], ["loc-01"], ["dev-0001"])
        raise RuntimeError("source broke")

    sink = ListSink()
    with pytest.raises(RuntimeError, match="source broke"):
        pump(broken(), sink)
    assert len(sink.messages) == 1
