"""Authentication of the API and the WebSocket on a real server: 401 without or with a bad token, 403 with
too low a role (viewer reads, operator acknowledges, admin creates topics), the WebSocket closed with 1008
when refused, no token in the server's log, and TLS with the local CA."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from millrace.config import ApiToken, Settings
from millrace.runtime.security import ensure_node_cert
from millrace.services.app import create_app
from millrace.services.auth import new_token, token_hash
from millrace.stores.sqlite import SqliteStore
from tests.helpers import unique
from tests.integration.fixtures_service import seeded_store, served

pytestmark = pytest.mark.integration

TOKENS = {role: new_token() for role in ("viewer", "operator", "admin")}


def _auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def auth_settings(settings: Settings, state_dir: Path) -> Settings:
    tokens = tuple(ApiToken(name=f"test-{r}", role=r, sha256=token_hash(t)) for r, t in TOKENS.items())  # type: ignore[arg-type]
    api = settings.api.model_copy(update={"auth": "token", "tokens": tokens})
    return settings.model_copy(update={"state_dir": state_dir, "api": api})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteStore]:
    s = seeded_store(Path(tmp_path_factory.mktemp("auth")) / "millrace.db")
    yield s
    s.close()


@pytest.fixture(scope="module")
def url(settings: Settings, store: SqliteStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    own = auth_settings(settings, Path(tmp_path_factory.mktemp("auth-state")))
    with served(create_app(own, store=store, live=False)) as base:
        yield base


def _problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    for token in TOKENS.values():
        assert token not in response.text
    return body  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", ["/api/sensors", "/api/alerts", "/api/kafka/topics", "/api/store/collections"])
def test_reads_need_a_valid_token(url: str, path: str) -> None:
    missing = _problem(httpx.get(url + path), 401)
    assert missing["type"] == "https://millrace.dev/problems/unauthorized"
    assert missing["detail"] == "a bearer token is needed: send `Authorization: Bearer <token>`"
    assert httpx.get(url + path).headers["www-authenticate"] == 'Bearer realm="millrace"'
    bad = _problem(httpx.get(url + path, headers={"Authorization": "Bearer mr_not-a-token"}), 401)
    assert bad["detail"] == "the bearer token is not valid"
    _problem(httpx.get(url + path, headers={"Authorization": f"Basic {TOKENS['admin']}"}), 401)
    assert httpx.get(url + path, headers=_auth("viewer"), timeout=30).status_code == 200


def test_health_and_the_dashboard_page_stay_open(url: str) -> None:
    assert httpx.get(url + "/api/health").json()["status"] == "ok"
    assert "<title>millrace" in httpx.get(url + "/").text


def test_viewer_reads_but_cannot_acknowledge(url: str, store: SqliteStore) -> None:
    sensors = httpx.get(url + "/api/sensors", headers=_auth("viewer")).json()
    assert len(sensors["items"]) == 4
    refused = _problem(httpx.post(url + "/api/alerts/al-1/acknowledge", json={"by": "v"}, headers=_auth("viewer")), 403)
    assert refused["type"] == "https://millrace.dev/problems/forbidden"
    assert refused["detail"] == "this needs the operator role; token 'test-viewer' has the viewer role"
    _problem(httpx.post(url + "/api/alerts/al-1/resolve", json={"by": "v"}, headers=_auth("viewer")), 403)
    assert store.alert("al-1")["status"] == "open"  # type: ignore[index]
    _problem(httpx.post(url + "/api/alerts/al-1/acknowledge", json={"by": "v"}), 401)


def test_operator_acknowledges_but_cannot_create_topics(url: str, store: SqliteStore, settings: Settings) -> None:
    ack = httpx.post(url + "/api/alerts/al-1/acknowledge", json={"by": "ops"}, headers=_auth("operator"))
    assert ack.status_code == 200, ack.text
    assert ack.json()["status"] == "acknowledged"
    assert store.alert("al-1")["status"] == "acknowledged"  # type: ignore[index]
    name = unique("millrace.test.auth")
    refused = _problem(
        httpx.post(url + "/api/kafka/topics", json={"name": name, "partitions": 1}, headers=_auth("operator")), 403
    )
    assert refused["detail"] == "this needs the admin role; token 'test-operator' has the operator role"
    assert httpx.get(url + f"/api/kafka/topics/{name}", headers=_auth("admin"), timeout=30).status_code == 404


def test_admin_creates_a_topic(url: str) -> None:
    name = unique("millrace.test.auth")
    created = httpx.post(
        url + "/api/kafka/topics", json={"name": name, "partitions": 2}, headers=_auth("admin"), timeout=60
    )
    assert created.status_code == 201, created.text
    assert created.json()["name"] == name
    assert len(created.json()["partitions"]) == 2
    resolved = httpx.post(url + "/api/alerts/al-2/resolve", json={"by": "root"}, headers=_auth("admin"))
    assert resolved.status_code == 200 and resolved.json()["status"] == "resolved"


def _ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/ws"


def test_websocket_refused_without_a_valid_token(url: str) -> None:
    with connect(_ws_url(url)) as conn:  # no token: the first message is not an auth message
        conn.send(orjson.dumps({"subscribe": ["alerts"]}).decode())
        with pytest.raises(ConnectionClosed) as closed:
            conn.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert closed.value.rcvd.reason == "unauthorized"
    with connect(_ws_url(url)) as conn:
        conn.send(orjson.dumps({"type": "auth", "token": "mr_wrong"}).decode())
        with pytest.raises(ConnectionClosed) as wrong:
            conn.recv(timeout=10)
    assert wrong.value.rcvd is not None and wrong.value.rcvd.code == 1008
    with (
        connect(_ws_url(url), additional_headers={"Authorization": "Bearer mr_wrong"}) as conn,
        pytest.raises(ConnectionClosed) as header,
    ):
        conn.recv(timeout=10)
    assert header.value.rcvd is not None and header.value.rcvd.code == 1008


def test_websocket_accepted_with_a_token(url: str) -> None:
    subscribe = orjson.dumps({"subscribe": ["alerts"]}).decode()
    with connect(_ws_url(url)) as conn:  # the browser's way: the token in the first message
        conn.send(orjson.dumps({"type": "auth", "token": TOKENS["viewer"]}).decode())
        assert orjson.loads(conn.recv(timeout=10)) == {"type": "authenticated", "role": "viewer"}
        conn.send(subscribe)
        assert orjson.loads(conn.recv(timeout=10))["type"] == "subscribed"
    with connect(_ws_url(url), additional_headers=_auth("viewer")) as conn:  # a program's way: the header
        conn.send(subscribe)
        assert orjson.loads(conn.recv(timeout=10)) == {"type": "subscribed", "channels": ["alerts"], "filters": {}}


def test_no_token_in_the_server_log(
    settings: Settings, store: SqliteStore, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    own = auth_settings(settings, tmp_path)
    with served(create_app(own, store=store, live=False), log_level="debug") as base:
        for role in TOKENS:
            assert httpx.get(base + "/api/sensors", headers=_auth(role)).status_code == 200
        httpx.get(base + "/api/sensors", headers={"Authorization": "Bearer mr_wrong-token-in-log"})
        httpx.post(base + "/api/alerts/al-3/acknowledge", json={"by": "v"}, headers=_auth("viewer"))
        with connect(_ws_url(base)) as conn:
            conn.send(orjson.dumps({"type": "auth", "token": TOKENS["admin"]}).decode())
            conn.recv(timeout=10)
        with connect(_ws_url(base)) as conn:
            conn.send(orjson.dumps({"type": "auth", "token": "mr_wrong-ws-token"}).decode())
            with pytest.raises(ConnectionClosed):
                conn.recv(timeout=10)
    out, err = capfd.readouterr()
    log = out + err
    assert '"GET /api/sensors HTTP/1.1" 200' in log and '"GET /api/sensors HTTP/1.1" 401' in log  # it was logged
    assert '"POST /api/alerts/al-3/acknowledge HTTP/1.1" 403' in log
    for secret in (*TOKENS.values(), "mr_wrong-token-in-log", "mr_wrong-ws-token"):
        assert secret not in log


def test_tls_with_the_local_ca(settings: Settings, store: SqliteStore, tmp_path: Path) -> None:
    home = tmp_path / "tls"
    keystore = ensure_node_cert(home, 1, ["127.0.0.1"])  # key + certificate + CA in one PEM file
    own = auth_settings(settings, tmp_path)
    with served(create_app(own, store=store, live=False), tls=(keystore, keystore)) as base:
        assert base.startswith("https://")
        trusted = ssl.create_default_context(cafile=str(home / "ca.pem"))
        response = httpx.get(base + "/api/sensors", headers=_auth("viewer"), verify=trusted)
        assert response.status_code == 200 and len(response.json()["items"]) == 4
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(base + "/api/sensors", headers=_auth("viewer"))  # the system CAs do not know ours
        with pytest.raises(httpx.TransportError):  # plain HTTP is not answered
            httpx.get(base.replace("https://", "http://") + "/api/sensors", headers=_auth("viewer"))


def test_dashboard_with_the_token_in_the_url_fragment(settings: Settings, store: SqliteStore, tmp_path: Path) -> None:
    from playwright import sync_api

    from tests.integration.test_dashboard import _chromium

    own = auth_settings(settings, tmp_path)
    with served(create_app(own, store=store, live=False)) as base, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(_chromium()), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{base}/#token={TOKENS['viewer']}")
            sync_api.expect(page.locator("#ws-status")).to_have_text("live", timeout=15_000)  # WebSocket in
            sync_api.expect(page.locator("#data-table tbody tr")).to_have_count(4, timeout=15_000)
            assert page.url == base + "/"  # the token left the address bar
            assert page.evaluate("sessionStorage.getItem('millrace.token')") == TOKENS["viewer"]
            # a fresh tab without a token: the first 401 asks for one, then the page loads with it
            fresh = browser.new_page()
            asked: list[str] = []

            def answer(dialog: Any) -> None:
                asked.append(dialog.type)
                dialog.accept(TOKENS["viewer"])

            fresh.on("dialog", answer)
            fresh.goto(base + "/")
            sync_api.expect(fresh.locator("#data-table tbody tr")).to_have_count(4, timeout=15_000)
            sync_api.expect(fresh.locator("#ws-status")).to_have_text("live", timeout=15_000)
            assert asked == ["prompt"]
        finally:
            browser.close()
