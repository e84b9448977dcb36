"""Recommendations on the lake: metrics on hand-computed cases, the feedback taken from order events, the
hold-out, popularity and co-occurrence on tiny data, and blocked products never recommended."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from millrace.config import AnalyticsSettings
from millrace.errors import DataError
from millrace.shop.recsys import ModelReport, best_of, compare
from millrace.shop.recsys_feedback import (
    Matrix,
    evaluate,
    hold_out,
    interactions,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
)
from millrace.shop.recsys_models import cooccurrence_scores, popularity_scores, top_k
from millrace.shop.recsys_publish import recommendation_record
from millrace.shop.schemas import Validator, load_schema

T0 = pd.Timestamp("2026-11-01T00:00:00Z")


def test_metrics_on_a_hand_computed_list() -> None:
    rec, rel = ["a", "b", "c", "d"], {"b", "d", "x"}
    assert precision_at_k(rec, rel, 4) == 0.5
    assert precision_at_k(rec, rel) == 0.2  # @10: a short list is not rewarded
    assert recall_at_k(rec, rel, 4) == pytest.approx(2 / 3)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)  # hits at ranks 2 and 4
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)  # three relevant products at ranks 1-3
    assert ndcg_at_k(rec, rel, 4) == pytest.approx(dcg / ideal)
    assert ndcg_at_k(["x", "b", "d"], rel) == pytest.approx(1.0)
    assert ndcg_at_k(["q"], rel) == 0.0
    assert precision_at_k(["a", "b"], {"b"}, 1) == 0.0  # only the first k count
    with pytest.raises(ValueError):
        recall_at_k(rec, set())


def test_evaluate_means_over_the_relevant_users_and_a_missing_list_scores_zero() -> None:
    relevant = {"u1": {"a"}, "u2": {"b", "c"}}
    scores = evaluate({"u1": ["a", "z"], "u3": ["b"]}, relevant, k=2)
    assert scores.users == 2
    assert scores.precision == pytest.approx((0.5 + 0.0) / 2)
    assert scores.recall == pytest.approx((1.0 + 0.0) / 2)
    assert scores.ndcg == pytest.approx((1.0 + 0.0) / 2)
    with pytest.raises(DataError):
        evaluate({}, {})


def _event_rows(order_id: str, user: str, status: str, minutes: int, products: list[str], created: int) -> list[dict]:
    return [
        {
            "order_id": order_id,
            "customer_id": user,
            "status": status,
            "event_ts": T0 + pd.Timedelta(minutes=minutes),
            "created_at": T0 + pd.Timedelta(minutes=created),
            "product_id": p,
            "quantity": 2 if p == "p2" else 1,
            "line_no": n,
        }
        for n, p in enumerate(products)
    ]


def test_interactions_take_each_order_once_at_its_creation_and_drop_cancelled_orders() -> None:
    rows = (
        _event_rows("o1", "u1", "created", 0, ["p1", "p2"], 0)
        + _event_rows("o1", "u1", "paid", 5, ["p1", "p2"], 0)
        + _event_rows("o1", "u1", "delivered", 50, ["p1", "p2"], 0)
        + _event_rows("o2", "u2", "created", 10, ["p3"], 10)
        + _event_rows("o2", "u2", "cancelled", 20, ["p3"], 10)
        # archived from its paid event on (created before the archive began): still at its creation time
        + _event_rows("o3", "u1", "paid", 40, ["p3"], 30)
    )
    lines = interactions(pd.DataFrame(rows))
    assert lines[["order_id", "user", "product_id", "quantity"]].values.tolist() == [
        ["o1", "u1", "p1", 1],
        ["o1", "u1", "p2", 2],
        ["o3", "u1", "p3", 1],
    ]
    assert lines["at"].tolist() == [T0, T0, T0 + pd.Timedelta(minutes=30)]
    with pytest.raises(DataError, match="customer_id"):
        interactions(pd.DataFrame({"order_id": ["o1"]}))


def _lines(purchases: list[tuple[str, str, float]]) -> pd.DataFrame:
    """(user, product, day) -> interaction rows, one order each."""
    return pd.DataFrame(
        {
            "order_id": [f"o{n}" for n in range(len(purchases))],
            "user": [u for u, _, _ in purchases],
            "product_id": [p for _, p, _ in purchases],
            "at": [T0 + pd.Timedelta(days=d) for _, _, d in purchases],
            "quantity": 1,
        }
    )


def test_hold_out_splits_by_time_and_keeps_new_unblocked_products_of_users_seen_before() -> None:
    lines = _lines(
        [
            ("u1", "A", 0), ("u1", "B", 1), ("u2", "A", 2), ("u3", "C", 3),
            ("u1", "C", 9), ("u1", "A", 9),  # u1: one new product, one bought again
            ("u2", "A", 9.5),  # u2: only bought again -> in both periods, not evaluated
            ("u3", "D", 10), ("u3", "E", 10),  # u3: E is blocked
            ("u4", "A", 10),  # u4: new user, not evaluated
        ]
    )  # fmt: skip
    h = hold_out(lines, 2.0, blocked=["E"])
    assert h.cutoff == T0 + pd.Timedelta(days=8)
    assert len(h.train) == 4 and len(h.test) == 6
    assert h.relevant == {"u1": {"C"}, "u3": {"D"}}
    assert h.users_in_both == 3
    with pytest.raises(DataError, match="holdout_days"):
        hold_out(lines, 30.0)
    only_repeats = _lines([("u1", "A", 0), ("u1", "A", 9), ("u2", "B", 9)])
    with pytest.raises(DataError, match="no user bought a new product"):
        hold_out(only_repeats, 2.0)


def _tiny() -> Matrix:
    # u1 {A,B}, u2 {A,B,C}, u3 {A,C}, u4 {D}, u5 {A}: buyers A 4, B 2, C 2, D 1
    return Matrix.of(
        _lines(
            [("u1", "A", 0), ("u1", "B", 0), ("u2", "A", 0), ("u2", "B", 0), ("u2", "C", 0), ("u3", "A", 0),
             ("u3", "C", 0), ("u4", "D", 0), ("u5", "A", 0), ("u5", "A", 1)]
        )
    )  # fmt: skip


def _ids(ranked: dict[str, list[tuple[str, float]]]) -> dict[str, list[str]]:
    return {u: [p for p, _ in items] for u, items in ranked.items()}


def test_popularity_ranks_by_buyers_then_id_and_never_what_the_user_bought() -> None:
    m = _tiny()
    assert m.counts[m.users.index("u5"), m.items.index("A")] == 2  # orders, not buyers
    assert m.popularity.tolist() == [4, 2, 2, 1]
    ranked = top_k(m, popularity_scores(m), 10)
    assert _ids(ranked) == {
        "u1": ["C", "D"],
        "u2": ["D"],
        "u3": ["B", "D"],
        "u4": ["A", "B", "C"],
        "u5": ["B", "C", "D"],
    }
    assert ranked["u4"] == [("A", 4.0), ("B", 2.0), ("C", 2.0)]
    assert _ids(top_k(m, popularity_scores(m), 1)) == {"u1": ["C"], "u2": ["D"], "u3": ["B"], "u4": ["A"], "u5": ["B"]}


def test_cooccurrence_scores_the_cosine_of_buyer_sets_summed_over_the_users_products() -> None:
    m = _tiny()
    scores = cooccurrence_scores(m)
    row = {u: scores[m.users.index(u)] for u in m.users}
    ab = ac = 2 / math.sqrt(4 * 2)  # A and B share u1, u2; A and C share u2, u3
    bc = 1 / math.sqrt(2 * 2)
    np.testing.assert_allclose(row["u5"], [0, ab, ac, 0])
    np.testing.assert_allclose(row["u1"], [ab, ab, ac + bc, 0])
    np.testing.assert_allclose(row["u4"], [0, 0, 0, 0])
    ranked = _ids(top_k(m, scores, 10))
    assert ranked["u1"] == ["C", "D"]
    assert ranked["u3"] == ["B", "D"]  # B: ab + bc
    assert ranked["u4"] == ["A", "B", "C"]  # nothing in common: the popular products, in order
    assert ranked["u5"] == ["B", "C", "D"]  # B and C tie (and tie on buyers): by id


def test_blocked_products_are_never_recommended() -> None:
    m = _tiny()
    for scores in (popularity_scores(m), cooccurrence_scores(m)):
        ranked = _ids(top_k(m, scores, 10, blocked=["C", "A"]))
        assert ranked == {"u1": ["D"], "u2": ["D"], "u3": ["B", "D"], "u4": ["B"], "u5": ["B", "D"]}


def test_compare_scores_the_models_lists_on_the_hold_out() -> None:
    lines = _lines(
        [("u1", "A", 0), ("u1", "B", 0), ("u2", "A", 0), ("u2", "B", 0), ("u2", "C", 0), ("u3", "A", 0),
         ("u3", "C", 0), ("u4", "D", 0), ("u5", "A", 0), ("u5", "C", 9), ("u4", "A", 9), ("u1", "D", 9)]
    )  # fmt: skip
    cfg = AnalyticsSettings(holdout_days=2.0)
    reports, h, lists = compare(lines, cfg=cfg, blocked=["B"], models=["popularity", "cooccurrence"])
    assert h.relevant == {"u5": {"C"}, "u4": {"A"}, "u1": {"D"}}
    # popularity: u5 [C, D] (B blocked), u4 [A, C], u1 [C, D]
    assert lists["popularity"] == {"u5": ["C", "D"], "u4": ["A", "C"], "u1": ["C", "D"]}
    pop = reports[0]
    assert (pop.model, pop.users) == ("popularity", 3)
    assert pop.precision == pytest.approx((1 + 1 + 1) / 3 / 10)
    assert pop.ndcg == pytest.approx((1 + 1 + 1 / math.log2(3)) / 3)
    assert all("B" not in items for model in lists.values() for items in model.values())


def test_the_best_is_the_highest_ndcg_and_a_tie_goes_to_the_simpler_model() -> None:
    def r(model: str, ndcg: float) -> ModelReport:
        return ModelReport(model, 0.1, 0.1, ndcg, 10, 0.0)

    assert best_of([r("als", 0.3), r("cooccurrence", 0.2), r("popularity", 0.1)]) == "als"
    assert best_of([r("als", 0.2), r("cooccurrence", 0.2), r("popularity", 0.1)]) == "cooccurrence"


def test_a_published_record_fits_the_recommendation_schema() -> None:
    record = recommendation_record(
        "c00001", [("p1", 0.5), ("p2", 1 / 3)], "cooccurrence", "2026-12-05T10:00:00.000+00:00"
    )
    assert Validator(load_schema("recommendation")).error(record) is None
    assert record["items"] == [{"product_id": "p1", "score": 0.5}, {"product_id": "p2", "score": 0.333333}]
