"""``tmsops fleet run``: start the local fleet from ``tmsops.yaml`` and serve its control API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="The local fleet: real replica processes behind per-service proxies.")


@app.callback()
def fleet() -> None:
    """The local fleet: real replica processes behind per-service proxies."""


@app.command("run")
def run(
    config: Annotated[
        Path | None, typer.Option(help="settings file (default: $TMSOPS_CONFIG or ./tmsops.yaml)")
    ] = None,
) -> None:
    """Start every declared service (the demo workload by default) and the control API; Ctrl-C stops all."""
    import uvicorn

    from tmsops.fleet.api import build_app
    from tmsops.settings import FleetSettings, load_settings

    settings = load_settings(FleetSettings, config)
    names = ", ".join(f"{name} :{service.port}" for name, service in settings.fleet.services.items())
    print(f"tmsops fleet: control API on http://{settings.host}:{settings.port}; services: {names}", flush=True)
    uvicorn.run(build_app(settings), host=settings.host, port=settings.port, log_level="warning")
