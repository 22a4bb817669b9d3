"""Staff pages for customers: list and live search, detail, create/edit, mailbox number,
deactivation. Business rules live in :mod:`spheremail.services.customers`.

There is deliberately no route that deletes a customer: deactivation keeps every record.
"""
from __future__ import annotations

import math

from flask import Blueprint, abort, flash, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy.orm import selectinload
from wtforms import DateField, IntegerField, RadioField, StringField
from wtforms.validators import InputRequired, Length, NumberRange, Optional, ValidationError

from spheremail.extensions import db
from spheremail.htmx import hx_redirect, render
from spheremail.models import Customer, MailboxNumberChange
from spheremail.security import Capability, allow
from spheremail.services import customers as service
from spheremail.services.customers import CustomerError

bp = Blueprint("customers", __name__, url_prefix="/customers")

TOO_LONG = "Too long: at most %(max)d characters."


# --- forms --------------------------------------------------------------------------------------

class CustomerForm(FlaskForm):
    """Create or edit a customer (the service validates again: it is the source of truth)."""

    first_name = StringField("First name", validators=[InputRequired("Enter the first name."),
                                                       Length(max=service.MAX_NAME, message=TOO_LONG)])
    last_name = StringField("Last name", validators=[InputRequired("Enter the last name."),
                                                     Length(max=service.MAX_NAME, message=TOO_LONG)])
    email = StringField("Email", validators=[InputRequired("Enter the email address."),
                                             Length(max=service.MAX_EMAIL, message=TOO_LONG)])
    company = StringField("Company (optional)", validators=[Optional(), Length(max=service.MAX_COMPANY, message=TOO_LONG)])
    phone = StringField("Phone (optional)", validators=[Optional(), Length(max=service.MAX_PHONE, message=TOO_LONG)])
    mailbox_number = IntegerField(
        "Mailbox number (leave empty for the next free one)",
        validators=[Optional(), NumberRange(1, service.MAX_MAILBOX_NUMBER,
                                            "Use a number from 1 to 9,999,999.")],
    )


class NumberForm(FlaskForm):
    new_number = IntegerField("New mailbox number", validators=[
        InputRequired("Enter the new mailbox number."),
        NumberRange(1, service.MAX_MAILBOX_NUMBER, "Use a number from 1 to 9,999,999."),
    ])


class DeactivateForm(FlaskForm):
    mode = RadioField("When does the customer become inactive?", choices=[
        ("now", "Now"),
        ("end_of_period", "At the end of the current billing period (the 1st of next month)"),
        ("date", "On a chosen date"),
    ], validators=[InputRequired("Choose when the customer becomes inactive.")])
    on_date = DateField("Date", validators=[Optional()])

    def validate_on_date(self, field):
        if self.mode.data == "date" and field.data is None:
            raise ValidationError("Choose the date the customer becomes inactive.")


def attach_error(form: FlaskForm, exc: CustomerError) -> None:
    """Show a service error next to its field, or at the top of the form."""
    field = getattr(form, exc.field, None) if exc.field else None
    if field is None and exc.field == "mailbox_number" and hasattr(form, "new_number"):
        field = form.new_number
    if field is not None and hasattr(field, "errors"):
        field.errors = list(field.errors) + [str(exc)]
    else:
        form.form_errors.append(str(exc))


def get_customer(customer_id: int, *, detail: bool = False) -> Customer:
    """The customer or 404; ``detail`` loads what the detail page lists in fixed queries."""
    query = db.select(Customer).where(Customer.id == customer_id)
    if detail:
        query = query.options(
            selectinload(Customer.recipients),
            selectinload(Customer.number_changes).joinedload(MailboxNumberChange.changed_by),
        )
    customer = db.session.execute(query).unique().scalar_one_or_none()
    if customer is None:
        abort(404)
    return customer


def detail_context(customer: Customer, **forms) -> dict:
    """Everything detail.html needs; pass bound forms to show their errors."""
    from spheremail.blueprints.recipients import new_recipient_form

    forms.setdefault("number_form", NumberForm(formdata=None))
    forms.setdefault("deactivate_form", DeactivateForm(formdata=None))
    forms.setdefault("recipient_form", new_recipient_form())
    return {"customer": customer, **forms}


def _actor():
    return current_user._get_current_object()


# --- list and detail ----------------------------------------------------------------------------

@bp.route("/")
@allow(Capability.VIEW_CUSTOMERS)
def index():
    """Customers in mailbox-number order; an HTMX request gets only the results partial."""
    q = (request.args.get("q") or "").strip()[: service.MAX_QUERY]
    status = request.args.get("status") or "active"
    if status not in service.STATUS_FILTERS:
        status = "active"
    page = max(1, request.args.get("page", 1, type=int) or 1)
    rows, total = service.search_customers(q, status, page)
    pages = max(1, math.ceil(total / service.PER_PAGE))
    if page > pages:  # an old link past the end: show the last page instead of nothing
        page = pages
        rows, total = service.search_customers(q, status, page)
    return render("customers/index.html", "customers/partials/customer_rows.html",
                  customers=rows, total=total, q=q, status=status, page_number=page, pages=pages,
                  per_page=service.PER_PAGE)


