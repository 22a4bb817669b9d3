"""Pay now through Stripe Checkout (the stand-in over real HTTP); paid only by the signed webhook."""
from __future__ import annotations

import time
import urllib.parse
import urllib.request

from spheremail.extensions import db
from spheremail.models import AuditEvent, Invoice, Payment, PaymentAttempt, StripeEvent


def _pay(client, invoice):
    response = client.post(f"/portal/invoices/{invoice.id}/pay")
    assert response.status_code == 303, response.get_data(as_text=True)
    return response.headers["Location"]


def _session_id(url):
    return url.rstrip("/").rsplit("/", 1)[1]


def _payments(invoice_id):
    return db.session.execute(db.select(Payment).filter_by(invoice_id=invoice_id)).scalars().all()


def test_pay_now_checkout_then_webhook_marks_paid_once(customer_client, customer, gateway, make_invoice):
    invoice = make_invoice(customer, total=4250)
    page = customer_client.get("/portal/invoices").get_data(as_text=True)
    assert "Pay now" in page and invoice.number in page

    url = _pay(customer_client, invoice)
    assert url.startswith(gateway.base_url + "/checkout/cs_test_")
    session = gateway.get_session(_session_id(url))
    assert session["mode"] == "payment"
    assert session["amount_total"] == 4250 and session["currency"] == "eur"
    assert session["client_reference_id"] == str(invoice.id)
    assert session["metadata"] == {"invoice_id": str(invoice.id)}
    assert f"/portal/invoices/{invoice.id}/payment?session_id={{CHECKOUT_SESSION_ID}}" in session["success_url"]
    assert "cancelled=1" in session["cancel_url"]
    [create] = [r for r in gateway.requests if r.route == "/v1/checkout/sessions" and r.method == "POST"]
    assert create.idempotency_key.startswith(f"spheremail-invoice-{invoice.id}-")
    assert create.idempotency_key.endswith("-checkout-1")

    # Coming back before the webhook: nothing is paid, the page says so.
    back = customer_client.get(f"/portal/invoices/{invoice.id}/payment?session_id={session['id']}")
    assert "being confirmed" in back.get_data(as_text=True)
    assert db.session.get(Invoice, invoice.id).status == "pending"
    # The page polls itself with htmx; the poll gets only the status partial.
    poll = customer_client.get(f"/portal/invoices/{invoice.id}/payment?session_id={session['id']}",
                               headers={"HX-Request": "true"}).get_data(as_text=True)
    assert 'id="payment-state"' in poll and "<html" not in poll and 'hx-trigger="every 3s"' in poll

    gateway.complete_session(session["id"])
    assert gateway.events_sent[-1].status == 200
    db.session.expire_all()
    invoice = db.session.get(Invoice, invoice.id)
    assert invoice.status == "paid"
    [payment] = _payments(invoice.id)
    pi_id = gateway.get_session(session["id"])["payment_intent"]
    assert (payment.amount_minor, payment.currency, payment.method, payment.reference) == (4250, "EUR", "card", pi_id)

    back = customer_client.get(f"/portal/invoices/{invoice.id}/payment?session_id={session['id']}")
    assert "is paid" in back.get_data(as_text=True)
    listing = customer_client.get("/portal/invoices").get_data(as_text=True)
    assert "Paid" in listing and "Pay now" not in listing


def test_duplicate_and_second_event_for_same_payment_pay_once(customer_client, customer, gateway, make_invoice):
    invoice = make_invoice(customer)
    session_id = _session_id(_pay(customer_client, invoice))
    gateway.complete_session(session_id)
    again = gateway.resend_last_event()
    assert again.status == 200
    # A different event about the same payment (async success) changes nothing either.
    other = gateway.send_event("checkout.session.async_payment_succeeded", gateway.get_session(session_id))
    assert other.status == 200
    db.session.expire_all()
    assert len(_payments(invoice.id)) == 1
    assert db.session.execute(db.select(db.func.count(StripeEvent.id))).scalar() == 2
    assert db.session.get(Invoice, invoice.id).status == "paid"


def test_async_payment_succeeded_marks_paid(customer_client, customer, gateway, make_invoice):
    invoice = make_invoice(customer)
    session_id = _session_id(_pay(customer_client, invoice))
    session = gateway.get_session(session_id)
    pending = dict(session, status="complete", payment_status="unpaid")
    assert gateway.send_event("checkout.session.completed", pending).status == 200
    db.session.expire_all()
    assert db.session.get(Invoice, invoice.id).status == "pending"
    paid = dict(session, status="complete", payment_status="paid", payment_intent="pi_async_1")
    assert gateway.send_event("checkout.session.async_payment_succeeded", paid).status == 200
    db.session.expire_all()
    assert db.session.get(Invoice, invoice.id).status == "paid"
    assert [p.reference for p in _payments(invoice.id)] == ["pi_async_1"]


