"""A tiny publish/subscribe so features can react to each other without importing each other.

Example: the integrations feature connects new customers to the coworking system::

    from spheremail.services import hooks
    hooks.subscribe("customer_created", lambda customer, **kw: connect_member(customer))

Events published today:

- ``customer_created`` (``customer=Customer``): after the transaction that created the
  customer is committed (staff creation, portal sign-up, demo seed).

Subscribers run in the publishing process, after the commit, with ``db.session`` usable
(a new transaction). A subscriber that raises is logged and its session work rolled back;
it never breaks the caller nor the other subscribers.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Callable

from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

_subscribers: dict[str, list[Callable]] = defaultdict(list)

_PENDING = "spheremail_hooks_pending"  # published in this transaction, waiting for its commit
_READY = "spheremail_hooks_ready"  # the transaction committed; deliver once it has closed


def subscribe(event_name: str, fn: Callable) -> Callable:
    """Call ``fn(**kw)`` whenever ``event_name`` is published. Subscribing twice is a no-op."""
    if fn not in _subscribers[event_name]:
        _subscribers[event_name].append(fn)
    return fn


def unsubscribe(event_name: str, fn: Callable) -> None:
    """Stop calling ``fn`` for ``event_name`` (tests use it to clean up)."""
    if fn in _subscribers.get(event_name, []):
        _subscribers[event_name].remove(fn)


def publish(event_name: str, **kw) -> None:
    """Call every subscriber of ``event_name`` now; their exceptions are logged, never raised."""
    for fn in list(_subscribers.get(event_name, [])):
        try:
            fn(**kw)
        except Exception:  # noqa: BLE001 - a broken subscriber must not break the caller
            log.exception("subscriber %r of %s failed", fn, event_name)
            _rollback_quietly()


def publish_after_commit(event_name: str, session: Session | None = None, **kw) -> None:
    """Publish ``event_name`` once ``session``'s current transaction is committed.

    Nothing is published if the transaction is rolled back instead. ``session``
    defaults to ``db.session``.
    """
    if session is None:
        from spheremail.extensions import db

        session = db.session()
    session.info.setdefault(_PENDING, []).append((event_name, kw))


def customer_created(customer) -> None:
    """Announce a new customer to subscribers once the creating transaction commits."""
    publish_after_commit("customer_created", customer=customer)


def _rollback_quietly() -> None:
    try:
        from spheremail.extensions import db

        db.session.rollback()
    except Exception:  # noqa: BLE001 - no app context or no session: nothing to undo
        pass


# SQLAlchemy forbids SQL inside ``after_commit`` (the session is in its "committed"
# state), and subscribers usually need the database. So ``after_commit`` only marks the
# events ready and ``after_transaction_end`` of the root transaction delivers them, when
# the session can start a fresh transaction.
@event.listens_for(Session, "after_commit")
def _mark_ready(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    if pending:
        session.info.setdefault(_READY, []).extend(pending)


@event.listens_for(Session, "after_transaction_end")
def _deliver(session: Session, transaction) -> None:
    if transaction.parent is not None:
        return  # a savepoint ended; the real transaction is still open
    # Events of a transaction that ended without a commit are dropped.
    session.info.pop(_PENDING, None)
    ready = session.info.pop(_READY, None)
    for event_name, kw in ready or ():
        publish(event_name, **kw)
