"""What the simulator (and replay) hand to a sink: messages with labels for live statistics."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple


class Message(NamedTuple):
    """One message for a sink: Kafka key and value plus labels for live statistics."""

    key: str
    value: bytes
    sensor_type: str
    kind: str  # ground truth ("normal" or an anomaly kind) or "fault:<name>"
    location: str
    device_id: str


@dataclass
class MessageBatch:
    """Messages in production order, column-wise (a sink can send a batch without building tuples)."""

    keys: list[str] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    sensor_types: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    device_ids: list[str] = field(default_factory=list)
    # The keys already UTF-8 encoded, when the producer of the batch has them (the simulator does): passing
    # bytes to confluent-kafka saves an encode per message on the hot path.
    key_bytes: list[bytes] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[Message]:
        return map(Message, self.keys, self.values, self.sensor_types, self.kinds, self.locations, self.device_ids)

    def append(self, msg: Message) -> None:
        self.key_bytes = None
        self.keys.append(msg.key)
        self.values.append(msg.value)
        self.sensor_types.append(msg.sensor_type)
        self.kinds.append(msg.kind)
        self.locations.append(msg.location)
        self.device_ids.append(msg.device_id)

    def slice(self, start: int, stop: int) -> MessageBatch:
        return MessageBatch(
            self.keys[start:stop],
            self.values[start:stop],
            self.sensor_types[start:stop],
            self.kinds[start:stop],
            self.locations[start:stop],
            self.device_ids[start:stop],
            None if self.key_bytes is None else self.key_bytes[start:stop],
        )

    def head(self, n: int) -> MessageBatch:
        return MessageBatch(
            self.keys[:n],
            self.values[:n],
            self.sensor_types[:n],
            self.kinds[:n],
            self.locations[:n],
            self.device_ids[:n],
            None if self.key_bytes is None else self.key_bytes[:n],
        )
