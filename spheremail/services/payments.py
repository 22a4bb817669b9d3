"""Online payment of invoices through the operator's Stripe account.

* **Pay now**: :func:`start_checkout` opens a Stripe Checkout Session for exactly the
  invoice total; the invoice becomes paid only when the signed webhook says so
  (:func:`handle_webhook`), never from the browser coming back.
* **Saved cards**: :func:`start_card_setup` (Checkout in setup mode); the webhook stores the
  card on the customer's :class:`GatewayCustomer`.
* **Automatic collection**: :func:`collect_due_invoices` (the ``collect-due-invoices`` job)
  charges due pending invoices off-session.

Exactly once: every gateway call that can move money carries an Idempotency-Key stored on a
:class:`PaymentAttempt` row committed *before* the call, so a retry after an unknown outcome
replays Stripe's first answer; webhook events are recorded by id in the same transaction as
their effect, so a redelivery changes nothing. No HTTP call is made while a write
transaction is open.

Functions that talk to Stripe commit themselves (they must, around the call); the others
leave committing to the caller, as everywhere else.
"""
from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from spheremail.extensions import db
from spheremail.integrations.stripe_gateway import (
    CardDeclined,
    GatewayError,
    GatewayUnavailable,
    InvalidWebhook,
    StripeGateway,
)
from spheremail.models import Customer, Invoice, InvoiceStatus, Payment, Setting
from spheremail.models.base import utcnow
from spheremail.models.payments import AttemptKind, AttemptStatus, GatewayCustomer, PaymentAttempt, StripeEvent
from spheremail.services import audit

log = logging.getLogger(__name__)

AUTOCHARGE_SETTING = "payments_autocharge_saved_cards"
PAYMENT_METHOD = "card"  # Payment.method for money taken through Stripe
# A Checkout Session stays payable for 24 hours: while one may still be paid, the job does
# not charge the same invoice off-session.
CHECKOUT_SESSION_LIFETIME = dt.timedelta(hours=24)
# Stripe keeps an idempotency key "at least 24 hours". An off-session charge whose outcome is
# unknown (STARTED) is replayed under its key only while it is younger than this, safely inside
# that window; an older one could create a second PaymentIntent, so staff check it instead.
REPLAY_WINDOW = dt.timedelta(hours=20)
UNKNOWN_OUTCOME_CODE = "outcome_unknown"
UNKNOWN_OUTCOME_MESSAGE = "Outcome of an automatic charge is unknown; check Stripe before charging again."
CHARGE_IN_PROGRESS_MESSAGE = ("An automatic charge of your saved card for this invoice is in progress. "
                              "Please wait for it to finish before paying another way.")

NOT_CONFIGURED_MESSAGE = ("Online payment is not set up yet. Please pay by bank transfer using the "
                          "details on the invoice, or contact us.")


class PaymentError(Exception):
    """A payment request that cannot be carried out; the message is shown to the user as is."""


# --- configuration ------------------------------------------------------------------------

@dataclass(frozen=True)
class GatewaySettings:
    secret_key: str
    webhook_secret: str


def _decrypt_setting(key: str) -> str:
    from spheremail.crypto import decrypt

    token = Setting.get(key) or ""
    if not token:
        return ""
    try:
        return decrypt(token)
    except ValueError:
        # Keys rotated away: treat as not configured rather than failing every page.
        log.error("setting %s cannot be decrypted with the configured keys", key)
        return ""


def gateway_settings() -> GatewaySettings | None:
    """The Stripe keys from billing settings (stored encrypted), or None when not configured."""
    secret = _decrypt_setting("billing_gateway_secret_key_encrypted")
    webhook = _decrypt_setting("billing_gateway_webhook_secret_encrypted")
    if not secret or not webhook:
        return None
    return GatewaySettings(secret_key=secret, webhook_secret=webhook)


def online_payment_ready() -> bool:
    """True when Pay now can be offered (both the secret key and the webhook secret are set)."""
    return gateway_settings() is not None


def _gateway(settings: GatewaySettings | None = None) -> StripeGateway:
    settings = settings or gateway_settings()
    if settings is None:
        raise PaymentError(NOT_CONFIGURED_MESSAGE)
    return StripeGateway(settings.secret_key, api_base=current_app.config.get("STRIPE_API_BASE"))


