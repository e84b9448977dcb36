"""The embedded search backend: two tantivy indexes (products, queries) in a directory of the state dir.

Russian word forms meet through tantivy's ``ru_stem`` analyzer (Snowball's Russian stemmer): "клавиатуры" and
"клавиатура" are both ``клавиатур``. A one-letter typo is found by a fuzzy term query (edit distance 1) on the
stem of each query word of four or more letters; exact stems score higher than fuzzy ones. Every word of the
query must match (AND), each by its stem or its fuzzy neighbours, in the name or anywhere in the product's text.

One process writes an index (tantivy locks it); any number read it. So the embedded backend is fed by one
indexer instance; more instances need a shared backend (OpenSearch).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
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

log = logging.getLogger(__name__)

try:
    import tantivy
except ModuleNotFoundError as exc:  # pragma: no cover - a dependency of millrace; a broken install
    raise MillraceError("the search backend needs tantivy: pip install 'tantivy==0.27.0'") from exc

TOKENIZER = "ru_stem"
MIN_FUZZY_LENGTH = 4  # shorter stems have too many neighbours at distance 1 ("час": "чай", "чат" ...)
HEAP_BYTES = 50_000_000


def _analyzer() -> Any:
    # The same chain as tantivy's built-in ru_stem (simple tokenizer, long tokens removed, lower case, Russian
    # stemmer), so query words are stemmed as the indexed text was.
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(40))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.stemmer("russian"))
        .build()
    )


_ANALYZER = _analyzer()


def query_stems(text: str) -> list[str]:
    """The distinct stems of the query words, in order (folded ё -> е first)."""
    return list(dict.fromkeys(_ANALYZER.analyze(fold(text))))


def product_schema() -> Any:
    b = tantivy.SchemaBuilder()
    b.add_text_field("id", stored=True, tokenizer_name="raw")
    b.add_text_field("title", stored=True, tokenizer_name="raw")  # the name as given (the indexed one is folded)
    b.add_text_field("name", stored=True, tokenizer_name=TOKENIZER)
    b.add_text_field("description", stored=True, tokenizer_name=TOKENIZER)
    b.add_text_field("body", stored=False, tokenizer_name=TOKENIZER)  # name, description, category, brand, tags
    b.add_text_field("category", stored=True, tokenizer_name="raw", fast=True)
    b.add_text_field("brand", stored=True, tokenizer_name="raw", fast=True)
    b.add_float_field("price", stored=True, fast=True, indexed=True)
    b.add_text_field("currency", stored=True, tokenizer_name="raw")
    return b.build()


def query_schema() -> Any:
    b = tantivy.SchemaBuilder()
    b.add_text_field("id", stored=True, tokenizer_name="raw")
    b.add_text_field("type", stored=True, tokenizer_name="raw", fast=True)
    b.add_text_field("user", stored=True, tokenizer_name="raw", fast=True)
    b.add_text_field("query", stored=True, tokenizer_name=TOKENIZER)
    b.add_text_field("query_exact", stored=False, tokenizer_name="raw", fast=True)  # top queries, as typed
    b.add_text_field("timestamp", stored=True, tokenizer_name="raw")
    return b.build()


def build_query(schema: Any, request: SearchRequest) -> Any:
    """AND over the query words (each: its stem in name or body, boosted in the name; or, when long enough, a
    stem one edit away), then the category / brand / price filters. An empty text matches every product."""
    occur = tantivy.Occur
    clauses: list[tuple[Any, Any]] = []
    for stem in query_stems(request.text):
        options = [
            (occur.Should, tantivy.Query.boost_query(tantivy.Query.term_query(schema, "name", stem), 3.0)),
            (occur.Should, tantivy.Query.term_query(schema, "body", stem)),
        ]
        if request.fuzzy and len(stem) >= MIN_FUZZY_LENGTH:
            for name, boost in (("name", 0.6), ("body", 0.3)):
                fuzzy = tantivy.Query.fuzzy_term_query(schema, name, stem, 1, True, False)
                options.append((occur.Should, tantivy.Query.boost_query(fuzzy, boost)))
        clauses.append((occur.Must, tantivy.Query.boolean_query(options)))
    if request.category:
        clauses.append((occur.Must, tantivy.Query.term_query(schema, "category", request.category)))
    if request.brand:
        clauses.append((occur.Must, tantivy.Query.term_query(schema, "brand", request.brand)))
    if request.price is not None:
        low, high = request.price.low, request.price.high
        price_query = tantivy.Query.range_query(schema, "price", tantivy.FieldType.Float, low, high, True, high is None)
        clauses.append((occur.Must, price_query))
    if not clauses:
        return tantivy.Query.all_query()
    return tantivy.Query.boolean_query(clauses)


def _first(doc: dict[str, list[Any]], name: str, default: Any = "") -> Any:
    values = doc.get(name) or [default]
    return values[0]


class TantivyBackend:
    """:class:`millrace.shop.search.SearchBackend` on two tantivy indexes under ``directory``. Opened with
    ``writer=False`` it only reads (the CLI's search), and takes no lock."""

    def __init__(self, directory: Path, *, writer: bool = True) -> None:
        self.directory = directory
        self._products = self._open(directory / "products", product_schema())
        self._queries = self._open(directory / "queries", query_schema())
        self._product_writer = self._writer(self._products) if writer else None
        self._query_writer = self._writer(self._queries) if writer else None

    def _open(self, path: Path, schema: Any) -> Any:
        path.mkdir(parents=True, exist_ok=True)
        try:
            return tantivy.Index(schema, path=str(path), reuse=True)
        except (OSError, ValueError) as exc:
            raise MillraceError(f"cannot open the search index at {path}: {exc}") from None

    def _writer(self, index: Any) -> Any:
        try:
            return index.writer(HEAP_BYTES, 1)
        except ValueError as exc:
            if "LockBusy" in str(exc) or "lock" in str(exc).lower():
                raise MillraceError(
                    f"the search index in {self.directory} is being written by another process: the embedded "
                    "index takes one indexer (run one `millrace shop index`, or use OpenSearch to scale)"
                ) from None
            raise MillraceError(f"cannot write the search index in {self.directory}: {exc}") from None

    def _need_writer(self, writer: Any) -> Any:
        if writer is None:
            raise MillraceError("the search index was opened read-only")
        return writer

    def upsert_products(self, docs: Sequence[ProductDoc]) -> None:
        writer = self._need_writer(self._product_writer)
        for doc in docs:
            writer.delete_documents_by_term("id", doc.id)  # then add: tantivy orders the two by opstamp
            fields: dict[str, Any] = {
                "id": doc.id,
                "title": doc.name,
                "name": fold(doc.name),
                "description": fold(doc.description),
                "body": fold(" ".join([doc.name, doc.description, doc.category, doc.brand, *doc.tags])),
                "category": doc.category,
                "brand": doc.brand,
                "currency": doc.currency,
            }
            if doc.price is not None:
                fields["price"] = doc.price
            writer.add_document(tantivy.Document(**fields))

    def delete_products(self, ids: Sequence[str]) -> None:
        writer = self._need_writer(self._product_writer)
        for product_id in ids:
            writer.delete_documents_by_term("id", product_id)

    def upsert_queries(self, docs: Sequence[QueryDoc]) -> None:
        writer = self._need_writer(self._query_writer)
        for doc in docs:
            writer.delete_documents_by_term("id", doc.id)
            writer.add_document(
                tantivy.Document(
                    id=doc.id,
                    type=doc.type,
                    user=doc.user,
                    query=fold(doc.query),
                    query_exact=fold(doc.query).strip().lower(),
                    timestamp=doc.timestamp,
                )
            )

    def commit(self) -> None:
        for writer in (self._product_writer, self._query_writer):
            if writer is not None:
                writer.commit()

    def search(self, request: SearchRequest) -> SearchResult:
        index = self._products
        index.reload()
        searcher = index.searcher()
        schema = index.schema
        query = build_query(schema, request)
        found = searcher.search(query, request.limit)
        highlight_query = build_query(schema, SearchRequest(request.text, fuzzy=False))
        snippets = {
            name: tantivy.SnippetGenerator.create(searcher, highlight_query, schema, name)
            for name in ("name", "description")
        }
        hits = []
        for score, address in found.hits:
            stored = searcher.doc(address)
            doc = stored.to_dict()
            highlight = snippets["name"].snippet_from_doc(stored).to_html()
            if "<b>" not in highlight:
                described = snippets["description"].snippet_from_doc(stored).to_html()
                highlight = described if "<b>" in described else highlight
            hits.append(
                Hit(
                    id=_first(doc, "id"),
                    name=_first(doc, "title"),
                    category=_first(doc, "category"),
                    brand=_first(doc, "brand"),
                    price=_first(doc, "price", None),
                    score=float(score),
                    highlight=highlight or _first(doc, "name"),
                )
            )
        return SearchResult(total=int(found.count or 0), hits=hits, facets=self._facets(searcher, query))

    def _facets(self, searcher: Any, query: Any) -> dict[str, dict[str, int]]:
        ranges = [
            {k: v for k, v in (("from", r.low), ("to", r.high), ("key", r.key)) if v is not None} for r in PRICE_RANGES
        ]
        spec = {
            "category": {"terms": {"field": "category", "size": 50}},
            "brand": {"terms": {"field": "brand", "size": 50}},
            "price": {"range": {"field": "price", "ranges": ranges}},
        }
        result = searcher.aggregate(query, spec)
        facets = {}
        for name in ("category", "brand", "price"):
            buckets = result.get(name, {}).get("buckets", [])
            facets[name] = {str(b["key"]): int(b["doc_count"]) for b in buckets if b["doc_count"]}
        return facets

    def count_queries(self, text: str | None = None) -> int:
        index = self._queries
        index.reload()
        searcher = index.searcher()
        if not text:
            return int(searcher.num_docs)
        query = tantivy.Query.term_query(index.schema, "query_exact", fold(text).strip().lower())
        return int(searcher.search(query, 1).count or 0)

    def close(self) -> None:
        for writer in (self._product_writer, self._query_writer):
            if writer is not None:
                writer.wait_merging_threads()
        self._product_writer = self._query_writer = None
