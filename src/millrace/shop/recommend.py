"""Answering "what should user U see": the latest recommendations per user, else the most ordered products.

Part 2's job writes one record per user to the shop recommendations topic (keyed by user; the recommendation
schema: user, items [{product_id, score}], model, generated_at); the latest record of a user is the answer. The
topic is read back, not joined as a group: :class:`Recommender` keeps its read position per partition and
each :meth:`Recommender.refresh` reads only what was written since, so a long-lived API process pays for a
record once. For a user without recommendations the answer is the catalog's most ordered products (quantities
summed over every order line in the orders topic), marked ``source: popular``. When neither exists yet,
:class:`NoRecommendations` says so.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from confluent_kafka import Message

from millrace.errors import DataError, MillraceError
from millrace.kafka.reader import read_offsets, watermarks
from millrace.shop.search import decode_json

log = logging.getLogger(__name__)


class NoRecommendations(MillraceError):
    """Neither recommendations for the user nor orders to rank popular products exist yet."""


@dataclass(frozen=True)
class Recommended:
    product_id: str
    score: float
    name: str = ""
    category: str = ""


@dataclass(frozen=True)
class Answer:
    user: str
    source: Literal["recommendations", "popular"]
    items: list[Recommended]
    model: str = ""
    generated_at: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "source": self.source,
            "model": self.model,
            "generated_at": self.generated_at,
            "items": [i.__dict__ for i in self.items],
        }


@dataclass
class LatestRecommendations:
    """The latest recommendation record per user (pure: fed with decoded records in topic order)."""

    by_user: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: int = 0

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if value is None:  # a tombstone: the user's recommendations were withdrawn
            if key:
                self.by_user.pop(key.decode("utf-8", errors="replace"), None)
            return
        try:
            data = decode_json(value)
        except DataError:
            self.skipped += 1
            return
        user = data.get("user") or (key.decode("utf-8", errors="replace") if key else "")
        items = data.get("items")
        if not isinstance(user, str) or not user or not isinstance(items, list):
            self.skipped += 1
            return
        self.by_user[user] = data


@dataclass
class Popularity:
    """Ordered quantity per product over every order line (pure)."""

    counts: Counter[str] = field(default_factory=Counter)
    orders: int = 0

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            return
        try:
            data = decode_json(value)
        except DataError:
            return
        lines = data.get("lines")
        if not isinstance(lines, list):
            return
        self.orders += 1
        for line in lines:
            if isinstance(line, dict) and isinstance(line.get("product_id"), str):
                quantity = line.get("quantity", 1)
                self.counts[line["product_id"]] += quantity if isinstance(quantity, int) and quantity > 0 else 1

    def top(self, n: int) -> list[tuple[str, int]]:
        # most ordered first; ties by product id so that the answer is stable
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


class TopicFollower:
    """Reads a topic from where the last call stopped up to its end as it stands now (assign only, nothing
    committed), handing each record to ``apply``."""

    def __init__(
        self,
        client_config: dict[str, Any],
        topic: str,
        apply: Callable[[bytes | None, bytes | None], None],
        *,
        tail: int | None = None,
    ) -> None:
        """``tail``: the first refresh starts this many records before each partition's end (None: from the
        start)."""
        self.client_config, self.topic, self._apply = client_config, topic, apply
        self.position: dict[int, int] = {}
        self._tail = tail

    def refresh(self, *, timeout_s: float = 30.0) -> int:
        """Read what was written since the last call; returns how many records were read."""
        marks = watermarks(self.client_config, self.topic)
        wanted: dict[int, range] = {}
        for partition, (low, high) in marks.items():
            first = low if self._tail is None else max(low, high - self._tail)
            start = max(low, self.position.get(partition, first))
            if high > start:
                wanted[partition] = range(start, high)
            self.position[partition] = max(start, high)
        n = 0
        for msg in _records(self.client_config, self.topic, wanted, timeout_s):
            self._apply(msg.key(), msg.value())
            n += 1
        return n


def _records(
    client_config: dict[str, Any], topic: str, wanted: Mapping[int, Iterable[int]], timeout_s: float
) -> Iterator[Message]:
    if wanted:
        yield from read_offsets(client_config, topic, wanted, timeout_s=timeout_s)


class Recommender:
    """Answers from the recommendations topic with the orders topic as fallback; safe to share between
    threads (one refresh at a time)."""

    def __init__(
        self,
        client_config: dict[str, Any],
        *,
        recommendations_topic: str,
        orders_topic: str,
        products: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.latest = LatestRecommendations()
        self.popularity = Popularity()
        self.products = products or {}
        self._followers = (
            TopicFollower(client_config, recommendations_topic, self.latest.apply),
            TopicFollower(client_config, orders_topic, self.popularity.apply),
        )
        self._lock = threading.Lock()

    def refresh(self) -> None:
        with self._lock:
            for follower in self._followers:
                follower.refresh()

    def recommend(self, user: str, *, limit: int = 10, refresh: bool = True) -> Answer:
        if refresh:
            self.refresh()
        record = self.latest.by_user.get(user)
        if record is not None:
            items = [
                self._item(str(i["product_id"]), float(i.get("score", 0.0)))
                for i in record["items"]
                if isinstance(i, dict) and i.get("product_id")
            ]
            return Answer(
                user,
                "recommendations",
                items[:limit],
                model=str(record.get("model", "")),
                generated_at=str(record.get("generated_at", "")),
            )
        top = self.popularity.top(limit)
        if not top:
            raise NoRecommendations(
                f"no recommendations for {user!r} yet and no orders to rank popular products: run "
                "`millrace shop orders` (and part 2's recommendations job)"
            )
        return Answer(user, "popular", [self._item(pid, float(n)) for pid, n in top], model="popularity")

    def _item(self, product_id: str, score: float) -> Recommended:
        product = self.products.get(product_id, {})
        return Recommended(product_id, score, str(product.get("name", "")), str(product.get("category", "")))
