"""A backup cluster fed by MirrorMaker 2 (``millrace stack up --mirror``), its lag, and failover to it.

The backup is a plaintext KRaft cluster of ``mirror.brokers`` nodes on ``mirror.kafka_port`` /
``mirror.controller_port`` (stepping by ``runtime.port_step``), recorded in the stack's process manager as
``backup-kafka-<id>``. MirrorMaker 2 runs in its dedicated mode as the managed process ``mirrormaker`` (kind
``mirror``, so ``stack down`` stops it before any broker). It copies the chosen topics under the same names
(IdentityReplicationPolicy), emits checkpoints and writes the translated offsets of consumer groups that are
not active on the backup into the backup's own group offsets.

Everything lives under ``<state_dir>/mirror``::

    kafka/                 the backup nodes' configs and data (as the primary's under <state_dir>/kafka)
    mm2.properties         MirrorMaker's configuration (owner-only: MM2's password when the primary is secured)
    primary-offsets.json   the primary's end offsets when last seen (`mirror status`), for a dead primary
    failover.toml          the clients' overlay while failed over (config.failover_path)

Lag and loss are offset arithmetic: with IdentityReplicationPolicy onto a backup that started empty, a record
keeps its offset (the backup partition holds the same offsets as long as the primary's log started at 0 when
mirroring began and no producer wrote transactions, whose markers take offsets MirrorMaker does not copy).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from millrace.config import KafkaSettings, RuntimeSettings, Settings, TopicSettings, failover_path
from millrace.errors import KafkaUnavailable, MillraceError
from millrace.kafka.acls import MIRROR
from millrace.kafka.client_config import check_connection, java_client_config, kafka_failure
from millrace.runtime import cluster, kafka
from millrace.runtime.distribution import resolve_jars
from millrace.runtime.process import ProcessManager, ProcessRecord, ServerSpec
from millrace.runtime.tools import require

log = logging.getLogger(__name__)

MM2_MAIN = "org.apache.kafka.connect.mirror.MirrorMaker"
MM2_NAME = "mirrormaker"
BACKUP_PREFIX = "backup-"
SOURCE, TARGET = "primary", "backup"  # MirrorMaker's cluster aliases
IDENTITY_POLICY = "org.apache.kafka.connect.mirror.IdentityReplicationPolicy"

Offsets = Mapping[tuple[str, int], int]  # (topic, partition) -> end offset


def mirror_home(state_dir: Path) -> Path:
    return state_dir / "mirror"


def mirrored_topics(topics: TopicSettings, chosen: Sequence[str] = ()) -> list[str]:
    """``chosen`` (mirror.topics), or by default the IoT topics."""
    if chosen:
        return list(dict.fromkeys(chosen))
    return [
        topics.readings,
        topics.dead_letter,
        topics.alerts,
        topics.predictions,
        topics.windowed_metrics,
        topics.quality,
        topics.device_commands,
        topics.recommendations,
    ]


def backup_runtime(settings: Settings) -> RuntimeSettings:
    m = settings.mirror
    changes = {
        "kafka_port": m.kafka_port,
        "controller_port": m.controller_port,
        "brokers": m.brokers,
        "kafka_heap": m.kafka_heap,
        "security": "none",
    }
    return settings.runtime.model_copy(update=changes)


def backup_cluster(settings: Settings) -> kafka.KafkaCluster:
    return cluster.describe(mirror_home(settings.state_dir), settings.cache_dir, backup_runtime(settings))


def backup_config(settings: Settings) -> dict[str, Any]:
    bootstrap = backup_cluster(settings).bootstrap_servers
    return KafkaSettings(bootstrap_servers=bootstrap, client_id="millrace-mirror").client_config()


def primary_cluster(settings: Settings) -> kafka.KafkaCluster:
    return cluster.describe(settings.state_dir, settings.cache_dir, settings.runtime, make_security=False)


def _escape(value: str) -> str:
    # java.util.Properties reads a backslash as an escape: a regex's "\." is written "\\.".
    return value.replace("\\", "\\\\")


def topics_regex(topics: Iterable[str]) -> str:
    """MirrorMaker's ``topics`` list: one exact-match regex per topic (its dots escaped)."""
    return ", ".join(t.replace(".", "\\.") for t in topics)


