"""The customer portal: sign-up, home, profile, password and additional recipients."""
from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, request, session, url_for
from flask_login import current_user, login_user
from flask_wtf import FlaskForm
from sqlalchemy.exc import IntegrityError
from wtforms import EmailField, PasswordField, StringField
from wtforms.validators import DataRequired, Length, Optional, ValidationError

from spheremail.extensions import db
from spheremail.htmx import render
from spheremail.models import Recipient
from spheremail.security import audit_actor, customer_only, public
from spheremail.services.accounts import AccountError, email_taken, validate_password
from spheremail.services.customers import MAX_COMPANY as COMPANY_MAX
from spheremail.services.customers import MAX_EMAIL as EMAIL_MAX
from spheremail.services.customers import MAX_NAME as NAME_MAX
from spheremail.services.customers import MAX_PHONE as PHONE_MAX
from spheremail.services.customers import CustomerError

bp = Blueprint("portal", __name__)

EMAIL_USED = "An account with this email already exists. Log in, or reset its password."
EMAIL_USED_PROFILE = "Another account already uses this email address. Choose a different one."


def _field_error(form, exc: CustomerError, neutral_email: str) -> str | None:
    """Put a service error on its form field; returns page-level text when it has no field.

    Email errors are replaced by a neutral text: the service's own message names the other
    account's holder, which is for staff, not for a customer.
    """
    field = getattr(form, exc.field, None) if getattr(exc, "field", None) else None
    if field is None:
        return str(exc)
    message = neutral_email if exc.field == "email" and "already" in str(exc) else str(exc)
    field.errors = [*field.errors, message]
    return "Some fields need your attention."


def plain_text(form, field):
    """Names are shown to staff and printed on labels: refuse markup rather than store it."""
    if field.data and any(ch in field.data for ch in "<>"):
        raise ValidationError(f"{field.label.text} cannot contain < or >.")


def valid_email(form, field):
    """The same rule as staff-created customers (no DNS lookups, reserved test domains allowed)."""
    from spheremail.services.customers import clean_email

    try:
        clean_email(field.data)
    except CustomerError as exc:
        raise ValidationError(str(exc)) from exc


def _at_most(n: int) -> Length:
    return Length(max=n, message=f"Use at most {n} characters.")


def _strip(value):
    return value.strip() if isinstance(value, str) else value


class NameFields:
    first_name = StringField("First name", filters=[_strip],
                             validators=[DataRequired("Enter a first name."), _at_most(NAME_MAX), plain_text])
    last_name = StringField("Last name", filters=[_strip],
                            validators=[DataRequired("Enter a last name."), _at_most(NAME_MAX), plain_text])
    company = StringField("Company (optional)", filters=[_strip],
                          validators=[Optional(), _at_most(COMPANY_MAX), plain_text])


class SignupForm(NameFields, FlaskForm):
    email = EmailField("Email", filters=[_strip], validators=[
        DataRequired("Enter your email address."), _at_most(EMAIL_MAX),
        valid_email])
    password = PasswordField("Password", validators=[DataRequired("Choose a password."), _at_most(200)])
    confirm = PasswordField("Password again", validators=[DataRequired("Enter the password again."), _at_most(200)])

    def validate_email(self, field):
        if email_taken(field.data or ""):
            raise ValidationError(EMAIL_USED)

    def validate_password(self, field):
        try:
            validate_password(field.data or "")
        except AccountError as exc:
            raise ValidationError(str(exc)) from exc

    def validate_confirm(self, field):
        if field.data != self.password.data:
            raise ValidationError("The two passwords are not the same.")


class ProfileForm(NameFields, FlaskForm):
    phone = StringField("Phone (optional)", filters=[_strip],
                        validators=[Optional(), _at_most(PHONE_MAX), plain_text])
    email = EmailField("Email", filters=[_strip], validators=[
        DataRequired("Enter your email address."), _at_most(EMAIL_MAX),
        valid_email])


class PasswordForm(FlaskForm):
    current = PasswordField("Current password", validators=[DataRequired("Enter your current password."), _at_most(200)])
    password = PasswordField("New password", validators=[DataRequired("Choose a new password."), _at_most(200)])
    confirm = PasswordField("New password again", validators=[DataRequired("Enter the new password again."), _at_most(200)])

    def validate_confirm(self, field):
        if field.data != self.password.data:
            raise ValidationError("The two new passwords are not the same.")


class RecipientForm(NameFields, FlaskForm):
    """Customers name their recipients; the status is the operator's decision, not theirs."""


def _customer():
    customer = current_user.customer
    if customer is None:  # a customer login without a profile: nothing to show
        abort(404)
    return customer


def _actor():
    """Who to write in the audit trail (see :func:`spheremail.security.audit_actor`)."""
    return audit_actor()


def _own_recipient(recipient_id: int) -> Recipient:
    """The recipient only if it belongs to the logged-in customer; any other id is a 404."""
    recipient = db.session.execute(
        db.select(Recipient).where(Recipient.id == recipient_id, Recipient.customer_id == _customer().id)
    ).scalar_one_or_none()
    if recipient is None:
        abort(404)
    return recipient


# --- Sign-up -----------------------------------------------------------------------------

