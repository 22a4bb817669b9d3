"""Daily job: scheduled deactivations take effect on their day."""
from spheremail.jobs import Job, JobContext, daily_slot, register


def _run(ctx: JobContext) -> str:
    from spheremail.models.base import utcnow
    from spheremail.services.customers import apply_due_deactivations

    done = apply_due_deactivations(utcnow().date())
    return f"{len(done)} customer(s) deactivated"


register(Job(
    name="apply-cancellations",
    description="Deactivate customers whose scheduled cancellation date has come",
    current_slot=daily_slot,
    run=_run,
))