def autocharge_enabled() -> bool:
    """The setting "charge saved cards automatically when invoices are due"."""
    return bool(Setting.get(AUTOCHARGE_SETTING))


def set_autocharge(enabled: bool) -> None:
    """Switch automatic charging of saved cards on or off (audited; the caller commits)."""
    Setting.put(AUTOCHARGE_SETTING, bool(enabled))
    audit.record("payments.autocharge", "Automatic charging of saved cards switched "
                 + ("on" if enabled else "off"))


# --- billing's side, in one place ---------------------------------------------------------

def _billing():
    from spheremail.services import billing

    return billing


def is_externally_billed(customer: Customer) -> bool:
    """Customers connected to OfficeRnD / Nexudus are billed there: never charged here."""
    return bool(_billing().is_externally_billed(customer))


def is_invoice_externally_billed(invoice: Invoice) -> bool:
    """``invoice`` is exported to the coworking system: never paid or charged here. Decided
    per invoice with the export's own rule, so an invoice it will never export (made before
    the integration was enabled) stays payable here instead of pending forever."""
    from spheremail.services import invoice_export

    return bool(invoice_export.is_invoice_externally_billed(invoice))


def externally_billed_invoice_ids(invoices) -> set[int]:
    """The ids among ``invoices`` that are exported, not paid here (one query, for lists)."""
    from spheremail.services import invoice_export

    return invoice_export.externally_billed_invoice_ids([i.id for i in invoices])


def _mark_paid(invoice: Invoice, reference: str, at: dt.datetime) -> None:
    _billing().mark_invoice_paid(invoice, PAYMENT_METHOD, reference, at)


# --- reading ------------------------------------------------------------------------------

def customer_invoice(customer: Customer, invoice_id: int) -> Invoice | None:
    """The invoice ``invoice_id`` if it belongs to ``customer`` and customers may see it (else None)."""
    invoice = db.session.get(Invoice, invoice_id)
    if invoice is None or invoice.customer_id != customer.id:
        return None
    if invoice.status == InvoiceStatus.DRAFT.value:
        return None  # drafts are staff work in progress
    return invoice


def gateway_customer(customer: Customer) -> GatewayCustomer | None:
    """The customer's Stripe counterpart (and saved card), if any."""
    return db.session.execute(
        select(GatewayCustomer).filter_by(customer_id=customer.id)
    ).scalar_one_or_none()


def charge_in_progress(invoice: Invoice) -> bool:
    """An off-session charge of ``invoice`` is STARTED (outcome unknown) or PROCESSING.

    Pay now is refused meanwhile: the card may already have been charged, and a Checkout
    payment on top would take the money twice.
    """
    return db.session.execute(
        select(PaymentAttempt.id).filter_by(invoice_id=invoice.id, kind=AttemptKind.OFF_SESSION.value)
        .where(PaymentAttempt.status.in_([AttemptStatus.STARTED.value, AttemptStatus.PROCESSING.value]))
        .limit(1)
    ).first() is not None


def can_pay_online(invoice: Invoice) -> bool:
    """Pay now is offered: the invoice is pending with something to pay, not billed elsewhere,
    and no automatic charge of it is in progress (:func:`charge_in_progress`)."""
    if charge_in_progress(invoice):
        return False
    return invoice.is_open and invoice.total_minor > 0 and not is_invoice_externally_billed(invoice)


def attempts_for_invoice(invoice: Invoice) -> list[PaymentAttempt]:
    """Every online payment attempt of ``invoice``, newest first (shown to staff)."""
    return list(db.session.execute(
        select(PaymentAttempt).filter_by(invoice_id=invoice.id).order_by(PaymentAttempt.id.desc())
    ).scalars())


def attempts_needing_attention(limit: int = 100) -> list[PaymentAttempt]:
    """Declined, failed and mismatched attempts of invoices, newest first, for the staff overview.

    One query whatever the number of rows (invoice, customer and login loaded with it).
    """
    from sqlalchemy.orm import joinedload

    rows = db.session.execute(
        select(PaymentAttempt)
        .where(PaymentAttempt.status.in_([AttemptStatus.DECLINED.value, AttemptStatus.FAILED.value,
                                          AttemptStatus.MISMATCH.value]))
        .options(joinedload(PaymentAttempt.invoice).joinedload(Invoice.customer).joinedload(Customer.user))
        .order_by(PaymentAttempt.id.desc())
        .limit(limit)
    ).scalars()
    return list(rows)


