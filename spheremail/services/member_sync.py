"""Connect customers to members of the coworking system: auto-connect, manual connect,
new customers. Written once against :class:`~spheremail.integrations.base.Provider`.

Rules that keep it safe to interrupt and re-run:

* the members are read ONCE per run, page by page (``provider.iter_members``), into a
  dict by lower-cased email: never one request per customer;
* a manual link is kept; an auto/created link whose member still exists is kept;
* a customer without a link is linked to the member with their email (ignoring case),
  else a member is created for them;
* no database transaction is open during an HTTP call: the pending work is committed
  before each create, and the new link right after it. If the process dies between the
  create and the commit, the next run re-reads the members, finds the one we created by
  its email and links it: no duplicate. A create refused because the email exists (400)
  is resolved the same way, by looking the member up by email;
* progress is written to a :class:`SyncRun` the settings page polls.

Background work started from a request runs in a ``threading.Thread`` with its own app
context (fine on the single box this product is installed on: the operator's request
returns at once). If the process dies mid-run, the run stays "running" with an old
heartbeat; the daily ``member-sync`` job re-runs the sync, which fixes everything.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass

from flask import current_app
from sqlalchemy.exc import IntegrityError

from spheremail.extensions import db
from spheremail.integrations.base import Member, NewMember, OutcomeUnknown, ProviderError
from spheremail.models import Customer, IntegrationConnection, MemberLink, SyncRun
from spheremail.models.base import utcnow
from spheremail.models.customer import CustomerStatus
from spheremail.models.integrations import ConnectionState, LinkSource

log = logging.getLogger(__name__)

BATCH = 20  # links committed together when no HTTP call forces an earlier commit
STALE_RUN = dt.timedelta(minutes=10)  # a "running" run without heartbeat for this long died

_threads: list[threading.Thread] = []
_threads_lock = threading.Lock()


class SyncError(ValueError):
    """A sync or manual-connect request that cannot be done; the message is user-facing."""


# --------------------------------------------------------------------------- helpers
def active_connection(provider: str | None = None) -> IntegrationConnection | None:
    """The enabled, connected integration (of ``provider`` when given), or None."""
    row = IntegrationConnection.active()
    if row is not None and provider is not None and row.provider != provider:
        return None
    return row


def link_for(customer_id: int, provider: str | None = None) -> MemberLink | None:
    """The customer's active link (to the active provider when none is named)."""
    if provider is None:
        conn = IntegrationConnection.active()
        if conn is None:
            return None
        provider = conn.provider
    return MemberLink.active_for(customer_id, provider)


def is_externally_billed(customer) -> bool:
    """True when ``customer``'s invoices are exported instead of charged here: an active
    integration exports invoices and the customer is connected to a member there."""
    conn = IntegrationConnection.active()
    if conn is None or not conn.invoice_export:
        return False
    return MemberLink.active_for(customer.id, conn.provider) is not None


def _new_member_for(customer: Customer, location_id: str) -> NewMember:
    return NewMember(name=customer.full_name or customer.email, email=customer.email,
                     location_id=location_id, phone=customer.phone or None,
                     company=customer.company or None, start_date=utcnow().date())


def _looks_like_duplicate(exc: ProviderError) -> bool:
    text = f"{exc.message} {exc.details or ''}".lower()
    return exc.kind == "invalid" and ("email" in text or "exist" in text or "duplicate" in text)


def _member_taken_by(provider: str, member_id: str, customer_id: int) -> MemberLink | None:
    return db.session.execute(
        db.select(MemberLink).filter_by(provider=provider, member_id=member_id, active=True)
        .where(MemberLink.customer_id != customer_id)
    ).scalar_one_or_none()


def _add_link(customer_id: int, provider: str, member: Member, source: LinkSource,
              created_at: dt.datetime | None = None, by=None) -> MemberLink:
    link = MemberLink(customer_id=customer_id, provider=provider, member_id=member.id,
                      member_name=(member.name or "")[:200], member_email=(member.email or "")[:254],
                      source=source.value, created_in_remote_at=created_at, active=True,
                      linked_at=utcnow(), linked_by_id=getattr(by, "id", None))
    db.session.add(link)
    return link


@dataclass
class Outcome:
    kind: str  # matched | created | failed
    reason: str = ""


