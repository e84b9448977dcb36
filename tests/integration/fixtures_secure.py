"""One secured three-node cluster (`stack up --brokers 3 --secure`) for the whole test session.

test_secure_cluster.py, test_secure_drill.py and test_demo_secure.py share it: three JVMs at 512 MB heap start
once (30–70 s here), only when one of those tests runs. Tests kill brokers on purpose, so the per-test fixture
``secure_stack`` first restarts any node that is down and waits until the declared topics are fully
replicated again: every test starts from three live brokers, ISR 3.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from millrace.config import Settings, load_settings
from millrace.kafka.topics import declared_topics
from millrace.runtime import cluster as runtime_cluster
from millrace.runtime import kafka as runtime_kafka
from millrace.runtime.process import port_is_free
from millrace.runtime.security import load_security
from millrace.runtime.stack import Stack
from tests.helpers import wait_for

BROKERS = 3
STEP = 3  # node i: client base + 3 i, controller base + 3 i


def free_bases() -> tuple[int, int]:
    """Two port bases whose three nodes' ports are all free (random, so parallel sessions do not collide)."""
    for _ in range(200):
        client, controller = random.randrange(20_000, 40_000), random.randrange(40_000, 60_000)
        ports = [base + i * STEP for base in (client, controller) for i in range(BROKERS)]
        if all(port_is_free("127.0.0.1", p) for p in ports):
            return client, controller
    raise AssertionError("no free ports for three Kafka nodes")


@pytest.fixture(scope="session")
def secure_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The session's secured cluster, started through `Stack.up()` as `stack up --brokers 3 --secure` does."""
    client, controller = free_bases()
    settings = load_settings(
        state_dir=tmp_path_factory.mktemp("secure"),
        runtime={
            "brokers": BROKERS,
            "security": "sasl_ssl",
            "kafka_port": client,
            "controller_port": controller,
            "port_step": STEP,
            "kafka_heap": "512m",
            "start_timeout_s": 180,
        },
    )
    stack = Stack(settings)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


@pytest.fixture
def secure_stack(secure_cluster: Stack) -> Stack:
    """The session's secured cluster with all three brokers up and the declared topics at ISR 3."""
    down = [n.name for n in secure_cluster.kafka_cluster().nodes if secure_cluster.manager.running(n.name) is None]
    if down:
        restart(secure_cluster, *down)
    conf = conf_of(secure_cluster, "admin")
    names = [spec.name for spec in declared_topics(secure_cluster.settings.topics)]
    wait_for(
        lambda: all(full_isr(conf, t) for t in names), timeout_s=120, interval_s=1, what="declared topics at ISR 3"
    )
    return secure_cluster


def principal_settings(stack: Stack, principal: str) -> Settings:
    """The whole settings tree of a client running as ``principal`` (as a service would be configured)."""
    security = load_security(stack.settings.state_dir)
    assert security is not None
    bootstrap = stack.kafka_cluster().bootstrap_servers
    kafka = security.client_settings(principal, bootstrap)
    return stack.settings.model_copy(update={"kafka": kafka})


def conf_of(stack: Stack, principal: str) -> dict[str, Any]:
    return {**principal_settings(stack, principal).kafka.client_config(), "log_level": 0}


def node(stack: Stack, name: str) -> runtime_kafka.KafkaNode:
    return next(n for n in stack.kafka_cluster().nodes if n.name == name)


def restart(stack: Stack, *names: str) -> None:
    """Start the named nodes again (the runtime's own node spec) and wait until the cluster has all three."""
    cluster = stack.kafka_cluster()
    rt = stack.settings.runtime
    for name in names:
        spec = runtime_kafka.node_spec(
            cluster, node(stack, name), start_timeout_s=rt.start_timeout_s, stop_timeout_s=rt.stop_timeout_s
        )
        stack.manager.start(spec)
    runtime_cluster.wait_ready(cluster, deadline=time.monotonic() + 120)


def full_isr(conf: dict[str, Any], topic: str) -> bool:
    """Every partition has a leader and three in-sync replicas (metadata only: while leaders move after a
    restart, offset requests may answer NOT_LEADER_FOR_PARTITION)."""
    try:
        meta = AdminClient(conf).list_topics(topic, timeout=10).topics[topic]
    except KafkaException:  # no broker answered in time: not yet
        return False
    return bool(meta.partitions) and all(p.leader >= 0 and len(p.isrs) == 3 for p in meta.partitions.values())
