"""Export pending invoices to the coworking system, exactly once (engineering.md).

For each eligible invoice (pending, customer connected, created after the integration
was enabled, export switched on):

1. **claim**: insert its :class:`~spheremail.models.InvoiceExport` row (``invoice_id`` is
   unique) or take over a retryable one with a conditional UPDATE, and COMMIT. Two
   processes can never both hold one invoice;
2. mark the row ``sending`` and COMMIT, then call the provider with no transaction open;
3. on success store the remote id and close the invoice IN ONE TRANSACTION;
4. when the outcome is unknown (timeout, dropped answer, 5xx after sending, or a crash
   that left a row ``sending``): if the provider can search by our reference, look it
   up; found closes it, "not found" is NOT proof yet (the other side may still be saving
   it), so the row waits ``failed`` with ``sending_at`` kept, is never re-sent in the same
   run, and later runs look it up again; only a lookup made :data:`RECHECK_AFTER` after
   the send that still finds nothing lets it be sent again. If the provider cannot be
   searched (OfficeRnD), mark the row ``unknown`` for a person, who either enters the
   remote id ("it was created") or releases it ("not created");
5. a refusal that proves nothing was created (400, 401/403, connection refused) marks
   the row ``failed`` and clears ``sending_at`` (no send in doubt); the next run retries it;
6. rate limited beyond what the client waits out, or the other side unreachable: stop
   early (:class:`~spheremail.jobs.StopEarly`) and resume on the next tick.

Nothing is ever re-sent without knowing the first attempt did not land.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError

from spheremail.extensions import db
from spheremail.integrations.base import InvoiceExport as ExportRequest
from spheremail.integrations.base import OutcomeUnknown, ProviderError
from spheremail.models import IntegrationConnection, Invoice, InvoiceExport, MemberLink
from spheremail.models.base import utcnow
from spheremail.models.billing import InvoiceStatus
from spheremail.models.integrations import ExportState

log = logging.getLogger(__name__)

# A row left "sending" longer than this belongs to a run that died (a live run finishes
# one call within the client's timeouts and rate-limit waits, a few minutes at most).
SENDING_STALE = dt.timedelta(minutes=15)
# A "claimed" row not turned into "sending" within this time was abandoned.
CLAIM_STALE = dt.timedelta(minutes=5)
# An unknown outcome (timeout, dropped answer, 5xx after sending) is never re-sent in the
# same run: the other side may still be saving it, so a lookup moments later proves
# nothing. Only a lookup made at least this long after the send that finds nothing lets
# a later run send it again.
RECHECK_AFTER = dt.timedelta(minutes=5)
MAX_CONSECUTIVE_ERRORS = 3  # remote/unreachable errors in a row before stopping early


class ExportStopped(Exception):
    """The run stopped early (rate limited, unreachable); resume on the next tick."""


class ExportError(ValueError):
    """A resolution request that cannot be done; the message is user-facing."""


@dataclass
class ExportResult:
    exported: int = 0
    failed: int = 0
    unknown: int = 0
    skipped: int = 0  # held by another run
    recheck: int = 0  # sent without any answer and not found yet: looked up again next tick
    stopped: str | None = None
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.exported} exported, {self.failed} failed, {self.unknown} to check"
        if self.skipped:
            text += f", {self.skipped} busy elsewhere"
        if self.stopped:
            text += f"; stopped early: {self.stopped}"
        return text


def _billed_by(conn: IntegrationConnection):
    """The ONE rule for which invoices ``conn`` bills: the customer is connected to a member
    there and the invoice was created on/after ``enabled_at``. The export and the payment
    side (:func:`is_invoice_externally_billed`) both use it, so every pending invoice is
    either exported or payable here, never neither."""
    return (
        Invoice.created_at >= conn.enabled_at,
        db.select(MemberLink.id).where(
            (MemberLink.customer_id == Invoice.customer_id)
            & (MemberLink.provider == conn.provider) & MemberLink.active.is_(True)
        ).exists(),
    )


def is_invoice_externally_billed(invoice: Invoice) -> bool:
    """True when ``invoice`` is billed by the coworking system (exported), so it must not be
    paid or charged here. Decided per invoice: older invoices of a customer linked later,
    made before the integration's ``enabled_at``, are never exported and stay payable here."""
    conn = IntegrationConnection.active()
    if conn is None or not conn.exports_invoices or invoice.id is None:
        return False
    return db.session.execute(
        db.select(Invoice.id).where(Invoice.id == invoice.id).where(*_billed_by(conn))
    ).first() is not None


