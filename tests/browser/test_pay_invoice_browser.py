"""Issue #3 end to end in a real browser: staff create a plan and give it to a customer, run the
bill run with the overview's button; the customer logs in, sees the invoice and pays it with
Pay now on the Stripe stand-in's checkout page; Stripe (the stand-in) sends its signed webhook
to the live app over HTTP; the customer and staff then see the invoice paid. axe on every page."""
from __future__ import annotations

import datetime as dt
import re

import pytest
from playwright.sync_api import expect

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


def _bill_customer_as_staff(page, operator, customer) -> int:
    """Staff work, all by clicks: create a plan on the plans page, give it to the customer in the
    billing panel of their page, then run this month's bill run with the overview's button."""
    from spheremail.models import Invoice, Plan

    login(page, operator.email, TEST_PASSWORD)
    page.goto("/billing/plans")
    assert_accessible(page, "plans")
    page.get_by_role("button", name="New plan").click()  # a link styled as a button
    page.wait_for_load_state("networkidle")
    assert_accessible(page, "new plan form")
    page.get_by_label("Name", exact=True).fill("Virtual mailbox")
    page.get_by_label("Monthly price").fill("29.50")
    page.get_by_label("What is included").fill("Mail handling")
    page.get_by_role("button", name="Save plan").click()
    page.wait_for_url(re.compile(r"/billing/plans$"))
    expect(page.get_by_role("row").filter(has_text="Virtual mailbox")).to_contain_text("€29.50")

    page.goto(f"/customers/{customer.id}")
    panel = page.get_by_role("region", name="Billing", exact=True)
    assert_accessible(page, "customer page with billing panel")
    panel.get_by_label("Plan").select_option(label="Virtual mailbox — €29.50/month")
    # htmx posts, gets 204 + billingChanged, and the panel fetches itself again.
    with page.expect_response(lambda r: r.url.endswith(f"/billing/customers/{customer.id}")
                              and r.request.method == "GET" and r.status == 200):
        panel.get_by_role("button", name="Save plan").click()
    expect(page.get_by_role("region", name="Billing", exact=True).locator("#billing-plan option:checked")).to_have_text(
        "Virtual mailbox — €29.50/month")
    page.wait_for_load_state("networkidle")
    db.session.expire_all()
    assert customer.plan_id is not None and db.session.get(Plan, customer.plan_id).name == "Virtual mailbox"
    assert_accessible(page, "customer page after choosing the plan")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Billing").click()
    page.wait_for_load_state("networkidle")
    this_month = dt.date.today().strftime("%Y-%m")
    expect(page.get_by_label("Month to bill")).to_have_value(this_month)
    assert_accessible(page, "billing overview")
    page.get_by_role("button", name="Run the bill run").click()
    page.wait_for_load_state("networkidle")
    expect(page.get_by_role("status").filter(has_text="created")).to_have_text(
        f"1 invoice created for {this_month}.")
    assert_accessible(page, "billing overview after the bill run")
    # Again: idempotent, and it says so.
    page.get_by_role("button", name="Run the bill run").click()
    page.wait_for_load_state("networkidle")
    expect(page.get_by_role("status").filter(has_text="Nothing new")).to_have_text(
        f"Nothing new: every active customer already has an invoice for {this_month}.")
    page.get_by_role("button", name="Log out").click()
    page.wait_for_load_state("networkidle")

    db.session.expire_all()
    [invoice] = db.session.execute(db.select(Invoice)).scalars().all()
    assert invoice.status == "pending" and invoice.total_minor == 2950 and invoice.customer_id == customer.id
    return invoice.id


def test_staff_bill_and_customer_pays_with_pay_now(page, live_url, operator, make_customer, stripe_live):
    customer = make_customer(first_name="Katherine", last_name="Johnson", email="katherine@example.test",
                             created_at=dt.datetime(2025, 1, 1))
    invoice_id = _bill_customer_as_staff(page, operator, customer)

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
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Billing").click()
    page.wait_for_load_state("networkidle")
    row = page.get_by_role("region", name=re.compile(r"^Invoices \(")).get_by_role("row").filter(has_text="€29.50")
    expect(row).to_contain_text("Paid")
    row.get_by_role("link").first.click()
    page.wait_for_load_state("networkidle")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Paid")
    assert "Record offline payment" not in page.content()
    assert_accessible(page, "staff invoice page in billing")
    page.get_by_role("link", name="Online payment attempts").click()
    page.wait_for_load_state("networkidle")
    assert page.locator("#invoice-status").inner_text() == "Paid"
    assert "Succeeded" not in page.content()  # labels are words for people
    assert "Paid" in page.get_by_role("table").last.inner_text()
    assert_accessible(page, "staff printable invoice with payment attempts")
    page.get_by_role("link", name="Back to the invoice in billing").click()
    page.wait_for_load_state("networkidle")
    page.get_by_role("link", name="Billing", exact=True).first.click()
    page.wait_for_load_state("networkidle")
    page.get_by_role("link", name="Online payments").click()
    page.wait_for_load_state("networkidle")
    expect(page.get_by_role("heading", level=1)).to_have_text("Online payments")
    assert_accessible(page, "staff online payments")
