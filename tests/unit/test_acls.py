"""The declared ACL list and its diff against a cluster's ACLs (pure logic; the secured-cluster integration test
applies them to real brokers)."""

from __future__ import annotations

from millrace.config import TopicSettings
from millrace.kafka.acls import (
    API,
    INGEST,
    MIRROR,
    MQTT_BRIDGE,
    SERVICES,
    SHOP_ANALYTICS,
    SHOP_API,
    SHOP_ARCHIVE,
    SHOP_CLIENT,
    SHOP_FILTER,
    SHOP_INDEX,
    SHOP_ORDERS,
    SHOP_SERVICES,
    STREAM_JOB,
    Acl,
    declared_acls,
    diff_acls,
)

TOPICS = TopicSettings()


def ops(acls: list[Acl], principal: str, resource: str, name: str) -> set[str]:
    return {a.operation for a in acls if (a.principal, a.resource, a.name) == (principal, resource, name)}


def test_least_privilege_per_service() -> None:
    acls = declared_acls(TOPICS, stream_job_group="job-group")
    assert ops(acls, INGEST, "TOPIC", TOPICS.readings) == {"WRITE", "DESCRIBE"}
    assert ops(acls, INGEST, "TOPIC", TOPICS.alerts) == set()  # the ingest side reads nothing
    assert not [a for a in acls if a.principal == INGEST and a.operation == "READ"]
    assert ops(acls, STREAM_JOB, "TOPIC", TOPICS.readings) == {"READ", "DESCRIBE"}
    assert ops(acls, STREAM_JOB, "TOPIC", TOPICS.alerts) == {"WRITE", "DESCRIBE"}
    assert ops(acls, STREAM_JOB, "GROUP", "job-group") == {"READ"}
    assert ops(acls, MQTT_BRIDGE, "TOPIC", TOPICS.device_commands) == {"READ", "DESCRIBE"}
    assert ops(acls, API, "TOPIC", TOPICS.readings) == {"DESCRIBE", "DESCRIBE_CONFIGS"}  # shown, never read
    assert "WRITE" not in {a.operation for a in acls if a.principal == API}
    # nobody but the super users may create, delete or alter anything
    assert not [a for a in acls if a.operation in {"CREATE", "DELETE", "ALTER", "ALTER_CONFIGS", "ALL"}]
    assert {a.principal for a in acls} == {INGEST, MQTT_BRIDGE, STREAM_JOB, API, MIRROR, *SHOP_SERVICES}
    assert acls == sorted(set(acls))  # no duplicates, stable order


def test_topic_names_follow_the_settings() -> None:
    acls = declared_acls(TopicSettings(readings="plant.readings"), stream_job_group="")
    assert ops(acls, INGEST, "TOPIC", "plant.readings") == {"WRITE", "DESCRIBE"}
    assert not [a for a in acls if a.principal == STREAM_JOB and a.resource == "GROUP" and a.pattern == "LITERAL"]


def test_diff_adds_missing_removes_extra_of_managed_principals_only() -> None:
    declared = [Acl(INGEST, "TOPIC", "t", "WRITE"), Acl(INGEST, "TOPIC", "t", "DESCRIBE")]
    current = [
        Acl(INGEST, "TOPIC", "t", "WRITE"),  # kept
        Acl(INGEST, "TOPIC", "other", "READ"),  # a managed principal's extra: removed
        Acl(API, "TOPIC", "t", "READ"),  # managed (a millrace service) but not declared here: removed
        Acl("partner", "TOPIC", "t", "READ"),  # someone else's: left alone
    ]
    plan = diff_acls(declared, current, managed=SERVICES)
    assert plan.missing == (Acl(INGEST, "TOPIC", "t", "DESCRIBE"),)
    assert plan.extra == (Acl(API, "TOPIC", "t", "READ"), Acl(INGEST, "TOPIC", "other", "READ"))
    assert plan.unmanaged == (Acl("partner", "TOPIC", "t", "READ"),)
    assert not plan.in_sync


def test_diff_of_applied_list_is_empty() -> None:
    declared = declared_acls(TOPICS)
    plan = diff_acls(declared, [*declared, Acl("partner", "GROUP", "g", "READ")])
    assert plan.in_sync and plan.missing == () and plan.extra == ()
    assert len(plan.unmanaged) == 1


