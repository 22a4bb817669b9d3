"""Additional recipients: people whose mail is the customer's mail. Never deleted.

Used by staff views and by the customer portal alike; the caller commits.
Errors raise :class:`~spheremail.services.customers.CustomerError` (user-facing text).
"""
from __future__ import annotations

from spheremail.extensions import db
from spheremail.models import Customer, Recipient, RecipientStatus, Setting
from spheremail.services import audit
from spheremail.services.customers import MAX_COMPANY, MAX_NAME, CustomerError, clean_text

STATUSES = tuple(s.value for s in RecipientStatus)
# What the operator may choose as the status of recipients added without one.
DEFAULT_STATUS_CHOICES = (RecipientStatus.FREE.value, RecipientStatus.PAID.value)


def default_status() -> str:
    """The status new recipients get: the operator's setting (free or paid)."""
    value = Setting.get("new_recipient_status")
    return value if value in DEFAULT_STATUS_CHOICES else RecipientStatus.PAID.value


def clean_status(status) -> str:
    """One of free, paid, inactive."""
    if status not in STATUSES:
        raise CustomerError("Choose free, paid or inactive.", "status")
    return status


def _clean_names(first_name, last_name, company) -> tuple[str, str, str | None]:
    return (
        clean_text(first_name, "First name", MAX_NAME, required=True, field="first_name"),
        clean_text(last_name, "Last name", MAX_NAME, required=True, field="last_name"),
        clean_text(company, "Company", MAX_COMPANY, required=False, field="company"),
    )


def add_recipient(customer: Customer, first_name, last_name, company=None, status=None,
                  actor=None) -> Recipient:
    """Add a recipient to ``customer``; ``status`` defaults to :func:`default_status`.

    Audited as ``recipient_added`` (``actor`` is the staff member, or the customer's user
    when they add it themselves).
    """
    first_name, last_name, company = _clean_names(first_name, last_name, company)
    status = default_status() if status in (None, "") else clean_status(status)
    recipient = Recipient(customer=customer, first_name=first_name, last_name=last_name,
                          company=company, status=status)
    db.session.add(recipient)
    db.session.flush()
    audit.record("recipient_added", f"{recipient.full_name} ({status}) added to "
                 f"{customer.full_name}, mailbox {customer.mailbox_number}",
                 subject=recipient, actor=actor)
    return recipient


def update_recipient(recipient: Recipient, first_name, last_name, company=None, actor=None) -> list[str]:
    """Change a recipient's names; returns the changed fields (audited ``recipient_updated``)."""
    first_name, last_name, company = _clean_names(first_name, last_name, company)
    values = {"first_name": first_name, "last_name": last_name, "company": company}
    changed = [name for name, value in values.items() if getattr(recipient, name) != value]
    for name, value in values.items():
        setattr(recipient, name, value)
    if changed:
        audit.record("recipient_updated", f"{recipient.full_name} of {recipient.customer.full_name}: "
                     f"changed {', '.join(changed)}", subject=recipient, actor=actor)
    return changed


def set_recipient_status(recipient: Recipient, status, actor=None) -> bool:
    """Set free, paid or inactive; returns False when it already had that status.

    Audited as ``recipient_status_changed``.
    """
    status = clean_status(status)
    if recipient.status == status:
        return False
    old = recipient.status
    recipient.status = status
    audit.record("recipient_status_changed", f"{recipient.full_name} of {recipient.customer.full_name}: "
                 f"{old} → {status}", subject=recipient, actor=actor)
    return True
