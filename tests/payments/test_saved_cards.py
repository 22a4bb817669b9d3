"""Saving a card (Checkout in setup mode) and the collect-due-invoices job charging it off-session."""
from __future__ import annotations

import datetime as dt

from spheremail.extensions import db
from spheremail.models import AuditEvent, GatewayCustomer, Invoice, Payment, PaymentAttempt, Setting
from spheremail.services import payments as svc

CARD_OK = "4242 4242 4242 4242"
CARD_LATER_DECLINED = "4000 0000 0000 9995"


def _save_card(client, gateway, card=CARD_OK):
    response = client.post("/portal/billing/card")
    assert response.status_code == 303, response.get_data(as_text=True)
    session_id = response.headers["Location"].rsplit("/", 1)[1]
    session = gateway.complete_session(session_id, card=card)
    assert session["mode"] == "setup" and session["payment_status"] == "no_payment_required"
    assert gateway.events_sent[-1].status == 200
    db.session.expire_all()


def _autocharge_on():
    Setting.put(svc.AUTOCHARGE_SETTING, True)
    db.session.commit()


def _run(today=None):
    result = svc.collect_due_invoices(today or dt.date.today())
    db.session.expire_all()
    return result


def test_save_card_creates_the_stripe_customer_once(customer_client, customer, gateway):
    _save_card(customer_client, gateway)
    gc = db.session.execute(db.select(GatewayCustomer).filter_by(customer_id=customer.id)).scalar_one()
    assert gc.stripe_customer_id in gateway.customers
    assert gc.card_last4 == "4242" and gc.payment_method_id in gateway.payment_methods
    page = customer_client.get("/portal/billing").get_data(as_text=True)
    assert "Visa ending 4242" in page
    _save_card(customer_client, gateway, card="5555 5555 5555 4444")
    assert gateway.count("POST", "/v1/customers") == 1
    gc = db.session.execute(db.select(GatewayCustomer).filter_by(customer_id=customer.id)).scalar_one()
    assert gc.card_last4 == "4444"
    assert db.session.execute(db.select(AuditEvent).filter_by(action="payments.card_saved")).first()


def test_remove_card(customer_client, customer, gateway):
    _save_card(customer_client, gateway)
    assert customer_client.post("/portal/billing/card/remove").status_code == 303
    db.session.expire_all()
    assert not db.session.execute(db.select(GatewayCustomer).filter_by(customer_id=customer.id)).scalar_one().has_card


def test_automatic_charge_pays_due_invoice_once(customer_client, customer, gateway, make_invoice):
    _save_card(customer_client, gateway)
    _autocharge_on()
    due = make_invoice(customer, total=1999, due_date=dt.date.today())
    later = make_invoice(customer, total=500, due_date=dt.date.today() + dt.timedelta(days=5))
    result = _run()
    assert result.charged == 1
    assert db.session.get(Invoice, due.id).status == "paid"
    assert db.session.get(Invoice, later.id).status == "pending"
    [pi] = gateway.payment_intents.values()
    assert pi["amount"] == 1999 and pi["currency"] == "eur" and pi["status"] == "succeeded"
    [payment] = db.session.execute(db.select(Payment).filter_by(invoice_id=due.id)).scalars()
    assert payment.reference == pi["id"] and payment.method == "card"
    [req] = [r for r in gateway.requests if r.route == "/v1/payment_intents"]
    assert req.idempotency_key.startswith(f"spheremail-invoice-{due.id}-") and req.idempotency_key.endswith(
        "-off_session-1")
    assert req.params["off_session"] == "true" and req.params["confirm"] == "true"
    # Running again (a second tick, a restart) charges nothing more.
    assert _run().charged == 0
    assert gateway.count("POST", "/v1/payment_intents") == 1


def test_automatic_charge_is_off_by_default_and_needs_a_card(customer_client, customer, gateway, make_invoice,
                                                            make_customer):
    _save_card(customer_client, gateway)
    make_invoice(customer)
    assert _run() == "automatic charging is off"
    _autocharge_on()
    no_card = make_customer()
    make_invoice(no_card)
    result = _run()
    assert result.charged == 1
    assert gateway.count("POST", "/v1/payment_intents") == 1


