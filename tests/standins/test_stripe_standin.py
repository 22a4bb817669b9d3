"""The Stripe stand-in, exercised through the real ``stripe`` library over HTTP.

These prove the stand-in is faithful enough for billing tests to rely on:
if the official client can create, complete and charge through it, and
``stripe.Webhook.construct_event`` accepts its webhooks, then billing code
that works here talks to Stripe the same way.
"""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import stripe
from werkzeug.wrappers import Request, Response

from tests.standins.server import start_server
from tests.standins.stripe import CardDeclined, StripeStandIn

REPO_ROOT = Path(__file__).resolve().parents[2]


class WebhookReceiver:
    """A tiny HTTP endpoint that records the raw webhook bodies and headers it gets."""

    def __init__(self):
        self.received = []
        self._lock = threading.Lock()
        self.url, self.stop = start_server(self._app)
        self.url += "/billing/stripe/webhook"

    def _app(self, environ, start_response):
        request = Request(environ)
        with self._lock:
            # get_data() is the raw body: signatures are over bytes, not JSON.
            self.received.append((request.get_data(), dict(request.headers)))
        return Response("ok")(environ, start_response)


@pytest.fixture
def receiver():
    r = WebhookReceiver()
    yield r
    r.stop()


@pytest.fixture
def stand_in(receiver):
    s = StripeStandIn(webhook_url=receiver.url)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def client(stand_in):
    # The exact construction billing code should use against the stand-in.
    return stripe.StripeClient(
        stand_in.secret_key,
        base_addresses={"api": stand_in.base_url},
        max_network_retries=0,
    )


def _payment_session(client, customer=None, **extra):
    params = {
        "mode": "payment",
        "line_items": [
            {
                "price_data": {
                    "currency": "eur",
                    "unit_amount": 1250,
                    "product_data": {"name": "Virtual mailbox, March"},
                },
                "quantity": 2,
            }
        ],
        "success_url": "http://app.test/billing/paid?session_id={CHECKOUT_SESSION_ID}",
        "cancel_url": "http://app.test/billing/invoices/42",
        "client_reference_id": "inv_42",
        "metadata": {"invoice_id": "42"},
    }
    if customer:
        params["customer"] = customer
    params.update(extra)
    return client.v1.checkout.sessions.create(params=params)


def _verify(receiver_entry, secret):
    body, headers = receiver_entry
    return stripe.Webhook.construct_event(body, headers["Stripe-Signature"], secret)


def test_payment_checkout_via_hosted_page_delivers_signed_webhook(stand_in, client, receiver):
    customer = client.v1.customers.create(params={"email": "ada@example.com", "name": "Ada"})
    assert customer.id.startswith("cus_")
    assert client.v1.customers.retrieve(customer.id).email == "ada@example.com"

    session = _payment_session(
        client, customer.id, payment_intent_data={"setup_future_usage": "off_session"}
    )
    assert session.id.startswith("cs_test_")
    assert session.url == "%s/checkout/%s" % (stand_in.base_url, session.id)
    assert (session.status, session.payment_status) == ("open", "unpaid")
    assert (session.amount_total, session.currency) == (2500, "eur")
    assert session.metadata["invoice_id"] == "42"
    assert session.client_reference_id == "inv_42"

    page = requests.get(session.url)
    assert page.status_code == 200
    assert '<label for="card-number">Card number</label>' in page.text
    assert 'value="4242 4242 4242 4242"' in page.text
    assert '<button type="submit">Pay</button>' in page.text
    assert '<a href="http://app.test/billing/invoices/42">Cancel</a>' in page.text

    paid = requests.post(session.url, data={"card_number": "4242 4242 4242 4242"},
                         allow_redirects=False)
    assert paid.status_code == 303
    assert paid.headers["Location"] == "http://app.test/billing/paid?session_id=" + session.id

    # The webhook arrived before the redirect was answered.
    assert len(receiver.received) == 1
    event = _verify(receiver.received[0], stand_in.webhook_secret)
    assert event.type == "checkout.session.completed"
    assert event.object == "event" and event.livemode is False and event.id.startswith("evt_")
    obj = event.data.object
    assert (obj.id, obj.status, obj.payment_status) == (session.id, "complete", "paid")
    assert obj.metadata["invoice_id"] == "42" and obj.client_reference_id == "inv_42"
    assert stand_in.events_sent[0].status == 200

    with pytest.raises(stripe.SignatureVerificationError):
        _verify(receiver.received[0], "whsec_wrong")

    done = client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["payment_intent"]})
    assert done.payment_intent.status == "succeeded"
    assert done.payment_intent.amount_received == 2500
    # setup_future_usage kept the card on the customer.
    pm = client.v1.payment_methods.retrieve(done.payment_intent.payment_method)
    assert pm.customer == customer.id and pm.card.last4 == "4242"
    assert client.v1.payment_intents.retrieve(done.payment_intent.id).status == "succeeded"
    # Once complete the page no longer takes cards.
    assert "complete" in requests.get(session.url).text


