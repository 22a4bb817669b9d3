"""Invoices in the portal, Pay now and saved cards through Stripe, the Stripe webhook, and the
staff view of online payments. Business rules live in :mod:`spheremail.services.payments`."""
from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, make_response, redirect, request, url_for
from flask_login import current_user

from spheremail.extensions import csrf, db
from spheremail.htmx import hx_redirect, render
from spheremail.models import Invoice
from spheremail.security import Capability, allow, customer_only, public
from spheremail.services import billing
from spheremail.services import payments as svc

bp = Blueprint("payments", __name__)

def _customer():
    customer = current_user.customer
    if customer is None:
        abort(403)
    return customer


def _audit_actor():
    """The staff member while they act as the customer, else the customer (the portal's rule)."""
    from spheremail.security import audit_actor

    return audit_actor()


def _own_invoice(invoice_id: int) -> Invoice:
    """The logged-in customer's invoice, or 404 (also for someone else's id: no hint it exists)."""
    invoice = svc.customer_invoice(_customer(), invoice_id)
    if invoice is None:
        abort(404)
    return invoice


def _redirect_external(url: str):
    """Send the browser to Stripe's page (HX-Redirect for HTMX, 303 otherwise)."""
    return hx_redirect(url)


# --- portal: invoices -------------------------------------------------------------------

@bp.route("/portal/invoices")
@customer_only
def portal_invoices():
    """The customer's invoices (newest first) with Pay now on pending ones."""
    customer = _customer()
    invoices = billing.invoices_for_customer(customer)
    ready = svc.online_payment_ready()
    # Decided per invoice (one query): older invoices of a customer linked later stay payable here.
    external_ids = svc.externally_billed_invoice_ids(invoices)
    return render("payments/portal_invoices.html", invoices=invoices, ready=ready,
                  external_ids=external_ids,
                  external=bool(invoices) and all(i.id in external_ids for i in invoices if i.is_open),
                  not_configured_message=svc.NOT_CONFIGURED_MESSAGE)


def _invoice_page(invoice: Invoice, *, staff: bool):
    ready = svc.online_payment_ready()
    payable = (not staff) and ready and svc.can_pay_online(invoice)
    attempts = svc.attempts_for_invoice(invoice) if staff else []
    return render("payments/invoice.html", invoice=invoice, staff=staff, payable=payable, ready=ready,
                  attempts=attempts, external=svc.is_invoice_externally_billed(invoice),
                  cancelled=request.args.get("cancelled") == "1",
                  not_configured_message=svc.NOT_CONFIGURED_MESSAGE)


@bp.route("/portal/invoices/<int:invoice_id>")
@customer_only
def portal_invoice(invoice_id: int):
    """One invoice, printable (print stylesheet hides navigation and buttons)."""
    return _invoice_page(_own_invoice(invoice_id), staff=False)


@bp.route("/portal/invoices/<int:invoice_id>/pay", methods=["POST"])
@customer_only
def pay_invoice(invoice_id: int):
    """Pay now: open a Stripe Checkout Session and send the customer to it."""
    invoice = _own_invoice(invoice_id)
    success_url = (url_for("payments.payment_return", invoice_id=invoice.id, _external=True)
                   + "?session_id={CHECKOUT_SESSION_ID}")
    cancel_url = url_for("payments.portal_invoice", invoice_id=invoice.id, cancelled=1, _external=True)
    try:
        url = svc.start_checkout(invoice, success_url=success_url, cancel_url=cancel_url)
    except svc.PaymentError as exc:
        db.session.rollback()
        flash(str(exc), "error")
        return hx_redirect(url_for("payments.portal_invoice", invoice_id=invoice_id))
    return _redirect_external(url)


@bp.route("/portal/invoices/<int:invoice_id>/payment")
@customer_only
def payment_return(invoice_id: int):
    """Where Stripe sends the customer back. It only reports: the webhook marks the invoice paid."""
    invoice = _own_invoice(invoice_id)
    session_id = (request.args.get("session_id") or "")[:255] or None
    state = svc.checkout_state(invoice, session_id)
    return render("payments/payment_return.html", "payments/partials/payment_state.html",
                  invoice=invoice, state=state, session_id=session_id)


# --- portal: billing details and saved card -----------------------------------------------

