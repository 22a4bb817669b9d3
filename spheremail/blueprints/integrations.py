"""Business Settings → Integrations → Systems: connect OfficeRnD / Nexudus, connect members,
export invoices; and the connection box on a customer's page. Thin views: the rules are in
``spheremail/services/member_sync.py`` and ``invoice_export.py``.

Popups are real routes: an HTMX request gets a ``<dialog>`` partial for ``#modal``; a
browser without JavaScript gets the same form on a full page.
"""
from __future__ import annotations

import json
import re

from flask import Blueprint, abort, redirect, request, url_for
from flask_login import current_user

from spheremail.extensions import db
from spheremail.htmx import hx_redirect, no_content, render, wants_partial
from spheremail.integrations.base import Member, MemoryTokenStore, ProviderError
from spheremail.integrations.registry import PROVIDERS, build_provider, spec_for
from spheremail.models import Customer, IntegrationConnection, InvoiceExport, SyncRun
from spheremail.models.base import utcnow
from spheremail.models.integrations import ConnectionState
from spheremail.security import Capability, allow, can
from spheremail.services import audit, hooks
from spheremail.services import invoice_export as exports
from spheremail.services import member_sync

bp = Blueprint("integrations", __name__, url_prefix="/business-settings/integrations")

# One clear headline per ProviderError kind; the client's message adds the detail.
ERROR_HEADLINES = {
    "auth": "{label} did not accept these credentials.",
    "scope": "The {label} application is missing a permission.",
    "two_factor": "This {label} user has two-factor sign-in.",
    "not_found": "{label} does not know this organization.",
    "unreachable": "{label} cannot be reached.",
    "rate_limited": "{label} asks us to slow down.",
    "invalid": "{label} refused the request.",
    "remote": "{label} is having a problem.",
    "unknown": "{label} did not answer in time.",
}
PLAN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _spec_or_404(provider: str):
    if provider not in PROVIDERS:
        abort(404)
    return spec_for(provider)


def _on_customer_created(customer=None, **_kw):
    if customer is not None:
        member_sync.connect_new_customer(customer)


hooks.subscribe("customer_created", _on_customer_created)


@bp.app_context_processor
def _helpers():
    def member_connection(customer):
        """(active connection or None, the customer's active link or None) for templates."""
        conn = IntegrationConnection.active()
        link = member_sync.link_for(customer.id, conn.provider) if conn else None
        return conn, link

    return {"member_connection": member_connection}


# ------------------------------------------------------------------------ the page
def _systems_context() -> dict:
    rows = {row.provider: row for row in db.session.execute(db.select(IntegrationConnection)).scalars()}
    cards = []
    for name, spec in PROVIDERS.items():
        conn = rows.get(name)
        cards.append({
            "spec": spec, "conn": conn,
            "run": member_sync.latest_run(name) if conn and conn.state != "disconnected" else None,
            "unknown": exports.unknown_exports(name) if conn else [],
            "failed": exports.failed_exports(name, limit=20) if conn else [],
            "new_customers": member_sync.new_customers(name, limit=10) if conn else [],
        })
    return {"cards": cards}


@bp.route("/")
@allow(Capability.INTEGRATIONS)
def index():
    return redirect(url_for(".systems"))


@bp.route("/systems")
@allow(Capability.INTEGRATIONS)
def systems():
    """The Systems tab: one card per coworking system."""
    return render("integrations/systems.html", "integrations/partials/systems_body.html", **_systems_context())


@bp.route("/marketplace")
@allow(Capability.INTEGRATIONS)
def marketplace():
    """The "+" dialog: the systems that can be connected."""
    connections = {row.provider: row for row in db.session.execute(db.select(IntegrationConnection)).scalars()}
    return _dialog("integrations/modals/marketplace.html", title="Marketplace", providers=PROVIDERS,
                   connections=connections)


