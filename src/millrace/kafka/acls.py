"""The one declarative list of who may do what on a secured cluster, and its idempotent application.

One principal per millrace service, each with the least it needs. ``admin`` and the cluster's own
``controller`` principal are super users (broker setting ``super.users``) and have no ACLs here. The cluster
denies everything else (``allow.everyone.if.no.acl.found=false``).

``millrace acl apply`` makes the cluster's ACLs of the *managed* principals (those declared here) equal to
this list: it adds what is missing and removes what is extra. ACLs of other principals are listed but never
touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from millrace.config import TopicSettings

INGEST = "ingest"  # the simulator and file/replay ingestion (iot simulate, iot replay)
MQTT_BRIDGE = "mqtt-bridge"
STREAM_JOB = "stream-job"  # the Spark job (iot process) and its driver-side producers
API = "api"  # millrace serve: live feed and cluster view
ADMIN = "admin"  # millrace stack/topics/acl: a super user
MIRROR = "mirrormaker"  # MirrorMaker 2 reading the primary for the backup (stack up --mirror)
# The marketplace (shop) domain's services.
SHOP_API = "shop-api"  # shop publish-catalog, block/unblock, and the shop's REST routes of millrace serve
SHOP_ORDERS = "shop-orders"  # shop orders: the orders generator
SHOP_FILTER = "shop-filter"  # shop filter: items -> filtered-items in Kafka transactions
SHOP_INDEX = "shop-index"  # shop index: filtered-items and client-search into the search backend
SHOP_CLIENT = "shop-client"  # shop search / shop recommend from the command line
SHOP_ARCHIVE = "shop-archive"  # shop archive: orders into the orders lake
SHOP_ANALYTICS = "shop-analytics"  # shop analytics and shop recommend-train: the Spark jobs over the lake
INTERNAL_PRINCIPAL = "controller"  # controllers (PLAIN) and inter-broker traffic (SCRAM); a super user
SUPER_USERS = (ADMIN, INTERNAL_PRINCIPAL)
SHOP_SERVICES = (SHOP_API, SHOP_ORDERS, SHOP_FILTER, SHOP_INDEX, SHOP_CLIENT, SHOP_ARCHIVE, SHOP_ANALYTICS)
SERVICES = (INGEST, MQTT_BRIDGE, STREAM_JOB, API, ADMIN, MIRROR, *SHOP_SERVICES)

# Consumer groups the services use (their defaults; a different group needs an ACL of its own).
MQTT_COMMAND_GROUP = "millrace-mqtt-commands"
API_FEED_GROUP_PREFIX = "millrace-serve"  # one group per API process: millrace-serve-<random>
SPARK_SOURCE_GROUP_PREFIX = "spark-kafka-source-"  # the groups Spark's Kafka source names for itself
SPARK_BATCH_GROUP_PREFIX = "spark-kafka-relation-"  # the same for a batch read (spark.read.format("kafka"))
SHOP_FILTER_GROUP = "millrace-shop-filter"  # also the prefix of the filter instances' transactional ids
SHOP_INDEX_GROUP = "millrace-shop-index"
SHOP_ARCHIVE_GROUP = "millrace-shop-archive"
# Throwaway groups of assign()-only readers (shop/stoplist.py, shop/filter.py's scan, kafka/reader.py).
STOP_LIST_READER_PREFIX = "millrace-stop-list-"
PARTITION_SCAN_PREFIX = "millrace-scan-"
TOPIC_READER_PREFIX = "millrace-reader-"


def all_principals() -> tuple[str, ...]:
    return SERVICES


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW rule, in the vocabulary of ``kafka-acls.sh``: principal (without ``User:``), resource type
    (TOPIC, GROUP, CLUSTER, TRANSACTIONAL_ID), resource name, pattern (LITERAL, PREFIXED) and operation."""

    principal: str
    resource: str
    name: str
    operation: str
    pattern: str = "LITERAL"
    host: str = "*"

    def __str__(self) -> str:
        pattern = "" if self.pattern == "LITERAL" else f" ({self.pattern.lower()})"
        return f"User:{self.principal} {self.operation} {self.resource.lower()} {self.name}{pattern}"


