"""Default billing: settings, plans, one-off fees, the monthly bill run, void, payments, email on issue.

The caller commits, except :func:`run_bill_run`, which commits batch by batch because it is
a long job that must be safe to resume.

Bill run rules (write them in the README):

- **Billed in advance, whole months.** The run for period ``YYYY-MM`` bills the month that
  starts on its 1st. A customer is billed for it when, at the time of the run, they are
  active, were created before the period ends, and are not scheduled to be deactivated on
  or before the period's 1st. So a cancellation that falls *inside* the period (e.g. a
  30-day notice ending on the 12th) does not reduce that month's invoice: the customer was
  active on the 1st and pays the whole month; no credit is given. A cancellation "at the end
  of the period" (``deactivate_on`` = the next 1st) means no invoice for the next period.
  The rule reads only ``deactivate_on``, so it does not matter whether the daily
  cancellations job ran before the bill run on the 1st.
- **Inactive customers get nothing**, whatever their plan or fees.
- **What an invoice holds:** the customer's plan (if any) at its current monthly price, one
  line per *paid* additional recipient at the recipient price (free and inactive recipients:
  nothing), and every unbilled one-off fee dated on or before the period's last day. A
  customer with no plan, no paid recipient and no unbilled fee gets no invoice.
- **Once per customer and period**, enforced by a UNIQUE constraint on (customer, period):
  running it again, or in two processes at once, creates nothing new. A voided invoice
  still counts: the bill run does not bill that customer again for that period.
- **Numbers** are ``{prefix}{year}-{seq:05d}``, one gapless series per year of issue, taken
  from a counter row locked in the same transaction as the invoices it numbers.
- Customers connected to a coworking system are billed here like everyone else; their
  invoices stay pending until the integration exports them (see :func:`is_externally_billed`).
"""
from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

from flask import current_app
from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from spheremail.extensions import db
from spheremail.models import Customer, Recipient, RecipientStatus, Setting, User
from spheremail.models.base import today as utc_today
from spheremail.models.base import utcnow
from spheremail.models.billing import (
    BillingDetails,
    Invoice,
    InvoiceLine,
    InvoiceSequence,
    InvoiceStateError,
    InvoiceStatus,
    OneOffFee,
    Payment,
    Plan,
)
from spheremail.models.customer import CustomerStatus
from spheremail.money import BILLING_CURRENCIES, MoneyError, format_amount, format_money, parse_amount
from spheremail.services import audit


class BillingError(ValueError):
    """Input that cannot be saved. ``errors`` maps a form field to a user-facing message."""

    def __init__(self, errors: dict[str, str] | str):
        if isinstance(errors, str):
            errors = {"_": errors}
        self.errors = errors
        super().__init__("; ".join(errors.values()))


# --------------------------------------------------------------------------- settings

SECRET_KEYS = {
    "gateway_secret_key": "billing_gateway_secret_key_encrypted",
    "gateway_webhook_secret": "billing_gateway_webhook_secret_encrypted",
}
_PREFIX_RE = re.compile(r"^[A-Za-z0-9/_-]{0,12}$")
_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces
OFFLINE_METHODS = {"bank_transfer": "Bank transfer", "cash": "Cash", "card_terminal": "Card terminal",
                   "other": "Other"}


@dataclass
class BillingSettings:
    """Billing settings as typed values. Secrets are only reported as set or not."""

    currency: str
    recipient_price_minor: int
    payment_terms_days: int
    invoice_prefix: str
    email_invoices: bool
    gateway_publishable_key: str
    gateway_secret_key_set: bool
    gateway_webhook_secret_set: bool


_SETTING_KEYS = ("billing_currency", "billing_recipient_price_minor", "billing_payment_terms_days",
                 "billing_invoice_prefix", "billing_email_invoices", "billing_gateway_publishable_key",
                 "billing_gateway_secret_key_encrypted", "billing_gateway_webhook_secret_encrypted")


def get_settings() -> BillingSettings:
    """Read every billing setting in one query."""
    import json

    from spheremail.models.setting import DEFAULTS

    rows = dict(db.session.execute(select(Setting.key, Setting.value).where(Setting.key.in_(_SETTING_KEYS))).all())
    v = {k: (json.loads(rows[k]) if k in rows else DEFAULTS[k]) for k in _SETTING_KEYS}
    return BillingSettings(
        currency=v["billing_currency"],
        recipient_price_minor=int(v["billing_recipient_price_minor"]),
        payment_terms_days=int(v["billing_payment_terms_days"]),
        invoice_prefix=v["billing_invoice_prefix"],
        email_invoices=bool(v["billing_email_invoices"]),
        gateway_publishable_key=v["billing_gateway_publishable_key"],
        gateway_secret_key_set=bool(v["billing_gateway_secret_key_encrypted"]),
        gateway_webhook_secret_set=bool(v["billing_gateway_webhook_secret_encrypted"]),
    )


