"""Connections to the state store: SQLite in the state directory by default, any SQLAlchemy URL in production."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

SQLITE_BUSY_TIMEOUT_S = 30


def make_engine(url: str) -> Engine:
    """An engine on ``url``; for a SQLite file, its directory is created and the journal is write-ahead."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S})
    event.listen(engine, "connect", _use_write_ahead_log)
    return engine


def _use_write_ahead_log(connection: Any, _record: object) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()
