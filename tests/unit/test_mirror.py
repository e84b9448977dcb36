"""MirrorMaker 2's generated properties, the lag and loss arithmetic, the failover overlay the settings loader
reads, and MirrorMaker's ACLs on a secured primary — without a broker."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
from pydantic import SecretStr

from millrace.config import KafkaSettings, TopicSettings, failover_path, load_settings
from millrace.errors import ConfigError
from millrace.kafka.acls import MIRROR, Acl, declared_acls
from millrace.kafka.client_config import java_client_config
from millrace.runtime import failover, mirror


def java_properties(text: str) -> dict[str, str]:
    """Read ``key = value`` lines as java.util.Properties does for what mm2_properties writes (backslash
    escapes, comments)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" = ")
        out[key] = value.replace("\\\\", "\\")
    return out


def props(**overrides: object) -> dict[str, str]:
    args: dict[str, object] = {
        "primary": {"bootstrap.servers": "127.0.0.1:9092", "security.protocol": "PLAINTEXT"},
        "backup_bootstrap": "127.0.0.1:19092,127.0.0.1:19102",
        "topics": ["millrace.iot.readings", "orders_v2"],
        "groups": ".*",
        "replication_factor": 2,
        "sync_interval_s": 5,
        "offset_lag_max": 100,
        **overrides,
    }
    return java_properties(mirror.mm2_properties(**args))  # type: ignore[arg-type]


def test_properties_one_flow_with_identity_names_checkpoints_and_group_sync() -> None:
    p = props()
    assert p["clusters"] == "primary, backup"
    assert p["primary.bootstrap.servers"] == "127.0.0.1:9092"
    assert p["backup.bootstrap.servers"] == "127.0.0.1:19092,127.0.0.1:19102"
    assert p["primary->backup.enabled"] == "true"
    # no reverse herder writing heartbeats into the primary
    assert p["backup->primary.enabled"] == "false" and p["backup->primary.emit.heartbeats.enabled"] == "false"
    assert p["replication.policy.class"] == "org.apache.kafka.connect.mirror.IdentityReplicationPolicy"
    assert p["emit.checkpoints.enabled"] == p["sync.group.offsets.enabled"] == "true"
    assert p["emit.checkpoints.interval.seconds"] == p["sync.group.offsets.interval.seconds"] == "5"
    assert p["backup.offset.flush.interval.ms"] == "5000"
    assert p["offset-syncs.topic.location"] == "target" and p["sync.topic.acls.enabled"] == "false"
    assert p["plugin.discovery"] == "service_load"
    factors = [v for k, v in p.items() if k.endswith("replication.factor")]
    assert len(factors) == 7 and set(factors) == {"2"}  # the backup's size, MM2's own topics included


def test_topics_are_exact_match_regexes() -> None:
    import re

    regexes = props()["primary->backup.topics"].split(", ")
    assert regexes == [r"millrace\.iot\.readings", "orders_v2"]
    pattern = re.compile("|".join(regexes))
    assert pattern.fullmatch("millrace.iot.readings") and not pattern.fullmatch("millraceXiot.readings")


def test_secured_primary_uses_the_mirrormaker_principal() -> None:
    client = KafkaSettings(
        bootstrap_servers="127.0.0.1:9092",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=MIRROR,
        sasl_password=SecretStr("pa\\ss"),
        ssl_cafile=Path("/x/ca.pem"),
    )
    p = props(primary=java_client_config(client))
    assert p["primary.security.protocol"] == "SASL_SSL" and p["primary.sasl.mechanism"] == "SCRAM-SHA-512"
    assert f'username="{MIRROR}"' in p["primary.sasl.jaas.config"]
    assert 'password="pa\\\\ss"' in p["primary.sasl.jaas.config"]  # JAAS-quoted, then Properties-escaped
    assert p["primary.ssl.truststore.location"] == "/x/ca.pem"
    assert not any(k.startswith("backup.s") for k in p)  # the backup is plaintext


