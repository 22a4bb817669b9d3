"""An Operator connects OfficeRnD in a real browser (issue #4): Business Settings →
Integrations → Systems, the toggle, the Connect popup (a wrong secret first, then the right
one), Next, the location, invoice export and fee plan id, Connect; the auto-connect run is
polled to its end; then Connect members → Confirm runs again without creating duplicates.
axe-core checks every step: the page, each dialog, the error, the progress and the summary.

The OfficeRnD stand-in runs over real HTTP on a loopback port; the app is pointed at it
through OFFICERND_TOKEN_URL / OFFICERND_API_BASE.
"""
from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import expect

from spheremail.extensions import db
from spheremail.models import IntegrationConnection, MemberLink, SyncRun
from spheremail.services.member_sync import wait_for_background
from tests.browser.conftest import assert_accessible, login
from tests.conftest import TEST_PASSWORD

# A folder to keep a screenshot of each step in, for a person to look at (off by default).
SCREENSHOTS = os.environ.get("SPHEREMAIL_SCREENSHOTS")


@pytest.fixture
def officernd():
    """The OfficeRnD stand-in: one organization, two locations, a fee plan, one member whose
    email differs from a SphereMail customer's only in letter case."""
    from tests.standins.officernd import OfficeRnDStandIn

    standin = OfficeRnDStandIn(slug="acme", client_id="acme-client", client_secret="acme-secret-123",
                               token_limit=1000, read_limit=100_000, write_limit=100_000, timeout_seconds=2.0)
    standin.central = standin.add_location("Amsterdam Central")
    standin.add_location("Rotterdam Port")
    standin.plan_id = standin.add_plan("Mailbox fees")
    standin.grace = standin.add_member("Grace Hopper", "Grace.Hopper@Example.TEST", standin.central["_id"])
    standin.start()
    yield standin
    standin.stop()


@pytest.fixture
def app_config(officernd):
    """CSRF on (as in the browser harness) and the app's OfficeRnD client on the stand-in."""
    return {
        "WTF_CSRF_ENABLED": True,
        "OFFICERND_TOKEN_URL": officernd.token_url,
        "OFFICERND_API_BASE": officernd.api_base,
        "INTEGRATIONS_CLIENT_OPTIONS": {"timeout": 5, "backoff": 0.01, "max_wait": 5},
    }


@pytest.fixture(autouse=True)
def _join_background_sync(app):
    """The auto-connect thread must finish before the database is torn down."""
    yield
    assert wait_for_background(30), "a background sync thread did not finish"


def _shot(page, name):
    if SCREENSHOTS:
        page.screenshot(path=f"{SCREENSHOTS}/{name}.png", full_page=True)


def _dialog(page, showing: str = "*"):
    """The open popup: exactly one <dialog> in #modal, opened as a modal (showModal), holding
    an element that matches ``showing`` (so a step is not mistaken for the one before it)."""
    page.wait_for_function(
        "sel => { const d = document.querySelectorAll('#modal dialog');"
        " return d.length === 1 && d[0].matches(':modal') && (d[0].matches(sel) || !!d[0].querySelector(sel)); }", arg=showing)
    return page.locator("#modal dialog")


def _fresh():
    """End the test's read transaction so the next query sees what the live server wrote."""
    db.session.rollback()
    return db.session


def _focus_inside(dialog) -> bool:
    return dialog.evaluate("d => d.contains(document.activeElement)")


def _wait_for_finished_run(page, card):
    """Polling stops by itself: the progress box loses its hx-get once the run finished."""
    progress = card.locator(".sync-progress")
    expect(progress).to_have_attribute("data-status", re.compile("done|failed"), timeout=20_000)
    expect(progress).not_to_have_attribute("hx-get", re.compile("."))
    return progress


