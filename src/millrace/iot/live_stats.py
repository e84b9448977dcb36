"""Live producer statistics for simulate, replay and the MQTT bridge: a terminal display refreshing about
twice a second, a summary table at the end and a JSON document for machines.

Delivered, failed and latency come from the sink's :class:`~millrace.kafka.stats.DeliveryStats` (counted in
delivery callbacks); the breakdowns by sensor type and by kind (ground truth or fault) count what was sent.
"""

from __future__ import annotations

import resource
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from millrace.kafka.stats import DeliveryStats


class _Labelled(Protocol):
    @property
    def sensor_type(self) -> str: ...

    @property
    def kind(self) -> str: ...


def process_usage() -> dict[str, float]:
    """CPU seconds (user + system) of this process and its finished children (parallel producers), and
    the largest peak RSS among them (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "cpu_s": round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 3),
        "max_rss_mb": round(max(own.ru_maxrss, children.ru_maxrss) / 1024, 1),
    }


class LiveStats:
    """Counts sent messages by label and renders them with a sink's delivery statistics."""

    def __init__(self, stats: DeliveryStats, *, title: str = "producer", console: Console | None = None) -> None:
        self.stats = stats
        self.title = title
        self.console = console or Console(stderr=True)
        self.sent = 0
        self.by_type: Counter[str] = Counter()
        self.by_kind: Counter[str] = Counter()
        self.started = time.monotonic()
        self.finished: float | None = None
        self.undelivered = 0
        self._last = (self.started, 0)
        self._rate = 0.0

    # ---- counting ----
    def record(self, msg: _Labelled) -> None:
        self.sent += 1
        self.by_type[msg.sensor_type] += 1
        self.by_kind[msg.kind] += 1

    def record_many(self, sensor_types: list[str], kinds: list[str]) -> None:
        """Count a batch at once (Counter.update runs in C)."""
        self.sent += len(sensor_types)
        self.by_type.update(sensor_types)
        self.by_kind.update(kinds)

    def finish(self, undelivered: int = 0) -> None:
        """Mark the end of the run (after the sink's flush) so rates use the real elapsed time."""
        self.finished = time.monotonic()
        self.undelivered = undelivered

    # ---- output ----
    @property
    def elapsed_s(self) -> float:
        return max(1e-9, (self.finished or time.monotonic()) - self.started)

    def _current_rate(self) -> float:
        now, delivered = time.monotonic(), self.stats.delivered
        then, before = self._last
        if now - then >= 0.4:
            self._rate = (delivered - before) / (now - then)
            self._last = (now, delivered)
        return self._rate

    def to_json(self) -> dict[str, Any]:
        stats, lat = self.stats, self.stats.latency
        return {
            "title": self.title,
            "sent": self.sent,
            "delivered": stats.delivered,
            "failed": stats.failed,
            "undelivered": self.undelivered,
            "elapsed_s": round(self.elapsed_s, 3),
            "rate_per_s": round(stats.delivered / self.elapsed_s, 1),
            "latency_ms": {
                "avg": round(lat.mean * 1000, 3),
                "p50": round(lat.quantile(0.50) * 1000, 3),
                "p95": round(lat.quantile(0.95) * 1000, 3),
                "p99": round(lat.quantile(0.99) * 1000, 3),
                "max": round(lat.max_s * 1000, 3),
            },
            "by_sensor_type": dict(sorted(self.by_type.items())),
            "by_kind": dict(sorted(self.by_kind.items())),
            "last_error": stats.last_error,
            "process": process_usage(),
        }

    def _overview(self, live: bool) -> Table:
        data = self.to_json()
        lat = data["latency_ms"]
        table = Table(title=f"{self.title} ({'live' if live else 'summary'})", show_header=True)
        for name in ("elapsed", "sent", "delivered", "failed", "rate/s", "avg ms", "p95 ms", "p99 ms"):
            table.add_column(name, justify="right")
        rate = self._current_rate() if live else data["rate_per_s"]
        table.add_row(
            f"{data['elapsed_s']:.1f}s",
            f"{data['sent']:,}",
            f"{data['delivered']:,}",
            f"[red]{data['failed']:,}[/]" if data["failed"] else "0",
            f"{rate:,.0f}",
            f"{lat['avg']:.2f}",
            f"{lat['p95']:.2f}",
            f"{lat['p99']:.2f}",
        )
        return table

    def _breakdown(self) -> Table:
        table = Table(show_header=True, box=None, pad_edge=False)
        table.add_column("sensor type")
        table.add_column("sent", justify="right")
        table.add_column("  kind")
        table.add_column("sent", justify="right")
        types, kinds = sorted(self.by_type.items()), sorted(self.by_kind.items())
        for i in range(max(len(types), len(kinds))):
            t = types[i] if i < len(types) else ("", None)
            k = kinds[i] if i < len(kinds) else ("", None)
            table.add_row(
                t[0],
                f"{t[1]:,}" if t[1] is not None else "",
                f"  {k[0]}",
                f"{k[1]:,}" if k[1] is not None else "",
            )
        return table

    def render(self, *, live: bool = True) -> Group:
        parts: list[Any] = [self._overview(live), self._breakdown()]
        if self.stats.last_error:
            parts.append(f"[red]last error:[/] {self.stats.last_error}")
        if not live and self.undelivered:
            parts.append(f"[red]{self.undelivered:,} messages still undelivered at exit[/]")
        return Group(*parts)

    def summary(self) -> Group:
        return self.render(live=False)

    @contextmanager
    def live(self, *, enabled: bool = True, refresh_per_second: float = 2.0) -> Iterator[LiveStats]:
        """Show the live display while the block runs (nothing when ``enabled`` is false)."""
        if not enabled:
            yield self
            return
        with Live(
            get_renderable=lambda: self.render(live=True),
            console=self.console,
            refresh_per_second=refresh_per_second,
            transient=True,
        ):
            yield self
