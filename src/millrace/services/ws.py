"""WebSocket channels fed by one Kafka consumer, fanned out through bounded per-client queues.

Protocol (JSON text frames):

- authentication (when ``api.auth`` is "token"): the handshake's ``Authorization: Bearer`` header, or a first
  message ``{"type": "auth", "token": "..."}`` answered with ``{"type": "authenticated", "role": ...}``;
  a missing or unknown token closes the socket with 1008 (see services/auth.py).

- client → server: ``{"subscribe": ["sensors", "alerts", "quality", "windows"],
  "filters": {"location": "loc-01", "sensor_type": "temperature"}}`` (replaces the previous subscription;
  filters are optional; ``quality`` messages are not filtered).
- server → client: ``{"type": "subscribed", "channels": [...], "filters": {...}}`` once per subscribe,
  then ``{"channel": "alerts", "data": {...}}`` for every matching Kafka message (on ``sensors``, for every
  reading of a predictions message: services.feed unpacks them), and
  ``{"type": "error", "detail": "..."}`` for a bad subscribe message.

The Kafka consumer thread never waits for a client: :meth:`Hub.publish` appends to each subscriber's bounded
deque (the oldest message is dropped and counted when it is full) and wakes the client's sender task.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from millrace import telemetry
from millrace.records import SENSOR_TYPES
from millrace.services.auth import authenticate_ws

log = logging.getLogger(__name__)

CHANNELS: tuple[str, ...] = ("sensors", "alerts", "quality", "windows")
FILTER_KEYS: tuple[str, ...] = ("location", "sensor_type")
DEFAULT_QUEUE = 1000

router = APIRouter()


def sensor_type_of(sensor_id: str) -> str | None:
    """Sensor ids are ``<device_id>-<sensor_type>``."""
    for kind in SENSOR_TYPES:
        if sensor_id.endswith("-" + kind):
            return kind
    return None


def _matches(channel: str, data: dict[str, Any], filters: dict[str, str]) -> bool:
    if channel == "quality" or not filters:
        return True
    location = filters.get("location")
    if location and data.get("location") != location:
        return False
    wanted = filters.get("sensor_type")
    if wanted:
        if channel == "alerts":
            types = {sensor_type_of(str(s)) for s in data.get("sensor_ids") or ()}
            return wanted in types
        return data.get("sensor_type") == wanted
    return True


@dataclass(eq=False)
class Client:
    """One WebSocket connection's subscription and outbox. The outbox is filled from the Kafka thread."""

    loop: asyncio.AbstractEventLoop
    maxlen: int = DEFAULT_QUEUE
    id: int = 0
    channels: frozenset[str] = frozenset()
    filters: dict[str, str] = field(default_factory=dict)
    sent: int = 0
    dropped: int = 0
    outbox: deque[bytes] = field(init=False)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # control frames vs. the sender task
    _notified: bool = False

    def __post_init__(self) -> None:
        self.outbox = deque(maxlen=self.maxlen)

    def offer(self, frame: bytes) -> None:
        """Queue a frame without blocking; when full the oldest frame is dropped and counted."""
        with self.lock:
            if len(self.outbox) == self.maxlen:
                self.dropped += 1
                telemetry.WS_DROPPED.inc()
            self.outbox.append(frame)
            if self._notified:
                return
            self._notified = True
        with contextlib.suppress(RuntimeError):  # loop closed: the client is going away
            self.loop.call_soon_threadsafe(self.wake.set)

    def take(self) -> list[bytes]:
        with self.lock:
            frames = list(self.outbox)
            self.outbox.clear()
            self._notified = False
            self.wake.clear()
        return frames

    def stats(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "channels": sorted(self.channels),
            "filters": self.filters,
            "queued": len(self.outbox),
            "sent": self.sent,
            "dropped": self.dropped,
        }


