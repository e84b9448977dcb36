"""Real servers for integration tests, started once per session through millrace.runtime.

The broker runs on free ports with its own state dir, so tests never touch a user's stack on 9092.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from millrace.config import Settings, load_settings
from millrace.runtime.process import free_port
from millrace.runtime.stack import Stack
from tests.integration.fixtures_hdfs import hdfs  # noqa: F401  (session fixture)
from tests.integration.fixtures_secure import secure_cluster, secure_stack  # noqa: F401  (session fixtures)
from tests.integration.fixtures_shop import registry, shop_settings  # noqa: F401  (shop fixtures)

# The service tests build apps from these settings and call them without a token; test_api_auth.py turns
# authentication on explicitly for the apps it builds.
os.environ["MILLRACE_API__AUTH"] = "none"


def _settings(state_dir: Path, **overrides: object) -> Settings:
    kafka_port = free_port()
    controller_port = free_port()
    return load_settings(
        state_dir=state_dir,
        runtime={
            "kafka_port": kafka_port,
            "controller_port": controller_port,
            "kafka_heap": "512m",
            "mqtt_port": free_port(),
        },
        kafka={"bootstrap_servers": f"127.0.0.1:{kafka_port}"},
        **overrides,
    )


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One real Kafka broker for the whole test session (topics from the declared list applied)."""
    os.environ.pop("MILLRACE_KAFKA__BOOTSTRAP_SERVERS", None)
    stack = Stack(_settings(tmp_path_factory.mktemp("stack")))
    stack.up()
    try:
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="session")
def settings(stack: Stack) -> Settings:
    return stack.settings


@pytest.fixture
def client_config(settings: Settings) -> dict[str, object]:
    return settings.kafka.client_config()
