"""``flask --app app billing run [--period YYYY-MM]``: the bill run by hand (idempotent)."""
from __future__ import annotations

import click
from flask import Flask
from flask.cli import AppGroup

billing_cli = AppGroup("billing", help="Billing: run the monthly bill run by hand.")


@billing_cli.command("run")
@click.option("--period", default=None, metavar="YYYY-MM", help="Month to bill (default: the current month).")
def billing_run(period: str | None) -> None:
    """Create the invoices of PERIOD; running it again creates nothing new."""
    from spheremail.models.base import today
    from spheremail.services.billing import BillingError, run_bill_run

    period = period or today().strftime("%Y-%m")
    try:
        result = run_bill_run(period)
    except BillingError as exc:
        raise click.BadParameter(str(exc), param_hint="--period") from exc
    click.echo(result.summary())


def register(app: Flask) -> None:
    """Attach the billing command group to ``app``."""
    app.cli.add_command(billing_cli)