def _dialog(template: str, *, title: str, **context):
    """A popup: the dialog partial for HTMX, a full page (dialog shown inline) otherwise."""
    if wants_partial():
        return render(template, template, full_page=False, **context)
    return render("integrations/dialog_page.html", None, dialog_template=template, full_page=True,
                  page_title=title, **context)


def _done(message: str | None = None):
    """After an action: back to the Systems page (HTMX redirect or 303)."""
    return hx_redirect(url_for(".systems"))


@bp.route("/<provider>/enabled", methods=["POST"])
@allow(Capability.INTEGRATIONS)
def set_enabled(provider):
    """The enable toggle. Turning it on while connected keeps the export window's start."""
    spec = _spec_or_404(provider)
    conn = IntegrationConnection.get_or_create(provider)
    enabled = request.form.get("enabled") in ("on", "1", "true", "yes")
    if enabled and not conn.enabled:
        other = IntegrationConnection.active_other_than(provider)
        if other is not None:
            # Only one system at a time: switching is a separate, confirmed step.
            db.session.rollback()
            return _switch_confirm(spec, other)
        conn.enabled = True
        if conn.is_connected:
            # Keep the first enabled_at: moving it forward would strand invoices made in
            # between (no longer exported, yet still refused for payment here while they
            # were billed elsewhere). Invoices made while switched off were payable here;
            # those still pending are exported now. A disconnect clears it (new window).
            conn.enabled_at = conn.enabled_at or utcnow()
    elif not enabled:
        conn.enabled = False
    audit.record("integration_toggled", f"{spec.label} {'enabled' if enabled else 'disabled'}", subject=conn)
    db.session.commit()
    if request.form.get("then") == "connect" and conn.enabled and not conn.is_connected:
        # From the Marketplace: switched on, now open the Connect popup.
        if wants_partial():
            return _connect_form(spec, conn)
        return redirect(url_for(".connect", provider=provider), code=303)
    return _done()


def _switch_confirm(spec, other):
    """The "Disconnect X and connect Y?" dialog, shown in #modal whatever asked for it."""
    if not wants_partial():
        return redirect(url_for(".switch", provider=spec.name), code=303)
    response = _dialog("integrations/modals/confirm_switch.html", title=f"Connect {spec.label}", spec=spec,
                       other=other, other_spec=spec_for(other.provider))
    response.headers["HX-Retarget"] = "#modal"
    response.headers["HX-Reswap"] = "innerHTML"
    return response


@bp.route("/<provider>/switch", methods=["GET", "POST"])
@allow(Capability.INTEGRATIONS)
def switch(provider):
    """Confirm (GET), then (POST) disconnect the other system, keeping its links as history,
    switch this one on and open its Connect popup."""
    spec = _spec_or_404(provider)
    other = IntegrationConnection.active_other_than(provider)
    if request.method == "GET":
        if other is None:
            return redirect(url_for(".connect", provider=provider), code=303)
        return _dialog("integrations/modals/confirm_switch.html", title=f"Connect {spec.label}", spec=spec,
                       other=other, other_spec=spec_for(other.provider))
    if other is not None:
        other_spec = spec_for(other.provider)
        ended = member_sync.disconnect_integration(other)
        other.enabled = False
        audit.record("integration_disconnected", f"{other_spec.label} disconnected to connect {spec.label}; "
                     f"{ended} member link(s) kept as history", subject=other)
    conn = IntegrationConnection.get_or_create(provider)
    if not conn.enabled:
        conn.enabled = True
        audit.record("integration_toggled", f"{spec.label} enabled", subject=conn)
    db.session.commit()
    if wants_partial():
        return _connect_form(spec, conn)
    return redirect(url_for(".connect", provider=provider), code=303)


def _systems_error(message: str):
    return render("integrations/systems.html", "integrations/partials/systems_body.html",
                  error=message, **_systems_context())


