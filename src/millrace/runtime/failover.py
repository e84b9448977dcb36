"""Lag of the backup MirrorMaker 2 feeds, consumer group offsets on both sides, and failover to the backup.

Lag and loss are offset arithmetic: with IdentityReplicationPolicy onto a backup that started empty, a record
keeps its offset (the backup partition holds the same offsets as long as the primary's log started at 0 when
mirroring began and no producer wrote transactions, whose markers take offsets MirrorMaker does not copy).
The primary's end offsets are recorded whenever it is seen (``<state_dir>/mirror/primary-offsets.json``), so a
failover after its death still knows what it had acknowledged up to then.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from millrace.config import Settings, failover_path
from millrace.errors import KafkaUnavailable, MillraceError
from millrace.kafka.client_config import check_connection, kafka_failure
from millrace.runtime import cluster
from millrace.runtime.mirror import (
    MM2_NAME,
    backup_cluster,
    backup_config,
    mirror_home,
    mirrored_topics,
    primary_cluster,
    topic_names,
)
from millrace.runtime.process import ProcessManager

log = logging.getLogger(__name__)

Offsets = Mapping[tuple[str, int], int]  # (topic, partition) -> end offset


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    primary_end: int | None  # None: not on the primary (or not known)
    backup_end: int | None  # None: not (yet) on the backup

    @property
    def lag(self) -> int | None:
        if self.primary_end is None:
            return None
        return max(0, self.primary_end - (self.backup_end or 0))


@dataclass(frozen=True)
class GroupOffset:
    group: str
    topic: str
    partition: int
    primary: int | None  # the group's committed offset on the primary (None: unknown or none)
    backup: int | None  # the translated offset MirrorMaker wrote on the backup


@dataclass(frozen=True)
class MirrorStatus:
    partitions: list[PartitionLag]
    groups: list[GroupOffset]
    primary_reachable: bool
    primary_seen_at: str | None  # when the primary's end offsets were read (UTC, ISO 8601)

    @property
    def total_lag(self) -> int | None:
        lags = [p.lag for p in self.partitions]
        return None if any(lag is None for lag in lags) else sum(lag or 0 for lag in lags)


def lag_rows(primary: Offsets, backup: Offsets) -> list[PartitionLag]:
    """One row per partition known on either side, sorted by topic and partition."""
    keys = sorted(set(primary) | set(backup))
    return [PartitionLag(t, p, primary.get((t, p)), backup.get((t, p))) for t, p in keys]


def lost_records(primary: Offsets, backup: Offsets) -> dict[str, int]:
    """Per topic of ``primary``: records at offsets the primary acknowledged that the backup does not hold
    (a backup partition ahead of the primary's known end loses nothing; a missing one lost everything)."""
    lost: dict[str, int] = {}
    for (topic, partition), end in primary.items():
        lost[topic] = lost.get(topic, 0) + max(0, end - backup.get((topic, partition), 0))
    return dict(sorted(lost.items()))


def end_offsets(conf: dict[str, Any], topics: Iterable[str]) -> dict[tuple[str, int], int]:
    """High watermarks of the topics that exist (others are left out)."""
    from millrace.kafka.reader import watermarks

    existing = set(topic_names(conf))
    out: dict[tuple[str, int], int] = {}
    for topic in topics:
        if topic in existing:
            out.update({(topic, p): high for p, (_low, high) in watermarks(conf, topic).items()})
    return out


def committed_offsets(
    conf: dict[str, Any], topics: Iterable[str], timeout_s: float = 10.0
) -> dict[tuple[str, str, int], int]:
    """``(group, topic, partition) -> committed offset`` of every consumer group, on ``topics`` only."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    from millrace.kafka.admin import admin_client

    wanted = set(topics)
    admin = admin_client(conf)
    try:
        listing = admin.list_consumer_groups(request_timeout=timeout_s).result()
        out: dict[tuple[str, str, int], int] = {}
        for group in sorted(g.group_id for g in listing.valid):
            futures = admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group)], request_timeout=timeout_s
            )
            for result in futures.values():
                for tp in result.result().topic_partitions or []:
                    if tp.topic in wanted and tp.offset >= 0:
                        out[(group, tp.topic, tp.partition)] = tp.offset
    except MillraceError:
        raise
    except Exception as exc:
        raise kafka_failure(f"listing consumer group offsets at {conf.get('bootstrap.servers')}", exc) from exc
    return out


def _offsets_path(state_dir: Path) -> Path:
    return mirror_home(state_dir) / "primary-offsets.json"


def save_primary_offsets(state_dir: Path, offsets: Offsets, seen_at: str) -> None:
    data = {"seen_at": seen_at, "offsets": [[t, p, end] for (t, p), end in sorted(offsets.items())]}
    path = _offsets_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    tmp.replace(path)  # never a half-written file for a failover to read


def load_primary_offsets(state_dir: Path) -> tuple[dict[tuple[str, int], int], str | None]:
    path = _offsets_path(state_dir)
    if not path.is_file():
        return {}, None
    data = json.loads(path.read_text(encoding="utf-8"))
    return {(t, int(p)): int(end) for t, p, end in data["offsets"]}, str(data["seen_at"])


def _primary_alive(conf: dict[str, Any]) -> bool:
    try:
        check_connection(conf, timeout_s=5.0)
        return True
    except KafkaUnavailable:
        return False


def status(settings: Settings) -> MirrorStatus:
    """Lag per mirrored partition and the consumer groups' offsets on both sides. A reachable primary's end
    offsets are recorded for a later failover; an unreachable one's come from that record."""
    topics = mirrored_topics(settings.topics, settings.mirror.topics)
    backup_conf = backup_config(settings)
    try:
        check_connection(backup_conf, timeout_s=5.0)
    except KafkaUnavailable as exc:
        raise KafkaUnavailable(
            f"the backup cluster is not reachable ({exc}); start it with `stack up --mirror`"
        ) from None
    primary_conf = cluster.admin_config(primary_cluster(settings))
    alive = _primary_alive(primary_conf)
    if alive:
        seen_at: str | None = datetime.now(UTC).isoformat(timespec="seconds")
        primary_ends = end_offsets(primary_conf, topics)
        save_primary_offsets(settings.state_dir, primary_ends, seen_at or "")
        primary_groups = committed_offsets(primary_conf, topics)
    else:
        primary_ends, seen_at = load_primary_offsets(settings.state_dir)
        primary_groups = {}
    backup_ends = end_offsets(backup_conf, topics)
    backup_groups = committed_offsets(backup_conf, topics)
    groups = [
        GroupOffset(g, t, p, primary_groups.get((g, t, p)), backup_groups.get((g, t, p)))
        for g, t, p in sorted(set(primary_groups) | set(backup_groups))
    ]
    return MirrorStatus(lag_rows(primary_ends, backup_ends), groups, alive, seen_at)


@dataclass(frozen=True)
class FailoverReport:
    lost: dict[str, int]  # per topic: acknowledged on the primary, absent on the backup
    status: MirrorStatus
    overlay: Path
    backup_bootstrap: str
    mirrormaker_stopped: bool


def failover(manager: ProcessManager, settings: Settings) -> FailoverReport:
    """Stop MirrorMaker (clients now write to the backup: copying on would mix both histories), report what
    the backup lacks, and write the overlay that points every client at the backup.

    With a live primary (a planned switch) the loss is counted after MirrorMaker stopped, so it is what the
    backup will never get; stop the producers first and wait for lag 0 in ``status`` to lose nothing."""
    report = status(settings)  # refuses before anything changes when the backup is unreachable
    if not report.primary_reachable and report.primary_seen_at is None:
        raise MillraceError(
            "the primary is unreachable and its end offsets were never recorded (`millrace mirror status` records "
            "them), so what was lost cannot be told; nothing was switched"
        )
    stopped = manager.stop(MM2_NAME, timeout_s=settings.runtime.stop_timeout_s)
    if report.primary_reachable:
        report = status(settings)
    primary = {(r.topic, r.partition): r.primary_end for r in report.partitions if r.primary_end is not None}
    backup = {(r.topic, r.partition): r.backup_end for r in report.partitions if r.backup_end is not None}
    bootstrap = backup_cluster(settings).bootstrap_servers
    path = failover_path(settings.state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# Written by `millrace mirror failover` at {datetime.now(UTC).isoformat(timespec='seconds')}: every\n"
        "# millrace client of this state dir connects to the backup cluster. Switch back: `millrace mirror failback`\n"
        "# (or delete this file).\n"
        f'[kafka]\nbootstrap_servers = "{bootstrap}"\nsecurity_protocol = "PLAINTEXT"\n',
        encoding="utf-8",
    )
    return FailoverReport(lost_records(primary, backup), report, path, bootstrap, stopped)


def failback(settings: Settings) -> bool:
    """Remove the failover overlay; True if there was one."""
    path = failover_path(settings.state_dir)
    if not path.is_file():
        return False
    path.unlink()
    return True