def _connect_one(provider, conn_provider: str, location_id: str, customer: Customer,
                 members: dict[str, Member] | None, member_ids: set[str] | None) -> Outcome:
    """Connect one customer. Commits what it changes. ``members`` None = look up by email."""
    link = MemberLink.active_for(customer.id, conn_provider)
    if link is not None:
        if link.source == LinkSource.MANUAL.value:
            return Outcome("matched")  # a person chose it: auto-connect never overrides
        if member_ids is None or link.member_id in member_ids:
            return Outcome("matched")
        # The member was deleted over there: forget the link and connect again.
        link.deactivate()
        db.session.commit()
    email = customer.email
    member = members.get(email.lower()) if members is not None else None
    customer_id, name = customer.id, customer.full_name
    new = _new_member_for(customer, location_id)
    db.session.commit()  # nothing open while we talk to the other system
    created_at = None
    if member is None and members is None:
        member = provider.find_member_by_email(email)
    if member is None:
        try:
            member = provider.create_member(new)
            created_at = utcnow()
        except OutcomeUnknown:
            # It may exist now: the email is unique over there, so look it up.
            member = provider.find_member_by_email(email)
            if member is None:
                return Outcome("failed", "the system did not confirm creating the member; "
                                         "the next sync checks again")
            created_at = utcnow()
        except ProviderError as exc:
            if not _looks_like_duplicate(exc):
                raise
            # Refused as a duplicate: someone has it (perhaps with different letter case).
            member = provider.find_member_by_email(email)
            if member is None:
                return Outcome("failed", f"refused: {exc.message}")
    taken = _member_taken_by(conn_provider, member.id, customer_id)
    if taken is not None:
        return Outcome("failed", f"member {member.email or member.id} is already connected to another customer")
    try:
        _add_link(customer_id, conn_provider, member,
                  LinkSource.CREATED if created_at else LinkSource.AUTO, created_at)
        db.session.commit()
    except IntegrityError:
        db.session.rollback()  # another worker linked this customer meanwhile: fine
        return Outcome("matched")
    log.info("customer %s connected to %s member %s (%s)", customer_id, conn_provider, member.id,
             "created" if created_at else "matched")
    return Outcome("created" if created_at else "matched")


# ------------------------------------------------------------------------- full sync
def start_sync(provider: str, *, by=None, background: bool = True) -> SyncRun:
    """Record a new auto-connect run and start it (in a background thread by default).

    Refuses when the integration is not active or a run is already going.
    """
    conn = active_connection(provider)
    if conn is None:
        raise SyncError("Turn the integration on and connect it first.")
    running = current_run(provider)
    if running is not None:
        return running  # one at a time: show the one in progress
    run = SyncRun(provider=provider, kind="all", status="pending", requested_by_id=getattr(by, "id", None))
    db.session.add(run)
    db.session.commit()
    if background:
        _spawn(run_sync, run.id)
    else:
        run_sync(run.id)
    return db.session.get(SyncRun, run.id)


def current_run(provider: str) -> SyncRun | None:
    """The full sync in progress for ``provider`` (not one whose worker died)."""
    run = db.session.execute(
        db.select(SyncRun).filter_by(provider=provider, kind="all")
        .where(SyncRun.status.in_(["pending", "running"])).order_by(SyncRun.id.desc()).limit(1)
    ).scalar_one_or_none()
    if run is None:
        return None
    beat = run.heartbeat_at or run.created_at
    if utcnow() - beat > STALE_RUN:
        run.status, run.message, run.finished_at = "failed", "interrupted (the worker stopped)", utcnow()
        db.session.commit()
        return None
    return run


def latest_run(provider: str) -> SyncRun | None:
    return db.session.execute(
        db.select(SyncRun).filter_by(provider=provider, kind="all").order_by(SyncRun.id.desc()).limit(1)
    ).scalar_one_or_none()


