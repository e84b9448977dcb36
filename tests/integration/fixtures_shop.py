"""Shop fixtures: a real Apicurio Registry started through millrace.runtime (once per session, on a free port,
the same ServerSpec ``stack up --with registry`` runs), and fresh shop topics per test on the session broker.

Java 21+ and Maven are needed for the registry; when they are missing the fixture fails, it does not skip.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, TopicPartition

from millrace.config import Settings
from millrace.kafka.admin import apply_topics
from millrace.kafka.reader import watermarks
from millrace.kafka.topics import declared_topics
from millrace.runtime.process import ProcessManager, free_port
from millrace.runtime.registry import NAME, registry_spec, registry_url
from millrace.runtime.stack import Stack
from tests.helpers import unique

SHOP_TOPICS = (
    "shop_items",
    "shop_filtered_items",
    "shop_orders",
    "shop_client_search",
    "shop_stop_list",
    "shop_recommendations",
    "shop_dead_letter",
)


@pytest.fixture(scope="session")
def registry(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The registry's Confluent-compatible URL; its log is in the fixture's state dir (logs/registry.log)."""
    state_dir = tmp_path_factory.mktemp("registry")
    port = free_port()
    shop = stack.settings.shop.model_copy(
        update={"registry_port": port, "registry_url": registry_url("127.0.0.1", port)}
    )
    settings = stack.settings.model_copy(update={"shop": shop, "state_dir": state_dir})
    manager = ProcessManager(state_dir)
    manager.start(registry_spec(settings))
    try:
        yield shop.registry_url
    finally:
        assert manager.stop(NAME, timeout_s=30), "the registry did not stop"


@pytest.fixture
def shop_settings(settings: Settings, registry: str) -> Settings:
    """The session settings with fresh shop topics (created) and the session registry."""
    names = {field: unique(f"shop-{field.removeprefix('shop_')}") for field in SHOP_TOPICS}
    topics = settings.topics.model_copy(update=names)
    specs = [spec for spec in declared_topics(topics) if spec.name in names.values()]
    apply_topics(settings.kafka.client_config(), specs)
    shop = settings.shop.model_copy(update={"registry_url": registry})
    return settings.model_copy(update={"topics": topics, "shop": shop})


def shop_env(settings: Settings, state_dir: Path) -> dict[str, str]:
    """Environment for a ``millrace`` child process that uses ``settings``' broker, registry and shop topics."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}
    env.update(
        {
            "MILLRACE_STATE_DIR": str(state_dir),
            "MILLRACE_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "MILLRACE_SHOP__REGISTRY_URL": settings.shop.registry_url,
            "PYTHONIOENCODING": "utf-8",
            "COLUMNS": "200",
        }
    )
    for field in SHOP_TOPICS:
        env[f"MILLRACE_TOPICS__{field.upper()}"] = getattr(settings.topics, field)
    return env


def read_topic(client_config: dict[str, Any], topic: str, *, timeout_s: float = 30.0) -> list[Message]:
    """Every record of ``topic`` up to its high watermarks, partition by partition in offset order. Polls
    with short waits until each partition reaches its watermark (a batch ``consume`` waits out its whole
    timeout when fewer records than asked for are left: seconds per partition on small topics)."""
    marks = {p: (low, high) for p, (low, high) in watermarks(client_config, topic).items() if high > low}
    consumer = Consumer(
        {**client_config, "group.id": f"test-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False, "log_level": 0}
    )
    consumer.assign([TopicPartition(topic, p, low) for p, (low, _) in marks.items()])
    records: dict[int, list[Message]] = {p: [] for p in marks}
    position = {p: low for p, (low, _) in marks.items()}
    deadline = time.monotonic() + timeout_s
    try:
        while any(position[p] < high for p, (_, high) in marks.items()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: not read to its watermarks {marks} within {timeout_s:.0f} s")
            for msg in consumer.consume(1000, 0.2):
                assert msg.error() is None, msg.error()
                records[msg.partition()].append(msg)
                position[msg.partition()] = msg.offset() + 1
    finally:
        consumer.close()
    return [msg for p in sorted(records) for msg in records[p]]
