"""Rows that make scheduled jobs run exactly once across processes (see spheremail/jobs)."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from spheremail.extensions import db
from spheremail.models.base import utcnow


class JobLease(db.Model):
    """Who may run a job right now. Taken with a conditional UPDATE; expires if its owner dies."""

    __tablename__ = "job_leases"

    name: Mapped[str] = mapped_column(String(80), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(120))
    expires_at: Mapped[dt.datetime] = mapped_column(default=dt.datetime(1970, 1, 1))


class JobSlot(db.Model):
    """One due slot of a job (e.g. the export of 2026-11-10), recorded so it is done once."""

    __tablename__ = "job_slots"
    __table_args__ = (UniqueConstraint("job_name", "slot_key", name="uq_job_slots_job_slot"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_name: Mapped[str] = mapped_column(String(80))
    slot_key: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), default="running")  # running|done|failed|partial
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]
    owner: Mapped[str | None] = mapped_column(String(120))
    result: Mapped[str | None] = mapped_column(Text)
