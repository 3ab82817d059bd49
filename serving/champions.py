"""The champion models, loaded from the MLflow registry and swapped when the alias moves.

A swap replaces one immutable :class:`Loaded` object; a request holds the object it
started with, so requests in flight finish on the model they began with.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from serving.settings import ServingSettings

log = logging.getLogger("tmsops.serving")


@dataclass(frozen=True)
class Loaded:
    name: str
    version: str
    model: Any  # the unwrapped pyfunc python model
    info: dict[str, Any] = field(default_factory=dict)


class Champions:
    def __init__(self, settings: ServingSettings, on_change: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.on_change = on_change
        self.forecaster: Loaded | None = None
        self.detector: Loaded | None = None
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        return self.forecaster is not None and self.detector is not None

    def refresh(self) -> dict[str, str]:
        """Load whichever champion changed version; returns name -> version now served."""
        with self._lock:
            try:
                self.forecaster = self._refreshed(self.settings.forecaster_name, self.forecaster, "forecast.")
                self.detector = self._refreshed(self.settings.detector_name, self.detector, "anomaly.")
                self.last_error = None
            except Exception as error:  # the registry or an artifact is unreachable: keep serving
                self.last_error = f"{type(error).__name__}: {error}"
                log.warning("could not refresh the champion models: %s", self.last_error)
                raise
            finally:
                self.on_change()  # whatever is loaded now, even after a partial failure
        return {item.name: item.version for item in (self.forecaster, self.detector) if item}

    def _refreshed(self, name: str, current: Loaded | None, metrics: str) -> Loaded:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=self.settings.tracking_uri)
        version = client.get_model_version_by_alias(name, self.settings.alias)
        if current is not None and current.version == str(version.version):
            return current
        mlflow.set_tracking_uri(self.settings.tracking_uri)
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}").unwrap_python_model()
        log.info("loaded %s version %s", name, version.version)
        return Loaded(name, str(version.version), model, _info(client, version, metrics))

    def start_polling(self) -> None:
        if self.settings.reload_interval_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll, name="champion-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _poll(self) -> None:
        while not self._stop.wait(self.settings.reload_interval_s):
            try:
                self.refresh()
            except Exception:  # logged in refresh; the next poll tries again
                continue


def _info(client: Any, version: Any, metrics: str) -> dict[str, Any]:
    """Aliases, training time and evaluation metrics (keys starting with ``metrics``) of a version."""
    aliases = client.get_registered_model(version.name).aliases
    info: dict[str, Any] = {
        "name": version.name,
        "version": str(version.version),
        "aliases": sorted(alias for alias, number in aliases.items() if str(number) == str(version.version)),
        "registered_at": datetime.fromtimestamp(version.creation_timestamp / 1000, UTC).isoformat(),
        "run_id": version.run_id,
        "tags": dict(version.tags or {}),
    }
    if version.run_id:
        run = client.get_run(version.run_id)
        info["trained_at"] = datetime.fromtimestamp(run.info.start_time / 1000, UTC).isoformat()
        info["metrics"] = {k: v for k, v in sorted(run.data.metrics.items()) if k.startswith(metrics)}
    return info