def latest_problem(invoice: Invoice) -> PaymentAttempt | None:
    """The most recent attempt of ``invoice`` if it needs staff attention and the invoice is still open."""
    attempt = db.session.execute(
        select(PaymentAttempt).filter_by(invoice_id=invoice.id).order_by(PaymentAttempt.id.desc()).limit(1)
    ).scalar_one_or_none()
    if attempt is not None and attempt.needs_attention:
        return attempt
    return None


def problems_by_invoice(invoice_ids: list[int]) -> dict[int, PaymentAttempt]:
    """For a list page: invoice id -> its latest attempt when that one needs attention (one query)."""
    if not invoice_ids:
        return {}
    latest = (select(func.max(PaymentAttempt.id)).where(PaymentAttempt.invoice_id.in_(invoice_ids))
              .group_by(PaymentAttempt.invoice_id))
    rows = db.session.execute(select(PaymentAttempt).where(PaymentAttempt.id.in_(latest))).scalars()
    return {a.invoice_id: a for a in rows if a.needs_attention}


# --- attempts -----------------------------------------------------------------------------

def _idempotency_key(invoice: Invoice, kind: str, attempt: int) -> str:
    """Derived from the invoice and the attempt number. The invoice's creation instant is part of
    it so that a fresh database talking to the same Stripe account never replays an old answer
    for a re-used invoice id."""
    stamp = invoice.created_at.strftime("%Y%m%d%H%M%S%f") if invoice.created_at else "0"
    return f"spheremail-invoice-{invoice.id}-{stamp}-{kind}-{attempt}"


def _new_attempt(invoice: Invoice, kind: AttemptKind, **fields) -> PaymentAttempt:
    """Insert and COMMIT the next attempt row for ``invoice`` (unique number, idempotency key)."""
    for _ in range(5):
        highest = db.session.execute(
            select(func.max(PaymentAttempt.attempt)).filter_by(invoice_id=invoice.id, kind=kind.value)
        ).scalar() or 0
        number = highest + 1
        attempt = PaymentAttempt(
            invoice_id=invoice.id, kind=kind.value, attempt=number,
            idempotency_key=_idempotency_key(invoice, kind.value, number),
            amount_minor=invoice.total_minor, currency=invoice.currency.upper(),
            status=AttemptStatus.STARTED.value, **fields,
        )
        db.session.add(attempt)
        try:
            db.session.commit()
            return attempt
        except IntegrityError:
            db.session.rollback()  # a concurrent click took this number: take the next one
    raise PaymentError("Too many payment attempts at once. Please try again.")


# --- Pay now (Checkout, mode=payment) -----------------------------------------------------

def start_checkout(invoice: Invoice, *, success_url: str, cancel_url: str) -> str:
    """Open a Stripe Checkout Session for ``invoice`` and return the URL to send the customer to.

    Raises PaymentError (message for the customer) when the invoice cannot be paid online or
    Stripe cannot be reached. Commits (the attempt row is written before Stripe is called).
    """
    settings = gateway_settings()
    if settings is None:
        raise PaymentError(NOT_CONFIGURED_MESSAGE)
    if not invoice.is_open:
        raise PaymentError(f"This invoice is {invoice.status_enum.label.lower()}: there is nothing to pay.")
    if invoice.total_minor <= 0:
        raise PaymentError("This invoice has nothing to pay.")
    if is_invoice_externally_billed(invoice):
        raise PaymentError("Your invoices are billed through your coworking account; please pay them there.")
    if charge_in_progress(invoice):
        raise PaymentError(CHARGE_IN_PROGRESS_MESSAGE)
    gc = gateway_customer(invoice.customer)
    params = dict(
        amount_minor=invoice.total_minor, currency=invoice.currency, invoice_id=invoice.id,
        description=f"Invoice {invoice.number or invoice.id}",
        customer=gc.stripe_customer_id if gc else None,
        customer_email=None if gc else invoice.customer.email,
        success_url=success_url, cancel_url=cancel_url,
    )
    attempt = _new_attempt(invoice, AttemptKind.CHECKOUT)
    key = attempt.idempotency_key
    try:
        session = _gateway(settings).create_payment_session(idempotency_key=key, **params)
    except GatewayError as exc:
        attempt.status = AttemptStatus.FAILED.value
        attempt.failure_code = exc.code or "gateway_error"
        attempt.failure_message = (exc.detail or exc.message)[:500]
        db.session.commit()
        raise PaymentError(exc.message) from exc
    attempt.status = AttemptStatus.OPEN.value
    attempt.checkout_session_id = session["id"]
    db.session.commit()
    return session["url"]


