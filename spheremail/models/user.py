"""Logins: staff (operator, admin, mail admin) and customers share one table."""
from __future__ import annotations

import datetime as dt
import enum

from flask_login import UserMixin
from sqlalchemy import String, func
from sqlalchemy.orm import Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from spheremail.extensions import db
from spheremail.models.base import utcnow


class Role(str, enum.Enum):
    """Who someone is. What each role may do lives in :mod:`spheremail.security`."""

    OPERATOR = "operator"
    ADMIN = "admin"
    MAIL_ADMIN = "mail_admin"
    CUSTOMER = "customer"

    @property
    def label(self) -> str:
        return {
            "operator": "Operator",
            "admin": "Admin",
            "mail_admin": "Mail Admin",
            "customer": "Customer",
        }[self.value]


STAFF_ROLES = (Role.OPERATOR, Role.ADMIN, Role.MAIL_ADMIN)


def normalize_email(email: str | None) -> str:
    """Emails are unique ignoring case: we store them trimmed and lower-cased."""
    return (email or "").strip().lower()


class User(UserMixin, db.Model):
    """Someone who can log in. A customer's profile is in :class:`Customer` (``user.customer``)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    role: Mapped[str] = mapped_column(String(20), default=Role.CUSTOMER.value)
    # None means the account never set a password (created by staff, not yet activated).
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_enabled: Mapped[bool] = mapped_column(default=True)  # staff accounts can be switched off
    failed_logins: Mapped[int] = mapped_column(default=0)
    locked_until: Mapped[dt.datetime | None]
    last_login_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, server_default=func.now())

    customer: Mapped["Customer | None"] = relationship(  # noqa: F821
        back_populates="user", uselist=False
    )

    def set_password(self, password: str) -> None:
        """Hash with Werkzeug's default (scrypt); tests configure a cheaper method for speed."""
        from flask import current_app

        method = current_app.config.get("PASSWORD_HASH_METHOD", "scrypt")
        self.password_hash = generate_password_hash(password, method=method)

    def check_password(self, password: str) -> bool:
        """True when ``password`` matches; False for an account that never set one."""
        if not self.password_hash:
            return False
        return check_password_hash(self.password_hash, password)

    @property
    def role_enum(self) -> Role:
        return Role(self.role)

    @property
    def is_staff(self) -> bool:
        return self.role in {r.value for r in STAFF_ROLES}

    @property
    def is_customer(self) -> bool:
        return self.role == Role.CUSTOMER.value

    def is_locked(self, now: dt.datetime | None = None) -> bool:
        """Locked after too many failed logins, until ``locked_until``."""
        return bool(self.locked_until and self.locked_until > (now or utcnow()))

    def __repr__(self) -> str:
        return f"<User {self.email} {self.role}>"


class LoginFailure(db.Model):
    """A failed login from one address, for throttling by address (accounts count their own)."""

    __tablename__ = "login_failures"

    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(64), index=True)
    email: Mapped[str] = mapped_column(String(254))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
