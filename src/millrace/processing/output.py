"""The one way out of the stateful step for alerts and readings: a :class:`StepSink`.

The step (processing.stateful) gets a factory of sinks and calls it once per call of the step; the job injects
jobs.sink.worker_sink (store + alerts and predictions topics, one per Python worker), the tests a
:class:`MemorySink`. Everything else the step produces — window partials, sensor status, quality counters,
dead letters, and the alerts again as "alert_sent" rows for the driver to count — leaves as its output rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

import pandas as pd

from millrace.config import Settings


class StepSink(Protocol):
    """Where one call of the stateful step (one state bucket, one micro-batch) puts its alerts and readings.

    When: in the process that runs the call (a Spark Python worker), before the call returns its output rows
    and before Spark commits the bucket's state. Per call at most one ``write_alerts`` and then at most one
    ``write_readings``, never with an empty batch: a call's alerts are written before its readings, so an
    alert is visible as soon as its bucket is computed. Calls for other buckets of the same micro-batch run in
    other processes, concurrently and in no particular order; nothing orders one call's readings after another
    call's alerts.

    Idempotent: a micro-batch that fails is replayed from the same offsets and state and writes the same
    alerts and readings again, so an implementation upserts on natural keys — readings on (sensor_id,
    timestamp), alerts on alert_id — and a replay changes nothing it stores. Messages to topics are
    at-least-once (a replay may repeat them; their keys tell repeats apart).

    Raises: a method returns once what it was given is durable (stored, and delivered where it produces
    messages), or raises — StoreUnavailable, KafkaUnavailable or any error — which fails the call and with
    it the micro-batch (Spark replays it). It never drops rows silently.
    """

    def write_alerts(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        """Alert episodes touched by the call (records.Alert dicts, stores.base.ALERT_FIELDS), each the
        episode's state at the end of the call."""
        ...

    def write_readings(self, readings: pd.DataFrame) -> None:
        """Cleaned, scored readings of the call, measured and interpolated, in no particular order: columns
        of stores.base.READING_COLUMNS but ``ingested_at`` (the sink stamps it), ``timestamp`` timezone-aware
        UTC."""
        ...


SinkFactory = Callable[[Settings], StepSink]


class MemorySink:
    """A StepSink that keeps, in memory and in order, exactly what it was given (it does not upsert: a test
    sees every write, a replay's included). ``factory`` is a SinkFactory returning this sink."""

    def __init__(self) -> None:
        self.writes: list[tuple[Literal["alerts", "readings"], Any]] = []

    def write_alerts(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        self.writes.append(("alerts", [dict(a) for a in alerts]))

    def write_readings(self, readings: pd.DataFrame) -> None:
        self.writes.append(("readings", readings.copy()))

    def factory(self, _settings: Settings) -> MemorySink:
        return self

    @property
    def order(self) -> list[str]:
        """The kinds of the writes, in call order ("alerts" / "readings")."""
        return [kind for kind, _ in self.writes]

    @property
    def alerts(self) -> list[dict[str, Any]]:
        """Every alert written, in order."""
        return [alert for kind, batch in self.writes if kind == "alerts" for alert in batch]

    @property
    def readings(self) -> pd.DataFrame:
        """Every reading written, in order, as one frame (empty without columns when none was)."""
        frames = [batch for kind, batch in self.writes if kind == "readings"]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