# ----------------------------------------------------------- Connect: credentials
@bp.route("/<provider>/connect", methods=["GET", "POST"])
@allow(Capability.INTEGRATIONS)
def connect(provider):
    """Popup step 1: the credentials, checked by fetching a token and the locations."""
    spec = _spec_or_404(provider)
    conn = IntegrationConnection.get(provider)
    values = {f.name: "" for f in spec.fields}
    if request.method == "GET":
        return _connect_form(spec, conn)

    errors: dict[str, str] = {}
    for f in spec.fields:
        raw = request.form.get(f.name, "")
        value = raw if f.secret else raw.strip()
        if not f.secret:
            values[f.name] = value[:f.max_length]
        if not value.strip():
            if f.required:
                errors[f.name] = f"Enter the {f.label}."
        elif len(value) > f.max_length:
            errors[f.name] = f"The {f.label} is at most {f.max_length} characters."
        elif f.pattern and not re.fullmatch(f.pattern, value.strip()):
            errors[f.name] = f"That does not look like a valid {f.label}."
        else:
            values[f.name] = value.strip() if not f.secret else value
    other = IntegrationConnection.active_other_than(provider)
    error = None
    if other is not None:
        error = (f"{spec_for(other.provider).label} is connected. Disconnect it first: only one system "
                 "can be connected at a time.")
    elif conn is None or not conn.enabled:
        error = f"Turn the {spec.label} integration on first."
    if errors or error:
        return _dialog(spec.credentials_template, title=f"Connect {spec.label}", spec=spec,
                       values=_public(spec, values), errors=errors, error=error)

    creds = {f.name: values[f.name] for f in spec.fields}
    store = MemoryTokenStore()
    client = build_provider(provider, creds, token_store=store)
    db.session.commit()  # no transaction open during the HTTP calls
    try:
        client.check_credentials()
        locations = client.locations()
    except ProviderError as exc:
        # Nothing is saved: the operator fixes the input and tries again.
        headline = (spec.error_headlines.get(exc.kind) or ERROR_HEADLINES.get(exc.kind, "{label} refused the "
                    "connection.")).format(label=spec.label)
        return _dialog(spec.credentials_template, title=f"Connect {spec.label}", spec=spec,
                       values=_public(spec, values), errors={}, error=headline, error_detail=exc.message,
                       error_kind=exc.kind)
    if not locations:
        return _dialog(spec.credentials_template, title=f"Connect {spec.label}", spec=spec,
                       values=_public(spec, values), errors={},
                       error=f"{spec.label} has no {spec.location_label} yet.",
                       error_detail=f"Create a {spec.location_label} in {spec.label} first, then connect.")
    conn = IntegrationConnection.get_or_create(provider)
    # With a rotating refresh token (Nexudus) the password is not kept: the encrypted
    # token is all later calls need.
    conn.set_credentials(spec.stored_credentials(creds, store.token))
    if store.token:
        from spheremail.crypto import encrypt

        conn.token_encrypted = encrypt(json.dumps(store.token))
    conn.account_label = spec.account_label(creds)[:200]
    conn.set_locations(locations)
    if not conn.is_connected:
        conn.state = ConnectionState.CONNECTING.value
    conn.last_error = None
    audit.record("integration_credentials_checked", f"{spec.label}: credentials checked for "
                 f"{conn.account_label}", subject=conn)
    db.session.commit()
    return _location_step(spec, conn, {}, None)


def _connect_form(spec, conn):
    """Step 1, empty (non-secret fields prefilled from a previous connection)."""
    other = IntegrationConnection.active_other_than(spec.name)
    if other is not None:
        return _switch_confirm(spec, other)
    if conn is None or not conn.enabled:
        return _dialog("integrations/modals/message.html", title="Connect", spec=spec,
                       message=f"Turn the {spec.label} integration on first.")
    values = {f.name: "" for f in spec.fields}
    if conn.credentials_encrypted:
        creds = conn.credentials()
        # Prefill what is not secret; secrets are never sent back to the browser.
        values.update({f.name: creds.get(f.name, "") for f in spec.fields if not f.secret})
    return _dialog(spec.credentials_template, title=f"Connect {spec.label}", spec=spec, values=values,
                   errors={}, error=None)