def externally_billed_invoice_ids(invoice_ids) -> set[int]:
    """Of ``invoice_ids``, those billed by the coworking system (the same rule, one query):
    for list pages that must not offer Pay now on them."""
    ids = [i for i in invoice_ids if i is not None]
    conn = IntegrationConnection.active()
    if not ids or conn is None or not conn.exports_invoices:
        return set()
    return set(db.session.execute(
        db.select(Invoice.id).where(Invoice.id.in_(ids)).where(*_billed_by(conn))
    ).scalars())


def eligible_invoice_ids(conn: IntegrationConnection, limit: int | None = None) -> list[int]:
    """Invoices to export now: pending, billed by ``conn`` (:func:`_billed_by`), with a
    number, and either never claimed or in a retryable outbox state."""
    stale_claim = utcnow() - CLAIM_STALE
    query = (
        db.select(Invoice.id)
        .outerjoin(InvoiceExport, InvoiceExport.invoice_id == Invoice.id)
        .where(Invoice.status == InvoiceStatus.PENDING.value)
        .where(*_billed_by(conn))
        .where(Invoice.number.is_not(None))
        .where(or_(InvoiceExport.id.is_(None),
                   InvoiceExport.state == ExportState.FAILED.value,
                   (InvoiceExport.state == ExportState.CLAIMED.value) & (InvoiceExport.claimed_at < stale_claim)))
        .order_by(Invoice.id)
    )
    if limit:
        query = query.limit(limit)
    return list(db.session.execute(query).scalars())


def _claim(invoice_id: int, provider: str, owner: str) -> int | None:
    """Take the invoice for this run and commit; the outbox row's id, or None if another
    run holds it."""
    now = utcnow()
    row = db.session.execute(db.select(InvoiceExport).filter_by(invoice_id=invoice_id)).scalar_one_or_none()
    if row is None:
        row = InvoiceExport(invoice_id=invoice_id, provider=provider, owner=owner,
                            state=ExportState.CLAIMED.value, claimed_at=now)
        db.session.add(row)
        try:
            db.session.flush()
            row_id = row.id  # read before the commit expires it (no second SELECT)
            db.session.commit()
        except IntegrityError:
            db.session.rollback()
            return None
        return row_id
    else:
        row_id = row.id
        # Conditional update: exactly one run wins a retryable row.
        stale_claim = now - CLAIM_STALE
        result = db.session.execute(
            update(InvoiceExport).where(InvoiceExport.id == row.id)
            .where(or_(InvoiceExport.state == ExportState.FAILED.value,
                       (InvoiceExport.state == ExportState.CLAIMED.value)
                       & (InvoiceExport.claimed_at < stale_claim)))
            .values(state=ExportState.CLAIMED.value, owner=owner, claimed_at=now, provider=provider)
        )
        db.session.commit()
        if result.rowcount != 1:
            return None
    return row_id


def _mark_sending(row_id: int, owner: str, member_id: str | None = None) -> bool:
    """claimed → sending (ours only, to ``member_id`` when given), committed BEFORE the remote call."""
    values = dict(state=ExportState.SENDING.value, sending_at=utcnow(), attempts=InvoiceExport.attempts + 1)
    if member_id is not None:
        values["member_id"] = member_id
    result = db.session.execute(
        update(InvoiceExport).where(InvoiceExport.id == row_id, InvoiceExport.owner == owner,
                                    InvoiceExport.state == ExportState.CLAIMED.value)
        .values(**values)
    )
    db.session.commit()
    return result.rowcount == 1


def _set_state(row_id: int, state: ExportState, error: str | None = None, **values) -> None:
    row = db.session.get(InvoiceExport, row_id)
    row.state = state.value
    if error is not None:
        row.last_error = error[:2000]
    for key, value in values.items():
        setattr(row, key, value)
    db.session.commit()


def complete(row: InvoiceExport, remote_id: str, *, by=None) -> None:
    """Store the remote id and close the invoice here, in one transaction (committed)."""
    from spheremail.services.billing import close_by_export

    now = utcnow()
    invoice = db.session.get(Invoice, row.invoice_id)
    row.state, row.remote_id, row.done_at, row.last_error = ExportState.DONE.value, remote_id, now, None
    if by is not None:
        row.resolved_by_id = by.id
    if invoice.status == InvoiceStatus.PENDING.value:
        close_by_export(invoice, row.provider, remote_id, now)
    db.session.commit()


