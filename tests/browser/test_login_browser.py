"""Logging in through a real browser, with axe-core on each page."""
from tests.browser.conftest import assert_accessible, login
from tests.conftest import TEST_PASSWORD


def test_operator_logs_in_in_a_real_browser(page, operator):
    page.goto("/login")
    assert_accessible(page, "login page")
    login(page, operator.email, TEST_PASSWORD)
    assert "/login" not in page.url
    assert page.get_by_role("button", name="Log out").is_visible()


def test_wrong_password_is_explained(page, operator):
    login(page, operator.email, "definitely wrong")
    assert page.get_by_role("alert").inner_text().startswith("That email and password do not match")
    assert_accessible(page, "login error")
