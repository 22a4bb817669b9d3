"""The same event delivered twice at the same moment, to two app instances (two workers):
the invoice is paid once and both deliveries get 200."""
import threading

from spheremail.extensions import db
from spheremail.models import Invoice, Payment, StripeEvent
from tests.conftest import make_test_app


def test_simultaneous_duplicate_deliveries_pay_once(app, customer, gateway, make_invoice):
    invoice = make_invoice(customer, total=3100)
    event = gateway.build_event("checkout.session.completed", {
        "id": "cs_test_race", "object": "checkout.session", "mode": "payment", "status": "complete",
        "payment_status": "paid", "amount_total": 3100, "currency": "eur",
        "client_reference_id": str(invoice.id), "metadata": {"invoice_id": str(invoice.id)},
        "payment_intent": "pi_race"})
    body = gateway.serialize_event(event)
    workers = [make_test_app(app.config["SQLALCHEMY_DATABASE_URI"], STRIPE_API_BASE=gateway.base_url)
               for _ in range(2)]
    barrier = threading.Barrier(len(workers))
    statuses, errors = [], []

    def deliver(worker):
        try:
            with worker.app_context():
                client = worker.test_client()
                barrier.wait(timeout=10)
                statuses.append(client.post("/payments/stripe/webhook", data=body,
                                            headers=gateway.signed_headers(body)).status_code)
                db.session.remove()
                db.engine.dispose()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=deliver, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert statuses == [200, 200]
    db.session.expire_all()
    assert db.session.get(Invoice, invoice.id).status == "paid"
    assert db.session.execute(db.select(db.func.count(Payment.id))).scalar() == 1
    assert db.session.execute(db.select(db.func.count(StripeEvent.id))).scalar() == 1
