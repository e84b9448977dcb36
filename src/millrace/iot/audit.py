"""Reconcile the readings topic with the store and the dead-letter topic: is every record accounted for?

Every record at an offset of the readings topic ends in exactly one of these (docs/audit.md):

- **stored**: a measured reading in the store carries its (kafka_partition, kafka_offset);
- **dead-lettered**: a dead letter whose source is the readings topic names its ``partition:offset``;
- **deduplicated**: the job dropped it as a repeat of a reading it had already stored — the store holds its
  (sensor_id, timestamp) under another offset (the job counts duplicates per micro-batch but records no
  offsets, so this is decided by reading the record back from Kafka and looking its key up in the store);
- **missing**: none of the above — lost.

The store keeps one row per (sensor_id, timestamp), so a key cannot be stored twice; what can be repeated is
a *position*: two rows (different keys) that both claim the same offset, for example a reading stored again
under a shifted timestamp. Such an offset is **duplicated**. ``reconcile`` is pure (tested with hand-made
inputs); ``run_audit`` gathers its inputs from Kafka and the store.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pandas as pd

from millrace.config import Settings
from millrace.kafka.reader import read_all, read_offsets, watermarks
from millrace.stores.base import Store

log = logging.getLogger(__name__)

Position = tuple[int, int]  # (partition, offset)


@dataclass(frozen=True)
class PartitionAudit:
    partition: int
    low: int  # first offset still in the topic
    high: int  # next offset to be written
    produced: int  # records in [low, high)
    stored: int  # offsets held by at least one stored reading
    dead_lettered: int  # offsets named by a dead letter (and not stored)
    deduplicated: int  # offsets whose reading repeats a stored (sensor_id, timestamp)
    missing: int  # offsets in none of the above
    duplicated: int  # offsets held by more than one stored reading
    outside: int  # stored readings whose offset is not in [low, high) (expired by retention, or another topic)
    first_missing: tuple[int, ...]
    first_duplicated: tuple[int, ...]


@dataclass(frozen=True)
class AuditReport:
    topic: str
    partitions: tuple[PartitionAudit, ...]

    @property
    def ok(self) -> bool:
        return all(p.missing == 0 and p.duplicated == 0 for p in self.partitions)

    def total(self, field: str) -> int:
        return sum(int(getattr(p, field)) for p in self.partitions)

    def verdict(self) -> str:
        produced, missing, duplicated = self.total("produced"), self.total("missing"), self.total("duplicated")
        if self.ok:
            return f"ok: all {produced} records of {self.topic} accounted for"
        return f"FAILED: {missing} missing and {duplicated} duplicated of {produced} records of {self.topic}"

    def to_dict(self) -> dict[str, Any]:
        fields = ("produced", "stored", "dead_lettered", "deduplicated", "missing", "duplicated", "outside")
        return {
            "topic": self.topic,
            "ok": self.ok,
            "totals": {f: self.total(f) for f in fields},
            "partitions": [asdict(p) for p in self.partitions],
        }


def unaccounted(
    ranges: Mapping[int, tuple[int, int]], stored: Iterable[Position], dead: Iterable[Position]
) -> dict[int, list[int]]:
    """Per partition, the offsets in [low, high) neither stored nor dead-lettered, ascending: the candidates
    for deduplicated or missing."""
    known = set(stored) | set(dead)
    return {p: [o for o in range(low, high) if (p, o) not in known] for p, (low, high) in sorted(ranges.items())}


def reconcile(
    ranges: Mapping[int, tuple[int, int]],
    stored: Iterable[Position],
    dead: Iterable[Position],
    deduplicated: Iterable[Position] = (),
    *,
    topic: str = "",
    max_listed: int = 10,
) -> AuditReport:
    """Classify every offset of ``ranges`` (``{partition: (low, high)}``). ``stored`` has one position per
    stored row (repeats allowed: they are what makes an offset duplicated); ``dead`` and ``deduplicated`` may
    repeat (a replayed micro-batch produces its dead letters again). An offset is counted once, first match
    wins: stored, dead-lettered, deduplicated; otherwise missing."""
    rows = Counter(stored)
    dead_set, dedup_set = set(dead), set(deduplicated)
    parts = []
    for p, (low, high) in sorted(ranges.items()):
        counts = Counter[str]()
        missing: list[int] = []
        for o in range(low, high):
            if rows.get((p, o)):
                counts["stored"] += 1
            elif (p, o) in dead_set:
                counts["dead"] += 1
            elif (p, o) in dedup_set:
                counts["dedup"] += 1
            else:
                missing.append(o)
        repeated = sorted(o for (q, o), n in rows.items() if q == p and n > 1 and low <= o < high)
        outside = sum(n for (q, o), n in rows.items() if q == p and not low <= o < high)
        parts.append(
            PartitionAudit(
                partition=p,
                low=low,
                high=high,
                produced=high - low,
                stored=counts["stored"],
                dead_lettered=counts["dead"],
                deduplicated=counts["dedup"],
                missing=len(missing),
                duplicated=len(repeated),
                outside=outside,
                first_missing=tuple(missing[:max_listed]),
                first_duplicated=tuple(repeated[:max_listed]),
            )
        )
    return AuditReport(topic, tuple(parts))


def dead_letter_positions(payloads: Iterable[bytes | None], source: str) -> set[Position]:
    """Positions named by dead letters (records.DeadLetter JSON) whose source is ``source``; dead letters of
    other sources (a replayed file, the MQTT bridge) and unreadable payloads are skipped."""
    found: set[Position] = set()
    for payload in payloads:
        try:
            data = orjson.loads(payload or b"")
            partition, _, offset = str(data["position"]).partition(":")
            if data.get("source") == source:
                found.add((int(partition), int(offset)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return found


def reading_key(payload: bytes | None) -> tuple[str, datetime] | None:
    """(sensor_id, timestamp floored to the millisecond, as the store keeps it) of a reading's JSON, or None
    when the record is not a usable reading."""
    try:
        data = orjson.loads(payload or b"")
        stamp = pd.Timestamp(data["timestamp"])
        sensor_id = data["sensor_id"]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    if not isinstance(sensor_id, str) or pd.isna(stamp):
        return None
    stamp = stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)
    return sensor_id, stamp.floor("ms").to_pydatetime()


def stored_at(store: Store) -> Callable[[str, datetime], set[Position]]:
    """The positions of the *measured* readings the store holds at (sensor_id, timestamp) — at most one, the
    store keeps one row per key; an interpolated point at that key does not make a lost reading a duplicate."""

    def check(sensor_id: str, at: datetime) -> set[Position]:
        rows = store.readings(sensor_id, start=at, end=at + timedelta(milliseconds=1), limit=1)
        return {
            (int(r["kafka_partition"]), int(r["kafka_offset"]))
            for r in rows
            if r.get("kafka_offset") is not None and r.get("kafka_partition") is not None
        }

    return check


def recheck(
    records: Iterable[tuple[Position, tuple[str, datetime] | None]],
    held: Callable[[str, datetime], set[Position]],
) -> tuple[list[Position], set[Position]]:
    """The unaccounted records (position, store key) looked up by key: (stored, deduplicated). A record whose
    key is held under its *own* position was stored after the positions were read — a job still writing — and
    counts as stored; under another position, it is a repeat the job dropped (deduplicated)."""
    stored: list[Position] = []
    dedup: set[Position] = set()
    for position, key in records:
        found = held(*key) if key is not None else set()
        if position in found:
            stored.append(position)
        elif found:
            dedup.add(position)
    return stored, dedup


def run_audit(settings: Settings, store: Store, *, max_listed: int = 10) -> AuditReport:
    """Audit the readings topic of ``settings`` against ``store`` and the dead-letter topic.

    Run it on an idle pipeline: records the job has not reached yet count as missing. Raises KafkaUnavailable
    or StoreUnavailable when either cannot be reached.
    """
    client = settings.kafka.client_config()
    topic = settings.topics.readings
    ranges = watermarks(client, topic)
    positions = store.reading_positions()
    dead = dead_letter_positions((m.value() for m in read_all(client, settings.topics.dead_letter)), topic)
    candidates = unaccounted(ranges, positions, dead)
    log.info("audit: %d stored positions, %d dead letters", len(positions), len(dead))
    records = (
        ((partition, int(msg.offset() or 0)), reading_key(msg.value()))
        for partition, offsets in candidates.items()
        for msg in read_offsets(client, topic, {partition: offsets})
    )
    stored_since, dedup = recheck(records, stored_at(store))
    return reconcile(ranges, [*positions, *stored_since], dead, dedup, topic=topic, max_listed=max_listed)
