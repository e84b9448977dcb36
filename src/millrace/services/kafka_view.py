"""What a Kafka UI shows, as plain functions: brokers, topics, consumer groups with lag, a message browser.

Built on confluent-kafka's AdminClient and millrace.kafka.admin. Topic sizes come from the local stack's
log directories when the broker is millrace's own (this confluent-kafka has no describe_log_dirs);
otherwise ``size_bytes`` is null and ``messages`` (high - low watermark) is the size measure.
"""

from __future__ import annotations

import base64
import logging
import re
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from millrace.errors import KafkaUnavailable
from millrace.kafka.admin import topic_configs
from millrace.records import to_iso

log = logging.getLogger(__name__)

TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
MAX_PARTITIONS = 100


class TopicError(ValueError):
    """A topic request that cannot be honoured; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _metadata(admin: AdminClient, timeout_s: float) -> Any:
    try:
        return admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise KafkaUnavailable(f"cannot reach Kafka: {exc.args[0]}") from exc


def brokers(admin: AdminClient, timeout_s: float = 10.0, *, data_dirs: list[Path] | None = None) -> dict[str, Any]:
    """Cluster id, controller and brokers. ``log_size_bytes`` (the .log segments a broker holds) is known
    for millrace's own nodes, whose data dirs are ``node-<id>/data``; null otherwise."""
    cluster = admin.describe_cluster(request_timeout=timeout_s).result()
    controller = cluster.controller.id if cluster.controller else None
    sizes = _broker_sizes(data_dirs or [])
    nodes = [
        {
            "id": n.id,
            "host": n.host,
            "port": n.port,
            "rack": n.rack,
            "controller": n.id == controller,
            "log_size_bytes": sizes.get(n.id),
        }
        for n in sorted(cluster.nodes, key=lambda n: n.id)
    ]
    return {"cluster_id": cluster.cluster_id, "controller_id": controller, "brokers": nodes}


def _broker_sizes(data_dirs: list[Path]) -> dict[int, int]:
    sizes: dict[int, int] = {}
    for data_dir in data_dirs:
        node, sep, num = data_dir.parent.name.rpartition("-")
        if node != "node" or not sep or not num.isdigit():
            continue
        sizes[int(num)] = sum(_log_dir_sizes([data_dir]).values())
    return sizes


def _offsets(
    admin: AdminClient, partitions: list[TopicPartition], timeout_s: float
) -> dict[tuple[str, int], tuple[int, int] | None]:
    """(topic, partition) → (low, high) watermarks in two batched ListOffsets requests; None for a partition
    whose leader cannot answer right now (e.g. while it moves)."""
    if not partitions:
        return {}
    result: dict[tuple[str, int], list[int | None]] = {(tp.topic, tp.partition): [0, 0] for tp in partitions}
    for index, spec in ((0, OffsetSpec.earliest()), (1, OffsetSpec.latest())):
        futures = admin.list_offsets({tp: spec for tp in partitions}, request_timeout=timeout_s)
        for tp, future in futures.items():
            try:
                result[(tp.topic, tp.partition)][index] = future.result().offset
            except KafkaException as exc:
                log.debug("offsets of %s[%d]: %s", tp.topic, tp.partition, exc)
                result[(tp.topic, tp.partition)][index] = None
    return {k: (v[0], v[1]) if v[0] is not None and v[1] is not None else None for k, v in result.items()}


def _log_dir_sizes(data_dirs: list[Path]) -> dict[tuple[str, int], int]:
    sizes: dict[tuple[str, int], int] = {}
    for data_dir in data_dirs:
        if not data_dir.is_dir():
            continue
        for part_dir in data_dir.iterdir():
            topic, sep, partition = part_dir.name.rpartition("-")
            if not sep or not partition.isdigit() or not part_dir.is_dir():
                continue
            total = sum(f.stat().st_size for f in part_dir.iterdir() if f.suffix == ".log")
            key = (topic, int(partition))
            sizes[key] = sizes.get(key, 0) + total
    return sizes