def mm2_properties(
    *,
    primary: Mapping[str, str],
    backup_bootstrap: str,
    topics: Sequence[str],
    groups: str,
    replication_factor: int,
    sync_interval_s: int,
    offset_lag_max: int,
) -> str:
    """MirrorMaker 2's properties for the one flow primary -> backup. ``primary``: the Java client settings of
    the primary (bootstrap.servers, and its security settings when secured)."""
    flow = f"{SOURCE}->{TARGET}"
    rf = str(replication_factor)
    props: dict[str, str] = {
        "clusters": f"{SOURCE}, {TARGET}",
        **{f"{SOURCE}.{key}": value for key, value in primary.items()},
        f"{TARGET}.bootstrap.servers": backup_bootstrap,
        f"{flow}.enabled": "true",
        # Without this MM2 also runs a backup->primary herder to emit heartbeats into the primary, which needs
        # its own topics (and rights) there.
        f"{TARGET}->{SOURCE}.enabled": "false",
        f"{TARGET}->{SOURCE}.emit.heartbeats.enabled": "false",
        f"{flow}.topics": topics_regex(topics),
        f"{flow}.groups": groups,
        "replication.policy.class": IDENTITY_POLICY,
        "replication.factor": rf,
        "checkpoints.topic.replication.factor": rf,
        "heartbeats.topic.replication.factor": rf,
        "offset-syncs.topic.replication.factor": rf,
        "offset.storage.replication.factor": rf,
        "config.storage.replication.factor": rf,
        "status.storage.replication.factor": rf,
        # MM2's bookkeeping on the backup: the primary only needs to be readable.
        "offset-syncs.topic.location": "target",
        "sync.topic.acls.enabled": "false",  # the backup has no authorizer
        "emit.checkpoints.enabled": "true",
        "emit.checkpoints.interval.seconds": str(sync_interval_s),
        "sync.group.offsets.enabled": "true",
        "sync.group.offsets.interval.seconds": str(sync_interval_s),
        "refresh.topics.interval.seconds": str(sync_interval_s),
        "refresh.groups.interval.seconds": str(sync_interval_s),
        # A group committed at the head of a partition is translated exactly once MM2 syncs the last record's
        # offset, which a quiet partition does at the next offset flush; offset.lag.max bounds how far behind
        # a translation may be elsewhere (the consumer then re-reads, never skips).
        "offset.lag.max": str(offset_lag_max),
        # A worker setting: MM2 takes those from the target cluster's prefix, not the flow's.
        f"{TARGET}.offset.flush.interval.ms": str(sync_interval_s * 1000),
    }
    header = "# Written by millrace (stack up --mirror); edits are overwritten on the next start.\n"
    return header + "".join(f"{key} = {_escape(value)}\n" for key, value in props.items())


# --- starting ------------------------------------------------------------------------------------------------


def start(manager: ProcessManager, settings: Settings) -> list[ProcessRecord]:
    """Start the backup nodes and MirrorMaker (what runs already is kept); ready once every mirrored topic
    present on the primary exists on the backup."""
    records = start_backup(manager, settings)
    records.append(start_mirrormaker(manager, settings))
    return records


def start_backup(manager: ProcessManager, settings: Settings) -> list[ProcessRecord]:
    home, rt = mirror_home(settings.state_dir), backup_runtime(settings)
    cluster.check_layout(home, rt)
    backup = backup_cluster(settings)
    deadline = time.monotonic() + rt.start_timeout_s
    id_file = cluster.cluster_home(home) / "cluster.id"
    if not id_file.is_file():
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(kafka.new_cluster_id(), encoding="utf-8")
    records = []
    for node in backup.nodes:
        if manager.running(BACKUP_PREFIX + node.name) is None:
            kafka.prepare(backup, node)
        spec = kafka.node_spec(backup, node, start_timeout_s=rt.start_timeout_s, stop_timeout_s=rt.stop_timeout_s)
        records.append(manager.start(replace(spec, name=BACKUP_PREFIX + node.name)))
    if len(backup.nodes) > 1:
        cluster.wait_ready(backup, deadline=deadline)
    return records