@bp.route("/<int:customer_id>")
@allow(Capability.VIEW_CUSTOMERS)
def detail(customer_id: int):
    """Profile, status, mailbox number and its history, recipients, deactivation."""
    customer = get_customer(customer_id, detail=True)
    return render("customers/detail.html", **detail_context(customer))


# --- create and edit ----------------------------------------------------------------------------

@bp.route("/new", methods=["GET", "POST"])
@allow(Capability.MANAGE_CUSTOMERS)
def create():
    """Create a customer; they set their password later through a reset email."""
    form = CustomerForm()
    if form.validate_on_submit():
        try:
            customer = service.create_customer(
                form.first_name.data, form.last_name.data, form.email.data,
                company=form.company.data, phone=form.phone.data,
                mailbox_number=form.mailbox_number.data, actor=_actor(),
            )
        except CustomerError as exc:
            db.session.rollback()
            attach_error(form, exc)
        else:
            db.session.commit()
            flash(f"Customer {customer.full_name} created with mailbox {customer.mailbox_number}.", "success")
            return hx_redirect(url_for("customers.detail", customer_id=customer.id))
    return render("customers/form.html", form=form, customer=None)


@bp.route("/<int:customer_id>/edit", methods=["GET", "POST"])
@allow(Capability.MANAGE_CUSTOMERS)
def edit(customer_id: int):
    """Edit a customer's profile and login email (the mailbox number has its own form)."""
    customer = get_customer(customer_id)
    form = CustomerForm(obj=customer)
    del form.mailbox_number
    if form.validate_on_submit():
        try:
            service.update_customer(customer, first_name=form.first_name.data,
                                    last_name=form.last_name.data, email=form.email.data,
                                    company=form.company.data, phone=form.phone.data, actor=_actor())
        except CustomerError as exc:
            db.session.rollback()
            customer = get_customer(customer_id)
            attach_error(form, exc)
        else:
            db.session.commit()
            flash("Customer saved.", "success")
            return hx_redirect(url_for("customers.detail", customer_id=customer.id))
    return render("customers/form.html", form=form, customer=customer)


# --- mailbox number -----------------------------------------------------------------------------

@bp.route("/<int:customer_id>/number", methods=["POST"])
@allow(Capability.MANAGE_CUSTOMERS)
def change_number(customer_id: int):
    """Change the mailbox number; errors (e.g. who holds the number) are shown inline."""
    customer = get_customer(customer_id)
    form = NumberForm()
    if form.validate_on_submit():
        old = customer.mailbox_number
        try:
            service.change_mailbox_number(customer, form.new_number.data, actor=_actor())
        except CustomerError as exc:
            db.session.rollback()
            attach_error(form, exc)
        else:
            db.session.commit()
            flash(f"Mailbox number changed from {old} to {customer.mailbox_number}.", "success")
            return hx_redirect(url_for("customers.detail", customer_id=customer.id))
    customer = get_customer(customer_id, detail=True)
    return render("customers/detail.html", "customers/partials/number_form.html",
                  **detail_context(customer, number_form=form))


# --- deactivation -------------------------------------------------------------------------------

@bp.route("/<int:customer_id>/deactivate", methods=["POST"])
@allow(Capability.MANAGE_CUSTOMERS)
def deactivate(customer_id: int):
    """Deactivate now, at the end of the billing period, or on a chosen date."""
    customer = get_customer(customer_id)
    form = DeactivateForm()
    if form.validate_on_submit():
        try:
            when = service.schedule_deactivation(customer, form.mode.data, form.on_date.data,
                                                 actor=_actor())
        except CustomerError as exc:
            db.session.rollback()
            attach_error(form, exc)
        else:
            db.session.commit()
            if when is None:
                flash(f"{customer.full_name} is now inactive.", "success")
            else:
                flash(f"{customer.full_name} becomes inactive on {when:%d %B %Y}.", "success")
            return hx_redirect(url_for("customers.detail", customer_id=customer.id))
    customer = get_customer(customer_id, detail=True)
    return render("customers/detail.html", "customers/partials/deactivate_form.html",
                  **detail_context(customer, deactivate_form=form))


def _simple_action(customer_id: int, action, done_message: str):
    customer = get_customer(customer_id)
    try:
        action(customer, actor=_actor())
    except CustomerError as exc:
        db.session.rollback()
        flash(str(exc), "error")
    else:
        db.session.commit()
        flash(done_message.format(name=customer.full_name), "success")
    return hx_redirect(url_for("customers.detail", customer_id=customer_id))


@bp.route("/<int:customer_id>/deactivation/withdraw", methods=["POST"])
@allow(Capability.MANAGE_CUSTOMERS)
def withdraw_deactivation(customer_id: int):
    """Withdraw a scheduled deactivation before it takes effect."""
    return _simple_action(customer_id, service.withdraw_scheduled_deactivation,
                          "The scheduled deactivation of {name} is withdrawn.")


@bp.route("/<int:customer_id>/reactivate", methods=["POST"])
@allow(Capability.MANAGE_CUSTOMERS)
def reactivate(customer_id: int):
    """Make an inactive customer active again."""
    return _simple_action(customer_id, service.reactivate, "{name} is active again.")
