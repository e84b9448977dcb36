"""The one declarative list of millrace's topics. ``millrace topics apply`` and ``stack up`` apply it."""

from __future__ import annotations

from dataclasses import dataclass, field

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


def declared_topics(topics: TopicSettings) -> list[TopicSpec]:
    rf, isr = topics.replication_factor, topics.min_insync_replicas
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
    ]