class Hub:
    """The set of connected clients; thread-safe publish from the Kafka feed."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE) -> None:
        self.queue_size = queue_size
        self._clients: set[Client] = set()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.published: dict[str, int] = dict.fromkeys(CHANNELS, 0)
        self.dropped_total = 0

    def connect(self, loop: asyncio.AbstractEventLoop) -> Client:
        client = Client(loop=loop, maxlen=self.queue_size, id=next(self._ids))
        with self._lock:
            self._clients.add(client)
        telemetry.WS_CLIENTS.inc()
        return client

    def disconnect(self, client: Client) -> None:
        with self._lock:
            if client not in self._clients:
                return
            self._clients.discard(client)
            self.dropped_total += client.dropped
        telemetry.WS_CLIENTS.dec()

    def publish(self, channel: str, data: dict[str, Any]) -> int:
        """Offer one message to every matching subscriber; returns how many clients it was queued for."""
        frame = orjson.dumps({"channel": channel, "data": data})
        with self._lock:
            self.published[channel] = self.published.get(channel, 0) + 1
            clients = [c for c in self._clients if channel in c.channels]
        queued = 0
        for client in clients:
            if _matches(channel, data, client.filters):
                client.offer(frame)
                queued += 1
        return queued

    def stats(self) -> dict[str, Any]:
        with self._lock:
            clients = [c.stats() for c in sorted(self._clients, key=lambda c: c.id)]
            dropped = self.dropped_total + sum(c["dropped"] for c in clients)
            return {
                "clients": clients,
                "published": dict(self.published),
                "dropped_total": dropped,
                "queue_size": self.queue_size,
            }


def parse_subscribe(message: Any) -> tuple[frozenset[str], dict[str, str]]:
    """Validate a subscribe message; raises ValueError with what is wrong."""
    if not isinstance(message, dict) or "subscribe" not in message:
        raise ValueError('expected {"subscribe": [channels...], "filters": {...}}')
    channels = message["subscribe"]
    if isinstance(channels, str):
        channels = [channels]
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise ValueError("subscribe must be a list of channel names")
    unknown = sorted(set(channels) - set(CHANNELS))
    if unknown:
        raise ValueError(f"unknown channel(s) {unknown}; channels are {list(CHANNELS)}")
    filters = message.get("filters")
    if filters is None:
        filters = {}
    if not isinstance(filters, dict):
        raise ValueError("filters must be an object")
    bad = sorted(set(filters) - set(FILTER_KEYS))
    if bad:
        raise ValueError(f"unknown filter(s) {bad}; filters are {list(FILTER_KEYS)}")
    clean = {k: str(v) for k, v in filters.items() if v not in (None, "")}
    return frozenset(channels), clean


async def _sender(ws: WebSocket, client: Client) -> None:
    while True:
        await client.wake.wait()
        for frame in client.take():
            async with client.send_lock:
                await ws.send_text(frame.decode())
            client.sent += 1


@router.websocket("/ws")
async def websocket(ws: WebSocket) -> None:
    """Live channels: sensors (predictions), alerts, quality, windows. See the module doc for the protocol."""
    hub: Hub = ws.app.state.hub
    await ws.accept()
    if await authenticate_ws(ws) is None:  # closed with 1008
        return
    client = hub.connect(asyncio.get_running_loop())
    sender = asyncio.create_task(_sender(ws, client))
    try:
        while True:
            text = await ws.receive_text()
            try:
                channels, filters = parse_subscribe(orjson.loads(text))
            except (ValueError, orjson.JSONDecodeError) as exc:
                async with client.send_lock:
                    await ws.send_text(orjson.dumps({"type": "error", "detail": str(exc)}).decode())
                continue
            with client.lock:
                client.channels, client.filters = channels, filters
            async with client.send_lock:
                await ws.send_text(
                    orjson.dumps({"type": "subscribed", "channels": sorted(channels), "filters": filters}).decode()
                )
    except WebSocketDisconnect:
        pass
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        hub.disconnect(client)