def _public(spec, values: dict) -> dict:
    secret = {f.name for f in spec.fields if f.secret}
    return {k: ("" if k in secret else v) for k, v in values.items()}


def _location_step(spec, conn, errors, form):
    form = form or {"location_id": conn.location_id or "", "invoice_export": conn.invoice_export,
                    "fee_plan_id": conn.fee_plan_id or ""}
    return _dialog(spec.location_template, title=f"Connect {spec.label}", spec=spec, conn=conn,
                   locations=conn.locations(), form=form, errors=errors)


@bp.route("/<provider>/connect/location", methods=["GET", "POST"])
@allow(Capability.INTEGRATIONS)
def connect_location(provider):
    """Popup step 2: the location, the invoice-export toggle and (OfficeRnD) the fee plan id."""
    spec = _spec_or_404(provider)
    conn = IntegrationConnection.get(provider)
    if conn is None or conn.state not in (ConnectionState.CONNECTING.value, ConnectionState.CONNECTED.value):
        return redirect(url_for(".connect", provider=provider), code=303)
    if request.method == "GET":
        return _location_step(spec, conn, {}, None)

    form = {"location_id": request.form.get("location_id", "").strip(),
            "invoice_export": request.form.get("invoice_export") in ("on", "1", "true", "yes"),
            "fee_plan_id": request.form.get("fee_plan_id", "").strip()}
    errors = {}
    locations = {loc["id"]: loc["name"] for loc in conn.locations()}
    if form["location_id"] not in locations:
        errors["location_id"] = f"Choose a {spec.location_label}."
    if spec.needs_fee_plan and form["invoice_export"]:
        if not form["fee_plan_id"]:
            errors["fee_plan_id"] = "Enter the fee plan id the fees are booked on."
        elif not PLAN_ID.fullmatch(form["fee_plan_id"]):
            errors["fee_plan_id"] = "The fee plan id is up to 64 letters, digits, '-' or '_'."
    elif form["fee_plan_id"] and not PLAN_ID.fullmatch(form["fee_plan_id"]):
        errors["fee_plan_id"] = "The fee plan id is up to 64 letters, digits, '-' or '_'."
    if not conn.enabled:
        errors["location_id"] = f"Turn the {spec.label} integration on first."
    if IntegrationConnection.active_other_than(provider) is not None:
        errors["location_id"] = "Another system is connected: disconnect it first."
    if errors:
        return _location_step(spec, conn, errors, form)

    now = utcnow()
    was_connected = conn.is_connected
    conn.location_id = form["location_id"]
    conn.location_name = locations[form["location_id"]][:200]
    conn.invoice_export = form["invoice_export"]
    conn.fee_plan_id = form["fee_plan_id"] or None
    conn.state = ConnectionState.CONNECTED.value
    if not was_connected:
        conn.connected_at = now
        # Invoices created before this are never exported. Reconnecting after an error
        # (e.g. an expired sign-in) keeps the window, so nothing made meanwhile is lost.
        conn.enabled_at = conn.enabled_at or now
    audit.record("integration_connected",
                 f"{spec.label} connected ({conn.account_label}; {spec.location_label} {conn.location_name}; "
                 f"invoice export {'on' if conn.invoice_export else 'off'})", subject=conn)
    db.session.commit()
    if not was_connected:
        member_sync.start_sync(provider, by=current_user)  # auto-connect, in the background
    return _done()


