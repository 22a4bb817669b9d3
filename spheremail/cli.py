"""Command-line tools: ``flask --app app <command>``."""
from __future__ import annotations

import click
from flask import Flask
from flask.cli import AppGroup

from spheremail.extensions import db


def register_commands(app: Flask) -> None:
    """Attach every command group to ``app``."""
    app.cli.add_command(create_user)
    app.cli.add_command(seed_demo)
    app.cli.add_command(jobs_cli)
    # Feature modules add their own groups (billing, integrations) when present.
    import importlib

    for module_name in ("spheremail.billing_cli", "spheremail.integrations.cli"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        module.register(app)


@click.command("create-user")
@click.option("--email", required=True)
@click.option("--role", type=click.Choice(["operator", "admin", "mail_admin"]), required=True)
@click.option("--password", default=None, help="Prompted for when omitted.")
def create_user(email: str, role: str, password: str | None) -> None:
    """Create a staff user (operator, admin or mail admin)."""
    from spheremail.services.accounts import AccountError, create_staff_user

    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        user = create_staff_user(email=email, role=role, password=password)
    except AccountError as exc:
        raise click.ClickException(str(exc)) from exc
    db.session.commit()
    click.echo(f"Created {user.role} {user.email}")


@click.command("seed-demo")
def seed_demo() -> None:
    """Create the demo operator and demo data (safe to run again) and print the login."""
    from spheremail.services.demo import seed_demo as _seed

    login = _seed()
    db.session.commit()
    click.echo("")
    click.echo("  Demo operator login")
    click.echo(f"    email:    {login['email']}")
    click.echo(f"    password: {login['password']}")
    click.echo("")


jobs_cli = AppGroup("jobs", help="List and run the scheduled jobs.")


@jobs_cli.command("list")
def jobs_list() -> None:
    """List registered jobs with their current slot and last result."""
    from spheremail.jobs import load_jobs
    from spheremail.models import JobSlot
    from spheremail.models.base import utcnow

    now = utcnow()
    for name, job in sorted(load_jobs().items()):
        last = db.session.execute(
            db.select(JobSlot).filter_by(job_name=name).order_by(JobSlot.id.desc()).limit(1)
        ).scalar_one_or_none()
        last_text = f"last {last.slot_key} {last.status}: {last.result or ''}" if last else "never run"
        click.echo(f"{name:28} due slot {job.current_slot(now) or '-':12} {last_text}")
        click.echo(f"{'':28} {job.description}")


@jobs_cli.command("run")
@click.argument("name")
@click.option("--slot", default=None, help="Slot key to run (default: the one due now).")
def jobs_run(name: str, slot: str | None) -> None:
    """Run job NAME for its due slot now (once: a done slot is not run again)."""
    from spheremail.jobs import load_jobs, run_job
    from spheremail.models.base import utcnow

    registry = load_jobs()
    if name not in registry:
        raise click.ClickException(f"no job named {name!r}; try: {', '.join(sorted(registry))}")
    job = registry[name]
    slot_key = slot or job.current_slot(utcnow())
    if slot_key is None:
        raise click.ClickException(f"{name} has no slot due now; pass --slot")
    summary = run_job(job, slot_key)
    if summary is None:
        click.echo(f"{name} {slot_key}: not run (already done, or running elsewhere)")
    else:
        click.echo(f"{name} {slot_key}: {summary}")
