"""Issue #2 in a real browser (Playwright driving Debian's Chromium, CSRF on): the operator's
customer work and the customer's sign-up, with axe-core on every page and on every HTMX-swapped
state worth checking (search results, inline errors, the "log in as" dialog).

The flows act as a person would: labels and roles, typing into the live search and waiting for
the rows to change. No sleeps: every wait is one of Playwright's auto-retrying expectations.
"""
from __future__ import annotations

import datetime as dt
import re

from playwright.sync_api import expect

from spheremail.extensions import db
from tests.browser.conftest import assert_accessible, login
from tests.conftest import TEST_PASSWORD


def _main_nav(page):
    return page.get_by_role("navigation", name="Main")


def _result_rows(page):
    """Body rows of the customer results table (the header row is not a result)."""
    return page.get_by_role("table", name="Customers").locator("tbody").get_by_role("row")


def _search(page, text: str) -> None:
    """Type into the live search like a person (key by key); htmx fetches the rows."""
    box = page.get_by_role("searchbox", name="Search")
    box.clear()
    box.press_sequentially(text)


def _flash(page):
    return page.locator("main > .flash")


# --- Operator: create, find, renumber, schedule the deactivation --------------------------------

def test_operator_creates_finds_renumbers_and_schedules_deactivation(page, operator, make_customer):
    make_customer(first_name="Grace", last_name="Hopper", email="grace@example.test", company="Navy")
    holder = make_customer(first_name="Alan", last_name="Turing", email="alan@example.test",
                           mailbox_number=777)

    login(page, operator.email, TEST_PASSWORD)
    expect(page.get_by_role("heading", level=1)).to_have_text("Customers")
    expect(_result_rows(page)).to_have_count(2)
    assert_accessible(page, "customer list")

    # Create a customer: first a mistake, then the real thing.
    page.get_by_role("button", name="New customer").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("New customer")
    assert_accessible(page, "new customer form")
    page.get_by_role("button", name="Create customer").click()
    expect(page.get_by_label("First name")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_text("Enter the first name.")).to_be_visible()
    assert_accessible(page, "new customer form with errors")

    page.get_by_label("First name").fill("Mary")
    page.get_by_label("Last name").fill("Jackson")
    page.get_by_label("Email").fill("mary.jackson@example.test")
    page.get_by_label("Company (optional)").fill("Langley Research")
    page.get_by_label("Phone (optional)").fill("+1 757 555 0100")
    page.get_by_role("button", name="Create customer").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Mary Jackson")
    expect(_flash(page)).to_contain_text("Customer Mary Jackson created with mailbox")
    assert_accessible(page, "new customer's page")
    created_number = int(re.search(r"Mailbox #(\d+)", page.locator("hgroup").inner_text()).group(1))

    # Find her again with the live search: the rows update as she is typed.
    _main_nav(page).get_by_role("link", name="Customers").click()
    expect(_result_rows(page)).to_have_count(3)
    _search(page, "jacks")
    expect(_result_rows(page)).to_have_count(1)
    expect(_result_rows(page).first).to_contain_text("Mary Jackson")
    expect(page.locator("#customer-count")).to_contain_text("1 customer matching “jacks”")
    expect(page).to_have_url(re.compile(r"[?&]q=jacks"))
    assert_accessible(page, "search results")

    _search(page, "nobody-by-that-name")
    expect(_result_rows(page)).to_have_count(0)
    expect(page.locator("#customer-count")).to_contain_text("No customers match")
    assert_accessible(page, "search without results")

    _search(page, str(created_number))  # a mailbox number finds its holder too
    expect(_result_rows(page)).to_have_count(1)
    _result_rows(page).first.get_by_role("link", name="Mary Jackson").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Mary Jackson")

    # Changing to a taken number: the inline error names who holds it; nothing changes.
    number_section = page.get_by_role("region", name="Mailbox number", exact=True)
    number_section.get_by_label("New mailbox number").fill(str(holder.mailbox_number))
    number_section.get_by_role("button", name="Change number").click()
    error = number_section.get_by_role("alert")
    expect(error).to_contain_text(f"Mailbox {holder.mailbox_number} belongs to")
    expect(error).to_contain_text("Alan Turing")
    expect(number_section.get_by_label("New mailbox number")).to_have_attribute("aria-invalid", "true")
    assert_accessible(page, "mailbox number taken (inline error)")
    expect(page.locator("hgroup")).to_contain_text(f"Mailbox #{created_number}")

    # A free number is accepted and recorded in the history.
    number_section.get_by_label("New mailbox number").fill("4242")
    number_section.get_by_role("button", name="Change number").click()
    expect(_flash(page)).to_contain_text(f"Mailbox number changed from {created_number} to 4242")
    expect(page.locator("hgroup")).to_contain_text("Mailbox #4242")
    history = page.get_by_role("table", name="History")
    expect(history.get_by_role("row").filter(has_text=f"#{created_number}").filter(has_text="#4242")).to_have_count(1)
    assert_accessible(page, "after the number change")

    # Schedule the deactivation on a chosen date (a 30-day notice).
    notice_end = dt.date.today() + dt.timedelta(days=30)
    status_section = page.get_by_role("region", name="Status", exact=True)
    status_section.get_by_label("On a chosen date").check()
    status_section.get_by_label("Date", exact=True).fill(notice_end.isoformat())
    status_section.get_by_role("button", name="Deactivate").click()
    expect(_flash(page)).to_contain_text(f"Mary Jackson becomes inactive on {notice_end:%d %B %Y}")
    scheduled = page.locator("#scheduled-deactivation")
    expect(scheduled).to_contain_text(f"Scheduled to become inactive on {notice_end:%d %B %Y}")
    expect(scheduled.get_by_role("button", name="Withdraw the cancellation")).to_be_visible()
    assert_accessible(page, "deactivation scheduled")

    # The list still shows her as active, with the date she leaves.
    _main_nav(page).get_by_role("link", name="Customers").click()
    _search(page, "Mary")
    expect(page.locator("#customer-count")).to_contain_text("1 customer matching “Mary”")
    expect(_result_rows(page).first).to_contain_text(f"until {notice_end.isoformat()}")

    from spheremail.models import Customer

    db.session.expire_all()
    mary = db.session.execute(db.select(Customer).where(Customer.mailbox_number == 4242)).scalar_one()
    assert (mary.status, mary.deactivate_on, mary.deactivate_reason) == ("active", notice_end, "date")
    assert db.session.get(Customer, holder.id).mailbox_number == 777


