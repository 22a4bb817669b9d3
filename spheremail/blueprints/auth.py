"""Logging in and out, and the start page that sends each role where it works."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, Length

from spheremail.extensions import db
from spheremail.security import public
from spheremail.services import login as login_service

bp = Blueprint("auth", __name__)


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=200)])


def _safe_next(target: str | None) -> str | None:
    """Only local paths: never redirect to another site after login."""
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return None


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
