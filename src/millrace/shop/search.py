"""Product search: the backend interface, what is indexed, and the pure parts of a query.

A backend (:class:`SearchBackend`) holds two indexes: ``products`` (from ``filtered-items``) and ``queries``
(the clients' searches from ``client-search``, for analytics). The sink service (:mod:`millrace.shop.indexer`)
feeds it; the client (:func:`millrace.shop.client.search`) asks it. Text is folded (ё -> е) both when indexed
and when asked, so "ёлка" and "елка" are one word.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from millrace.errors import DataError

# Confluent's wire format: magic byte 0 and a 4-byte schema id before the JSON (confluent-kafka's
# JSONSerializer with a schema registry writes it).
WIRE_HEADER = 5


@dataclass(frozen=True)
class ProductDoc:
    """One product as indexed (folded text; the original stays in ``source``)."""

    id: str
    name: str
    description: str = ""
    category: str = ""
    brand: str = ""
    price: float | None = None
    currency: str = ""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class QueryDoc:
    """One client query as indexed: ``id`` is where it came from (topic/partition/offset), so a replay
    overwrites it instead of counting it twice."""

    id: str
    type: str
    user: str
    query: str
    timestamp: str


@dataclass(frozen=True)
class PriceRange:
    low: float | None = None  # inclusive
    high: float | None = None  # exclusive

    @property
    def key(self) -> str:
        low = "*" if self.low is None else f"{self.low:g}"
        high = "*" if self.high is None else f"{self.high:g}"
        return f"{low}-{high}"


PRICE_RANGES = (
    PriceRange(None, 1000),
    PriceRange(1000, 5000),
    PriceRange(5000, 20000),
    PriceRange(20000, 50000),
    PriceRange(50000, None),
)


@dataclass(frozen=True)
class SearchRequest:
    text: str
    category: str | None = None
    brand: str | None = None
    price: PriceRange | None = None
    limit: int = 10
    fuzzy: bool = True


@dataclass(frozen=True)
class Hit:
    id: str
    name: str
    category: str
    brand: str
    price: float | None
    score: float
    highlight: str  # the name (or else the description) with matched words in <b></b>


@dataclass(frozen=True)
class SearchResult:
    total: int
    hits: list[Hit]
    facets: dict[str, dict[str, int]] = field(default_factory=dict)  # category / brand / price -> value -> count


class SearchBackend(Protocol):
    """Where products and queries are indexed and searched.

    ``upsert_products`` / ``delete_products`` / ``upsert_queries`` are idempotent by id (a replayed batch
    changes nothing) and durable when :meth:`commit` returns; nothing is visible to :meth:`search` before
    that commit. Raises :class:`millrace.errors.MillraceError` when the backend cannot be reached or written;
    never drops a document silently. Not guaranteed: that several writers may share one backend (the embedded
    tantivy index allows one writer process)."""

    def upsert_products(self, docs: Sequence[ProductDoc]) -> None: ...

    def delete_products(self, ids: Sequence[str]) -> None: ...

    def upsert_queries(self, docs: Sequence[QueryDoc]) -> None: ...

    def commit(self) -> None: ...

    def search(self, request: SearchRequest) -> SearchResult: ...

    def count_queries(self, text: str | None = None) -> int: ...

    def close(self) -> None: ...


def fold(text: str) -> str:
    """ё/Ё -> е/Е: Russian texts write either, and readers treat them as one letter."""
    return text.replace("ё", "е").replace("Ё", "Е")


def decode_json(value: bytes) -> dict[str, Any]:
    """A record's JSON object, with or without the schema registry's wire header."""
    raw = value[WIRE_HEADER:] if value[:1] == b"\x00" and len(value) > WIRE_HEADER else value
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"not a JSON record: {exc}") from None
    if not isinstance(data, dict):
        raise DataError("not a JSON object")
    return data


def product_doc(product_id: str, data: dict[str, Any]) -> ProductDoc:
    """The indexed form of a catalog item (the catalog schema: name, description, category, brand,
    price {amount, currency}, tags ...)."""
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"product {product_id} has no name")
    price = data.get("price")
    amount: float | None = None
    currency = ""
    if isinstance(price, dict):
        raw = price.get("amount")
        amount = float(raw) if isinstance(raw, int | float | str) and _is_number(raw) else None
        currency = str(price.get("currency") or "")
    elif isinstance(price, int | float):
        amount = float(price)
    tags = data.get("tags") or ()
    return ProductDoc(
        id=product_id,
        name=str(name),
        description=str(data.get("description") or ""),
        category=str(data.get("category") or ""),
        brand=str(data.get("brand") or ""),
        price=amount,
        currency=currency,
        tags=tuple(str(t) for t in tags) if isinstance(tags, list) else (),
    )


def query_doc(record_id: str, data: dict[str, Any]) -> QueryDoc:
    query = data.get("query")
    if not isinstance(query, str):
        raise DataError(f"client-search record {record_id} has no query")
    return QueryDoc(
        id=record_id,
        type=str(data.get("type") or "search"),
        user=str(data.get("user") or ""),
        query=query,
        timestamp=str(data.get("timestamp") or ""),
    )


def _is_number(value: int | float | str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def price_range_of(value: str) -> PriceRange:
    """``LOW-HIGH``, ``LOW-`` or ``-HIGH`` (``--price 1000-5000``)."""
    low_s, sep, high_s = value.partition("-")
    if not sep:
        raise ValueError("expected LOW-HIGH, LOW- or -HIGH")
    low = float(low_s) if low_s.strip() else None
    high = float(high_s) if high_s.strip() else None
    if low is None and high is None:
        raise ValueError("give at least one bound")
    if low is not None and high is not None and low >= high:
        raise ValueError("LOW must be below HIGH")
    return PriceRange(low, high)


def plural_goods(n: int) -> str:
    """The shop's answer line, as the client expects it: "Нашлось N товаров"."""
    return f"Нашлось {n} товаров"
