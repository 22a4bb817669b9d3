"""Write audit events. Callers pass plain descriptions, never secrets."""
from __future__ import annotations

from flask import has_request_context, request
from flask_login import current_user

from spheremail.extensions import db
from spheremail.models import AuditEvent


def client_address() -> str | None:
    """The client's address as the WSGI server saw it (behind a proxy, configure ProxyFix)."""
    if not has_request_context():
        return None
    return request.remote_addr


def record(action: str, summary: str = "", *, subject=None, actor=None) -> AuditEvent:
    """Add an audit event to the session (the caller commits with its own change).

    ``actor`` defaults to the logged-in user; ``subject`` is any model with an ``id``.
    """
    if actor is None and has_request_context() and current_user.is_authenticated:
        actor = current_user._get_current_object()
    event = AuditEvent(
        action=action,
        summary=summary,
        actor_id=getattr(actor, "id", None),
        actor_email=getattr(actor, "email", None),
        subject_type=type(subject).__name__.lower() if subject is not None else None,
        subject_id=getattr(subject, "id", None),
        address=client_address(),
    )
    db.session.add(event)
    return event
