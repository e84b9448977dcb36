"""A primary (one plaintext node), a backup (one node) and MirrorMaker 2 between them, started once per module
through ``Stack.up(mirror=True)``, with test topics of their own mirrored beside the IoT topics.

The settings are written to a TOML file so the CLI (``--config``) sees exactly what the fixture started."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from millrace.config import Settings, load_settings
from millrace.kafka.admin import admin_client
from millrace.runtime.process import free_port
from millrace.runtime.stack import Stack
from tests.helpers import unique

SYNC_INTERVAL_S = 2


@dataclass(frozen=True)
class MirrorStack:
    stack: Stack
    config_path: Path | None  # the settings file the CLI is given (None: built in code)
    topics: dict[str, str]  # role -> a test topic of its own, mirrored

    @property
    def settings(self) -> Settings:
        return self.stack.settings


@pytest.fixture(scope="module")
def mirror_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MirrorStack]:
    state_dir = tmp_path_factory.mktemp("mirror")
    topics = {role: unique(f"mirror-{role}") for role in ("copy", "groups", "drill")}
    kafka_port = free_port()
    config_path = state_dir / "millrace.toml"
    mirrored = ", ".join(f'"{t}"' for t in ["millrace.iot.readings", *topics.values()])
    config_path.write_text(
        f'state_dir = "{state_dir}"\n'
        f'[runtime]\nkafka_port = {kafka_port}\ncontroller_port = {free_port()}\nkafka_heap = "512m"\n'
        "start_timeout_s = 120\n"
        f'[kafka]\nbootstrap_servers = "127.0.0.1:{kafka_port}"\n'
        f"[mirror]\nkafka_port = {free_port()}\ncontroller_port = {free_port()}\ntopics = [{mirrored}]\n"
        f"sync_interval_s = {SYNC_INTERVAL_S}\nstart_timeout_s = 180\n"
        # JMX exporters on: MirrorMaker's metrics endpoint is scraped by test_mirror (primary, backup and
        # MirrorMaker on jmx_port + 0, 1, 2 steps).
        f"[monitoring]\nbroker_metrics = true\njmx_port = {free_port()}\n",
        encoding="utf-8",
    )
    stack = Stack(load_settings(config_path))
    try:
        stack.up()  # the primary first, so the test topics exist before MirrorMaker starts
        from confluent_kafka.admin import NewTopic

        admin = admin_client(stack.settings.kafka.client_config())
        for future in admin.create_topics([NewTopic(t, 3, 1) for t in topics.values()]).values():
            future.result(timeout=30)
        stack.up(mirror=True)
        yield MirrorStack(stack, config_path, topics)
    finally:
        stack.down()


@pytest.fixture(scope="module")
def secure_mirror_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MirrorStack]:
    """A secured primary (one node, SASL_SSL, ACLs enforced), a plaintext backup and MirrorMaker 2 reading the
    primary as its own principal with only the rights kafka/acls.py declares for it."""
    state_dir = tmp_path_factory.mktemp("mirror-secure")
    topics = {"secure": unique("mirror-secure")}
    settings = load_settings(
        state_dir=state_dir,
        runtime={
            "kafka_port": free_port(),
            "controller_port": free_port(),
            "kafka_heap": "512m",
            "security": "sasl_ssl",
            "start_timeout_s": 180,
        },
        mirror={
            "kafka_port": free_port(),
            "controller_port": free_port(),
            "topics": list(topics.values()),
            "sync_interval_s": SYNC_INTERVAL_S,
            "start_timeout_s": 180,
        },
    )
    stack = Stack(settings)
    try:
        stack.up()  # the primary with its ACLs (MirrorMaker's READ on the mirrored topic included)
        from confluent_kafka.admin import NewTopic

        admin = admin_client(stack.admin_config())
        for future in admin.create_topics([NewTopic(t, 3, 1) for t in topics.values()]).values():
            future.result(timeout=30)
        stack.up(mirror=True)
        yield MirrorStack(stack, None, topics)
    finally:
        stack.down()
