"""Monthly job: the bill run for the month that starts (slot "YYYY-MM", due from the 1st)."""
from spheremail.jobs import Job, JobContext, monthly_slot, register


def _run(ctx: JobContext) -> str:
    from spheremail.services.billing import run_bill_run

    # Renew the lease after each committed batch so a long run keeps it.
    return run_bill_run(ctx.slot_key, on_batch=ctx.renew).summary()


register(Job(
    name="monthly-bill-run",
    description="Create this month's invoices: plan, paid recipients and unbilled one-off fees",
    current_slot=monthly_slot,
    run=_run,
    lease_seconds=600,
))
