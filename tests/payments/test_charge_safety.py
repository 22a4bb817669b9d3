"""An automatic (off-session) charge whose outcome is unknown must never lead to a second charge:
Pay now is refused meanwhile, a young attempt is replayed under its idempotency key, and one too
old for Stripe to still remember its key is left to staff instead of being sent again."""
from __future__ import annotations

import datetime as dt

import pytest

from spheremail.extensions import db
from spheremail.integrations.stripe_gateway import GatewayUnavailable, StripeGateway
from spheremail.models import AuditEvent, Invoice, Payment, PaymentAttempt, Setting
from spheremail.models.base import utcnow
from spheremail.services import payments as svc


def _save_card(client, gateway):
    response = client.post("/portal/billing/card")
    assert response.status_code == 303, response.get_data(as_text=True)
    gateway.complete_session(response.headers["Location"].rsplit("/", 1)[1])
    assert gateway.events_sent[-1].status == 200
    db.session.expire_all()


def _run():
    result = svc.collect_due_invoices(dt.date.today())
    db.session.expire_all()
    return result


def _attempts(invoice):
    return db.session.execute(
        db.select(PaymentAttempt).filter_by(invoice_id=invoice.id).order_by(PaymentAttempt.id)).scalars().all()


@pytest.fixture
def card_on_file(customer_client, gateway):
    """The customer has a saved card and automatic charging is on."""
    _save_card(customer_client, gateway)
    Setting.put(svc.AUTOCHARGE_SETTING, True)
    db.session.commit()
    return gateway


@pytest.fixture
def answer_lost(monkeypatch):
    """The charge reaches Stripe (and goes through) but its answer is lost on the way back."""
    real = StripeGateway.charge_saved_card
    calls = []

    def charge_then_fail(self, **params):
        calls.append(params["idempotency_key"])
        if len(calls) == 1:
            real(self, **params)
            raise GatewayUnavailable("Stripe could not be reached.", detail="read timed out")
        return real(self, **params)

    monkeypatch.setattr(StripeGateway, "charge_saved_card", charge_then_fail)
    return calls


def _age(attempt_id, hours):
    attempt = db.session.get(PaymentAttempt, attempt_id)
    attempt.created_at = utcnow() - dt.timedelta(hours=hours)
    db.session.commit()


def test_pay_now_is_refused_while_an_automatic_charge_is_unknown(customer_client, customer, card_on_file,
                                                                 make_invoice, answer_lost):
    invoice = make_invoice(customer)
    result = _run()
    assert result.failed == 1 and result.unreachable == 1
    [attempt] = _attempts(invoice)
    assert attempt.status == "started" and attempt.kind == "off_session"
    assert not svc.can_pay_online(db.session.get(Invoice, invoice.id))

    page = customer_client.get(f"/portal/invoices/{invoice.id}").get_data(as_text=True)
    assert "Pay now" not in page and "automatic charge of your saved card" in page
    # A forged POST is refused with the reason, and no Checkout Session is opened.
    sessions_before = card_on_file.count("POST", "/v1/checkout/sessions")
    response = customer_client.post(f"/portal/invoices/{invoice.id}/pay", follow_redirects=True)
    assert response.status_code == 200
    assert "automatic charge of your saved card" in response.get_data(as_text=True)
    assert card_on_file.count("POST", "/v1/checkout/sessions") == sessions_before
    assert [a.kind for a in _attempts(invoice)] == ["off_session"]


def test_pay_now_is_refused_while_an_automatic_charge_is_processing(customer_client, customer, card_on_file,
                                                                    make_invoice):
    invoice = make_invoice(customer)
    attempt = PaymentAttempt(invoice_id=invoice.id, kind="off_session", attempt=1, idempotency_key="k-processing",
                             amount_minor=invoice.total_minor, currency="EUR", status="processing")
    db.session.add(attempt)
    db.session.commit()
    assert not svc.can_pay_online(invoice)
    with pytest.raises(svc.PaymentError, match="in progress"):
        svc.start_checkout(invoice, success_url="http://x/s", cancel_url="http://x/c")
    # Once the charge has an outcome (here: declined), Pay now is offered again.
    attempt.status = "declined"
    db.session.commit()
    assert svc.can_pay_online(invoice)


def test_young_unknown_charge_is_replayed_with_the_same_key(customer, card_on_file, make_invoice, answer_lost):
    invoice = make_invoice(customer, total=1999)
    assert _run().unreachable == 1
    [attempt] = _attempts(invoice)
    _age(attempt.id, 19)
    assert _run().charged == 1
    requests = [r for r in card_on_file.requests if r.route == "/v1/payment_intents" and r.method == "POST"]
    assert [r.idempotency_key for r in requests] == [attempt.idempotency_key] * 2
    assert [r.replayed for r in requests] == [False, True]  # Stripe replayed its first answer
    assert len(card_on_file.payment_intents) == 1
    assert db.session.get(Invoice, invoice.id).status == "paid"
    assert len(db.session.execute(db.select(Payment).filter_by(invoice_id=invoice.id)).scalars().all()) == 1
    assert [a.status for a in _attempts(invoice)] == ["succeeded"]


def test_old_unknown_charge_is_flagged_for_staff_not_sent_again(client, auth, customer, card_on_file, make_invoice,
                                                                 answer_lost, make_staff):
    invoice = make_invoice(customer)
    assert _run().unreachable == 1
    [attempt] = _attempts(invoice)
    _age(attempt.id, 21)
    sent = card_on_file.count("POST", "/v1/payment_intents")
    result = _run()
    assert result.skipped == 1 and result.charged == 0 and result.failed == 0
    assert card_on_file.count("POST", "/v1/payment_intents") == sent == 1
    [attempt] = _attempts(invoice)
    assert attempt.status == "mismatch" and attempt.failure_code == "outcome_unknown"
    assert attempt.failure_message.startswith(svc.UNKNOWN_OUTCOME_MESSAGE)
    assert attempt.needs_attention
    event = db.session.execute(db.select(AuditEvent).filter_by(action="payments.charge_outcome_unknown")).scalar_one()
    assert event.subject_id == invoice.id
    assert db.session.get(Invoice, invoice.id).status == "pending"
    # Later runs leave the invoice alone as well.
    assert _run().skipped == 1
    assert card_on_file.count("POST", "/v1/payment_intents") == 1

    auth.logout()
    auth.login(make_staff("admin").email)
    overview = client.get("/payments/").get_data(as_text=True)
    assert "check Stripe before charging again" in overview and invoice.number in overview


def test_job_retries_an_unreachable_charge_at_the_next_tick(customer, card_on_file, make_invoice, answer_lost):
    from spheremail.jobs import REGISTRY, run_job
    from spheremail.models import JobSlot

    invoice = make_invoice(customer)
    job = REGISTRY["collect-due-invoices"]
    slot_key = job.current_slot(dt.datetime.now())
    assert "stopped early" in run_job(job, slot_key)
    slot = db.session.execute(db.select(JobSlot).filter_by(job_name=job.name, slot_key=slot_key)).scalar_one()
    assert slot.status == "partial"
    assert "1 charged" in run_job(job, slot_key)  # the same slot, run again: replayed under the same key
    db.session.expire_all()
    assert db.session.get(Invoice, invoice.id).status == "paid"
    assert len(card_on_file.payment_intents) == 1
    assert len(set(answer_lost)) == 1 and len(answer_lost) == 2