def checkout_state(invoice: Invoice, session_id: str | None) -> str:
    """What the return page says: ``paid``, ``confirming`` (webhook not in yet) or ``unknown``."""
    if invoice.status == InvoiceStatus.PAID.value:
        return "paid"
    if session_id:
        attempt = db.session.execute(
            select(PaymentAttempt).filter_by(invoice_id=invoice.id, checkout_session_id=session_id)
        ).scalar_one_or_none()
        if attempt is not None:
            if attempt.status == AttemptStatus.MISMATCH.value:
                return "review"
            if attempt.status == AttemptStatus.FAILED.value:
                return "failed"
            return "confirming"
    return "unknown"


# --- saved cards (Checkout, mode=setup) ---------------------------------------------------

def ensure_gateway_customer(customer: Customer, settings: GatewaySettings | None = None) -> GatewayCustomer:
    """The customer's Stripe customer, created once and stored. Commits; raises PaymentError."""
    existing = gateway_customer(customer)
    if existing is not None:
        return existing
    stamp = customer.created_at.strftime("%Y%m%d%H%M%S%f") if customer.created_at else "0"
    params = dict(email=customer.email, name=customer.full_name, our_id=customer.id,
                  idempotency_key=f"spheremail-customer-{customer.id}-{stamp}-create")
    db.session.commit()  # end any read transaction before the HTTP call
    try:
        remote = _gateway(settings).create_customer(**params)
    except GatewayError as exc:
        raise PaymentError(exc.message) from exc
    row = GatewayCustomer(customer_id=customer.id, stripe_customer_id=remote["id"])
    db.session.add(row)
    try:
        db.session.commit()
    except IntegrityError:
        # A concurrent request stored it first; the same idempotency key gave it the same id.
        db.session.rollback()
        row = gateway_customer(customer)
    return row


def start_card_setup(customer: Customer, *, success_url: str, cancel_url: str, currency: str) -> str:
    """Open a Checkout Session in setup mode to save a card; return its URL. Commits."""
    settings = gateway_settings()
    if settings is None:
        raise PaymentError(NOT_CONFIGURED_MESSAGE)
    if is_externally_billed(customer):
        raise PaymentError("Your invoices are billed through your coworking account; no card is needed here.")
    gc = ensure_gateway_customer(customer, settings)
    params = dict(customer=gc.stripe_customer_id, currency=currency, our_customer_id=customer.id,
                  success_url=success_url, cancel_url=cancel_url,
                  # No money moves in setup mode; a fresh key per click is enough.
                  idempotency_key=f"spheremail-setup-{customer.id}-{uuid.uuid4().hex}")
    db.session.commit()
    try:
        session = _gateway(settings).create_setup_session(**params)
    except GatewayError as exc:
        raise PaymentError(exc.message) from exc
    return session["url"]


def remove_saved_card(customer: Customer) -> bool:
    """Stop using the saved card for automatic charges (audited; the caller commits)."""
    gc = gateway_customer(customer)
    if gc is None or not gc.has_card:
        return False
    gc.payment_method_id = None
    gc.card_brand = gc.card_last4 = None
    gc.card_exp_month = gc.card_exp_year = None
    audit.record("payments.card_removed", f"Saved card removed for customer #{customer.mailbox_number}",
                 subject=customer)
    return True


# --- webhooks -----------------------------------------------------------------------------

@dataclass
class WebhookResult:
    status: int
    message: str


class _RetryLater(Exception):
    """Processing needs Stripe and Stripe could not answer: ask Stripe to deliver again."""


