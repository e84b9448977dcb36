"""Apache Kafka in KRaft mode as local JVM processes.

Combined broker+controller nodes, each with its own ports and data dir: one node with a dynamic quorum
(``format --standalone``), or several with static voters (``controller.quorum.voters``). With a
:class:`~millrace.runtime.security.ClusterSecurity` the listeners are SASL_SSL (see
:func:`secure_properties`); runtime.cluster builds and starts such clusters.
"""

from __future__ import annotations

import base64
import logging
import subprocess
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from millrace.errors import MillraceError
from millrace.kafka.acls import SUPER_USERS
from millrace.runtime.distribution import resolve_jars
from millrace.runtime.process import ServerSpec, tcp_probe
from millrace.runtime.security import SCRAM_MECHANISM, ClusterSecurity
from millrace.runtime.tools import require

log = logging.getLogger(__name__)

KAFKA_MAIN = "kafka.Kafka"
JMX_EXPORTER_VERSION = "1.0.1"
STORAGE_TOOL = "kafka.tools.StorageTool"


@dataclass(frozen=True)
class KafkaNode:
    node_id: int
    host: str
    client_port: int
    controller_port: int
    home: Path  # holds server.properties and data/
    jmx_port: int | None = None  # the Prometheus JMX exporter's port when the cluster loads it

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
    security: ClusterSecurity | None = None  # None: plaintext listeners, no authorizer
    jmx_agent: Path | None = None  # jmx_prometheus_javaagent jar: nodes with a jmx_port serve metrics

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def quorum_bootstrap(self) -> str:
        return ",".join(f"{n.host}:{n.controller_port}" for n in self.nodes)

    @property
    def quorum_voters(self) -> str:
        return ",".join(f"{n.node_id}@{n.host}:{n.controller_port}" for n in self.nodes)

    @property
    def client_role(self) -> str:
        """The name of the client port in the process records ("sasl_ssl" tells health checks to log in)."""
        return "client" if self.security is None else "sasl_ssl"


def single_node(
    state_dir: Path, cache_dir: Path, *, version: str, host: str, client_port: int, controller_port: int, heap: str
) -> KafkaCluster:
    """Resolve the jars (once) and describe a one-node cluster under ``state_dir/kafka``."""
    lib = resolve_jars("kafka", version, cache_dir)
    node = KafkaNode(1, host, client_port, controller_port, state_dir / "kafka" / "node-1")
    return KafkaCluster(nodes=(node,), lib_dir=lib, heap=heap)


def server_properties(cluster: KafkaCluster, node: KafkaNode) -> str:
    replicas = min(3, len(cluster.nodes))
    min_isr = 2 if replicas >= 3 else 1
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "listeners": f"PLAINTEXT://{node.host}:{node.client_port},CONTROLLER://{node.host}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{node.host}:{node.client_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.quorum.bootstrap.servers": cluster.quorum_bootstrap,
        "controller.quorum.voters": cluster.quorum_voters,
        "log.dirs": str(node.data_dir.resolve()),
        "num.partitions": "3",
        "default.replication.factor": str(replicas),
        "offsets.topic.replication.factor": str(replicas),
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(min_isr),
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": str(min_isr),
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "log.retention.check.interval.ms": "60000",
    }
    if len(cluster.nodes) == 1:
        del props["controller.quorum.voters"]  # one node: a dynamic quorum, formatted --standalone
    else:
        del props["controller.quorum.bootstrap.servers"]  # several: static voters, the same list everywhere
    if cluster.security is not None:
        props.update(secure_properties(cluster.security, node))
    return "".join(f"{key}={value}\n" for key, value in props.items())


def _jaas(module: str, **options: str) -> str:
    quoted = " ".join(f'{key}="{value}"' for key, value in options.items())
    return f"{module} required {quoted};"


