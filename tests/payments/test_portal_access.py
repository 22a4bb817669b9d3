"""Who sees which invoice, billing details input, and clear answers when Stripe cannot help."""
from __future__ import annotations

import pytest
from flask_sqlalchemy.record_queries import get_recorded_queries

from spheremail.extensions import db
from spheremail.models import BillingDetails, Invoice, PaymentAttempt
from tests.payments.conftest import configure_gateway


def test_customer_cannot_open_another_customers_invoice(customer_client, customer, make_customer, make_invoice,
                                                        gateway):
    other = make_customer()
    theirs = make_invoice(other)
    draft = make_invoice(customer, status="draft")
    for invoice_id in (theirs.id, draft.id, 999999):
        assert customer_client.get(f"/portal/invoices/{invoice_id}").status_code == 404
        assert customer_client.get(f"/portal/invoices/{invoice_id}/payment?session_id=x").status_code == 404
        assert customer_client.post(f"/portal/invoices/{invoice_id}/pay").status_code == 404
    assert customer_client.get("/portal/invoices/abc").status_code == 404
    assert gateway.count("POST", "/v1/checkout/sessions") == 0
    listing = customer_client.get("/portal/invoices").get_data(as_text=True)
    assert theirs.number not in listing
    # Nor the staff page of it.
    assert customer_client.get(f"/payments/invoices/{theirs.id}").status_code == 403


def test_printable_invoice_for_customer_and_staff(client, auth, customer, make_invoice, make_staff):
    from spheremail.models import BillingDetails  # noqa: F401

    invoice = make_invoice(customer, total=12345)
    auth.login(customer.email)
    page = client.get(f"/portal/invoices/{invoice.id}").get_data(as_text=True)
    assert "payments-print.css" in page and 'media="print"' in page
    assert "€123.45" in page and invoice.number in page
    auth.logout()
    admin = make_staff("admin")
    auth.login(admin.email)
    page = client.get(f"/payments/invoices/{invoice.id}").get_data(as_text=True)
    assert "€123.45" in page and "Online payment attempts" in page
    assert client.get("/payments/invoices/999999").status_code == 404
    auth.logout()
    mail_admin = make_staff("mail_admin")
    auth.login(mail_admin.email)
    assert client.get(f"/payments/invoices/{invoice.id}").status_code == 403
    assert client.get("/payments/").status_code == 403


def test_not_configured_hides_pay_now_with_a_message(customer_client, customer, make_invoice):
    invoice = make_invoice(customer)
    page = customer_client.get("/portal/invoices").get_data(as_text=True)
    assert "Pay now" not in page and "Online payment is not set up" in page
    page = customer_client.get(f"/portal/invoices/{invoice.id}").get_data(as_text=True)
    assert "Pay now" not in page and "Online payment is not set up" in page
    response = customer_client.post(f"/portal/invoices/{invoice.id}/pay", follow_redirects=True)
    assert response.status_code == 200 and "Online payment is not set up" in response.get_data(as_text=True)
    billing_page = customer_client.get("/portal/billing").get_data(as_text=True)
    assert "Save a card" not in billing_page and "Online payment is not set up" in billing_page


def test_stripe_unreachable_gives_a_clear_message(app, customer_client, customer, make_invoice, stripe_standin):
    configure_gateway(app, stripe_standin)
    app.config["STRIPE_API_BASE"] = "http://127.0.0.1:9"  # nothing listens there
    invoice = make_invoice(customer)
    response = customer_client.post(f"/portal/invoices/{invoice.id}/pay", follow_redirects=True)
    assert response.status_code == 200
    assert "could not be reached" in response.get_data(as_text=True)
    db.session.expire_all()
    assert db.session.get(Invoice, invoice.id).status == "pending"
    attempt = db.session.execute(db.select(PaymentAttempt)).scalar_one()
    assert attempt.status == "failed"
    response = customer_client.post("/portal/billing/card", follow_redirects=True)
    assert response.status_code == 200 and "could not be reached" in response.get_data(as_text=True)


