"""Small helpers shared by the models."""
from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    """Naive UTC now: every timestamp in the database is naive UTC (same on SQLite and PostgreSQL)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def today() -> dt.date:
    """Today's date in UTC, the calendar the jobs use."""
    return utcnow().date()