def save_settings(form: dict, *, actor=None) -> BillingSettings:
    """Validate and store billing settings from form data; raise BillingError, storing nothing, on bad input.

    Secret fields left empty keep the stored secret; ``clear_<name>`` removes it.
    """
    current = get_settings()
    errors: dict[str, str] = {}
    currency = (form.get("currency") or "").strip().upper()
    if currency not in BILLING_CURRENCIES:
        errors["currency"] = "Choose a currency from the list."
    price_currency = currency if currency in BILLING_CURRENCIES else current.currency
    try:
        recipient_price = parse_amount(form.get("recipient_price"), price_currency)
    except MoneyError as exc:
        errors["recipient_price"] = str(exc)
    terms_raw = (form.get("payment_terms_days") or "").strip()
    # Length first: int() of thousands of digits is refused by Python itself.
    if (len(terms_raw) > 3 or not terms_raw.isascii() or not terms_raw.isdigit()
            or not 0 <= int(terms_raw) <= 365):
        errors["payment_terms_days"] = "Enter a whole number of days between 0 and 365."
    prefix = (form.get("invoice_prefix") or "").strip()
    if not _PREFIX_RE.match(prefix):
        errors["invoice_prefix"] = "Use up to 12 letters, digits, dashes, slashes or underscores."
    publishable = (form.get("gateway_publishable_key") or "").strip()
    if publishable and not _KEY_RE.match(publishable):
        errors["gateway_publishable_key"] = "Paste the key exactly as the gateway shows it (no spaces, at most 255 characters)."
    secrets: dict[str, str | None] = {}
    for name in SECRET_KEYS:
        value = (form.get(name) or "").strip()
        if form.get(f"clear_{name}"):
            secrets[name] = ""
        elif value:
            if not _KEY_RE.match(value):
                errors[name] = "Paste the key exactly as the gateway shows it (no spaces, at most 255 characters)."
            secrets[name] = value
    if currency in BILLING_CURRENCIES and currency != current.currency and _has_issued_invoices():
        errors["currency"] = ("The currency cannot change once invoices exist: their amounts are in "
                              f"{current.currency}.")
    if errors:
        raise BillingError(errors)

    from spheremail.crypto import encrypt

    Setting.put("billing_currency", currency)
    Setting.put("billing_recipient_price_minor", recipient_price)
    Setting.put("billing_payment_terms_days", int(terms_raw))
    Setting.put("billing_invoice_prefix", prefix)
    Setting.put("billing_email_invoices", bool(form.get("email_invoices")))
    Setting.put("billing_gateway_publishable_key", publishable)
    for name, value in secrets.items():
        Setting.put(SECRET_KEYS[name], encrypt(value) if value else "")
    changed = ", ".join(sorted(secrets)) or "no secrets"
    audit.record("billing_settings_saved", f"billing settings saved ({changed} changed)", actor=actor)
    return get_settings()


def _has_issued_invoices() -> bool:
    return db.session.execute(select(Invoice.id).limit(1)).first() is not None


def gateway_secret(name: str = "gateway_secret_key") -> str | None:
    """The decrypted gateway secret (``gateway_secret_key`` or ``gateway_webhook_secret``), or None."""
    from spheremail.crypto import decrypt

    token = Setting.get(SECRET_KEYS[name])
    return decrypt(token) if token else None


# --------------------------------------------------------------------------- plans

def _text(form: dict, name: str, label: str, max_len: int, errors: dict, *, required: bool = True) -> str:
    value = (form.get(name) or "").strip()
    if required and not value:
        errors[name] = f"Enter {label}."
    elif len(value) > max_len:
        errors[name] = f"Use at most {max_len} characters for {label}."
    return value


def save_plan(form: dict, plan: Plan | None = None, *, actor=None) -> Plan:
    """Create (``plan`` None) or update a plan from form data; raise BillingError on bad input."""
    errors: dict[str, str] = {}
    name = _text(form, "name", "a name", 100, errors)
    description = _text(form, "description", "the description", 1000, errors, required=False)
    currency = get_settings().currency
    try:
        price = parse_amount(form.get("monthly_price"), currency)
    except MoneyError as exc:
        errors["monthly_price"] = str(exc)
    if name and "name" not in errors:
        clash = db.session.execute(
            select(Plan.id).where(func.lower(Plan.name) == name.lower(), Plan.id != (plan.id if plan else -1))
        ).first()
        if clash:
            errors["name"] = f"A plan named {name} already exists."
    if errors:
        raise BillingError(errors)
    if plan is None:
        plan = Plan(name=name, description=description, monthly_price_minor=price, is_active=True)
        db.session.add(plan)
        db.session.flush()
        audit.record("plan_created", f"plan {name} created at {format_money(price, currency)}",
                     subject=plan, actor=actor)
    else:
        plan.name, plan.description, plan.monthly_price_minor = name, description, price
        audit.record("plan_updated", f"plan {name} saved at {format_money(price, currency)}",
                     subject=plan, actor=actor)
    return plan