def handle_webhook(payload: bytes, signature_header: str | None) -> WebhookResult:
    """Verify and process one Stripe webhook delivery. Commits.

    400 when the signature or timestamp does not check out (nothing changes); 200 when
    processed or already processed; 503 when processing needed Stripe and it was unreachable
    (Stripe delivers again later).
    """
    settings = gateway_settings()
    if settings is None:
        return WebhookResult(400, "online payment is not configured")
    try:
        event = StripeGateway.verify_webhook(payload, signature_header, settings.webhook_secret)
    except InvalidWebhook as exc:
        log.warning("rejected Stripe webhook: %s", exc)
        return WebhookResult(400, "invalid signature")
    event_id, event_type = event.get("id"), event.get("type") or ""
    if not event_id or not isinstance(event.get("data"), dict):
        return WebhookResult(400, "not an event")
    if _event_seen(event_id):
        return WebhookResult(200, "already processed")
    obj = event["data"].get("object") or {}
    # Anything that needs Stripe is fetched before the write transaction starts.
    try:
        extra = _prefetch(settings, event_type, obj)
    except _RetryLater as exc:
        db.session.rollback()
        return WebhookResult(503, str(exc))
    db.session.commit()  # end the read transaction: the write below is short
    row = StripeEvent(event_id=event_id, type=event_type[:100])
    db.session.add(row)
    try:
        db.session.flush()
    except IntegrityError:
        db.session.rollback()
        return WebhookResult(200, "already processed")
    row.outcome = _dispatch(event_type, obj, extra)
    try:
        db.session.commit()
    except IntegrityError:
        # A concurrent delivery of the same event committed first: its effect stands, ours is discarded.
        db.session.rollback()
        return WebhookResult(200, "already processed")
    return WebhookResult(200, row.outcome)


def _event_seen(event_id: str) -> bool:
    return db.session.execute(select(StripeEvent.id).filter_by(event_id=event_id)).first() is not None


def _prefetch(settings: GatewaySettings, event_type: str, obj: dict) -> dict:
    """The expanded setup session for a saved card (the event only carries ids)."""
    if event_type == "checkout.session.completed" and obj.get("mode") == "setup":
        try:
            session = _gateway(settings).retrieve_session(obj["id"], expand=["setup_intent.payment_method"])
        except GatewayUnavailable as exc:
            raise _RetryLater("Stripe unreachable while reading the saved card") from exc
        except GatewayError as exc:
            log.warning("cannot read setup session %s: %s", obj.get("id"), exc.detail or exc.message)
            return {}
        return {"session": session}
    return {}


def _dispatch(event_type: str, obj: dict, extra: dict) -> str:
    if event_type == "checkout.session.completed":
        if obj.get("mode") == "setup":
            return _store_saved_card(extra.get("session") or obj)
        if obj.get("mode") == "payment":
            if obj.get("payment_status") == "paid":
                return _settle_checkout(obj)
            return _mark_processing(obj)
    if event_type == "checkout.session.async_payment_succeeded":
        return _settle_checkout(obj)
    if event_type == "checkout.session.async_payment_failed":
        return _fail_checkout(obj, "async_payment_failed", "The payment failed after checkout.")
    if event_type == "checkout.session.expired":
        attempt = _attempt_for_session(obj.get("id"))
        if attempt is not None and attempt.status == AttemptStatus.OPEN.value:
            attempt.status = AttemptStatus.FAILED.value
            attempt.failure_code = "expired"
            attempt.failure_message = "The customer did not finish the checkout."
        return "checkout expired"
    return f"ignored {event_type}"


def _attempt_for_session(session_id: str | None) -> PaymentAttempt | None:
    if not session_id:
        return None
    return db.session.execute(
        select(PaymentAttempt).filter_by(checkout_session_id=session_id)
    ).scalar_one_or_none()


def _invoice_for_session(obj: dict) -> Invoice | None:
    """Our invoice named by the session's metadata and client_reference_id (they must agree)."""
    meta = (obj.get("metadata") or {}).get("invoice_id")
    ref = obj.get("client_reference_id")
    if meta and ref and meta != ref:
        return None
    raw = meta or ref
    if not raw or not str(raw).isdigit():
        return None
    return db.session.execute(
        select(Invoice).where(Invoice.id == int(raw)).with_for_update()
    ).scalar_one_or_none()


