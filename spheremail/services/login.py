"""Checking a login: password, account state, and throttling by account and by address."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import func

from spheremail.extensions import db
from spheremail.models import LoginFailure, User
from spheremail.models.base import utcnow
from spheremail.services import audit
from spheremail.services.accounts import find_user_by_email

GENERIC_FAILURE = "That email and password do not match an account."


@dataclass
class LoginResult:
    user: User | None
    message: str | None = None


def _address_failures(address: str | None, since: dt.datetime) -> int:
    if not address:
        return 0
    return db.session.execute(
        db.select(func.count(LoginFailure.id)).where(
            LoginFailure.address == address, LoginFailure.created_at >= since
        )
    ).scalar_one()


def _loggable_email(email: str | None) -> str:
    """What we may keep of a typed login name: people paste passwords into the email box,
    so anything that is not shaped like an email address is not written down."""
    typed = (email or "").strip()[:254]
    if "@" not in typed or any(ch.isspace() for ch in typed):
        return "(not an email address)"
    return typed


def _count_failure(user: User, now: dt.datetime) -> None:
    """One more failed password for ``user``; lock the account at the configured limit."""
    cfg = current_app.config
    user.failed_logins = (user.failed_logins or 0) + 1
    if user.failed_logins >= cfg["LOGIN_MAX_FAILURES"]:
        user.locked_until = now + dt.timedelta(seconds=cfg["LOGIN_LOCK_SECONDS"])
        user.failed_logins = 0
        audit.record("account_locked", f"{user.email} locked after failed logins",
                     subject=user, actor=user)


def confirm_own_password(user: User, password: str, address: str | None) -> str | None:
    """Re-check a logged-in user's own password (e.g. before "log in as customer").

    Throttled exactly like a login: refused while the address or the account is over its
    limit, and a wrong password counts against both. Returns None when confirmed, else the
    message to show. The caller commits.
    """
    cfg = current_app.config
    now = utcnow()
    window = now - dt.timedelta(seconds=cfg["LOGIN_LOCK_SECONDS"])
    if _address_failures(address, window) >= cfg["LOGIN_MAX_FAILURES_PER_ADDRESS"]:
        minutes = max(1, cfg["LOGIN_LOCK_SECONDS"] // 60)
        return f"Too many failed password attempts from your network. Try again in {minutes} minutes."
    if user.is_locked(now):
        return "Your account is locked after too many wrong passwords. Try again later or reset your password."
    if user.check_password(password):
        user.failed_logins = 0
        return None
    db.session.add(LoginFailure(address=address or "", email=user.email))
    _count_failure(user, now)
    return "That is not your password. Enter the password you use to log in to SphereMail."


def authenticate(email: str, password: str, address: str | None) -> LoginResult:
    """Check a login attempt; the caller commits (failures are recorded either way)."""
    cfg = current_app.config
    now = utcnow()
    window = now - dt.timedelta(seconds=cfg["LOGIN_LOCK_SECONDS"])
    if _address_failures(address, window) >= cfg["LOGIN_MAX_FAILURES_PER_ADDRESS"]:
        audit.record("login_throttled", f"too many failed logins from {address}")
        minutes = max(1, cfg["LOGIN_LOCK_SECONDS"] // 60)
        return LoginResult(None, f"Too many failed logins from your network. Try again in {minutes} minutes.")
    user = find_user_by_email(email)
    if user is not None and user.is_locked(now):
        # Guesses against a locked account still count for the address, so spraying many
        # locked accounts from one place is throttled too.
        db.session.add(LoginFailure(address=address or "", email=_loggable_email(email)))
        remaining = int((user.locked_until - now).total_seconds() // 60) + 1
        return LoginResult(None, f"This account is locked after too many failed logins. "
                                 f"Try again in {remaining} minute(s), or reset your password.")
    if user is None or not user.check_password(password):
        typed = _loggable_email(email)
        db.session.add(LoginFailure(address=address or "", email=typed))
        if user is not None:
            _count_failure(user, now)
        audit.record("login_failed", f"failed login for {typed}", subject=user, actor=None)
        return LoginResult(None, GENERIC_FAILURE)
    if not user.is_enabled:
        return LoginResult(None, "This account is switched off. Ask the operator to switch it on.")
    if user.is_customer and (user.customer is None or not user.customer.is_active):
        audit.record("login_refused", "inactive customer tried to log in", subject=user, actor=user)
        return LoginResult(None, "This mailbox account is inactive. Contact your operator to reactivate it.")
    user.failed_logins = 0
    user.locked_until = None
    user.last_login_at = now
    audit.record("login", f"{user.email} logged in", subject=user, actor=user)
    return LoginResult(user)