def set_plan_active(plan: Plan, active: bool, *, actor=None) -> None:
    """Retire a plan (no new customers get it; current ones keep it) or bring it back."""
    plan.is_active = active
    audit.record("plan_reactivated" if active else "plan_retired", f"plan {plan.name}", subject=plan, actor=actor)


def plans(active_only: bool = False) -> list[Plan]:
    """Plans by name, optionally only the active ones."""
    q = select(Plan).order_by(Plan.is_active.desc(), Plan.name)
    if active_only:
        q = q.where(Plan.is_active.is_(True))
    return list(db.session.execute(q).scalars())


# --------------------------------------------------------------------------- customers

def is_externally_billed(customer) -> bool:
    """True when ``customer`` is connected to a coworking system (OfficeRnD, Nexudus) that bills them.

    Such customers are still invoiced by the bill run; their invoices stay pending until the
    integration exports them, and payment collection (Pay now, automatic charging) skips them.
    The connection state lives in the integrations feature: an enabled, connected
    integration with invoice export on, and an active member link for the customer.
    """
    from spheremail.services.member_sync import is_externally_billed as _connected_and_exported

    return _connected_and_exported(customer)


def set_customer_plan(customer: Customer, plan_id, *, actor=None) -> None:
    """Give ``customer`` a plan (an active one, or the one they already have) or none (empty)."""
    raw = str(plan_id or "").strip()
    if not raw:
        new_plan = None
    else:
        if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
            raise BillingError({"plan_id": "Choose a plan from the list."})
        new_plan = db.session.get(Plan, int(raw))
        if new_plan is None or (not new_plan.is_active and new_plan.id != customer.plan_id):
            raise BillingError({"plan_id": "Choose a plan from the list."})
    customer.plan_id = new_plan.id if new_plan else None
    audit.record("customer_plan_set", f"plan set to {new_plan.name if new_plan else 'none'}",
                 subject=customer, actor=actor)


def _parse_date(raw: str | None, field_name: str, errors: dict, label: str) -> dt.date | None:
    raw = (raw or "").strip()
    try:
        value = dt.date.fromisoformat(raw) if len(raw) == 10 else None
    except ValueError:
        value = None
    if value is None:
        errors[field_name] = f"Enter {label} as a date (YYYY-MM-DD)."
    elif not 2000 <= value.year <= 2100:
        errors[field_name] = f"Enter {label} between the years 2000 and 2100."
        value = None
    return value


def add_fee(customer: Customer, form: dict, *, actor=None) -> OneOffFee:
    """Add a one-off fee (description, amount, date) to ``customer``; it goes on their next invoice."""
    errors: dict[str, str] = {}
    description = _text(form, "description", "a description", 200, errors)
    currency = get_settings().currency
    try:
        amount = parse_amount(form.get("amount"), currency, allow_zero=False)
    except MoneyError as exc:
        errors["amount"] = str(exc)
    fee_date = _parse_date(form.get("fee_date"), "fee_date", errors, "the date")
    if not customer.is_active and not errors:
        errors["_"] = "This customer is inactive: inactive customers get no new charges."
    if errors:
        raise BillingError(errors)
    fee = OneOffFee(customer_id=customer.id, description=description, amount_minor=amount,
                    fee_date=fee_date, created_by_id=getattr(actor, "id", None))
    db.session.add(fee)
    db.session.flush()
    audit.record("fee_added", f"{description}: {format_money(amount, currency)}", subject=customer, actor=actor)
    return fee


def delete_fee(fee: OneOffFee, *, actor=None) -> None:
    """Remove a fee that is not billed yet; a billed fee is part of an invoice and stays."""
    if fee.is_billed:
        raise BillingError("This fee is already on an invoice and cannot be removed.")
    audit.record("fee_removed", f"{fee.description}", subject=fee, actor=actor)
    db.session.delete(fee)


def fees_for_customer(customer: Customer) -> list[OneOffFee]:
    """All the customer's fees, newest first."""
    return list(db.session.execute(
        select(OneOffFee).where(OneOffFee.customer_id == customer.id)
        .order_by(OneOffFee.fee_date.desc(), OneOffFee.id.desc())
    ).scalars())


def invoices_for_customer(customer: Customer, *, include_drafts: bool = False) -> list[Invoice]:
    """The customer's invoices, newest first; drafts only when asked (customers never see them)."""
    q = select(Invoice).where(Invoice.customer_id == customer.id)
    if not include_drafts:
        q = q.where(Invoice.status != InvoiceStatus.DRAFT.value)
    return list(db.session.execute(q.order_by(Invoice.issue_date.desc(), Invoice.id.desc())).scalars())