def _attempt_or_new(invoice: Invoice, obj: dict) -> PaymentAttempt:
    attempt = _attempt_for_session(obj.get("id"))
    if attempt is None:
        # A session we did not create (or whose row was lost): keep a record of it all the same.
        highest = db.session.execute(
            select(func.max(PaymentAttempt.attempt)).filter_by(invoice_id=invoice.id,
                                                                kind=AttemptKind.CHECKOUT.value)
        ).scalar() or 0
        attempt = PaymentAttempt(
            invoice_id=invoice.id, kind=AttemptKind.CHECKOUT.value, attempt=highest + 1,
            idempotency_key=f"webhook-{obj.get('id')}", checkout_session_id=obj.get("id"),
            amount_minor=int(obj.get("amount_total") or 0), currency=(obj.get("currency") or "").upper()[:3],
        )
        db.session.add(attempt)
    return attempt


def _flag_for_staff(attempt: PaymentAttempt, invoice: Invoice, code: str, action: str, message: str) -> None:
    """Money arrived that must not mark the invoice paid: a mismatch staff see and decide on."""
    attempt.status = AttemptStatus.MISMATCH.value
    attempt.failure_code, attempt.failure_message = code, message
    audit.record(action, f"Invoice {invoice.number}: {message}", subject=invoice)


def _settle_checkout(obj: dict) -> str:
    """A paid Checkout Session: check it against the invoice, then mark the invoice paid once."""
    invoice = _invoice_for_session(obj)
    if invoice is None:
        log.warning("paid checkout session %s names no invoice of ours", obj.get("id"))
        return "no matching invoice"
    attempt = _attempt_or_new(invoice, obj)
    reference = obj.get("payment_intent") or obj.get("id")
    if isinstance(reference, dict):
        reference = reference.get("id")
    attempt.payment_intent_id = reference
    amount, currency = obj.get("amount_total"), (obj.get("currency") or "").upper()
    if amount != invoice.total_minor or currency != invoice.currency.upper():
        _flag_for_staff(attempt, invoice, "amount_mismatch", "payments.amount_mismatch",
                        f"Stripe reported {amount} {currency} (minor units) but the invoice is "
                        f"{invoice.total_minor} {invoice.currency.upper()}; not marked paid.")
        return "amount mismatch: flagged for staff"
    already = db.session.execute(
        select(Payment.id).filter_by(invoice_id=invoice.id, reference=reference)
    ).first()
    if already is not None:
        attempt.status = AttemptStatus.SUCCEEDED.value
        return "already recorded"  # e.g. completed and async_payment_succeeded both arrived
    if not invoice.is_open:
        # Paid another way (offline, another session, a saved card) or voided meanwhile:
        # the money arrived but must not count twice. Staff decide (usually a refund).
        _flag_for_staff(attempt, invoice, "invoice_not_open", "payments.payment_for_closed_invoice",
                        f"A payment of {amount} {currency} (minor units) arrived for an invoice that "
                        f"is already {invoice.status_enum.label.lower()}; check and refund if needed.")
        return "invoice not open: flagged for staff"
    _mark_paid(invoice, reference, utcnow())
    attempt.status = AttemptStatus.SUCCEEDED.value
    attempt.failure_code = attempt.failure_message = None  # billing's mark_invoice_paid audits it
    return "invoice paid"


def _mark_processing(obj: dict) -> str:
    attempt = _attempt_for_session(obj.get("id"))
    if attempt is not None and attempt.status in {AttemptStatus.OPEN.value, AttemptStatus.STARTED.value}:
        attempt.status = AttemptStatus.PROCESSING.value
    return "checkout completed, payment not yet confirmed"


def _fail_checkout(obj: dict, code: str, message: str) -> str:
    invoice = _invoice_for_session(obj)
    if invoice is None:
        return "no matching invoice"
    attempt = _attempt_or_new(invoice, obj)
    if attempt.status != AttemptStatus.SUCCEEDED.value:
        attempt.status = AttemptStatus.FAILED.value
        attempt.failure_code, attempt.failure_message = code, message
        audit.record("payments.failed", f"Invoice {invoice.number}: {message}", subject=invoice)
    return "payment failed"


