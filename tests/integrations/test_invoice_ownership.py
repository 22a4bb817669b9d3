"""Who bills a pending invoice: the coworking system (exported) or SphereMail (Pay now,
automatic charging). Decided per invoice with the export's own rule, so no pending invoice
is left that is neither exported nor payable here."""
from __future__ import annotations

import datetime as dt

import pytest

from spheremail.extensions import db
from spheremail.models import IntegrationConnection, Invoice, MemberLink, Setting
from spheremail.models.base import utcnow
from spheremail.services import payments as pay
from spheremail.services.invoice_export import eligible_invoice_ids, is_invoice_externally_billed
# The payments suite's fixtures: Stripe stand-in configured, a logged-in customer, invoices.
from tests.payments.conftest import (  # noqa: F401
    customer, customer_client, gateway, make_invoice, stripe_standin,
)
from tests.payments.test_saved_cards import _save_card

BASE = "/business-settings/integrations"
HX = {"HX-Request": "true"}
PROVIDER = "officernd"


def _connect(enabled_at: dt.datetime) -> IntegrationConnection:
    """A connected, enabled integration exporting invoices since ``enabled_at``."""
    conn = IntegrationConnection.get_or_create(PROVIDER)
    conn.enabled, conn.state, conn.invoice_export = True, "connected", True
    conn.location_id, conn.location_name = "loc-1", "Amsterdam Central"
    conn.enabled_at = conn.connected_at = enabled_at
    db.session.commit()
    return conn


def _link(customer_row) -> None:
    db.session.add(MemberLink(customer_id=customer_row.id, provider=PROVIDER, member_id=f"m-{customer_row.id}",
                              member_name=customer_row.full_name, member_email=customer_row.email, active=True))
    db.session.commit()


def _created(invoice: Invoice, at: dt.datetime) -> Invoice:
    invoice.created_at = at
    db.session.commit()
    return invoice


@pytest.fixture
def enabled_at():
    return utcnow() - dt.timedelta(days=2)


def test_invoice_older_than_the_integration_stays_payable_here(customer, gateway, make_invoice, enabled_at):
    old = _created(make_invoice(customer), enabled_at - dt.timedelta(days=1))
    new = _created(make_invoice(customer), enabled_at + dt.timedelta(hours=1))
    conn = _connect(enabled_at)
    _link(customer)  # linked after the invoices were made (a later sync)

    # The export takes only the newer one; the older one is payable here.
    assert eligible_invoice_ids(conn) == [new.id]
    assert not is_invoice_externally_billed(old) and is_invoice_externally_billed(new)
    assert pay.can_pay_online(old) and not pay.can_pay_online(new)
    url = pay.start_checkout(old, success_url="http://x.test/ok", cancel_url="http://x.test/no")
    assert url.startswith(gateway.base_url)
    with pytest.raises(pay.PaymentError, match="coworking account"):
        pay.start_checkout(new, success_url="http://x.test/ok", cancel_url="http://x.test/no")


def test_autocharge_charges_the_older_invoice_and_skips_the_exported_one(
        customer_client, customer, gateway, make_invoice, enabled_at):
    _save_card(customer_client, gateway)  # while not linked yet
    old = _created(make_invoice(customer, total=1200), enabled_at - dt.timedelta(days=1))
    new = _created(make_invoice(customer, total=3400), enabled_at + dt.timedelta(hours=1))
    _connect(enabled_at)
    _link(customer)
    Setting.put(pay.AUTOCHARGE_SETTING, True)
    db.session.commit()

    result = pay.collect_due_invoices(dt.date.today())
    db.session.expire_all()

    assert result.charged == 1 and result.skipped == 1
    assert db.session.get(Invoice, old.id).status == "paid"
    assert db.session.get(Invoice, new.id).status == "pending"  # left to the export


def test_no_integration_or_export_off_means_payable_here(customer, gateway, make_invoice, enabled_at):
    invoice = make_invoice(customer)
    _link(customer)
    assert not is_invoice_externally_billed(invoice) and pay.can_pay_online(invoice)
    conn = _connect(enabled_at)
    assert is_invoice_externally_billed(invoice) and not pay.can_pay_online(invoice)
    conn.invoice_export = False
    db.session.commit()
    assert not is_invoice_externally_billed(invoice) and pay.can_pay_online(invoice)


def test_toggling_off_and_on_keeps_enabled_at(client, logged_in_operator, make_customer, enabled_at):
    """The scenario that stranded invoices: made on the 1st, toggle off/on on the 3rd."""
    conn = _connect(enabled_at)
    member = make_customer(email="member@example.com")
    _link(member)
    made = Invoice(number="SM-OWN-1", customer_id=member.id, status="pending", currency="EUR",
                   total_minor=2500, issue_date=dt.date.today(), created_at=enabled_at + dt.timedelta(hours=1))
    db.session.add(made)
    db.session.commit()
    assert eligible_invoice_ids(conn) == [made.id]

    assert client.post(f"{BASE}/{PROVIDER}/enabled", data={}, headers=HX).status_code < 400
    db.session.expire_all()
    conn = IntegrationConnection.get(PROVIDER)
    assert not conn.enabled
    assert not is_invoice_externally_billed(made)  # while off: payable here
    assert client.post(f"{BASE}/{PROVIDER}/enabled", data={"enabled": "on"}, headers=HX).status_code < 400
    db.session.expire_all()
    conn = IntegrationConnection.get(PROVIDER)
    assert conn.enabled and conn.enabled_at == enabled_at
    assert eligible_invoice_ids(conn) == [made.id] and is_invoice_externally_billed(made)


def test_exported_set_unchanged_for_the_normal_case(make_customer, enabled_at):
    """Linked customers' pending invoices since enabled_at, nothing else (as before)."""
    conn = _connect(enabled_at)
    linked, unlinked = make_customer(email="linked@example.com"), make_customer(email="plain@example.com")
    _link(linked)
    rows = {}
    for key, who, status, at in (("new", linked, "pending", enabled_at + dt.timedelta(minutes=1)),
                                 ("at_start", linked, "pending", enabled_at),
                                 ("old", linked, "pending", enabled_at - dt.timedelta(seconds=1)),
                                 ("paid", linked, "paid", enabled_at + dt.timedelta(minutes=1)),
                                 ("unlinked", unlinked, "pending", enabled_at + dt.timedelta(minutes=1))):
        rows[key] = Invoice(number=f"SM-OWN-{key}", customer_id=who.id, status=status, currency="EUR",
                            total_minor=100, issue_date=dt.date.today(), created_at=at)
        db.session.add(rows[key])
    db.session.commit()
    assert sorted(eligible_invoice_ids(conn)) == sorted([rows["new"].id, rows["at_start"].id])
    pending_elsewhere = [k for k, inv in rows.items() if inv.is_open and is_invoice_externally_billed(inv)]
    assert pending_elsewhere == ["new", "at_start"]


def test_invoice_list_offers_pay_now_per_invoice(customer_client, customer, gateway, make_invoice, enabled_at):
    old = _created(make_invoice(customer), enabled_at - dt.timedelta(days=1))
    new = _created(make_invoice(customer), enabled_at + dt.timedelta(hours=1))
    _connect(enabled_at)
    _link(customer)

    page = customer_client.get("/portal/invoices").get_data(as_text=True)
    assert f"Pay now: invoice {old.number or old.id}" in page
    assert f"Pay now: invoice {new.number or new.id}" not in page
    assert "Billed through your coworking account" in page
