"""Admin helpers: apply the declared topics idempotently, list and describe topics; Kafka errors as one line.

Every function here raises MillraceError (KafkaUnavailable when the cluster cannot be reached) rather than a
raw ``KafkaException``: an authorization failure on a cluster with ACLs says which permission is missing."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
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


# Error codes meaning "the cluster cannot be reached" rather than "it refused".
UNREACHABLE = {"_TRANSPORT", "_TIMED_OUT", "_ALL_BROKERS_DOWN", "_RESOLVE", "REQUEST_TIMED_OUT", "_DESTROY"}
# What each authorization failure needs, said the way an operator grants it.
AUTHORIZATION = {
    "TOPIC_AUTHORIZATION_FAILED": "an ACL allowing it on the topic",
    "CLUSTER_AUTHORIZATION_FAILED": "an ACL allowing it on the cluster resource",
    "GROUP_AUTHORIZATION_FAILED": "an ACL allowing it on the consumer group",
    "TRANSACTIONAL_ID_AUTHORIZATION_FAILED": "an ACL allowing it on the transactional id",
    "DELEGATION_TOKEN_AUTHORIZATION_FAILED": "an ACL allowing it on delegation tokens",
}


def kafka_error(exc: KafkaException | KafkaError, action: str, servers: str = "") -> MillraceError:
    """One line for a failed Kafka call: ``action`` ("create topic x") plus what the error means. Takes the
    exception or its ``KafkaError``; of the client settings it names only the bootstrap ``servers`` (no
    secret can leak)."""
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else exc
    if not isinstance(error, KafkaError):
        return MillraceError(f"{action} failed: {error}")
    name, text = error.name(), error.str()
    if name in AUTHORIZATION:
        return MillraceError(
            f"{action}: not authorized ({name}); the client's principal needs {AUTHORIZATION[name]} "
            "(see `kafka-acls` / AclCommand)"
        )
    if name in ("SASL_AUTHENTICATION_FAILED", "_AUTHENTICATION"):
        return KafkaUnavailable(f"{action}: authentication failed ({text}); check kafka.sasl_username/password")
    if name in UNREACHABLE:
        at = f" at {servers}" if servers else ""
        return KafkaUnavailable(f"{action}: cannot reach Kafka{at} ({text}); is it running?")
    return MillraceError(f"{action} failed: {name}: {text}")


@contextlib.contextmanager
def translated(action: str, servers: str = "") -> Iterator[None]:
    """Turn a ``KafkaException`` raised in the block into :func:`kafka_error`."""
    try:
        yield
    except KafkaException as exc:
        raise kafka_error(exc, action, servers) from exc


def quiet(client_config: dict[str, Any]) -> dict[str, Any]:
    """``client_config`` with librdkafka's own log lines off (unless millrace logs at DEBUG): it prints one
    line per failed connection attempt to stderr, where the raised error already says it in one line."""
    return client_config if log.isEnabledFor(logging.DEBUG) else {**client_config, "log_level": 0}


def admin_client(client_config: dict[str, Any]) -> AdminClient:
    return AdminClient(quiet(client_config))


def _metadata(admin: AdminClient, timeout_s: float, servers: str = "") -> Any:
    with translated("reading the cluster metadata", servers):
        return admin.list_topics(timeout=timeout_s)


def require_kafka(
    client_config: dict[str, Any], timeout_s: float = 5.0, *, stop: Callable[[], bool] | None = None
) -> None:
    """Raise KafkaUnavailable within about ``timeout_s`` when no broker of ``bootstrap.servers`` answers a
    metadata request; commands call it before they start producing or consuming, so that a cluster that is
    down shows in seconds rather than after the clients' delivery timeouts. Returns early, without raising,
    once ``stop()`` is true (checked every ``STEP_S``: a stop request during the check is honoured at once)."""
    servers = client_config.get("bootstrap.servers", "")
    admin = AdminClient(quiet(client_config))
    deadline = time.monotonic() + timeout_s
    while True:
        step = min(STEP_S, max(deadline - time.monotonic(), 0.01))
        try:
            admin.list_topics(timeout=step)
            return
        except KafkaException as exc:
            error = exc.args[0] if exc.args else exc
            if isinstance(error, KafkaError) and error.name() not in UNREACHABLE:
                raise kafka_error(exc, f"connecting to Kafka at {servers}") from exc
            if stop is not None and stop():
                return
            if time.monotonic() >= deadline:
                raise KafkaUnavailable(
                    f"cannot reach Kafka at {servers} within {timeout_s:g} s (kafka.bootstrap_servers); "
                    "is it running? `millrace stack up` starts a local one"
                ) from exc
            if isinstance(error, KafkaError) and error.name() != "_TIMED_OUT":
                time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))  # refused at once: do not spin


STEP_S = 0.25


def apply_topics(client_config: dict[str, Any], specs: Sequence[TopicSpec], timeout_s: float = 30.0) -> dict[str, str]:
    """Create missing topics, raise partition counts, and set configs that differ.

    Returns ``{topic: "created" | "updated" | "unchanged"}``. Safe to run any number of times.
    """
    admin = admin_client(client_config)
    existing = _metadata(admin, timeout_s, client_config.get("bootstrap.servers", "")).topics
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
                    raise kafka_error(exc, f"create topic {name}") from exc
                result[name] = "unchanged"
    for spec in specs:
        if spec.name in result:
            continue
        changed = False
        partitions = len(existing[spec.name].partitions)
        if partitions < spec.partitions:
            with translated(f"add partitions to topic {spec.name}"):
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
            with translated(f"alter the configs of topic {spec.name}"):
                for future in admin.incremental_alter_configs([resource]).values():
                    future.result()
            changed = True
        result[spec.name] = "updated" if changed else "unchanged"
    return result


def topic_configs(admin: AdminClient, topic: str) -> dict[str, str]:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    with translated(f"describe the configs of topic {topic}"):
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
    topics = _metadata(admin_client(client_config), timeout_s, client_config.get("bootstrap.servers", "")).topics
    return sorted(t for t in topics if internal or not t.startswith("__"))


def describe_topic(client_config: dict[str, Any], name: str, timeout_s: float = 10.0) -> TopicInfo:
    """Partitions with leader, replicas, ISR and low/high watermarks, plus the topic's configs."""
    admin = admin_client(client_config)
    meta = _metadata(admin, timeout_s, client_config.get("bootstrap.servers", "")).topics.get(name)
    if meta is not None and meta.error is not None:  # e.g. TOPIC_AUTHORIZATION_FAILED for this topic
        raise kafka_error(meta.error, f"describe topic {name}")
    if meta is None:
        raise MillraceError(f"topic {name} does not exist (see `millrace topics list`)")
    consumer = Consumer({**quiet(client_config), "group.id": "millrace-describe", "enable.auto.commit": False})
    try:
        parts = []
        with translated(f"read the offsets of topic {name}"):
            for pid, part in sorted(meta.partitions.items()):
                low, high = consumer.get_watermark_offsets(TopicPartition(name, pid), timeout=timeout_s)
                parts.append(PartitionInfo(pid, part.leader, tuple(part.replicas), tuple(part.isrs), low, high))
    finally:
        consumer.close()
    return TopicInfo(name, tuple(parts), topic_configs(admin, name))


def delete_topics(client_config: dict[str, Any], names: Sequence[str], timeout_s: float = 30.0) -> None:
    admin = admin_client(client_config)
    for name, future in admin.delete_topics(list(names), operation_timeout=timeout_s).items():
        with translated(f"delete topic {name}"):
            future.result()
