"""Delivery statistics: the latency histogram's quantiles stay within its 2 % bucket width."""

from __future__ import annotations

import numpy as np
import pytest

from millrace.kafka.stats import DeliveryStats, LatencyHistogram


def test_quantiles_match_numpy_within_bucket_width() -> None:
    rng = np.random.default_rng(7)
    samples = rng.lognormal(mean=-6.0, sigma=1.0, size=20_000)
    hist = LatencyHistogram()
    for value in samples:
        hist.add(float(value))
    assert hist.total == 20_000
    assert hist.mean == pytest.approx(samples.mean(), rel=1e-9)
    assert hist.max_s == pytest.approx(samples.max())
    for q in (0.5, 0.95, 0.99):
        assert hist.quantile(q) == pytest.approx(np.quantile(samples, q), rel=0.03)


def test_empty_histogram_and_snapshot() -> None:
    assert LatencyHistogram().quantile(0.99) == 0.0
    stats = DeliveryStats()
    stats.delivered = 3
    stats.failed = 1
    stats.by_label["type:temperature"] += 3
    snap = stats.snapshot()
    assert snap["delivered"] == 3
    assert snap["failed"] == 1
    assert snap["by_label"] == {"type:temperature": 3}
    assert set(snap["latency_ms"]) == {"avg", "p50", "p95", "p99", "max"}  # type: ignore[arg-type]
