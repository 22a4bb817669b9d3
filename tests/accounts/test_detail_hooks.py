"""The customer detail page (customers feature) shows the login-help and impersonation hooks."""
import pytest


@pytest.fixture
def customer(make_customer):
    return make_customer(password=None)


def test_operator_sees_state_reset_button_and_impersonation(client, make_staff, auth, customer):
    auth.login(make_staff("operator").email)
    page = client.get(f"/customers/{customer.id}")
    assert page.status_code == 200
    assert b"Never activated" in page.data
    assert f'action="/customers/{customer.id}/send-password-reset"'.encode() in page.data
    assert f'href="/customers/{customer.id}/impersonate"'.encode() in page.data


def test_mail_admin_sees_state_only(client, make_staff, auth, customer):
    auth.login(make_staff("mail_admin").email)
    page = client.get(f"/customers/{customer.id}")
    assert page.status_code == 200
    assert b"Never activated" in page.data
    assert b"send-password-reset" not in page.data and b"/impersonate" not in page.data


def test_portal_nav_links_exist_for_customers(client, app, make_customer, auth):
    auth.login(make_customer().email)
    html = client.get("/portal").data.decode()
    assert 'href="/portal"' in html and 'href="/portal/profile"' in html
    for endpoint in ("billing.portal_invoices", "payments.portal_invoices"):
        if endpoint in app.view_functions:
            with app.test_request_context():
                from flask import url_for

                assert f'href="{url_for(endpoint)}"' in html
