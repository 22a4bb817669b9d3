"""SphereMail: a self-hosted virtual mailbox platform for coworking operators."""
from __future__ import annotations

import logging
import os

from flask import Flask, render_template, request
from flask_wtf.csrf import CSRFError

from spheremail.config import load_config
from spheremail.extensions import csrf, db, htmx, login_manager, migrate


def create_app(config: dict | None = None) -> Flask:
    """Build the app: config from the environment, then ``config`` on top (tests)."""
    app = Flask(__name__, instance_relative_config=True)
    try:
        from dotenv import load_dotenv

        load_dotenv(os.path.join(os.getcwd(), ".env"))
    except ImportError:  # pragma: no cover - python-dotenv is a dependency
        pass
    app.config.update(load_config(app.instance_path))
    if config:
        app.config.update(config)
    logging.basicConfig(level=logging.INFO)

    register_extensions(app)
    register_request_guards(app)
    register_blueprints(app)
    register_errorhandlers(app)
    register_template_helpers(app)
    register_cli(app)
    register_jobs(app)
    return app


def register_extensions(app: Flask) -> None:
    """Bind the extensions and the SQLite pragmas."""
    from spheremail import models  # noqa: F401 - tables must be known to the metadata
    from spheremail.db_setup import install_sqlite_pragmas

    db.init_app(app)
    migrate.init_app(app, db, render_as_batch=True, compare_type=True, directory=os.path.join(os.path.dirname(app.root_path), "migrations"))
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = None
    csrf.init_app(app)
    # Not the module-level name: importing the helper module spheremail.htmx rebinds
    # ``spheremail.htmx`` to that module, so the next create_app would call the wrong object.
    from spheremail.extensions import htmx as htmx_extension

    htmx_extension.init_app(app)
    with app.app_context():
        install_sqlite_pragmas(db.engine)

    @login_manager.user_loader
    def load_user(user_id: str):
        from spheremail.models import User

        user = db.session.get(User, int(user_id))
        # A switched-off account loses its open sessions at once, not at its next login.
        return user if user is not None and user.is_enabled else None


# Every blueprint module of the app, registered when present. A newcomer finds a
# feature by its folder: spheremail/blueprints/<name>.py and templates/<name>/.
BLUEPRINT_MODULES = (
    "auth", "staff", "customers", "recipients", "portal", "billing", "integrations", "mail", "payments",
)


def register_blueprints(app: Flask) -> None:
    """Register each blueprint module's ``bp`` and apply deny-by-default access."""
    import importlib

    from spheremail.security import enforce_access

    for name in BLUEPRINT_MODULES:
        module_name = f"spheremail.blueprints.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # not built yet
            raise
        app.register_blueprint(module.bp)
    app.before_request(enforce_access)


# Ids in URLs fit the database's integer columns; a larger one is simply not found (404)
# instead of overflowing the database driver.
MAX_ID = 2**31 - 1


def register_request_guards(app: Flask) -> None:
    """Refuse input no page could store: oversized ids in URLs and NUL characters in forms."""
    from werkzeug.routing import IntegerConverter

    class BoundedIntConverter(IntegerConverter):
        def __init__(self, url_map, *args, **kwargs):
            kwargs.setdefault("max", MAX_ID)
            super().__init__(url_map, *args, **kwargs)

    # Must be set before blueprints add their rules: rules pick their converter when added.
    app.url_map.converters["int"] = BoundedIntConverter

    @app.before_request
    def refuse_nul_in_forms():
        # PostgreSQL cannot store NUL in text, so no form may carry one. Other control
        # characters are left to each form's own validation, which names the field.
        for key, values in request.form.lists():
            if "\x00" in key or any("\x00" in v for v in values):
                from flask import abort

                abort(400, description="control characters")
        return None