def test_wrong_secret_key_gives_a_clear_message(app, customer_client, customer, make_invoice, stripe_standin):
    configure_gateway(app, stripe_standin, secret_key="sk_test_wrong_key_123456")
    invoice = make_invoice(customer)
    response = customer_client.post(f"/portal/invoices/{invoice.id}/pay", follow_redirects=True)
    assert response.status_code == 200
    assert "not configured correctly" in response.get_data(as_text=True)


def test_webhook_when_not_configured_or_garbage(client, customer, make_invoice):
    assert client.post("/payments/stripe/webhook", data=b"{}").status_code == 400
    assert client.get("/payments/stripe/webhook").status_code == 405


def test_webhook_garbage_body_with_gateway(client, gateway):
    body = b"not json at all"
    assert client.post("/payments/stripe/webhook", data=body, headers=gateway.signed_headers(body)).status_code == 400


@pytest.mark.parametrize("form, field_error", [
    ({"name": "x" * 201, "address": "Main St 1", "vat_number": ""}, "at most 200 characters"),
    ({"name": "<script>alert(1)</script>", "address": "", "vat_number": ""}, "cannot contain &lt; or &gt;"),
    ({"name": "ACME", "address": "a" * 1001, "vat_number": ""}, "at most 1000 characters"),
    ({"name": "ACME", "address": "Main St 1", "vat_number": "12"}, "country prefix"),
    ({"name": "ACME", "address": "Main St 1", "vat_number": "NL" + "1" * 60}, "country prefix"),
    # folded in from billing's former /billing/my-details page
    ({"name": "A", "address": "", "vat_number": "123"}, "country prefix"),
    ({"name": "A", "address": "", "vat_number": "<script>"}, "country prefix"),
    ({"name": "A", "address": "<b>Main St</b>", "vat_number": ""}, "The address cannot contain &lt; or &gt;"),
])
def test_billing_details_bad_input_is_explained_and_not_saved(customer_client, customer, form, field_error):
    response = customer_client.post("/portal/billing", data=form)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert field_error in html and 'aria-invalid="true"' in html
    assert "<script>alert(1)</script>" not in html
    assert db.session.execute(db.select(BillingDetails)).first() is None


def test_billing_details_are_saved(customer_client, customer):
    response = customer_client.post("/portal/billing", data={
        "name": "Hopper Consulting", "address": "Main St 1\n1000 AA Amsterdam", "vat_number": "nl 123456789 b01"})
    assert response.status_code == 303
    details = db.session.execute(db.select(BillingDetails)).scalar_one()
    assert (details.name, details.vat_number) == ("Hopper Consulting", "NL123456789B01")
    page = customer_client.get("/portal/billing").get_data(as_text=True)
    assert "Hopper Consulting" in page and "NL123456789B01" in page


def test_billing_details_are_used_on_the_next_invoice_and_audited(customer_client, customer):
    import datetime as dt

    from spheremail.models import AuditEvent, Plan
    from spheremail.services import billing

    response = customer_client.post("/portal/billing", data={
        "name": "Acme BV", "address": "Street 1\nAmsterdam", "vat_number": "nl 1234.56789.B01"})
    assert response.status_code == 303
    event = db.session.execute(db.select(AuditEvent).filter_by(action="billing_details_saved")).scalar_one()
    assert event.actor_id == customer.user_id
    plan = Plan(name="Standard", monthly_price_minor=2500, is_active=True)
    db.session.add(plan)
    db.session.flush()
    customer.plan_id = plan.id
    customer.created_at = dt.datetime(2025, 1, 1)
    db.session.commit()
    billing.run_bill_run("2026-03", run_date=dt.date(2026, 3, 1))
    invoice = db.session.execute(db.select(Invoice)).scalar_one()
    assert (invoice.bill_to_name, invoice.bill_to_address, invoice.bill_to_vat) == \
        ("Acme BV", "Street 1\nAmsterdam", "NL123456789B01")
    page = customer_client.get(f"/portal/invoices/{invoice.id}").get_data(as_text=True)
    assert "Street 1<br>" in page and "Amsterdam<br>" in page and "VAT NL123456789B01" in page


