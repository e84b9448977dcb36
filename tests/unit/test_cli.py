"""The CLI's contract with users: --help everywhere, bad settings → one line naming the key, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

MILLRACE = [sys.executable, "-m", "millrace.cli.main"]


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}
    return subprocess.run(
        [*MILLRACE, *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {}), "COLUMNS": "200"},
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_bad_setting_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run("stack", "status", env={"MILLRACE_RUNTIME__KAFKA_PORT": "not-a-port"}, cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "invalid setting runtime.kafka_port" in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_config_file_key(tmp_path: Path) -> None:
    (tmp_path / "millrace.toml").write_text("[spark]\nmaster = 3\nnope = 1\n", encoding="utf-8")
    result = run("stack", "status", cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid setting spark.master" in result.stderr


@pytest.mark.parametrize("args", [(), ("stack",), ("topics",), ("stack", "up"), ("topics", "describe")])
def test_help_everywhere(args: tuple[str, ...], tmp_path: Path) -> None:
    result = run(*args, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("millrace ")


def test_status_with_nothing_running(tmp_path: Path) -> None:
    result = run("--state-dir", str(tmp_path / "state"), "stack", "status", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_bad_parameter_inside_a_command_is_a_usage_error(tmp_path: Path) -> None:
    result = run("--state-dir", str(tmp_path), "stack", "logs", "nope", cwd=tmp_path)
    assert result.returncode == 2
    assert "no log for nope" in result.stderr
    assert "Traceback" not in result.stderr


RIG = "time,Pressure,Current\n2026-01-01T00:00:00Z,2.5,4000\n2026-01-01T00:00:01Z,2.6,4010\n"


def test_a_bad_type_mapping_file_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "rig.csv").write_text(RIG, encoding="utf-8")
    (tmp_path / "types.csv").write_text("column,type\nPressure [bar],\n", encoding="utf-8")
    for command in (("iot", "replay", "rig.csv"), ("ml", "evaluate", "rig.csv")):
        result = run("--state-dir", str(tmp_path / "state"), *command, "--types", "types.csv", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines == ["error: types.csv: line 2: empty type for 'Pressure [bar]'"]  # brackets kept


def test_replay_refuses_types_the_stream_job_would_dead_letter(tmp_path: Path) -> None:
    (tmp_path / "rig.csv").write_text(RIG, encoding="utf-8")
    (tmp_path / "types.toml").write_text('Current = "current_ma"\nPressure = "pressure"\n', encoding="utf-8")
    result = run(
        "--state-dir", str(tmp_path / "state"), "iot", "replay", "rig.csv", "--types", "types.toml", cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: rig.csv: sensor types current_ma have no range in processing.ranges, so the stream job would "
        "dead-letter their readings as unknown_sensor_type; give each a range in the settings "
        "(processing.ranges.<type> low and high) or map their sensors to generic with --types"
    )