def billing_details_for(customer: Customer) -> BillingDetails | None:
    """The customer's stored billing details, if any."""
    return db.session.execute(
        select(BillingDetails).where(BillingDetails.customer_id == customer.id)
    ).scalar_one_or_none()


_VAT_RE = re.compile(r"^[A-Z]{2}[A-Z0-9+*]{2,13}$")
_MARKUP = set("<>")


def save_billing_details(customer: Customer, form: dict, *, actor=None) -> BillingDetails:
    """Store the name, address and VAT number the customer wants on future invoices.

    Raises BillingError (nothing stored) for over-long text, markup (< or >) in the name or
    address, or a VAT number without its country prefix; the VAT number is kept without
    spaces, dots or dashes, upper case.
    """
    errors: dict[str, str] = {}
    name = _text(form, "name", "the name for invoices", 200, errors, required=False)
    address = _text(form, "address", "the address", 1000, errors, required=False)
    # Printed on invoices (and in emails and PDFs later): refuse markup rather than store it.
    for key, label in (("name", "The name"), ("address", "The address")):
        if key not in errors and _MARKUP & set(form.get(key) or ""):
            errors[key] = f"{label} cannot contain < or >."
    vat = re.sub(r"[\s.-]", "", (form.get("vat_number") or "")).upper()
    if vat and not _VAT_RE.match(vat):
        errors["vat_number"] = "Enter the VAT number with its country prefix, e.g. NL123456789B01."
    if errors:
        raise BillingError(errors)
    details = billing_details_for(customer)
    if details is None:
        details = BillingDetails(customer_id=customer.id)
        db.session.add(details)
    details.name, details.address, details.vat_number = name, address, vat
    audit.record("billing_details_saved", "billing details saved", subject=customer, actor=actor)
    return details


# --------------------------------------------------------------------------- the bill run

_PERIOD_RE = re.compile(r"^([0-9]{4})-([0-9]{2})$")  # ASCII digits only: \d also matches "２"


def parse_period(text: str) -> dt.date:
    """``"YYYY-MM"`` to the first day of that month; BillingError when malformed."""
    m = _PERIOD_RE.match((text or "").strip())
    if not m or not 1 <= int(m.group(2)) <= 12 or not 2000 <= int(m.group(1)) <= 2100:
        raise BillingError({"period": "Give the period as YYYY-MM, e.g. 2026-03."})
    return dt.date(int(m.group(1)), int(m.group(2)), 1)


def period_bounds(start: dt.date) -> tuple[dt.date, dt.date]:
    """(first day, last day) of the month starting at ``start``."""
    last = calendar.monthrange(start.year, start.month)[1]
    return start, start.replace(day=last)


@dataclass
class BillRunResult:
    period: str
    created: int = 0
    already_billed: int = 0
    nothing_to_bill: int = 0
    invoice_ids: list[int] = field(default_factory=list)
    emailed: int = 0
    email_failed: int = 0
    retries: int = 0  # batches redone after losing a race (stays 0 while the counter lock works)

    def summary(self) -> str:
        text = (f"{self.period}: {self.created} invoice(s) created, {self.already_billed} already billed, "
                f"{self.nothing_to_bill} with nothing to bill")
        if self.emailed or self.email_failed:
            text += f"; {self.emailed} emailed, {self.email_failed} email(s) failed"
        return text

    def message(self) -> str:
        """The outcome in words for staff, e.g. "12 invoices created for 2026-11"."""
        if self.created:
            text = f"{self.created} invoice{'s' if self.created != 1 else ''} created for {self.period}"
        elif not self.nothing_to_bill:
            return f"Nothing new: every active customer already has an invoice for {self.period}."
        else:
            text = f"Nothing new for {self.period}"
        extra = []
        if self.already_billed:
            extra.append(f"{self.already_billed} customer(s) already had one")
        if self.nothing_to_bill:
            extra.append(f"{self.nothing_to_bill} customer(s) have nothing to bill (no plan, paid recipient or fee)")
        if self.email_failed:
            extra.append(f"{self.email_failed} email(s) could not be sent")
        return text + (": " + "; ".join(extra) if extra else "") + "."


def _ensure_sequence(key: str) -> None:
    """Create the counter row of a series once (committed on its own: an empty row makes no gap)."""
    if db.session.get(InvoiceSequence, key) is not None:
        return
    try:
        with db.session.begin_nested():
            db.session.add(InvoiceSequence(key=key, last_value=0))
    except IntegrityError:
        pass  # another process created it
    db.session.commit()


