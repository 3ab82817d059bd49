"""The chaos service's errors; each carries the HTTP status it is answered with.

A safety refusal names the rule that refused (``details.rule``): ``emergencyStop``,
``maxExperimentDuration``, ``blastRadiusLimit``, ``allowList``, ``denyList``,
``oneExperimentPerService``, ``steadyState`` or ``runningReplicas``.
"""

from __future__ import annotations

from tmsops.errors import PermanentError


class InvalidExperiment(PermanentError):
    """A body that is not a valid experiment or injection; ``details.errors`` names every bad field."""

    http_status = 422


class UnsupportedMediaType(PermanentError):
    http_status = 415


class ExperimentNotFound(PermanentError):
    http_status = 404

    def __init__(self, experiment_id: str) -> None:
        super().__init__(f"unknown experiment {experiment_id!r}", details={"experiment": experiment_id})


class ExperimentConflict(PermanentError):
    """The experiment is not in a state that allows the request (start twice, stop one not running)."""

    http_status = 409


class JournalError(PermanentError):
    """A journal transition that the state machine does not allow (a bug, or a concurrent change)."""

    http_status = 409


class SafetyRefusal(PermanentError):
    """A safety rule refused to start; ``rule`` names it."""

    http_status = 422

    def __init__(self, rule: str, message: str, details: dict[str, object] | None = None) -> None:
        super().__init__(f"refused by safety rule {rule}: {message}", details={"rule": rule, **(details or {})})
        self.rule = rule


class TargetBusy(SafetyRefusal):
    http_status = 409


class EmergencyStopEngaged(SafetyRefusal):
    http_status = 409


class EmergencyStopDisabled(PermanentError):
    http_status = 409
