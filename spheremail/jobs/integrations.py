"""Integration jobs: the invoice export on days 5, 10, 15, 20, 25 and 30, and a daily
member sync that retries what failed (sign-ups made while the other system was down).
"""
from __future__ import annotations

import calendar
import datetime as dt

from spheremail.jobs import Job, JobContext, StopEarly, daily_slot, register

EXPORT_DAYS = (5, 10, 15, 20, 25, 30)


def slot_days(year: int, month: int) -> list[int]:
    """The export days of a month; February's last day stands in for the 30th."""
    last = calendar.monthrange(year, month)[1]
    return [min(day, last) for day in EXPORT_DAYS]


def current_slot(now: dt.datetime) -> str | None:
    """The latest export slot due at ``now`` (ISO date): this month's latest passed day,
    else the previous month's last slot. A slot missed while down is thus run once."""
    today = now.date()
    due = [d for d in slot_days(today.year, today.month) if d <= today.day]
    if due:
        return dt.date(today.year, today.month, due[-1]).isoformat()
    previous = today.replace(day=1) - dt.timedelta(days=1)
    return dt.date(previous.year, previous.month, slot_days(previous.year, previous.month)[-1]).isoformat()


def _export(ctx: JobContext) -> str:
    from spheremail.models import IntegrationConnection
    from spheremail.services.invoice_export import ExportStopped, export_pending

    conn = IntegrationConnection.active()
    if conn is None or not conn.exports_invoices:
        return "no connected integration exports invoices"
    slot_date = dt.date.fromisoformat(ctx.slot_key) if ctx.slot_key[:1].isdigit() else None
    if slot_date is not None and slot_date < conn.enabled_at.date():
        # A slot from before the integration existed is not a missed slot of it.
        return f"slot {ctx.slot_key} precedes the integration (enabled {conn.enabled_at:%Y-%m-%d})"
    try:
        # Renew the lease between invoices: a long export (60 writes/min on Nexudus) must
        # not let a second process start the same slot and double the write rate.
        result = export_pending(conn.provider, heartbeat=ctx.renew)
    except ExportStopped as exc:
        raise StopEarly(str(exc)) from None
    return f"{conn.provider}: {result.summary()}"


invoice_export_job = register(Job(
    name="invoice-export",
    description="Export pending invoices of connected customers (days 5, 10, 15, 20, 25, 30)",
    current_slot=current_slot,
    run=_export,
    lease_seconds=600,
))


def _member_sync(ctx: JobContext) -> str:
    from spheremail.models import IntegrationConnection
    from spheremail.services.member_sync import start_sync

    conn = IntegrationConnection.active()
    if conn is None:
        return "no connected integration"
    run = start_sync(conn.provider, background=False, heartbeat=ctx.renew)
    if run.status == "failed":
        raise StopEarly(run.summary())
    return f"{conn.provider}: {run.summary()}"


register(Job(
    name="member-sync",
    description="Connect active customers to their members (retries failed sign-ups)",
    current_slot=daily_slot,
    run=_member_sync,
    lease_seconds=1800,
))
