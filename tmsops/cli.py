"""The ``tmsops`` command line.

The core knows none of the wings (training, serving, actuators, chaos); each wing
adds its command groups through the ``tmsops.commands`` entry point group, so
``tmsops eval ...`` comes from the training wing without the core importing it.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer

from tmsops.errors import TmsopsError
from tmsops.fleet.cli import app as fleet_commands
from tmsops.loadgen_cli import app as load_commands


def build_app() -> typer.Typer:
    app = typer.Typer(
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        help="tmsops: forecast-driven autoscaling, verified optimisation and safeguarded chaos.",
    )
    app.command("up")(up_command)
    app.add_typer(fleet_commands, name="fleet")
    app.add_typer(load_commands, name="load")
    for entry in sorted(entry_points(group="tmsops.commands"), key=lambda item: item.name):
        app.add_typer(entry.load(), name=entry.name)
    return app


def up_command(
    config: Annotated[
        Path | None, typer.Option(help="settings file (default: $TMSOPS_CONFIG or ./tmsops.yaml)")
    ] = None,
) -> None:
    """Start the model server, the local fleet, the autoscaler, the optimizer and chaos; Ctrl-C stops all."""
    from tmsops.settings import CoreSettings, FleetSettings, load_settings
    from tmsops.up import up

    up(load_settings(CoreSettings, config), load_settings(FleetSettings, config))


def app() -> None:
    """Console entry point: run the CLI, turning tmsops errors into one clear line."""
    try:
        build_app()()
    except TmsopsError as error:
        print(f"error: {error.message}", file=sys.stderr)
        sys.exit(2)
