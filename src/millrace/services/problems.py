"""Errors as RFC 9457 problem details (``application/problem+json``) and the JSON encoding of responses.

Every error the API returns has ``type``, ``title``, ``status`` and ``detail``; validation errors add
``errors`` (where and what). Store and Kafka outages are 503, never a bare 500.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, date, datetime
from http import HTTPStatus
from typing import Any

import numpy as np
import orjson
from confluent_kafka import KafkaError, KafkaException
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from millrace.errors import KafkaUnavailable, MillraceError, StoreUnavailable
from millrace.records import to_iso

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "https://millrace.dev/problems/"


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return to_iso(value if value.tzinfo else value.replace(tzinfo=UTC))
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def dumps(data: Any) -> bytes:
    """JSON bytes: datetimes as ISO 8601 UTC with Z, NaN/inf as null, numpy scalars as numbers."""
    return orjson.dumps(clean(data), default=_default, option=orjson.OPT_NON_STR_KEYS)


def clean(data: Any) -> Any:
    """Make store rows JSON-safe: NaN and infinities become null; pandas NaT becomes null."""
    if isinstance(data, dict):
        return {k: clean(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [clean(v) for v in data]
    if isinstance(data, float | np.floating):
        return None if not math.isfinite(float(data)) else float(data)
    if data is not None and type(data).__name__ == "NaTType":
        return None
    if isinstance(data, datetime):
        return to_iso(data if data.tzinfo else data.replace(tzinfo=UTC))
    return data


class JsonResponse(Response):
    """The API's default response class (orjson, NaN-safe)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


class Problem(Exception):
    """Raise to answer with a problem document. ``kind`` becomes the type URI's last segment."""

    def __init__(
        self, status: int, detail: str, *, kind: str | None = None, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.headers = headers or {}
        self.extra = extra


def problem_response(
    status: int, detail: str, *, kind: str | None = None, instance: str | None = None, **extra: Any
) -> Response:
    title = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + kind if kind else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    headers = {"Retry-After": "5"} if status == 503 else None
    return Response(dumps(body), status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def install(app: FastAPI) -> None:
    """Register the problem+json handlers on ``app``."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        response = problem_response(exc.status, exc.detail, kind=exc.kind, instance=request.url.path, **exc.extra)
        response.headers.update(exc.headers)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        response = problem_response(exc.status_code, detail, instance=request.url.path)
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"location": ".".join(str(p) for p in err.get("loc", ())), "message": err.get("msg", "")}
            for err in exc.errors()
        ]
        first = errors[0] if errors else {"location": "request", "message": "invalid"}
        return problem_response(
            422,
            f"{first['location']}: {first['message']}",
            kind="validation",
            instance=request.url.path,
            errors=errors,
        )

    @app.exception_handler(StoreUnavailable)
    async def _store(request: Request, exc: StoreUnavailable) -> Response:
        return problem_response(503, str(exc), kind="store-unavailable", instance=request.url.path)

    @app.exception_handler(KafkaUnavailable)
    async def _kafka(request: Request, exc: KafkaUnavailable) -> Response:
        return problem_response(503, str(exc), kind="kafka-unavailable", instance=request.url.path)

    @app.exception_handler(KafkaException)
    async def _kafka_error(request: Request, exc: KafkaException) -> Response:
        err = exc.args[0] if exc.args else None
        text = err.str() if isinstance(err, KafkaError) else str(exc)
        return problem_response(503, f"Kafka: {text}", kind="kafka-unavailable", instance=request.url.path)

    @app.exception_handler(MillraceError)
    async def _millrace(request: Request, exc: MillraceError) -> Response:
        return problem_response(400, str(exc), kind="invalid-request", instance=request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return problem_response(500, f"internal error: {type(exc).__name__}", instance=request.url.path)
