"""Billing pages: access, every form's bad input, settings secrets, plans, the customer panel,
invoice actions, the overview's totals and its query count."""
from __future__ import annotations

import datetime as dt

import pytest
from flask_sqlalchemy.record_queries import get_recorded_queries
from sqlalchemy import select

from spheremail.extensions import db
from spheremail.models import Invoice, OneOffFee, Plan, Setting
from spheremail.services import billing

OLD = dt.datetime(2025, 1, 1)
BAD_AMOUNTS = ["", "-5", "abc", "1.234,56", "€12", "12 EUR", "12.345", "99999999", "1e3", "<script>x</script>"]
PAGES = ["/billing/", "/billing/settings", "/billing/plans", "/billing/plans/new"]


def count(model):
    return db.session.execute(select(db.func.count()).select_from(model)).scalar()


@pytest.mark.parametrize("url", PAGES)
def test_mail_admin_gets_403(client, make_staff, auth, url):
    auth.login(make_staff("mail_admin").email)
    assert client.get(url).status_code == 403
    assert client.post("/billing/settings", data={"currency": "USD"}).status_code == 403


@pytest.mark.parametrize("url", PAGES)
def test_admin_and_operator_see_billing(client, logged_in_admin, url):
    assert client.get(url).status_code == 200


def test_customer_cannot_see_staff_billing(client, make_customer, auth):
    c = make_customer()
    auth.login(c.email)
    assert client.get("/billing/").status_code == 403


def test_anonymous_is_sent_to_login(client):
    assert client.get("/billing/").status_code == 302


# ---------------------------------------------------------------- settings

GOOD_SETTINGS = {"currency": "EUR", "recipient_price": "7.50", "payment_terms_days": "30",
                 "invoice_prefix": "SM-", "email_invoices": "1", "gateway_publishable_key": "pk_test_123",
                 "gateway_secret_key": "sk_test_secret_value"}


def test_settings_saved_and_secret_encrypted_never_shown(client, logged_in_operator, app):
    r = client.post("/billing/settings", data=GOOD_SETTINGS)
    assert r.status_code == 303
    s = billing.get_settings()
    assert (s.currency, s.recipient_price_minor, s.payment_terms_days, s.invoice_prefix, s.email_invoices) == \
        ("EUR", 750, 30, "SM-", True)
    stored = Setting.get("billing_gateway_secret_key_encrypted")
    assert stored and "sk_test_secret_value" not in stored
    assert billing.gateway_secret() == "sk_test_secret_value"
    page = client.get("/billing/settings").get_data(as_text=True)
    assert "sk_test_secret_value" not in page and "stored; leave empty to keep it" in page
    # saving again with the field empty keeps the secret
    client.post("/billing/settings", data=dict(GOOD_SETTINGS, gateway_secret_key=""))
    assert billing.gateway_secret() == "sk_test_secret_value"
    client.post("/billing/settings", data=dict(GOOD_SETTINGS, gateway_secret_key="", clear_gateway_secret_key="1"))
    assert billing.gateway_secret() is None


@pytest.mark.parametrize("field, value, message", [
    ("currency", "XYZ", "Choose a currency"),
    ("currency", "", "Choose a currency"),
    ("payment_terms_days", "-1", "whole number of days"),
    ("payment_terms_days", "abc", "whole number of days"),
    ("payment_terms_days", "400", "whole number of days"),
    ("payment_terms_days", "1.5", "whole number of days"),
    ("invoice_prefix", "<script>", "Use up to 12"),
    ("invoice_prefix", "A" * 13, "Use up to 12"),
    ("gateway_publishable_key", "has spaces in it", "exactly as the gateway"),
    ("gateway_secret_key", "x" * 300, "exactly as the gateway"),
] + [("recipient_price", bad, "") for bad in BAD_AMOUNTS])
def test_settings_bad_input(client, logged_in_operator, field, value, message):
    r = client.post("/billing/settings", data=dict(GOOD_SETTINGS, **{field: value}))
    assert r.status_code == 200
    text = r.get_data(as_text=True)
    assert "Nothing was saved" in text and message in text
    assert count(Setting) == 0
    assert "sk_test_secret_value" not in text  # a secret is never echoed, even on error
    assert "<script>" not in text


