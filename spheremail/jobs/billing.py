"""Monthly job: the bill run for the month that starts (slot "YYYY-MM", due from the 1st).

Staff (the "Run the bill run" button) and the CLI (``billing run``) run it by hand through
:func:`run_by_hand`, under the same lease as the job, so a run by hand and the scheduled run
never work at the same time.
"""
from __future__ import annotations

import datetime as dt

from spheremail.extensions import db
from spheremail.jobs import Job, JobContext, held_lease, monthly_slot, register


class BillRunInProgress(Exception):
    """Another bill run (the monthly job or someone else's run by hand) holds the lease."""

    def __init__(self) -> None:
        super().__init__("A bill run is already in progress. Try again in a few minutes.")


def _run(ctx: JobContext) -> str:
    from spheremail.services.billing import run_bill_run

    # Renew the lease after each committed batch so a long run keeps it.
    return run_bill_run(ctx.slot_key, on_batch=ctx.renew).summary()


def previous_month_slot(now: dt.datetime) -> list[str]:
    """Last month's slot: a bill run that failed or was missed in its month is caught up once.

    Only one month back, not the whole history (see :func:`spheremail.jobs.tick`).
    """
    return [monthly_slot(now.replace(day=1) - dt.timedelta(days=1))]


bill_run_job = register(Job(
    name="monthly-bill-run",
    description="Create this month's invoices: plan, paid recipients and unbilled one-off fees",
    current_slot=monthly_slot,
    run=_run,
    lease_seconds=600,
    catch_up_slots=previous_month_slot,
))


def run_by_hand(period: str, *, actor=None):
    """Run the bill run for ``period`` ("YYYY-MM") now, holding the job's lease; audited "bill_run".

    Idempotent like the job: customers who already have an invoice for the period get nothing
    new. Raises BillingError for a malformed period (before taking the lease) and
    BillRunInProgress when the lease is held elsewhere. Returns the BillRunResult. Commits.
    """
    from spheremail.services import audit
    from spheremail.services.billing import parse_period, run_bill_run

    period_key = parse_period(period).strftime("%Y-%m")
    with held_lease(bill_run_job) as ctx:
        if ctx is None:
            raise BillRunInProgress()
        result = run_bill_run(period_key, on_batch=ctx.renew)
        audit.record("bill_run", f"bill run {period_key} by hand: {result.created} invoice(s) created, "
                     f"{result.already_billed} already billed, {result.nothing_to_bill} with nothing to bill",
                     actor=actor)
        db.session.commit()
    return result