def declared_acls(
    topics: TopicSettings,
    *,
    stream_job_group: str = "millrace-iot-process",
    mirror_topics: Sequence[str] = (),
    shop_filter_group: str = SHOP_FILTER_GROUP,
    shop_index_group: str = SHOP_INDEX_GROUP,
    shop_archive_group: str = SHOP_ARCHIVE_GROUP,
) -> list[Acl]:
    """Every ACL of the managed principals, for the topic names in ``topics`` (``mirror_topics``: those
    MirrorMaker copies to the backup, mirror.topics; empty: the IoT topics, its default; the shop's groups:
    those of `shop filter --group`, `shop index --group` and `shop archive --group`)."""

    def topic(principal: str, name: str, *operations: str) -> list[Acl]:
        return [Acl(principal, "TOPIC", name, op) for op in operations]

    def group(principal: str, name: str, op: str = "READ", pattern: str = "LITERAL") -> Acl:
        return Acl(principal, "GROUP", name, op, pattern)

    acls: list[Acl] = []
    # Producers: WRITE (idempotent producers need nothing more since Kafka 2.8) and DESCRIBE for metadata.
    for name in (topics.readings, topics.dead_letter):
        acls += topic(INGEST, name, "WRITE", "DESCRIBE")
        acls += topic(MQTT_BRIDGE, name, "WRITE", "DESCRIBE")
    # The bridge relays device commands from Kafka to MQTT, committing as its own group.
    acls += topic(MQTT_BRIDGE, topics.device_commands, "READ", "DESCRIBE")
    acls.append(group(MQTT_BRIDGE, MQTT_COMMAND_GROUP))
    # The stream job reads readings; writes its outputs; mirrors its progress into its consumer group.
    acls += topic(STREAM_JOB, topics.readings, "READ", "DESCRIBE")
    outputs = (topics.predictions, topics.alerts, topics.windowed_metrics, topics.quality, topics.recommendations)
    for name in (*outputs, topics.dead_letter):
        acls += topic(STREAM_JOB, name, "WRITE", "DESCRIBE")
    if stream_job_group:
        acls.append(group(STREAM_JOB, stream_job_group))
    acls.append(group(STREAM_JOB, SPARK_SOURCE_GROUP_PREFIX, pattern="PREFIXED"))
    # The API follows the output topics for its live feed and shows the cluster (topics, configs, groups, lag).
    for name in outputs:
        acls += topic(API, name, "READ", "DESCRIBE")
    for name in (topics.readings, topics.dead_letter, topics.device_commands):
        acls += topic(API, name, "DESCRIBE")
    for name in iot_topics(topics):
        acls += topic(API, name, "DESCRIBE_CONFIGS")
    acls.append(group(API, API_FEED_GROUP_PREFIX, pattern="PREFIXED"))
    acls.append(group(API, "*", "DESCRIBE"))  # the cluster view lists every group's lag (read-only)
    acls.append(Acl(API, "CLUSTER", "kafka-cluster", "DESCRIBE"))
    # MirrorMaker reads the topics it mirrors (with their configs) and every group's offsets to translate
    # them; its own state and offset syncs live on the backup.
    for name in mirror_topics or iot_topics(topics):
        acls += topic(MIRROR, name, "READ", "DESCRIBE", "DESCRIBE_CONFIGS")
    acls.append(group(MIRROR, "*", "DESCRIBE"))
    acls.append(Acl(MIRROR, "CLUSTER", "kafka-cluster", "DESCRIBE"))
    acls += _shop_acls(
        topics, filter_group=shop_filter_group, index_group=shop_index_group, archive_group=shop_archive_group
    )
    return sorted(set(acls))