def test_currency_locked_once_invoices_exist(client, logged_in_operator, make_customer, make_plan):
    plan = make_plan()
    make_customer(plan_id=plan.id, created_at=OLD)
    billing.run_bill_run("2026-03", run_date=dt.date(2026, 3, 1))
    r = client.post("/billing/settings", data=dict(GOOD_SETTINGS, currency="USD"))
    assert "cannot change once invoices exist" in r.get_data(as_text=True)
    assert billing.get_settings().currency == "EUR"


# ---------------------------------------------------------------- plans

def test_plan_create_edit_retire(client, logged_in_admin):
    r = client.post("/billing/plans/new", data={"name": "Basic", "monthly_price": "19.99", "description": "Mail"})
    assert r.status_code == 303
    plan = db.session.execute(select(Plan)).scalar_one()
    assert plan.monthly_price_minor == 1999
    client.post(f"/billing/plans/{plan.id}/edit", data={"name": "Basic+", "monthly_price": "21"})
    client.post(f"/billing/plans/{plan.id}/retire")
    db.session.expire_all()
    assert (plan.name, plan.monthly_price_minor, plan.is_active) == ("Basic+", 2100, False)
    assert "Retired" in client.get("/billing/plans").get_data(as_text=True)
    client.post(f"/billing/plans/{plan.id}/reactivate")
    db.session.expire_all()
    assert plan.is_active


@pytest.mark.parametrize("data, message", [
    ({"name": "", "monthly_price": "10"}, "Enter a name"),
    ({"name": "x" * 101, "monthly_price": "10"}, "at most 100"),
    ({"name": "Ok", "monthly_price": "10", "description": "d" * 1001}, "at most 1000"),
    ({"name": "Basic", "monthly_price": "10"}, "already exists"),
    ({"name": "BASIC", "monthly_price": "10"}, "already exists"),
] + [({"name": "New", "monthly_price": bad}, "") for bad in BAD_AMOUNTS])
def test_plan_bad_input(client, logged_in_admin, make_plan, data, message):
    make_plan("Basic", 1000)
    r = client.post("/billing/plans/new", data=data)
    assert r.status_code == 200
    assert message in r.get_data(as_text=True) and "Nothing was saved" in r.get_data(as_text=True)
    assert count(Plan) == 1


def test_script_in_plan_name_is_escaped(client, logged_in_admin):
    client.post("/billing/plans/new", data={"name": "<script>alert(1)</script>", "monthly_price": "5"})
    page = client.get("/billing/plans").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page


# ---------------------------------------------------------------- the customer panel

@pytest.fixture
def customer(make_customer):
    return make_customer(created_at=OLD)


def test_panel_set_plan_and_add_fee_with_htmx(client, logged_in_admin, customer, make_plan):
    plan = make_plan("Basic", 1500)
    retired = make_plan("Old", 900, active=False)
    panel = client.get(f"/billing/customers/{customer.id}").get_data(as_text=True)
    assert "Basic" in panel and "Old —" not in panel  # retired plans are not offered
    r = client.post(f"/billing/customers/{customer.id}/plan", data={"plan_id": plan.id}, headers={"HX-Request": "true"})
    assert r.status_code == 204 and r.headers["HX-Trigger"] == "billingChanged"
    r = client.post(f"/billing/customers/{customer.id}/plan", data={"plan_id": retired.id})
    assert "Choose a plan" in r.get_data(as_text=True)
    r = client.post(f"/billing/customers/{customer.id}/fees",
                    data={"description": "Scan", "amount": "3.20", "fee_date": "2026-02-03"},
                    headers={"HX-Request": "true"})
    assert r.status_code == 204
    db.session.expire_all()
    assert customer.plan_id == plan.id
    fee = db.session.execute(select(OneOffFee)).scalar_one()
    assert (fee.amount_minor, fee.fee_date) == (320, dt.date(2026, 2, 3))
    # no-JS: a plain post redirects back to the customer's page
    r = client.post(f"/billing/customers/{customer.id}/plan", data={"plan_id": ""})
    assert r.status_code == 303
    r = client.post(f"/billing/fees/{fee.id}/delete", headers={"HX-Request": "true"})
    assert r.status_code == 204 and count(OneOffFee) == 0


