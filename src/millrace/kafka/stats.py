"""Delivery statistics for producers: counts and a bounded latency histogram (p50/p95/p99)."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

# Log-spaced latency buckets: about 2 % wide, from 10 us up; memory stays a few KB whatever the run length.
_BUCKET_BASE_S = 1e-5
_BUCKETS_PER_E = 50.0


@dataclass
class LatencyHistogram:
    counts: Counter[int] = field(default_factory=Counter)
    total: int = 0
    sum_s: float = 0.0
    max_s: float = 0.0

    def add(self, seconds: float) -> None:
        idx = int(math.log(seconds / _BUCKET_BASE_S) * _BUCKETS_PER_E) if seconds > _BUCKET_BASE_S else 0
        self.counts[idx] += 1
        self.total += 1
        self.sum_s += seconds
        if seconds > self.max_s:
            self.max_s = seconds

    def quantile(self, q: float) -> float:
        if self.total == 0:
            return 0.0
        rank = q * self.total
        seen = 0
        for idx in sorted(self.counts):
            seen += self.counts[idx]
            if seen >= rank:
                return _BUCKET_BASE_S * math.exp((idx + 0.5) / _BUCKETS_PER_E) if idx else _BUCKET_BASE_S
        return self.max_s

    @property
    def mean(self) -> float:
        return self.sum_s / self.total if self.total else 0.0


@dataclass
class DeliveryStats:
    """What a producer delivered, counted in its delivery callbacks (never what it merely attempted)."""

    delivered: int = 0
    failed: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    last_error: str | None = None
    by_label: Counter[str] = field(default_factory=Counter)  # free-form breakdowns, e.g. "type:temperature"
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> dict[str, object]:
        elapsed = max(1e-9, time.monotonic() - self.started)
        with self.lock:
            return {
                "delivered": self.delivered,
                "failed": self.failed,
                "elapsed_s": round(elapsed, 3),
                "rate_per_s": round(self.delivered / elapsed, 1),
                "latency_ms": {
                    "avg": round(self.latency.mean * 1000, 3),
                    "p50": round(self.latency.quantile(0.50) * 1000, 3),
                    "p95": round(self.latency.quantile(0.95) * 1000, 3),
                    "p99": round(self.latency.quantile(0.99) * 1000, 3),
                    "max": round(self.latency.max_s * 1000, 3),
                },
                "by_label": dict(self.by_label),
                "last_error": self.last_error,
            }
