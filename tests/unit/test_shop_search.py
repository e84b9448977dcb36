"""Search's pure parts (folding, decoding, query words) and the embedded tantivy backend on a temp dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from millrace.errors import DataError, MillraceError
from millrace.shop.search import (
    PriceRange,
    ProductDoc,
    QueryDoc,
    SearchRequest,
    decode_json,
    fold,
    price_range_of,
    product_doc,
    query_doc,
)
from millrace.shop.search_tantivy import TantivyBackend, query_stems

PRODUCTS = [
    ProductDoc("p1", "Клавиатура YZA", "Механическая клавиатура с подсветкой", "Компьютеры", "YZA", 3500.0, "RUB"),
    ProductDoc("p2", "Умные часы Ёлка", "Часы с пульсометром", "Электроника", "Tick", 12000.0, "RUB"),
    ProductDoc("p3", "Ёлочная игрушка", "Стеклянный шар", "Дом", "Fest", 300.0, "RUB"),
    ProductDoc("p4", "Наручные часы", "Кварцевые часы", "Аксессуары", "Tick", 4500.0, "RUB"),
]


def test_fold_makes_yo_e() -> None:
    assert fold("Ёлка и ёж") == "Елка и еж"


def test_query_words_are_stemmed_folded_and_distinct() -> None:
    assert query_stems("Клавиатуры клавиатура") == ["клавиатур"]
    assert query_stems("часов") == ["час"]
    assert query_stems("ёлка") == query_stems("елка") == ["елк"]


def test_records_decode_with_and_without_the_registry_header() -> None:
    body = json.dumps({"name": "Клавиатура"}, ensure_ascii=False).encode()
    assert decode_json(body) == {"name": "Клавиатура"}
    assert decode_json(b"\x00\x00\x00\x00\x07" + body) == {"name": "Клавиатура"}
    with pytest.raises(DataError):
        decode_json(b"[1, 2]")
    with pytest.raises(DataError):
        decode_json(b"{oops")


def test_catalog_items_become_documents() -> None:
    item = {
        "name": "Клавиатура",
        "description": "d",
        "category": "Компьютеры",
        "brand": "YZA",
        "price": {"amount": "3500.50", "currency": "RUB"},
        "tags": ["a", "b"],
    }
    assert product_doc("p1", item) == ProductDoc(
        "p1", "Клавиатура", "d", "Компьютеры", "YZA", 3500.5, "RUB", ("a", "b")
    )
    with pytest.raises(DataError, match="p9 has no name"):
        product_doc("p9", {"name": " "})
    assert query_doc("t/0/5", {"user": "u", "query": "часы"}) == QueryDoc("t/0/5", "search", "u", "часы", "")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1000-5000", PriceRange(1000, 5000)), ("1000-", PriceRange(1000, None)), ("-5000", PriceRange(None, 5000))],
)
def test_price_ranges_parse(text: str, expected: PriceRange) -> None:
    assert price_range_of(text) == expected


@pytest.mark.parametrize("bad", ["1000", "-", "5000-1000", "a-b"])
def test_bad_price_ranges_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        price_range_of(bad)


@pytest.fixture
def backend(tmp_path: Path) -> TantivyBackend:
    backend = TantivyBackend(tmp_path)
    backend.upsert_products(PRODUCTS)
    backend.commit()
    return backend


def ids(backend: TantivyBackend, text: str, **filters: object) -> list[str]:
    return sorted(h.id for h in backend.search(SearchRequest(text, **filters)).hits)  # type: ignore[arg-type]


def test_russian_word_forms_match(backend: TantivyBackend) -> None:
    assert ids(backend, "клавиатуры") == ["p1"]
    assert ids(backend, "часов") == ["p2", "p4"]
    assert ids(backend, "умные часы") == ["p2"]  # every word must match


def test_a_one_letter_typo_is_found_and_yo_folds(backend: TantivyBackend) -> None:
    assert ids(backend, "клавиатцра") == ["p1"]
    assert ids(backend, "клавиатцра", fuzzy=False) == []
    assert ids(backend, "елочная") == ids(backend, "ёлочная") == ["p3"]


def test_hits_show_the_name_as_given_and_highlight_matches(backend: TantivyBackend) -> None:
    (hit,) = backend.search(SearchRequest("ёлка")).hits
    assert hit.name == "Умные часы Ёлка" and hit.category == "Электроника"
    assert hit.highlight == "Умные часы <b>Елка</b>"


def test_facets_and_filters(backend: TantivyBackend) -> None:
    result = backend.search(SearchRequest("часы"))
    assert result.total == 2
    assert result.facets == {
        "category": {"Электроника": 1, "Аксессуары": 1},
        "brand": {"Tick": 2},
        "price": {"1000-5000": 1, "5000-20000": 1},
    }
    assert ids(backend, "часы", category="Аксессуары") == ["p4"]
    assert ids(backend, "", brand="Tick", price=PriceRange(5000, None)) == ["p2"]
    assert ids(backend, "", price=PriceRange(None, 1000)) == ["p3"]


def test_upserts_and_deletes_are_idempotent_by_id(backend: TantivyBackend) -> None:
    backend.upsert_products(PRODUCTS)  # a replay
    backend.upsert_products([ProductDoc("p1", "Клавиатура беспроводная", category="Компьютеры", price=4000.0)])
    backend.commit()
    assert backend.search(SearchRequest("")).total == 4
    (hit,) = backend.search(SearchRequest("клавиатура")).hits
    assert (hit.name, hit.price) == ("Клавиатура беспроводная", 4000.0)
    backend.delete_products(["p1", "p1", "nope"])
    backend.commit()
    assert ids(backend, "клавиатура") == [] and backend.search(SearchRequest("")).total == 3


def test_queries_are_counted_once_per_record(backend: TantivyBackend) -> None:
    docs = [QueryDoc("t/0/1", "search", "u1", "Умные часы", "t"), QueryDoc("t/0/2", "search", "u2", "умные часы ", "t")]
    backend.upsert_queries(docs)
    backend.upsert_queries(docs[:1])
    backend.commit()
    assert backend.count_queries() == 2 and backend.count_queries("умные часы") == 2


def test_one_writer_per_index_and_readers_beside_it(backend: TantivyBackend, tmp_path: Path) -> None:
    with pytest.raises(MillraceError, match="one indexer"):
        TantivyBackend(tmp_path)
    assert ids(TantivyBackend(tmp_path, writer=False), "часы") == ["p2", "p4"]
