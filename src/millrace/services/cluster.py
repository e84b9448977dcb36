"""REST routes of the Kafka cluster view under /api/kafka (brokers, topics, groups, messages, create)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from confluent_kafka.admin import AdminClient
from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from starlette.responses import Response

from millrace.config import Settings
from millrace.services import kafka_view
from millrace.services.auth import ADMIN, AUTH_RESPONSES, VIEWER
from millrace.services.problems import JsonResponse, Problem
from millrace.services.schemas import PROBLEM_RESPONSES, Responses, TopicCreate

router = APIRouter(
    prefix="/api/kafka", tags=["kafka"], responses=PROBLEM_RESPONSES | AUTH_RESPONSES, dependencies=[VIEWER]
)

TopicName = Annotated[str, PathParam(min_length=1, max_length=249)]
GroupId = Annotated[str, PathParam(min_length=1, max_length=255)]
_NOT_FOUND: Responses = {404: PROBLEM_RESPONSES[422] | {"description": "Not found"}}
_CREATE: Responses = {409: PROBLEM_RESPONSES[422] | {"description": "Topic exists"}}


def _admin(request: Request) -> AdminClient:
    return request.app.state.kafka_admin.get()  # type: ignore[no-any-return]


def local_data_dirs(settings: Settings) -> list[Path]:
    """Log dirs of millrace's own local broker(s), used for topic sizes; empty for an external cluster."""
    root = settings.state_dir / "kafka"
    return sorted(p / "data" for p in root.glob("node-*")) if root.is_dir() else []


def _dirs(request: Request) -> list[Path]:
    settings: Settings = request.app.state.settings
    local = f"{settings.runtime.host}:{settings.runtime.kafka_port}"
    return local_data_dirs(settings) if local in settings.kafka.bootstrap_servers.split(",") else []


@router.get("/brokers", summary="Cluster id, controller and brokers with their log size")
def brokers(request: Request) -> Response:
    return JsonResponse(kafka_view.brokers(_admin(request), data_dirs=_dirs(request)))


@router.get("/topics", summary="Topics with partitions, leaders, ISR, offsets and size")
def topics(request: Request, internal: bool = False) -> Response:
    return JsonResponse({"topics": kafka_view.topics(_admin(request), internal=internal, data_dirs=_dirs(request))})


@router.post(
    "/topics",
    status_code=201,
    responses=_CREATE,
    dependencies=[ADMIN],
    summary="Create a topic (name pattern, partitions 1..100, RF ≤ brokers; admin role)",
)
def create_topic(request: Request, body: TopicCreate) -> Response:
    try:
        kafka_view.create_topic(_admin(request), body.name, body.partitions, body.replication_factor, body.configs)
    except kafka_view.TopicError as exc:
        raise Problem(exc.status, str(exc), kind="topic") from None
    info = kafka_view.topic(_admin(request), body.name, data_dirs=_dirs(request))
    return JsonResponse(info, status_code=201)


@router.get("/topics/{name}", responses=_NOT_FOUND, summary="One topic with partitions and configs")
def topic(request: Request, name: TopicName) -> Response:
    info = kafka_view.topic(_admin(request), name, data_dirs=_dirs(request))
    if info is None:
        raise Problem(404, f"topic {name!r} does not exist", kind="not-found")
    return JsonResponse(info)


@router.get(
    "/topics/{name}/messages",
    responses=_NOT_FOUND,
    summary="Browse messages: the newest first, or forward from an offset or a time; key search",
)
def messages(
    request: Request,
    name: TopicName,
    limit: Annotated[int, Query(ge=1, le=500)] = 20,
    partition: Annotated[int | None, Query(ge=0, le=100_000)] = None,
    offset: Annotated[int | None, Query(ge=0, description="Read forward from this offset (each partition).")] = None,
    timestamp: Annotated[
        datetime | None, Query(description="Read forward from the first message at or after this time (ISO 8601).")
    ] = None,
    key: Annotated[str | None, Query(min_length=1, max_length=200, description="Keys containing this text.")] = None,
    scan: Annotated[int, Query(ge=1, le=100_000, description="Messages per partition a key search reads.")] = 10_000,
) -> Response:
    settings: Settings = request.app.state.settings
    ts_ms = None
    if timestamp is not None:
        ts = timestamp.replace(tzinfo=UTC) if timestamp.tzinfo is None else timestamp
        ts_ms = int(ts.timestamp() * 1000)
        if ts_ms < 0:
            raise Problem(422, "timestamp must not be before 1970-01-01T00:00:00Z", kind="validation")
    try:
        found = kafka_view.browse(
            settings.kafka.client_config(),
            _admin(request),
            name,
            limit=limit,
            partition=partition,
            offset=offset,
            timestamp_ms=ts_ms,
            key=key,
            scan=scan,
        )
    except kafka_view.TopicError as exc:
        raise Problem(exc.status, str(exc), kind="not-found") from None
    if found is None:
        raise Problem(404, f"topic {name!r} does not exist", kind="not-found")
    return JsonResponse({"topic": name, **found})


@router.get("/groups", summary="Consumer groups with state, members and lag per partition")
def groups(request: Request) -> Response:
    return JsonResponse({"groups": kafka_view.groups(_admin(request))})


@router.get("/groups/{group_id}", responses=_NOT_FOUND, summary="One consumer group with lag per partition")
def group(request: Request, group_id: GroupId) -> Response:
    info: dict[str, Any] | None = kafka_view.group(_admin(request), group_id)
    if info is None:
        raise Problem(404, f"consumer group {group_id!r} does not exist", kind="not-found")
    return JsonResponse(info)