def _with_invoice(row_id: int) -> InvoiceExport:
    """The outbox row with its invoice loaded too (one SELECT for :func:`complete`)."""
    row, _invoice = db.session.execute(
        db.select(InvoiceExport, Invoice).join(Invoice, Invoice.id == InvoiceExport.invoice_id)
        .where(InvoiceExport.id == row_id)).one()
    return row


def _request_for(invoice: Invoice, member_id: str, location_id: str) -> ExportRequest:
    from spheremail.money import to_decimal

    lines = ", ".join(line.description for line in invoice.lines)[:150]
    return ExportRequest(
        invoice_number=invoice.number, member_id=member_id, location_id=location_id,
        total=Decimal(to_decimal(invoice.total_minor, invoice.currency)), currency=invoice.currency,
        issue_date=invoice.issue_date or invoice.created_at.date(),
        description=lines or f"SphereMail invoice {invoice.number}")


def _hook_after_remote_call(row_id: int, remote_id: str) -> None:
    """Called after the remote create succeeded, before the local commit. Tests replace it
    to simulate a crash in exactly that window."""


def export_pending(provider_name: str | None = None, *, client=None, owner: str | None = None,
                   now: dt.datetime | None = None, sleep=time.sleep, limit: int | None = None,
                   heartbeat=None) -> ExportResult:
    """Export every eligible invoice of the active integration (of ``provider_name``).

    Returns the result; raises :class:`ExportStopped` when it stopped early (the rows it
    did not reach are untouched and the next run takes them). Safe to run from several
    processes at once: each invoice is claimed by exactly one.

    ``heartbeat`` (optional) is called before each invoice, e.g. to renew the job's
    lease; when it returns False the run stops early there. ``sleep`` is kept for
    callers; an unknown outcome is never retried within a run, so nothing waits on it.
    """
    from spheremail.integrations.registry import provider_for

    conn = IntegrationConnection.active()
    result = ExportResult()
    if conn is None or (provider_name and conn.provider != provider_name):
        result.stopped = "the integration is not connected"
        return result
    if not conn.exports_invoices:
        result.stopped = "invoice export is switched off"
        return result
    owner = owner or f"export-{uuid.uuid4().hex[:12]}"
    now = now or utcnow()
    client = client or provider_for(conn)
    conn_id, provider, location_id = conn.id, conn.provider, conn.location_id

    try:
        _recover_stale(client, provider, now, result)
        consecutive = 0
        for invoice_id in eligible_invoice_ids(conn, limit):
            if heartbeat is not None and heartbeat() is False:
                # Our lease is gone (or about to be): another process may take the slot,
                # so stop here rather than run two rate limiters side by side.
                raise ExportStopped("the run lost its lease; the rest is exported on the next run")
            row_id = _claim(invoice_id, provider, owner)
            if row_id is None:
                result.skipped += 1
                continue
            outcome = _export_one(client, row_id, owner, location_id, now)
            if outcome == "recheck":
                result.recheck += 1
            if outcome in ("remote", "unreachable"):
                consecutive += 1
                if consecutive >= MAX_CONSECUTIVE_ERRORS:
                    raise ExportStopped(f"{provider} keeps failing; resuming on the next run")
            else:
                consecutive = 0
            _count(result, outcome)
        if result.recheck and not result.stopped:
            # Keep the slot open: the next tick (a minute later) looks these up again
            # and sends only what is still missing.
            result.stopped = (f"{result.recheck} export(s) got no answer and were not found yet; "
                              "looked up again on the next run before any new attempt")
    except ExportStopped as exc:
        result.stopped = str(exc)
    finally:
        conn = db.session.get(IntegrationConnection, conn_id)
        conn.last_export_at = utcnow()
        conn.last_export_summary = result.summary()
        db.session.commit()
    if result.stopped:
        raise ExportStopped(result.summary())
    return result


def _count(result: ExportResult, outcome: str) -> None:
    if outcome == "done":
        result.exported += 1
    elif outcome == "unknown":
        result.unknown += 1
    elif outcome in ("failed", "remote", "unreachable", "recheck"):
        result.failed += 1