def secure_properties(security: ClusterSecurity, node: KafkaNode) -> dict[str, str]:
    """SASL_SSL everywhere: SCRAM-SHA-512 for clients and between brokers, PLAIN on the controller listener
    (KRaft controllers cannot check SCRAM credentials: they live in the metadata the quorum serves), TLS with
    the local CA, the StandardAuthorizer denying whatever no ACL allows."""
    internal = "controller"
    password = security.password(internal)
    plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
    keystore, ca = str(security.keystore(node.node_id).resolve()), str(security.ca_file.resolve())
    return {
        "listeners": f"SASL_SSL://{node.host}:{node.client_port},CONTROLLER://{node.host}:{node.controller_port}",
        "advertised.listeners": f"SASL_SSL://{node.host}:{node.client_port}",
        "inter.broker.listener.name": "SASL_SSL",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SASL_SSL",
        "sasl.enabled.mechanisms": SCRAM_MECHANISM,
        "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.sasl_ssl.sasl.enabled.mechanisms": SCRAM_MECHANISM,
        f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": _jaas(
            scram, username=internal, password=password
        ),
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": _jaas(
            plain, username=internal, password=password, **{f"user_{internal}": password}
        ),
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": keystore,
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": ca,
        "ssl.endpoint.identification.algorithm": "https",
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "false",
        "super.users": ";".join(f"User:{name}" for name in SUPER_USERS),
    }


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
    node.config_path.chmod(0o600)  # holds the internal principal's password when secure
    if (node.data_dir / "meta.properties").is_file():
        return
    id_file = node.home.parent / "cluster.id"
    if not id_file.is_file():
        id_file.write_text(new_cluster_id(), encoding="utf-8")
    cluster_id = id_file.read_text(encoding="utf-8").strip()
    argv = [*_java_base(cluster, heap="256m"), STORAGE_TOOL, "format", "-t", cluster_id, "-c", str(node.config_path)]
    if len(cluster.nodes) == 1:
        argv.insert(argv.index("-t"), "--standalone")
    if cluster.security is not None:
        # SCRAM users are bootstrap metadata records: the same list on every node.
        for principal, password in sorted(cluster.security.passwords.items()):
            argv += ["--add-scram", f"{SCRAM_MECHANISM}=[name={principal},password={password.get_secret_value()}]"]
    log.info("formatting KRaft storage for %s", node.name)
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-2000:]
        for password in cluster.security.passwords.values() if cluster.security else ():
            output = output.replace(password.get_secret_value(), "**********")
        raise MillraceError(f"formatting Kafka storage in {node.data_dir} failed (exit {result.returncode}):\n{output}")


def jmx_agent_jar(cache_dir: Path) -> Path:
    """The Prometheus JMX exporter agent jar (resources/maven/jmx, resolved once into ``cache_dir``)."""
    lib = resolve_jars("jmx", JMX_EXPORTER_VERSION, cache_dir)
    return lib / f"jmx_prometheus_javaagent-{JMX_EXPORTER_VERSION}.jar"


def jmx_agent_option(jar: Path, host: str, port: int) -> str:
    """``-javaagent:`` serving the broker metrics of resources/monitoring/kafka-jmx.yaml on host:port."""
    rules = Path(str(resources.files("millrace") / "resources" / "monitoring" / "kafka-jmx.yaml"))
    return f"-javaagent:{jar}={host}:{port}:{rules}"


def metadata_probe(
    bootstrap: str, timeout_s: float = 2.0, *, client_config: dict[str, object] | None = None, brokers: int = 1
) -> bool:
    """True when a broker at ``bootstrap`` answers a metadata request with at least ``brokers`` brokers
    (``client_config``: the security settings of a secured cluster)."""
    from confluent_kafka.admin import AdminClient

    host, _, port = bootstrap.rpartition(":")
    if not tcp_probe(host, int(port)):
        return False
    # log_level 0: "connection refused" while the broker boots is expected, not worth a line on stderr.
    conf: dict[str, Any] = {**(client_config or {}), "bootstrap.servers": bootstrap}
    admin = AdminClient({**conf, "socket.connection.setup.timeout.ms": 1000, "log_level": 0})
    meta = admin.list_topics(timeout=timeout_s)
    return len(meta.brokers) >= brokers


def node_spec(cluster: KafkaCluster, node: KafkaNode, *, start_timeout_s: float, stop_timeout_s: float) -> ServerSpec:
    """One node's process. With several nodes a node alone cannot serve (the quorum needs a majority), so the
    nodes are started side by side and runtime.cluster.wait_ready checks the whole cluster (with a deadline)."""
    if len(cluster.nodes) == 1 and cluster.security is None:
        ready = lambda: metadata_probe(node.bootstrap)  # noqa: E731
    else:
        ready = lambda: True  # noqa: E731
    java, *options = _java_base(cluster)
    ports = {cluster.client_role: node.client_port, "controller": node.controller_port}
    if cluster.jmx_agent is not None and node.jmx_port is not None:
        options.insert(0, jmx_agent_option(cluster.jmx_agent, node.host, node.jmx_port))
        ports["jmx"] = node.jmx_port
    return ServerSpec(
        name=node.name,
        kind="kafka",
        argv=[java, *options, KAFKA_MAIN, str(node.config_path)],
        ports=ports,
        host=node.host,
        ready=ready,
        start_timeout_s=start_timeout_s,
        stop_timeout_s=stop_timeout_s,
    )
