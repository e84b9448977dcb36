"""What a recommendation answer is made of, without a broker: the latest record per user, popularity over
order lines, and the answer's choice between them (the topics are read back in test_api_shop.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from millrace.shop.recommend import LatestRecommendations, NoRecommendations, Popularity, Recommender


def enc(value: dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def test_latest_record_per_user_wins_and_a_tombstone_withdraws() -> None:
    latest = LatestRecommendations()
    latest.apply(b"a", enc({"user": "a", "items": [{"product_id": "p1", "score": 1}], "model": "m"}))
    latest.apply(b"a", enc({"user": "a", "items": [{"product_id": "p2", "score": 1}], "model": "m"}))
    # framed by the registry's serializer (magic byte, schema id)
    latest.apply(b"b", b"\x00\x00\x00\x00\x09" + enc({"user": "b", "items": [], "model": "m"}))
    latest.apply(b"c", b"not json")
    latest.apply(b"d", enc({"user": "d"}))  # no items
    assert {u: [i["product_id"] for i in r["items"]] for u, r in latest.by_user.items()} == {"a": ["p2"], "b": []}
    assert latest.skipped == 2
    latest.apply(b"a", None)
    assert set(latest.by_user) == {"b"}


def test_popularity_sums_quantities_and_breaks_ties_by_id() -> None:
    pop = Popularity()
    pop.apply(b"c", enc({"lines": [{"product_id": "b", "quantity": 2}, {"product_id": "a", "quantity": 1}]}))
    pop.apply(b"c", enc({"lines": [{"product_id": "a", "quantity": 1}, {"product_id": "z"}]}))
    pop.apply(b"c", enc({"status": "paid"}))  # not an order with lines
    assert pop.top(10) == [("a", 2), ("b", 2), ("z", 1)]
    assert pop.orders == 2
    assert pop.top(1) == [("a", 2)]


def test_answer_prefers_the_users_recommendations_then_popularity() -> None:
    r = Recommender({}, recommendations_topic="r", orders_topic="o", products={"p1": {"name": "Часы", "category": "C"}})
    with pytest.raises(NoRecommendations, match="no recommendations for 'u' yet"):
        r.recommend("u", refresh=False)
    r.popularity.apply(b"c", enc({"lines": [{"product_id": "p1", "quantity": 3}]}))
    popular = r.recommend("u", refresh=False)
    assert (popular.source, [(i.product_id, i.score, i.name) for i in popular.items]) == (
        "popular",
        [("p1", 3.0, "Часы")],
    )
    items = [{"product_id": "p9", "score": 0.5}, {"product_id": "p1", "score": 0.25}]
    r.latest.apply(b"u", enc({"user": "u", "items": items, "model": "als", "generated_at": "2026-01-01T00:00:00Z"}))
    mine = r.recommend("u", limit=1, refresh=False)
    assert (mine.source, mine.model, [(i.product_id, i.score) for i in mine.items]) == (
        "recommendations",
        "als",
        [("p9", 0.5)],
    )
