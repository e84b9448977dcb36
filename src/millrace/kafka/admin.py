"""Admin helpers: apply the declared topics idempotently, list and describe topics."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from millrace.errors import KafkaUnavailable, MillraceError
from millrace.kafka.topics import TopicSpec

log = logging.getLogger(__name__)


def admin_client(client_config: dict[str, Any]) -> AdminClient:
    return AdminClient(dict(client_config))


def _metadata(admin: AdminClient, timeout_s: float) -> Any:
    try:
        return admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise KafkaUnavailable(f"cannot reach Kafka: {exc.args[0]}") from exc


def apply_topics(client_config: dict[str, Any], specs: Sequence[TopicSpec], timeout_s: float = 30.0) -> dict[str, str]:
    """Create missing topics, raise partition counts, and set configs that differ.

    Returns ``{topic: "created" | "updated" | "unchanged"}``. Safe to run any number of times.
    """
    admin = admin_client(client_config)
    existing = _metadata(admin, timeout_s).topics
    result: dict[str, str] = {}
    missing = [s for s in specs if s.name not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, s.replication_factor, config=s.configs()) for s in missing],
            operation_timeout=timeout_s,
        )
        for name, future in futures.items():
            try:
                future.result()
                result[name] = "created"
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise MillraceError(f"creating topic {name} failed: {exc.args[0].str()}") from exc
                result[name] = "unchanged"
    for spec in specs:
        if spec.name in result:
            continue
        changed = False
        partitions = len(existing[spec.name].partitions)
        if partitions < spec.partitions:
            admin.create_partitions([NewPartitions(spec.name, spec.partitions)])[spec.name].result()
            changed = True
        current = topic_configs(admin, spec.name)
        wanted = {k: v for k, v in spec.configs().items() if current.get(k) != v}
        if wanted:
            resource = ConfigResource(
                ConfigResource.Type.TOPIC,
                spec.name,
                incremental_configs=[
                    ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in wanted.items()
                ],
            )
            for future in admin.incremental_alter_configs([resource]).values():
                future.result()
            changed = True
        result[spec.name] = "updated" if changed else "unchanged"
    return result


def topic_configs(admin: AdminClient, topic: str) -> dict[str, str]:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = next(iter(admin.describe_configs([resource]).values())).result()
    return {name: entry.value for name, entry in entries.items()}


@dataclass(frozen=True)
class PartitionInfo:
    partition: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    low: int
    high: int

    @property
    def messages(self) -> int:
        return self.high - self.low


@dataclass(frozen=True)
class TopicInfo:
    name: str
    partitions: tuple[PartitionInfo, ...]
    configs: dict[str, str]

    @property
    def messages(self) -> int:
        return sum(p.messages for p in self.partitions)


def list_topics(client_config: dict[str, Any], *, internal: bool = False, timeout_s: float = 10.0) -> list[str]:
    topics = _metadata(admin_client(client_config), timeout_s).topics
    return sorted(t for t in topics if internal or not t.startswith("__"))


def describe_topic(client_config: dict[str, Any], name: str, timeout_s: float = 10.0) -> TopicInfo:
    """Partitions with leader, replicas, ISR and low/high watermarks, plus the topic's configs."""
    admin = admin_client(client_config)
    meta = _metadata(admin, timeout_s).topics.get(name)
    if meta is None:
        raise MillraceError(f"topic {name} does not exist (see `millrace topics list`)")
    consumer = Consumer({**client_config, "group.id": "millrace-describe", "enable.auto.commit": False})
    try:
        parts = []
        for pid, part in sorted(meta.partitions.items()):
            low, high = consumer.get_watermark_offsets(TopicPartition(name, pid), timeout=timeout_s)
            parts.append(PartitionInfo(pid, part.leader, tuple(part.replicas), tuple(part.isrs), low, high))
    finally:
        consumer.close()
    return TopicInfo(name, tuple(parts), topic_configs(admin, name))


def delete_topics(client_config: dict[str, Any], names: Sequence[str], timeout_s: float = 30.0) -> None:
    admin = admin_client(client_config)
    for future in admin.delete_topics(list(names), operation_timeout=timeout_s).values():
        future.result()