def topics(
    admin: AdminClient,
    *,
    internal: bool = False,
    data_dirs: list[Path] | None = None,
    only: str | None = None,
    timeout_s: float = 10.0,
) -> list[dict[str, Any]]:
    """Every topic (or ``only`` that one) with partitions, leaders, replicas, ISR, watermarks, message count
    and size. Offsets a leader cannot serve right now are null."""
    meta = _metadata(admin, timeout_s)
    names = sorted(t for t in meta.topics if (internal or not t.startswith("__")) and only in (None, t))
    tps = [TopicPartition(t, p) for t in names for p in meta.topics[t].partitions]
    offsets = _offsets(admin, tps, timeout_s)
    sizes = _log_dir_sizes(data_dirs or [])
    out = []
    for name in names:
        parts = []
        for pid, part in sorted(meta.topics[name].partitions.items()):
            low, high = offsets.get((name, pid)) or (None, None)
            parts.append(
                {
                    "partition": pid,
                    "leader": part.leader,
                    "replicas": list(part.replicas),
                    "isr": list(part.isrs),
                    "low": low,
                    "high": high,
                    "messages": high - low if low is not None and high is not None else None,
                    "size_bytes": sizes.get((name, pid)),
                }
            )
        known = [p["size_bytes"] for p in parts if p["size_bytes"] is not None]
        out.append(
            {
                "name": name,
                "internal": name.startswith("__"),
                "partitions": parts,
                "partition_count": len(parts),
                "replication_factor": len(parts[0]["replicas"]) if parts else 0,
                "under_replicated": sum(1 for p in parts if len(p["isr"]) < len(p["replicas"])),
                "messages": sum(p["messages"] or 0 for p in parts),
                "size_bytes": sum(known) if known else None,
            }
        )
    return out


def topic(
    admin: AdminClient, name: str, *, data_dirs: list[Path] | None = None, timeout_s: float = 10.0
) -> dict[str, Any] | None:
    meta = _metadata(admin, timeout_s)
    if name not in meta.topics:
        return None
    found = topics(admin, internal=True, data_dirs=data_dirs, only=name, timeout_s=timeout_s)
    if not found:
        return None
    info = found[0]
    info["configs"] = topic_configs(admin, name)
    return info


def create_topic(
    admin: AdminClient,
    name: str,
    partitions: int,
    replication_factor: int,
    configs: dict[str, str] | None = None,
    *,
    timeout_s: float = 30.0,
) -> None:
    """Create a topic after validating name, partitions (1..100) and RF (≤ number of brokers)."""
    if not TOPIC_NAME.match(name) or name in (".", ".."):
        raise TopicError(422, "topic names are 1-249 characters of A-Z a-z 0-9 . _ - and not '.' or '..'")
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise TopicError(422, f"partitions must be between 1 and {MAX_PARTITIONS}")
    meta = _metadata(admin, timeout_s)
    if replication_factor < 1 or replication_factor > len(meta.brokers):
        raise TopicError(422, f"replication_factor must be between 1 and the number of brokers ({len(meta.brokers)})")
    if name in meta.topics:
        raise TopicError(409, f"topic {name} already exists")
    future = admin.create_topics(
        [NewTopic(name, partitions, replication_factor, config=dict(configs or {}))], operation_timeout=timeout_s
    )[name]
    try:
        future.result()
    except KafkaException as exc:
        err = exc.args[0]
        if err.name() == "TOPIC_ALREADY_EXISTS":
            raise TopicError(409, f"topic {name} already exists") from None
        if err.name() in (
            "INVALID_CONFIG",
            "INVALID_TOPIC_EXCEPTION",
            "INVALID_PARTITIONS",
            "INVALID_REPLICATION_FACTOR",
            "POLICY_VIOLATION",
            "INVALID_REQUEST",
        ):
            raise TopicError(422, err.str()) from None
        raise
    # The controller has the topic; wait (bounded) until the metadata shows it with leaders everywhere.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = _metadata(admin, timeout_s).topics.get(name)
        if found is not None and found.partitions and all(p.leader >= 0 for p in found.partitions.values()):
            return
        time.sleep(0.1)