def test_declined_card_on_hosted_page_completes_nothing(stand_in, client, receiver):
    session = _payment_session(client)
    page = requests.post(session.url, data={"card_number": "4000 0000 0000 0002"},
                         allow_redirects=False)
    assert page.status_code == 200
    assert "Your card was declined." in page.text
    assert client.v1.checkout.sessions.retrieve(session.id).status == "open"
    assert stand_in.payment_intents == {}
    assert receiver.received == [] and stand_in.events_sent == []
    with pytest.raises(CardDeclined):
        stand_in.complete_session(session.id, card="4000000000000002")


def test_setup_mode_saves_payment_method_on_customer(stand_in, client, receiver):
    customer = client.v1.customers.create(params={"email": "bob@example.com"})
    session = client.v1.checkout.sessions.create(params={
        "mode": "setup",
        "currency": "eur",
        "customer": customer.id,
        "success_url": "http://app.test/billing/card-saved?session_id={CHECKOUT_SESSION_ID}",
        "cancel_url": "http://app.test/billing",
    })
    assert session.payment_status == "no_payment_required"
    assert "Save card" in requests.get(session.url).text

    stand_in.complete_session(session.id)

    event = _verify(receiver.received[0], stand_in.webhook_secret)
    assert event.type == "checkout.session.completed"
    assert event.data.object.mode == "setup"
    done = client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["setup_intent"]})
    assert done.status == "complete"
    assert done.setup_intent.status == "succeeded"
    pm_id = done.setup_intent.payment_method
    assert pm_id.startswith("pm_")
    assert client.v1.setup_intents.retrieve(done.setup_intent.id).payment_method == pm_id
    assert client.v1.payment_methods.retrieve(pm_id).customer == customer.id
    listed = client.v1.customers.payment_methods.list(customer.id)
    assert [pm.id for pm in listed.data] == [pm_id]


def _saved_card(stand_in, client, card):
    customer = client.v1.customers.create(params={"email": "c@example.com"})
    session = client.v1.checkout.sessions.create(params={
        "mode": "setup", "currency": "eur", "customer": customer.id,
        "success_url": "http://app.test/ok",
    })
    stand_in.complete_session(session.id, card=card)
    pm_id = stand_in.setup_intents[stand_in.sessions[session.id]["setup_intent"]]["payment_method"]
    return customer.id, pm_id


def _charge(client, customer, pm_id):
    return client.v1.payment_intents.create(params={
        "amount": 1999, "currency": "eur", "customer": customer,
        "payment_method": pm_id, "off_session": True, "confirm": True,
        "metadata": {"invoice_id": "43"},
    })


def test_off_session_payment_intent_succeeds(stand_in, client):
    customer, pm_id = _saved_card(stand_in, client, "4242 4242 4242 4242")
    pi = _charge(client, customer, pm_id)
    assert pi.id.startswith("pi_")
    assert (pi.status, pi.amount, pi.currency, pi.customer) == ("succeeded", 1999, "eur", customer)
    assert pi.metadata["invoice_id"] == "43"
    assert stand_in.payment_intents[pi.id]["status"] == "succeeded"


@pytest.mark.parametrize("how", ["card_9995", "make_decline"])
def test_off_session_decline_raises_card_error(stand_in, client, how):
    card = "4000 0000 0000 9995" if how == "card_9995" else "4242 4242 4242 4242"
    customer, pm_id = _saved_card(stand_in, client, card)
    if how == "make_decline":
        stand_in.make_decline(pm_id)
    with pytest.raises(stripe.CardError) as info:
        _charge(client, customer, pm_id)
    err = info.value
    assert err.http_status == 402
    assert err.code == "card_declined"
    assert err.error.decline_code == "insufficient_funds"
    assert err.user_message == "Your card has insufficient funds."
    assert err.error.payment_intent.status == "requires_payment_method"
    stored = client.v1.payment_intents.retrieve(err.error.payment_intent.id)
    assert stored.last_payment_error.decline_code == "insufficient_funds"


def test_idempotency_key_replays_and_rejects_other_params(stand_in, client):
    opts = {"idempotency_key": "invoice-42-attempt-1"}
    first = client.v1.customers.create(params={"email": "x@example.com"}, options=opts)
    again = client.v1.customers.create(params={"email": "x@example.com"}, options=opts)
    assert again.id == first.id and len(stand_in.customers) == 1
    with pytest.raises(stripe.IdempotencyError):
        client.v1.customers.create(params={"email": "other@example.com"}, options=opts)
    assert stand_in.count("POST", "/v1/customers") == 3


