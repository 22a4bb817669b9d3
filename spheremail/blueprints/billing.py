"""Billing for staff (Operator, Admin): settings, plans, the invoice overview, an invoice's page,
and the billing panel on a customer's page. Customers edit their billing details in the portal
(:func:`spheremail.blueprints.payments.portal_billing_details`).

Thin views: validation and rules live in :mod:`spheremail.services.billing`.
"""
from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy.orm import selectinload

from spheremail.extensions import db
from spheremail.htmx import hx_redirect, no_content, render
from spheremail.models import Customer
from spheremail.models.billing import Invoice, InvoiceStatus, OneOffFee, Plan
from spheremail.money import BILLING_CURRENCIES, format_amount, format_money
from spheremail.models.base import today
from spheremail.security import Capability, allow, can
from spheremail.services import billing as svc
from spheremail.services import payments

bp = Blueprint("billing", __name__, url_prefix="/billing")


def _actor():
    return current_user._get_current_object()


@bp.app_context_processor
def billing_helpers():
    """``money(minor, currency)`` everywhere, and ``billing_panel(customer)`` for the customer page."""

    def billing_panel(customer, errors=None, form=None):
        if not can(current_user, Capability.BILLING):
            return None
        settings = svc.get_settings()
        invoices = svc.invoices_for_customer(customer, include_drafts=True)
        return {
            "settings": settings,
            "plans": svc.plans(),
            "fees": svc.fees_for_customer(customer),
            "invoices": invoices,
            "problems": payments.problems_by_invoice([inv.id for inv in invoices]),
            "errors": errors or {},
            "form": form or {},
            "today": today().isoformat(),
        }

    return {"money": format_money, "billing_panel": billing_panel, "InvoiceStatus": InvoiceStatus}


# --------------------------------------------------------------------------- overview

def _overview_page(run_errors=None, run_form=None):
    status = request.args.get("status") or None
    if status not in {s.value for s in InvoiceStatus}:
        status = None
    month = request.args.get("month") or None
    if month:
        try:
            svc.parse_period(month)
        except svc.BillingError:
            month = None
    try:
        page = int(request.args.get("page", 1))
    except ValueError:
        page = 1
    data = svc.overview(status=status, month=month, page=page)
    # One query for the whole page: which listed invoices have a declined/mismatched online payment.
    problems = payments.problems_by_invoice([inv.id for inv in data.invoices])
    return render("billing/overview.html", "billing/partials/overview_results.html", data=data,
                  status=status, month=month, months=svc.months_with_invoices(), problems=problems,
                  run_errors=run_errors or {}, run_form=run_form or {"period": today().strftime("%Y-%m")})


@bp.route("/")
@allow(Capability.BILLING)
def overview():
    """Invoices per status with filters, totals per month, outstanding amount, the bill run button."""
    return _overview_page()


@bp.route("/bill-run", methods=["POST"])
@allow(Capability.BILLING)
def bill_run():
    """Run the bill run for a period now (idempotent; refused while the monthly job runs)."""
    from spheremail.jobs.billing import BillRunInProgress, run_by_hand

    period = (request.form.get("period") or "").strip()[:20]
    try:
        result = run_by_hand(period, actor=_actor())
    except svc.BillingError as exc:
        db.session.rollback()
        return _overview_page(run_errors=exc.errors, run_form={"period": period})
    except BillRunInProgress as exc:
        db.session.rollback()
        return _overview_page(run_errors={"_": str(exc)}, run_form={"period": period})
    flash(result.message(), "success")
    return hx_redirect(url_for("billing.overview"))


# --------------------------------------------------------------------------- settings

@bp.route("/settings", methods=["GET", "POST"])
@allow(Capability.BILLING)
def settings():
    """Currency, recipient price, terms, numbering, emailing, payment gateway keys."""
    current = svc.get_settings()
    errors: dict = {}
    form = {
        "currency": current.currency,
        "recipient_price": format_amount(current.recipient_price_minor, current.currency),
        "payment_terms_days": str(current.payment_terms_days),
        "invoice_prefix": current.invoice_prefix,
        "email_invoices": current.email_invoices,
        "gateway_publishable_key": current.gateway_publishable_key,
    }
    if request.method == "POST":
        form = {k: v for k, v in request.form.items() if k not in svc.SECRET_KEYS}  # secrets never echoed
        try:
            svc.save_settings(request.form, actor=_actor())
        except svc.BillingError as exc:
            db.session.rollback()
            errors = exc.errors
        else:
            db.session.commit()
            flash("Billing settings saved.", "success")
            return redirect(url_for("billing.settings"), code=303)
    return render_template("billing/settings.html", form=form, errors=errors, current=current,
                           currencies=BILLING_CURRENCIES)


