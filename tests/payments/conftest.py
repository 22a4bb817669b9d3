"""Fixtures for online payments: the Stripe stand-in over real HTTP, keys in billing settings,
webhooks delivered into the app, and invoices to pay."""
from __future__ import annotations

import datetime as dt
import itertools

import pytest

from spheremail.extensions import db as _db

_numbers = itertools.count(1)


@pytest.fixture
def stripe_standin():
    """The Stripe stand-in served on a free port for one test."""
    from tests.standins.stripe import StripeStandIn

    stand_in = StripeStandIn()
    stand_in.start()
    yield stand_in
    stand_in.stop()


def configure_gateway(app, stand_in, *, secret_key=None, webhook_secret=None):
    """Store the gateway keys the way billing settings do (encrypted) and point the app at the stand-in."""
    from spheremail.crypto import encrypt
    from spheremail.models import Setting

    app.config["STRIPE_API_BASE"] = stand_in.base_url
    Setting.put("billing_gateway_secret_key_encrypted", encrypt(secret_key or stand_in.secret_key))
    Setting.put("billing_gateway_webhook_secret_encrypted", encrypt(webhook_secret or stand_in.webhook_secret))
    _db.session.commit()


@pytest.fixture
def gateway(app, stripe_standin):
    """Online payment configured; webhooks go into the app through a separate test client."""
    configure_gateway(app, stripe_standin)
    hook_client = app.test_client()
    stripe_standin.webhook_handler = lambda body, headers: hook_client.post(
        "/payments/stripe/webhook", data=body, headers=headers).status_code
    return stripe_standin


@pytest.fixture
def make_invoice(app):
    """Factory: a pending invoice for ``customer`` with one line of ``total`` minor units."""
    from spheremail.models import Invoice, InvoiceLine

    def factory(customer, total=2500, currency="EUR", status="pending", due_date=None, number=None):
        n = next(_numbers)
        today = dt.date.today()
        invoice = Invoice(
            customer_id=customer.id, number=number or (None if status == "draft" else f"TEST-{n:05d}"),
            status=status, currency=currency, total_minor=total, issue_date=today,
            due_date=due_date or today, bill_to_name=customer.full_name, bill_to_email=customer.email,
            period=None,
        )
        invoice.lines.append(InvoiceLine(position=0, kind="manual", description="Mailbox plan",
                                         quantity=1, unit_minor=total, amount_minor=total))
        _db.session.add(invoice)
        _db.session.commit()
        return invoice

    return factory


@pytest.fixture
def customer(make_customer):
    return make_customer(first_name="Grace", last_name="Hopper", email="grace@example.test")


@pytest.fixture
def customer_client(client, auth, customer):
    """The test client logged in as ``customer``."""
    response = auth.login(customer.email)
    assert response.status_code in (302, 303)
    return client
