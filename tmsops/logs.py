"""Structured logs: one JSON object a line, with the fields a record carries in ``extra={"fields": {...}}``."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

ROOT_LOGGER = "tmsops"


class JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    """Send the ``tmsops`` loggers to stderr as JSON lines at ``level``; calling it again only changes the level."""
    logger = logging.getLogger(ROOT_LOGGER)
    logger.setLevel(level)
    if not any(isinstance(handler.formatter, JsonLogFormatter) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonLogFormatter())
        logger.addHandler(handler)