@bp.route("/signup", methods=["GET", "POST"])
@public
def signup():
    """Rent a mailbox: the account gets the next free mailbox number and is logged in."""
    from spheremail.services.customers import create_customer

    if current_user.is_authenticated:
        return redirect(url_for("auth.home"))
    form = SignupForm()
    error = None
    if form.validate_on_submit():
        try:
            customer = create_customer(
                form.first_name.data, form.last_name.data, form.email.data,
                company=form.company.data or None, password=form.password.data,
                signed_up_via="portal", actor=None,
            )
            db.session.commit()
        except IntegrityError:
            db.session.rollback()  # two sign-ups with one email at the same moment
            error = EMAIL_USED
        except CustomerError as exc:  # the service's user-facing validation errors
            db.session.rollback()
            error = _field_error(form, exc, EMAIL_USED)
        else:
            session.pop("impersonator_id", None)
            login_user(customer.user)
            flash(f"Welcome! Your mailbox number is {customer.mailbox_number}.", "success")
            return redirect(url_for("portal.home"), code=303)
    elif request.method == "POST":
        error = "Some fields need your attention."
    return render("portal/signup.html", form=form, error=error)


# --- Home ----------------------------------------------------------------------------------

@bp.route("/portal")
@customer_only
def home():
    """The customer's mailbox number, how to address mail, and their recipients."""
    customer = _customer()
    recipients = db.session.execute(
        db.select(Recipient).where(Recipient.customer_id == customer.id).order_by(Recipient.id)
    ).scalars().all()
    return render("portal/home.html", customer=customer, recipients=recipients,
                  business_address=_business_address())


def _business_address() -> str | None:
    """The operator's street address when the settings know it (shown in the address summary)."""
    from spheremail.models.setting import DEFAULTS, Setting

    for key in ("business_address", "mailbox_address", "address"):
        if key in DEFAULTS:
            value = Setting.get(key)
            if value:
                return str(value)
    return None


# --- Profile and password --------------------------------------------------------------------

@bp.route("/portal/profile", methods=["GET", "POST"])
@customer_only
def profile():
    """Edit name, company, phone and login email (unique ignoring case)."""
    from spheremail.services.customers import update_customer

    customer = _customer()
    form = ProfileForm(obj=customer) if request.method == "GET" else ProfileForm()
    if request.method == "GET":
        form.email.data = customer.email
    error = None
    if form.validate_on_submit():
        try:
            if email_taken(form.email.data, except_user=customer.user):
                raise CustomerError(EMAIL_USED_PROFILE, "email")
            changed = update_customer(customer, first_name=form.first_name.data, last_name=form.last_name.data,
                                      company=form.company.data, phone=form.phone.data, email=form.email.data,
                                      actor=_actor())
            db.session.commit()
        except CustomerError as exc:
            db.session.rollback()
            error = _field_error(form, exc, EMAIL_USED_PROFILE)
        except IntegrityError:
            db.session.rollback()
            form.email.errors = [*form.email.errors, EMAIL_USED_PROFILE]
            error = "Some fields need your attention."
        else:
            flash("Your details are saved." if changed else "Nothing changed.", "success")
            return redirect(url_for("portal.home"), code=303)
    elif request.method == "POST":
        error = "Some fields need your attention."
    return render("portal/profile.html", form=form, customer=customer, error=error)


@bp.route("/portal/password", methods=["GET", "POST"])
@customer_only
def password():
    """Change the password; the current one is required."""
    from spheremail.services.accounts import change_password

    form = PasswordForm()
    error = None
    if session.get("impersonator_id"):
        # Staff acting as a customer help with mail and details, never with their secret.
        error = "Staff acting as a customer cannot change the customer's password. Send a reset email instead."
    elif form.validate_on_submit():
        try:
            change_password(current_user, form.current.data, form.password.data)
            db.session.commit()
        except AccountError as exc:
            db.session.rollback()
            error = str(exc)
        else:
            flash("Your password is changed.", "success")
            return redirect(url_for("portal.home"), code=303)
    elif request.method == "POST":
        error = "Some fields need your attention."
    return render("portal/password.html", form=form, error=error)


# --- Additional recipients ---------------------------------------------------------------------

@bp.route("/portal/recipients/new", methods=["GET", "POST"])
@customer_only
def recipient_new():
    """Add an additional recipient; its status comes from the operator's setting."""
    from spheremail.services.recipients import add_recipient

    customer = _customer()
    form = RecipientForm()
    error = None
    if form.validate_on_submit():
        try:
            recipient = add_recipient(customer, form.first_name.data, form.last_name.data,
                                      company=form.company.data or None, status=None,
                                      actor=_actor())
            db.session.commit()
        except CustomerError as exc:
            db.session.rollback()
            error = _field_error(form, exc, "")
        else:
            flash(f"{recipient.full_name} is added to your mailbox.", "success")
            return redirect(url_for("portal.home"), code=303)
    elif request.method == "POST":
        error = "Some fields need your attention."
    return render("portal/recipient_form.html", form=form, recipient=None, error=error)


@bp.route("/portal/recipients/<int:recipient_id>/edit", methods=["GET", "POST"])
@customer_only
def recipient_edit(recipient_id: int):
    """Rename one of the customer's own recipients (status stays the operator's)."""
    from spheremail.services.recipients import update_recipient

    recipient = _own_recipient(recipient_id)
    form = RecipientForm(obj=recipient) if request.method == "GET" else RecipientForm()
    error = None
    if form.validate_on_submit():
        try:
            update_recipient(recipient, first_name=form.first_name.data, last_name=form.last_name.data,
                             company=form.company.data or None, actor=_actor())
            db.session.commit()
        except CustomerError as exc:
            db.session.rollback()
            error = _field_error(form, exc, "")
        else:
            flash(f"{recipient.full_name} is saved.", "success")
            return redirect(url_for("portal.home"), code=303)
    elif request.method == "POST":
        error = "Some fields need your attention."
    return render("portal/recipient_form.html", form=form, recipient=recipient, error=error)