def test_billing_details_form_suggests_the_company_until_saved(client, auth, make_customer):
    customer = make_customer(company="Hopper Labs")
    auth.login(customer.email)
    page = client.get("/portal/billing").get_data(as_text=True)
    assert 'value="Hopper Labs"' in page
    assert db.session.execute(db.select(BillingDetails)).first() is None  # nothing stored on GET


def test_one_billing_details_page(customer_client):
    """billing's /billing/my-details was folded into the portal page (the nav links there)."""
    assert customer_client.get("/billing/my-details").status_code == 404
    nav = customer_client.get("/portal/invoices").get_data(as_text=True)
    assert 'href="/portal/billing"' in nav


def test_invoice_list_query_count_does_not_grow(customer_client, customer, make_invoice, gateway):
    make_invoice(customer)

    def count():
        before = len(get_recorded_queries())
        assert customer_client.get("/portal/invoices").status_code == 200
        return len(get_recorded_queries()) - before

    few = count()
    for _ in range(6):
        make_invoice(customer)
    assert count() == few


def test_staff_overview_query_count_does_not_grow(client, auth, make_staff, make_customer, make_invoice):
    from spheremail.models.payments import PaymentAttempt as Attempt

    def add_problem():
        invoice = make_invoice(make_customer())
        db.session.add(Attempt(invoice_id=invoice.id, kind="off_session", attempt=1, idempotency_key=f"k{invoice.id}",
                               status="declined", amount_minor=100, currency="EUR", failure_code="card_declined"))
        db.session.commit()

    add_problem()
    auth.login(make_staff("admin").email)

    def count():
        before = len(get_recorded_queries())
        assert client.get("/payments/").status_code == 200
        return len(get_recorded_queries()) - before

    few = count()
    for _ in range(5):
        add_problem()
    assert count() == few


def test_staff_switches_automatic_charging(client, auth, make_staff):
    from spheremail.services.payments import autocharge_enabled

    auth.login(make_staff("admin").email)
    assert client.post("/payments/settings", data={"autocharge": "on"}).status_code == 303
    assert autocharge_enabled() is True
    assert "checked" in client.get("/payments/").get_data(as_text=True)
    client.post("/payments/settings", data={})
    db.session.expire_all()
    assert autocharge_enabled() is False


def test_problem_helpers_for_billing_pages(app, customer, make_invoice):
    from flask import render_template_string

    from spheremail.models.payments import PaymentAttempt as Attempt
    from spheremail.services.payments import problems_by_invoice

    bad, fine = make_invoice(customer), make_invoice(customer)
    db.session.add_all([
        Attempt(invoice_id=bad.id, kind="off_session", attempt=1, idempotency_key="a1", status="declined",
                amount_minor=100, currency="EUR", failure_code="expired_card", failure_message="Your card has expired."),
        Attempt(invoice_id=fine.id, kind="off_session", attempt=1, idempotency_key="b1", status="declined",
                amount_minor=100, currency="EUR", failure_code="card_declined"),
        Attempt(invoice_id=fine.id, kind="off_session", attempt=2, idempotency_key="b2", status="succeeded",
                amount_minor=100, currency="EUR"),
    ])
    db.session.commit()
    assert set(problems_by_invoice([bad.id, fine.id])) == {bad.id}
    with app.test_request_context("/"):
        html = render_template_string('{% include "payments/partials/invoice_problem.html" %}', invoice=bad)
        assert "expired_card: Your card has expired." in html
        assert render_template_string('{% include "payments/partials/invoice_problem.html" %}',
                                      invoice=fine).strip() == ""
