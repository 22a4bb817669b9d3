"""Demo data for ``flask --app app seed-demo``: staff logins and a dozen customers.

Safe to run again: everything is looked up by email first and only what is missing is
created. The demo password is generated once and kept in the instance folder
(``demo_operator_password``), so every run prints the same login. All demo staff and
demo customers share that password. Billing and integrations add their own
``seed_*`` steps to :func:`seed_demo`; the caller commits.
"""
from __future__ import annotations

import datetime as dt
import os
import secrets
from pathlib import Path

from flask import current_app

from spheremail.models import Customer
from spheremail.models.base import today
from spheremail.models.user import Role
from spheremail.services.accounts import create_staff_user, find_user_by_email

DEMO_DOMAIN = "demo.spheremail.test"
OPERATOR_EMAIL = f"operator@{DEMO_DOMAIN}"
PASSWORD_FILE = "demo_operator_password"

STAFF = (
    (Role.OPERATOR.value, OPERATOR_EMAIL),
    (Role.ADMIN.value, f"admin@{DEMO_DOMAIN}"),
    (Role.MAIL_ADMIN.value, f"mail@{DEMO_DOMAIN}"),
)

# (first, last, company, [(first, last, company, status)], state)
# state: None (active), "inactive", "scheduled" (a 30-day notice), "end_of_period".
CUSTOMERS = (
    ("Grace", "Hopper", "Compiler Works", [("Mary", "Hawes", None, "paid")], None),
    ("Alan", "Turing", "Bletchley Analytics", [], None),
    ("Ada", "Lovelace", None, [("Charles", "Babbage", "Analytical Engines", "free")], None),
    ("Katherine", "Johnson", "Trajectory Ltd", [("Dorothy", "Vaughan", None, "paid"),
                                                ("Mary", "Jackson", None, "paid")], None),
    ("Zoë", "Ångström", "Nordlys Design AB", [], None),
    ("José", "Núñez", "Café Central", [("Lucía", "Núñez", "Café Central", "free")], None),
    ("Edsger", "Dijkstra", None, [], "inactive"),
    ("Barbara", "Liskov", "Substitution Partners", [("Old", "Partner", None, "inactive")], None),
    ("Linus", "Torvalds", None, [], "scheduled"),
    ("Margaret", "Hamilton", "Apollo Consulting", [("Jim", "Kelly", None, "paid")], "end_of_period"),
    ("Tim", "Berners-Lee", "Hypertext & Co", [], None),
    ("Radia", "Perlman", "Spanning Tree GmbH", [("Ivan", "Sutherland", None, "free")], None),
)


def seed_demo() -> dict:
    """Create whatever demo data is missing; returns the operator's login {"email", "password"}."""
    password = demo_password()
    operator = seed_staff(password)
    seed_customers(password, actor=operator)
    return {"email": OPERATOR_EMAIL, "password": password}


def demo_password() -> str:
    """The demo password: read from the instance folder, generated there on the first run."""
    path = Path(current_app.instance_path) / PASSWORD_FILE
    if path.exists() and path.read_text().strip():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(12)
    # Created readable by the owner only: it is a working login.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    return password


def seed_staff(password: str):
    """The demo operator, admin and mail admin; returns the operator.

    An existing demo login whose password no longer matches the file is reset to it,
    so the printed login always works.
    """
    operator = None
    for role, email in STAFF:
        user = find_user_by_email(email)
        if user is None:
            user = create_staff_user(email=email, role=role, password=password)
        elif not user.check_password(password):
            user.set_password(password)
        if role == Role.OPERATOR.value:
            operator = user
    return operator


def _email(first: str, last: str) -> str:
    local = f"{first}.{last}".lower()
    local = "".join(ch if ch.isascii() and (ch.isalnum() or ch in ".-") else "" for ch in local)
    return f"{local}@{DEMO_DOMAIN}"


def seed_customers(password: str, actor=None) -> list[Customer]:
    """The demo customers with recipients in every state; one inactive, two with cancellations."""
    created = []
    for first, last, company, recipients, state in CUSTOMERS:
        email = _email(first, last)
        if find_user_by_email(email) is not None:
            continue
        customer = seed_customer(first, last, company, email, password, actor)
        for r_first, r_last, r_company, status in recipients:
            seed_recipient(customer, r_first, r_last, r_company, status, actor)
        seed_state(customer, state, actor)
        created.append(customer)
    return created


def seed_customer(first, last, company, email, password, actor) -> Customer:
    """One demo customer with a portal login (the demo password)."""
    from spheremail.services.customers import create_customer

    return create_customer(first, last, email, company=company, password=password,
                           signed_up_via="demo", actor=actor)


def seed_recipient(customer, first, last, company, status, actor):
    """One additional recipient in ``status``."""
    from spheremail.services.recipients import add_recipient

    return add_recipient(customer, first, last, company=company, status=status, actor=actor)


def seed_state(customer: Customer, state: str | None, actor) -> None:
    """Put a demo customer in ``state`` (see CUSTOMERS)."""
    from spheremail.services import customers as service

    if state == "inactive":
        service.deactivate_now(customer, actor=actor)
    elif state == "scheduled":
        service.schedule_deactivation(customer, "date", today() + dt.timedelta(days=30), actor=actor)
    elif state == "end_of_period":
        service.schedule_deactivation(customer, "end_of_period", actor=actor)