def _recover_stale(client, provider: str, now: dt.datetime, result: ExportResult) -> None:
    """Rows left ``sending`` by a run that died: their outcome is unknown."""
    stale = db.session.execute(
        db.select(InvoiceExport).filter_by(state=ExportState.SENDING.value, provider=provider)
        .where(InvoiceExport.sending_at < now - SENDING_STALE)
    ).scalars().all()
    busy = db.session.execute(
        db.select(db.func.count(InvoiceExport.id)).filter_by(state=ExportState.SENDING.value, provider=provider)
        .where(InvoiceExport.sending_at >= now - SENDING_STALE)
    ).scalar()
    for row in stale:
        row_id, number = row.id, row.invoice.number
        db.session.commit()
        # Stale means sent over SENDING_STALE (> RECHECK_AFTER) ago: "not found" is proof.
        outcome = _resolve_unknown(client, row_id, number, "the run sending it stopped before it finished",
                                   absence_proven=True)
        _count(result, outcome)
    if busy:
        # Maybe another live run, maybe a crash moments ago: decide on a later tick.
        result.skipped += busy
        result.stopped = result.stopped or f"{busy} export(s) still in progress elsewhere"


def _resolve_unknown(client, row_id: int, number: str, why: str, *, absence_proven: bool) -> str:
    """Outcome unknown: look it up by our reference if we can, else hand it to a person.

    ``absence_proven``: whether "not found" proves it was not created (the lookup is made
    long enough after the send). If not, the row waits ``failed`` with its ``sending_at``
    kept and the outcome is ``recheck``: looked up again on a later run, never re-sent now.
    """
    if getattr(client, "supports_export_lookup", False):
        try:
            remote_id = client.find_export(number)
        except ProviderError as exc:
            _set_state(row_id, ExportState.UNKNOWN, f"{why}; the lookup failed too: {exc.message}")
            return "unknown"
        if remote_id:
            complete(_with_invoice(row_id), remote_id)
            return "done"
        if not absence_proven:
            # The other side may still be saving it (a 504 from a gateway, a timeout):
            # sending again now could create it twice.
            _set_state(row_id, ExportState.FAILED, f"{why} Not found yet; looked up again "
                                                   "before any new attempt.")
            return "recheck"
        # Proven absent: safe to send again on the next run.
        _set_state(row_id, ExportState.FAILED, f"{why}; not found over there, will be sent again",
                   sending_at=None)
        return "failed"
    _set_state(row_id, ExportState.UNKNOWN, f"{why}. {client.name} cannot be searched for it: "
                                            "check whether it was created and resolve it here.")
    return "unknown"


def _export_one(client, row_id: int, owner: str, location_id: str, now: dt.datetime) -> str:
    """Send one claimed invoice, at most once per run. Returns
    done|failed|unknown|recheck|remote|unreachable|skipped; raises ExportStopped when the
    run must stop."""
    # The row, its invoice and the customer's active link (unique) in one SELECT.
    row, invoice, link = db.session.execute(
        db.select(InvoiceExport, Invoice, MemberLink)
        .join(Invoice, Invoice.id == InvoiceExport.invoice_id)
        .outerjoin(MemberLink, (MemberLink.customer_id == Invoice.customer_id)
                   & (MemberLink.provider == InvoiceExport.provider) & MemberLink.active.is_(True))
        .where(InvoiceExport.id == row_id)).one()
    if invoice.status != InvoiceStatus.PENDING.value or link is None:
        # Paid, voided or disconnected since it was listed: release it.
        db.session.delete(row)
        db.session.commit()
        return "skipped"
    member_id = link.member_id
    request = _request_for(invoice, member_id, location_id)
    tried_before = bool(row.attempts)
    # Set while an earlier send's outcome is still unknown (cleared once known not created).
    in_doubt_since = row.sending_at
    if tried_before:
        row.member_id = member_id  # a lookup below may complete it without sending
    # End the read before any HTTP call. The member is recorded with "sending" (one
    # UPDATE and one commit per attempt, not two).
    db.session.commit()
    if tried_before and getattr(client, "supports_export_lookup", False):
        # Sent before (its failure may have been an unknown outcome that a slow server
        # completed later): look it up by our reference before sending it again.
        try:
            remote_id = client.find_export(request.invoice_number)
        except ProviderError as exc:
            # The earlier send stays in doubt (sending_at kept): looked up again next run.
            return _refused(client, row_id, row.provider, exc, in_doubt=in_doubt_since is not None)
        if remote_id:
            complete(_with_invoice(row_id), remote_id)
            log.info("invoice %s was already in %s as %s", request.invoice_number, client.name, remote_id)
            return "done"
        if in_doubt_since is not None and now - in_doubt_since < RECHECK_AFTER:
            # Too soon after a send with no answer to call "not found" proof: wait.
            _set_state(row_id, ExportState.FAILED, "Sent without a clear answer and not found yet; "
                                                   "looked up again before any new attempt.")
            return "recheck"
    if not _mark_sending(row_id, owner, member_id):
        return "skipped"  # lost the claim (should not happen; never send without it)
    try:
        remote_id = client.export_invoice(request)
    except OutcomeUnknown as exc:
        # Any unknown outcome, 5xx after sending included: never re-sent in this run.
        return _resolve_unknown(client, row_id, request.invoice_number, exc.message, absence_proven=False)
    except ProviderError as exc:
        return _refused(client, row_id, row.provider, exc)
    _hook_after_remote_call(row_id, remote_id)
    complete(_with_invoice(row_id), remote_id)
    log.info("invoice %s exported to %s as %s", request.invoice_number, client.name, remote_id)
    return "done"


