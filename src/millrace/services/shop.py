"""The shop's REST routes under /api/shop: search, recommendations, the catalog, the stop list, live queries.

Views are thin: the work is done by the shop domain (millrace.shop.*) with the app's settings. The search index,
the query producer, the recommender and the live-query follower are opened on first use and kept for the
app's life (``app.state.shop``), so a REST-only app without the shop's servers stays quiet until asked.
Blocking and unblocking need the operator role; everything else a viewer token.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, FastAPI, Path, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from millrace.config import Settings
from millrace.errors import MillraceError
from millrace.kafka.schema_registry import RegistryUnavailable
from millrace.services.auth import AUTH_RESPONSES, OPERATOR, VIEWER
from millrace.services.problems import JsonResponse, Problem
from millrace.services.schemas import PROBLEM_RESPONSES, Page
from millrace.shop import stoplist
from millrace.shop.backends import NoSearchIndex, open_backend
from millrace.shop.catalog import load_products, sample_catalog_path
from millrace.shop.client import QueryRecorder, query_record, query_serializer
from millrace.shop.recommend import NoRecommendations, Recommender, TopicFollower
from millrace.shop.search import PriceRange, SearchBackend, SearchRequest, decode_json, plural_goods

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/shop", tags=["shop"], responses=PROBLEM_RESPONSES | AUTH_RESPONSES)
T = TypeVar("T")
LIVE_QUERIES = 200  # the latest client queries kept for the dashboard

Text = Annotated[str | None, Query(min_length=1, max_length=200)]
Price = Annotated[float | None, Query(ge=0, le=1e9)]
ProductId = Annotated[str, Path(min_length=1, max_length=stoplist.MAX_ID_LENGTH)]


class HitOut(BaseModel):
    id: str
    name: str
    category: str
    brand: str
    price: float | None
    score: float
    highlight: str = Field(description="The name (or else the description) with matched words in <b></b>.")


class SearchOut(BaseModel):
    message: str = Field(description='The shop\'s answer line, "Нашлось N товаров".')
    total: int
    hits: list[HitOut]
    facets: dict[str, dict[str, int]] = Field(description="category / brand / price range -> value -> count")


class RecommendedOut(BaseModel):
    product_id: str
    score: float
    name: str
    category: str


class RecommendOut(BaseModel):
    user: str
    source: str = Field(description="recommendations (the latest for this user) or popular (the fallback)")
    model: str
    generated_at: str
    items: list[RecommendedOut]


class BlockIn(BaseModel):
    product_id: str = Field(min_length=1, max_length=stoplist.MAX_ID_LENGTH, pattern=r"^\S+$")
    reason: str = Field(default="", max_length=500)


class StopEntryOut(BaseModel):
    product_id: str
    blocked: bool
    reason: str
    at: str


class QueryOut(BaseModel):
    type: str
    user: str
    query: str
    timestamp: str
    results: int | None = None


class ShopState:
    """What the routes share, opened on first use (each under its own lock)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._backend: SearchBackend | None = None
        self._recorder: QueryRecorder | None = None
        self._recommender: Recommender | None = None
        self._products: list[dict[str, Any]] | None = None
        self._queries: deque[dict[str, Any]] = deque(maxlen=LIVE_QUERIES)
        self._query_follower: TopicFollower | None = None
        self._query_lock = threading.Lock()

    @property
    def client_config(self) -> dict[str, Any]:
        return self.settings.kafka.client_config()

    def backend(self) -> SearchBackend:
        with self._lock:
            if self._backend is None:
                shop = self.settings.shop
                self._backend = open_backend(
                    shop.search_backend,
                    directory=self.settings.state_dir / "search",
                    opensearch_url=shop.opensearch_url,
                    writer=False,
                )
            return self._backend

    def recorder(self) -> QueryRecorder:
        with self._lock:
            if self._recorder is None:
                shop, topic = self.settings.shop, self.settings.topics.shop_client_search
                # with shop.use_registry a validating index service accepts only framed queries
                serialize = (
                    query_serializer(shop.registry_url, topic, shop.compatibility) if shop.use_registry else None
                )
                self._recorder = QueryRecorder(self.client_config, topic, serialize=serialize)
            return self._recorder

    def products(self) -> list[dict[str, Any]]:
        with self._lock:
            if self._products is None:
                self._products = load_products(self.settings.shop.catalog_path or sample_catalog_path())
            return self._products

    def recommender(self) -> Recommender:
        products = {str(p["id"]): p for p in self.products()}
        with self._lock:
            if self._recommender is None:
                topics = self.settings.topics
                self._recommender = Recommender(
                    self.client_config,
                    recommendations_topic=topics.shop_recommendations,
                    orders_topic=topics.shop_orders,
                    products=products,
                )
            return self._recommender

    def live_queries(self, limit: int) -> list[dict[str, Any]]:
        """The latest client queries, newest first (client-search read back from where the last call ended;
        the first call starts from the last LIVE_QUERIES records of each partition)."""
        with self._query_lock:
            if self._query_follower is None:
                self._query_follower = TopicFollower(
                    self.client_config, self.settings.topics.shop_client_search, self._on_query, tail=LIVE_QUERIES
                )
            self._query_follower.refresh()
            ordered = sorted(self._queries, key=lambda q: str(q.get("timestamp", "")), reverse=True)
        return ordered[:limit]

    def _on_query(self, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            return
        try:
            data = decode_json(value)
        except MillraceError:
            return
        if isinstance(data.get("query"), str):
            self._queries.append(data)

    def close(self) -> None:
        with self._lock:
            if self._recorder is not None:
                self._recorder.close()
            if self._backend is not None:
                self._backend.close()
            self._backend = self._recorder = None


def install(app: FastAPI, settings: Settings) -> None:
    """Register the shop's routes (one line in services/app.py)."""
    app.state.shop = ShopState(settings)
    app.include_router(router)


def _state(request: Request) -> ShopState:
    state: ShopState = request.app.state.shop
    return state


def _price(low: float | None, high: float | None) -> PriceRange | None:
    if low is None and high is None:
        return None
    if low is not None and high is not None and low >= high:
        raise Problem(422, "query.price_min: must be below price_max", kind="validation")
    return PriceRange(low, high)


def _backend_call(state: ShopState, fn: Callable[[SearchBackend], T]) -> T:
    try:
        return fn(state.backend())
    except NoSearchIndex as exc:
        raise Problem(503, str(exc), kind="search-unavailable") from None
    except MillraceError as exc:  # the backend cannot be reached or read
        raise Problem(503, str(exc), kind="search-unavailable") from None


@router.get(
    "/search",
    dependencies=[VIEWER],
    response_model=SearchOut,
    summary="Search the products (results, facets, highlights); the query is recorded in client-search",
)
def search(
    request: Request,
    q: Annotated[str, Query(min_length=1, max_length=200, description='What to look for, e.g. "умные часы".')],
    user: Annotated[str, Query(min_length=1, max_length=64, pattern=r"^\S+$")] = "anonymous",
    category: Text = None,
    brand: Text = None,
    price_min: Price = None,
    price_max: Price = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> Response:
    state = _state(request)
    search_request = SearchRequest(q, category=category, brand=brand, price=_price(price_min, price_max), limit=limit)
    result = _backend_call(state, lambda backend: backend.search(search_request))
    try:
        recorder = state.recorder()
    except RegistryUnavailable as exc:  # shop.use_registry: the query is not recorded unframed
        raise Problem(503, str(exc), kind="registry-unavailable") from None
    recorder.record(query_record(user=user, text=q, results=result.total))
    return JsonResponse(
        {
            "message": plural_goods(result.total),
            "total": result.total,
            "hits": [h.__dict__ for h in result.hits],
            "facets": result.facets,
        }
    )


@router.get(
    "/recommend",
    dependencies=[VIEWER],
    response_model=RecommendOut,
    summary="The latest recommendations for a user; the most ordered products for a user without any",
    responses={404: PROBLEM_RESPONSES[422] | {"description": "No recommendations and no orders yet"}},
)
def recommend(
    request: Request,
    user: Annotated[str, Query(min_length=1, max_length=64)],
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> Response:
    try:
        answer = _state(request).recommender().recommend(user, limit=limit)
    except NoRecommendations as exc:
        raise Problem(404, str(exc), kind="no-recommendations") from None
    return JsonResponse(answer.as_dict())


@router.get(
    "/products",
    dependencies=[VIEWER],
    response_model=Page[dict[str, Any]],
    summary="The catalog (shop.catalog_path, else the sample), filtered and paged",
)
def products(
    request: Request,
    q: Annotated[str | None, Query(min_length=1, max_length=200, description="Part of the name")] = None,
    category: Text = None,
    brand: Text = None,
    price_min: Price = None,
    price_max: Price = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Response:
    span = _price(price_min, price_max)
    needle = q.casefold().replace("ё", "е") if q else None
    rows = []
    for p in _state(request).products():
        amount = float(p["price"]["amount"])
        if category and p.get("category") != category or brand and p.get("brand") != brand:
            continue
        if span is not None and (
            (span.low is not None and amount < span.low) or (span.high is not None and amount >= span.high)
        ):
            continue
        if needle and needle not in str(p.get("name", "")).casefold().replace("ё", "е"):
            continue
        rows.append(p)
    page = rows[offset : offset + limit]
    return JsonResponse(
        {
            "items": page,
            "limit": limit,
            "offset": offset,
            "next_offset": offset + len(page) if offset + len(page) < len(rows) else None,
            "total": len(rows),
        }
    )


@router.get("/blocked", dependencies=[VIEWER], response_model=list[StopEntryOut], summary="Blocked products")
def blocked(request: Request) -> Response:
    state = _state(request)
    entries = stoplist.load_stop_list(state.client_config, state.settings.topics.shop_stop_list).blocked()
    return JsonResponse([e.__dict__ for e in entries])


@router.post(
    "/blocked",
    dependencies=[OPERATOR],
    status_code=201,
    response_model=StopEntryOut,
    summary="Block a product: the filters drop it within seconds and search forgets it (operator)",
)
def block(request: Request, body: Annotated[BlockIn, Body()]) -> Response:
    state = _state(request)
    (entry,) = stoplist.block(state.client_config, state.settings.topics.shop_stop_list, [body.product_id], body.reason)
    return JsonResponse(entry.__dict__, status_code=201)


@router.delete(
    "/blocked/{product_id}",
    dependencies=[OPERATOR],
    response_model=StopEntryOut,
    summary="Unblock a product: it is published again downstream (operator)",
    responses={404: PROBLEM_RESPONSES[422] | {"description": "The product is not blocked"}},
)
def unblock(request: Request, product_id: ProductId) -> Response:
    state = _state(request)
    topic = state.settings.topics.shop_stop_list
    if not stoplist.load_stop_list(state.client_config, topic).is_blocked(product_id):
        raise Problem(404, f"product {product_id} is not blocked", kind="not-found")
    (entry,) = stoplist.unblock(state.client_config, topic, [product_id])
    return JsonResponse(entry.__dict__)


@router.get(
    "/queries",
    dependencies=[VIEWER],
    response_model=list[QueryOut],
    summary="The latest client queries (client-search), newest first",
)
def queries(request: Request, limit: Annotated[int, Query(ge=1, le=LIVE_QUERIES)] = 50) -> Response:
    return JsonResponse(_state(request).live_queries(limit))