def _lock_sequence(key: str) -> int:
    """Lock the counter row for this transaction and return its value.

    PostgreSQL: SELECT ... FOR UPDATE (a second bill run waits here until we commit).
    SQLite: a write must be the transaction's first statement, so a no-op UPDATE takes the
    database write lock before we read anything; the other writer waits (busy_timeout).
    """
    if db.engine.dialect.name == "postgresql":
        return db.session.execute(
            select(InvoiceSequence.last_value).where(InvoiceSequence.key == key).with_for_update()
        ).scalar_one()
    return db.session.execute(
        update(InvoiceSequence).where(InvoiceSequence.key == key)
        .values(last_value=InvoiceSequence.last_value).returning(InvoiceSequence.last_value)
    ).scalar_one()


def next_invoice_number(issue_date: dt.date, prefix: str | None = None) -> str:
    """Take the next number of the series for ``issue_date`` (for staff-issued drafts; the caller commits).

    The counter row stays locked until the caller's transaction ends.
    """
    key = str(issue_date.year)
    _ensure_sequence(key)
    value = _lock_sequence(key) + 1
    db.session.execute(update(InvoiceSequence).where(InvoiceSequence.key == key).values(last_value=value))
    return format_number(prefix if prefix is not None else get_settings().invoice_prefix, issue_date.year, value)


def format_number(prefix: str, year: int, seq: int) -> str:
    """``INV-2026-00042``."""
    return f"{prefix}{year}-{seq:05d}"


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def run_bill_run(period: str | dt.date, *, run_date: dt.date | None = None, batch_size: int = 500,
                 on_batch: Callable[[], object] | None = None, send_emails: bool = True) -> BillRunResult:
    """Create this period's invoices (see the module docstring for the rules). Commits per batch.

    Safe to run again and concurrently: already billed customers are skipped, and the
    UNIQUE (customer, period) constraint is the backstop when two runs race. ``on_batch``
    is called after each committed batch (the job renews its lease there). With emailing on,
    the period's pending invoices never emailed (a crashed run) are emailed too, once; callers
    hold the job's lease (job, button, CLI), so two runs do not email the same invoice.
    """
    start = parse_period(period) if isinstance(period, str) else period.replace(day=1)
    period_key = start.strftime("%Y-%m")
    _, end = period_bounds(start)
    next_start = end + dt.timedelta(days=1)
    run_date = run_date or utc_today()
    settings = get_settings()
    due_date = run_date + dt.timedelta(days=settings.payment_terms_days)
    result = BillRunResult(period=period_key)

    # Who is billable for this period (one query), minus who already has its invoice (one query).
    candidates = db.session.execute(
        select(Customer.id).where(
            Customer.status == CustomerStatus.ACTIVE.value,
            or_(Customer.deactivate_on.is_(None), Customer.deactivate_on > start),
            Customer.created_at < dt.datetime.combine(next_start, dt.time()),
        ).order_by(Customer.id)
    ).scalars().all()
    billed = set(db.session.execute(
        select(Invoice.customer_id).where(Invoice.period == period_key)
    ).scalars())
    todo = [cid for cid in candidates if cid not in billed]
    result.already_billed = len(candidates) - len(todo)
    emailing = send_emails and settings.email_invoices
    # Invoices of this period a run created but never emailed (it crashed before emailing, or
    # emailing was off then): a resumed or repeated run emails them, once (emailed_at is set).
    unsent = db.session.execute(
        select(Invoice.id).where(Invoice.period == period_key, Invoice.status == InvoiceStatus.PENDING.value,
                                 Invoice.emailed_at.is_(None), Invoice.email_error.is_(None))
        .order_by(Invoice.id)
    ).scalars().all() if emailing else []
    db.session.commit()  # end the read so each batch starts with its lock (SQLite)
    if not todo:
        if unsent:
            result.emailed, result.email_failed = email_invoices(unsent)
        return result

    plan_rows = {p.id: (p.name, p.monthly_price_minor) for p in db.session.execute(select(Plan)).scalars()}
    seq_key = str(run_date.year)
    _ensure_sequence(seq_key)
    for chunk in _chunks(todo, batch_size):
        for attempt in range(3):
            try:
                created, empty, already = _bill_batch(chunk, period_key, end, run_date, due_date,
                                                      settings, plan_rows, seq_key)
                db.session.commit()
                break
            except IntegrityError:
                # Another run inserted one of these invoices between our check and insert:
                # our batch (and its numbers) rolled back; re-read and try again.
                db.session.rollback()
                result.retries += 1
                if attempt == 2:
                    raise
        result.invoice_ids.extend(created)
        result.created += len(created)
        result.nothing_to_bill += empty
        result.already_billed += already
        if on_batch is not None:
            on_batch()
    if emailing and (unsent or result.invoice_ids):
        result.emailed, result.email_failed = email_invoices(list(unsent) + result.invoice_ids)
    return result


