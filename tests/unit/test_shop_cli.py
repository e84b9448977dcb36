"""``millrace shop`` on bad input: one line naming the option, exit 2; a registry that is down: one line, exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from millrace.runtime.process import free_port

MILLRACE = [sys.executable, "-m", "millrace.cli.main"]


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}
    return subprocess.run(
        [*MILLRACE, "--state-dir", str(cwd / "state"), *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {}), "COLUMNS": "200"},
        cwd=cwd,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("shop", "orders", "--rate", "0"), "error: --rate: must be above 0 (got 0)"),
        (("shop", "orders", "--count", "0"), "error: --count: must be at least 1 (got 0)"),
        (("shop", "orders", "--start", "yesterday"), "error: --start: not an ISO 8601 time: 'yesterday'"),
        (("shop", "publish-catalog", "missing.json"), "error: FILE: catalog file not found: missing.json"),
        (("shop", "schemas", "apply", "--dir", "nowhere"), "error: --dir: not a directory: nowhere"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: tuple[str, ...], line: str, tmp_path: Path) -> None:
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert [x for x in result.stderr.splitlines() if x.strip()] == [line]


def test_bad_shop_setting_names_the_key(tmp_path: Path) -> None:
    result = run("shop", "schemas", "apply", cwd=tmp_path, env={"MILLRACE_SHOP__COMPATIBILITY": "SOMETIMES"})
    assert result.returncode == 2
    assert "invalid setting shop.compatibility" in result.stderr and "Traceback" not in result.stderr


def test_registry_down_is_one_line_exit_1(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"  # nothing listens there
    result = run("shop", "schemas", "apply", cwd=tmp_path, env={"MILLRACE_SHOP__REGISTRY_URL": url})
    assert result.returncode == 1
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and f"cannot use the schema registry at {url}" in lines[0], result.stderr
    assert lines[0].endswith("is it running?")


def test_shop_help(tmp_path: Path) -> None:
    result = run("shop", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("publish-catalog", "orders", "schemas"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("setting", "flag", "uses_registry"),
    [
        (None, None, False),  # the default: plain JSON, no registry needed
        ("true", None, True),  # the flag defaults to shop.use_registry
        ("true", "--no-registry", False),
        ("false", "--registry", True),
    ],
)
def test_search_registry_flag_defaults_to_the_setting(
    setting: str | None, flag: str | None, uses_registry: bool, tmp_path: Path
) -> None:
    # The registry is down and there is no search index: which of the two the command stumbles on first shows
    # whether it framed the query (the serializer is made, and the schema registered, before the index is asked).
    url = f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"
    env = {"MILLRACE_SHOP__REGISTRY_URL": url}
    if setting is not None:
        env["MILLRACE_SHOP__USE_REGISTRY"] = setting
    result = run("shop", "search", "часы", *([flag] if flag else []), cwd=tmp_path, env=env)
    assert result.returncode == 1, result.stderr
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    if uses_registry:
        assert f"cannot use the schema registry at {url}" in lines[0]
    else:
        assert "schema registry" not in lines[0] and lines[0].endswith("run `millrace shop index` first"), lines[0]
