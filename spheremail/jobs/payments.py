"""Daily job: charge saved cards for due pending invoices (when the operator switched it on)."""
from spheremail.jobs import Job, JobContext, daily_slot, register


def _run(ctx: JobContext) -> str:
    from spheremail.models.base import utcnow
    from spheremail.services.payments import collect_due_invoices

    return str(collect_due_invoices(utcnow().date(), renew=ctx.renew))


register(Job(
    name="collect-due-invoices",
    description="Charge saved cards for pending invoices that are due (setting: charge saved cards automatically)",
    current_slot=daily_slot,
    run=_run,
))