def test_inline_errors_on_the_customer_page_are_accessible(page, operator, make_customer):
    customer = make_customer(first_name="Dorothy", last_name="Vaughan")
    login(page, operator.email, TEST_PASSWORD)
    page.goto(f"/customers/{customer.id}")

    status_section = page.get_by_role("region", name="Status", exact=True)
    status_section.get_by_label("On a chosen date").check()
    status_section.get_by_role("button", name="Deactivate").click()
    expect(status_section.get_by_role("alert")).to_contain_text("Choose the date the customer becomes inactive.")
    assert_accessible(page, "deactivation form error")

    recipients = page.get_by_role("region", name="Additional recipients", exact=True)
    recipients.get_by_role("button", name="Add recipient").click()
    expect(recipients.get_by_label("First name")).to_have_attribute("aria-invalid", "true")
    expect(recipients.get_by_text("Enter the last name.")).to_be_visible()
    assert_accessible(page, "add-recipient form errors")

    db.session.expire_all()
    assert customer.status == "active" and customer.deactivate_on is None
    assert customer.recipients == []


def _overlapping(boxes: list[dict]) -> list[tuple[int, int]]:
    """Pairs of boxes that cover each other by more than a pixel."""
    pairs = []
    for i, a in enumerate(boxes):
        for j, b in enumerate(boxes[i + 1:], start=i + 1):
            dx = min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"])
            dy = min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"])
            if dx > 1 and dy > 1:
                pairs.append((i, j))
    return pairs


def test_nav_and_customer_pages_stay_readable_on_a_phone(page, operator, make_customer):
    """The staff nav has many links: on a narrow screen it wraps instead of widening the page,
    and no link or button sits on top of another (the Log out button was pushed off-screen)."""
    customer = make_customer(first_name="Dorothy", last_name="Vaughan",
                             company="West Area Computing Unit, Langley Memorial Aeronautical Laboratory")
    login(page, operator.email, TEST_PASSWORD)
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 800})
        for url, what in (("/customers/", "customer list"), (f"/customers/{customer.id}", "customer page")):
            page.goto(url)
            expect(page.get_by_role("heading", level=1)).to_be_visible()
            items = _main_nav(page).get_by_role("listitem")
            boxes = [items.nth(i).bounding_box() for i in range(items.count())]
            assert len(boxes) >= 3
            assert all(b["x"] >= 0 and b["x"] + b["width"] <= width + 1 for b in boxes), (what, width, boxes)
            assert not _overlapping(boxes), (what, width, boxes)
            if what == "customer page":
                actions = page.locator(".page-heading .actions > *")
                action_boxes = [actions.nth(i).bounding_box() for i in range(actions.count())]
                assert len(action_boxes) == 3 and not _overlapping(action_boxes), action_boxes
                # Wide tables (billing fees and invoices, history) scroll inside their own
                # region: the page itself never gets wider than the screen.
                expect(page.locator("#customer-billing h3").first).to_be_visible()
                page_width = page.evaluate("document.documentElement.scrollWidth")
                assert page_width <= width, (what, width, page_width)
                assert_accessible(page, f"customer page at {width}px")


