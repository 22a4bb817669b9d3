"""Invoice state transitions, offline payments, export closing, and email on issue."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from spheremail.extensions import db
from spheremail.models import Invoice, InvoiceStateError, Payment
from spheremail.services import billing

OLD = dt.datetime(2025, 1, 1)


@pytest.fixture
def invoice(make_customer, make_plan, billing_settings):
    plan = make_plan("Standard", 2500)
    make_customer(plan_id=plan.id, created_at=OLD, email="payer@example.test")
    billing.run_bill_run("2026-03", run_date=dt.date(2026, 3, 1))
    return db.session.execute(select(Invoice)).scalar_one()


def test_void_pending_then_nothing_else(invoice):
    billing.void_invoice(invoice, "wrong plan")
    db.session.commit()
    assert invoice.status == "void" and invoice.void_reason == "wrong plan"
    with pytest.raises(billing.BillingError, match="void invoice cannot be voided"):
        billing.void_invoice(invoice, "")
    with pytest.raises(InvoiceStateError):
        billing.mark_invoice_paid(invoice, "cash", None, dt.datetime(2026, 3, 2))


def test_offline_payment_marks_paid_once(invoice, operator):
    payment = billing.record_offline_payment(
        invoice, {"method": "bank_transfer", "paid_on": "2026-03-05", "reference": "TRX-1"}, actor=operator)
    db.session.commit()
    assert invoice.status == "paid" and invoice.paid_at.date() == dt.date(2026, 3, 5)
    assert payment.amount_minor == invoice.total_minor == 2500 and payment.recorded_by_id == operator.id
    with pytest.raises(billing.BillingError, match="paid invoice cannot be marked as paid"):
        billing.record_offline_payment(invoice, {"method": "cash", "paid_on": "2026-03-05"})
    with pytest.raises(billing.BillingError):
        billing.void_invoice(invoice, "")
    assert db.session.execute(select(db.func.count(Payment.id))).scalar() == 1


@pytest.mark.parametrize("form, field", [
    ({"method": "bitcoin", "paid_on": "2026-03-05"}, "method"),
    ({"method": "cash", "paid_on": ""}, "paid_on"),
    ({"method": "cash", "paid_on": "05/03/2026"}, "paid_on"),
    ({"method": "cash", "paid_on": "2999-01-01"}, "paid_on"),
    ({"method": "cash", "paid_on": "2026-03-05", "reference": "x" * 121}, "reference"),
])
def test_offline_payment_bad_input(invoice, form, field):
    with pytest.raises(billing.BillingError) as exc:
        billing.record_offline_payment(invoice, form)
    assert field in exc.value.errors
    db.session.rollback()
    assert db.session.get(Invoice, invoice.id).status == "pending"


def test_close_by_export(invoice):
    billing.close_by_export(invoice, "officernd", "fee_123", dt.datetime(2026, 3, 5))
    db.session.commit()
    assert (invoice.status, invoice.external_reference) == ("closed_by_export", "fee_123")
    with pytest.raises(InvoiceStateError):
        invoice.void("", dt.datetime(2026, 3, 6))


def test_draft_can_be_issued_with_the_next_number(invoice, make_customer):
    c = make_customer(created_at=OLD)
    draft = Invoice(customer_id=c.id, status="draft", currency="EUR", total_minor=0)
    db.session.add(draft)
    db.session.commit()
    number = billing.next_invoice_number(dt.date(2026, 3, 9))
    draft.issue(number, dt.date(2026, 3, 9), dt.date(2026, 3, 23))
    db.session.commit()
    assert draft.number == "INV-2026-00002" and draft.status == "pending"
    with pytest.raises(InvoiceStateError):
        draft.issue("X", dt.date(2026, 3, 9), dt.date(2026, 3, 9))


def test_invoices_for_customer_hides_drafts(invoice):
    assert billing.invoices_for_customer(invoice.customer) == [invoice]
    invoice.status = "draft"
    assert billing.invoices_for_customer(invoice.customer) == []


def test_invoices_are_emailed_when_issued(app, smtp_server, make_customer, make_plan, billing_settings):
    billing_settings(email_invoices=True)
    plan = make_plan("Standard", 2500)
    make_customer(plan_id=plan.id, created_at=OLD, email="one@example.test")
    make_customer(plan_id=plan.id, created_at=OLD, email="two@example.test")
    result = billing.run_bill_run("2026-03", run_date=dt.date(2026, 3, 1))
    assert (result.emailed, result.email_failed) == (2, 0)
    assert sorted(m["To"] for m in smtp_server.messages) == ["one@example.test", "two@example.test"]
    body = smtp_server.messages[0].get_content()
    assert "INV-2026-0000" in smtp_server.messages[0]["Subject"] and "€25.00" in body
    assert all(inv.emailed_at for inv in db.session.execute(select(Invoice)).scalars())


def test_no_email_when_the_setting_is_off(app, smtp_server, make_customer, make_plan, billing_settings):
    plan = make_plan()
    make_customer(plan_id=plan.id, created_at=OLD)
    billing.run_bill_run("2026-03", run_date=dt.date(2026, 3, 1))
    assert smtp_server.messages == []


def test_failed_email_is_recorded_and_keeps_the_invoice(app, make_customer, make_plan, billing_settings):
    billing_settings(email_invoices=True)
    app.config.update(MAIL_SUPPRESS=False, MAIL_SERVER="127.0.0.1", MAIL_PORT=1)  # nothing listens there
    plan = make_plan()
    make_customer(plan_id=plan.id, created_at=OLD)
    result = billing.run_bill_run("2026-03", run_date=dt.date(2026, 3, 1))
    assert (result.created, result.email_failed) == (1, 1)
    inv = db.session.execute(select(Invoice)).scalar_one()
    assert inv.status == "pending" and inv.emailed_at is None and inv.email_error.startswith("Not emailed")