def _store_saved_card(session: dict) -> str:
    """A completed setup session: remember its card on the customer it was made for."""
    gc = None
    if session.get("customer"):
        customer_id = session["customer"]
        if isinstance(customer_id, dict):
            customer_id = customer_id.get("id")
        gc = db.session.execute(
            select(GatewayCustomer).filter_by(stripe_customer_id=customer_id)
        ).scalar_one_or_none()
    meta_customer = (session.get("metadata") or {}).get("customer_id")
    if gc is None or (meta_customer and meta_customer != str(gc.customer_id)):
        return "setup session for an unknown customer"
    setup_intent = session.get("setup_intent")
    pm = setup_intent.get("payment_method") if isinstance(setup_intent, dict) else None
    if not isinstance(pm, dict):
        return "setup session without a readable card"
    card = pm.get("card") or {}
    gc.payment_method_id = pm.get("id")
    gc.card_brand = (card.get("brand") or "")[:30] or None
    gc.card_last4 = (card.get("last4") or "")[:4] or None
    gc.card_exp_month = card.get("exp_month")
    gc.card_exp_year = card.get("exp_year")
    gc.card_saved_at = utcnow()
    audit.record("payments.card_saved", f"Card saved for automatic charges: {gc.card_label}",
                 subject=gc.customer)
    return "card saved"


# --- automatic collection (the collect-due-invoices job) ----------------------------------

@dataclass
class CollectionResult:
    charged: int = 0
    declined: int = 0
    failed: int = 0
    skipped: int = 0
    # Of ``failed``: Stripe could not be reached (outcome unknown); the job retries at the next tick.
    unreachable: int = 0

    def __str__(self) -> str:
        return (f"{self.charged} charged, {self.declined} declined, {self.failed} failed, "
                f"{self.skipped} skipped")


def due_invoice_ids(today: dt.date) -> list[int]:
    """Pending invoices due on or before ``today`` whose customer has a saved card."""
    return list(db.session.execute(
        select(Invoice.id)
        .join(GatewayCustomer, GatewayCustomer.customer_id == Invoice.customer_id)
        .where(Invoice.status == InvoiceStatus.PENDING.value, Invoice.total_minor > 0,
               Invoice.due_date.is_not(None), Invoice.due_date <= today,
               GatewayCustomer.payment_method_id.is_not(None))
        .order_by(Invoice.id)
    ).scalars())


def collect_due_invoices(today: dt.date, renew=None) -> CollectionResult | str:
    """Charge each due pending invoice once to its customer's saved card (off-session). Commits.

    Skips customers billed through a coworking system, invoices with a checkout that may still
    be paid, and invoices whose last charge on the same card was declined (a new card retries).
    An attempt left without an answer (network failure) is retried with the SAME idempotency key,
    so Stripe replays its first outcome instead of charging again, but only within
    :data:`REPLAY_WINDOW` of its first send; an older one is flagged for staff (mismatch, reason
    :data:`UNKNOWN_OUTCOME_MESSAGE`) and its invoice is left alone.
    """
    if not autocharge_enabled():
        return "automatic charging is off"
    settings = gateway_settings()
    if settings is None:
        return "online payment is not configured"
    gateway = _gateway(settings)
    result = CollectionResult()
    for invoice_id in due_invoice_ids(today):
        if renew is not None and not renew():
            break  # lost the lease: another process carries on
        outcome = _collect_one(gateway, invoice_id, today)
        if outcome == "unreachable":
            result.unreachable += 1
            outcome = "failed"
        setattr(result, outcome, getattr(result, outcome) + 1)
    return result


def _flag_unknown_outcome(attempt: PaymentAttempt, invoice: Invoice) -> None:
    """A STARTED off-session charge too old to replay: staff must check Stripe (the caller commits).

    MISMATCH puts it on the staff overview and keeps the job off the invoice for good.
    """
    detail = f" (last error: {attempt.reason})" if attempt.failure_code else ""
    attempt.status = AttemptStatus.MISMATCH.value
    attempt.failure_code = UNKNOWN_OUTCOME_CODE
    attempt.failure_message = (UNKNOWN_OUTCOME_MESSAGE + detail)[:500]
    audit.record("payments.charge_outcome_unknown", f"Invoice {invoice.number}: {UNKNOWN_OUTCOME_MESSAGE}",
                 subject=invoice)