def _shop_acls(topics: TopicSettings, *, filter_group: str, index_group: str, archive_group: str) -> list[Acl]:
    """The shop's services. Readers that only assign() partitions and never commit (the stop-list follower,
    the filter's partition scan, reading back recommendations and orders) still name a throwaway group, which
    librdkafka looks up (FindCoordinator): DESCRIBE on those groups' prefixes, never READ, so they cannot commit."""

    def topic(principal: str, name: str, *operations: str) -> list[Acl]:
        return [Acl(principal, "TOPIC", name, op) for op in operations]

    acls: list[Acl] = []
    # The shop API publishes the catalog, keeps the stop list (block, unblock, list), records the searches made
    # over REST and answers recommendations from the recommendations topic, with orders as the fallback.
    for name in (topics.shop_items, topics.shop_dead_letter):  # a product failing its schema is dead-lettered
        acls += topic(SHOP_API, name, "WRITE", "DESCRIBE")
    acls += topic(SHOP_API, topics.shop_stop_list, "READ", "WRITE", "DESCRIBE")
    acls += topic(SHOP_API, topics.shop_client_search, "READ", "WRITE", "DESCRIBE")  # READ: the live queries
    for name in (topics.shop_recommendations, topics.shop_orders):
        acls += topic(SHOP_API, name, "READ", "DESCRIBE")
    acls += topic(SHOP_ORDERS, topics.shop_orders, "WRITE", "DESCRIBE")
    # The filter consumes items and produces filtered-items in transactions under its own transactional ids
    # (<group>-<instance>); its offsets are committed through the producer, which needs READ on the group.
    # No IDEMPOTENT_WRITE on the cluster: since Kafka 2.8 (KIP-679) WRITE on a topic or on the transactional id
    # implies it, and a cluster-wide grant would let the filter open idempotent producers anywhere it can write.
    acls += topic(SHOP_FILTER, topics.shop_items, "READ", "DESCRIBE")
    acls += topic(SHOP_FILTER, topics.shop_stop_list, "READ", "DESCRIBE")
    for name in (topics.shop_filtered_items, topics.shop_dead_letter):
        acls += topic(SHOP_FILTER, name, "WRITE", "DESCRIBE")
    acls.append(Acl(SHOP_FILTER, "GROUP", filter_group, "READ"))
    for op in ("WRITE", "DESCRIBE"):
        acls.append(Acl(SHOP_FILTER, "TRANSACTIONAL_ID", f"{filter_group}-", op, "PREFIXED"))
    # The index service reads filtered products and client queries into the search backend.
    for name in (topics.shop_filtered_items, topics.shop_client_search):
        acls += topic(SHOP_INDEX, name, "READ", "DESCRIBE")
    acls += topic(SHOP_INDEX, topics.shop_dead_letter, "WRITE", "DESCRIBE")
    acls.append(Acl(SHOP_INDEX, "GROUP", index_group, "READ"))
    # The archiver reads orders into the lake (outside Kafka), dead-letters malformed ones, commits as its group.
    acls += topic(SHOP_ARCHIVE, topics.shop_orders, "READ", "DESCRIBE")
    acls += topic(SHOP_ARCHIVE, topics.shop_dead_letter, "WRITE", "DESCRIBE")
    acls.append(Acl(SHOP_ARCHIVE, "GROUP", archive_group, "READ"))
    # The analytics and recommendation jobs read the client queries (Spark's batch Kafka source), the catalog and
    # the stop list, and write the analytics and recommendations topics; the orders come from the lake.
    for name in (topics.shop_client_search, topics.shop_filtered_items, topics.shop_stop_list):
        acls += topic(SHOP_ANALYTICS, name, "READ", "DESCRIBE")
    for name in (topics.shop_analytics, topics.shop_recommendations):
        acls += topic(SHOP_ANALYTICS, name, "WRITE", "DESCRIBE")
    # The command-line client records its queries and reads recommendations (orders: the popularity fallback).
    acls += topic(SHOP_CLIENT, topics.shop_client_search, "WRITE", "DESCRIBE")
    for name in (topics.shop_recommendations, topics.shop_orders):
        acls += topic(SHOP_CLIENT, name, "READ", "DESCRIBE")
    for principal, prefixes in (
        (SHOP_API, (STOP_LIST_READER_PREFIX, TOPIC_READER_PREFIX)),
        (SHOP_FILTER, (STOP_LIST_READER_PREFIX, PARTITION_SCAN_PREFIX)),
        (SHOP_CLIENT, (TOPIC_READER_PREFIX,)),
        (SHOP_ANALYTICS, (STOP_LIST_READER_PREFIX, TOPIC_READER_PREFIX, SPARK_BATCH_GROUP_PREFIX)),
    ):
        acls += [Acl(principal, "GROUP", prefix, "DESCRIBE", "PREFIXED") for prefix in prefixes]
    return acls


