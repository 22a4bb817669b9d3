"""Database connection settings that must hold on every connection."""
from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.engine import Engine


def install_sqlite_pragmas(engine: Engine) -> None:
    """On SQLite: WAL so readers never block the writer, a busy timeout so two processes
    wait for each other instead of failing with "database is locked", and foreign keys
    (SQLite ignores them unless asked). PostgreSQL needs none of this."""
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
