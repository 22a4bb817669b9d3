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
