"""Customers (mailbox renters), their mailbox-number history and additional recipients."""
from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import ForeignKey, Index, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column, relationship

from spheremail.extensions import db
from spheremail.models.base import utcnow


class CustomerStatus(str, enum.Enum):
    ACTIVE = "active"
    INACTIVE = "inactive"


class Customer(db.Model):
    """A customer renting a mailbox. Never deleted: deactivation keeps every record."""

    __tablename__ = "customers"
    # The staff list filters by status and pages in mailbox-number order (services/customers.py).
    __table_args__ = (Index("ix_customers_status_mailbox_number", "status", "mailbox_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), unique=True)
    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    company: Mapped[str | None] = mapped_column(String(200))
    phone: Mapped[str | None] = mapped_column(String(50))
    # Unique and never removed; changing an inactive customer's number frees the old one.
    mailbox_number: Mapped[int] = mapped_column(unique=True)
    status: Mapped[str] = mapped_column(String(20), default=CustomerStatus.ACTIVE.value, index=True)
    # A scheduled deactivation: the customer becomes inactive ON this date (first day without service).
    deactivate_on: Mapped[dt.date | None]
    deactivate_reason: Mapped[str | None] = mapped_column(String(40))  # "end_of_period" | "date"
    deactivated_at: Mapped[dt.datetime | None]
    signed_up_via: Mapped[str] = mapped_column(String(20), default="staff")  # "portal" | "staff" | "demo"
    plan_id: Mapped[int | None] = mapped_column(ForeignKey("plans.id"), index=True)  # billing: the customer's plan
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, server_default=func.now())
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    user: Mapped["User"] = relationship(back_populates="customer", lazy="joined")  # noqa: F821
    recipients: Mapped[list["Recipient"]] = relationship(
        back_populates="customer", order_by="Recipient.id"
    )
    number_changes: Mapped[list["MailboxNumberChange"]] = relationship(
        back_populates="customer", order_by="MailboxNumberChange.id.desc()"
    )

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    @property
    def email(self) -> str:
        return self.user.email

    @property
    def is_active(self) -> bool:
        return self.status == CustomerStatus.ACTIVE.value

    def __repr__(self) -> str:
        return f"<Customer #{self.mailbox_number} {self.full_name}>"


class MailboxNumberChange(db.Model):
    """One change of a customer's mailbox number (the first assignment has old_number None)."""

    __tablename__ = "mailbox_number_changes"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    old_number: Mapped[int | None]
    new_number: Mapped[int]
    changed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    customer: Mapped[Customer] = relationship(back_populates="number_changes")
    changed_by: Mapped["User | None"] = relationship()  # noqa: F821


class RecipientStatus(str, enum.Enum):
    FREE = "free"
    PAID = "paid"
    INACTIVE = "inactive"


class Recipient(db.Model):
    """An additional person whose mail is the customer's mail. No login, no notifications."""

    __tablename__ = "recipients"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    company: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default=RecipientStatus.PAID.value)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    note: Mapped[str | None] = mapped_column(Text)

    customer: Mapped[Customer] = relationship(back_populates="recipients")

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()