@pytest.mark.parametrize("data, field_message", [
    ({"description": "", "amount": "5", "fee_date": "2026-02-03"}, "Enter a description"),
    ({"description": "x" * 201, "amount": "5", "fee_date": "2026-02-03"}, "at most 200"),
    ({"description": "Scan", "amount": "0", "fee_date": "2026-02-03"}, "more than zero"),
    ({"description": "Scan", "amount": "5", "fee_date": ""}, "as a date"),
    ({"description": "Scan", "amount": "5", "fee_date": "03/02/2026"}, "as a date"),
    ({"description": "Scan", "amount": "5", "fee_date": "1900-01-01"}, "between the years"),
    ({"description": "Scan", "amount": "5", "fee_date": "2026-02-30"}, "as a date"),
] + [({"description": "Scan", "amount": bad, "fee_date": "2026-02-03"}, "") for bad in BAD_AMOUNTS])
def test_fee_bad_input(client, logged_in_admin, customer, data, field_message):
    r = client.post(f"/billing/customers/{customer.id}/fees", data=data, headers={"HX-Request": "true"})
    assert r.status_code == 200
    text = r.get_data(as_text=True)
    assert field_message in text and "Nothing was saved" in text
    assert count(OneOffFee) == 0


@pytest.mark.parametrize("value", ["abc", "-1", "99999", "1.5", "<script>"])
def test_plan_select_bad_input(client, logged_in_admin, customer, value):
    r = client.post(f"/billing/customers/{customer.id}/plan", data={"plan_id": value})
    assert r.status_code == 200 and "Choose a plan" in r.get_data(as_text=True)
    db.session.expire_all()
    assert customer.plan_id is None


def test_inactive_customer_gets_no_new_fee(client, logged_in_admin, make_customer):
    c = make_customer(status="inactive")
    r = client.post(f"/billing/customers/{c.id}/fees", data={"description": "Scan", "amount": "5", "fee_date": "2026-02-03"})
    assert "inactive customers get no new charges" in r.get_data(as_text=True)
    assert count(OneOffFee) == 0


def test_billed_fee_cannot_be_removed(client, logged_in_admin, customer, add_fee):
    fee = add_fee(customer, 500)
    billing.run_bill_run("2026-03", run_date=dt.date(2026, 3, 1))
    r = client.post(f"/billing/fees/{fee.id}/delete")
    assert "already on an invoice" in r.get_data(as_text=True) and count(OneOffFee) == 1


def test_panel_forbidden_for_mail_admin(client, make_staff, auth, customer):
    auth.login(make_staff("mail_admin").email)
    assert client.get(f"/billing/customers/{customer.id}").status_code == 403
    assert client.post(f"/billing/customers/{customer.id}/fees", data={}).status_code == 403


# ---------------------------------------------------------------- invoice page

@pytest.fixture
def invoice(customer, make_plan, billing_settings):
    plan = make_plan("Basic", 1500)
    customer.plan_id = plan.id
    db.session.commit()
    billing.run_bill_run("2026-03", run_date=dt.date(2026, 3, 1))
    return db.session.execute(select(Invoice)).scalar_one()


def test_invoice_page_void_and_payment(client, logged_in_admin, invoice):
    page = client.get(f"/billing/invoices/{invoice.id}").get_data(as_text=True)
    assert invoice.number in page and "€15.00" in page and "Record offline payment" in page
    r = client.post(f"/billing/invoices/{invoice.id}/payment", data={"method": "cash", "paid_on": "2099-01-01"})
    assert r.status_code == 200 and "cannot be in the future" in r.get_data(as_text=True)
    r = client.post(f"/billing/invoices/{invoice.id}/payment",
                    data={"method": "bank_transfer", "paid_on": "2026-03-04", "reference": "TR 1"},
                    headers={"HX-Request": "true"})
    assert r.status_code == 204 and r.headers["HX-Redirect"].endswith(f"/billing/invoices/{invoice.id}")
    db.session.expire_all()
    assert invoice.status == "paid"
    r = client.post(f"/billing/invoices/{invoice.id}/void", data={"reason": "oops"})
    assert r.status_code == 200 and "paid invoice cannot be voided" in r.get_data(as_text=True)
    db.session.expire_all()
    assert invoice.status == "paid"