def _bill_batch(customer_ids: list[int], period_key: str, period_end: dt.date, run_date: dt.date,
                due_date: dt.date, settings: BillingSettings, plan_rows: dict, seq_key: str):
    """One transaction: lock the counter, re-check, build and insert this batch's invoices.

    A fixed handful of statements whatever the batch size. Returns (new invoice ids,
    customers with nothing to bill, customers billed meanwhile by another run).
    """
    last_value = _lock_sequence(seq_key)
    # Under the lock: a concurrent run that committed before us is visible now.
    done = set(db.session.execute(
        select(Invoice.customer_id).where(Invoice.period == period_key, Invoice.customer_id.in_(customer_ids))
    ).scalars())
    ids = [cid for cid in customer_ids if cid not in done]
    if not ids:
        return [], 0, len(done)
    people = db.session.execute(
        select(Customer.id, Customer.plan_id, Customer.first_name, Customer.last_name, Customer.company,
               User.email, BillingDetails.name, BillingDetails.address, BillingDetails.vat_number)
        .join(User, User.id == Customer.user_id)
        .outerjoin(BillingDetails, BillingDetails.customer_id == Customer.id)
        .where(Customer.id.in_(ids), Customer.status == CustomerStatus.ACTIVE.value)
        .order_by(Customer.id)
    ).all()
    recipients: dict[int, list] = {}
    for row in db.session.execute(
        select(Recipient.customer_id, Recipient.id, Recipient.first_name, Recipient.last_name)
        .where(Recipient.customer_id.in_(ids), Recipient.status == RecipientStatus.PAID.value)
        .order_by(Recipient.customer_id, Recipient.id)
    ):
        recipients.setdefault(row.customer_id, []).append(row)
    fees: dict[int, list] = {}
    for row in db.session.execute(
        select(OneOffFee.customer_id, OneOffFee.id, OneOffFee.description, OneOffFee.amount_minor,
               OneOffFee.fee_date)
        .where(OneOffFee.customer_id.in_(ids), OneOffFee.invoice_id.is_(None), OneOffFee.fee_date <= period_end)
        .order_by(OneOffFee.customer_id, OneOffFee.fee_date, OneOffFee.id)
    ):
        fees.setdefault(row.customer_id, []).append(row)

    recipient_price = settings.recipient_price_minor
    invoice_rows, lines_by_customer = [], {}
    seq = last_value
    empty = 0
    now = utcnow()
    for p in people:
        lines = []
        if p.plan_id is not None and p.plan_id in plan_rows:
            name, price = plan_rows[p.plan_id]
            lines.append(dict(kind="plan", description=f"{name} plan, {period_key}", quantity=1,
                              unit_minor=price, amount_minor=price, fee_id=None, recipient_id=None))
        for r in recipients.get(p.id, ()):
            lines.append(dict(kind="recipient",
                              description=f"Additional recipient {r.first_name} {r.last_name}, {period_key}".strip(),
                              quantity=1, unit_minor=recipient_price, amount_minor=recipient_price,
                              fee_id=None, recipient_id=r.id))
        for f in fees.get(p.id, ()):
            lines.append(dict(kind="fee", description=f"{f.description} ({f.fee_date.isoformat()})",
                              quantity=1, unit_minor=f.amount_minor, amount_minor=f.amount_minor,
                              fee_id=f.id, recipient_id=None))
        if not lines:
            empty += 1
            continue
        seq += 1
        full_name = f"{p.first_name} {p.last_name}".strip()
        invoice_rows.append(dict(
            number=format_number(settings.invoice_prefix, run_date.year, seq),
            customer_id=p.id, period=period_key, status=InvoiceStatus.PENDING.value,
            currency=settings.currency, total_minor=sum(line["amount_minor"] for line in lines),
            issue_date=run_date, due_date=due_date,
            bill_to_name=(p.name or (f"{p.company} ({full_name})" if p.company else full_name))[:200],
            bill_to_address=p.address or "", bill_to_vat=p.vat_number or "", bill_to_email=p.email,
            created_at=now,
        ))
        lines_by_customer[p.id] = lines
    if not invoice_rows:
        return [], empty, len(done)
    # One multi-row INSERT, then one SELECT for the new ids: RETURNING with a guaranteed row
    # order would fall back to one INSERT per row on SQLite.
    # Core executemany (one statement): ORM bulk insert would split rows by which values are None.
    db.session.execute(Invoice.__table__.insert(), invoice_rows)
    inserted = db.session.execute(
        select(Invoice.id, Invoice.customer_id)
        .where(Invoice.period == period_key, Invoice.customer_id.in_(list(lines_by_customer)))
        .order_by(Invoice.id)
    ).all()
    line_rows, fee_updates = [], []
    for invoice_id, customer_id in inserted:
        for position, line in enumerate(lines_by_customer[customer_id], start=1):
            line_rows.append(dict(line, invoice_id=invoice_id, position=position))
            if line["fee_id"] is not None:
                fee_updates.append({"id": line["fee_id"], "invoice_id": invoice_id})
    db.session.execute(InvoiceLine.__table__.insert(), line_rows)
    if fee_updates:
        fees_table = OneOffFee.__table__
        db.session.execute(
            fees_table.update().where(fees_table.c.id == bindparam("fee_pk")).values(invoice_id=bindparam("inv_id")),
            [{"fee_pk": f["id"], "inv_id": f["invoice_id"]} for f in fee_updates],
        )
    db.session.execute(update(InvoiceSequence).where(InvoiceSequence.key == seq_key).values(last_value=seq))
    return [row[0] for row in inserted], empty, len(done)