# --------------------------------------------------------------------------- plans

@bp.route("/plans")
@allow(Capability.BILLING)
def plans():
    """All plans, active first."""
    return render_template("billing/plans.html", plans=svc.plans(), settings=svc.get_settings())


def _plan_form(plan: Plan | None):
    settings = svc.get_settings()
    errors: dict = {}
    form = {"name": plan.name, "description": plan.description,
            "monthly_price": format_amount(plan.monthly_price_minor, settings.currency)} if plan else {}
    if request.method == "POST":
        form = request.form
        try:
            saved = svc.save_plan(request.form, plan, actor=_actor())
        except svc.BillingError as exc:
            db.session.rollback()
            errors = exc.errors
        else:
            db.session.commit()
            flash(f"Plan {saved.name} saved.", "success")
            return hx_redirect(url_for("billing.plans"))
    return render_template("billing/plan_form.html", plan=plan, form=form, errors=errors, settings=settings)


@bp.route("/plans/new", methods=["GET", "POST"])
@allow(Capability.BILLING)
def plan_new():
    """Create a plan."""
    return _plan_form(None)


@bp.route("/plans/<int:plan_id>/edit", methods=["GET", "POST"])
@allow(Capability.BILLING)
def plan_edit(plan_id: int):
    """Edit a plan (its new price applies from the next bill run)."""
    return _plan_form(db.get_or_404(Plan, plan_id))


def _set_plan_active(plan_id: int, active: bool, done: str):
    plan = db.get_or_404(Plan, plan_id)
    svc.set_plan_active(plan, active, actor=_actor())
    db.session.commit()
    flash(done.format(name=plan.name), "success")
    return hx_redirect(url_for("billing.plans"))


@bp.route("/plans/<int:plan_id>/retire", methods=["POST"])
@allow(Capability.BILLING)
def plan_retire(plan_id: int):
    """Retire a plan: no new customers get it; current ones keep it and are still billed."""
    return _set_plan_active(plan_id, False, "Plan {name} retired.")


@bp.route("/plans/<int:plan_id>/reactivate", methods=["POST"])
@allow(Capability.BILLING)
def plan_reactivate(plan_id: int):
    """Offer a retired plan again."""
    return _set_plan_active(plan_id, True, "Plan {name} is offered again.")


# --------------------------------------------------------------------------- invoices

def _invoice(invoice_id: int) -> Invoice:
    invoice = db.session.execute(
        db.select(Invoice).where(Invoice.id == invoice_id)
        .options(selectinload(Invoice.lines), selectinload(Invoice.payments))
    ).scalar_one_or_none()
    if invoice is None:
        abort(404)
    return invoice


def _invoice_page(invoice: Invoice, errors=None, form=None, status=200):
    return render_template("billing/invoice.html", invoice=invoice, errors=errors or {}, form=form or {},
                           methods=svc.OFFLINE_METHODS, today=today().isoformat(),
                           externally_billed=_invoice_exported_elsewhere(invoice)), status


def _invoice_exported_elsewhere(invoice: Invoice) -> bool:
    """Whether this invoice waits for the coworking system's export (decided per invoice)."""
    from spheremail.services.invoice_export import is_invoice_externally_billed

    return is_invoice_externally_billed(invoice)


@bp.route("/invoices/<int:invoice_id>")
@allow(Capability.BILLING)
def invoice(invoice_id: int):
    """An invoice as printed, with Void and Record offline payment for pending ones."""
    return _invoice_page(_invoice(invoice_id))


