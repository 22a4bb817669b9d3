"""Accounts: staff users, passwords, login checks."""
from __future__ import annotations

from spheremail.extensions import db
from spheremail.models import User
from spheremail.models.user import STAFF_ROLES, normalize_email

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 200


class AccountError(ValueError):
    """A request about an account that cannot be carried out; the message is user-facing."""


def validate_password(password: str) -> None:
    """Raise AccountError when ``password`` is too short or too long."""
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise AccountError(f"Use at least {MIN_PASSWORD_LENGTH} characters for the password.")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"Use at most {MAX_PASSWORD_LENGTH} characters for the password.")


def find_user_by_email(email: str) -> User | None:
    """The user with ``email``, ignoring case and surrounding spaces."""
    return db.session.execute(
        db.select(User).filter_by(email=normalize_email(email))
    ).scalar_one_or_none()


def create_staff_user(*, email: str, role: str, password: str | None) -> User:
    """Create a staff user; the caller commits. Raises AccountError on a taken email."""
    if role not in {r.value for r in STAFF_ROLES}:
        raise AccountError(f"Unknown staff role {role!r}.")
    email = normalize_email(email)
    if not email or "@" not in email:
        raise AccountError("Enter a valid email address.")
    if find_user_by_email(email):
        raise AccountError(f"An account with the email {email} already exists.")
    user = User(email=email, role=role)
    if password is not None:
        validate_password(password)
        user.set_password(password)
    db.session.add(user)
    db.session.flush()
    return user


# --- "Cannot log in": the account's state, in words staff can act on ------------------------

def account_state(user: User, now=None) -> tuple[str, str]:
    """Why ``user`` can or cannot log in: ``(code, reason)``.

    Codes: ``inactive`` (customer deactivated or staff account switched off), ``locked``
    (too many failed logins; the reason says until when), ``never_activated`` (no password
    set yet: a staff-created customer who never followed the first email) and ``ok``.
    """
    from spheremail.models.base import utcnow

    now = now or utcnow()
    if not user.is_enabled:
        return "inactive", "This login is switched off."
    if user.is_customer:
        customer = user.customer
        if customer is None or not customer.is_active:
            when = ""
            if customer is not None and customer.deactivated_at:
                when = f" since {customer.deactivated_at:%Y-%m-%d}"
            return "inactive", (f"The customer is inactive{when}: inactive customers cannot use the "
                                "portal. Reactivate the customer first.")
    if user.is_locked(now):
        return "locked", (f"Locked after too many failed logins until {user.locked_until:%Y-%m-%d %H:%M} "
                          "UTC. It unlocks by itself then, or at once when a new password is set "
                          "through a reset email.")
    if not user.password_hash:
        return "never_activated", ("No password has been set yet. Send a password-reset email: "
                                   "its link lets the customer choose a first password.")
    return "ok", "The account can log in. If the customer forgot the password, send a reset email."


# --- Password reset tokens ------------------------------------------------------------------
# A signed, expiring token carrying the user id and a fingerprint of the current password
# hash (and email). Setting a password changes the hash (a new salt every time), so a token
# dies once used or once the password changes by any other route; nothing is stored.

RESET_SALT = "spheremail-password-reset"


def _fingerprint(user: User) -> str:
    import hashlib

    material = f"{user.id}:{user.email}:{user.password_hash or ''}".encode()
    return hashlib.sha256(material).hexdigest()[:32]


def _serializer():
    from flask import current_app
    from itsdangerous import URLSafeTimedSerializer

    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=RESET_SALT)


def make_reset_token(user: User) -> str:
    """A one-time password-reset token for ``user`` (valid PASSWORD_RESET_MAX_AGE seconds)."""
    return _serializer().dumps({"uid": user.id, "fp": _fingerprint(user)})


def user_from_reset_token(token: str) -> User | None:
    """The user a still-valid token belongs to, or None (bad signature, expired, used, stale)."""
    from flask import current_app
    from itsdangerous import BadData

    try:
        data = _serializer().loads(token, max_age=current_app.config["PASSWORD_RESET_MAX_AGE"])
    except BadData:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("uid"), int):
        return None
    user = db.session.get(User, data["uid"])
    if user is None or data.get("fp") != _fingerprint(user):
        return None
    return user


def set_password_from_reset(user: User, password: str) -> None:
    """Set a new password from a reset link; it also lifts a lock. The caller commits."""
    from spheremail.services import audit

    validate_password(password)
    user.set_password(password)
    user.failed_logins = 0
    user.locked_until = None
    audit.record("password_reset", f"{user.email} set a new password from a reset link",
                 subject=user, actor=user)


def change_password(user: User, current: str, new: str) -> None:
    """Change a password knowing the current one. Raises AccountError; the caller commits."""
    from spheremail.services import audit

    if not user.check_password(current or ""):
        raise AccountError("The current password is not right.")
    validate_password(new)
    user.set_password(new)
    audit.record("password_changed", f"{user.email} changed their password", subject=user, actor=user)


def send_password_reset(user: User, *, actor: User | None = None) -> None:
    """Email ``user`` a reset link (also sets a first password for a never-activated account).

    Raises :class:`spheremail.services.mail.MailError` when the mail cannot be sent. When
    ``actor`` (staff) asked for it, the audit event says so; the caller commits.
    """
    from flask import current_app, url_for

    from spheremail.services import audit
    from spheremail.services.mail import send_email

    token = make_reset_token(user)
    path = url_for("auth.reset_password", token=token)
    link = current_app.config["BASE_URL"].rstrip("/") + path
    first_time = not user.password_hash
    subject = "Set your SphereMail password" if first_time else "Reset your SphereMail password"
    minutes = current_app.config["PASSWORD_RESET_MAX_AGE"] // 60
    send_email(user.email, subject, "email/password_reset.txt", user=user, link=link,
               first_time=first_time, minutes=minutes)
    if actor is not None:
        audit.record("password_reset_sent", f"{actor.email} sent a password-reset email to {user.email}",
                     subject=user, actor=actor)
    else:
        audit.record("password_reset_requested", f"password-reset email sent to {user.email}",
                     subject=user, actor=None)


def email_taken(email: str, *, except_user: User | None = None) -> bool:
    """True when another login already uses ``email`` (compared ignoring case).

    The portal asks this first so a customer is told "already used" without learning
    whose account it is (the staff-side message names the holder).
    """
    from sqlalchemy import func

    query = db.select(func.count(User.id)).where(func.lower(User.email) == normalize_email(email))
    if except_user is not None:
        query = query.where(User.id != except_user.id)
    return db.session.execute(query).scalar_one() > 0
