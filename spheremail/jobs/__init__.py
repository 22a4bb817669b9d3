"""Periodic jobs that run exactly once per due slot, however many processes tick.

APScheduler only *ticks* (see :mod:`spheremail.jobs.scheduler`). What makes a run
happen once is the database: a lease row per job (a conditional UPDATE decides who
holds it) and a :class:`~spheremail.models.JobSlot` row per due slot (unique on
job + slot), so a restart, a misfire or a second scheduler never repeats a slot,
and a slot missed while the server was down is caught up once.

A job module registers itself with :func:`register`; :data:`REGISTRY` is keyed by
stable names used by the CLI (``flask --app app jobs run NAME``).
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from spheremail.extensions import db
from spheremail.models import JobLease, JobSlot
from spheremail.models.base import utcnow

log = logging.getLogger(__name__)

# Unique per process (and per app instance in tests), used as the lease owner.
PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}"


class StopEarly(Exception):
    """Raised by a job that must stop and resume at a later tick (e.g. rate limited).

    The slot is kept as ``partial`` and run again on the next tick.
    """


@dataclass
class JobContext:
    """What a running job gets: its slot and a way to keep its lease alive."""

    job: "Job"
    slot_key: str
    owner: str

    def renew(self) -> bool:
        """Extend the lease; call it between batches of long work. False if the lease was lost."""
        return _acquire_lease(self.job.name, self.owner, self.job.lease_seconds)


@dataclass
class Job:
    """A periodic job.

    ``current_slot(now)`` returns the key of the most recent slot that is due at
    ``now`` (e.g. ``"2026-11-10"``), or None when nothing is due yet. ``run(ctx)``
    does the work for ``ctx.slot_key`` and returns a short summary; it must be safe
    to resume after a crash (the slot is re-run if its owner died).
    """

    name: str
    description: str
    current_slot: Callable[[dt.datetime], str | None]
    run: Callable[[JobContext], str]
    lease_seconds: int = 300
    # Earlier slots that must be done too (e.g. last month's bill run when this month's has
    # come): tick runs those not done, oldest first, before the current slot. None: no catch-up.
    catch_up_slots: Callable[[dt.datetime], list[str]] | None = None


REGISTRY: dict[str, Job] = {}


def register(job: Job) -> Job:
    """Add ``job`` to the registry under its stable name."""
    REGISTRY[job.name] = job
    return job


def daily_slot(now: dt.datetime) -> str:
    """Slot key for jobs that run once a day."""
    return now.date().isoformat()


def monthly_slot(now: dt.datetime) -> str:
    """Slot key for jobs that run once a month, on or after the 1st."""
    return now.strftime("%Y-%m")


def _ensure_lease_row(name: str) -> None:
    if db.session.get(JobLease, name) is None:
        try:
            with db.session.begin_nested():
                db.session.add(JobLease(name=name, owner=None, expires_at=dt.datetime(1970, 1, 1)))
        except IntegrityError:
            pass  # another process inserted it first
        db.session.commit()


def _acquire_lease(name: str, owner: str, seconds: int) -> bool:
    """Take or renew the lease: rowcount 1 means we hold it until now + seconds."""
    now = utcnow()
    result = db.session.execute(
        update(JobLease)
        .where(JobLease.name == name)
        .where((JobLease.expires_at < now) | (JobLease.owner == owner))
        .values(owner=owner, expires_at=now + dt.timedelta(seconds=seconds))
    )
    db.session.commit()
    return result.rowcount == 1


def _release_lease(name: str, owner: str) -> None:
    db.session.execute(
        update(JobLease)
        .where(JobLease.name == name, JobLease.owner == owner)
        .values(owner=None, expires_at=dt.datetime(1970, 1, 1))
    )
    db.session.commit()


def _claim_slot(job: Job, slot_key: str, owner: str) -> JobSlot | None:
    """The slot row to run, or None when it is done. Caller holds the lease."""
    slot = db.session.execute(
        db.select(JobSlot).filter_by(job_name=job.name, slot_key=slot_key)
    ).scalar_one_or_none()
    if slot is None:
        slot = JobSlot(job_name=job.name, slot_key=slot_key, status="running", owner=owner)
        db.session.add(slot)
        try:
            db.session.commit()
        except IntegrityError:
            db.session.rollback()
            return None  # someone else claimed it between our read and insert
        return slot
    if slot.status == "done":
        return None
    # "running" from an owner whose lease expired (it died) or "partial"/"failed": resume.
    slot.status = "running"
    slot.owner = owner
    db.session.commit()
    return slot


def run_job(job: Job, slot_key: str, owner: str | None = None) -> str | None:
    """Run ``job`` for ``slot_key`` if no one holds its lease and the slot is not done.

    Returns the job's summary, or None when it did not run (lease held elsewhere or
    slot already done).
    """
    owner = owner or f"{PROCESS_ID}:{uuid.uuid4().hex[:8]}"
    _ensure_lease_row(job.name)
    if not _acquire_lease(job.name, owner, job.lease_seconds):
        return None
    try:
        slot = _claim_slot(job, slot_key, owner)
        if slot is None:
            return None
        slot_id = slot.id
        try:
            summary = job.run(JobContext(job=job, slot_key=slot_key, owner=owner))
            status = "done"
        except StopEarly as exc:
            db.session.rollback()
            summary, status = f"stopped early, resumes next tick: {exc}", "partial"
        except Exception as exc:  # noqa: BLE001 - a job's failure must not kill the scheduler
            db.session.rollback()
            log.exception("job %s slot %s failed", job.name, slot_key)
            summary, status = f"failed: {exc.__class__.__name__}: {exc}", "failed"
        slot = db.session.get(JobSlot, slot_id)
        slot.status = status
        slot.result = (summary or "")[:2000]
        slot.finished_at = utcnow()
        db.session.commit()
        return summary
    finally:
        _release_lease(job.name, owner)


@contextmanager
def held_lease(job: Job, owner: str | None = None) -> Iterator[JobContext | None]:
    """Hold ``job``'s lease for the same work done by hand (a staff button, a CLI command).

    Yields a :class:`JobContext` (``slot_key`` "by-hand"; call ``renew`` between batches), or
    None when another process holds the lease, so the caller reports "already in progress"
    instead of running alongside the scheduled run. The job's slots are not touched: a run
    by hand does not stand in for the scheduled one.
    """
    owner = owner or f"{PROCESS_ID}:{uuid.uuid4().hex[:8]}"
    _ensure_lease_row(job.name)
    if not _acquire_lease(job.name, owner, job.lease_seconds):
        yield None
        return
    try:
        yield JobContext(job=job, slot_key="by-hand", owner=owner)
    finally:
        db.session.rollback()  # whatever the work left open must not hold the release back
        _release_lease(job.name, owner)


def _needs_catch_up(job: Job, slot_key: str) -> bool:
    """True when an earlier slot must still run: its row is not done (it failed, stopped early or
    its owner died), or it has no row although the job ran an earlier slot (the server was down).

    A job with no earlier slot at all was not in service then (a fresh install): nothing to catch
    up. Slot keys are ISO dates ("2026-11", "2026-11-10"), so string order is time order.
    """
    status = db.session.execute(
        db.select(JobSlot.status).filter_by(job_name=job.name, slot_key=slot_key)
    ).scalar_one_or_none()
    earlier = None
    if status is None:
        earlier = db.session.execute(
            db.select(JobSlot.id).where(JobSlot.job_name == job.name, JobSlot.slot_key < slot_key).limit(1)
        ).scalar_one_or_none()
    db.session.commit()  # end the read: run_job starts its own transactions
    return status != "done" if status is not None else earlier is not None


def tick(now: dt.datetime | None = None) -> dict[str, str | None]:
    """Run every registered job whose current slot is due and not done. Returns summaries.

    A job's missed earlier slots (``catch_up_slots``) run first, oldest first, through the same
    :func:`run_job` (lease + slot row: once); their summaries are under "NAME SLOT".
    """
    now = now or utcnow()
    results: dict[str, str | None] = {}
    for job in list(REGISTRY.values()):
        slot_key = job.current_slot(now)
        if slot_key is None:
            continue
        try:
            for earlier in sorted(job.catch_up_slots(now) if job.catch_up_slots else []):
                if earlier != slot_key and _needs_catch_up(job, earlier):
                    results[f"{job.name} {earlier}"] = run_job(job, earlier)
            results[job.name] = run_job(job, slot_key)
        except Exception:  # noqa: BLE001 - one broken job must not stop the others
            db.session.rollback()
            log.exception("tick of job %s failed", job.name)
            results[job.name] = "error"
    return results


def load_jobs() -> dict[str, Job]:
    """Import every job module so it registers itself; returns the registry."""
    from spheremail.jobs import cancellations  # noqa: F401

    for optional in ("spheremail.jobs.billing", "spheremail.jobs.integrations", "spheremail.jobs.payments"):
        try:
            __import__(optional)
        except ModuleNotFoundError as exc:
            if exc.name != optional:
                raise
    return REGISTRY