def test_bad_api_key_is_authentication_error(stand_in):
    bad = stripe.StripeClient("sk_test_wrong", base_addresses={"api": stand_in.base_url},
                              max_network_retries=0)
    with pytest.raises(stripe.AuthenticationError) as info:
        bad.v1.customers.create(params={"email": "x@example.com"})
    assert info.value.http_status == 401
    assert stand_in.customers == {}


def test_module_level_configuration_works(stand_in, monkeypatch):
    monkeypatch.setattr(stripe, "api_key", stand_in.secret_key)
    monkeypatch.setattr(stripe, "api_base", stand_in.base_url)
    monkeypatch.setattr(stripe, "max_network_retries", 0)
    customer = stripe.Customer.create(email="m@example.com")
    assert stripe.Customer.retrieve(customer.id).email == "m@example.com"


def test_resend_and_crafted_signatures(stand_in, client, receiver):
    session = _payment_session(client)
    stand_in.complete_session(session.id)
    stand_in.resend_last_event()
    first, second = (_verify(r, stand_in.webhook_secret) for r in receiver.received)
    assert first.id == second.id  # a duplicate delivery, as Stripe retries do

    event = stand_in.build_event("checkout.session.completed", stand_in.get_session(session.id))
    payload = stand_in.serialize_event(event)
    good = stand_in.signed_headers(payload)["Stripe-Signature"]
    assert stripe.Webhook.construct_event(payload, good, stand_in.webhook_secret).id == event["id"]
    wrong = stand_in.signed_headers(payload, secret="whsec_other")["Stripe-Signature"]
    stale = stand_in.signed_headers(payload, timestamp=time.time() - 3600)["Stripe-Signature"]
    for header in (wrong, stale):
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(payload, header, stand_in.webhook_secret)


def test_webhook_handler_callable_can_call_back_into_api(stand_in, client):
    seen = []

    def handler(body, headers):
        event = stripe.Webhook.construct_event(
            body, headers["Stripe-Signature"], stand_in.webhook_secret)
        # Webhook handlers commonly re-fetch the object; that must not deadlock.
        seen.append((event.type, client.v1.checkout.sessions.retrieve(event.data.object.id).status))
        return 200

    stand_in.webhook_handler = handler
    paid = _payment_session(client)
    requests.post(paid.url, data={"card_number": "4242424242424242"}, allow_redirects=False)
    other = _payment_session(client)
    expired = client.v1.checkout.sessions.expire(other.id)
    assert expired.status == "expired"
    assert seen == [("checkout.session.completed", "complete"),
                    ("checkout.session.expired", "expired")]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.retrieve("cs_test_missing")


def test_raw_bracket_params_and_missing_key(stand_in, client):
    session = _payment_session(client)
    raw = requests.get(
        "%s/v1/checkout/sessions/%s" % (stand_in.base_url, session.id),
        params=[("expand[]", "line_items")],
        headers={"Authorization": "Bearer " + stand_in.secret_key},
    ).json()
    assert raw["line_items"]["data"][0]["quantity"] == 2
    assert raw["line_items"]["data"][0]["price"]["unit_amount"] == 1250
    anonymous = requests.post(stand_in.base_url + "/v1/customers", data={"email": "a@b.c"})
    assert anonymous.status_code == 401 and "error" in anonymous.json()
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.checkout.sessions.create(params={"mode": "payment", "success_url": "http://x"})
    assert info.value.param == "line_items"


def test_control_endpoints(stand_in, client, receiver):
    url = stand_in.base_url
    cfg = requests.post(url + "/_control/config", json={"webhook_url": receiver.url}).json()
    assert cfg["webhook_url"] == receiver.url and cfg["secret_key"] == stand_in.secret_key
    session = _payment_session(client)
    done = requests.post(url + "/_control/complete_session", json={"id": session.id}).json()
    assert done["payment_status"] == "paid"
    state = requests.get(url + "/_control/state").json()
    assert [e["type"] for e in state["events_sent"]] == ["checkout.session.completed"]
    assert requests.post(url + "/_control/resend_last_event").json()["status"] == 200
    assert len(receiver.received) == 2


def test_standalone_entry_point_prints_keys():
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.standins.stripe", "--port", "0",
         "--webhook-url", "http://127.0.0.1:9/hook", "--secret-key", "sk_test_fixed"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        lines = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(4))
        assert lines["STRIPE_SECRET_KEY"] == "sk_test_fixed"
        assert lines["STRIPE_WEBHOOK_SECRET"].startswith("whsec_")
        c = stripe.StripeClient("sk_test_fixed", base_addresses={"api": lines["STRIPE_API_BASE"]},
                                max_network_retries=0)
        assert c.v1.customers.create(params={"email": "s@example.com"}).id.startswith("cus_")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
