"""API tokens: hashing, role order, the authenticator's answers, the token settings and `millrace token create`."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from millrace.cli.main import run
from millrace.config import ApiToken, load_settings
from millrace.errors import ConfigError
from millrace.services.auth import (
    ROLES,
    Authenticator,
    RedactTokens,
    Refused,
    bearer,
    new_token,
    redact,
    role_allows,
    token_hash,
)


def entry(name: str, role: str, token: str) -> ApiToken:
    return ApiToken(name=name, role=role, sha256=token_hash(token))  # type: ignore[arg-type]


def test_tokens_are_random_url_safe_and_hashed_with_sha256() -> None:
    tokens = {new_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert re.fullmatch(r"mr_[A-Za-z0-9_-]{43}", token)
    token = "mr_example"
    assert token_hash(token) == hashlib.sha256(b"mr_example").hexdigest()
    assert len(token_hash(token)) == 64 and token not in token_hash(token)


def test_roles_are_ordered() -> None:
    assert ROLES == ("viewer", "operator", "admin")
    allowed = {(have, need) for have in ROLES for need in ROLES if role_allows(have, need)}
    assert allowed == {
        ("viewer", "viewer"),
        ("operator", "viewer"),
        ("operator", "operator"),
        ("admin", "viewer"),
        ("admin", "operator"),
        ("admin", "admin"),
    }


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_header(header: str | None, token: str | None) -> None:
    assert bearer(header) == token


def test_authenticator_answers() -> None:
    auth = Authenticator("token", [entry("ro", "viewer", "t-view"), entry("ops", "operator", "t-op")])
    assert auth.authorize("t-view", "viewer").name == "ro"
    assert auth.authorize("t-op", "viewer").role == "operator"
    assert auth.authorize("t-op", "operator").name == "ops"
    with pytest.raises(Refused) as missing:
        auth.authorize(None, "viewer")
    assert missing.value.status == 401 and "bearer token is needed" in missing.value.detail
    with pytest.raises(Refused) as unknown:
        auth.authorize("t-wrong", "viewer")
    assert unknown.value.status == 401 and "t-wrong" not in unknown.value.detail
    with pytest.raises(Refused) as low:
        auth.authorize("t-view", "operator")
    assert low.value.status == 403
    assert low.value.detail == "this needs the operator role; token 'ro' has the viewer role"
    with pytest.raises(Refused) as low_op:
        auth.authorize("t-op", "admin")
    assert low_op.value.status == 403 and "t-op" not in low_op.value.detail


def test_no_tokens_configured_refuses_everyone_and_auth_none_admits_everyone() -> None:
    with pytest.raises(Refused):
        Authenticator("token", []).authorize("anything", "viewer")
    open_api = Authenticator("none", [])
    assert open_api.authorize(None, "admin").role == "admin"


def test_token_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("MILLRACE_")]:
        monkeypatch.delenv(name)
    digest = token_hash("mr_x")
    (tmp_path / "millrace.toml").write_text(
        f'[api]\nauth = "token"\n[[api.tokens]]\nname = "ops"\nrole = "operator"\nsha256 = "{digest}"\n',
        encoding="utf-8",
    )
    settings = load_settings(tmp_path / "millrace.toml", state_dir=tmp_path)
    assert settings.api.auth == "token"
    assert settings.api.tokens == (ApiToken(name="ops", role="operator", sha256=digest),)
    assert load_settings(state_dir=tmp_path).api.auth == "token"  # on by default
    with pytest.raises(ConfigError, match=r"^invalid setting api\.tokens\.0\.sha256: ") as bad:
        load_settings(state_dir=tmp_path, api={"tokens": [{"name": "x", "role": "admin", "sha256": "mr_plain"}]})
    assert "mr_plain" not in str(bad.value)  # a token pasted where its hash belongs is not echoed
    with pytest.raises(ConfigError, match="invalid setting api.tokens.0.role"):
        load_settings(state_dir=tmp_path, api={"tokens": [{"name": "x", "role": "root", "sha256": digest}]})
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        load_settings(state_dir=tmp_path, api={"tls_cert": str(tmp_path / "c.pem")})


def test_token_create_prints_the_token_once_and_its_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = run(["token", "create", "--role", "operator", "--name", "ops-laptop"])
    assert code == 0, err.getvalue()
    text = out.getvalue()
    tokens = re.findall(r"mr_[A-Za-z0-9_-]{43}", text)
    assert len(tokens) == 1
    assert text.count(tokens[0]) == 1
    assert f'[[api.tokens]]\nname = "ops-laptop"\nrole = "operator"\nsha256 = "{token_hash(tokens[0])}"' in text


def test_token_create_rejects_a_bad_role_and_name() -> None:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        role = run(["token", "create", "--role", "root"])
        name = run(["token", "create", "--name", "has space"])
    assert role == 2 and name == 2
    assert "mr_" not in out.getvalue()
    assert "--name" in err.getvalue() and "--role" in err.getvalue()


@pytest.mark.parametrize(
    ("line", "clean"),
    [
        (
            '< TEXT \'{"type":"auth","token":"s3cret value"}\' [40 bytes]',
            '< TEXT \'{"type":"auth","token":"***"}\' [40 bytes]',
        ),
        ("< authorization: Bearer s3cret", "< authorization: Bearer ***"),
        ("< Authorization: bearer s3cret tail", "< Authorization: bearer *** tail"),
        ("dashboard: http://127.0.0.1:8000/#token=mr_abc-_9Z", "dashboard: http://127.0.0.1:8000/#token=***"),
        ('"GET /api/sensors HTTP/1.1" 401', '"GET /api/sensors HTTP/1.1" 401'),
    ],
)
def test_redact(line: str, clean: str) -> None:
    assert redact(line) == clean


def test_the_log_filter_rewrites_records_with_a_token() -> None:
    record = logging.LogRecord("uvicorn.error", logging.DEBUG, __file__, 1, "%s %s", ("> TEXT", '{"token":"x1"}'), None)
    assert RedactTokens().filter(record)
    assert record.getMessage() == '> TEXT {"token":"***"}'
