"""Security material of docker/compose.secure.yaml, made with millrace's own code (runtime/security.py).

Run once, by the ``security`` service, before the cluster starts (docker/README.md)::

    docker compose -f docker/compose.secure.yaml run --rm security

It writes into the bind-mounted ``docker/secure`` directory (``/etc/millrace/security`` in every container of the
layout) and keeps what is already there (a second run changes nothing: the brokers' SCRAM users and the clients
keep matching):

    ca.pem, ca.key                 the local CA (EC P-256) the clients trust
    node-<id>.pem                  each broker's PEM keystore, SAN kafka-<id>, localhost, 127.0.0.1
    credentials.json               a random password per principal
    node-<id>.properties           each broker's server.properties: SASL_SSL listeners (INTERNAL on the compose
                                   network, EXTERNAL on the published port), PLAIN on the controller listener,
                                   the StandardAuthorizer; the internal principal's password inside
    cluster.id                     the cluster id every node is formatted with
    scram.args                     the storage tool's --add-scram arguments (SCRAM users exist from the start)
    admin-client.properties        the admin principal as a Java client (the brokers' health check)
    clients/<principal>.env        MILLRACE_KAFKA__* for the containers acting as that principal
    host/<principal>.env           the same for a millrace on the host (localhost ports, CA under docker/secure)

Every file is owner-only (0600); the service runs as uid 1000, the ``appuser`` of the apache/kafka image, so
the brokers can read their files and nobody else on the host can.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from millrace.config import KafkaSettings
from millrace.kafka.acls import INTERNAL_PRINCIPAL, SUPER_USERS, all_principals
from millrace.kafka.client_config import java_client_config
from millrace.runtime import kafka
from millrace.runtime.security import (
    SCRAM_MECHANISM,
    ClusterSecurity,
    client_env,
    ensure_ca,
    ensure_credentials,
    ensure_node_cert,
)

BROKERS = 3
INTERNAL_PORT, CONTROLLER_PORT = 19092, 9093
EXTERNAL_PORTS = (9092, 9102, 9112)  # published on 127.0.0.1, as in compose.yaml
MOUNT = Path("/etc/millrace/security")  # where the brokers and millrace containers see this directory


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(path, 0o600)


def broker_properties(security: ClusterSecurity, node_id: int) -> str:
    """millrace's own secured node config (runtime/kafka.py), with two SASL_SSL listeners for containers."""
    nodes = tuple(
        kafka.KafkaNode(i, f"kafka-{i}", INTERNAL_PORT, CONTROLLER_PORT, Path("/var/lib/kafka"))
        for i in range(1, BROKERS + 1)
    )
    mounted = ClusterSecurity(home=MOUNT, passwords=security.passwords)
    cluster = kafka.KafkaCluster(nodes=nodes, lib_dir=Path("/opt/kafka/libs"), security=mounted)
    props = dict(line.split("=", 1) for line in kafka.server_properties(cluster, nodes[node_id - 1]).splitlines())
    jaas_key = f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config"
    jaas = props.pop(jaas_key)
    props.pop("listener.name.sasl_ssl.sasl.enabled.mechanisms")
    external = EXTERNAL_PORTS[node_id - 1]
    props.update(
        {
            "listeners": f"INTERNAL://:{INTERNAL_PORT},EXTERNAL://:{external},CONTROLLER://:{CONTROLLER_PORT}",
            "advertised.listeners": f"INTERNAL://kafka-{node_id}:{INTERNAL_PORT},EXTERNAL://localhost:{external}",
            "listener.security.protocol.map": "INTERNAL:SASL_SSL,EXTERNAL:SASL_SSL,CONTROLLER:SASL_SSL",
            "inter.broker.listener.name": "INTERNAL",
        }
    )
    for listener in ("internal", "external"):
        props[f"listener.name.{listener}.sasl.enabled.mechanisms"] = SCRAM_MECHANISM
        props[f"listener.name.{listener}.{SCRAM_MECHANISM.lower()}.sasl.jaas.config"] = jaas
    props["log.dirs"] = "/var/lib/kafka/data"
    return "".join(f"{key}={value}\n" for key, value in props.items())


def client_settings(security: ClusterSecurity, principal: str, *, bootstrap: str, ca: Path) -> KafkaSettings:
    return security.client_settings(principal, bootstrap).model_copy(update={"ssl_cafile": ca})


def make(out: Path, host_dir: Path) -> ClusterSecurity:
    """Everything listed in the module docstring, under ``out``; ``host_dir``: where ``out`` is on the host."""
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    ensure_ca(out)
    for node_id in range(1, BROKERS + 1):
        ensure_node_cert(out, node_id, [f"kafka-{node_id}", "localhost", "127.0.0.1"])
    passwords = ensure_credentials(out, [*all_principals(), INTERNAL_PRINCIPAL])
    security = ClusterSecurity(home=out, passwords=passwords)
    for node_id in range(1, BROKERS + 1):
        _write(out / f"node-{node_id}.properties", broker_properties(security, node_id))
    if not (out / "cluster.id").is_file():
        _write(out / "cluster.id", kafka.new_cluster_id() + "\n")
    scram = "".join(
        f"--add-scram\n{SCRAM_MECHANISM}=[name={name},password={security.password(name)}]\n"
        for name in sorted(passwords)
    )
    _write(out / "scram.args", scram)
    inside = ",".join(f"kafka-{i}:{INTERNAL_PORT}" for i in range(1, BROKERS + 1))
    admin = client_settings(security, "admin", bootstrap=inside, ca=MOUNT / "ca.pem")
    _write(out / "admin-client.properties", "".join(f"{k}={v}\n" for k, v in java_client_config(admin).items()))
    outside = ",".join(f"localhost:{port}" for port in EXTERNAL_PORTS)
    for principal in all_principals():
        if principal in SUPER_USERS and principal != "admin":
            continue
        container = client_settings(security, principal, bootstrap=inside, ca=MOUNT / "ca.pem")
        host = client_settings(security, principal, bootstrap=outside, ca=host_dir / "ca.pem")
        _write(out / "clients" / f"{principal}.env", _env(container))
        _write(out / "host" / f"{principal}.env", _env(host))
    return security


def _env(settings: KafkaSettings) -> str:
    # client_env resolves the CA path against this file system; the containers see MOUNT instead.
    lines = client_env(settings).splitlines()
    return "".join(
        (
            f"MILLRACE_KAFKA__SSL_CAFILE={settings.ssl_cafile}"
            if line.startswith("MILLRACE_KAFKA__SSL_CAFILE=")
            else line
        )
        + "\n"
        for line in lines
    )


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else MOUNT
    host_dir = Path(os.environ.get("MILLRACE_SECURE_HOST_DIR", "docker/secure"))
    make(target, host_dir)
    print(f"security material in {target} (host: {host_dir}); the brokers can start")