def groups(admin: AdminClient, *, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Consumer groups with state, members and committed offset + lag per partition."""
    listed = admin.list_consumer_groups(request_timeout=timeout_s).result()
    ids = sorted(g.group_id for g in listed.valid)
    return [group(admin, gid, timeout_s=timeout_s) or {"group_id": gid} for gid in ids]


def group(admin: AdminClient, group_id: str, *, timeout_s: float = 10.0) -> dict[str, Any] | None:
    listed = admin.list_consumer_groups(request_timeout=timeout_s).result()
    if group_id not in {g.group_id for g in listed.valid}:
        return None
    desc = admin.describe_consumer_groups([group_id], request_timeout=timeout_s)[group_id].result()
    committed = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group_id)], request_timeout=timeout_s)[
        group_id
    ].result()
    parts = [tp for tp in committed.topic_partitions if tp.offset >= 0]
    highs = _offsets(admin, [TopicPartition(tp.topic, tp.partition) for tp in parts], timeout_s)
    offsets = []
    for tp in sorted(parts, key=lambda t: (t.topic, t.partition)):
        marks = highs.get((tp.topic, tp.partition))
        high = marks[1] if marks else None
        offsets.append(
            {
                "topic": tp.topic,
                "partition": tp.partition,
                "committed": tp.offset,
                "high": high,
                "lag": max(0, high - tp.offset) if high is not None else None,
            }
        )
    members = [
        {
            "member_id": m.member_id,
            "client_id": m.client_id,
            "host": m.host,
            "assignment": sorted(
                f"{tp.topic}[{tp.partition}]" for tp in (m.assignment.topic_partitions if m.assignment else [])
            ),
        }
        for m in desc.members
    ]
    state = getattr(desc.state, "name", str(desc.state))
    return {
        "group_id": group_id,
        "state": state,
        "members": members,
        "offsets": offsets,
        "lag": sum(o["lag"] or 0 for o in offsets),
    }


def pretty_value(value: bytes | None) -> tuple[Any, str]:
    """(value, format): parsed JSON, UTF-8 text, or base64 for binary."""
    if value is None:
        return None, "null"
    try:
        return orjson.loads(value), "json"
    except orjson.JSONDecodeError:
        pass
    try:
        return value.decode("utf-8"), "text"
    except UnicodeDecodeError:
        return base64.b64encode(value).decode(), "base64"


def browse(
    client_config: dict[str, Any],
    admin: AdminClient,
    name: str,
    *,
    limit: int = 20,
    partition: int | None = None,
    offset: int | None = None,
    timestamp_ms: int | None = None,
    key: str | None = None,
    scan: int = 10_000,
    timeout_s: float = 10.0,
) -> dict[str, Any] | None:
    """Browse a topic (of one partition if given) as a Kafka UI does.

    Without ``offset``/``timestamp_ms`` it reads the newest messages, newest first. With ``offset`` (on every
    selected partition) or ``timestamp_ms`` (the first offset at or after that time, per partition) it reads
    forward from there, oldest first. ``key`` keeps messages whose key contains it, looking at up to ``scan``
    messages per partition from the same starting point. Returns ``{"messages", "scanned", "complete"}``;
    ``complete`` is false when the deadline cut the read short. None for an unknown topic."""
    meta = _metadata(admin, timeout_s)
    if name not in meta.topics:
        return None
    pids = sorted(meta.topics[name].partitions)
    if partition is not None:
        if partition not in pids:
            raise TopicError(404, f"topic {name} has no partition {partition}")
        pids = [partition]
    marks = _offsets(admin, [TopicPartition(name, p) for p in pids], timeout_s)
    forward = offset is not None or timestamp_ms is not None
    starts: dict[int, int] = {}
    if timestamp_ms is not None:
        futures = admin.list_offsets(
            {TopicPartition(name, p): OffsetSpec.for_timestamp(timestamp_ms) for p in pids},
            request_timeout=timeout_s,
        )
        for tp, future in futures.items():
            try:
                found = future.result().offset
            except KafkaException as exc:  # its leader cannot answer now: like a partition without offsets
                log.debug("offset for time of %s[%d]: %s", tp.topic, tp.partition, exc)
                continue
            if found >= 0:  # -1: no message at or after that time
                starts[tp.partition] = max(found, offset or 0)
    elif offset is not None:
        starts = {p: offset for p in pids}
    span = scan if key else limit
    ranges: dict[int, tuple[int, int]] = {}
    for p in pids:
        low_high = marks.get((name, p))
        if low_high is None:
            continue
        low, high = low_high
        if forward:
            if p not in starts:
                continue
            start = max(low, starts[p])
            end = min(high, start + span)
        else:
            start, end = max(low, high - span), high
        if start < end:
            ranges[p] = (start, end)
    needle = key.encode() if key else None
    rows, scanned, complete = _read(client_config, name, ranges, needle, limit if forward else None, timeout_s)
    rows.sort(key=lambda r: (r["timestamp_ms"] or 0, r["partition"], r["offset"]), reverse=not forward)
    return {"messages": rows[:limit], "scanned": scanned, "complete": complete}


def _read(
    client_config: dict[str, Any],
    name: str,
    ranges: dict[int, tuple[int, int]],
    needle: bytes | None,
    enough: int | None,
    timeout_s: float,
) -> tuple[list[dict[str, Any]], int, bool]:
    """Messages of [start, end) per partition (those whose key contains ``needle``), a partition ending early
    once it has ``enough`` matches. Returns (rows, messages read, whether every range was read)."""
    if not ranges:
        return [], 0, True
    consumer = Consumer(
        {
            **client_config,
            "group.id": f"millrace-browse-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    rows: list[dict[str, Any]] = []
    found: dict[int, int] = dict.fromkeys(ranges, 0)
    scanned = 0
    remaining = set(ranges)
    try:
        consumer.assign([TopicPartition(name, p, start) for p, (start, _end) in ranges.items()])
        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                p = int(msg.partition() or 0)
                if p not in remaining:
                    continue
                err = msg.error()
                if err is not None:  # partition EOF ends a partition; other errors wait for the deadline
                    if err.code() == KafkaError._PARTITION_EOF:
                        remaining.discard(p)
                    continue
                off = int(msg.offset() or 0)
                end = ranges[p][1]
                if off >= end:
                    remaining.discard(p)
                    continue
                scanned += 1
                k = msg.key()
                if needle is None or (k is not None and needle in k):
                    rows.append(_row(msg))
                    found[p] += 1
                if off >= end - 1 or (enough is not None and found[p] >= enough):
                    remaining.discard(p)
    finally:
        consumer.close()
    return rows, scanned, not remaining


def _row(msg: Any) -> dict[str, Any]:
    ts_type, ts_ms = msg.timestamp()
    value, fmt = pretty_value(msg.value())
    key = msg.key()
    return {
        "partition": msg.partition(),
        "offset": msg.offset(),
        "timestamp_ms": ts_ms if ts_type else None,
        "timestamp": to_iso(datetime.fromtimestamp(ts_ms / 1000, UTC)) if ts_type else None,
        "key": key.decode("utf-8", "replace") if key is not None else None,
        "value": value,
        "format": fmt,
        "headers": {k: (v or b"").decode("utf-8", "replace") for k, v in (msg.headers() or [])},
        "size": len(msg.value() or b""),
    }
