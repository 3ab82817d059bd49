"""Error types that say whether a retry can help.

Every error raised on purpose by tmsops derives from :class:`TmsopsError`.
A :class:`TemporaryError` may succeed when retried after ``retry_after`` seconds
(a server that is down, a timeout); a :class:`PermanentError` will fail the same
way every time until its input changes (bad data, a missing file, a bad request).
"""

from __future__ import annotations


class TmsopsError(Exception):
    """Base of every error tmsops raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str, *, details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class PermanentError(TmsopsError):
    """Retrying will not help: the input, the configuration or the request is wrong."""


class TemporaryError(TmsopsError):
    """Retrying after ``retry_after`` seconds may help."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float = 1.0, details: dict[str, object] | None = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class DataError(PermanentError):
    """Input data that cannot be used; the message names the file and the problem."""

    def __init__(self, source: str, problem: str, *, details: dict[str, object] | None = None) -> None:
        super().__init__(f"{source}: {problem}", details=details)
        self.source = source
        self.problem = problem
