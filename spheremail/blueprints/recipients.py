"""Staff pages for a customer's additional recipients: add, edit, change status.

No route deletes a recipient: one that no longer receives mail is set to "inactive".
Rules live in :mod:`spheremail.services.recipients` (shared with the customer portal).
"""
from __future__ import annotations

from flask import Blueprint, abort, flash, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import SelectField, StringField
from wtforms.validators import InputRequired, Length, Optional

from spheremail.blueprints.customers import TOO_LONG, attach_error, detail_context, get_customer
from spheremail.extensions import db
from spheremail.htmx import hx_redirect, render, wants_partial
from spheremail.models import Recipient
from spheremail.security import Capability, allow
from spheremail.services import recipients as service
from spheremail.services.customers import MAX_COMPANY, MAX_NAME, CustomerError

bp = Blueprint("recipients", __name__, url_prefix="/customers/<int:customer_id>/recipients")

STATUS_CHOICES = [("free", "Free"), ("paid", "Paid"), ("inactive", "Inactive")]


class RecipientForm(FlaskForm):
    first_name = StringField("First name", validators=[InputRequired("Enter the first name."),
                                                       Length(max=MAX_NAME, message=TOO_LONG)])
    last_name = StringField("Last name", validators=[InputRequired("Enter the last name."),
                                                     Length(max=MAX_NAME, message=TOO_LONG)])
    company = StringField("Company (optional)", validators=[Optional(), Length(max=MAX_COMPANY, message=TOO_LONG)])
    status = SelectField("Status", choices=STATUS_CHOICES,
                         validators=[InputRequired("Choose free, paid or inactive.")])


class StatusForm(FlaskForm):
    status = SelectField("Status", choices=STATUS_CHOICES,
                         validators=[InputRequired("Choose free, paid or inactive.")])


def new_recipient_form(formdata=None) -> RecipientForm:
    """An empty add form whose status starts at the operator's default."""
    form = RecipientForm(formdata=formdata)
    if formdata is None:
        form.status.data = service.default_status()
    return form


def get_recipient(customer_id: int, recipient_id: int) -> Recipient:
    """The recipient of that customer, or 404 (a recipient id of another customer is refused)."""
    recipient = db.session.execute(
        db.select(Recipient).where(Recipient.id == recipient_id, Recipient.customer_id == customer_id)
    ).scalar_one_or_none()
    if recipient is None:
        abort(404)
    return recipient


def _actor():
    return current_user._get_current_object()


@bp.route("", methods=["POST"])
@allow(Capability.MANAGE_RECIPIENTS)
def create(customer_id: int):
    """Add a recipient from the form on the customer's page; errors shown inline."""
    customer = get_customer(customer_id)
    form = new_recipient_form(request.form)
    if form.validate_on_submit():
        try:
            recipient = service.add_recipient(customer, form.first_name.data, form.last_name.data,
                                              company=form.company.data, status=form.status.data,
                                              actor=_actor())
        except CustomerError as exc:
            db.session.rollback()
            attach_error(form, exc)
        else:
            db.session.commit()
            flash(f"Recipient {recipient.full_name} added ({recipient.status}).", "success")
            return hx_redirect(url_for("customers.detail", customer_id=customer_id))
    customer = get_customer(customer_id, detail=True)
    return render("customers/detail.html", "recipients/partials/add_form.html",
                  **detail_context(customer, recipient_form=form))


@bp.route("/<int:recipient_id>/edit", methods=["GET", "POST"])
@allow(Capability.MANAGE_RECIPIENTS)
def edit(customer_id: int, recipient_id: int):
    """Change a recipient's name and company (the status is changed inline in the table)."""
    recipient = get_recipient(customer_id, recipient_id)
    form = RecipientForm(obj=recipient)
    del form.status
    if form.validate_on_submit():
        try:
            service.update_recipient(recipient, form.first_name.data, form.last_name.data,
                                     company=form.company.data, actor=_actor())
        except CustomerError as exc:
            db.session.rollback()
            recipient = get_recipient(customer_id, recipient_id)
            attach_error(form, exc)
        else:
            db.session.commit()
            flash("Recipient saved.", "success")
            return hx_redirect(url_for("customers.detail", customer_id=customer_id))
    return render("recipients/form.html", form=form, recipient=recipient, customer=recipient.customer)


@bp.route("/<int:recipient_id>/status", methods=["POST"])
@allow(Capability.MANAGE_RECIPIENTS)
def set_status(customer_id: int, recipient_id: int):
    """Inline status change: HTMX gets the updated table row back, a plain form a redirect."""
    recipient = get_recipient(customer_id, recipient_id)
    form = StatusForm()
    error = saved = None
    if form.validate_on_submit():
        try:
            saved = service.set_recipient_status(recipient, form.status.data, actor=_actor())
        except CustomerError as exc:
            db.session.rollback()
            recipient = get_recipient(customer_id, recipient_id)
            error = str(exc)
        else:
            db.session.commit()
    else:
        error = "; ".join(form.status.errors) or "Choose free, paid or inactive."
    if wants_partial():
        return render("recipients/partials/recipient_row.html", recipient=recipient,
                      customer=recipient.customer, row_error=error, row_saved=error is None)
    if error:
        flash(error, "error")
    elif saved:
        flash(f"{recipient.full_name} is now {recipient.status}.", "success")
    return hx_redirect(url_for("customers.detail", customer_id=customer_id))
