"""Every route of the app, for every kind of visitor: the access rules hold and nothing crashes.

Routes are discovered from ``app.url_map`` at collection time, so routes other features add
later are covered without touching this file. URL parameters are filled with ids of real rows.
"""
from __future__ import annotations

import uuid

import pytest

from spheremail.models.user import Role
from spheremail.security import ROLE_CAPABILITIES, Capability
from tests.conftest import TEST_PASSWORD, make_test_app

ROLES = ("anonymous", "customer", "mail_admin", "admin", "operator")  # operator last: it may change most
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# Capabilities only the Operator holds: Admins and Mail Admins must always get 403.
OPERATOR_ONLY = {Capability.INTEGRATIONS, Capability.VIEW_AUDIT}


def _discover():
    """(endpoint, rule, method) for every rule of a freshly built app."""
    app = make_test_app("sqlite://")
    cases = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in sorted((rule.methods or set()) & set(METHODS)):
            cases.append((rule.endpoint, rule.rule, method))
    return sorted(cases)


def pytest_generate_tests(metafunc):
    if "route" in metafunc.fixturenames:
        cases = _discover()
        metafunc.parametrize("route", cases, ids=[f"{m} {r}" for _, r, m in cases])


@pytest.fixture
def app_config():
    # Nothing may reach the real vendors from here: point them at a closed local port.
    closed = "http://127.0.0.1:9"
    return {"OFFICERND_TOKEN_URL": closed + "/token", "OFFICERND_API_BASE": closed,
            "NEXUDUS_API_BASE": closed, "STRIPE_API_BASE": closed}


@pytest.fixture
def world(app, db, make_staff, make_customer):
    """Real rows to put in URLs, and one login per role."""
    from spheremail.services.recipients import add_recipient

    customer = make_customer(first_name="Matrix", last_name="Customer")
    recipient = add_recipient(customer, "Extra", "Person")
    db.session.commit()
    logins = {"customer": customer.email}
    for role in ("mail_admin", "admin", "operator"):
        logins[role] = make_staff(role).email
    ids = {"customer_id": customer.id, "recipient_id": recipient.id, "user_id": customer.user.id,
           "mailbox_number": customer.mailbox_number, "number": customer.mailbox_number}
    return {"logins": logins, "ids": ids}


def _fill(rule, ids: dict) -> dict:
    """A value for each URL argument: a real id when the name says which, else 1 or "x"."""
    values = {}
    for name, converter in rule._converters.items():
        kind = type(converter).__name__
        from werkzeug.routing.converters import NumberConverter

        if isinstance(converter, NumberConverter):  # also the app's bounded int converter
            values[name] = ids.get(name, 1)
        elif kind == "UUIDConverter":
            values[name] = uuid.uuid4()
        elif kind == "AnyConverter":
            values[name] = sorted(converter.items)[0] if hasattr(converter, "items") else "x"
        else:
            values[name] = str(ids.get(name, "x"))
    return values


def _client_for(app, role, logins):
    client = app.test_client()
    if role != "anonymous":
        response = client.post("/login", data={"email": logins[role], "password": TEST_PASSWORD})
        assert response.status_code == 302, f"could not log in as {role}"
    return client


def test_every_view_declares_its_access(app):
    undeclared = sorted(
        endpoint for endpoint, view in app.view_functions.items()
        if endpoint != "static" and getattr(view, "_access", None) is None
    )
    assert undeclared == [], "views without @allow/@customer_only/@public (always 403)"


def test_route_access_for_every_role(app, world, route):
    endpoint, rule_text, method = route
    rule = next(r for r in app.url_map.iter_rules() if r.endpoint == endpoint and r.rule == rule_text)
    _, path = rule.build(_fill(rule, world["ids"]), append_unknown=False)
    view = app.view_functions[endpoint]
    kind, needed = getattr(view, "_access", ("undeclared", frozenset()))
    problems = []
    for role in ROLES:
        client = _client_for(app, role, world["logins"])
        try:
            response = client.open(path, method=method, data={})
        except Exception as exc:  # noqa: BLE001 - TESTING propagates errors: that is a 500
            problems.append(f"{role}: raised {exc.__class__.__name__}: {exc}")
            continue
        status = response.status_code
        where = f"{role} {method} {path} -> {status}"
        if status >= 500:
            problems.append(f"{where}: server error")
            continue
        if kind == "undeclared":
            if status != 403:
                problems.append(f"{where}: undeclared views must be refused")
            continue
        if kind == "public":
            continue
        if role == "anonymous":
            login_redirect = status in (301, 302, 303) and "/login" in response.headers.get("Location", "")
            if not (login_redirect or status == 401):
                problems.append(f"{where}: anonymous must be sent to log in")
            continue
        granted = ROLE_CAPABILITIES[Role(role)]
        if not needed <= granted:
            if status != 403:
                problems.append(f"{where}: role lacks {sorted(c.value for c in needed - granted)}, expected 403")
        elif status == 403 and method == "GET" and role != "customer":
            problems.append(f"{where}: role holds {sorted(c.value for c in needed)} but was refused")
        if role == "customer" and Capability.PORTAL not in needed and status != 403:
            problems.append(f"{where}: customers must get 403 on staff views")
        if role != "customer" and Capability.PORTAL in needed and status != 403:
            problems.append(f"{where}: staff must get 403 on portal views")
        if role in ("admin", "mail_admin") and needed & OPERATOR_ONLY and status != 403:
            problems.append(f"{where}: Integrations and audit are for the Operator only")
    assert not problems, "\n".join(problems)
