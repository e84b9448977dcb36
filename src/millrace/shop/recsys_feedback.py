"""The recommenders' data and yardstick, pure (numpy and pandas; no Spark, no I/O): the feedback taken from the
lake's orders, the time hold-out, the order-count matrix and the ranking metrics (docs/shop-recommendations.md).

Feedback is implicit: a user (the order's ``customer_id``) bought a product in an order that was never
cancelled (an order with any ``cancelled`` event is dropped whole; an order still open counts). The lake holds
one row per order line and event, so an order's lines are taken once, at the order's creation. The
strength of a (user, product) pair is the number of orders in which the user bought it.

Hold-out: the orders of the last ``holdout_days`` before the newest order are the test period; the models
learn from the orders before it. A user is evaluated when they bought before the cut and bought, after it, at
least one product they had not bought before and that is not blocked. :func:`hold_out` raises DataError
(saying what to change) when no user can be evaluated.

The relevant products of a user are the new, unblocked products they bought in the test period. Binary
relevance:

* precision@k = hits in the top k / k (a list shorter than k is not rewarded);
* recall@k = hits in the top k / relevant products;
* NDCG@k = sum over hits at rank r of 1/log2(r + 1), divided by the same sum for the first min(k, relevant)
  ranks; each averaged over the evaluated users (:func:`evaluate`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from millrace.errors import DataError

K = 10  # the cut-off of the compared metrics (P@10, R@10, NDCG@10)


# ---------------------------------------------------------------------------------------------- metrics


def precision_at_k(recommended: Sequence[str], relevant: set[str], k: int = K) -> float:
    return sum(1 for p in recommended[:k] if p in relevant) / k


def recall_at_k(recommended: Sequence[str], relevant: set[str], k: int = K) -> float:
    if not relevant:
        raise ValueError("recall is undefined without relevant products")
    return sum(1 for p in recommended[:k] if p in relevant) / len(relevant)


def ndcg_at_k(recommended: Sequence[str], relevant: set[str], k: int = K) -> float:
    if not relevant:
        raise ValueError("NDCG is undefined without relevant products")
    dcg = sum(1.0 / math.log2(rank + 2) for rank, p in enumerate(recommended[:k]) if p in relevant)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(k, len(relevant))))
    return dcg / ideal


@dataclass(frozen=True)
class Scores:
    precision: float
    recall: float
    ndcg: float
    users: int


def evaluate(lists: Mapping[str, Sequence[str]], relevant: Mapping[str, set[str]], k: int = K) -> Scores:
    """The mean metrics over the users of ``relevant`` (a user without a list scores 0)."""
    if not relevant:
        raise DataError("no user to evaluate: nobody bought a new product in the hold-out period")
    p = r = n = 0.0
    for user, rel in relevant.items():
        rec = lists.get(user, [])
        p += precision_at_k(rec, rel, k)
        r += recall_at_k(rec, rel, k)
        n += ndcg_at_k(rec, rel, k)
    users = len(relevant)
    return Scores(p / users, r / users, n / users, users)


# ------------------------------------------------------------------------------------------- the data


def interactions(orders: pd.DataFrame) -> pd.DataFrame:
    """One row per (order, product) of the orders never cancelled: order_id, user, product_id, at (the
    order's creation), quantity. ``orders`` has the lake's columns (one row per line and event)."""
    needed = {"order_id", "customer_id", "status", "event_ts", "product_id", "quantity"}
    missing = needed - set(orders.columns)
    if missing:
        raise DataError(f"the lake's orders lack the columns {sorted(missing)}")
    if orders.empty:
        return pd.DataFrame(
            {
                "order_id": pd.Series(dtype=str),
                "user": pd.Series(dtype=str),
                "product_id": pd.Series(dtype=str),
                "at": pd.Series(dtype="datetime64[ms, UTC]"),
                "quantity": pd.Series(dtype="int64"),
            }
        )
    cancelled = set(orders.loc[orders["status"] == "cancelled", "order_id"])
    live = orders[~orders["order_id"].isin(cancelled)]
    # every event of an order carries all its lines: the first archived event's lines, a product once per order
    first_ts = live.groupby("order_id")["event_ts"].transform("min")
    first = live[live["event_ts"] == first_ts].copy()
    # the order's creation time (the lake's created_at; else its first archived event)
    when = "created_at" if "created_at" in first.columns else "event_ts"
    first["at"] = first.groupby("order_id")[when].transform("min")
    lines = (
        first.groupby(["order_id", "customer_id", "product_id", "at"], as_index=False)["quantity"]
        .max()
        .rename(columns={"customer_id": "user"})
    )
    return lines.sort_values(["at", "order_id", "product_id"], ignore_index=True)


@dataclass(frozen=True)
class HoldOut:
    cutoff: pd.Timestamp
    train: pd.DataFrame  # interactions before the cut
    test: pd.DataFrame  # interactions from the cut on
    relevant: dict[str, set[str]]  # evaluated user -> new, unblocked products bought from the cut on
    users_in_both: int  # users who bought before and after the cut (some only bought again)


def hold_out(lines: pd.DataFrame, days: float, blocked: Iterable[str] = ()) -> HoldOut:
    if lines.empty:
        raise DataError("the lake holds no orders that were not cancelled: run `millrace shop archive` first")
    cutoff = lines["at"].max() - pd.Timedelta(days=days)
    train, test = lines[lines["at"] < cutoff], lines[lines["at"] >= cutoff]
    if train.empty:
        span = (lines["at"].max() - lines["at"].min()).total_seconds() / 86400
        raise DataError(
            f"every order is in the hold-out period: the lake spans {span:.1f} days, analytics.holdout_days is {days:g}"
        )
    bought = train.groupby("user")["product_id"].agg(set).to_dict()
    stop = set(blocked)
    relevant: dict[str, set[str]] = {}
    both = 0
    for user, products in test.groupby("user")["product_id"].agg(set).items():
        if user not in bought:
            continue
        both += 1
        new = products - bought[user] - stop
        if new:
            relevant[str(user)] = new
    if not relevant:
        raise DataError(
            f"no user bought a new product both before and after the cut at {cutoff.isoformat()}: archive more "
            f"orders or change analytics.holdout_days ({days:g})"
        )
    return HoldOut(cutoff, train, test, relevant, both)


@dataclass(frozen=True)
class Matrix:
    """Orders per (user, product) as a dense matrix over sorted user and product ids."""

    users: list[str]
    items: list[str]
    counts: np.ndarray  # float64, users x items

    @classmethod
    def of(cls, lines: pd.DataFrame) -> Matrix:
        users = sorted(lines["user"].unique())
        items = sorted(lines["product_id"].unique())
        counts = np.zeros((len(users), len(items)))
        u = pd.Index(users).get_indexer(lines["user"])
        i = pd.Index(items).get_indexer(lines["product_id"])
        np.add.at(counts, (u, i), 1.0)
        return cls(users, items, counts)

    @property
    def popularity(self) -> np.ndarray:
        """Buyers per product."""
        return (self.counts > 0).sum(axis=0).astype(float)
