"""Who may do what. Every view declares its access; a view that declares nothing is refused.

Use ``@allow(Capability.X)`` (logged-in users whose role has X), ``@customer_only``, or
``@public`` on each view. ``enforce_access`` runs before every request and denies by default.
"""
from __future__ import annotations

import enum
from functools import wraps

from flask import abort, current_app, redirect, request, session, url_for
from flask_login import current_user

from spheremail.models.user import Role


class Capability(str, enum.Enum):
    VIEW_CUSTOMERS = "view_customers"  # look customers up (all staff)
    MANAGE_CUSTOMERS = "manage_customers"  # create, edit, deactivate, numbers
    MANAGE_RECIPIENTS = "manage_recipients"
    IMPERSONATE = "impersonate"  # log in as a customer
    HANDLE_MAIL = "handle_mail"
    BILLING = "billing"  # invoices, plans, billing settings
    INTEGRATIONS = "integrations"  # Business Settings -> Integrations
    MANAGE_STAFF = "manage_staff"
    VIEW_AUDIT = "view_audit"
    PORTAL = "portal"  # a customer's own account


# The whole matrix in one place (product.md, "People and roles").
ROLE_CAPABILITIES: dict[Role, frozenset[Capability]] = {
    Role.OPERATOR: frozenset(c for c in Capability if c is not Capability.PORTAL),
    Role.ADMIN: frozenset({
        Capability.VIEW_CUSTOMERS, Capability.MANAGE_CUSTOMERS, Capability.MANAGE_RECIPIENTS,
        Capability.IMPERSONATE, Capability.HANDLE_MAIL, Capability.BILLING,
    }),
    Role.MAIL_ADMIN: frozenset({Capability.VIEW_CUSTOMERS, Capability.HANDLE_MAIL}),
    Role.CUSTOMER: frozenset({Capability.PORTAL}),
}


def can(user, capability: Capability) -> bool:
    """True when ``user`` is logged in and their role grants ``capability``."""
    if user is None or not getattr(user, "is_authenticated", False):
        return False
    try:
        role = Role(user.role)
    except ValueError:
        return False
    return capability in ROLE_CAPABILITIES.get(role, frozenset())


def allow(*capabilities: Capability):
    """Mark a view as open to users holding ALL of ``capabilities``."""

    def decorate(view):
        view._access = ("capabilities", frozenset(capabilities))
        return view

    return decorate


def public(view):
    """Mark a view as open to everyone, logged in or not."""
    view._access = ("public", frozenset())
    return view


def customer_only(view):
    """A portal view: a logged-in customer (or staff acting as one)."""
    view._access = ("capabilities", frozenset({Capability.PORTAL}))
    return view


def enforce_access():
    """before_request hook: apply the view's declared access, refuse views that declare none."""
    if request.endpoint is None:
        return None  # 404 handled by Flask
    if request.endpoint == "static":
        return None
    view = current_app.view_functions.get(request.endpoint)
    access = getattr(view, "_access", None)
    if access is None:
        # Deny by default: a view someone forgot to mark is never reachable.
        current_app.logger.error("view %s declares no access rule", request.endpoint)
        abort(403)
    kind, needed = access
    if kind == "public":
        return None
    if not current_user.is_authenticated:
        if request.headers.get("HX-Request"):
            abort(401)
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    if not _impersonator_still_allowed():
        # The staff member behind "log in as customer" was switched off: end the session.
        from flask_login import logout_user

        logout_user()
        session.clear()
        return redirect(url_for("auth.login"))
    if not all(can(current_user, c) for c in needed):
        abort(403)
    # Customers must be active to use the portal (staff acting as them too).
    if current_user.is_customer:
        customer = current_user.customer
        if customer is None or not customer.is_active:
            abort(403)
    return None


def _impersonator_still_allowed() -> bool:
    """While staff act as a customer, the staff account must still exist and be switched on."""
    staff_id = session.get("impersonator_id")
    if not staff_id:
        return True
    from spheremail.extensions import db
    from spheremail.models import User

    staff = db.session.get(User, int(staff_id))
    return staff is not None and staff.is_enabled and staff.is_staff


def audit_actor():
    """Who to write in the audit trail for a portal action: the staff member while they act
    as the customer, else the logged-in user."""
    staff_id = session.get("impersonator_id")
    if staff_id:
        from spheremail.extensions import db
        from spheremail.models import User

        staff = db.session.get(User, int(staff_id))
        if staff is not None:
            return staff
    return current_user._get_current_object()


def acting_as_customer() -> bool:
    """True while a staff member is logged in as a customer (the banner shows)."""
    return bool(session.get("impersonator_id"))


def staff_required(view):
    """Decorator for helpers outside the declared-access scheme (e.g. CLI-less utilities)."""

    @wraps(view)
    def wrapper(*a, **kw):
        if not current_user.is_authenticated or not current_user.is_staff:
            abort(403)
        return view(*a, **kw)

    return wrapper
