"""``millrace monitoring check``: the generated Prometheus and Alertmanager files, checked by promtool and amtool."""

from __future__ import annotations

import typer

from millrace.cli.common import console, settings_of
from millrace.errors import MillraceError
from millrace.runtime import monitoring

app = typer.Typer(help="Prometheus and Alertmanager (`stack up --with monitoring`).", no_args_is_help=True)


@app.command()
def check(ctx: typer.Context) -> None:
    """Write prometheus.yml, the alert rules and alertmanager.yml for these settings under <state_dir>/monitoring
    and check them with `promtool check config`, `promtool check rules` and `amtool check-config`."""
    settings = settings_of(ctx)
    checks = monitoring.check(settings)
    for c in checks:
        mark = "[green]✓[/]" if c.ok else "[red]✗[/]"
        console.print(f"{mark} {c.what}")
        if not c.ok:
            console.print(c.output, markup=False, highlight=False)
    console.print(f"files in {monitoring.monitoring_dir(settings.state_dir)}")
    failed = [c.what for c in checks if not c.ok]
    if failed:
        raise MillraceError(f"monitoring check failed: {', '.join(failed)}")
