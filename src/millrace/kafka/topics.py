"""The one declarative list of millrace's topics. ``millrace topics apply`` and ``stack up`` apply it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from millrace.config import TopicSettings

DAY_MS = 86_400_000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int = 1
    retention_ms: int = 7 * DAY_MS
    cleanup_policy: str = "delete"  # "delete", "compact" or "compact,delete"
    min_insync_replicas: int = 1
    description: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def configs(self) -> dict[str, str]:
        return {
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": self.cleanup_policy,
            "min.insync.replicas": str(self.min_insync_replicas),
            **self.extra,
        }


def declared_topics(topics: TopicSettings, *, brokers: int = 1) -> list[TopicSpec]:
    """The topics, replicated to fit ``brokers`` unless the settings fix it: RF 3 and min ISR 2 from three
    brokers (acks=all then survives one broker down), RF 1 and min ISR 1 on one."""
    rf = topics.replication_factor or min(3, brokers)
    isr = topics.min_insync_replicas or (2 if rf >= 3 else 1)
    return [
        TopicSpec(topics.readings, 3, rf, 7 * DAY_MS, "delete", isr, "sensor readings, keyed by sensor_id"),
        TopicSpec(topics.dead_letter, 1, rf, 30 * DAY_MS, "delete", isr, "unusable input with reason and source"),
        TopicSpec(topics.alerts, 3, rf, 30 * DAY_MS, "delete", isr, "anomaly alert episodes, keyed by alert_id"),
        TopicSpec(topics.predictions, 3, rf, 2 * DAY_MS, "delete", isr, "per-reading anomaly scores"),
        TopicSpec(topics.windowed_metrics, 3, rf, 7 * DAY_MS, "delete", isr, "tumbling-window aggregates"),
        TopicSpec(topics.quality, 1, rf, 7 * DAY_MS, "delete", isr, "data-quality counters per micro-batch"),
        TopicSpec(topics.device_commands, 3, rf, 1 * DAY_MS, "delete", isr, "commands for devices via MQTT"),
        TopicSpec(
            topics.recommendations, 3, rf, 30 * DAY_MS, "delete", isr, "operator actions per alert, keyed by alert_id"
        ),
        # the marketplace (shop) domain
        TopicSpec(topics.shop_items, 3, rf, 30 * DAY_MS, "delete", isr, "catalog products, keyed by product id"),
        TopicSpec(topics.shop_filtered_items, 3, rf, 30 * DAY_MS, "delete", isr, "products not on the stop list"),
        TopicSpec(topics.shop_orders, 3, rf, 30 * DAY_MS, "delete", isr, "orders, keyed by customer_id"),
        TopicSpec(topics.shop_client_search, 3, rf, 7 * DAY_MS, "delete", isr, "client queries, keyed by user"),
        TopicSpec(topics.shop_stop_list, 1, rf, -1, "compact", isr, "blocked product ids (compacted)"),
        # the latest recommendations of each user is the answer, so compaction keeps exactly that
        TopicSpec(
            topics.shop_recommendations, 3, rf, -1, "compact", isr, "product recommendations, keyed by user (compacted)"
        ),
        TopicSpec(topics.shop_analytics, 1, rf, 30 * DAY_MS, "delete", isr, "shop analytics aggregates per run"),
        TopicSpec(topics.shop_dead_letter, 1, rf, 30 * DAY_MS, "delete", isr, "shop input failing its schema"),
    ]


@dataclass(frozen=True)
class TopicPlan:
    """The declared topics fitted to a cluster: what ``apply_topics`` should set, and what it cannot change."""

    specs: list[TopicSpec]
    brokers: int
    cannot_change: dict[str, list[str]] = field(default_factory=dict)


def fit_existing(spec: TopicSpec, partitions: int, replication_factor: int) -> tuple[TopicSpec, list[str]]:
    """``spec`` as far as it can be applied to a topic that exists with ``partitions`` and
    ``replication_factor``; the rest said in words. Partitions can only grow, and a replication factor changes
    only by a partition reassignment, which millrace does not do; a min ISR above the replication factor the
    topic really has would refuse every acks=all write, so it is capped (and said)."""
    notes = []
    if partitions > spec.partitions:
        notes.append(f"has {partitions} partitions, declared {spec.partitions}: partitions cannot be removed")
    if replication_factor != spec.replication_factor:
        notes.append(
            f"replication factor {replication_factor}, declared {spec.replication_factor}: changing it needs a "
            "partition reassignment (kafka-reassign-partitions), or delete and re-create the topic"
        )
        if spec.min_insync_replicas > replication_factor:
            capped = max(1, replication_factor - 1)
            notes.append(f"min.insync.replicas kept at {capped} (declared {spec.min_insync_replicas})")
            spec = replace(spec, min_insync_replicas=capped)
    return spec, notes


def plan_topics(client_config: dict[str, Any], topics: TopicSettings, *, timeout_s: float = 15.0) -> TopicPlan:
    """Declared topics sized for the cluster at ``client_config`` (its broker count), fitted to what exists."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from millrace.kafka.client_config import kafka_failure

    try:
        meta = AdminClient(dict(client_config)).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise kafka_failure("reading the cluster metadata", exc) from exc
    brokers = max(1, len(meta.brokers))
    specs, notes = [], {}
    for spec in declared_topics(topics, brokers=brokers):
        existing = meta.topics.get(spec.name)
        if existing is not None and existing.partitions:
            rf = min(len(p.replicas) for p in existing.partitions.values())
            spec, said = fit_existing(spec, len(existing.partitions), rf)
            if said:
                notes[spec.name] = said
        specs.append(spec)
    return TopicPlan(specs, brokers, notes)