def _invoice_action(invoice_id: int, change, done: str):
    """Apply ``change(invoice)`` (a service call) and commit, then back to the invoice page with
    ``done`` (formatted with ``number``); on BillingError, roll back and re-render with the errors."""
    inv = _invoice(invoice_id)
    try:
        change(inv)
    except svc.BillingError as exc:
        db.session.rollback()
        return _invoice_page(_invoice(invoice_id), errors=exc.errors, form=request.form)
    db.session.commit()
    flash(done.format(number=inv.number), "success")
    return hx_redirect(url_for("billing.invoice", invoice_id=invoice_id))


@bp.route("/invoices/<int:invoice_id>/void", methods=["POST"])
@allow(Capability.BILLING)
def invoice_void(invoice_id: int):
    """Void a pending (or draft) invoice."""
    return _invoice_action(invoice_id, lambda inv: svc.void_invoice(inv, request.form.get("reason"), actor=_actor()),
                           "Invoice {number} voided.")


@bp.route("/invoices/<int:invoice_id>/payment", methods=["POST"])
@allow(Capability.BILLING)
def invoice_payment(invoice_id: int):
    """Record an offline payment (bank transfer, cash...) of the whole invoice."""
    return _invoice_action(invoice_id, lambda inv: svc.record_offline_payment(inv, request.form, actor=_actor()),
                           "Payment recorded: invoice {number} is paid.")


@bp.route("/invoices/<int:invoice_id>/email", methods=["POST"])
@allow(Capability.BILLING)
def invoice_email(invoice_id: int):
    """Send (again) the invoice email to the customer; a failure is shown, never a 500."""
    inv = _invoice(invoice_id)
    if inv.status == InvoiceStatus.DRAFT.value:
        return _invoice_page(inv, errors={"_": "A draft is not sent."})
    sent, _failed = svc.email_invoices([inv.id])
    flash("Invoice emailed." if sent else "The email could not be sent; see the note on the invoice.",
          "success" if sent else "error")
    return hx_redirect(url_for("billing.invoice", invoice_id=invoice_id))


# --------------------------------------------------------------------------- customer panel

def _customer(customer_id: int) -> Customer:
    return db.get_or_404(Customer, customer_id)


def _panel(customer: Customer, errors=None, form=None):
    return render_template("billing/partials/customer_billing.html", customer=customer,
                           panel_errors=errors, panel_form=form)


def _panel_done(customer: Customer, message: str):
    if request.headers.get("HX-Request"):
        return no_content("billingChanged")
    flash(message, "success")
    return redirect(url_for("customers.detail", customer_id=customer.id) + "#customer-billing", code=303)


@bp.route("/customers/<int:customer_id>")
@allow(Capability.BILLING)
def customer_panel(customer_id: int):
    """The billing panel of a customer's page (refreshed by HTMX after each change)."""
    return _panel(_customer(customer_id))


def _panel_action(customer: Customer, change, done: str):
    """Apply ``change()`` (a service call) and commit, then refresh the panel; on BillingError,
    roll back and answer the panel with the errors (200)."""
    try:
        change()
    except svc.BillingError as exc:
        db.session.rollback()
        return _panel(_customer(customer.id), errors=exc.errors, form=request.form)
    db.session.commit()
    return _panel_done(customer, done)


@bp.route("/customers/<int:customer_id>/plan", methods=["POST"])
@allow(Capability.BILLING)
def customer_plan(customer_id: int):
    """Set the customer's plan (or none)."""
    customer = _customer(customer_id)
    return _panel_action(customer, lambda: svc.set_customer_plan(customer, request.form.get("plan_id"),
                                                                 actor=_actor()), "Plan saved.")


@bp.route("/customers/<int:customer_id>/fees", methods=["POST"])
@allow(Capability.BILLING)
def customer_fee(customer_id: int):
    """Add a one-off fee; it lands on the customer's next invoice."""
    customer = _customer(customer_id)
    return _panel_action(customer, lambda: svc.add_fee(customer, request.form, actor=_actor()), "Fee added.")


@bp.route("/fees/<int:fee_id>/delete", methods=["POST"])
@allow(Capability.BILLING)
def fee_delete(fee_id: int):
    """Remove a fee that is not on an invoice yet."""
    fee = db.get_or_404(OneOffFee, fee_id)
    return _panel_action(_customer(fee.customer_id), lambda: svc.delete_fee(fee, actor=_actor()), "Fee removed.")
