"""``flask --app app integrations sync|export <provider>``: run the work by hand."""
from __future__ import annotations

import click
from flask import Flask
from flask.cli import AppGroup

from spheremail.integrations.registry import PROVIDERS

integrations_cli = AppGroup("integrations", help="OfficeRnD / Nexudus: sync members, export invoices.")
_provider_arg = click.argument("provider", type=click.Choice(sorted(PROVIDERS)))


def register(app: Flask) -> None:
    """Add the ``integrations`` command group to ``app``."""
    app.cli.add_command(integrations_cli)


@integrations_cli.command("sync")
@_provider_arg
def sync_command(provider: str) -> None:
    """Auto-connect every active customer now (in this process) and print the summary."""
    from spheremail.services.member_sync import SyncError, start_sync

    try:
        run = start_sync(provider, background=False)
    except SyncError as exc:
        raise click.ClickException(str(exc)) from exc
    for error in run.errors():
        click.echo(f"  failed: {error['name']} (customer {error['customer_id']}): {error['reason']}")
    click.echo(f"{provider} sync {run.status}: {run.summary()}")
    if run.status != "done":
        raise SystemExit(1)


@integrations_cli.command("export")
@_provider_arg
@click.option("--now", "now_flag", is_flag=True, help="Export regardless of the day.")
def export_command(provider: str, now_flag: bool) -> None:
    """Export pending invoices: the due slot (once), or right away with --now.

    Both go through the job lease, so this never runs alongside the scheduler's export.
    """
    from spheremail.jobs import run_job
    from spheremail.jobs.integrations import invoice_export_job
    from spheremail.models import IntegrationConnection
    from spheremail.models.base import utcnow

    conn = IntegrationConnection.active()
    if conn is None or conn.provider != provider:
        raise click.ClickException(f"{PROVIDERS[provider].label} is not the connected integration.")
    now = utcnow()
    slot = f"manual-{now:%Y%m%dT%H%M%S}" if now_flag else invoice_export_job.current_slot(now)
    summary = run_job(invoice_export_job, slot)
    if summary is None:
        click.echo(f"export {slot}: not run (already done, or running elsewhere)")
    else:
        click.echo(f"export {slot}: {summary}")