def test_decline_leaves_invoice_pending_with_reason_for_staff(client, auth, customer, gateway, make_invoice,
                                                               make_staff):
    auth.login(customer.email)
    _save_card(client, gateway, card=CARD_LATER_DECLINED)
    _autocharge_on()
    invoice = make_invoice(customer)
    result = _run()
    assert result.declined == 1
    assert db.session.get(Invoice, invoice.id).status == "pending"
    attempt = db.session.execute(db.select(PaymentAttempt).filter_by(invoice_id=invoice.id)).scalar_one()
    assert attempt.status == "declined"
    assert attempt.failure_code == "insufficient_funds"
    assert attempt.failure_message == "Your card has insufficient funds."
    event = db.session.execute(db.select(AuditEvent).filter_by(action="payments.charge_declined")).scalar_one()
    assert "insufficient_funds" in event.summary and event.subject_id == invoice.id
    # The same card is not hammered again the next day.
    _run(dt.date.today() + dt.timedelta(days=1))
    assert gateway.count("POST", "/v1/payment_intents") == 1

    auth.logout()
    staff = make_staff("admin")
    auth.login(staff.email)
    overview = client.get("/payments/").get_data(as_text=True)
    assert "insufficient_funds: Your card has insufficient funds." in overview and invoice.number in overview
    detail = client.get(f"/payments/invoices/{invoice.id}").get_data(as_text=True)
    assert "Declined" in detail and "insufficient_funds" in detail


def test_new_card_after_decline_is_charged(client, auth, customer, gateway, make_invoice):
    auth.login(customer.email)
    _save_card(client, gateway, card=CARD_LATER_DECLINED)
    _autocharge_on()
    invoice = make_invoice(customer)
    assert _run().declined == 1
    _save_card(client, gateway, card=CARD_OK)
    assert _run().charged == 1
    assert db.session.get(Invoice, invoice.id).status == "paid"
    assert db.session.execute(db.select(db.func.count(Payment.id))).scalar() == 1


def test_externally_billed_customer_is_skipped(customer_client, customer, gateway, make_invoice, monkeypatch):
    from spheremail.services import billing

    _save_card(customer_client, gateway)
    _autocharge_on()
    invoice = make_invoice(customer)
    from spheremail.services import invoice_export

    monkeypatch.setattr(billing, "is_externally_billed", lambda c: c.id == customer.id)
    # Charging and Pay now decide per invoice (an invoice older than the integration is payable).
    monkeypatch.setattr(invoice_export, "is_invoice_externally_billed", lambda inv: inv.customer_id == customer.id)
    monkeypatch.setattr(invoice_export, "externally_billed_invoice_ids", lambda ids: set(ids))  # the list page
    result = _run()
    assert result.skipped == 1 and result.charged == 0
    assert gateway.count("POST", "/v1/payment_intents") == 0
    assert db.session.get(Invoice, invoice.id).status == "pending"
    # Pay now is not offered to them either, and a forged POST is refused with a message.
    page = customer_client.get("/portal/invoices").get_data(as_text=True)
    assert "Pay now" not in page and "coworking account" in page
    response = customer_client.post(f"/portal/invoices/{invoice.id}/pay", follow_redirects=True)
    assert response.status_code == 200 and "coworking account" in response.get_data(as_text=True)
    assert gateway.count("POST", "/v1/checkout/sessions") == 1  # only the setup session


def test_unknown_outcome_is_retried_with_the_same_key(customer_client, customer, gateway, make_invoice, app):
    _save_card(customer_client, gateway)
    _autocharge_on()
    invoice = make_invoice(customer)
    real_base = app.config["STRIPE_API_BASE"]
    app.config["STRIPE_API_BASE"] = "http://127.0.0.1:9"  # nothing listens: the call fails
    assert _run().failed == 1
    attempt = db.session.execute(db.select(PaymentAttempt).filter_by(invoice_id=invoice.id)).scalar_one()
    assert attempt.status == "started" and attempt.failure_code == "unreachable"
    app.config["STRIPE_API_BASE"] = real_base
    assert _run().charged == 1
    attempts = db.session.execute(db.select(PaymentAttempt).filter_by(invoice_id=invoice.id)).scalars().all()
    assert len(attempts) == 1 and attempts[0].status == "succeeded"
    assert [r.idempotency_key for r in gateway.requests if r.route == "/v1/payment_intents"] == [
        attempt.idempotency_key]


def test_job_is_registered_and_runs_once_per_day(customer_client, customer, gateway, make_invoice):
    from spheremail.jobs import REGISTRY, run_job

    _save_card(customer_client, gateway)
    _autocharge_on()
    invoice = make_invoice(customer)
    job = REGISTRY["collect-due-invoices"]
    slot = job.current_slot(dt.datetime.now())
    assert "1 charged" in run_job(job, slot)
    assert run_job(job, slot) is None  # the slot is done
    db.session.expire_all()
    assert db.session.get(Invoice, invoice.id).status == "paid"


def test_invoice_with_an_open_checkout_is_not_charged(customer_client, customer, gateway, make_invoice):
    _save_card(customer_client, gateway)
    _autocharge_on()
    invoice = make_invoice(customer)
    assert customer_client.post(f"/portal/invoices/{invoice.id}/pay").status_code == 303
    assert _run().skipped == 1
    assert gateway.count("POST", "/v1/payment_intents") == 0
