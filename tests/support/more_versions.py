"""More model versions in a test MLflow registry: a private copy of a store, new versions, alias moves."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mlflow import MlflowClient


def copy_registry(tracking_uri: str, root: Path) -> str:
    """A private copy of a ``sqlite:///`` store in ``root/mlflow.db``; returns its URI.

    The copy refers to the same (read-only) model artifacts, so changing its versions and
    aliases leaves the original store, and any server reading it, untouched.
    """
    if not tracking_uri.startswith("sqlite:///"):
        raise ValueError(f"only sqlite stores can be copied, got {tracking_uri!r}")
    target = root / "mlflow.db"
    source = sqlite3.connect(tracking_uri.removeprefix("sqlite:///"))
    try:
        copy = sqlite3.connect(target)
        try:
            source.backup(copy)  # consistent even while another process reads the store
        finally:
            copy.close()
    finally:
        source.close()
    return f"sqlite:///{target}"


def register_new_version(tracking_uri: str, name: str, *, like: str = "champion", alias: str = "challenger") -> str:
    """Registers the model of version ``@like`` again as a new version with ``alias``; returns its number."""
    client = MlflowClient(tracking_uri=tracking_uri)
    current = client.get_model_version_by_alias(name, like)
    # The artifacts' own location: a ``models:/m-...`` source would be looked up in the global tracking store.
    source = client.get_model_version_download_uri(name, current.version)
    made = client.create_model_version(
        name, source, run_id=current.run_id, tags={"run_id": current.run_id or "", "promotion": "test"}
    )
    client.set_registered_model_alias(name, alias, made.version)
    return str(made.version)


def move_alias(tracking_uri: str, name: str, version: str, alias: str = "champion") -> None:
    """Points ``alias`` of model ``name`` at ``version`` (what a promotion does)."""
    MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(name, alias, version)