def _refused(client, row_id: int, provider: str, exc: ProviderError, *, in_doubt: bool = False) -> str:
    """Known not created (refused, throttled, unreachable): failed, retried by the next run;
    raises ExportStopped when going on is pointless. ``in_doubt``: the refusal was to a
    lookup for an earlier send whose outcome is still unknown, so ``sending_at`` is kept."""
    from spheremail.services.member_sync import mark_reconnect_needed

    if in_doubt:
        _set_state(row_id, ExportState.FAILED, exc.message)
    else:
        _set_state(row_id, ExportState.FAILED, exc.message, sending_at=None)
    if exc.kind == "rate_limited":
        raise ExportStopped(exc.message) from None
    if exc.kind in ("auth", "scope"):
        if exc.kind == "auth":
            mark_reconnect_needed(provider, exc.message)
        raise ExportStopped(exc.message) from None
    return "unreachable" if exc.kind == "unreachable" else ("remote" if exc.kind == "remote" else "failed")


# ------------------------------------------------------------------ people resolve
def unknown_exports(provider: str) -> list[InvoiceExport]:
    """Exports whose outcome a person must check, oldest first, with invoice and customer."""
    from sqlalchemy.orm import joinedload

    from spheremail.models import Customer

    return db.session.execute(
        db.select(InvoiceExport).filter_by(provider=provider, state=ExportState.UNKNOWN.value)
        .options(joinedload(InvoiceExport.invoice).joinedload(Invoice.customer).joinedload(Customer.user))
        .order_by(InvoiceExport.id)
    ).scalars().all()


def failed_exports(provider: str, limit: int = 50) -> list[InvoiceExport]:
    """Exports refused last time (retried automatically by the next run)."""
    from sqlalchemy.orm import joinedload

    return db.session.execute(
        db.select(InvoiceExport).filter_by(provider=provider, state=ExportState.FAILED.value)
        .options(joinedload(InvoiceExport.invoice))
        .order_by(InvoiceExport.id).limit(limit)
    ).scalars().all()


def resolve_created(row: InvoiceExport, remote_id: str, *, by=None) -> None:
    """A person checked: it WAS created as ``remote_id``. Closes the invoice (commits)."""
    remote_id = (remote_id or "").strip()
    if row.state != ExportState.UNKNOWN.value:
        raise ExportError("This export is no longer waiting for a decision.")
    if not remote_id:
        raise ExportError("Enter the id of the fee or charge you found.")
    if len(remote_id) > 120 or any(c.isspace() for c in remote_id):
        raise ExportError("That id is not valid: up to 120 characters, no spaces.")
    complete(row, remote_id, by=by)


def resolve_not_created(row: InvoiceExport, *, by=None) -> None:
    """A person checked: it was NOT created. The next run sends it (commits)."""
    if row.state != ExportState.UNKNOWN.value:
        raise ExportError("This export is no longer waiting for a decision.")
    row.state = ExportState.FAILED.value
    row.sending_at = None  # no longer in doubt: the next run may send it at once
    row.last_error = "released for a new attempt by a person who checked it was not created"
    if by is not None:
        row.resolved_by_id = by.id
    db.session.commit()