# ---------------------------------------------------------------------- disconnect
@bp.route("/<provider>/disconnect", methods=["GET", "POST"])
@allow(Capability.INTEGRATIONS)
def disconnect(provider):
    """Confirm (GET), then disconnect (POST): secrets forgotten, links kept as history."""
    spec = _spec_or_404(provider)
    conn = IntegrationConnection.get(provider)
    if conn is None or conn.state == ConnectionState.DISCONNECTED.value:
        return _done()
    if request.method == "GET":
        return _dialog("integrations/modals/confirm_disconnect.html", title=f"Disconnect {spec.label}",
                       spec=spec, conn=conn)
    ended = member_sync.disconnect_integration(conn)
    audit.record("integration_disconnected", f"{spec.label} disconnected; {ended} member link(s) "
                 "kept as history", subject=conn)
    db.session.commit()
    return _done()


# ------------------------------------------------------------------ connect members
@bp.route("/<provider>/sync", methods=["GET", "POST"])
@allow(Capability.INTEGRATIONS)
def sync(provider):
    """"Connect members": confirm (GET), then start a run (POST) and show its progress."""
    spec = _spec_or_404(provider)
    if request.method == "GET":
        return _dialog("integrations/modals/confirm_sync.html", title="Connect members", spec=spec)
    try:
        run = member_sync.start_sync(provider, by=current_user)
    except member_sync.SyncError as exc:
        return _dialog("integrations/modals/message.html", title="Connect members", spec=spec,
                       message=str(exc))
    audit.record("integration_sync_started", f"{spec.label}: connect members started (run {run.id})",
                 subject=run)
    db.session.commit()
    if wants_partial():
        response = render("integrations/partials/sync_progress.html", None, run=run, spec=spec)
        response.headers["HX-Trigger"] = "closeModal"
        if run.is_finished:
            # A run that already finished does not poll: refresh the page's cards now
            # (after the swap htmx fires this on <body>, the popup's form being gone).
            response.headers["HX-Trigger-After-Swap"] = "integrationsChanged"
        return response
    return redirect(url_for(".systems"), code=303)


@bp.route("/sync-runs/<int:run_id>")
@allow(Capability.INTEGRATIONS)
def sync_progress(run_id):
    """The progress box; it polls itself every second until the run finishes."""
    run = db.session.get(SyncRun, run_id) or abort(404)
    if run.provider not in PROVIDERS:
        abort(404)
    if run.status in ("pending", "running"):
        member_sync.current_run(run.provider)  # marks a run whose worker died as failed
    response = render("integrations/sync_progress_page.html", "integrations/partials/sync_progress.html",
                      run=run, spec=spec_for(run.provider))
    if run.is_finished and wants_partial():
        # The poll that sees the end: the Systems page reloads its cards, so "Last sync"
        # and the new customers the run created are shown, not the state from before it.
        response.headers["HX-Trigger"] = "integrationsChanged"
    return response


@bp.route("/<provider>/new-customers")
@allow(Capability.INTEGRATIONS)
def new_customers(provider):
    """Customers whose member we created in the other system, newest first."""
    spec = _spec_or_404(provider)
    from spheremail.request_args import page_arg

    page = page_arg()
    per_page = 50
    links = member_sync.new_customers(provider, limit=per_page + 1, offset=(page - 1) * per_page)
    return render("integrations/new_customers.html", "integrations/partials/new_customers_table.html",
                  spec=spec, links=links[:per_page], page_number=page, has_next=len(links) > per_page)


# ------------------------------------------------------------- unknown exports
@bp.route("/exports/<int:export_id>/created", methods=["POST"])
@allow(Capability.INTEGRATIONS)
def export_created(export_id):
    """"It was created over there": record its id and close the invoice (no second send)."""
    row = db.session.get(InvoiceExport, export_id) or abort(404)
    try:
        exports.resolve_created(row, request.form.get("remote_id", ""), by=current_user)
    except exports.ExportError as exc:
        db.session.rollback()
        return _systems_error(str(exc))
    audit.record("invoice_export_resolved", f"invoice {row.invoice.number}: confirmed created as "
                 f"{row.remote_id}", subject=row.invoice)
    db.session.commit()
    return _done()


