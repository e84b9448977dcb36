"""Client settings beyond librdkafka's: the Java client's (Spark's Kafka source and sink), a connection check
that names why a secured cluster refused us, and one-line messages for Kafka failures.

The librdkafka properties of every millrace producer, consumer and admin client come from
:meth:`millrace.config.KafkaSettings.client_config`; :func:`java_client_config` is its equivalent for the
Java client, built from the same settings, so a secured cluster needs nothing but the ``[kafka]`` settings.
"""

from __future__ import annotations

import threading
from typing import Any

from millrace.config import KafkaSettings
from millrace.errors import KafkaUnavailable, MillraceError

_LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


def _jaas_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def java_client_config(kafka: KafkaSettings) -> dict[str, str]:
    """Java client properties (no ``kafka.`` prefix) equivalent to ``kafka.client_config()``.

    The CA (and a client certificate, when given) are read as PEM files, as librdkafka reads them.
    """
    conf = {"bootstrap.servers": kafka.bootstrap_servers, "security.protocol": kafka.security_protocol}
    if kafka.sasl_mechanism:
        conf["sasl.mechanism"] = kafka.sasl_mechanism
    if kafka.security_protocol.startswith("SASL") and kafka.sasl_username and kafka.sasl_password:
        module = _LOGIN_MODULES[kafka.sasl_mechanism or "PLAIN"]
        user, password = _jaas_quote(kafka.sasl_username), _jaas_quote(kafka.sasl_password.get_secret_value())
        conf["sasl.jaas.config"] = f'{module} required username="{user}" password="{password}";'
    if kafka.ssl_cafile:
        conf["ssl.truststore.type"] = "PEM"
        conf["ssl.truststore.location"] = str(kafka.ssl_cafile.resolve())
    if kafka.ssl_certfile and kafka.ssl_keyfile:
        # Java wants key and chain in one PEM keystore file: give the key file holding both as ssl_keyfile.
        conf["ssl.keystore.type"] = "PEM"
        conf["ssl.keystore.location"] = str(kafka.ssl_keyfile.resolve())
    return conf


def kafka_failure(action: str, exc: BaseException) -> MillraceError:
    """One line for a failed Kafka operation: what we tried, the Kafka error name and its text."""
    err: Any = exc.args[0] if exc.args else None
    if hasattr(err, "name") and hasattr(err, "str"):
        name = err.name()
        if name.endswith("_AUTHORIZATION_FAILED"):  # the broker's text is a dump of the request: say what it means
            return MillraceError(f"{action}: not authorized ({name}); the principal has no ACL allowing it")
        return KafkaUnavailable(f"{action} failed: {name}: {_first_line(err.str())}")
    return KafkaUnavailable(f"{action} failed: {_first_line(str(exc))}")


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().split("\n")[0]
    return line if len(line) <= limit else line[:limit] + "..."


def check_connection(client_config: dict[str, Any], *, timeout_s: float = 10.0) -> int:
    """Connect and fetch metadata; returns the number of brokers.

    Raises KafkaUnavailable with the cause librdkafka reported (a TLS certificate the CA does not vouch for,
    a SASL authentication failure, a refused connection) instead of a bare timeout.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    errors: list[str] = []
    lock = threading.Lock()

    def on_error(err: Any) -> None:
        with lock:
            errors.append(str(err.str()))

    conf: dict[str, Any] = {**client_config, "error_cb": on_error, "log_level": 0}
    admin = AdminClient(conf)
    try:
        meta = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        admin.poll(0.5)  # error callbacks are served by poll
        with lock:
            cause = _best_cause(errors) or str(exc)
        raise KafkaUnavailable(
            f"cannot connect to Kafka at {client_config.get('bootstrap.servers')}: {cause}"
        ) from None
    return len(meta.brokers)


def _best_cause(errors: list[str]) -> str | None:
    """The most telling of librdkafka's connection errors (TLS and authentication first)."""
    for keyword in ("SSL", "certificate", "SASL", "uthentication"):
        for text in errors:
            if keyword in text:
                return text.split("\n")[0]
    return errors[-1].split("\n")[0] if errors else None
