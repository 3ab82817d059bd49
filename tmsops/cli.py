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
    app.command("down")(down_command)
    app.command("status")(status_command)
    app.command("token")(token_command)
    app.add_typer(fleet_commands, name="fleet")
    app.add_typer(load_commands, name="load")
    for entry in sorted(entry_points(group="tmsops.commands"), key=lambda item: item.name):
        app.add_typer(entry.load(), name=entry.name)
    return app


ConfigOption = Annotated[Path | None, typer.Option(help="settings file (default: $TMSOPS_CONFIG or ./tmsops.yaml)")]


def up_command(
    config: ConfigOption = None,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            help="the demo: its own settings (a day of traffic in ten minutes, the demo database), its story",
        ),
    ] = False,
) -> None:
    """Start the MLflow UI, the model server, the local fleet, the autoscaler, the optimizer and chaos.

    Ctrl-C (or `tmsops down`) stops them all.
    """
    from tmsops.settings import CoreSettings, FleetSettings, load_settings
    from tmsops.up import pid_file, up

    if demo and config is not None:
        raise typer.BadParameter("--demo brings its own settings; leave --config out", param_hint="--config")
    state_dir = load_settings(CoreSettings, config).state_dir
    with pid_file(state_dir):  # before the demo resets its database: a running demo stays untouched
        if demo:
            config = demo_config(state_dir)
        up(load_settings(CoreSettings, config), load_settings(FleetSettings, config), config=config, demo=demo)


def demo_config(state_dir: Path) -> Path:
    """Find PostgreSQL and Redis for the demo, write its settings, say what it runs on."""
    from tmsops.demo.platform import find_backends, write_demo_settings

    backends = find_backends()
    for note in backends.notes:
        print(f"demo: {note}")
    path = write_demo_settings(backends, state_dir)
    print(f"demo: settings in {path}")
    return path


def down_command(config: ConfigOption = None) -> None:
    """Stop what `tmsops up` started (it stops every part, in reverse order)."""
    from tmsops.settings import CoreSettings, load_settings
    from tmsops.up import down

    pid = down(load_settings(CoreSettings, config).state_dir)
    print("tmsops was not running" if pid is None else f"stopped tmsops up (pid {pid})")


def status_command(config: ConfigOption = None) -> None:
    """Each part's health; the exit code is 1 unless every part is healthy."""
    from tmsops.settings import CoreSettings, FleetSettings, load_settings
    from tmsops.up import PID_FILE, read_pid, status

    settings = load_settings(CoreSettings, config)
    parts = status(settings, load_settings(FleetSettings, config))
    pid = read_pid(settings.state_dir / PID_FILE)
    print(f"tmsops up: {'running, pid ' + str(pid) if pid else 'not running'}")
    for part in parts:
        print(f"  {part.name:<13} {'healthy' if part.healthy else 'DOWN':<8} {part.detail:<28} {part.url}")
    if not all(part.healthy for part in parts):
        raise typer.Exit(1)


def token_command(
    name: Annotated[str, typer.Argument(help="who or what the token is for, e.g. alice or ci")],
    scope: Annotated[str, typer.Option(help="read | operate | admin")] = "read",
    config: ConfigOption = None,
) -> None:
    """Create a bearer token (printed once; only its hash is stored). A new token replaces one of that name."""
    from tmsops.auth import Scope
    from tmsops.settings import CoreSettings, load_settings
    from tmsops.up import issue_token

    try:
        wanted = Scope(scope)
    except ValueError:
        raise typer.BadParameter(f"{scope!r} is not read, operate or admin", param_hint="--scope") from None
    print(issue_token(load_settings(CoreSettings, config), name, wanted))


def app() -> None:
    """Console entry point: run the CLI, turning tmsops errors into one clear line."""
    try:
        build_app()()
    except TmsopsError as error:
        print(f"error: {error.message}", file=sys.stderr)
        sys.exit(2)
