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
    assert {a.principal for a in acls} == {INGEST, MQTT_BRIDGE, STREAM_JOB, API, MIRROR}  # MIRROR: read-only
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