def test_pattern_and_host_are_part_of_identity() -> None:
    a = Acl(API, "GROUP", "millrace-serve", "READ", "PREFIXED")
    b = Acl(API, "GROUP", "millrace-serve", "READ", "LITERAL")
    plan = diff_acls([a], [b])
    assert plan.missing == (a,) and plan.extra == (b,)
    assert str(a) == "User:api READ group millrace-serve (prefixed)"


def test_shop_services_least_privilege() -> None:
    t = TOPICS
    acls = declared_acls(t, shop_filter_group="flt", shop_index_group="idx", shop_archive_group="arc")
    assert ops(acls, SHOP_ORDERS, "TOPIC", t.shop_orders) == {"WRITE", "DESCRIBE"}
    assert [a for a in acls if a.principal == SHOP_ORDERS] == [
        Acl(SHOP_ORDERS, "TOPIC", t.shop_orders, "DESCRIBE"),
        Acl(SHOP_ORDERS, "TOPIC", t.shop_orders, "WRITE"),
    ]
    # the filter: items in, filtered-items out, in transactions under <group>-<instance>
    assert ops(acls, SHOP_FILTER, "TOPIC", t.shop_items) == {"READ", "DESCRIBE"}
    assert ops(acls, SHOP_FILTER, "TOPIC", t.shop_stop_list) == {"READ", "DESCRIBE"}  # blocks are not its job
    assert ops(acls, SHOP_FILTER, "TOPIC", t.shop_filtered_items) == {"WRITE", "DESCRIBE"}
    assert ops(acls, SHOP_FILTER, "TOPIC", t.shop_dead_letter) == {"WRITE", "DESCRIBE"}
    assert ops(acls, SHOP_FILTER, "GROUP", "flt") == {"READ"}
    txn = [a for a in acls if a.resource == "TRANSACTIONAL_ID"]
    assert txn == [
        Acl(SHOP_FILTER, "TRANSACTIONAL_ID", "flt-", "DESCRIBE", "PREFIXED"),
        Acl(SHOP_FILTER, "TRANSACTIONAL_ID", "flt-", "WRITE", "PREFIXED"),
    ]
    from millrace.shop.filter import transactional_id

    assert transactional_id("flt", "7").startswith(txn[0].name)  # the prefix covers every instance's id
    # the index service only reads, and dead-letters what fails its schema
    assert ops(acls, SHOP_INDEX, "TOPIC", t.shop_filtered_items) == {"READ", "DESCRIBE"}
    assert ops(acls, SHOP_INDEX, "TOPIC", t.shop_client_search) == {"READ", "DESCRIBE"}
    assert ops(acls, SHOP_INDEX, "TOPIC", t.shop_items) == set()  # never sees a blocked product
    assert ops(acls, SHOP_INDEX, "GROUP", "idx") == {"READ"}
    # the archiver reads orders, dead-letters, commits as its group; nothing else
    assert ops(acls, SHOP_ARCHIVE, "TOPIC", t.shop_orders) == {"READ", "DESCRIBE"}
    assert ops(acls, SHOP_ARCHIVE, "TOPIC", t.shop_dead_letter) == {"WRITE", "DESCRIBE"}
    assert ops(acls, SHOP_ARCHIVE, "GROUP", "arc") == {"READ"}
    assert len([a for a in acls if a.principal == SHOP_ARCHIVE]) == 5
    # the analytics and recommendation jobs read queries, catalog and stop list, write their two topics; no orders
    for name in (t.shop_client_search, t.shop_filtered_items, t.shop_stop_list):
        assert ops(acls, SHOP_ANALYTICS, "TOPIC", name) == {"READ", "DESCRIBE"}
    for name in (t.shop_analytics, t.shop_recommendations):
        assert ops(acls, SHOP_ANALYTICS, "TOPIC", name) == {"WRITE", "DESCRIBE"}
    assert ops(acls, SHOP_ANALYTICS, "TOPIC", t.shop_orders) == set()
    assert {a.name for a in acls if a.principal == SHOP_INDEX and a.operation == "WRITE"} == {t.shop_dead_letter}
    # the client writes its queries only; the API also keeps the stop list and publishes the catalog
    assert {a.name for a in acls if a.principal == SHOP_CLIENT and a.operation == "WRITE"} == {t.shop_client_search}
    assert ops(acls, SHOP_CLIENT, "TOPIC", t.shop_stop_list) == set()
    assert ops(acls, SHOP_API, "TOPIC", t.shop_stop_list) == {"READ", "WRITE", "DESCRIBE"}
    assert ops(acls, SHOP_API, "TOPIC", t.shop_items) == {"WRITE", "DESCRIBE"}
    assert ops(acls, SHOP_API, "TOPIC", t.shop_recommendations) == {"READ", "DESCRIBE"}
    # no shop service touches the IoT topics, the cluster, or another's group
    shop = [a for a in acls if a.principal in SHOP_SERVICES]
    assert all(a.name.startswith("millrace.shop.") for a in shop if a.resource == "TOPIC")
    assert not [a for a in shop if a.resource == "CLUSTER"]
    groups = {(a.principal, a.name) for a in shop if a.resource == "GROUP" and a.operation == "READ"}
    assert groups == {(SHOP_FILTER, "flt"), (SHOP_INDEX, "idx"), (SHOP_ARCHIVE, "arc")}  # the only groups that commit
    readers = {(a.principal, a.name) for a in shop if a.resource == "GROUP" and a.operation != "READ"}
    assert readers == {
        (SHOP_API, "millrace-stop-list-"),
        (SHOP_API, "millrace-reader-"),
        (SHOP_FILTER, "millrace-stop-list-"),
        (SHOP_FILTER, "millrace-scan-"),
        (SHOP_CLIENT, "millrace-reader-"),
        (SHOP_ANALYTICS, "millrace-stop-list-"),
        (SHOP_ANALYTICS, "millrace-reader-"),
        (SHOP_ANALYTICS, "spark-kafka-relation-"),
    }
    assert {a.operation for a in shop if (a.principal, a.name) in readers} == {"DESCRIBE"}
    assert set(SHOP_SERVICES) <= set(SERVICES)