def test_void_from_page(client, logged_in_admin, invoice):
    r = client.post(f"/billing/invoices/{invoice.id}/void", data={"reason": "x" * 201})
    assert "at most 200" in r.get_data(as_text=True)
    r = client.post(f"/billing/invoices/{invoice.id}/void", data={"reason": "duplicate"})
    assert r.status_code == 303
    db.session.expire_all()
    assert invoice.status == "void"


def test_email_again_failure_is_shown_not_500(client, logged_in_admin, invoice, app):
    app.config.update(MAIL_SUPPRESS=False, MAIL_SERVER="127.0.0.1", MAIL_PORT=1)
    r = client.post(f"/billing/invoices/{invoice.id}/email", follow_redirects=True)
    assert r.status_code == 200 and "could not be sent" in r.get_data(as_text=True)


# ---------------------------------------------------------------- overview

def _many_invoices(make_customer, plan, n, period="2026-03"):
    for _ in range(n):
        make_customer(plan_id=plan.id, created_at=OLD)
    billing.run_bill_run(period, run_date=dt.date(int(period[:4]), int(period[5:]), 1))


def test_overview_totals_and_filters(client, logged_in_admin, make_customer, make_plan, billing_settings):
    plan = make_plan("Basic", 1000)
    _many_invoices(make_customer, plan, 3, "2026-03")
    billing.run_bill_run("2026-04", run_date=dt.date(2026, 4, 1))
    invs = db.session.execute(select(Invoice).order_by(Invoice.id)).scalars().all()
    billing.mark_invoice_paid(invs[0], "cash", None, dt.datetime(2026, 3, 3))
    billing.void_invoice(invs[1], "")
    db.session.commit()
    data = billing.overview()
    march = next(m for m in data.months if m["period"] == "2026-03")
    assert (march["count"], march["total"], march["paid"], march["outstanding"], march["void"]) == (3, 2000, 1000, 1000, 1000)
    assert data.outstanding == 1000 + 3000
    assert data.status_counts["paid"] == 1 and data.status_counts["pending"] == 4
    page = client.get("/billing/?status=paid").get_data(as_text=True)
    assert invs[0].number in page and invs[2].number not in page
    r = client.get("/billing/?month=2026-04", headers={"HX-Request": "true"})
    text = r.get_data(as_text=True)
    assert "<html" not in text and invs[3].number in text and invs[0].number not in text
    assert client.get("/billing/?status=nonsense&month=bad&page=x").status_code == 200


def test_overview_query_count_does_not_grow_with_rows(client, logged_in_admin, make_customer, make_plan,
                                                     billing_settings):
    plan = make_plan("Basic", 1000)
    _many_invoices(make_customer, plan, 2, "2026-02")

    def queries():
        before = len(get_recorded_queries())
        assert client.get("/billing/").status_code == 200
        return len(get_recorded_queries()) - before

    few = queries()
    _many_invoices(make_customer, plan, 25, "2026-03")
    assert queries() == few


def test_customer_panel_query_count_does_not_grow(client, logged_in_admin, customer, add_fee, make_plan):
    def queries():
        before = len(get_recorded_queries())
        assert client.get(f"/billing/customers/{customer.id}").status_code == 200
        return len(get_recorded_queries()) - before

    # Start from one invoice: with none the page skips the "online payment problems" query.
    add_fee(customer, 100, fee_date=dt.date(2026, 1, 5))
    billing.run_bill_run("2026-02", run_date=dt.date(2026, 2, 1))
    few = queries()
    for _ in range(10):
        add_fee(customer, 100)
    billing.run_bill_run("2026-03", run_date=dt.date(2026, 3, 1))
    assert queries() == few