@bp.route("/portal/billing", methods=["GET", "POST"])
@customer_only
def portal_billing_details():
    """Name, address and VAT number for invoices; the card saved for automatic charges."""
    customer = _customer()
    details = billing.billing_details_for(customer)
    errors: dict[str, str] = {}
    if details is not None:
        values = {"name": details.name, "address": details.address, "vat_number": details.vat_number}
    else:  # a sensible first suggestion; nothing is stored until they save
        values = {"name": customer.company or customer.full_name, "address": "", "vat_number": ""}
    if request.method == "POST":
        values = {k: request.form.get(k, "") for k in values}
        try:
            billing.save_billing_details(customer, values, actor=_audit_actor())
        except billing.BillingError as exc:
            db.session.rollback()
            errors = exc.errors
        else:
            db.session.commit()
            flash("Your billing details are saved. They will be on your next invoices.", "success")
            return redirect(url_for("payments.portal_billing_details"), code=303)
    return render("payments/billing_details.html", values=values, errors=errors,
                  card=svc.gateway_customer(customer), ready=svc.online_payment_ready(),
                  external=svc.is_externally_billed(customer), autocharge=svc.autocharge_enabled(),
                  card_returned=request.args.get("card") == "returned",
                  not_configured_message=svc.NOT_CONFIGURED_MESSAGE)


@bp.route("/portal/billing/card", methods=["POST"])
@customer_only
def save_card():
    """Save (or replace) a card through Stripe Checkout in setup mode."""
    customer = _customer()
    back = url_for("payments.portal_billing_details", _external=True)
    try:
        url = svc.start_card_setup(customer, success_url=back + "?card=returned", cancel_url=back,
                                   currency=billing.get_settings().currency)
    except svc.PaymentError as exc:
        db.session.rollback()
        flash(str(exc), "error")
        return hx_redirect(url_for("payments.portal_billing_details"))
    return _redirect_external(url)


@bp.route("/portal/billing/card/remove", methods=["POST"])
@customer_only
def remove_card():
    """Stop automatic charges to the saved card."""
    if svc.remove_saved_card(_customer()):
        db.session.commit()
        flash("Your card is removed: invoices will no longer be charged automatically.", "success")
    return hx_redirect(url_for("payments.portal_billing_details"))


# --- Stripe webhook ----------------------------------------------------------------------

@bp.route("/payments/stripe/webhook", methods=["POST"])
@public
@csrf.exempt
def stripe_webhook():
    """Stripe's signed events. The signature is checked on the raw body; bad ones get 400."""
    result = svc.handle_webhook(request.get_data(cache=False), request.headers.get("Stripe-Signature"))
    if result.status >= 400:
        current_app.logger.info("stripe webhook answered %s: %s", result.status, result.message)
    response = make_response(result.message, result.status)
    response.mimetype = "text/plain"
    return response


# --- staff ---------------------------------------------------------------------------------

@bp.route("/payments/invoices/<int:invoice_id>")
@allow(Capability.BILLING)
def staff_invoice(invoice_id: int):
    """Staff: the printable invoice, with its online payment attempts (not printed)."""
    invoice = db.session.get(Invoice, invoice_id)
    if invoice is None:
        abort(404)
    return _invoice_page(invoice, staff=True)


@bp.route("/payments/")
@allow(Capability.BILLING)
def staff_overview():
    """Staff: is online payment set up, automatic charging, and payments that need attention."""
    return render("payments/staff_overview.html", ready=svc.online_payment_ready(),
                  autocharge=svc.autocharge_enabled(), problems=svc.attempts_needing_attention())


@bp.route("/payments/settings", methods=["POST"])
@allow(Capability.BILLING)
def staff_settings():
    """Staff: switch automatic charging of saved cards on or off."""
    svc.set_autocharge(request.form.get("autocharge") == "on")
    db.session.commit()
    flash("Saved.", "success")
    return hx_redirect(url_for("payments.staff_overview"))


@bp.context_processor
def _helpers():
    """Names this blueprint's templates use."""
    from spheremail.money import format_money

    return {"format_money": format_money}


@bp.app_template_global("payment_problem")
def _payment_problem(invoice):
    """For billing's staff templates: the invoice's latest online payment attempt if it needs
    attention (declined, failed, amount mismatch), else None. Use
    ``{% include "payments/partials/invoice_problem.html" ignore missing %}`` with ``invoice`` set."""
    return svc.latest_problem(invoice)