def register_errorhandlers(app: Flask) -> None:
    """Friendly pages for client errors; a 500 page that leaks nothing."""

    def _render(code: int, title: str, message: str):
        if request.headers.get("HX-Request"):
            return render_template("errors/partial.html", code=code, title=title, message=message), code
        return render_template("errors/error.html", code=code, title=title, message=message), code

    @app.errorhandler(CSRFError)
    def csrf_error(exc):
        return _render(400, "Form expired", "The form was missing its security token or it did not "
                       "match. Reload the page and try again.")

    @app.errorhandler(400)
    def bad_request(exc):
        if getattr(exc, "description", None) == "control characters":
            return _render(400, "Characters that cannot be saved",
                           "What you typed contains invisible control characters. Remove them "
                           "(retype the text rather than pasting it) and try again. Nothing was saved.")
        return _render(400, "Bad request", "The request could not be understood.")

    # Client errors: one title and one sentence each, as a page or an HTMX fragment.
    messages = {
        401: ("Please log in", "Your session has ended. Log in again to continue."),
        403: ("Not allowed", "Your account does not have access to this page."),
        404: ("Not found", "There is nothing at this address."),
        405: ("Not allowed", "This action cannot be done this way."),
    }
    for code, (title, message) in messages.items():
        app.register_error_handler(code, lambda exc, c=code, t=title, m=message: _render(c, t, m))

    @app.errorhandler(500)
    def server_error(exc):
        db.session.rollback()
        return _render(500, "Something went wrong", "The error was logged. Please try again.")


def register_template_helpers(app: Flask) -> None:
    """Names every template can use: can(), Capability, acting_as_customer(), money()."""
    from spheremail.security import Capability, acting_as_customer, can

    staff_nav = [
        ("customers.index", "Customers", Capability.VIEW_CUSTOMERS),
        ("mail.index", "Mail", Capability.HANDLE_MAIL),
        ("billing.overview", "Billing", Capability.BILLING),
        ("integrations.systems", "Business Settings", Capability.INTEGRATIONS),
        ("staff.settings", "Settings", Capability.MANAGE_CUSTOMERS),
        ("staff.audit_log", "Audit log", Capability.VIEW_AUDIT),
    ]

    # The staff links depend only on the role and on where the app is mounted, so they are
    # built (six can() checks and url_for calls) once per role, not on every page.
    nav_links: dict[tuple, list[tuple[str, str, str]]] = {}

    def staff_links() -> list[tuple[str, str, str]]:
        """(url, label, blueprint) of the staff nav links the current user may see."""
        from flask import url_for
        from flask_login import current_user

        key = (getattr(current_user, "role", None), request.script_root)
        links = nav_links.get(key)
        if links is None:
            links = [(url_for(endpoint), label, endpoint.split(".")[0])
                     for endpoint, label, capability in staff_nav
                     if can(current_user, capability) and endpoint in app.view_functions]
            nav_links[key] = links
        return links

    @app.context_processor
    def inject():
        return {
            "can": can,
            "Capability": Capability,
            "acting_as_customer": acting_as_customer,
            "staff_nav": staff_nav,
            "staff_links": staff_links,
            "url_endpoints": app.view_functions,
        }


def register_cli(app: Flask) -> None:
    """flask --app app create-user | seed-demo | jobs ... (and more from feature modules)."""
    from spheremail.cli import register_commands

    register_commands(app)


def register_jobs(app: Flask) -> None:
    """Start the ticking scheduler in a serving process only (never in tests or CLI commands)."""
    from spheremail.jobs import load_jobs

    with app.app_context():
        load_jobs()
    if not app.config.get("SCHEDULER_ENABLED") or app.testing:
        return
    import click

    ctx = click.get_current_context(silent=True)
    # Under the flask CLI only `flask run` serves; `db upgrade`, `jobs run`... must not tick.
    if ctx is not None and ctx.info_name != "run":
        return
    from spheremail.jobs.scheduler import start_scheduler

    start_scheduler(app)