def test_default_topics_are_the_iot_topics() -> None:
    topics = TopicSettings()
    assert mirror.mirrored_topics(topics) == [
        "millrace.iot.readings",
        "millrace.iot.dead-letter",
        "millrace.iot.alerts",
        "millrace.iot.predictions",
        "millrace.iot.windowed-metrics",
        "millrace.iot.quality",
        "millrace.iot.device-commands",
        "millrace.iot.recommendations",
    ]
    assert mirror.mirrored_topics(topics, ("b", "a", "b")) == ["b", "a"]


def test_lost_records_per_topic() -> None:
    primary = {("a", 0): 100, ("a", 1): 50, ("b", 0): 7, ("c", 0): 0}
    backup = {("a", 0): 100, ("a", 1): 45, ("c", 0): 0, ("x", 0): 9}
    # a: 0 + 5; b: never reached the backup, all 7; c: empty; x: not on the primary, not reported
    assert failover.lost_records(primary, backup) == {"a": 5, "b": 7, "c": 0}
    assert failover.lost_records({("a", 0): 10}, {("a", 0): 12}) == {"a": 0}  # backup ahead: nothing lost
    assert failover.lost_records({}, backup) == {}


def test_lag_rows() -> None:
    rows = failover.lag_rows({("t", 1): 10, ("t", 0): 5}, {("t", 0): 5, ("t", 1): 4, ("u", 0): 3})
    assert [(r.topic, r.partition, r.primary_end, r.backup_end, r.lag) for r in rows] == [
        ("t", 0, 5, 5, 0),
        ("t", 1, 10, 4, 6),
        ("u", 0, None, 3, None),
    ]
    status = failover.MirrorStatus(rows[:2], [], True, None)
    assert status.total_lag == 6
    assert failover.MirrorStatus(rows, [], True, None).total_lag is None


def test_primary_offsets_are_recorded_and_read_back(tmp_path: Path) -> None:
    assert failover.load_primary_offsets(tmp_path) == ({}, None)
    failover.save_primary_offsets(tmp_path, {("a.b", 2): 40, ("a.b", 0): 3}, "2026-12-05T07:00:00+00:00")
    assert failover.load_primary_offsets(tmp_path) == ({("a.b", 0): 3, ("a.b", 2): 40}, "2026-12-05T07:00:00+00:00")


def test_the_failover_overlay_switches_clients_until_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MILLRACE_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    config = tmp_path / "millrace.toml"
    config.write_text(
        f'state_dir = "{tmp_path}"\n[kafka]\nbootstrap_servers = "primary:9092"\nsecurity_protocol = "SASL_SSL"\n'
        'sasl_mechanism = "SCRAM-SHA-512"\nsasl_username = "ingest"\nsasl_password = "x"\nclient_id = "mine"\n',
        encoding="utf-8",
    )
    assert load_settings(config).kafka.bootstrap_servers == "primary:9092"
    path = failover_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text('[kafka]\nbootstrap_servers = "backup:19092"\nsecurity_protocol = "PLAINTEXT"\n', encoding="utf-8")
    switched = load_settings(config).kafka
    assert switched.bootstrap_servers == "backup:19092" and switched.security_protocol == "PLAINTEXT"
    assert switched.sasl_username is None and switched.sasl_password is None  # the whole connection is replaced
    assert switched.client_id == "mine"  # tuning is kept
    monkeypatch.setenv("MILLRACE_KAFKA__BOOTSTRAP_SERVERS", "env:9092")
    assert load_settings(config).kafka.bootstrap_servers == "backup:19092"  # over the environment too
    explicit = load_settings(config, kafka={"bootstrap_servers": "given:1"})
    assert explicit.kafka.bootstrap_servers == "given:1"  # explicit overrides win
    path.write_text("[kafka]\nbootstrap_servers = 5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid failover overlay .*failover.toml"):
        load_settings(config)
    path.unlink()
    assert load_settings(config).kafka.bootstrap_servers == "env:9092"


def test_mirror_topic_names_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"invalid setting mirror\.topics.*not a Kafka topic name"):
        load_settings(mirror={"topics": ["ok", "no spaces"]})


