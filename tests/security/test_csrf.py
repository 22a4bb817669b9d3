"""With CSRF protection ON (as in production): forged posts are refused and change nothing."""
import re

import pytest

from spheremail.models import Customer
from tests.conftest import TEST_PASSWORD


@pytest.fixture
def app_config():
    return {"WTF_CSRF_ENABLED": True}


def _token(html: bytes) -> str:
    match = re.search(rb'name="csrf_token" type="hidden" value="([^"]+)"', html) or \
        re.search(rb'name="csrf_token" value="([^"]+)"', html) or \
        re.search(rb'"X-CSRFToken": "([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1).decode()


@pytest.fixture
def customer_client(client, make_customer):
    customer = make_customer(first_name="Grace")
    login_page = client.get("/login")
    response = client.post("/login", data={"email": customer.email, "password": TEST_PASSWORD,
                                           "csrf_token": _token(login_page.data)})
    assert response.status_code == 302
    return client, customer


def _profile(customer, first_name):
    return {"first_name": first_name, "last_name": "Hopper", "company": "", "phone": "", "email": customer.email}


def _first_name(db, customer):
    db.session.expire_all()
    return db.session.get(Customer, customer.id).first_name


def test_login_without_token_is_refused(client, make_customer):
    customer = make_customer()
    response = client.post("/login", data={"email": customer.email, "password": TEST_PASSWORD})
    assert response.status_code == 400
    assert b"Form expired" in response.data and b"security token" in response.data
    assert client.get("/portal").status_code == 302  # not logged in


def test_post_without_or_with_wrong_token_changes_nothing(db, customer_client):
    client, customer = customer_client
    missing = client.post("/portal/profile", data=_profile(customer, "Forged"))
    assert missing.status_code == 400 and b"security token" in missing.data
    wrong = client.post("/portal/profile", data={**_profile(customer, "Forged"), "csrf_token": "not-the-token"})
    assert wrong.status_code == 400 and b"Form expired" in wrong.data
    bad_header = client.post("/portal/profile", data=_profile(customer, "Forged"),
                             headers={"X-CSRFToken": "nope", "HX-Request": "true"})
    assert bad_header.status_code == 400 and b"<html" not in bad_header.data  # the partial error
    assert _first_name(db, customer) == "Grace"


def test_post_with_the_token_from_the_page_works(db, customer_client):
    client, customer = customer_client
    token = _token(client.get("/portal/profile").data)
    response = client.post("/portal/profile", data={**_profile(customer, "Real"), "csrf_token": token})
    assert response.status_code == 303
    assert _first_name(db, customer) == "Real"


def test_htmx_header_token_works(db, customer_client):
    client, customer = customer_client
    page = client.get("/portal")
    header_token = re.search(rb'hx-headers=\'\{"X-CSRFToken": "([^"]+)"\}\'', page.data).group(1).decode()
    response = client.post("/portal/profile", data=_profile(customer, "ViaHeader"),
                           headers={"X-CSRFToken": header_token, "HX-Request": "true"})
    assert response.status_code == 303
    assert _first_name(db, customer) == "ViaHeader"


def test_forgot_password_needs_the_token_too(client, make_customer, smtp_server):
    customer = make_customer()
    assert client.post("/forgot-password", data={"email": customer.email}).status_code == 400
    assert smtp_server.messages == []
