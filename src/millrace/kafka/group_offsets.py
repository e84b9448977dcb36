"""Offsets committed to a consumer group that has no members: how a job that tracks its position elsewhere (Spark
keeps its Kafka offsets in its checkpoint) makes its lag visible to the cluster view and to any Kafka monitoring.

The commits go through the AdminClient (AlterConsumerGroupOffsets): no consumer joins the group, so there is
no rebalance and no heartbeat, and nothing here blocks the caller. The group is for monitoring only; the job
never reads it back.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

log = logging.getLogger(__name__)

Offsets = Mapping[tuple[str, int], int]  # (topic, partition) -> next offset to read

# The group's coordinator is being found, moved or loaded (on a new cluster the first commit creates the offsets
# topic and gets NOT_COORDINATOR): retried quietly a few times before it is worth a warning.
TRANSIENT = frozenset(
    {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE}
)
WARN_AFTER = 5  # consecutive transient failures


class GroupOffsetCommitter:
    """Best-effort commits of ``(topic, partition) -> next offset`` to ``group_id``.

    ``commit`` returns at once: it sends the offsets unless they are the ones last committed or a commit is
    still in flight (the next call sends the newest offsets then). A failed commit is retried by the next call
    and never raises; a streak of failures is logged as one warning (at its first failure, or at the
    WARN_AFTER-th while all were transient). The broker refuses the commits while consumers are members of
    ``group_id``: give it a name of its own.
    """

    def __init__(
        self, client_config: dict[str, Any], group_id: str, *, timeout_s: float = 10.0, admin: Any = None
    ) -> None:
        self.group_id = group_id
        self.timeout_s = timeout_s
        self._admin = admin if admin is not None else AdminClient(dict(client_config))
        self._lock = threading.Lock()
        self._committed: dict[tuple[str, int], int] = {}
        self._in_flight: Future[Any] | None = None
        self._failures = 0
        self._warned = False
        self._lag_pending = False
        self.commits = 0  # successful commits

    @property
    def committed(self) -> dict[tuple[str, int], int]:
        """The offsets of the last successful commit."""
        with self._lock:
            return dict(self._committed)

    def commit(self, offsets: Offsets) -> None:
        wanted = {key: offset for key, offset in offsets.items() if offset >= 0}
        with self._lock:
            if not wanted or self._in_flight is not None or all(self._committed.get(k) == v for k, v in wanted.items()):
                return
            request = ConsumerGroupTopicPartitions(
                self.group_id, [TopicPartition(t, p, o) for (t, p), o in wanted.items()]
            )
            try:
                future = self._admin.alter_consumer_group_offsets([request], request_timeout=self.timeout_s)[
                    self.group_id
                ]
            except (KafkaException, ValueError, TypeError) as exc:  # refused before it was sent
                self._failed(str(exc), transient=False)
                return
            self._in_flight = future
        future.add_done_callback(lambda done: self._done(done, wanted))

    def _done(self, future: Future[Any], wanted: dict[tuple[str, int], int]) -> None:
        # Runs on the client's background thread.
        try:
            failed = [(f"{tp.topic}[{tp.partition}]", tp.error) for tp in future.result().topic_partitions if tp.error]
        except Exception as exc:  # KafkaException, a timeout: the next commit retries
            failed = [("", exc.args[0] if isinstance(exc, KafkaException) and exc.args else exc)]
        with self._lock:
            self._in_flight = None
            if failed:
                transient = all(isinstance(e, KafkaError) and e.code() in TRANSIENT for _, e in failed)
                self._failed("; ".join(f"{where}: {e}" if where else str(e) for where, e in failed), transient)
                return
            self._committed.update(wanted)
            self.commits += 1
            if self._warned:
                log.info("consumer group %s: offsets committed again after %d failures", self.group_id, self._failures)
            self._failures = 0
            self._warned = False

    def _failed(self, error: str, transient: bool) -> None:
        self._failures += 1
        warn = not self._warned and (not transient or self._failures >= WARN_AFTER)
        self._warned = self._warned or warn
        level = logging.WARNING if warn else logging.DEBUG
        log.log(level, "committing the offsets of consumer group %s failed (monitoring only): %s", self.group_id, error)

    def request_lag(self, on_lag: Callable[[dict[str, int]], None], timeout_s: float = 5.0) -> bool:
        """Ask Kafka for the end offsets of the committed partitions; once all have answered, call ``on_lag``
        (on the client's thread) with ``topic -> sum over partitions of (end offset - committed)``. Returns at
        once; False when nothing is committed yet or a request is still out. A failed request is logged at
        debug level and skipped: the next call asks again."""
        with self._lock:
            committed = dict(self._committed)
            if not committed or self._lag_pending:
                return False
            self._lag_pending = True
        try:
            futures = self._admin.list_offsets(
                {TopicPartition(t, p): OffsetSpec.latest() for t, p in committed}, request_timeout=timeout_s
            )
        except (KafkaException, ValueError, TypeError) as exc:
            log.debug("end offsets of %s: %s", self.group_id, exc)
            with self._lock:
                self._lag_pending = False
            return False
        answers: dict[tuple[str, int], int | None] = {}

        def answered(tp: TopicPartition, future: Future[Any]) -> None:
            try:
                end: int | None = int(future.result().offset)
            except Exception as exc:  # KafkaException, a timeout
                log.debug("end offset of %s[%d]: %s", tp.topic, tp.partition, exc)
                end = None
            with self._lock:
                answers[(tp.topic, tp.partition)] = end
                if len(answers) < len(futures):
                    return
                self._lag_pending = False
            if any(v is None for v in answers.values()):
                return
            lag: dict[str, int] = {}
            for (topic, partition), end_offset in answers.items():
                assert end_offset is not None
                lag[topic] = lag.get(topic, 0) + max(0, end_offset - committed[(topic, partition)])
            on_lag(lag)

        for tp, future in futures.items():
            future.add_done_callback(functools.partial(answered, tp))
        return True

    def flush(self, offsets: Offsets, timeout_s: float = 5.0) -> bool:
        """Commit ``offsets`` and wait up to ``timeout_s`` until they are committed (retrying failures);
        returns whether they were."""
        deadline = time.monotonic() + timeout_s
        wanted = {key: offset for key, offset in offsets.items() if offset >= 0}
        while True:
            self.commit(wanted)
            with self._lock:
                done = all(self._committed.get(k) == v for k, v in wanted.items())
                pending = self._in_flight
            if done:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if pending is not None:
                try:
                    pending.exception(timeout=left)
                except Exception:  # still running at the deadline
                    return False
                # The callback may run just after the future resolves: let it record the outcome.
                time.sleep(0.01)
            else:
                time.sleep(min(0.2, left))  # a failure just now: retry shortly
