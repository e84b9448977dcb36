"""The stream job's end offsets mirrored into a consumer group: reading them from a progress, committing them
best-effort (no broker: a fake AdminClient)."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from millrace.jobs.progress import ProgressOffsets, end_offsets
from millrace.kafka.group_offsets import WARN_AFTER, GroupOffsetCommitter


def test_end_offsets_of_the_kafka_source() -> None:
    sources = [
        {"description": "KafkaV2[Subscribe[r]]", "startOffset": None, "endOffset": '{"r":{"0":120,"2":7,"1":0}}'},
        {"description": "rate", "endOffset": "42"},  # another kind of source
        {"description": "broken", "endOffset": "{not json"},
        {"description": "parsed", "endOffset": {"s": {"0": 5, "1": -1, "x": 3}}},  # sentinels and junk skipped
    ]
    assert end_offsets(sources) == {("r", 0): 120, ("r", 1): 0, ("r", 2): 7, ("s", 0): 5}
    assert end_offsets([]) == {} and end_offsets([{"endOffset": None}]) == {}


class FakeQuery:
    def __init__(self) -> None:
        self.lastProgress: dict[str, Any] | None = None

    def batch(self, offsets: dict[str, dict[str, int]]) -> None:
        import json

        self.lastProgress = {"batchId": 0, "sources": [{"endOffset": json.dumps(offsets)}]}


class FakeCommitter:
    def __init__(self) -> None:
        self.commits: list[dict[tuple[str, int], int]] = []
        self.flushed: list[dict[tuple[str, int], int]] = []

    def commit(self, offsets: Any) -> None:
        self.commits.append(dict(offsets))

    def flush(self, offsets: Any, timeout_s: float = 5.0) -> bool:
        self.flushed.append(dict(offsets))
        return True

    def request_lag(self, on_lag: Any, timeout_s: float = 5.0) -> bool:
        return False  # lag is tested on GroupOffsetCommitter itself


def test_progress_offsets_follow_the_last_progress() -> None:
    query, committer = FakeQuery(), FakeCommitter()
    progress = ProgressOffsets(committer)
    progress.poll(query)  # no batch yet: nothing to commit
    assert committer.commits == []
    query.batch({"r": {"0": 3, "1": 4}})
    progress.poll(query)
    query.batch({"r": {"0": 9, "1": 4}})
    assert progress.finish(query)
    assert committer.commits == [{("r", 0): 3, ("r", 1): 4}, {("r", 0): 9, ("r", 1): 4}]
    assert committer.flushed == [{("r", 0): 9, ("r", 1): 4}]


class FakeAdmin:
    """alter_consumer_group_offsets answering with futures the test resolves."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[tuple[str, int], int]]] = []
        self.futures: list[Future[Any]] = []

    def alter_consumer_group_offsets(self, requests: list[Any], request_timeout: float) -> dict[str, Future[Any]]:
        (request,) = requests
        self.requests.append(
            (request.group_id, {(tp.topic, tp.partition): tp.offset for tp in request.topic_partitions})
        )
        future: Future[Any] = Future()
        self.futures.append(future)
        return {request.group_id: future}


class Answer:
    """What the AdminClient's future resolves to: the partitions, each with its error or None."""

    def __init__(self, offsets: dict[tuple[str, int], int], error: KafkaError | None = None) -> None:
        self.topic_partitions = [
            SimpleNamespace(topic=topic, partition=partition, offset=offset, error=error)
            for (topic, partition), offset in offsets.items()
        ]


@pytest.fixture
def committer() -> tuple[GroupOffsetCommitter, FakeAdmin]:
    admin = FakeAdmin()
    return GroupOffsetCommitter({}, "millrace-iot-process", admin=admin), admin


def test_commits_are_sent_once_per_change_and_one_at_a_time(committer: tuple[GroupOffsetCommitter, FakeAdmin]) -> None:
    c, admin = committer
    first = {("r", 0): 5, ("r", 1): 2}
    c.commit(first)
    c.commit({("r", 0): 6, ("r", 1): 2})  # one in flight: skipped, the next call sends the newest
    assert admin.requests == [("millrace-iot-process", first)]
    admin.futures[0].set_result(Answer(first))
    assert c.committed == first and c.commits == 1
    c.commit(first)  # unchanged: nothing sent
    c.commit({("r", 0): 6, ("r", 1): 2, ("r", 2): -1})  # negative sentinels are never committed
    assert admin.requests[1:] == [("millrace-iot-process", {("r", 0): 6, ("r", 1): 2})]


def test_a_failed_commit_warns_once_and_is_retried(
    committer: tuple[GroupOffsetCommitter, FakeAdmin], caplog: pytest.LogCaptureFixture
) -> None:
    c, admin = committer
    offsets = {("r", 0): 5}
    caplog.set_level(logging.DEBUG, logger="millrace.kafka.group_offsets")
    c.commit(offsets)
    admin.futures[0].set_result(Answer(offsets, KafkaError(KafkaError.NOT_COORDINATOR)))
    c.commit(offsets)
    admin.futures[1].set_exception(KafkaException(KafkaError(KafkaError._TIMED_OUT)))
    assert c.committed == {} and len(admin.requests) == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "millrace-iot-process" in warnings[0].getMessage()
    c.commit(offsets)
    admin.futures[2].set_result(Answer(offsets))
    assert c.committed == offsets


def test_a_new_clusters_coordinator_is_waited_for_quietly(
    committer: tuple[GroupOffsetCommitter, FakeAdmin], caplog: pytest.LogCaptureFixture
) -> None:
    c, admin = committer
    offsets = {("r", 0): 5}
    caplog.set_level(logging.DEBUG, logger="millrace.kafka.group_offsets")
    for n in range(WARN_AFTER + 2):
        c.commit(offsets)
        admin.futures[n].set_result(Answer(offsets, KafkaError(KafkaError.NOT_COORDINATOR)))
        warned = sum(r.levelno == logging.WARNING for r in caplog.records)
        assert warned == (0 if n + 1 < WARN_AFTER else 1)  # one warning for the streak, after WARN_AFTER
    c.commit(offsets)
    admin.futures[-1].set_result(Answer(offsets))
    assert c.committed == offsets and "committed again" in caplog.records[-1].getMessage()


def test_flush_waits_for_the_commit_within_its_deadline(committer: tuple[GroupOffsetCommitter, FakeAdmin]) -> None:
    import threading

    c, admin = committer
    offsets = {("r", 0): 8}
    threading.Timer(0.2, lambda: admin.futures[0].set_result(Answer(offsets))).start()
    assert c.flush(offsets, timeout_s=5.0) and c.committed == offsets
    assert not c.flush({("r", 0): 9}, timeout_s=0.3)  # never answered: gives up at the deadline
