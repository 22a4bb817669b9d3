"""Daily job: charge saved cards for due pending invoices (when the operator switched it on)."""
from spheremail.jobs import Job, JobContext, StopEarly, daily_slot, register


def _run(ctx: JobContext) -> str:
    from spheremail.models.base import utcnow
    from spheremail.services.payments import CollectionResult, collect_due_invoices

    result = collect_due_invoices(utcnow().date(), renew=ctx.renew)
    if isinstance(result, CollectionResult) and result.unreachable:
        # Stripe did not answer some charges: retry them at the next tick (same idempotency key,
        # so Stripe replays) rather than tomorrow, when Stripe may have forgotten the key.
        raise StopEarly(str(result))
    return str(result)


register(Job(
    name="collect-due-invoices",
    description="Charge saved cards for pending invoices that are due (setting: charge saved cards automatically)",
    current_slot=daily_slot,
    run=_run,
))
