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
    from spheremail.jobs.billing import BillRunInProgress, run_by_hand
    from spheremail.models.base import today
    from spheremail.services.billing import BillingError

    period = period or today().strftime("%Y-%m")
    try:
        # The same path as the staff button: under the monthly job's lease, audited.
        result = run_by_hand(period)
    except BillingError as exc:
        raise click.BadParameter(str(exc), param_hint="--period") from exc
    except BillRunInProgress as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(result.summary())


def register(app: Flask) -> None:
    """Attach the billing command group to ``app``."""
    app.cli.add_command(billing_cli)
