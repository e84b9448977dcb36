"""Bearer-token authentication of the REST API and the WebSocket, with three roles.

viewer < operator < admin: reads need viewer, changing an alert's lifecycle needs operator, creating a topic
needs admin. The settings hold only the SHA-256 of each token (``api.tokens``); a token is 32 random bytes,
so a fast hash is enough: there is no dictionary to guess it from, unlike a password.

Secrets never leave this module: a refusal says *why* (missing, unknown, too low a role) and names the
token's configured name, never the token. The WebSocket takes the token from the handshake's
``Authorization`` header or, for browsers (which cannot set headers on a WebSocket), from a first message
``{"type": "auth", "token": "..."}``. A query parameter is not accepted: URLs end up in access logs.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

import orjson
from fastapi import Depends, Request, WebSocket, WebSocketDisconnect
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from millrace.config import ApiRole, ApiToken
from millrace.services.problems import Problem
from millrace.services.schemas import PROBLEM_RESPONSES, Responses

log = logging.getLogger(__name__)

ROLES: tuple[ApiRole, ...] = get_args(ApiRole)
TOKEN_PREFIX = "mr_"
WS_AUTH_TIMEOUT_S = 10.0
WS_POLICY_VIOLATION = 1008  # RFC 6455: the close code for "refused by policy"
ANONYMOUS = "anonymous"


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe, fits a URL fragment and an HTTP header)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What the settings store for ``token``: its SHA-256 in hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def role_allows(have: str, need: str) -> bool:
    """Whether a token with role ``have`` may do what needs role ``need`` (roles are ordered)."""
    return ROLES.index(have) >= ROLES.index(need)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Principal:
    name: str
    role: ApiRole


class Refused(Exception):
    """Why a request is refused: ``status`` 401 (no or unknown token) or 403 (role too low)."""

    def __init__(self, status: Literal[401, 403], detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Authenticator:
    """The configured tokens. ``mode="none"`` lets everyone in as an admin (a trusted network only)."""

    def __init__(self, mode: Literal["token", "none"], tokens: Iterable[ApiToken]) -> None:
        self.mode = mode
        self._tokens = tuple(tokens)

    @property
    def enabled(self) -> bool:
        return self.mode == "token"

    def identify(self, token: str | None) -> Principal:
        """The principal of ``token``; raises Refused(401) when it is missing or unknown."""
        if not self.enabled:
            return Principal(ANONYMOUS, "admin")
        if not token:
            raise Refused(401, "a bearer token is needed: send `Authorization: Bearer <token>`")
        digest = token_hash(token)
        found = None
        for entry in self._tokens:  # compare every entry in constant time, so timing tells nothing
            if hmac.compare_digest(digest, entry.sha256):
                found = entry
        if found is None:
            raise Refused(401, "the bearer token is not valid")
        return Principal(found.name, found.role)

    def authorize(self, token: str | None, need: ApiRole) -> Principal:
        principal = self.identify(token)
        if not role_allows(principal.role, need):
            raise Refused(403, f"this needs the {need} role; token {principal.name!r} has the {principal.role} role")
        return principal


# A token as it may appear in a log line: an auth message's field, a header, or a millrace token anywhere.
_SECRET_IN_TEXT = re.compile(r'("token"\s*:\s*")[^"]*(")|((?i:bearer)\s+)\S+|mr_[A-Za-z0-9_-]+')
# uvicorn logs WebSocket frames (the auth message included) and handshake headers at debug level through
# these loggers; millrace's own messages never hold a token, the filter is a second line of defence.
REDACTED_LOGGERS = ("uvicorn.error", "uvicorn.access", "uvicorn", "websockets.server", "millrace")


def redact(text: str) -> str:
    """``text`` with anything that looks like a token replaced by ``***``."""
    return _SECRET_IN_TEXT.sub(lambda m: f"{m[1]}***{m[2]}" if m[1] else f"{m[3]}***" if m[3] else "***", text)


class RedactTokens(logging.Filter):
    """Rewrites a record whose message holds a token (the record is kept, the token is not)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_log_redaction() -> None:
    """Put RedactTokens on the loggers that can see a token (once per logger)."""
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


_scheme = HTTPBearer(auto_error=False, description="An API token (`millrace token create`).")


def require(need: ApiRole) -> Callable[..., Principal]:
    """A route dependency: the caller's principal, or a 401/403 problem."""

    def dependency(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_scheme)]
    ) -> Principal:
        auth: Authenticator = request.app.state.auth
        try:
            return auth.authorize(credentials.credentials if credentials else None, need)
        except Refused as exc:
            log.info("refused %s %s: %s", request.method, request.url.path, exc.detail)
            kind = "unauthorized" if exc.status == 401 else "forbidden"
            headers = {"WWW-Authenticate": 'Bearer realm="millrace"'} if exc.status == 401 else None
            raise Problem(exc.status, exc.detail, kind=kind, headers=headers) from None

    dependency.__name__ = f"require_{need}"
    return dependency


AUTH_RESPONSES: Responses = {
    401: PROBLEM_RESPONSES[422] | {"description": "No bearer token, or not a valid one"},
    403: PROBLEM_RESPONSES[422] | {"description": "The token's role is too low for this route"},
}
VIEWER = Depends(require("viewer"))
OPERATOR = Depends(require("operator"))
ADMIN = Depends(require("admin"))


async def authenticate_ws(ws: WebSocket, need: ApiRole = "viewer") -> Principal | None:
    """Authenticate an accepted WebSocket: the handshake's Authorization header, else a first message
    ``{"type": "auth", "token": ...}`` within WS_AUTH_TIMEOUT_S (answered with ``{"type": "authenticated"}``).
    On refusal the socket is closed with 1008 and None is returned."""
    auth: Authenticator = ws.app.state.auth
    if not auth.enabled:
        return auth.identify(None)
    token = bearer(ws.headers.get("authorization"))
    first_message = token is None
    if first_message:
        try:
            message: Any = orjson.loads(await asyncio.wait_for(ws.receive_text(), WS_AUTH_TIMEOUT_S))
        except WebSocketDisconnect:
            return None
        except (TimeoutError, orjson.JSONDecodeError, KeyError, RuntimeError):
            message = None
        if isinstance(message, dict) and message.get("type") == "auth" and isinstance(message.get("token"), str):
            token = message["token"]
    try:
        principal = auth.authorize(token, need)
    except Refused as exc:
        log.info("refused WebSocket: %s", exc.detail)
        await ws.close(code=WS_POLICY_VIOLATION, reason="unauthorized" if exc.status == 401 else "forbidden")
        return None
    if first_message:
        await ws.send_text(orjson.dumps({"type": "authenticated", "role": principal.role}).decode())
    return principal