def test_transactional_id_acls_map_to_librdkafka() -> None:
    from millrace.kafka.acls import _acl, _binding

    acl = Acl(SHOP_FILTER, "TRANSACTIONAL_ID", "millrace-shop-filter-", "WRITE", "PREFIXED")
    binding = _binding(acl)
    assert binding.restype.name == "TRANSACTIONAL_ID"
    assert _acl(binding) == acl  # round trip: apply finds it in sync on the next run
    cluster = Acl(API, "CLUSTER", "kafka-cluster", "DESCRIBE")
    assert _acl(_binding(cluster)) == cluster


def test_topics_fit_the_cluster_and_what_cannot_change_is_said() -> None:
    from millrace.kafka.topics import declared_topics, fit_existing

    one = declared_topics(TOPICS)
    three = declared_topics(TOPICS, brokers=3)
    assert {(s.replication_factor, s.min_insync_replicas) for s in one} == {(1, 1)}
    assert {(s.replication_factor, s.min_insync_replicas) for s in three} == {(3, 2)}
    assert {s.configs()["min.insync.replicas"] for s in three} == {"2"}
    fixed = declared_topics(TopicSettings(replication_factor=2, min_insync_replicas=1), brokers=3)
    assert {(s.replication_factor, s.min_insync_replicas) for s in fixed} == {(2, 1)}

    spec = three[0]
    same, notes = fit_existing(spec, spec.partitions, 3)
    assert (same, notes) == (spec, [])
    fitted, notes = fit_existing(spec, spec.partitions + 2, 1)
    assert fitted.min_insync_replicas == 1  # min ISR 2 on a 1-replica topic would refuse every acks=all write
    assert len(notes) == 3
    assert notes[0].startswith(f"has {spec.partitions + 2} partitions, declared {spec.partitions}")
    assert notes[1].startswith("replication factor 1, declared 3: changing it needs a partition reassignment")
    assert notes[2] == "min.insync.replicas kept at 1 (declared 2)"
