"""Online payments through the operator's gateway (Stripe): gateway customers and saved cards,
payment attempts (Checkout sessions and off-session charges) and processed webhook events.

Invoices, payments and billing details are billing's (:mod:`spheremail.models.billing`).
"""
from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import BigInteger, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from spheremail.extensions import db
from spheremail.models.base import utcnow


class GatewayCustomer(db.Model):
    """Our customer's counterpart at Stripe (created once) and the card saved for automatic charges."""

    __tablename__ = "gateway_customers"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), unique=True)
    stripe_customer_id: Mapped[str] = mapped_column(String(255), unique=True)
    # The saved card (a Stripe PaymentMethod) used for off-session charges; None until one is saved.
    payment_method_id: Mapped[str | None] = mapped_column(String(255))
    card_brand: Mapped[str | None] = mapped_column(String(30))
    card_last4: Mapped[str | None] = mapped_column(String(4))
    card_exp_month: Mapped[int | None]
    card_exp_year: Mapped[int | None]
    card_saved_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    customer: Mapped["Customer"] = relationship()  # noqa: F821

    @property
    def has_card(self) -> bool:
        return bool(self.payment_method_id)

    @property
    def card_label(self) -> str:
        """``Visa ending 4242 (12/2031)`` for people."""
        if not self.has_card:
            return ""
        brand = (self.card_brand or "card").title()
        expiry = f" (expires {self.card_exp_month:02d}/{self.card_exp_year})" if self.card_exp_year else ""
        return f"{brand} ending {self.card_last4}{expiry}"


class AttemptKind(str, enum.Enum):
    CHECKOUT = "checkout"  # the customer pressed Pay now
    OFF_SESSION = "off_session"  # the collect-due-invoices job charged a saved card


class AttemptStatus(str, enum.Enum):
    STARTED = "started"  # row written, gateway not answered yet (outcome unknown if it stays)
    OPEN = "open"  # checkout session created, customer on Stripe's page
    PROCESSING = "processing"  # checkout completed, money not yet confirmed (async methods)
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    FAILED = "failed"  # gateway error / async payment failed
    MISMATCH = "mismatch"  # paid amount or currency differs from the invoice: staff must look

    @property
    def label(self) -> str:
        return {
            "started": "Started", "open": "Waiting for the customer", "processing": "Being confirmed",
            "succeeded": "Paid", "declined": "Declined", "failed": "Failed",
            "mismatch": "Amount mismatch: needs review",
        }[self.value]


class PaymentAttempt(db.Model):
    """One try to take the money for an invoice through the gateway.

    The row is committed *before* the gateway is called, and its ``idempotency_key``
    (invoice id + kind + attempt number) goes with the call, so a retry after an unknown
    outcome replays Stripe's first answer instead of charging twice.
    """

    __tablename__ = "payment_attempts"
    __table_args__ = (
        UniqueConstraint("invoice_id", "kind", "attempt", name="uq_payment_attempts_invoice_kind_attempt"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    attempt: Mapped[int]
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    status: Mapped[str] = mapped_column(String(20), default=AttemptStatus.STARTED.value, index=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    checkout_session_id: Mapped[str | None] = mapped_column(String(255), index=True)
    payment_intent_id: Mapped[str | None] = mapped_column(String(255), index=True)
    payment_method_id: Mapped[str | None] = mapped_column(String(255))
    # Why it did not go through, for staff: decline code and the gateway's message.
    failure_code: Mapped[str | None] = mapped_column(String(80))
    failure_message: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    invoice: Mapped["Invoice"] = relationship()  # noqa: F821

    @property
    def status_enum(self) -> AttemptStatus:
        return AttemptStatus(self.status)

    @property
    def needs_attention(self) -> bool:
        return self.status in {AttemptStatus.DECLINED.value, AttemptStatus.FAILED.value,
                               AttemptStatus.MISMATCH.value}

    @property
    def reason(self) -> str:
        """The failure in words: ``insufficient_funds: Your card has insufficient funds.``"""
        parts = [p for p in (self.failure_code, self.failure_message) if p]
        return ": ".join(parts)


class StripeEvent(db.Model):
    """A webhook event that was processed. The unique event id makes a redelivery a no-op."""

    __tablename__ = "stripe_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), unique=True)
    type: Mapped[str] = mapped_column(String(100))
    outcome: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