def _mirror_client(settings: Settings, primary: kafka.KafkaCluster) -> KafkaSettings:
    if primary.security is None:
        return KafkaSettings(bootstrap_servers=primary.bootstrap_servers)
    return primary.security.client_settings(MIRROR, primary.bootstrap_servers)


def ensure_scram_user(admin_conf: dict[str, Any], principal: str, password: str) -> None:
    """Create (or refresh) ``principal``'s SCRAM credential: a cluster formatted before the principal existed
    has no such user in its metadata."""
    from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    from millrace.kafka.admin import admin_client

    upsert = UserScramCredentialUpsertion(
        principal, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), password.encode()
    )
    try:
        for future in admin_client(admin_conf).alter_user_scram_credentials([upsert]).values():
            future.result()
    except Exception as exc:
        raise kafka_failure(f"creating the SCRAM user {principal}", exc) from exc


def start_mirrormaker(manager: ProcessManager, settings: Settings) -> ProcessRecord:
    m = settings.mirror
    primary = primary_cluster(settings)
    backup = backup_cluster(settings)
    client = _mirror_client(settings, primary)
    if primary.security is not None:
        ensure_scram_user(cluster.admin_config(primary), MIRROR, primary.security.password(MIRROR))
    topics = mirrored_topics(settings.topics, m.topics)
    props_path = mirror_home(settings.state_dir) / "mm2.properties"
    props_path.parent.mkdir(parents=True, exist_ok=True)
    text = mm2_properties(
        primary=java_client_config(client),
        backup_bootstrap=backup.bootstrap_servers,
        topics=topics,
        groups=m.groups,
        replication_factor=len(backup.nodes),
        sync_interval_s=m.sync_interval_s,
        offset_lag_max=m.offset_lag_max,
    )
    fd = os.open(props_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    lib = resolve_jars("mirror", settings.runtime.kafka_version, settings.cache_dir)
    log4j = Path(str(resources.files("millrace") / "resources" / "kafka" / "log4j2.properties"))
    argv = [
        require("java", "to run MirrorMaker 2"),
        f"-Xmx{m.heap}",
        "-Xms128m",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        f"{lib}/*",  # expanded by the JVM, not a shell
        MM2_MAIN,
        str(props_path),
    ]
    primary_conf, backup_conf = cluster.admin_config(primary), backup_config(settings)

    def ready() -> bool:
        wanted = set(topics) & set(_topic_names(primary_conf))
        return wanted <= set(_topic_names(backup_conf))

    spec = ServerSpec(
        name=MM2_NAME,
        kind="mirror",
        argv=argv,
        ports={},  # the dedicated mode serves no REST API
        host=settings.runtime.host,
        ready=ready,
        start_timeout_s=m.start_timeout_s,
        stop_timeout_s=settings.runtime.stop_timeout_s,
    )
    return manager.start(spec)


def _topic_names(conf: dict[str, Any], timeout_s: float = 5.0) -> list[str]:
    from millrace.kafka.admin import admin_client

    return list(admin_client(conf).list_topics(timeout=timeout_s).topics)


# --- lag, translated offsets and loss -------------------------------------------------------------------------


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

    existing = set(_topic_names(conf))
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
    the backup lacks, and write the overlay that points every client at the backup."""
    report = status(settings)
    if not report.primary_reachable and report.primary_seen_at is None:
        raise MillraceError(
            "the primary is unreachable and its end offsets were never recorded (`millrace mirror status` records "
            "them): cannot tell what was lost; remove nothing, investigate the primary first"
        )
    stopped = manager.stop(MM2_NAME, timeout_s=settings.runtime.stop_timeout_s)
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
