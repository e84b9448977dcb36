"""The stream job's position as a consumer group, so its lag shows in the cluster view and in Kafka monitoring.

Spark's Kafka source keeps its offsets in the checkpoint and commits none to Kafka. A streaming query reports a
progress after each micro-batch it has committed to its checkpoint; the progress of the Kafka source carries the
batch's end offsets — per partition the next offset to read — which are committed to the group named by
``spark.consumer_group``. The checkpoint stays the only position the job resumes from; the group is a mirror
for monitoring, at most one micro-batch (plus one watch interval) behind it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from millrace import telemetry
from millrace.config import KafkaSettings

log = logging.getLogger(__name__)


class OffsetCommitter(Protocol):
    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None: ...

    def flush(self, offsets: Mapping[tuple[str, int], int], timeout_s: float = 5.0) -> bool: ...

    def request_lag(self, on_lag: Callable[[dict[str, int]], None], timeout_s: float = 5.0) -> bool: ...


LAG_EVERY_S = 2.0  # how often the group's lag is measured for millrace_stream_lag_records


def record_lag(lag: Mapping[str, int]) -> None:
    for topic, records in lag.items():
        telemetry.STREAM_LAG.labels(topic).set(records)


def end_offsets(sources: Iterable[Mapping[str, Any]]) -> dict[tuple[str, int], int]:
    """``(topic, partition) -> next offset to read`` from the sources of a streaming progress.

    A Kafka source's ``endOffset`` is JSON ``{"topic": {"0": 120, "1": 98}}`` (a string, or already parsed);
    sources of other kinds (and offsets that are not plain non-negative numbers) are skipped."""
    out: dict[tuple[str, int], int] = {}
    for source in sources:
        raw = source.get("endOffset")
        try:
            parsed = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            continue
        if not isinstance(parsed, dict):
            continue
        for topic, partitions in parsed.items():
            if not isinstance(partitions, dict):
                continue
            for partition, offset in partitions.items():
                if str(partition).isdigit() and isinstance(offset, int) and offset >= 0:
                    out[(topic, int(partition))] = offset
    return out


class ProgressOffsets:
    """Mirrors a streaming query's end offsets into a consumer group: ``poll(query)`` after each watch interval
    (cheap: one call into the JVM; a commit only when the offsets moved), ``finish(query)`` once it stopped."""

    def __init__(self, committer: OffsetCommitter) -> None:
        self.committer = committer
        self.offsets: dict[tuple[str, int], int] = {}
        self._lag_asked = float("-inf")

    def poll(self, query: Any) -> None:
        try:
            progress = query.lastProgress
        except Exception as exc:  # the query is going away: the next poll or finish() catches up
            log.debug("no progress: %s", exc)
            return
        if progress is not None:
            self.offsets.update(end_offsets(progress["sources"]))
        if self.offsets:
            self.committer.commit(self.offsets)
        now = time.monotonic()
        if now - self._lag_asked >= LAG_EVERY_S and self.committer.request_lag(record_lag):
            self._lag_asked = now

    def finish(self, query: Any, timeout_s: float = 5.0) -> bool:
        """Commit the end offsets of the query's last batch, waiting up to ``timeout_s``."""
        self.poll(query)
        return self.committer.flush(self.offsets, timeout_s) if self.offsets else True


def progress_offsets(kafka: KafkaSettings, consumer_group: str) -> ProgressOffsets | None:
    """The mirror of the job's offsets in ``consumer_group`` on the cluster ``kafka`` names (None when the group
    is empty: the mirror is off)."""
    if not consumer_group:
        return None
    from millrace.kafka.group_offsets import GroupOffsetCommitter

    return ProgressOffsets(GroupOffsetCommitter(kafka.client_config(), consumer_group))
