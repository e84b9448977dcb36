"""What every command shares: the settings built once by the root command, the console, output helpers."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from millrace.config import Settings, load_settings

console = Console()
err_console = Console(stderr=True)


@dataclass
class AppState:
    """What the root command parsed. The settings are built on first use, not by the root command, so that
    ``--help`` of every command works even when the config file is broken."""

    config_path: Path | None = None  # the --config file, so child commands get the same settings
    overrides: dict[str, object] = field(default_factory=dict)
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_path, **self.overrides)
            logging.getLogger().setLevel(self._settings.log_level)
        return self._settings


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