def _paid_event(gateway, invoice, **changes):
    session = {"id": "cs_test_crafted", "object": "checkout.session", "mode": "payment", "status": "complete",
               "payment_status": "paid", "amount_total": invoice.total_minor, "currency": "eur",
               "client_reference_id": str(invoice.id), "metadata": {"invoice_id": str(invoice.id)},
               "payment_intent": "pi_crafted"}
    session.update(changes)
    return gateway.build_event("checkout.session.completed", session)


def test_bad_signature_is_rejected_and_changes_nothing(client, customer, gateway, make_invoice):
    invoice = make_invoice(customer)
    event = _paid_event(gateway, invoice)
    body = gateway.serialize_event(event)
    for headers in (gateway.signed_headers(body, secret="whsec_not_the_right_one"),
                    {"Content-Type": "application/json"}):
        response = client.post("/payments/stripe/webhook", data=body, headers=headers)
        assert response.status_code == 400
    # Signed correctly, then altered: the signature covers the raw body.
    headers = gateway.signed_headers(body)
    tampered = body.replace(b'"pi_crafted"', b'"pi_other"')
    assert client.post("/payments/stripe/webhook", data=tampered, headers=headers).status_code == 400
    db.session.expire_all()
    assert db.session.get(Invoice, invoice.id).status == "pending"
    assert db.session.execute(db.select(db.func.count(StripeEvent.id))).scalar() == 0
    assert _payments(invoice.id) == []


def test_stale_timestamp_is_rejected(client, customer, gateway, make_invoice):
    invoice = make_invoice(customer)
    event = _paid_event(gateway, invoice)
    body = gateway.serialize_event(event)
    stale = gateway.signed_headers(body, timestamp=time.time() - 3600)
    assert client.post("/payments/stripe/webhook", data=body, headers=stale).status_code == 400
    db.session.expire_all()
    assert db.session.get(Invoice, invoice.id).status == "pending"
    # The same event freshly signed is accepted: only the age was wrong.
    assert client.post("/payments/stripe/webhook", data=body, headers=gateway.signed_headers(body)).status_code == 200
    db.session.expire_all()
    assert db.session.get(Invoice, invoice.id).status == "paid"


def test_amount_mismatch_is_not_paid_and_flagged_for_staff(client, auth, customer, gateway, make_invoice,
                                                            make_staff):
    invoice = make_invoice(customer, total=2500)
    for changes in ({"amount_total": 100}, {"currency": "usd", "id": "cs_test_usd"}):
        event = _paid_event(gateway, invoice, **changes)
        assert gateway.send_event(event).status == 200
    db.session.expire_all()
    assert db.session.get(Invoice, invoice.id).status == "pending"
    assert _payments(invoice.id) == []
    attempts = db.session.execute(db.select(PaymentAttempt).filter_by(invoice_id=invoice.id)).scalars().all()
    assert {a.status for a in attempts} == {"mismatch"}
    assert db.session.execute(db.select(AuditEvent).filter_by(action="payments.amount_mismatch")).first()
    staff = make_staff("admin")
    auth.login(staff.email)
    overview = client.get("/payments/").get_data(as_text=True)
    assert "Amount mismatch" in overview and invoice.number in overview
    assert "not marked paid" in client.get(f"/payments/invoices/{invoice.id}").get_data(as_text=True)


def test_payment_for_an_invoice_paid_meanwhile_is_flagged_not_counted_twice(customer_client, customer, gateway,
                                                                             make_invoice):
    from spheremail.models.base import utcnow
    from spheremail.services import billing

    invoice = make_invoice(customer)
    session_id = _session_id(_pay(customer_client, invoice))
    billing.mark_invoice_paid(db.session.get(Invoice, invoice.id), "bank_transfer", "offline", utcnow())
    db.session.commit()
    gateway.complete_session(session_id)
    db.session.expire_all()
    assert [p.method for p in _payments(invoice.id)] == ["bank_transfer"]
    attempt = db.session.execute(db.select(PaymentAttempt).filter_by(checkout_session_id=session_id)).scalar_one()
    assert attempt.status == "mismatch" and attempt.failure_code == "invoice_not_open"


def test_declined_card_on_the_checkout_page(customer_client, customer, gateway, make_invoice):
    invoice = make_invoice(customer)
    url = _pay(customer_client, invoice)
    form = urllib.parse.urlencode({"card_number": "4000 0000 0000 0002"}).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=form, method="POST")) as answer:
        html = answer.read().decode()
    assert "Your card was declined." in html
    assert gateway.events_sent == []
    db.session.expire_all()
    assert db.session.get(Invoice, invoice.id).status == "pending"
    # Cancelling brings the customer back to the invoice with a clear note and Pay now again.
    back = customer_client.get(f"/portal/invoices/{invoice.id}?cancelled=1").get_data(as_text=True)
    assert "Nothing was charged" in back and "Pay now" in back


def test_each_pay_now_is_a_new_attempt_with_its_own_key(customer_client, customer, gateway, make_invoice):
    invoice = make_invoice(customer)
    _pay(customer_client, invoice)
    _pay(customer_client, invoice)
    keys = [r.idempotency_key for r in gateway.requests if r.route == "/v1/checkout/sessions"]
    assert len(set(keys)) == 2 and keys[1].endswith("-checkout-2")
