"""What every pipeline stage shares: quiet libraries, clear failures, JSON outputs."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from tmsops.errors import TmsopsError

log = logging.getLogger("training")


def stage_app(command: Callable[..., None]) -> typer.Typer:
    """A one-command typer app for ``python -m training.<stage>``."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(command)
    return app


def run(app: typer.Typer) -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("great_expectations", "mlflow.pyfunc", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        app()
    except TmsopsError as error:
        print(f"error: {error.message}", file=sys.stderr)
        sys.exit(2)


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
