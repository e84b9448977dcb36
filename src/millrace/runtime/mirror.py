"""A backup cluster fed by MirrorMaker 2 (``millrace stack up --mirror``), its lag, and failover to it.

The backup is a plaintext KRaft cluster of ``mirror.brokers`` nodes on ``mirror.kafka_port`` /
``mirror.controller_port`` (stepping by ``runtime.port_step``), recorded in the stack's process manager as
``backup-kafka-<id>``. MirrorMaker 2 runs in its dedicated mode as the managed process ``mirrormaker`` (kind
``mirror``, so ``stack down`` stops it before any broker). With broker metrics on (``--with monitoring``,
``monitoring.broker_metrics``) it loads the Prometheus JMX exporter with resources/monitoring/mirror-jmx.yaml on
:func:`mirrormaker_jmx_port`, recorded as its ``jmx`` port: runtime.monitoring scrapes it as job
``mirrormaker``. It copies the chosen topics under the same names (IdentityReplicationPolicy), emits checkpoints
and writes the translated offsets of consumer groups that are not active on the backup into the backup's own
group offsets.

Everything lives under ``<state_dir>/mirror``::

    kafka/                 the backup nodes' configs and data (as the primary's under <state_dir>/kafka)
    mm2.properties         MirrorMaker's configuration (owner-only: MM2's password when the primary is secured)
    primary-offsets.json   the primary's end offsets when last seen (runtime/failover.py)
    failover.toml          the clients' overlay while failed over (config.failover_path)

Lag, translated offsets and failover: runtime/failover.py.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from millrace.config import KafkaSettings, RuntimeSettings, Settings, TopicSettings, failover_path
from millrace.kafka.acls import MIRROR, iot_topics
from millrace.kafka.client_config import java_client_config, kafka_failure
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


def mirror_home(state_dir: Path) -> Path:
    return state_dir / "mirror"


def mirrored_topics(topics: TopicSettings, chosen: Sequence[str] = ()) -> list[str]:
    """``chosen`` (mirror.topics), or by default the IoT topics."""
    if chosen:
        return list(dict.fromkeys(chosen))
    return iot_topics(topics)


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


def backup_cluster(settings: Settings, *, broker_metrics: bool = False) -> kafka.KafkaCluster:
    """The backup nodes; with ``broker_metrics`` node i serves JMX metrics (runtime.monitoring scrapes them as job
    kafka-backup) on monitoring.jmx_port + (runtime.brokers + i) * runtime.port_step, after the primary's."""
    rt = settings.runtime
    jmx_port = settings.monitoring.jmx_port + rt.brokers * rt.port_step if broker_metrics else None
    home, backup_rt = mirror_home(settings.state_dir), backup_runtime(settings)
    return cluster.describe(home, settings.cache_dir, backup_rt, jmx_port=jmx_port)


def mirrormaker_jmx_port(settings: Settings) -> int:
    """MirrorMaker's JMX exporter port: the next step after the primary's and the backup's nodes."""
    rt = settings.runtime
    return settings.monitoring.jmx_port + (rt.brokers + settings.mirror.brokers) * rt.port_step


def mirrormaker_agent_option(jar: Path, host: str, port: int) -> str:
    """``-javaagent:`` serving MirrorMaker's metrics (resources/monitoring/mirror-jmx.yaml) on host:port."""
    rules = Path(str(resources.files("millrace") / "resources" / "monitoring" / "mirror-jmx.yaml"))
    return f"-javaagent:{jar}={host}:{port}:{rules}"


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
        # Connect's jars declare their plugins: no classpath scan at start (seconds on a busy machine).
        "plugin.discovery": "service_load",
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


def start(manager: ProcessManager, settings: Settings, *, broker_metrics: bool = False) -> list[ProcessRecord]:
    """Start the backup nodes and MirrorMaker (what runs already is kept); ready once every mirrored topic
    present on the primary exists on the backup. While failed over the backup is what clients use, and
    MirrorMaker stays stopped: it would copy the primary into topics the clients now write on the backup."""
    records = start_backup(manager, settings, broker_metrics=broker_metrics)
    if failover_path(settings.state_dir).is_file():
        log.warning("failed over to the backup: MirrorMaker not started (`millrace mirror failback` first)")
        return records
    records.append(start_mirrormaker(manager, settings, metrics=broker_metrics))
    if broker_metrics:
        from millrace.runtime import monitoring

        # Monitoring already running (its target dir exists) learns of the new exporters without a restart.
        if monitoring.targets_dir(settings.state_dir).is_dir():
            monitoring.register_jmx_targets(settings.state_dir)
    return records


def start_backup(manager: ProcessManager, settings: Settings, *, broker_metrics: bool = False) -> list[ProcessRecord]:
    home, rt = mirror_home(settings.state_dir), backup_runtime(settings)
    cluster.check_layout(home, rt)
    backup = backup_cluster(settings, broker_metrics=broker_metrics)
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
    admin = admin_client(admin_conf)  # referenced until the futures resolve: a collected client cancels them
    try:
        for future in admin.alter_user_scram_credentials([upsert]).values():
            future.result()
    except Exception as exc:
        raise kafka_failure(f"creating the SCRAM user {principal}", exc) from exc


def start_mirrormaker(manager: ProcessManager, settings: Settings, *, metrics: bool = False) -> ProcessRecord:
    """``metrics``: load the JMX exporter (the brokers' agent jar, MirrorMaker's own rules)."""
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
    ports: dict[str, int] = {}  # the dedicated mode serves no REST API
    if metrics:
        host, port = settings.runtime.host, mirrormaker_jmx_port(settings)
        argv.insert(1, mirrormaker_agent_option(kafka.jmx_agent_jar(settings.cache_dir), host, port))
        ports["jmx"] = port
    primary_conf, backup_conf = cluster.admin_config(primary), backup_config(settings)

    def ready() -> bool:
        wanted = set(topics) & set(topic_names(primary_conf))
        return wanted <= set(topic_names(backup_conf))

    spec = ServerSpec(
        name=MM2_NAME,
        kind="mirror",
        argv=argv,
        ports=ports,
        host=settings.runtime.host,
        ready=ready,
        start_timeout_s=m.start_timeout_s,
        stop_timeout_s=settings.runtime.stop_timeout_s,
    )
    return manager.start(spec)


def topic_names(conf: dict[str, Any], timeout_s: float = 5.0) -> list[str]:
    from millrace.kafka.admin import admin_client

    return list(admin_client(conf).list_topics(timeout=timeout_s).topics)
