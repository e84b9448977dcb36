"""What every command shares: the settings built once by the root command, the console, output helpers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from millrace.config import Settings

console = Console()
err_console = Console(stderr=True)


@dataclass
class AppState:
    settings: Settings
    config_path: Path | None = None  # the --config file, so child commands get the same settings


def settings_of(ctx: typer.Context) -> Settings:
    """The Settings tree the root command built (``ctx.find_root().obj``)."""
    state = ctx.find_root().obj
    assert isinstance(state, AppState), "the root callback builds the settings"
    return state.settings


def app_state(ctx: typer.Context) -> AppState:
    state = ctx.find_root().obj
    assert isinstance(state, AppState), "the root callback builds the settings"
    return state


def print_json(data: Any) -> None:
    """Machine-readable output for ``--json`` flags: one JSON document on stdout, nothing else."""
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
