"""The three recommenders (docs/shop-recommendations.md): each gives a score per (user, product) of a
:class:`~millrace.shop.recsys_feedback.Matrix`, and :func:`top_k` turns scores into each user's list.

- ``popularity``: the product's buyers, the same for every user;
- ``cooccurrence`` (item–item): the cosine of the products' buyer sets, summed over what the user bought;
- ``als``: Spark MLlib's ALS with ``implicitPrefs`` on the order counts (the caller's SparkSession; the only
  model that needs one).

What is recommended: the top ``k`` products a user has **not bought yet** (repeat purchases are a "buy again"
list, not a discovery) and that are **not blocked** (the stop list), from the products of the matrix. Ties and
the end of a short list are settled by popularity, then product id, the same way for every model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from millrace.config import AnalyticsSettings
from millrace.shop.recsys_feedback import Matrix

MODELS = ("als", "cooccurrence", "popularity")


def popularity_scores(m: Matrix) -> np.ndarray:
    return np.tile(m.popularity, (len(m.users), 1))


def cooccurrence_scores(m: Matrix) -> np.ndarray:
    """Sum, over the products a user bought, of each product's cosine similarity of buyer sets with them."""
    bought = (m.counts > 0).astype(float)
    together = bought.T @ bought  # users who bought both products
    np.fill_diagonal(together, 0.0)
    buyers = np.sqrt(m.popularity)
    with np.errstate(divide="ignore", invalid="ignore"):
        similarity = np.nan_to_num(together / np.outer(buyers, buyers))
    return bought @ similarity


def als_scores(
    m: Matrix, spark: Any, cfg: AnalyticsSettings, *, checkpoint_dir: str | None = None, seed: int = 0
) -> np.ndarray:
    """Fit Spark MLlib's ALS with implicit feedback on the order counts; user factors . item factors.

    ALS's lineage grows with every iteration; without checkpoints (every 5 iterations into ``checkpoint_dir``)
    serialising a task of a long fit overflows the driver's stack."""
    from pyspark.ml.recommendation import ALS

    if checkpoint_dir is not None:
        spark.sparkContext.setCheckpointDir(checkpoint_dir)

    u, i = np.nonzero(m.counts)
    frame = pd.DataFrame({"user": u.astype("int32"), "item": i.astype("int32"), "rating": m.counts[u, i]})
    als = ALS(
        rank=cfg.als_rank,
        maxIter=cfg.als_iterations,
        regParam=cfg.als_reg,
        alpha=cfg.als_alpha,
        implicitPrefs=True,
        userCol="user",
        itemCol="item",
        ratingCol="rating",
        coldStartStrategy="drop",
        checkpointInterval=5,
        seed=seed,
    )
    model = als.fit(spark.createDataFrame(frame))
    users = np.zeros((len(m.users), cfg.als_rank))
    items = np.zeros((len(m.items), cfg.als_rank))
    for target, factors in ((users, model.userFactors), (items, model.itemFactors)):
        for row in factors.collect():
            target[row["id"]] = row["features"]
    return users @ items.T


def top_k(m: Matrix, scores: np.ndarray, k: int, blocked: Iterable[str] = ()) -> dict[str, list[tuple[str, float]]]:
    """Each user's ``k`` best products by score, then popularity, then product id; never a product the user
    bought (in ``m``) nor a blocked one."""
    allowed = ~np.isin(np.array(m.items, dtype=object), list(set(blocked)))
    popularity = m.popularity
    order_by_id = np.arange(len(m.items))
    result: dict[str, list[tuple[str, float]]] = {}
    for row, user in enumerate(m.users):
        candidates = np.nonzero(allowed & (m.counts[row] == 0))[0]
        s = scores[row, candidates]
        ranked = candidates[np.lexsort((order_by_id[candidates], -popularity[candidates], -s))][:k]
        result[user] = [(m.items[j], float(scores[row, j])) for j in ranked]
    return result


def fit_scores(
    name: str, m: Matrix, *, spark: Any, cfg: AnalyticsSettings, checkpoint_dir: str | None = None
) -> np.ndarray:
    if name == "popularity":
        return popularity_scores(m)
    if name == "cooccurrence":
        return cooccurrence_scores(m)
    if name == "als":
        return als_scores(m, spark, cfg, checkpoint_dir=checkpoint_dir)
    raise ValueError(f"unknown model {name!r}")
