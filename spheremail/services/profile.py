"""A customer's own profile, as changed from the portal. The caller commits."""
from __future__ import annotations

from sqlalchemy import func

from spheremail.extensions import db
from spheremail.models import Customer, User
from spheremail.models.user import normalize_email
from spheremail.services import audit
from spheremail.services.accounts import AccountError

NAME_MAX = 100
COMPANY_MAX = 200
PHONE_MAX = 50
EMAIL_MAX = 254


def email_taken(email: str, *, except_user: User | None = None) -> bool:
    """True when another login already uses ``email`` (compared ignoring case)."""
    query = db.select(func.count(User.id)).where(func.lower(User.email) == normalize_email(email))
    if except_user is not None:
        query = query.where(User.id != except_user.id)
    return db.session.execute(query).scalar_one() > 0


def update_profile(customer: Customer, *, first_name: str, last_name: str, company: str | None,
                   phone: str | None, email: str, actor: User | None = None) -> list[str]:
    """Change the customer's name, company, phone and login email; returns the changed fields.

    Raises AccountError (user-facing message) when the email is already used by another
    account; nothing is changed then.
    """
    new_email = normalize_email(email)
    if new_email != customer.user.email and email_taken(new_email, except_user=customer.user):
        raise AccountError("Another account already uses this email address. Choose a different one.")
    changes = {
        "first_name": (first_name or "").strip(),
        "last_name": (last_name or "").strip(),
        "company": (company or "").strip() or None,
        "phone": (phone or "").strip() or None,
    }
    changed = [name for name, value in changes.items() if getattr(customer, name) != value]
    for name in changed:
        setattr(customer, name, changes[name])
    if new_email != customer.user.email:
        customer.user.email = new_email
        changed.append("email")
    if changed:
        # Field names only: the values may be personal data and the trail is read by all operators.
        audit.record("profile_updated", f"{customer.email} updated {', '.join(changed)} from the portal",
                     subject=customer, actor=actor)
    return changed
