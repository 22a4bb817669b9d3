"""Default billing: plans, one-off fees, invoices and their lines, payments, invoice numbering.

Money is integer minor units (cents) in BigInteger columns; see :mod:`spheremail.money`.
Invoice state changes go through methods on :class:`Invoice` that refuse invalid transitions.
"""
from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import BigInteger, Date, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from spheremail.extensions import db
from spheremail.models.base import utcnow


class InvoiceStateError(ValueError):
    """An invoice cannot move to the requested state; the message is user-facing."""


class InvoiceStatus(str, enum.Enum):
    DRAFT = "draft"  # being composed by staff, no number yet
    PENDING = "pending"  # issued, awaiting payment (or export)
    PAID = "paid"
    VOID = "void"
    CLOSED_BY_EXPORT = "closed_by_export"  # handed to OfficeRnD / Nexudus, billed there

    @property
    def label(self) -> str:
        return {"draft": "Draft", "pending": "Pending", "paid": "Paid", "void": "Void",
                "closed_by_export": "Closed by export"}[self.value]


class Plan(db.Model):
    """A mailbox plan with a monthly price. Retired plans stay on record and on their customers."""

    __tablename__ = "plans"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    monthly_price_minor: Mapped[int] = mapped_column(BigInteger)
    is_active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"<Plan {self.name}>"


