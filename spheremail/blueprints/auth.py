"""Logging in and out, and the start page that sends each role where it works."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, Length

from spheremail.extensions import db
from spheremail.security import Capability, allow, public
from spheremail.services import login as login_service

bp = Blueprint("auth", __name__)


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=200)])


def _safe_next(target: str | None) -> str | None:
    """Only local paths: never redirect to another site after login.

    Browsers read a backslash as ``/`` and drop tabs and newlines, so such paths could
    still leave the site: anything but a plain absolute path is refused.
    """
    from urllib.parse import urlsplit

    if not target or len(target) > 2000:
        return None
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


@bp.route("/")
@public
def home():
    """Send staff to their work, customers to their portal, others to the login page."""
    if not current_user.is_authenticated:
        return redirect(url_for("auth.login"))
    if current_user.is_customer:
        return redirect(url_for("portal.home"))
    return redirect(url_for("customers.index"))


@bp.route("/login", methods=["GET", "POST"])
@public
def login():
    """Log in by email and password, throttled per account and per address."""
    form = LoginForm()
    error = None
    if form.validate_on_submit():
        result = login_service.authenticate(form.email.data, form.password.data, request.remote_addr)
        if result.user is not None:
            from flask import session

            session.pop("impersonator_id", None)
            login_user(result.user)
            db.session.commit()
            return redirect(_safe_next(request.args.get("next")) or url_for("auth.home"))
        db.session.commit()
        error = result.message
    elif request.method == "POST":
        error = "Enter your email and password."
    status = 200 if error is None else 200  # re-rendered form, message on the page
    return render_template("auth/login.html", form=form, error=error), status


@bp.route("/logout", methods=["POST"])
@public
def logout():
    """Log out (POST only: no state change on GET)."""
    logout_user()
    from flask import session

    session.clear()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))


# --- Password reset by email ---------------------------------------------------------------

NEUTRAL_RESET_MESSAGE = ("If an account uses that email, we have sent it a link to set a new "
                         "password. The link works once and expires in {minutes} minutes.")


class ForgotPasswordForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])


class NewPasswordForm(FlaskForm):
    password = PasswordField("New password", validators=[DataRequired(), Length(max=200)])
    confirm = PasswordField("New password again", validators=[DataRequired(), Length(max=200)])


def _reset_minutes() -> int:
    from flask import current_app

    return max(1, current_app.config["PASSWORD_RESET_MAX_AGE"] // 60)


@bp.route("/forgot-password", methods=["GET", "POST"])
@public
def forgot_password():
    """Ask for a reset link. The answer is the same whether or not the email has an account."""
    from flask import current_app

    from spheremail.services.accounts import find_user_by_email, send_password_reset
    from spheremail.services.mail import MailError

    form = ForgotPasswordForm()
    sent_message = None
    error = None
    if form.validate_on_submit():
        user = find_user_by_email(form.email.data)
        # Only accounts that could log in afterwards get a link; everyone gets the same answer.
        if user is not None and user.is_enabled and (
            not user.is_customer or (user.customer is not None and user.customer.is_active)
        ):
            try:
                send_password_reset(user)
                db.session.commit()
            except MailError:
                db.session.rollback()
                # Saying "could not send" only for real accounts would reveal which exist.
                current_app.logger.warning("password-reset mail for user %s not sent", user.id)
        sent_message = NEUTRAL_RESET_MESSAGE.format(minutes=_reset_minutes())
    elif request.method == "POST":
        error = "Enter the email address of your account."
    return render_template("auth/forgot_password.html", form=form, sent_message=sent_message, error=error)


@bp.route("/reset-password/<token>", methods=["GET", "POST"])
@public
def reset_password(token: str):
    """Choose a new password from an emailed link (one use, expires)."""
    from flask import make_response

    from spheremail.services.accounts import AccountError, set_password_from_reset, user_from_reset_token

    user = user_from_reset_token(token)
    form = NewPasswordForm()
    error = None
    if user is None:
        response = make_response(render_template("auth/reset_password.html", form=None, invalid=True))
    else:
        if form.validate_on_submit():
            if form.password.data != form.confirm.data:
                error = "The two passwords are not the same."
            else:
                try:
                    set_password_from_reset(user, form.password.data)
                except AccountError as exc:
                    error = str(exc)
                else:
                    db.session.commit()
                    flash("Your new password is set. Log in with it.", "success")
                    return redirect(url_for("auth.login"))
        elif request.method == "POST":
            error = "Enter the new password twice."
        response = make_response(render_template("auth/reset_password.html", form=form, invalid=False,
                                                 error=error, user=user))
    # The token is in the URL: never hand it to another site in a Referer header.
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


# --- Staff: "customer cannot log in" ------------------------------------------------------

@bp.app_template_global("account_state")
def _account_state_global(user):
    """Templates (the customer page's login-help hook) show the account state."""
    from spheremail.services.accounts import account_state

    return account_state(user)


def _customer_page(customer) -> str:
    from flask import current_app

    for endpoint in ("customers.detail", "customers.show", "customers.view"):
        if endpoint in current_app.view_functions:
            try:
                return url_for(endpoint, customer_id=customer.id)
            except Exception:  # noqa: BLE001 - the customers blueprint may name its argument differently
                continue
    return url_for("auth.home")


@bp.route("/customers/<int:customer_id>/send-password-reset", methods=["POST"])
@allow(Capability.MANAGE_CUSTOMERS)
def send_password_reset(customer_id: int):
    """Staff send a customer a reset (or first-password) email; audited."""
    from spheremail.models import Customer
    from spheremail.services.accounts import send_password_reset as send
    from spheremail.services.mail import MailError

    customer = db.get_or_404(Customer, customer_id)
    message, ok = None, False
    if not customer.is_active:
        message = "This customer is inactive and cannot use the portal: reactivate them first."
    else:
        try:
            send(customer.user, actor=current_user._get_current_object())
            db.session.commit()
            ok = True
            message = f"A password-reset email was sent to {customer.email}."
        except MailError:
            db.session.rollback()
            message = ("The email could not be sent: the mail server did not accept it. "
                       "Check the SMTP settings and try again.")
    if request.headers.get("HX-Request"):
        return render_template("customers/partials/login_help_hook.html", customer=customer,
                               login_help_message=message, login_help_ok=ok,
                               login_help_next=_safe_next(request.form.get("next")))
    flash(message, "success" if ok else "error")
    return redirect(_safe_next(request.form.get("next")) or _customer_page(customer), code=303)


# --- Log in as a customer (impersonation) -------------------------------------------------

class ImpersonateForm(FlaskForm):
    password = PasswordField("Your own password", validators=[DataRequired(), Length(max=200)])


def _impersonation_target(customer_id: int):
    from spheremail.models import Customer

    return db.get_or_404(Customer, customer_id)


@bp.route("/customers/<int:customer_id>/impersonate", methods=["GET", "POST"])
@allow(Capability.IMPERSONATE)
def impersonate(customer_id: int):
    """Log in as a customer after re-entering one's OWN password; audited, with a banner."""
    from flask import session

    from spheremail.htmx import hx_redirect, render
    from spheremail.services import audit

    customer = _impersonation_target(customer_id)
    staff = current_user._get_current_object()
    form = ImpersonateForm()
    error = None
    if not customer.is_active:
        error = "This customer is inactive: inactive customers cannot use the portal, so you cannot log in as them."
    elif form.validate_on_submit():
        refusal = login_service.confirm_own_password(staff, form.password.data, request.remote_addr)
        if refusal is None:
            audit.record("impersonation_started",
                         f"{staff.email} logged in as customer {customer.email} (mailbox {customer.mailbox_number})",
                         subject=customer, actor=staff)
            db.session.commit()
            login_user(customer.user)
            session["impersonator_id"] = staff.id
            return hx_redirect(url_for("portal.home"))
        # A wrong password here is a guess at a staff password: it is throttled and counted
        # like a failed login (per address and against the staff account).
        audit.record("impersonation_failed",
                     f"{staff.email} tried to log in as customer {customer.email} with a wrong password",
                     subject=customer, actor=staff)
        db.session.commit()
        error = refusal
    elif request.method == "POST":
        error = "Enter your own password to continue."
    return render("auth/impersonate.html", "auth/modals/impersonate.html",
                  form=form, customer=customer, error=error)


@bp.route("/stop-impersonating", methods=["POST"])
@public
def stop_impersonating():
    """Leave the customer's account and return to the staff account that started it.

    Public on purpose: it must work even if the customer was deactivated meanwhile (the
    portal then refuses them); it only acts when the session remembers an impersonator.
    """
    from flask import session

    from spheremail.models import User
    from spheremail.services import audit

    staff_id = session.get("impersonator_id")
    if not staff_id:
        return redirect(url_for("auth.home"))
    staff = db.session.get(User, int(staff_id))
    customer = current_user.customer if current_user.is_authenticated and current_user.is_customer else None
    who = staff.email if staff else f"user {staff_id}"
    whom = customer.email if customer else "a customer"
    audit.record("impersonation_ended", f"{who} stopped acting as {whom}", subject=customer, actor=staff)
    db.session.commit()
    logout_user()
    session.pop("impersonator_id", None)
    if staff is None or not staff.is_staff or not staff.is_enabled:
        session.clear()
        return redirect(url_for("auth.login"))
    login_user(staff)
    return redirect(_customer_page(customer) if customer else url_for("auth.home"))
