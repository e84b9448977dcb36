"""A local Kafka cluster of one or more KRaft nodes, plaintext or secured, started and checked as a whole.

Node i (from 0) of ``runtime.brokers`` nodes listens on ``kafka_port + i * port_step`` (clients and
inter-broker) and ``controller_port + i * port_step`` (the quorum); its data is in
``<state_dir>/kafka/node-<id>``. With ``runtime.security = "sasl_ssl"`` the security material is made once
under ``<state_dir>/kafka/security`` (runtime.security) and every listener requires TLS and SASL.

The layout a state dir was formatted with is recorded in ``<state_dir>/kafka/layout.json``: a state dir holding
a one-node plaintext cluster cannot silently become a secured three-node one (its metadata has no SCRAM users
and a different quorum), so such a change is refused with the way out.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from millrace.config import KafkaSettings, RuntimeSettings
from millrace.errors import ConfigError, ServerStartError
from millrace.kafka.acls import ADMIN
from millrace.runtime import kafka
from millrace.runtime.distribution import resolve_jars
from millrace.runtime.process import ProcessManager, ProcessRecord, tail
from millrace.runtime.security import ClusterSecurity, ensure_security, load_security, write_client_envs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    brokers: int
    security: str


def cluster_home(state_dir: Path) -> Path:
    return state_dir / "kafka"


def describe(
    state_dir: Path, cache_dir: Path, rt: RuntimeSettings, *, make_security: bool = True, jmx_port: int | None = None
) -> kafka.KafkaCluster:
    """The cluster ``rt`` asks for under ``state_dir`` (jars resolved once; security material made once). With
    ``jmx_port`` node i loads the Prometheus JMX exporter on ``jmx_port + i * rt.port_step``."""
    home = cluster_home(state_dir)
    nodes = tuple(
        kafka.KafkaNode(
            i + 1,
            rt.host,
            rt.kafka_port + i * rt.port_step,
            rt.controller_port + i * rt.port_step,
            home / f"node-{i + 1}",
            jmx_port=None if jmx_port is None else jmx_port + i * rt.port_step,
        )
        for i in range(rt.brokers)
    )
    security: ClusterSecurity | None = None
    if rt.security == "sasl_ssl":
        security = (
            ensure_security(state_dir, [n.node_id for n in nodes], {rt.host})
            if make_security
            else load_security(state_dir)
        )
    lib = resolve_jars("kafka", rt.kafka_version, cache_dir)
    agent = kafka.jmx_agent_jar(cache_dir) if jmx_port is not None else None
    return kafka.KafkaCluster(nodes=nodes, lib_dir=lib, heap=rt.kafka_heap, security=security, jmx_agent=agent)


def check_layout(state_dir: Path, rt: RuntimeSettings) -> None:
    """Refuse to start a layout other than the one the state dir's Kafka data was formatted with."""
    path = cluster_home(state_dir) / "layout.json"
    wanted = Layout(rt.brokers, rt.security)
    formatted = any(cluster_home(state_dir).glob("node-*/data/meta.properties"))
    if path.is_file():
        have = Layout(**json.loads(path.read_text(encoding="utf-8")))
    elif formatted:
        have = Layout(1, "none")  # formatted before layouts were recorded: the one-node plaintext stack
    else:
        have = wanted
    if have != wanted:
        raise ConfigError(
            f"the Kafka data in {cluster_home(state_dir)} belongs to a {have.brokers}-node cluster with security "
            f"{have.security!r}, not {wanted.brokers} with {wanted.security!r} (runtime.brokers, runtime.security); "
            "use another --state-dir, or remove that directory to start afresh"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(wanted.__dict__), encoding="utf-8")


def admin_settings(cluster: kafka.KafkaCluster) -> KafkaSettings:
    """Client settings of the admin principal (plaintext when the cluster is not secured)."""
    if cluster.security is None:
        return KafkaSettings(bootstrap_servers=cluster.bootstrap_servers)
    return cluster.security.client_settings(ADMIN, cluster.bootstrap_servers)


def admin_config(cluster: kafka.KafkaCluster) -> dict[str, Any]:
    return admin_settings(cluster).client_config()


def start(
    manager: ProcessManager, cluster: kafka.KafkaCluster, *, start_timeout_s: float, stop_timeout_s: float
) -> list[ProcessRecord]:
    """Start every node that is not running, then wait (until ``start_timeout_s``) for all of them to be
    registered brokers answering the admin principal. A cluster that is not ready is stopped again."""
    deadline = time.monotonic() + start_timeout_s
    # Formatting is a JVM per node (seconds each on a busy machine): format the nodes side by side, with the
    # cluster id every node shares written first.
    id_file = cluster.nodes[0].home.parent / "cluster.id"
    if not id_file.is_file():
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(kafka.new_cluster_id(), encoding="utf-8")
    with ThreadPoolExecutor(max_workers=len(cluster.nodes)) as pool:
        todo = [n for n in cluster.nodes if manager.running(n.name) is None]
        for future in [pool.submit(kafka.prepare, cluster, node) for node in todo]:
            future.result()
    records = []
    for node in cluster.nodes:
        spec = kafka.node_spec(cluster, node, start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s)
        records.append(manager.start(spec))
    if len(cluster.nodes) == 1 and cluster.security is None:
        return records  # the node's own probe already asked for metadata
    wait_ready(cluster, deadline=deadline, manager=manager, stop_timeout_s=stop_timeout_s)
    if cluster.security is not None:
        write_client_envs(cluster.security, cluster.bootstrap_servers)
    return records


def wait_ready(
    cluster: kafka.KafkaCluster, *, deadline: float, manager: ProcessManager | None = None, stop_timeout_s: float = 20.0
) -> None:
    """Wait until every node is a registered broker, seen through the admin principal's connection."""
    conf = admin_config(cluster)
    delay = 0.2
    while time.monotonic() < deadline:
        for node in cluster.nodes:
            if manager is not None and manager.running(node.name) is None:
                raise ServerStartError(
                    f"{node.name} exited while the cluster was starting; last lines of its log:\n"
                    + tail(manager.log_path(node.name))
                )
        try:
            if kafka.metadata_probe(cluster.nodes[0].bootstrap, client_config=conf, brokers=len(cluster.nodes)):
                return
        except Exception as exc:  # "not yet" shows as any client error while the quorum forms
            log.debug("cluster probe: %s", exc)
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)
    names = ", ".join(n.name for n in cluster.nodes)
    if manager is not None:
        for node in cluster.nodes:
            manager.stop(node.name, timeout_s=stop_timeout_s)
        last = tail(manager.log_path(cluster.nodes[0].name))
        raise ServerStartError(f"the Kafka cluster ({names}) was not ready in time; last lines of kafka-1:\n{last}")
    raise ServerStartError(f"the Kafka cluster ({names}) was not ready in time")


def stop_all(manager: ProcessManager, names: list[str], *, timeout_s: float) -> list[str]:
    """SIGTERM every node at once, then wait for each (a node stopped alone while the others keep the quorum
    would wait for a controlled shutdown the last nodes cannot give each other)."""
    import threading

    stopped: list[str] = []
    lock = threading.Lock()

    def stop_one(name: str) -> None:
        if manager.stop(name, timeout_s=timeout_s):
            with lock:
                stopped.append(name)

    threads = [threading.Thread(target=stop_one, args=(name,)) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(stopped)