def test_operator_connects_officernd_and_members_in_a_real_browser(page, operator, make_customer, officernd):
    grace = make_customer(first_name="Grace", last_name="Hopper", email="grace.hopper@example.test")
    make_customer(first_name="Alan", last_name="Turing", email="alan@example.test")
    make_customer(first_name="Ada", last_name="Lovelace", email="ada@example.test")
    members_before = len(officernd.members)
    assert members_before == 1

    # Business Settings → Integrations → Systems
    login(page, operator.email, TEST_PASSWORD)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Business Settings").click()
    page.wait_for_load_state("networkidle")
    assert page.get_by_role("heading", level=1).inner_text() == "Business Settings"
    assert page.get_by_role("navigation", name="Business Settings").get_by_role("link", name="Systems") \
        .get_attribute("aria-current") == "page"
    card = page.locator("#system-officernd")
    expect(card.get_by_role("heading", name=re.compile("OfficeRnD Flex"))).to_be_visible()
    assert_accessible(page, "systems page, nothing connected")

    # The toggle: on; the page comes back with a Connect button.
    card.get_by_role("switch", name="Enable the OfficeRnD Flex integration").check()
    connect_button = card.get_by_role("button", name="Connect", exact=True)
    expect(connect_button).to_be_visible()
    expect(card.get_by_role("switch", name="Enable the OfficeRnD Flex integration")).to_be_checked()
    _fresh()
    assert IntegrationConnection.get("officernd").enabled
    assert_accessible(page, "systems page, OfficeRnD switched on")

    # Connect: the popup opens as a modal dialog with the focus in it.
    connect_button.click()
    dialog = _dialog(page)
    expect(dialog.get_by_role("heading", name="Connect OfficeRnD Flex")).to_be_visible()
    assert _focus_inside(dialog), "the focus did not move into the popup"
    _shot(page, "1-connect-popup")
    assert_accessible(page, "connect popup")

    # A wrong secret: a clear error in the popup, nothing saved, fields kept (not the secret).
    dialog.get_by_label("Client ID").fill("acme-client")
    dialog.get_by_label("Client Secret").fill("not-the-secret")
    dialog.get_by_label("OfficeRnD Slug").fill("acme")
    dialog.get_by_role("button", name="Next").click()
    dialog = _dialog(page, "[role=alert]")
    alert = dialog.get_by_role("alert")
    expect(alert).to_contain_text("OfficeRnD Flex did not accept these credentials.")
    expect(alert).to_contain_text("Nothing was saved.")
    expect(dialog.get_by_label("Client ID")).to_have_value("acme-client")
    expect(dialog.get_by_label("Client Secret")).to_have_value("")
    assert _focus_inside(dialog)
    _fresh()
    assert IntegrationConnection.get("officernd").credentials_encrypted is None
    _shot(page, "2-connect-error")
    assert_accessible(page, "connect popup, wrong secret")

    # The right secret → Next → the location step.
    dialog.get_by_label("Client Secret").fill("acme-secret-123")
    dialog.get_by_role("button", name="Next").click()
    dialog = _dialog(page, '[data-step="location"]')
    expect(dialog).to_contain_text("organization “acme”")
    location = dialog.get_by_label("Location")
    assert location.locator("option").all_inner_texts() == ["Choose…", "Amsterdam Central", "Rotterdam Port"]
    assert _focus_inside(dialog)
    assert_accessible(page, "connect popup, location step")

    # Connect without a fee plan id while exporting: the field says what is missing.
    location.select_option(label="Amsterdam Central")
    dialog.get_by_role("switch", name="Export invoices to OfficeRnD Flex").check()
    dialog.get_by_role("button", name="Connect").click()
    dialog = _dialog(page, "#fee_plan_id[aria-invalid=true]")
    expect(dialog.get_by_label("Fee plan id")).to_have_attribute("aria-invalid", "true")
    expect(dialog).to_contain_text("Enter the fee plan id the fees are booked on.")
    expect(dialog.get_by_label("Location")).to_have_value(officernd.central["_id"])
    expect(dialog.get_by_role("switch", name="Export invoices to OfficeRnD Flex")).to_be_checked()
    _fresh()
    assert IntegrationConnection.get("officernd").state == "connecting"
    _shot(page, "3-location-error")
    assert_accessible(page, "connect popup, fee plan id missing")

    dialog.get_by_label("Fee plan id").fill(officernd.plan_id)
    dialog.get_by_role("button", name="Connect").click()

    # Back on the Systems page (refreshed): connected, with the location and the export.
    expect(page.locator("#modal dialog")).to_have_count(0)
    card = page.locator("#system-officernd")
    expect(card.locator(".badge")).to_have_text(re.compile("^Connected"))
    facts = card.locator("dl.connection-facts")
    expect(facts).to_contain_text("Amsterdam Central")
    expect(facts).to_contain_text(f"On (fee plan {officernd.plan_id})")

    # The auto-connect run started on Connect; the page polls it until it finished.
    progress = _wait_for_finished_run(page, card)
    expect(progress).to_contain_text("Connect members finished")
    expect(progress).to_contain_text("1 matched, 2 created, 0 failed")
    assert len(officernd.members) == members_before + 2
    emails = sorted(m["email"] for m in officernd.members.values())
    assert emails == ["Grace.Hopper@Example.TEST", "ada@example.test", "alan@example.test"]
    # When the run ends, the page reloads its cards: "Last sync" and both new customers show.
    last_sync = card.locator("dl.connection-facts dt:text-is('Last sync') + dd")
    expect(last_sync).to_contain_text("1 matched, 2 created, 0 failed")
    new_customers = card.get_by_role("region", name="New customers")
    expect(new_customers).to_contain_text("Alan Turing")
    expect(new_customers).to_contain_text("Ada Lovelace")
    expect(new_customers).not_to_contain_text("Grace Hopper")  # matched, not created
    grace_link = _fresh().execute(db.select(MemberLink).filter_by(customer_id=grace.id)).scalar_one()
    assert grace_link.member_id == officernd.grace["_id"]
    _shot(page, "4-connected")
    assert_accessible(page, "systems page, connected, auto-connect finished")

    # Connect members → Confirm: runs again, shows its progress, creates nobody.
    runs_before = _fresh().execute(db.select(db.func.count(SyncRun.id))).scalar()
    card.get_by_role("button", name="Connect members").click()
    dialog = _dialog(page)
    expect(dialog.get_by_role("heading", name="Connect members")).to_be_visible()
    assert _focus_inside(dialog)
    _shot(page, "5-confirm-sync")
    assert_accessible(page, "connect members confirmation")
    dialog.get_by_role("button", name="Confirm").click()
    expect(page.locator("#modal dialog")).to_have_count(0)
    sync_button = card.get_by_role("button", name="Connect members")
    expect(sync_button).to_be_focused()  # closing the popup gives the focus back
    progress = card.locator(".sync-progress")
    expect(progress).to_have_count(1)
    assert_accessible(page, "connect members progress")
    progress = _wait_for_finished_run(page, card)
    expect(progress).to_contain_text("Connect members finished")
    expect(progress).to_contain_text("0 created, 0 failed")
    expect(progress).to_contain_text("3 matched")
    assert _fresh().execute(db.select(db.func.count(SyncRun.id))).scalar() == runs_before + 1
    assert len(officernd.members) == members_before + 2  # no duplicates
    # The cards were reloaded after this run too, and the focus stayed on the button.
    expect(last_sync).to_contain_text("3 matched")
    expect(sync_button).to_be_focused()
    _shot(page, "6-second-run")
    assert_accessible(page, "connect members summary")