@bp.route("/exports/<int:export_id>/not-created", methods=["POST"])
@allow(Capability.INTEGRATIONS)
def export_not_created(export_id):
    """"It was not created": release the invoice for the next export run."""
    row = db.session.get(InvoiceExport, export_id) or abort(404)
    try:
        exports.resolve_not_created(row, by=current_user)
    except exports.ExportError as exc:
        db.session.rollback()
        return _systems_error(str(exc))
    audit.record("invoice_export_resolved", f"invoice {row.invoice.number}: confirmed not created; "
                 "released for the next export", subject=row.invoice)
    db.session.commit()
    return _done()


# ---------------------------------------------------------------- customer page
def _customer_or_404(customer_id: int) -> Customer:
    return db.session.get(Customer, customer_id) or abort(404)


def _customer_box(customer, *, error=None, results=None, query=""):
    return render("integrations/customer_connection_page.html", "integrations/partials/customer_connection.html",
                  customer=customer, error=error, results=results, query=query)


@bp.route("/customers/<int:customer_id>/connection")
@allow(Capability.VIEW_CUSTOMERS)
def customer_connection(customer_id):
    """The connection box of a customer (status for every staff member; actions for Operators)."""
    return _customer_box(_customer_or_404(customer_id))


@bp.route("/customers/<int:customer_id>/members")
@allow(Capability.INTEGRATIONS)
def customer_member_search(customer_id):
    """Live search of the other system's members by name or email."""
    customer = _customer_or_404(customer_id)
    query = request.args.get("q", "").strip()[:100]
    conn = IntegrationConnection.active()
    results, error = [], None
    if conn is None:
        error = "No integration is connected."
    elif len(query) >= 2:
        try:
            results = member_sync.search_members(conn.provider, query)
        except (ProviderError, member_sync.SyncError) as exc:
            error = getattr(exc, "message", None) or str(exc)
    return render("integrations/customer_connection_page.html", "integrations/partials/member_results.html",
                  customer=customer, results=results, error=error, query=query)


@bp.route("/customers/<int:customer_id>/connect", methods=["POST"])
@allow(Capability.INTEGRATIONS)
def customer_connect(customer_id):
    """Connect the customer to the member chosen in the search (kept by auto-connect)."""
    customer = _customer_or_404(customer_id)
    conn = IntegrationConnection.active()
    member_id = request.form.get("member_id", "").strip()
    name = request.form.get("member_name", "").strip()[:200]
    email = request.form.get("member_email", "").strip()[:254]
    if conn is None:
        return _customer_box(customer, error="No integration is connected.")
    if not member_id or len(member_id) > 64 or not re.fullmatch(r"[A-Za-z0-9_.:-]+", member_id):
        return _customer_box(customer, error="Choose a member from the search results.")
    try:
        link = member_sync.connect_manually(customer, conn.provider, Member(id=member_id, name=name, email=email),
                                            by=current_user)
    except member_sync.SyncError as exc:
        db.session.rollback()
        return _customer_box(customer, error=str(exc))
    audit.record("customer_member_connected", f"connected to {spec_for(conn.provider).label} member "
                 f"{link.member_email or link.member_id} by hand", subject=customer)
    db.session.commit()
    return _customer_box(customer)


@bp.route("/customers/<int:customer_id>/disconnect", methods=["POST"])
@allow(Capability.INTEGRATIONS)
def customer_disconnect(customer_id):
    """End the customer's link (kept as history)."""
    customer = _customer_or_404(customer_id)
    conn = IntegrationConnection.active()
    if conn is not None:
        link = member_sync.disconnect_customer(customer, conn.provider)
        if link is not None:
            audit.record("customer_member_disconnected", f"disconnected from {spec_for(conn.provider).label} "
                         f"member {link.member_email or link.member_id}", subject=customer)
        db.session.commit()
    return _customer_box(customer)


def staff_can_connect() -> bool:
    return can(current_user, Capability.INTEGRATIONS)