def _collect_one(gateway: StripeGateway, invoice_id: int, today: dt.date) -> str:
    invoice = db.session.get(Invoice, invoice_id)
    db.session.refresh(invoice)
    customer = invoice.customer
    gc = gateway_customer(customer)
    if not invoice.is_open or gc is None or not gc.has_card or not customer.is_active:
        return "skipped"
    if is_invoice_externally_billed(invoice):
        return "skipped"
    attempts = attempts_for_invoice(invoice)
    if any(a.status in {AttemptStatus.SUCCEEDED.value, AttemptStatus.MISMATCH.value, AttemptStatus.PROCESSING.value}
           for a in attempts):
        return "skipped"  # money is (or may be) on its way already
    recent_checkout = utcnow() - CHECKOUT_SESSION_LIFETIME
    if any(a.kind == AttemptKind.CHECKOUT.value and a.status == AttemptStatus.OPEN.value
           and a.created_at > recent_checkout for a in attempts):
        return "skipped"  # the customer may be paying on Stripe's page right now
    off = [a for a in attempts if a.kind == AttemptKind.OFF_SESSION.value]
    last = off[0] if off else None
    if last is not None and last.status == AttemptStatus.DECLINED.value and last.payment_method_id == gc.payment_method_id:
        return "skipped"  # do not hammer a declined card; saving a new card retries
    if last is not None and last.status == AttemptStatus.STARTED.value:
        if last.created_at <= utcnow() - REPLAY_WINDOW:
            # Stripe may have forgotten the key by now: replaying it could create a second
            # PaymentIntent and charge the card twice. A person checks Stripe instead.
            _flag_unknown_outcome(last, invoice)
            db.session.commit()
            return "skipped"
        attempt = last  # unknown outcome: replay the same request under the same key
    else:
        attempt = _new_attempt(invoice, AttemptKind.OFF_SESSION, payment_method_id=gc.payment_method_id)
    params = dict(amount_minor=attempt.amount_minor, currency=attempt.currency, customer=gc.stripe_customer_id,
                  payment_method=attempt.payment_method_id, invoice_id=invoice.id,
                  description=f"Invoice {invoice.number or invoice.id}", idempotency_key=attempt.idempotency_key)
    number = invoice.number
    db.session.commit()  # no transaction open during the call
    try:
        intent = gateway.charge_saved_card(**params)
    except CardDeclined as exc:
        attempt.status = AttemptStatus.DECLINED.value
        attempt.failure_code = (exc.decline_code or exc.code or "card_declined")[:80]
        attempt.failure_message = exc.message[:500]
        attempt.payment_intent_id = exc.payment_intent_id
        audit.record("payments.charge_declined",
                     f"Invoice {number}: automatic charge declined ({attempt.reason})", subject=invoice)
        db.session.commit()
        return "declined"
    except GatewayUnavailable as exc:
        # Unknown outcome: keep the row STARTED so the next run replays the same key.
        attempt.failure_code = "unreachable"
        attempt.failure_message = (exc.detail or exc.message)[:500]
        db.session.commit()
        return "unreachable"
    except GatewayError as exc:
        attempt.status = AttemptStatus.FAILED.value
        attempt.failure_code = (exc.code or "gateway_error")[:80]
        attempt.failure_message = (exc.detail or exc.message)[:500]
        audit.record("payments.charge_failed", f"Invoice {number}: automatic charge failed ({exc.message})",
                     subject=invoice)
        db.session.commit()
        return "failed"
    attempt.payment_intent_id = intent.get("id")
    invoice = db.session.execute(select(Invoice).where(Invoice.id == invoice_id).with_for_update()).scalar_one()
    if intent.get("status") != "succeeded":
        attempt.status = AttemptStatus.PROCESSING.value
        db.session.commit()
        return "failed"
    if intent.get("amount") != invoice.total_minor or (intent.get("currency") or "").upper() != invoice.currency.upper():
        attempt.status = AttemptStatus.MISMATCH.value
        attempt.failure_code = "amount_mismatch"
        attempt.failure_message = "The charged amount differs from the invoice total; not marked paid."
        audit.record("payments.amount_mismatch", f"Invoice {number}: {attempt.failure_message}", subject=invoice)
        db.session.commit()
        return "failed"
    if not invoice.is_open:
        attempt.status = AttemptStatus.MISMATCH.value
        attempt.failure_code = "invoice_not_open"
        attempt.failure_message = "The invoice was settled another way while the card was charged; check and refund."
        audit.record("payments.payment_for_closed_invoice", f"Invoice {number}: {attempt.failure_message}",
                     subject=invoice)
        db.session.commit()
        return "failed"
    _mark_paid(invoice, intent["id"], utcnow())
    attempt.status = AttemptStatus.SUCCEEDED.value
    attempt.failure_code = attempt.failure_message = None  # billing's mark_invoice_paid audits it
    db.session.commit()
    return "charged"