def run_sync(run_id: int, *, provider_client=None) -> SyncRun:
    """Do auto-connect run ``run_id``: every active customer matched, linked or created."""
    from spheremail.integrations.registry import provider_for

    run = db.session.get(SyncRun, run_id)
    conn = active_connection(run.provider)
    run.status, run.started_at, run.heartbeat_at = "running", utcnow(), utcnow()
    if conn is None:
        return _finish(run, None, "failed", "the integration is not connected")
    db.session.commit()
    provider = provider_client or provider_for(conn)
    location_id, conn_provider = conn.location_id, conn.provider
    try:
        members: dict[str, Member] = {}
        member_ids: set[str] = set()
        for member in provider.iter_members():
            member_ids.add(member.id)
            if member.email:
                members.setdefault(member.email.strip().lower(), member)
    except ProviderError as exc:
        run = _finish(run, conn, "failed", f"could not read the members: {exc.message}")
        if exc.kind == "auth":
            mark_reconnect_needed(conn_provider, exc.message)
        return run

    customer_ids = db.session.execute(
        db.select(Customer.id).filter_by(status=CustomerStatus.ACTIVE.value).order_by(Customer.id)
    ).scalars().all()
    run.total = len(customer_ids)
    db.session.commit()
    for position, customer_id in enumerate(customer_ids, 1):
        customer = db.session.get(Customer, customer_id)
        try:
            outcome = _connect_one(provider, conn_provider, location_id, customer, members, member_ids)
        except ProviderError as exc:
            db.session.rollback()
            if exc.kind in ("rate_limited", "unreachable", "auth", "scope"):
                # No point going on now: the rest is done by the next run.
                run = db.session.get(SyncRun, run_id)
                run.done = position - 1
                run = _finish(run, conn, "failed", f"stopped: {exc.message}")
                if exc.kind == "auth":
                    mark_reconnect_needed(conn_provider, exc.message)
                return run
            outcome = Outcome("failed", exc.message)
        run = db.session.get(SyncRun, run_id)
        setattr(run, outcome.kind, getattr(run, outcome.kind) + 1)
        if outcome.kind == "failed":
            run.add_error(customer_id, customer.full_name, outcome.reason)
        run.done = position
        run.heartbeat_at = utcnow()
        db.session.commit()
    return _finish(db.session.get(SyncRun, run_id), conn, "done", None)


def _finish(run: SyncRun, conn: IntegrationConnection | None, status: str, message: str | None) -> SyncRun:
    run.status, run.message, run.finished_at = status, message, utcnow()
    if conn is not None:
        conn = db.session.get(IntegrationConnection, conn.id)
        conn.last_sync_at = run.finished_at
        conn.last_sync_summary = run.summary()
    db.session.commit()
    return run


# --------------------------------------------------------------------- one customer
def connect_new_customer(customer) -> None:
    """Hook for ``customer_created``: connect (or create) the member in the background.

    Returns at once; the sign-up never waits on, nor fails because of, the other system.
    Errors are recorded on a one-customer :class:`SyncRun`; the next full sync retries.
    """
    try:
        conn = IntegrationConnection.active()
        if conn is None or not customer.is_active:
            return
        _spawn(_connect_customer_job, customer.id, conn.provider)
    except Exception:  # noqa: BLE001 - never break the caller (a sign-up)
        log.exception("could not start connecting customer %s", getattr(customer, "id", None))


def _connect_customer_job(customer_id: int, provider: str) -> None:
    from spheremail.integrations.registry import provider_for

    conn = active_connection(provider)
    if conn is None:
        return
    run = SyncRun(provider=provider, kind="customer", customer_id=customer_id, status="running",
                  total=1, started_at=utcnow(), heartbeat_at=utcnow())
    db.session.add(run)
    db.session.commit()
    run_id = run.id
    customer = db.session.get(Customer, customer_id)
    try:
        outcome = _connect_one(provider_for(conn), provider, conn.location_id, customer, None, None)
    except ProviderError as exc:
        db.session.rollback()
        outcome = Outcome("failed", exc.message)
    run = db.session.get(SyncRun, run_id)
    setattr(run, outcome.kind, 1)
    run.done = 1
    if outcome.kind == "failed":
        run.add_error(customer_id, customer.full_name, outcome.reason)
    run.status, run.finished_at = "done", utcnow()
    db.session.commit()