def test_mirrormaker_acls_read_what_it_mirrors() -> None:
    topics = TopicSettings()
    mine = [a for a in declared_acls(topics) if a.principal == MIRROR]
    assert Acl(MIRROR, "TOPIC", topics.readings, "READ") in mine
    assert Acl(MIRROR, "TOPIC", topics.alerts, "DESCRIBE_CONFIGS") in mine
    assert Acl(MIRROR, "GROUP", "*", "DESCRIBE") in mine and Acl(MIRROR, "CLUSTER", "kafka-cluster", "DESCRIBE") in mine
    assert not [a for a in mine if a.operation in ("WRITE", "CREATE", "ALTER", "DELETE")]  # read-only on the primary
    chosen = [
        a for a in declared_acls(topics, mirror_topics=["only"]) if a.principal == MIRROR and a.resource == "TOPIC"
    ]
    assert {a.name for a in chosen} == {"only"}


def cli(*args: str) -> tuple[int, str, str]:
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from millrace.cli.main import run

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = run(list(args))
    return code, out.getvalue(), err.getvalue()


def test_cli_without_a_backup_fails_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from millrace.runtime.process import free_port

    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("MILLRACE_MIRROR__KAFKA_PORT", str(free_port()))  # nothing listens there
    for command in ("status", "failover"):
        code, _out, err = cli("--state-dir", str(tmp_path), "mirror", command)
        assert code == 1, err
        assert len(err.strip().splitlines()) == 1 and "the backup cluster is not reachable" in err
    assert not failover_path(tmp_path).exists()  # a failover that failed switched nothing
    code, out, _err = cli("--state-dir", str(tmp_path), "mirror", "failback")
    assert code == 0 and "not failed over" in out


def test_cli_bad_mirror_setting_exits_2_naming_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MILLRACE_MIRROR__SYNC_INTERVAL_S", "0")
    code, _out, err = cli("--state-dir", str(tmp_path), "mirror", "status")
    assert code == 2 and "mirror.sync_interval_s" in err and len(err.strip().splitlines()) == 1


def test_mirrormaker_loads_the_jmx_agent_on_the_step_after_the_backup_nodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from millrace.runtime import cluster, kafka
    from millrace.runtime.process import ProcessManager, ServerSpec

    # No jar downloads and no servers: the jar paths only go on the command line, the spec is captured.
    monkeypatch.setattr(cluster, "resolve_jars", lambda name, version, cache_dir: tmp_path / name)
    monkeypatch.setattr(mirror, "resolve_jars", lambda name, version, cache_dir: tmp_path / name)
    monkeypatch.setattr(kafka, "jmx_agent_jar", lambda cache_dir: tmp_path / "agent.jar")

    class Capture:
        def start(self, spec: ServerSpec) -> ServerSpec:
            return spec

    def start(**kwargs: bool) -> ServerSpec:
        return cast(ServerSpec, mirror.start_mirrormaker(cast(ProcessManager, Capture()), settings, **kwargs))

    settings = load_settings(
        state_dir=tmp_path / "state",
        runtime={"brokers": 3, "port_step": 10},
        mirror={"brokers": 2},
        monitoring={"jmx_port": 9404},
    )
    assert mirror.mirrormaker_jmx_port(settings) == 9454  # primary 9404/9414/9424, backup 9434/9444
    spec = start(metrics=True)
    agents = [a for a in spec.argv if a.startswith("-javaagent:")]
    assert len(agents) == 1 and agents[0].startswith(f"-javaagent:{tmp_path / 'agent.jar'}=127.0.0.1:9454:")
    rules = Path(agents[0].rsplit(":", 1)[1])
    assert rules.name == "mirror-jmx.yaml" and rules.is_file()
    assert spec.argv.index(agents[0]) < spec.argv.index(mirror.MM2_MAIN)
    assert spec.ports == {"jmx": 9454} and spec.kind == "mirror"
    plain = start()
    assert plain.ports == {} and not any(a.startswith("-javaagent:") for a in plain.argv)
