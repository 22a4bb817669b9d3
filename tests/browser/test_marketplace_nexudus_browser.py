"""An Operator connects Nexudus in a real browser: Marketplace "+" → Nexudus → email and
password → Next → the business and the invoice toggle → Connect, against the Nexudus
stand-in over HTTP (real clock, published rate limits on), with axe on every step."""
from __future__ import annotations

import pytest

from spheremail.extensions import db
from spheremail.models import IntegrationConnection, MemberLink
from spheremail.services.member_sync import wait_for_background
from tests.browser.conftest import assert_accessible, login
from tests.conftest import TEST_PASSWORD

EMAIL = "ops@space.test"
PASSWORD = "s3cret-Passw0rd"


@pytest.fixture
def nexudus_live():
    from tests.standins.nexudus import NexudusStandin

    standin = NexudusStandin()
    standin.add_user(EMAIL, PASSWORD)
    standin.central = standin.add_business("SphereWork Central", currency="EUR")
    standin.add_business("SphereWork Harbour", currency="EUR")
    standin.add_coworker("Grace Hopper", "GRACE@example.test", business_id=standin.central["Id"])
    standin.start()
    yield standin
    standin.stop()


@pytest.fixture
def app_config(nexudus_live):
    """CSRF on, as in production (the browser conftest's setting), and the app's Nexudus
    client pointed at the stand-in."""
    return {"WTF_CSRF_ENABLED": True, "NEXUDUS_API_BASE": nexudus_live.base_url}


def test_marketplace_plus_connects_nexudus(page, live_url, operator, make_customer, nexudus_live):
    grace = make_customer(first_name="Grace", last_name="Hopper", email="grace@example.test")
    alan = make_customer(first_name="Alan", last_name="Turing", email="alan@example.test")

    login(page, operator.email, TEST_PASSWORD)
    page.goto("/customers/")
    page.wait_for_load_state("networkidle")
    assert_accessible(page, "a staff view with the Marketplace +")

    page.get_by_role("link", name="Marketplace: add an integration").click()
    dialog = page.locator("#modal dialog[open]")
    dialog.get_by_role("heading", name="Marketplace").wait_for()
    assert_accessible(page, "Marketplace dialog")

    dialog.get_by_role("button", name="Connect Nexudus").click()
    dialog = page.locator('#modal dialog[open][data-step="credentials"]')
    dialog.get_by_role("heading", name="Connect Nexudus").wait_for()
    assert_accessible(page, "Nexudus credentials step")

    # A wrong password first: a clear message in the popup, nothing saved.
    dialog.get_by_label("Email", exact=True).fill(EMAIL)
    dialog.get_by_label("Password", exact=True).fill("not-the-password")
    dialog.get_by_role("button", name="Next").click()
    alert = page.locator('#modal [role="alert"][data-error-kind="auth"]')
    alert.wait_for()
    assert "did not accept this email and password" in alert.inner_text()
    assert_accessible(page, "Nexudus credentials error")

    dialog = page.locator('#modal dialog[open][data-step="credentials"]')
    assert dialog.get_by_label("Email", exact=True).input_value() == EMAIL
    assert dialog.get_by_label("Password", exact=True).input_value() == ""  # never echoed back
    dialog.get_by_label("Password", exact=True).fill(PASSWORD)
    dialog.get_by_role("button", name="Next").click()

    dialog = page.locator('#modal dialog[open][data-step="location"]')
    dialog.get_by_label("Business").wait_for()
    assert_accessible(page, "Nexudus business step")
    dialog.get_by_label("Business").select_option(label="SphereWork Central")
    dialog.get_by_label("Export invoices to Nexudus").check()
    dialog.get_by_role("button", name="Connect").click()

    page.wait_for_url("**/business-settings/integrations/systems")
    card = page.locator("#system-nexudus")
    card.locator('[data-state="connected"]').wait_for()
    assert "SphereWork Central" in card.inner_text() and f"user {EMAIL}" in card.inner_text()
    assert_accessible(page, "Systems page, Nexudus connected")

    assert wait_for_background(30)
    db.session.expire_all()
    conn = IntegrationConnection.get("nexudus")
    assert conn.is_active and conn.invoice_export and conn.location_id == str(nexudus_live.central["Id"])
    assert conn.credentials() == {"email": EMAIL}  # the token is kept, not the password
    assert MemberLink.active_for(grace.id, "nexudus").source == "auto"  # matched ignoring case
    assert MemberLink.active_for(alan.id, "nexudus").source == "created"
    assert nexudus_live.throttled == 0
