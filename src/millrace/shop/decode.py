"""Reading shop records back: each value is checked against the schema its framing names (fetched from the
registry), and one that fails — not framed, an unknown schema id, not JSON, or not valid for its schema — is
sent to the shop dead-letter topic with the reason and its source ``topic`` and ``partition:offset``, never
dropped silently and never fatal to the reader. Consumers of shop topics (the stop-list filter, the search
sink, ``millrace shop check``) use :class:`SchemaDecoder`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Message
from confluent_kafka.serialization import SerializationError

from millrace.kafka.schema_registry import json_deserializer, registry_client, schema_id_of
from millrace.records import DeadLetter

Send = Callable[[str, bytes, bytes | str | None], None]  # (topic, value, key)
TOMBSTONE = object()  # a record with no value: a delete, not a schema failure


@dataclass
class DecodeStats:
    valid: int = 0
    tombstones: int = 0
    dead_lettered: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class SchemaDecoder:
    """Decode Confluent-framed JSON values with the registry; dead-letter what fails.

    ``decode(msg)`` returns the value (a dict), :data:`TOMBSTONE` for a record without a value, or None when
    the record was dead-lettered through ``send`` (the caller flushes its producer).
    """

    def __init__(self, registry_url: str, send: Send, *, dead_letter_topic: str, stage: str) -> None:
        self._deserialize = json_deserializer(registry_client(registry_url))
        self._send = send
        self._topic = dead_letter_topic
        self._stage = stage
        self.stats = DecodeStats()

    def decode(self, msg: Message) -> Any:
        data = msg.value()
        if data is None:
            self.stats.tombstones += 1
            return TOMBSTONE
        topic = str(msg.topic())
        kind = reason = None
        schema_id = schema_id_of(data)
        if schema_id is None:
            kind, reason = "not-framed", "not framed with a schema id (magic byte 0 + 4-byte id)"
        else:
            try:
                value = self._deserialize(data, topic)
            except SerializationError as exc:
                kind, reason = "schema-violation", f"fails its schema (id {schema_id}): {_first_line(str(exc))}"
            except ValueError as exc:
                kind, reason = "not-json", f"not valid JSON: {_first_line(str(exc))}"
            except Exception as exc:  # the registry does not know the id, or cannot be reached for it
                kind, reason = "unknown-schema", f"schema id {schema_id} cannot be used: {_first_line(str(exc))}"
        if kind is None or reason is None:
            self.stats.valid += 1
            return value
        self._dead_letter(msg, data, kind, reason)
        return None

    def _dead_letter(self, msg: Message, data: bytes, kind: str, reason: str) -> None:
        body = data[5:] if schema_id_of(data) is not None else data
        letter = DeadLetter(
            reason=reason,
            stage=self._stage,
            source=str(msg.topic()),
            position=f"{msg.partition()}:{msg.offset()}",
            raw=body.decode("utf-8", errors="replace"),
        )
        key = msg.key()
        self._send(self._topic, json.dumps(letter.to_dict(), ensure_ascii=False).encode(), key)
        self.stats.dead_lettered += 1
        self.stats.reasons[kind] = self.stats.reasons.get(kind, 0) + 1

    def decode_all(self, messages: Iterable[Message]) -> list[Any]:
        """The valid values of ``messages`` in order (tombstones left out)."""
        out = []
        for msg in messages:
            value = self.decode(msg)
            if value is not None and value is not TOMBSTONE:
                out.append(value)
        return out


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().split("\n")[0]
    return line if len(line) <= limit else line[:limit] + "..."