def iot_topics(topics: TopicSettings) -> list[str]:
    """The IoT pipeline's topics (what the ACLs cover, and what MirrorMaker mirrors by default)."""
    return [
        topics.readings,
        topics.dead_letter,
        topics.alerts,
        topics.predictions,
        topics.windowed_metrics,
        topics.quality,
        topics.device_commands,
        topics.recommendations,
    ]


@dataclass(frozen=True)
class AclDiff:
    """What ``apply`` would do: ``missing`` to add, ``extra`` to remove (managed principals only);
    ``unmanaged``: ACLs of principals not declared here, left alone."""

    missing: tuple[Acl, ...] = ()
    extra: tuple[Acl, ...] = ()
    unmanaged: tuple[Acl, ...] = field(default=())

    @property
    def in_sync(self) -> bool:
        return not self.missing and not self.extra


def diff_acls(declared: Iterable[Acl], current: Iterable[Acl], managed: Sequence[str] = SERVICES) -> AclDiff:
    """Compare declared with current ACLs. Pure: the unit tests cover it without a broker."""
    want, have = set(declared), set(current)
    managed_set = set(managed) | {a.principal for a in want}
    return AclDiff(
        missing=tuple(sorted(want - have)),
        extra=tuple(sorted(a for a in have - want if a.principal in managed_set)),
        unmanaged=tuple(sorted(a for a in have if a.principal not in managed_set)),
    )


# --- the cluster side (confluent-kafka's AdminClient) --------------------------------------------------------


# librdkafka calls Kafka's CLUSTER resource type (4) BROKER; TRANSACTIONAL_ID is spelled alike.
_TO_LIBRDKAFKA = {"CLUSTER": "BROKER"}
_FROM_LIBRDKAFKA = {"BROKER": "CLUSTER"}


def _binding(acl: Acl) -> Any:
    from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    return AclBinding(
        ResourceType[_TO_LIBRDKAFKA.get(acl.resource, acl.resource)],
        acl.name,
        ResourcePatternType[acl.pattern],
        f"User:{acl.principal}",
        acl.host,
        AclOperation[acl.operation],
        AclPermissionType.ALLOW,
    )


def _acl(binding: Any) -> Acl | None:
    principal = str(binding.principal)
    if not principal.startswith("User:") or binding.permission_type.name != "ALLOW":
        return None  # DENY rules and non-user principals are not ours to manage
    return Acl(
        principal.removeprefix("User:"),
        _FROM_LIBRDKAFKA.get(binding.restype.name, binding.restype.name),
        binding.name,
        binding.operation.name,
        binding.resource_pattern_type.name,
        binding.host,
    )


def current_acls(admin: Any, timeout_s: float = 15.0) -> list[Acl]:
    """Every ALLOW ACL of a user principal on the cluster."""
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    from millrace.kafka.client_config import kafka_failure

    anything: Any = None  # the filter's "any name, principal, host" (the stubs say str)
    flt = AclBindingFilter(
        ResourceType.ANY, anything, ResourcePatternType.ANY, anything, anything, AclOperation.ANY, AclPermissionType.ANY
    )
    try:
        bindings = admin.describe_acls(flt, request_timeout=timeout_s).result()
    except Exception as exc:
        raise kafka_failure("listing ACLs", exc) from exc
    return sorted(a for a in map(_acl, bindings) if a is not None)


def apply_acls(admin: Any, declared: Sequence[Acl], *, timeout_s: float = 15.0) -> AclDiff:
    """Add the missing ACLs and remove the extra ones of managed principals; returns what was changed.

    Idempotent: a second run finds nothing to do.
    """
    from confluent_kafka.admin import AclBindingFilter

    from millrace.kafka.client_config import kafka_failure

    plan = diff_acls(declared, current_acls(admin, timeout_s))
    try:
        if plan.missing:
            for future in admin.create_acls([_binding(a) for a in plan.missing], request_timeout=timeout_s).values():
                future.result()
        if plan.extra:
            filters = []
            for acl in plan.extra:
                b = _binding(acl)
                filters.append(
                    AclBindingFilter(
                        b.restype, b.name, b.resource_pattern_type, b.principal, b.host, b.operation, b.permission_type
                    )
                )
            for future in admin.delete_acls(filters, request_timeout=timeout_s).values():
                future.result()
    except Exception as exc:
        raise kafka_failure("applying ACLs", exc) from exc
    return plan