class OneOffFee(db.Model):
    """A charge added to a customer once; it lands on the next invoice and is then billed (invoice_id set)."""

    __tablename__ = "one_off_fees"
    __table_args__ = (Index("ix_one_off_fees_unbilled", "customer_id", "invoice_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    description: Mapped[str] = mapped_column(String(200))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    fee_date: Mapped[dt.date] = mapped_column(Date)
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id"))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    invoice: Mapped["Invoice | None"] = relationship()

    @property
    def is_billed(self) -> bool:
        return self.invoice_id is not None


class InvoiceSequence(db.Model):
    """The last invoice number used in one numbering series (one row per year).

    Incremented under a row lock inside the transaction that inserts the invoices, so a
    rolled-back transaction rolls its numbers back too: no gaps, no duplicates.
    """

    __tablename__ = "invoice_sequences"

    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    last_value: Mapped[int] = mapped_column(BigInteger, default=0)


class Invoice(db.Model):
    """An invoice. At most one per customer and billing period (the bill run relies on it)."""

    __tablename__ = "invoices"
    __table_args__ = (
        UniqueConstraint("customer_id", "period", name="uq_invoices_customer_period"),
        Index("ix_invoices_status_period", "status", "period"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # None while a draft; unique once issued.
    number: Mapped[str | None] = mapped_column(String(40), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    # "YYYY-MM" for bill-run invoices; None for invoices composed by staff.
    period: Mapped[str | None] = mapped_column(String(7))
    status: Mapped[str] = mapped_column(String(20), default=InvoiceStatus.PENDING.value)
    currency: Mapped[str] = mapped_column(String(3))
    total_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    issue_date: Mapped[dt.date | None] = mapped_column(Date)
    due_date: Mapped[dt.date | None] = mapped_column(Date)
    # The customer's billing details as they were when the invoice was issued.
    bill_to_name: Mapped[str] = mapped_column(String(200), default="")
    bill_to_address: Mapped[str] = mapped_column(Text, default="")
    bill_to_vat: Mapped[str] = mapped_column(String(40), default="")
    bill_to_email: Mapped[str] = mapped_column(String(254), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    paid_at: Mapped[dt.datetime | None]
    voided_at: Mapped[dt.datetime | None]
    void_reason: Mapped[str | None] = mapped_column(String(200))
    # Closed by an integration export (OfficeRnD / Nexudus).
    external_provider: Mapped[str | None] = mapped_column(String(40))
    external_reference: Mapped[str | None] = mapped_column(String(120))
    closed_at: Mapped[dt.datetime | None]
    # Emailing on issue: when it went out, or why it did not (shown to staff).
    emailed_at: Mapped[dt.datetime | None]
    email_error: Mapped[str | None] = mapped_column(String(300))

    customer: Mapped["Customer"] = relationship()  # noqa: F821
    lines: Mapped[list["InvoiceLine"]] = relationship(
        back_populates="invoice", order_by="InvoiceLine.position", cascade="all, delete-orphan"
    )
    payments: Mapped[list["Payment"]] = relationship(back_populates="invoice", order_by="Payment.id")

    @property
    def status_enum(self) -> InvoiceStatus:
        return InvoiceStatus(self.status)

    @property
    def is_open(self) -> bool:
        """Awaiting money: pending."""
        return self.status == InvoiceStatus.PENDING.value

    def lines_total(self) -> int:
        """The sum of the lines, which ``total_minor`` must equal."""
        return sum(line.amount_minor for line in self.lines)

    def _require(self, allowed: set[InvoiceStatus], action: str) -> None:
        if self.status_enum not in allowed:
            raise InvoiceStateError(f"A {self.status_enum.label.lower()} invoice cannot be {action}.")

    def issue(self, number: str, issue_date: dt.date, due_date: dt.date) -> None:
        """draft → pending with its number and dates."""
        self._require({InvoiceStatus.DRAFT}, "issued")
        self.number, self.issue_date, self.due_date = number, issue_date, due_date
        self.status = InvoiceStatus.PENDING.value

    def mark_paid(self, at: dt.datetime) -> None:
        """pending → paid."""
        self._require({InvoiceStatus.PENDING}, "marked as paid")
        self.status = InvoiceStatus.PAID.value
        self.paid_at = at

    def void(self, reason: str | None, at: dt.datetime) -> None:
        """draft or pending → void. Paid and exported invoices stay as they are."""
        self._require({InvoiceStatus.DRAFT, InvoiceStatus.PENDING}, "voided")
        self.status = InvoiceStatus.VOID.value
        self.voided_at = at
        self.void_reason = reason or None

    def close_by_export(self, provider: str, reference: str, at: dt.datetime) -> None:
        """pending → closed by export, keeping the external system's reference."""
        self._require({InvoiceStatus.PENDING}, "closed by export")
        if not reference:
            raise InvoiceStateError("An exported invoice needs the external reference.")
        self.status = InvoiceStatus.CLOSED_BY_EXPORT.value
        self.external_provider = provider
        self.external_reference = reference
        self.closed_at = at

    def __repr__(self) -> str:
        return f"<Invoice {self.number or 'draft'} {self.status}>"


class InvoiceLine(db.Model):
    """One line of an invoice. ``amount_minor`` = ``quantity`` × ``unit_minor``."""

    __tablename__ = "invoice_lines"

    id: Mapped[int] = mapped_column(primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"), index=True)
    position: Mapped[int] = mapped_column(default=0)
    kind: Mapped[str] = mapped_column(String(20))  # plan | recipient | fee | manual
    description: Mapped[str] = mapped_column(String(300))
    quantity: Mapped[int] = mapped_column(default=1)
    unit_minor: Mapped[int] = mapped_column(BigInteger)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    fee_id: Mapped[int | None] = mapped_column(ForeignKey("one_off_fees.id"))
    recipient_id: Mapped[int | None] = mapped_column(ForeignKey("recipients.id"))

    invoice: Mapped[Invoice] = relationship(back_populates="lines")


class Payment(db.Model):
    """Money received for an invoice: offline (recorded by staff) or through the gateway."""

    __tablename__ = "payments"

    id: Mapped[int] = mapped_column(primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"), index=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    method: Mapped[str] = mapped_column(String(30))  # bank_transfer | cash | other | card ...
    reference: Mapped[str | None] = mapped_column(String(120))
    paid_at: Mapped[dt.datetime]
    recorded_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    invoice: Mapped[Invoice] = relationship(back_populates="payments")


class BillingDetails(db.Model):
    """What a customer wants on their invoices: name, address, VAT number."""

    __tablename__ = "billing_details"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    address: Mapped[str] = mapped_column(Text, default="")
    vat_number: Mapped[str] = mapped_column(String(40), default="")
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