# --- Customer signs up; operator marks the recipient free and logs in as the customer ------------

def test_signup_recipient_marked_free_and_operator_logs_in_as_customer(page, operator):
    # The customer rents a mailbox on the portal.
    page.goto("/login")
    page.get_by_role("link", name="Rent a mailbox").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Rent a mailbox")
    assert_accessible(page, "sign-up form")
    page.get_by_label("First name").fill("Katherine")
    page.get_by_label("Last name").fill("Goble")
    page.get_by_label("Company (optional)").fill("West Computers")
    page.get_by_label("Email").fill("katherine.goble@example.test")
    page.get_by_label("Password", exact=True).fill("short")
    page.get_by_label("Password again").fill("different")
    page.get_by_role("button", name="Open my account").click()
    expect(page.get_by_role("alert")).to_contain_text("Some fields need your attention.")
    expect(page.get_by_label("Password again")).to_have_attribute("aria-invalid", "true")
    assert_accessible(page, "sign-up form with errors")

    page.get_by_label("Password", exact=True).fill("a long enough password")
    page.get_by_label("Password again").fill("a long enough password")
    page.get_by_role("button", name="Open my account").click()
    expect(page.get_by_role("status").filter(has_text="Welcome!")).to_contain_text("Your mailbox number is")
    heading = page.get_by_role("heading", level=1)
    expect(heading).to_have_text(re.compile(r"^Mailbox \d+$"))
    mailbox = heading.inner_text().split()[-1]
    assert_accessible(page, "portal home")

    # She adds a recipient; it gets the operator's default status (paid).
    page.get_by_role("button", name="Add a recipient").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Add a recipient")
    assert_accessible(page, "portal: add a recipient")
    page.get_by_label("First name").fill("Joan")
    page.get_by_label("Last name").fill("Clarke")
    page.get_by_role("button", name="Add the recipient").click()
    expect(page.get_by_role("status").filter(has_text="Joan Clarke is added")).to_be_visible()
    row = page.get_by_role("row").filter(has_text="Joan Clarke")
    expect(row).to_contain_text("paid")
    assert_accessible(page, "portal home with a recipient")
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Log in")

    # The operator finds her and marks the recipient free, inline.
    login(page, operator.email, TEST_PASSWORD)
    _search(page, "Goble")
    expect(page.locator("#customer-count")).to_contain_text("1 customer matching “Goble”")
    _result_rows(page).first.get_by_role("link", name="Katherine Goble").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Katherine Goble")
    expect(page.locator("hgroup")).to_contain_text(f"Mailbox #{mailbox}")
    recipients = page.get_by_role("region", name="Additional recipients", exact=True)
    status = recipients.get_by_label("Status of Joan Clarke")
    expect(status).to_have_value("paid")
    status.select_option("free")
    expect(recipients.get_by_role("status")).to_have_text("Saved: free.")
    expect(recipients.get_by_label("Status of Joan Clarke")).to_have_value("free")
    assert_accessible(page, "recipient row after the inline status change")

    # Log in as the customer: the dialog asks for the operator's own password again.
    page.get_by_role("button", name="Log in as customer").click()
    dialog = page.get_by_role("dialog", name="Log in as a customer")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Katherine Goble")
    assert_accessible(page, "log-in-as dialog")
    dialog.get_by_label("Your own password").fill("not my password")
    dialog.get_by_role("button", name="Log in as this customer").click()
    expect(dialog.get_by_role("alert")).to_contain_text("That is not your password.")
    assert_accessible(page, "log-in-as dialog with a wrong password")
    dialog.get_by_label("Your own password").fill(TEST_PASSWORD)
    dialog.get_by_role("button", name="Log in as this customer").click()

    banner = page.locator(".impersonation-banner")
    expect(banner).to_contain_text("You are acting as katherine.goble@example.test")
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Mailbox {mailbox}")
    expect(page.get_by_role("row").filter(has_text="Joan Clarke")).to_contain_text("free")
    assert_accessible(page, "portal home while acting as the customer")

    # Back to staff: the customer's page again, and the audit log has both ends.
    banner.get_by_role("button", name="Back to staff").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Katherine Goble")
    expect(page.locator(".impersonation-banner")).to_have_count(0)
    _main_nav(page).get_by_role("link", name="Audit log").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Audit log")
    audit = page.get_by_role("table")
    for action in ("impersonation_started", "impersonation_failed", "impersonation_ended"):
        expect(audit.get_by_role("row").filter(has_text=action)).to_have_count(1)
    assert_accessible(page, "audit log")