# --------------------------------------------------------------------------- state changes

def mark_invoice_paid(invoice: Invoice, method: str, reference: str | None, at: dt.datetime,
                      *, amount_minor: int | None = None, actor=None) -> Payment:
    """Record a payment of the whole invoice and mark it paid; the caller commits.

    Used by staff (offline payments) and by the payment gateway. The invoice row is locked
    first (PostgreSQL), so a webhook and a staff member cannot both pay it; raises
    InvoiceStateError when it is not pending.
    """
    db.session.refresh(invoice, with_for_update=True)
    invoice.mark_paid(at)
    payment = Payment(invoice_id=invoice.id, amount_minor=invoice.total_minor if amount_minor is None else amount_minor,
                      currency=invoice.currency, method=method, reference=reference or None, paid_at=at,
                      recorded_by_id=getattr(actor, "id", None))
    db.session.add(payment)
    audit.record("invoice_paid", f"invoice {invoice.number} paid ({method}"
                 f"{', ref ' + reference if reference else ''})", subject=invoice, actor=actor)
    return payment


def record_offline_payment(invoice: Invoice, form: dict, *, actor=None) -> Payment:
    """Validate the offline payment form (method, date, reference) and mark the invoice paid."""
    errors: dict[str, str] = {}
    method = (form.get("method") or "").strip()
    if method not in OFFLINE_METHODS:
        errors["method"] = "Choose how it was paid."
    paid_on = _parse_date(form.get("paid_on"), "paid_on", errors, "the payment date")
    if paid_on and paid_on > utc_today():
        errors["paid_on"] = "The payment date cannot be in the future."
    reference = _text(form, "reference", "the reference", 120, errors, required=False)
    if not invoice.is_open:
        errors["_"] = f"A {invoice.status_enum.label.lower()} invoice cannot be marked as paid."
    if errors:
        raise BillingError(errors)
    try:
        return mark_invoice_paid(invoice, method, reference, dt.datetime.combine(paid_on, dt.time(12)), actor=actor)
    except InvoiceStateError as exc:
        raise BillingError(str(exc)) from exc


def void_invoice(invoice: Invoice, reason: str | None, *, actor=None) -> None:
    """Void a draft or pending invoice; raise BillingError otherwise. Its fees stay billed by it."""
    reason = (reason or "").strip()
    if len(reason) > 200:
        raise BillingError({"reason": "Use at most 200 characters for the reason."})
    db.session.refresh(invoice, with_for_update=True)
    try:
        invoice.void(reason, utcnow())
    except InvoiceStateError as exc:
        raise BillingError(str(exc)) from exc
    audit.record("invoice_voided", f"invoice {invoice.number} voided{': ' + reason if reason else ''}",
                 subject=invoice, actor=actor)


def close_by_export(invoice: Invoice, provider: str, reference: str, at: dt.datetime) -> None:
    """For the integrations: the invoice was exported to ``provider`` as ``reference``; the caller commits."""
    invoice.close_by_export(provider, reference, at)
    audit.record("invoice_exported", f"invoice {invoice.number} exported to {provider} as {reference}",
                 subject=invoice, actor=None)


# --------------------------------------------------------------------------- email on issue

def email_invoices(invoice_ids: list[int]) -> tuple[int, int]:
    """Email each invoice to its customer after it was committed; record the outcome on it.

    A failed send is written on the invoice (``email_error``) for staff to see; it never
    undoes the invoice. No transaction is open while talking to the SMTP server.
    """
    from sqlalchemy.orm import selectinload

    from spheremail.services.mail import MailError, send_email

    sent = failed = 0
    for chunk in _chunks(list(invoice_ids), 200):
        invoices = db.session.execute(
            select(Invoice).where(Invoice.id.in_(chunk)).options(selectinload(Invoice.lines)).order_by(Invoice.id)
        ).scalars().all()
        db.session.commit()  # close the read before the SMTP conversation
        outcome = []
        for inv in invoices:
            try:
                send_email(inv.bill_to_email, f"Invoice {inv.number}", "email/invoice_issued.txt",
                           invoice=inv, money=format_money, base_url=current_app.config.get("BASE_URL", ""))
                outcome.append({"id": inv.id, "emailed_at": utcnow(), "email_error": None})
                sent += 1
            except MailError as exc:
                outcome.append({"id": inv.id, "emailed_at": None, "email_error": f"Not emailed: {exc}"[:300]})
                failed += 1
            except Exception as exc:  # noqa: BLE001 - a template or address problem must not stop the run
                current_app.logger.exception("invoice %s email failed", inv.id)
                outcome.append({"id": inv.id, "emailed_at": None,
                                "email_error": f"Not emailed: {exc.__class__.__name__}"[:300]})
                failed += 1
        if outcome:
            db.session.execute(update(Invoice), outcome)
            db.session.commit()
    return sent, failed


