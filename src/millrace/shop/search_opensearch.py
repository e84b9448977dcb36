"""The scalable search backend: OpenSearch over its REST API (two indexes, ``<prefix>-products`` and
``<prefix>-queries``).

The same behaviour as the embedded tantivy backend: an analyzer folding ё -> е (a char filter), lower-casing
and stemming Russian (Snowball); every query word must match, in the name (boosted) or the product's whole
text, exactly or one edit away for words of four or more letters; facets from aggregations; highlighting.
Writes are buffered and sent as one ``_bulk`` request by :meth:`commit`, which then refreshes, so what was
committed is searchable; ``_id`` is the product id (or the query's topic/partition/offset), so a replay
overwrites. Any number of index-service instances may write (this is the scale path).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from millrace.errors import MillraceError
from millrace.shop.search import (
    PRICE_RANGES,
    Hit,
    ProductDoc,
    QueryDoc,
    SearchRequest,
    SearchResult,
    fold,
)

WORD = re.compile(r"\w+")
FUZZINESS = "AUTO:4,1000"  # no edit below four letters, one from four on (as the tantivy backend)

ANALYSIS = {
    "char_filter": {"yo": {"type": "mapping", "mappings": ["ё => е", "Ё => Е"]}},
    "filter": {"ru_stemmer": {"type": "stemmer", "language": "russian"}},
    "analyzer": {
        "ru": {"type": "custom", "char_filter": ["yo"], "tokenizer": "standard", "filter": ["lowercase", "ru_stemmer"]}
    },
}
PRODUCTS_MAPPING = {
    "properties": {
        "id": {"type": "keyword"},
        "title": {"type": "keyword", "index": False},
        "name": {"type": "text", "analyzer": "ru"},
        "description": {"type": "text", "analyzer": "ru"},
        "body": {"type": "text", "analyzer": "ru"},
        "category": {"type": "keyword"},
        "brand": {"type": "keyword"},
        "price": {"type": "double"},
        "currency": {"type": "keyword"},
    }
}
QUERIES_MAPPING = {
    "properties": {
        "type": {"type": "keyword"},
        "user": {"type": "keyword"},
        "query": {"type": "text", "analyzer": "ru"},
        "query_exact": {"type": "keyword"},
        "timestamp": {"type": "keyword"},
    }
}


class OpenSearchBackend:
    """:class:`millrace.shop.search.SearchBackend` on an OpenSearch cluster at ``url``."""

    def __init__(self, url: str, *, prefix: str = "millrace-shop", timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.products, self.queries = f"{prefix}-products", f"{prefix}-queries"
        self.timeout_s = timeout_s
        self._pending: list[dict[str, Any]] = []  # bulk lines
        for index, mapping in ((self.products, PRODUCTS_MAPPING), (self.queries, QUERIES_MAPPING)):
            if self._call("HEAD", f"/{index}", allow=(404,)) == 404:
                body = {"settings": {"analysis": ANALYSIS, "number_of_replicas": 0}, "mappings": mapping}
                self._call("PUT", f"/{index}", body, allow=(400,))  # 400: another instance created it first

    def _call(
        self, method: str, path: str, body: Any = None, *, allow: tuple[int, ...] = (), ndjson: bool = False
    ) -> Any:
        data = None
        headers = {"Content-Type": "application/x-ndjson" if ndjson else "application/json"}
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode("utf-8")
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
                return json.loads(raw) if raw else response.status
        except urllib.error.HTTPError as exc:
            if exc.code in allow:
                return exc.code
            detail = exc.read().decode("utf-8", errors="replace")[:300]
            raise MillraceError(f"OpenSearch {method} {path} failed: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise MillraceError(f"OpenSearch at {self.url} cannot be reached: {exc}") from None

    def upsert_products(self, docs: Sequence[ProductDoc]) -> None:
        for doc in docs:
            source: dict[str, Any] = {
                "id": doc.id,
                "title": doc.name,
                "name": doc.name,
                "description": doc.description,
                "body": " ".join([doc.name, doc.description, doc.category, doc.brand, *doc.tags]),
                "category": doc.category,
                "brand": doc.brand,
                "price": doc.price,
                "currency": doc.currency,
            }
            self._pending += [{"index": {"_index": self.products, "_id": doc.id}}, source]

    def delete_products(self, ids: Sequence[str]) -> None:
        self._pending += [{"delete": {"_index": self.products, "_id": product_id}} for product_id in ids]

    def upsert_queries(self, docs: Sequence[QueryDoc]) -> None:
        for doc in docs:
            source = {
                "type": doc.type,
                "user": doc.user,
                "query": doc.query,
                "query_exact": fold(doc.query).strip().lower(),
                "timestamp": doc.timestamp,
            }
            self._pending += [{"index": {"_index": self.queries, "_id": doc.id}}, source]

    def commit(self) -> None:
        if self._pending:
            body = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in self._pending).encode("utf-8")
            result = self._call("POST", "/_bulk", body, ndjson=True)
            if isinstance(result, dict) and result.get("errors"):
                failed = [
                    item
                    for entry in result.get("items", [])
                    for action, item in entry.items()
                    if item.get("status", 200) >= 300 and not (action == "delete" and item.get("status") == 404)
                ]
                if failed:
                    raise MillraceError(f"OpenSearch refused {len(failed)} writes; the first: {failed[0]}")
            self._pending = []
        self._call("POST", f"/{self.products},{self.queries}/_refresh")

    def search(self, request: SearchRequest) -> SearchResult:
        must: list[dict[str, Any]] = [
            {
                "multi_match": {
                    "query": word,
                    "fields": ["name^3", "body"],
                    "fuzziness": FUZZINESS if request.fuzzy else 0,
                }
            }
            for word in WORD.findall(fold(request.text))
        ]
        filters: list[dict[str, Any]] = []
        if request.category:
            filters.append({"term": {"category": request.category}})
        if request.brand:
            filters.append({"term": {"brand": request.brand}})
        if request.price is not None:
            bounds = {k: v for k, v in (("gte", request.price.low), ("lt", request.price.high)) if v is not None}
            filters.append({"range": {"price": bounds}})
        ranges = [
            {k: v for k, v in (("from", r.low), ("to", r.high), ("key", r.key)) if v is not None} for r in PRICE_RANGES
        ]
        body = {
            "size": request.limit,
            "track_total_hits": True,
            "query": {"bool": {"must": must or [{"match_all": {}}], "filter": filters}},
            "aggs": {
                "category": {"terms": {"field": "category", "size": 50}},
                "brand": {"terms": {"field": "brand", "size": 50}},
                "price": {"range": {"field": "price", "ranges": ranges}},
            },
            "highlight": {
                "pre_tags": ["<b>"],
                "post_tags": ["</b>"],
                "fields": {"name": {"number_of_fragments": 0}, "description": {}},
            },
        }
        result = self._call("POST", f"/{self.products}/_search", body)
        hits = []
        for hit in result["hits"]["hits"]:
            source, marked = hit["_source"], hit.get("highlight", {})
            highlight = (marked.get("name") or marked.get("description") or [source["title"]])[0]
            hits.append(
                Hit(
                    id=source["id"],
                    name=source["title"],
                    category=source["category"],
                    brand=source["brand"],
                    price=source.get("price"),
                    score=float(hit.get("_score") or 0.0),
                    highlight=highlight,
                )
            )
        aggs = result.get("aggregations", {})
        facets = {
            name: {str(b["key"]): int(b["doc_count"]) for b in aggs.get(name, {}).get("buckets", []) if b["doc_count"]}
            for name in ("category", "brand", "price")
        }
        return SearchResult(total=int(result["hits"]["total"]["value"]), hits=hits, facets=facets)

    def count_queries(self, text: str | None = None) -> int:
        query: dict[str, Any] = {"match_all": {}}
        if text:
            query = {"term": {"query_exact": fold(text).strip().lower()}}
        return int(self._call("POST", f"/{self.queries}/_count", {"query": query})["count"])

    def close(self) -> None:
        self._pending = []
