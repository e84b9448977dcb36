"""The local stack behind ``millrace stack up | down | status | logs``: Kafka plus optional servers.

Optional servers (``--with mqtt``, ``--with mongodb``, ...) register a factory in ``EXTRA_SERVERS``; each
returns a :class:`ServerSpec` (or several, started in order) run by the same :class:`ProcessManager` as the
Kafka nodes. With ``--with monitoring`` (or ``monitoring.broker_metrics = true``) the brokers serve JMX metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from millrace.config import Settings
from millrace.errors import MillraceError
from millrace.runtime import cluster, kafka
from millrace.runtime.process import ProcessManager, ProcessRecord, ServerSpec, tcp_probe

log = logging.getLogger(__name__)

ExtraFactory = Callable[[Settings], ServerSpec | Sequence[ServerSpec]]
EXTRA_SERVERS: dict[str, ExtraFactory] = {}


def register_extra(name: str) -> Callable[[ExtraFactory], ExtraFactory]:
    def decorate(factory: ExtraFactory) -> ExtraFactory:
        EXTRA_SERVERS[name] = factory
        return factory

    return decorate


def _load_extras() -> None:
    # Importing a runtime module registers its server; each import is optional until its issue lands.
    import importlib

    extras = ("mqtt", "mongodb", "monitoring", "registry", "search", "hdfs")
    for module in (f"millrace.runtime.{name}" for name in extras):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


@dataclass(frozen=True)
class ServerStatus:
    name: str
    kind: str
    pid: int | None
    ports: dict[str, int]
    uptime_s: float | None
    running: bool
    healthy: bool
    log_path: str


class Stack:
    """Starts and stops the managed local servers described by one Settings tree."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.manager = ProcessManager(settings.state_dir)

    def kafka_cluster(self, *, broker_metrics: bool = False) -> kafka.KafkaCluster:
        """The nodes runtime.brokers and runtime.security ask for (security material made on first use)."""
        jmx_port = self.settings.monitoring.jmx_port if broker_metrics else None
        return cluster.describe(
            self.settings.state_dir, self.settings.cache_dir, self.settings.runtime, jmx_port=jmx_port
        )

    def admin_config(self) -> dict[str, object]:
        """Client settings of the admin principal on the managed cluster (plaintext when not secured)."""
        return cluster.admin_config(self.kafka_cluster())

    def up(self, with_: Sequence[str] = (), *, apply_topics: bool = True, mirror: bool = False) -> list[ProcessRecord]:
        """Start Kafka (and the named extras), apply the topic list; a no-op for what already runs. ``mirror``:
        also the backup cluster and MirrorMaker 2 ([mirror], runtime.mirror)."""
        _load_extras()
        unknown = [name for name in with_ if name not in EXTRA_SERVERS]
        if unknown:
            known = ", ".join(sorted(EXTRA_SERVERS)) or "none"
            raise MillraceError(f"unknown server {', '.join(unknown)} for --with (known: {known})")
        metrics = self.settings.monitoring.broker_metrics
        broker_metrics = "monitoring" in with_ if metrics is None else metrics
        started = self.start_kafka(broker_metrics=broker_metrics)
        if apply_topics:
            from millrace.kafka.admin import apply_topics as apply
            from millrace.kafka.topics import plan_topics

            secure = self.settings.runtime.security != "none"
            conf = self.admin_config() if secure else self.settings.kafka.client_config()
            plan = plan_topics(conf, self.settings.topics)
            apply(conf, plan.specs)
            for topic, notes in plan.cannot_change.items():
                log.warning("topic %s: %s", topic, "; ".join(notes))
            if secure:
                from millrace.kafka.acls import apply_acls, declared_acls
                from millrace.kafka.admin import admin_client

                acls = declared_acls(
                    self.settings.topics,
                    stream_job_group=self.settings.spark.consumer_group,
                    mirror_topics=self.settings.mirror.topics,
                )
                apply_acls(admin_client(conf), acls)
        if mirror:
            from millrace.runtime import mirror as backup

            started += backup.start(self.manager, self.settings, broker_metrics=broker_metrics)
        for name in with_:
            specs = EXTRA_SERVERS[name](self.settings)
            for spec in [specs] if isinstance(specs, ServerSpec) else specs:
                started.append(self.manager.start(spec))
        return started

    def start_kafka(self, *, broker_metrics: bool = False) -> list[ProcessRecord]:
        rt = self.settings.runtime
        cluster.check_layout(self.settings.state_dir, rt)
        nodes = self.kafka_cluster(broker_metrics=broker_metrics)
        return cluster.start(self.manager, nodes, start_timeout_s=rt.start_timeout_s, stop_timeout_s=rt.stop_timeout_s)

    def down(self) -> list[str]:
        """Stop every managed server, extras first (MirrorMaker among them: it would wait ~30 s for brokers
        gone before it), Kafka (primary and backup nodes) last. Returns the names that were running."""
        timeout_s = self.settings.runtime.stop_timeout_s
        stopped = []
        for rec in self.manager.records():
            if rec.kind != "kafka" and self.manager.stop(rec.name, timeout_s=timeout_s):
                stopped.append(rec.name)
        nodes = [rec.name for rec in self.manager.records() if rec.kind == "kafka"]
        return stopped + cluster.stop_all(self.manager, nodes, timeout_s=timeout_s)

    def status(self) -> list[ServerStatus]:
        out = []
        for rec in self.manager.records():
            running = rec.alive
            out.append(
                ServerStatus(
                    name=rec.name,
                    kind=rec.kind,
                    pid=rec.pid if running else None,
                    ports=rec.ports,
                    uptime_s=rec.uptime_s if running else None,
                    running=running,
                    healthy=running and _healthy(rec, self.settings),
                    log_path=rec.log_path,
                )
            )
        return out


def _healthy(rec: ProcessRecord, settings: Settings) -> bool:
    try:
        if rec.kind == "kafka" and "sasl_ssl" in rec.ports:  # a secured node: ask as the admin principal
            from millrace.kafka.acls import ADMIN
            from millrace.runtime.security import load_security

            bootstrap = f"{rec.host}:{rec.ports['sasl_ssl']}"
            security = load_security(settings.state_dir)
            if security is None:
                return False
            conf = security.client_settings(ADMIN, bootstrap).client_config()
            return kafka.metadata_probe(bootstrap, client_config=conf)
        if rec.kind == "kafka":
            return kafka.metadata_probe(f"{rec.host}:{rec.ports['client']}")
        return all(tcp_probe(rec.host, port) for port in rec.ports.values())
    except Exception:  # any client error means "not healthy", never a crash of `status`
        return False
