"""Connect customers to members of the coworking system: auto-connect, manual connect,
new customers. Written once against :class:`~spheremail.integrations.base.Provider`.

Rules that keep it safe to interrupt and re-run:

* the members are read ONCE per run, page by page (``provider.iter_members``), into a
  dict by lower-cased email: never one request per customer;
* a manual link is kept; an auto/created link whose member still exists is kept;
* a customer without a link is linked to the member with their email (ignoring case),
  else a member is created for them;
* a full run matches customers against that dict locally and sends only the creates,
  from a small thread pool (``MEMBER_SYNC_WORKERS`` threads, default :data:`WORKERS`),
  so the provider's shared rate limiter, not the round trip, sets the pace. The worker
  threads make HTTP calls only; every database write happens in the run's own thread,
  which adds the links and the progress and commits them :data:`BATCH` links at a time
  (at least every :data:`HEARTBEAT` seconds). At most ``2 x workers`` creates are queued
  or in flight, so a rate-limit, sign-in or network error stops the run after a handful;
* no database transaction is open during an HTTP call of the run's own thread, and no
  worker thread touches the session. If the process dies before a batch is committed,
  the members created for it exist without their links: the next run re-reads the
  members, finds each by its email and links it: no duplicate. A create refused because
  the email exists (400), or whose answer was lost, is resolved the same way, by looking
  the member up by email;
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
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from flask import current_app
from sqlalchemy.exc import IntegrityError

from spheremail.extensions import db
from spheremail.integrations.base import Member, NewMember, OutcomeUnknown, ProviderError
from spheremail.models import Customer, IntegrationConnection, MemberLink, SyncRun, User
from spheremail.models.base import utcnow
from spheremail.models.customer import CustomerStatus
from spheremail.models.integrations import ConnectionState, LinkSource

log = logging.getLogger(__name__)

BATCH = 20  # links (and the progress) committed together by a full sync
HEARTBEAT = 1.0  # seconds: a full sync commits its progress at least this often (the page polls)
WORKERS = 6  # create calls a full sync keeps going at once: covers a round trip at the allowed rate
FATAL_KINDS = ("rate_limited", "unreachable", "auth", "scope")  # errors that stop a run
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


def _link_row(customer_id: int, provider: str, member: Member, source: LinkSource,
              created_at: dt.datetime | None = None, by=None) -> dict:
    """The column values of a new active link (a full sync inserts them in batches)."""
    return dict(customer_id=customer_id, provider=provider, member_id=member.id,
                member_name=(member.name or "")[:200], member_email=(member.email or "")[:254],
                source=source.value, created_in_remote_at=created_at, active=True,
                linked_at=utcnow(), linked_by_id=getattr(by, "id", None))


def _add_link(customer_id: int, provider: str, member: Member, source: LinkSource,
              created_at: dt.datetime | None = None, by=None) -> MemberLink:
    link = MemberLink(**_link_row(customer_id, provider, member, source, created_at, by))
    db.session.add(link)
    return link


def _create_member(provider, new: NewMember) -> tuple[Member | None, bool, str]:
    """Create ``new`` over there: ``(member, created, "")``, or ``(None, False, reason)``.

    HTTP calls only, never the database: a full sync runs this in worker threads. An
    unconfirmed create or a refusal as a duplicate is resolved by looking the member up
    by email (the email is unique over there). Other refusals raise :class:`ProviderError`.
    """
    try:
        return provider.create_member(new), True, ""
    except OutcomeUnknown:
        # It may exist now: look it up.
        member = provider.find_member_by_email(new.email)
        if member is None:
            return None, False, "the system did not confirm creating the member; the next sync checks again"
        return member, True, ""
    except ProviderError as exc:
        if not _looks_like_duplicate(exc):
            raise
        # Refused as a duplicate: someone has it (perhaps with different letter case).
        member = provider.find_member_by_email(new.email)
        if member is None:
            return None, False, f"refused: {exc.message}"
        return member, False, ""


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
        member, created, reason = _create_member(provider, new)
        if member is None:
            return Outcome("failed", reason)
        created_at = utcnow() if created else None
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
def start_sync(provider: str, *, by=None, background: bool = True, heartbeat=None) -> SyncRun:
    """Record a new auto-connect run and start it (in a background thread by default).

    Refuses when the integration is not active or a run is already going. ``heartbeat``:
    see :func:`run_sync` (only used when ``background`` is False).
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
        run_sync(run.id, heartbeat=heartbeat)
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


