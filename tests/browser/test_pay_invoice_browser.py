"""A customer pays an invoice with Pay now in a real browser; Stripe (the stand-in) sends its
signed webhook to the live app over HTTP; the customer and staff then see the invoice paid."""
from __future__ import annotations

import datetime as dt
import re

import pytest

from spheremail.extensions import db
from tests.browser.conftest import assert_accessible, login
from tests.conftest import TEST_PASSWORD
from tests.payments.conftest import configure_gateway


@pytest.fixture
def stripe_live(app, live_url):
    from tests.standins.stripe import StripeStandIn

    stand_in = StripeStandIn(webhook_url=live_url + "/payments/stripe/webhook")
    stand_in.start()
    configure_gateway(app, stand_in)
    yield stand_in
    stand_in.stop()


def _bill_customer(operator, customer) -> int:
    """Staff work: a plan, given to the customer, then this month's bill run."""
    from spheremail.models import Invoice
    from spheremail.services import billing

    plan = billing.save_plan({"name": "Virtual mailbox", "description": "Mail handling",
                              "monthly_price": "29.50"}, actor=operator)
    billing.set_customer_plan(customer, str(plan.id), actor=operator)
    db.session.commit()
    result = billing.run_bill_run(dt.date.today().strftime("%Y-%m"), send_emails=False)
    assert result.created == 1
    invoice = db.session.get(Invoice, result.invoice_ids[0])
    assert invoice.status == "pending" and invoice.total_minor == 2950
    return invoice.id


def test_customer_pays_an_invoice_with_pay_now(page, live_url, operator, make_customer, stripe_live):
    customer = make_customer(first_name="Katherine", last_name="Johnson", email="katherine@example.test")
    invoice_id = _bill_customer(operator, customer)

    login(page, customer.email, TEST_PASSWORD)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Invoices").click()
    page.wait_for_load_state("networkidle")
    assert page.get_by_role("heading", level=1).inner_text() == "My invoices"
    assert_accessible(page, "portal invoices")
    row = page.get_by_role("row").filter(has_text="€29.50")
    assert "Pending" in row.inner_text()

    page.get_by_role("link", name=re.compile(r"INV-|\d")).first.click()
    page.wait_for_load_state("networkidle")
    assert page.get_by_role("heading", level=1).inner_text().startswith("Invoice ")
    assert_accessible(page, "printable invoice")

    page.get_by_role("button", name="Pay now").click()
    page.wait_for_url(re.compile(re.escape(stripe_live.base_url) + r"/checkout/"))
    assert "EUR 29.50" in page.get_by_role("heading", level=1).inner_text()
    assert_accessible(page, "stand-in checkout page")
    page.get_by_label("Card number").fill("4242 4242 4242 4242")
    page.get_by_role("button", name="Pay").click()
    page.wait_for_url(re.compile(re.escape(live_url) + rf"/portal/invoices/{invoice_id}/payment"))
    assert "is paid" in page.get_by_role("status").first.inner_text()
    assert_accessible(page, "payment return page")
    [delivery] = stripe_live.events_sent
    assert delivery.url.startswith(live_url) and delivery.status == 200

    page.goto("/portal/invoices")
    row = page.get_by_role("row").filter(has_text="€29.50")
    assert "Paid" in row.inner_text()
    assert page.get_by_role("button", name=re.compile("Pay now")).count() == 0
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Billing details").click()
    page.wait_for_load_state("networkidle")
    assert page.get_by_role("button", name="Save a card").is_visible()
    assert_accessible(page, "billing details")
    page.get_by_role("button", name="Log out").click()
    page.wait_for_load_state("networkidle")

    login(page, operator.email, TEST_PASSWORD)
    page.goto(f"/payments/invoices/{invoice_id}")
    assert page.locator("#invoice-status").inner_text() == "Paid"
    assert "Succeeded" not in page.content()  # labels are words for people
    assert "Paid" in page.get_by_role("table").last.inner_text()
    assert_accessible(page, "staff invoice page")
    page.goto("/payments/")
    assert_accessible(page, "staff online payments")
