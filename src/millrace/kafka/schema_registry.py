"""A schema registry through its Confluent-compatible REST API (Apicurio Registry's ``/apis/ccompat/v7``).

JSON Schemas are registered per subject (``<topic>-value``, confluent-kafka's default naming), the subject's
compatibility is set explicitly before registering (Apicurio's global default is NONE), and an incompatible
change is refused by the registry, never papered over: :class:`IncompatibleSchema` names the subject and
what the registry said. Values are framed the Confluent way (magic byte 0, 4-byte schema id, JSON), by
confluent-kafka's ``JSONSerializer`` / ``JSONDeserializer``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka.schema_registry import (
    ConfigCompatibilityLevel,
    Schema,
    SchemaRegistryClient,
    ServerConfig,
)
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from millrace.errors import MillraceError

log = logging.getLogger(__name__)
# The registry client's HTTP library logs every request at INFO; millrace says what it registered instead.
for _name in ("httpx", "httpx2"):
    logging.getLogger(_name).setLevel(logging.WARNING)

MAGIC_BYTE = 0


class RegistryUnavailable(MillraceError):
    """The schema registry cannot be reached or answered with a server error."""


class IncompatibleSchema(MillraceError):
    """The registry refused a schema as incompatible with the subject's latest version."""


@dataclass(frozen=True)
class Registered:
    subject: str
    schema_id: int
    version: int
    changed: bool  # False when the same schema was already the subject's latest


def registry_client(url: str, *, timeout_s: float = 10.0) -> SchemaRegistryClient:
    # One quick retry: the client's default of three with backoff makes a registry that is down take ~9 s to say so.
    return SchemaRegistryClient({"url": url, "timeout": int(timeout_s), "max.retries": 1, "retries.wait.ms": 200})


def subject_for(topic: str) -> str:
    """confluent-kafka's TopicNameStrategy for values."""
    return f"{topic}-value"


def _failure(action: str, url: str, exc: Exception) -> MillraceError:
    if isinstance(exc, SchemaRegistryError) and 400 <= exc.http_status_code < 500:
        return MillraceError(f"{action}: the registry refused it (HTTP {exc.http_status_code}): {exc.error_message}")
    text = exc.error_message if isinstance(exc, SchemaRegistryError) else str(exc)
    return RegistryUnavailable(f"{action}: cannot use the schema registry at {url} ({text}); is it running?")


def set_compatibility(client: SchemaRegistryClient, url: str, level: str, subject: str | None = None) -> None:
    """Set ``level`` (BACKWARD, FULL, NONE, ...) globally or for one subject."""
    try:
        client.set_config(subject, ServerConfig(compatibility=ConfigCompatibilityLevel(level)))
    except Exception as exc:  # httpx errors and SchemaRegistryError alike
        raise _failure(f"setting compatibility {level} on {subject or 'the registry'}", url, exc) from exc


def register(client: SchemaRegistryClient, url: str, subject: str, schema: dict[str, Any], level: str) -> Registered:
    """Register ``schema`` under ``subject`` with compatibility ``level``; idempotent for an unchanged schema.
    Raises IncompatibleSchema (naming the subject and the registry's reason) when the registry refuses it."""
    text = json.dumps(schema, ensure_ascii=False, sort_keys=True)
    candidate = Schema(text, "JSON")
    try:
        latest = client.get_latest_version(subject)
    except SchemaRegistryError as exc:
        if exc.http_status_code != 404:
            raise _failure(f"reading subject {subject}", url, exc) from exc
        latest = None
    except Exception as exc:
        raise _failure(f"reading subject {subject}", url, exc) from exc
    if latest is not None and latest.schema is not None and _same(latest.schema.schema_str, schema):
        assert latest.schema_id is not None and latest.version is not None
        return Registered(subject, latest.schema_id, latest.version, changed=False)
    set_compatibility(client, url, level, subject)
    try:
        schema_id = client.register_schema(subject, candidate)
        version = client.lookup_schema(subject, candidate).version
    except SchemaRegistryError as exc:
        if exc.http_status_code == 409:
            reason = exc.error_message.split("Incompatible artifact: ", 1)[-1]
            raise IncompatibleSchema(
                f"schema for subject {subject} is incompatible with its latest version under {level}: {reason}"
            ) from exc
        raise _failure(f"registering subject {subject}", url, exc) from exc
    except Exception as exc:
        raise _failure(f"registering subject {subject}", url, exc) from exc
    assert version is not None
    return Registered(subject, schema_id, version, changed=True)


def _same(registered: str | None, schema: dict[str, Any]) -> bool:
    try:
        return registered is not None and json.loads(registered) == schema
    except ValueError:
        return False


def json_serializer(
    client: SchemaRegistryClient, schema: dict[str, Any], *, validate: bool = True
) -> Callable[[dict[str, Any], str], bytes]:
    """``serialize(value, topic)``: validate ``value`` against ``schema`` (unless the caller has, ``validate``
    False) and frame it with the schema's id. Schemas are registered by :func:`register` beforehand, never
    implicitly (``auto.register.schemas`` off), so a producer cannot slip an unreviewed schema change into the
    registry. Raises ``confluent_kafka.serialization.SerializationError`` for a value that fails the schema."""
    serializer = JSONSerializer(
        json.dumps(schema, ensure_ascii=False, sort_keys=True),
        client,
        conf={"auto.register.schemas": False, "use.latest.version": False, "validate": validate},
    )

    def serialize(value: dict[str, Any], topic: str) -> bytes:
        data = serializer(value, SerializationContext(topic, MessageField.VALUE))
        assert data is not None
        return data

    return serialize


def json_deserializer(client: SchemaRegistryClient) -> Callable[[bytes, str], Any]:
    """``deserialize(data, topic)``: read the schema id from the framing, fetch that schema from the
    registry and validate the value against it. Raises ``SerializationError`` on a bad frame or value."""
    deserializer = JSONDeserializer(None, schema_registry_client=client)

    def deserialize(data: bytes, topic: str) -> Any:
        return deserializer(data, SerializationContext(topic, MessageField.VALUE))

    return deserialize


def schema_id_of(data: bytes) -> int | None:
    """The schema id in a Confluent-framed value, or None when the value is not framed."""
    if len(data) < 5 or data[0] != MAGIC_BYTE:
        return None
    return int.from_bytes(data[1:5], "big")