def run_sync(run_id: int, *, provider_client=None, workers: int | None = None, heartbeat=None) -> SyncRun:
    """Do auto-connect run ``run_id``: every active customer matched, linked or created.

    The members are read once; customers are matched against them here, and only the
    creates go over there, ``workers`` at a time (default: the ``MEMBER_SYNC_WORKERS``
    setting, else :data:`WORKERS`). A rate-limit, sign-in or network error stops the
    run; the next run does the rest. ``heartbeat`` (optional, e.g. a job's lease renewal)
    is called after each batch; when it returns False the run stops there as failed.
    """
    from spheremail.integrations.registry import provider_for

    run = db.session.get(SyncRun, run_id)
    conn = active_connection(run.provider)
    run.status, run.started_at, run.heartbeat_at = "running", utcnow(), utcnow()
    if conn is None:
        return _finish(run, None, "failed", "the integration is not connected")
    db.session.commit()
    provider = provider_client or provider_for(conn)
    location_id, conn_provider = conn.location_id, conn.provider
    workers = max(1, int(workers or current_app.config.get("MEMBER_SYNC_WORKERS") or WORKERS))
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

    # Plain rows, not ORM objects: the batches commit often and would expire them.
    customers = db.session.execute(
        db.select(Customer.id, User.email, Customer.first_name, Customer.last_name, Customer.phone,
                  Customer.company)
        .join(User, User.id == Customer.user_id)
        .where(Customer.status == CustomerStatus.ACTIVE.value).order_by(Customer.id)
    ).all()
    links = {row.customer_id: row for row in db.session.execute(
        db.select(MemberLink.id, MemberLink.customer_id, MemberLink.member_id, MemberLink.source)
        .filter_by(provider=conn_provider, active=True)).all()}
    # The member was deleted over there: forget the link (kept as history), connect again.
    active_ids = {row.id for row in customers}
    gone = [link for link in links.values()
            if link.customer_id in active_ids and link.source != LinkSource.MANUAL.value
            and link.member_id not in member_ids]
    for start in range(0, len(gone), 500):
        db.session.execute(db.update(MemberLink).where(MemberLink.id.in_([g.id for g in gone[start:start + 500]]))
                           .values(active=False, unlinked_at=utcnow()))
    for link in gone:
        del links[link.customer_id]
    taken = {link.member_id: customer_id for customer_id, link in links.items()}  # member -> customer
    run.total = len(customers)
    db.session.commit()

    batch = _SyncBatch(run_id, conn_provider)
    app = current_app._get_current_object()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="member-sync")
    in_flight: dict[Future, tuple[int, str]] = {}  # create -> (customer id, name)
    creating: set[str] = set()  # emails sent for creation in this run
    stop: list[ProviderError] = []
    lease_lost = False

    def settle(block: bool) -> None:
        """Take the answers of the creates that finished (all of them once ``block`` waited)."""
        done, _ = wait(list(in_flight), timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for future in done:
            customer_id, name = in_flight.pop(future)
            try:
                member, created, reason = future.result()
            except ProviderError as exc:
                if exc.kind in FATAL_KINDS:
                    stop.append(exc)  # no point going on now: the next run does the rest
                else:
                    batch.fail(customer_id, name, exc.message)
                continue
            if member is None:
                batch.fail(customer_id, name, reason)
                continue
            link_member(customer_id, name, member, created)

    def link_member(customer_id: int, name: str, member: Member, created: bool) -> None:
        owner = taken.get(member.id)
        if owner is not None and owner != customer_id:
            batch.fail(customer_id, name,
                       f"member {member.email or member.id} is already connected to another customer")
            return
        taken[member.id] = customer_id
        batch.link(customer_id, member, created)

    try:
        for row in customers:
            if stop:
                break
            name = f"{row.first_name} {row.last_name}".strip()
            if row.id in links:
                batch.kept()  # a manual link, or an auto/created one whose member still exists
            else:
                email = row.email or ""
                member = members.get(email.lower())
                if member is not None:
                    link_member(row.id, name, member, False)
                elif email.lower() in creating:
                    batch.fail(row.id, name, "another customer with the same email is being created")
                else:
                    while len(in_flight) >= 2 * workers and not stop:
                        settle(block=True)
                    if stop:
                        break
                    creating.add(email.lower())
                    new = NewMember(name=name or email, email=email, location_id=location_id,
                                    phone=row.phone or None, company=row.company or None,
                                    start_date=utcnow().date())
                    in_flight[pool.submit(_in_app_context, app, _create_member, provider, new)] = (row.id, name)
            if in_flight:
                settle(block=False)
            if batch.due():
                batch.flush()
                if heartbeat is not None and heartbeat() is False:
                    # Lease lost: another process may start this slot; stop creating here.
                    lease_lost = True
                    break
        while in_flight:
            # Stopping too: what was already sent is answered and linked, not lost.
            settle(block=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    batch.flush()
    run = db.session.get(SyncRun, run_id)
    if stop:
        exc = stop[0]
        run = _finish(run, conn, "failed", f"stopped: {exc.message}")
        if any(e.kind == "auth" for e in stop):
            mark_reconnect_needed(conn_provider, next(e for e in stop if e.kind == "auth").message)
        return run
    if lease_lost:
        return _finish(run, conn, "failed", "stopped: the run lost its lease; the next run does the rest")
    return _finish(run, conn, "done", None)


def _in_app_context(app, fn, *args):
    """Run ``fn`` in a worker thread with an app context: the provider's token store may
    read or save the token through the engine. The session is never used there."""
    with app.app_context():
        return fn(*args)


# One INSERT per batch: without render_nulls the ORM would split a batch wherever matched
# links (no created_in_remote_at) and created ones alternate.
_INSERT_LINKS = db.insert(MemberLink).execution_options(render_nulls=True)


class _SyncBatch:
    """A full sync's outcomes, written by the run's own thread BATCH links at a time.

    The counters are kept here and written as totals, so a batch that has to be
    replayed link by link (another worker linked one of its customers meanwhile) still
    leaves the run's numbers right.
    """

    def __init__(self, run_id: int, provider: str):
        self.run_id, self.provider = run_id, provider
        self.links: list[tuple[int, Member, bool]] = []
        self.errors: list[tuple[int, str, str]] = []
        self.counts = {"matched": 0, "created": 0, "failed": 0}
        self.flushed_at = time.monotonic()

    def kept(self) -> None:
        self.counts["matched"] += 1

    def link(self, customer_id: int, member: Member, created: bool) -> None:
        self.links.append((customer_id, member, created))
        self.counts["created" if created else "matched"] += 1

    def fail(self, customer_id: int, name: str, reason: str) -> None:
        self.errors.append((customer_id, name, reason))
        self.counts["failed"] += 1

    def due(self) -> bool:
        return len(self.links) >= BATCH or time.monotonic() - self.flushed_at >= HEARTBEAT

    def _rows(self, links, now: dt.datetime) -> list[dict]:
        return [_link_row(customer_id, self.provider, member,
                          LinkSource.CREATED if created else LinkSource.AUTO, now if created else None)
                for customer_id, member, created in links]

    def flush(self) -> None:
        """Insert the pending links (one statement) and the progress, and commit."""
        now = utcnow()
        try:
            if self.links:
                db.session.execute(_INSERT_LINKS, self._rows(self.links, now))
            self._progress(now)
            db.session.commit()
        except IntegrityError:
            db.session.rollback()
            self._one_by_one(now)
        for customer_id, member, created in self.links:
            log.info("customer %s connected to %s member %s (%s)", customer_id, self.provider, member.id,
                     "created" if created else "matched")
        self.links.clear()
        self.errors.clear()
        self.flushed_at = time.monotonic()

    def _one_by_one(self, now: dt.datetime) -> None:
        for (customer_id, member, created), row in zip(self.links, self._rows(self.links, now)):
            try:
                db.session.execute(_INSERT_LINKS, [row])
                db.session.commit()
            except IntegrityError:
                db.session.rollback()  # another worker linked this customer meanwhile: fine
                if created:
                    self.counts["created"] -= 1
                    self.counts["matched"] += 1
        self._progress(now)
        db.session.commit()

    def _progress(self, now: dt.datetime) -> None:
        run = db.session.get(SyncRun, self.run_id)
        for key, value in self.counts.items():
            setattr(run, key, value)
        run.done = sum(self.counts.values())
        for customer_id, name, reason in self.errors:
            run.add_error(customer_id, name, reason)
        run.heartbeat_at = now


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