# --------------------------------------------------------------------------- overview

OVERVIEW_PAGE_SIZE = 50


@dataclass
class Overview:
    invoices: list
    total_count: int
    page: int
    pages: int
    status_counts: dict
    months: list  # [{"period", "count", "total", "paid", "outstanding", "void"}]
    outstanding: int
    overdue: int
    currency: str


def overview(status: str | None = None, month: str | None = None, page: int = 1) -> Overview:
    """Invoices with filters, counts per status, totals per month and the outstanding amount.

    A fixed number of queries whatever the number of invoices.
    """
    from sqlalchemy.orm import joinedload

    conditions = []
    if status:
        conditions.append(Invoice.status == status)
    if month:
        conditions.append(Invoice.period == month)
    where = and_(*conditions) if conditions else None

    def filtered(q):
        return q.where(where) if where is not None else q

    total_count = db.session.execute(filtered(select(func.count(Invoice.id)))).scalar_one()
    pages = max(1, -(-total_count // OVERVIEW_PAGE_SIZE))
    page = min(max(1, page), pages)
    invoices = db.session.execute(
        filtered(select(Invoice)).options(joinedload(Invoice.customer))
        .order_by(Invoice.issue_date.desc().nulls_last(), Invoice.id.desc())
        .limit(OVERVIEW_PAGE_SIZE).offset((page - 1) * OVERVIEW_PAGE_SIZE)
    ).scalars().unique().all()
    counts = dict(db.session.execute(
        select(Invoice.status, func.count(Invoice.id)).group_by(Invoice.status)
    ).all())
    month_rows: dict[str, dict] = {}
    for period, st, count, total in db.session.execute(
        filtered(select(Invoice.period, Invoice.status, func.count(Invoice.id), func.sum(Invoice.total_minor))
                 .where(Invoice.period.is_not(None)))
        .group_by(Invoice.period, Invoice.status)
    ):
        m = month_rows.setdefault(period, {"period": period, "count": 0, "total": 0, "paid": 0,
                                           "outstanding": 0, "void": 0, "exported": 0})
        total = int(total or 0)
        m["count"] += count
        if st != InvoiceStatus.VOID.value and st != InvoiceStatus.DRAFT.value:
            m["total"] += total
        if st == InvoiceStatus.PAID.value:
            m["paid"] += total
        elif st == InvoiceStatus.PENDING.value:
            m["outstanding"] += total
        elif st == InvoiceStatus.VOID.value:
            m["void"] += total
        elif st == InvoiceStatus.CLOSED_BY_EXPORT.value:
            m["exported"] += total
    outstanding, overdue = db.session.execute(
        select(func.coalesce(func.sum(Invoice.total_minor), 0),
               func.coalesce(func.sum(Invoice.total_minor).filter(Invoice.due_date < utc_today()), 0))
        .where(Invoice.status == InvoiceStatus.PENDING.value)
    ).one()
    return Overview(
        invoices=list(invoices), total_count=total_count, page=page, pages=pages,
        status_counts={s.value: counts.get(s.value, 0) for s in InvoiceStatus},
        months=sorted(month_rows.values(), key=lambda m: m["period"], reverse=True),
        outstanding=int(outstanding), overdue=int(overdue), currency=get_settings().currency,
    )


def months_with_invoices() -> list[str]:
    """Distinct billing periods, newest first (for the month filter)."""
    return list(db.session.execute(
        select(Invoice.period).where(Invoice.period.is_not(None)).distinct().order_by(Invoice.period.desc())
    ).scalars())


__all__ = [
    "BillingError", "BillingSettings", "BillRunResult", "OFFLINE_METHODS", "add_fee", "billing_details_for",
    "close_by_export", "delete_fee", "email_invoices", "fees_for_customer", "format_amount", "gateway_secret",
    "get_settings", "invoices_for_customer", "is_externally_billed", "mark_invoice_paid", "months_with_invoices",
    "next_invoice_number", "overview", "parse_period", "plans", "record_offline_payment", "run_bill_run",
    "save_billing_details", "save_plan", "save_settings", "set_customer_plan", "set_plan_active",
    "void_invoice",
]
