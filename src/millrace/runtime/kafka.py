"""Apache Kafka in KRaft mode as local JVM processes.

One combined broker+controller node now. The layout types already describe several nodes with their own
ports and data dirs, so a three-node cluster (and TLS/SASL listeners) is a matter of more ``KafkaNode``
entries and listener settings, not of new process code.
"""

from __future__ import annotations

import base64
import logging
import subprocess
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from millrace.errors import MillraceError
from millrace.runtime.distribution import resolve_jars
from millrace.runtime.process import ServerSpec, tcp_probe
from millrace.runtime.tools import require

log = logging.getLogger(__name__)

KAFKA_MAIN = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"


@dataclass(frozen=True)
class KafkaNode:
    node_id: int
    host: str
    client_port: int
    controller_port: int
    home: Path  # holds server.properties and data/

    @property
    def name(self) -> str:
        return f"kafka-{self.node_id}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def config_path(self) -> Path:
        return self.home / "server.properties"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.client_port}"


@dataclass(frozen=True)
class KafkaCluster:
    """The nodes of one local cluster and where its jars live."""

    nodes: tuple[KafkaNode, ...]
    lib_dir: Path
    heap: str = "768m"

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def quorum_bootstrap(self) -> str:
        return ",".join(f"{n.host}:{n.controller_port}" for n in self.nodes)


def single_node(
    state_dir: Path, cache_dir: Path, *, version: str, host: str, client_port: int, controller_port: int, heap: str
) -> KafkaCluster:
    """Resolve the jars (once) and describe a one-node cluster under ``state_dir/kafka``."""
    lib = resolve_jars("kafka", version, cache_dir)
    node = KafkaNode(1, host, client_port, controller_port, state_dir / "kafka" / "node-1")
    return KafkaCluster(nodes=(node,), lib_dir=lib, heap=heap)


def server_properties(cluster: KafkaCluster, node: KafkaNode) -> str:
    replicas = min(3, len(cluster.nodes))
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "listeners": f"PLAINTEXT://{node.host}:{node.client_port},CONTROLLER://{node.host}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{node.host}:{node.client_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.quorum.bootstrap.servers": cluster.quorum_bootstrap,
        "log.dirs": str(node.data_dir.resolve()),
        "num.partitions": "3",
        "default.replication.factor": str(replicas),
        "offsets.topic.replication.factor": str(replicas),
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "log.retention.check.interval.ms": "60000",
    }
    return "".join(f"{key}={value}\n" for key, value in props.items())


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (as ``StorageTool random-uuid``)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _java_base(cluster: KafkaCluster, *, heap: str | None = None) -> list[str]:
    log4j = Path(str(resources.files("millrace") / "resources" / "kafka" / "log4j2.properties"))
    return [
        require("java", "to run Kafka"),
        f"-Xmx{heap or cluster.heap}",
        "-Xms256m",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        f"{cluster.lib_dir}/*",  # expanded by the JVM, not a shell
    ]


def prepare(cluster: KafkaCluster, node: KafkaNode) -> None:
    """Write the node's config and format its storage the first time (data survives restarts)."""
    node.home.mkdir(parents=True, exist_ok=True)
    node.config_path.write_text(server_properties(cluster, node), encoding="utf-8")
    if (node.data_dir / "meta.properties").is_file():
        return
    id_file = node.home.parent / "cluster.id"
    if not id_file.is_file():
        id_file.write_text(new_cluster_id(), encoding="utf-8")
    cluster_id = id_file.read_text(encoding="utf-8").strip()
    argv = [*_java_base(cluster, heap="256m"), STORAGE_TOOL, "format", "-t", cluster_id, "-c", str(node.config_path)]
    if len(cluster.nodes) == 1:
        argv.insert(argv.index("-t"), "--standalone")
    log.info("formatting KRaft storage for %s", node.name)
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise MillraceError(
            f"formatting Kafka storage in {node.data_dir} failed (exit {result.returncode}):\n"
            + (result.stdout + result.stderr).strip()[-2000:]
        )


def metadata_probe(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True when a broker at ``bootstrap`` answers a metadata request with at least one broker."""
    from confluent_kafka.admin import AdminClient

    host, _, port = bootstrap.rpartition(":")
    if not tcp_probe(host, int(port)):
        return False
    # log_level 0: "connection refused" while the broker boots is expected, not worth a line on stderr.
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 1000, "log_level": 0})
    meta = admin.list_topics(timeout=timeout_s)
    return bool(meta.brokers)


def node_spec(cluster: KafkaCluster, node: KafkaNode, *, start_timeout_s: float, stop_timeout_s: float) -> ServerSpec:
    return ServerSpec(
        name=node.name,
        kind="kafka",
        argv=[*_java_base(cluster), KAFKA_MAIN, str(node.config_path)],
        ports={"client": node.client_port, "controller": node.controller_port},
        host=node.host,
        ready=lambda: metadata_probe(node.bootstrap),
        start_timeout_s=start_timeout_s,
        stop_timeout_s=stop_timeout_s,
    )