def _spawn(fn, *args) -> threading.Thread:
    """Run ``fn(*args)`` in a thread with its own app context (and database session)."""
    app = current_app._get_current_object()

    def target():
        with app.app_context():
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - log; the run record shows the failure
                log.exception("background integration work %s failed", fn.__name__)
                db.session.rollback()
                if fn is run_sync:
                    run = db.session.get(SyncRun, args[0])
                    if run is not None and not run.is_finished:
                        run.status, run.message, run.finished_at = "failed", "stopped by an error", utcnow()
                        db.session.commit()
            finally:
                db.session.remove()

    thread = threading.Thread(target=target, name=f"integrations-{fn.__name__}", daemon=True)
    with _threads_lock:
        _threads[:] = [t for t in _threads if t.is_alive()]
        _threads.append(thread)
    thread.start()
    return thread


def wait_for_background(timeout: float = 30) -> bool:
    """Join the background threads started here (tests, CLI). True when all finished."""
    with _threads_lock:
        threads = list(_threads)
    for thread in threads:
        thread.join(timeout)
    return not any(t.is_alive() for t in threads)


# -------------------------------------------------------------------- manual connect
def search_members(provider: str, query: str, limit: int = 20) -> list[Member]:
    """Members of the active ``provider`` matching ``query`` (name or email)."""
    from spheremail.integrations.registry import provider_for

    conn = active_connection(provider)
    if conn is None:
        raise SyncError("The integration is not connected.")
    client = provider_for(conn)
    db.session.commit()  # end the read transaction before the HTTP call
    return client.search_members(query, limit=limit)


def connect_manually(customer: Customer, provider: str, member: Member, *, by=None) -> MemberLink:
    """Connect ``customer`` to the chosen ``member``, replacing any other link (the caller
    commits). Raises SyncError when that member is connected to another customer."""
    if active_connection(provider) is None:
        raise SyncError("The integration is not connected.")
    taken = _member_taken_by(provider, member.id, customer.id)
    if taken is not None:
        raise SyncError(f"That member is already connected to {taken.customer.full_name}. "
                        "Disconnect them there first.")
    current = MemberLink.active_for(customer.id, provider)
    if current is not None:
        if current.member_id == member.id and current.source == LinkSource.MANUAL.value:
            return current
        current.deactivate()
        db.session.flush()
    return _add_link(customer.id, provider, member, LinkSource.MANUAL, by=by)


def disconnect_customer(customer: Customer, provider: str) -> MemberLink | None:
    """End the customer's link, keeping it as history (the caller commits).

    A later auto-connect may match the customer again by email; connect a member
    manually to pin a different one.
    """
    current = MemberLink.active_for(customer.id, provider)
    if current is not None:
        current.deactivate()
    return current


def disconnect_integration(conn: IntegrationConnection) -> int:
    """Disconnect ``conn`` (the caller commits): sync and export stop, secrets and tokens are
    forgotten, the toggle goes off, and every member link ends but is kept as history.
    Returns how many links ended."""
    now = utcnow()
    links = db.session.execute(
        db.select(MemberLink).filter_by(provider=conn.provider, active=True)).scalars().all()
    for link in links:
        link.deactivate(now)
    conn.state = ConnectionState.DISCONNECTED.value
    conn.disconnected_at = now
    conn.set_credentials(None)
    conn.enabled_at = None
    conn.last_error = None
    return len(links)


def mark_reconnect_needed(provider: str, message: str) -> None:
    """The other system no longer accepts our stored sign-in (revoked secret, dead refresh
    token): the connection goes to ``error`` so sync and export stop and the Systems page
    offers Connect again. Links and the export window are kept. Commits."""
    conn = IntegrationConnection.get(provider)
    if conn is not None and conn.state == ConnectionState.CONNECTED.value:
        conn.state = ConnectionState.ERROR.value
        conn.last_error = message[:2000]
        db.session.commit()
        log.warning("%s: reconnect needed: %s", provider, message)


def new_customers(provider: str, *, limit: int = 50, offset: int = 0) -> list[MemberLink]:
    """Links whose member we created in ``provider``, newest first, with their customers."""
    from sqlalchemy.orm import joinedload

    return db.session.execute(
        db.select(MemberLink).filter_by(provider=provider, source=LinkSource.CREATED.value)
        .options(joinedload(MemberLink.customer).joinedload(Customer.user))
        .order_by(MemberLink.created_in_remote_at.desc(), MemberLink.id.desc())
        .limit(limit).offset(offset)
    ).scalars().all()
