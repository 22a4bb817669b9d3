"""Input no page can store gets a clear answer below 500, and guessing stays throttled."""
import pytest

from spheremail.extensions import db
from spheremail.models import AuditEvent, LoginFailure
from tests.conftest import TEST_PASSWORD


@pytest.mark.parametrize("url, data", [
    ("/login", {"email": "a\x00b@example.test", "password": "x"}),
    ("/forgot-password", {"email": "a\x00b@example.test"}),
])
def test_nul_characters_are_refused_with_a_message(client, url, data):
    response = client.post(url, data=data)
    assert response.status_code == 400
    assert b"control characters" in response.data
    assert db.session.query(LoginFailure).count() == 0  # nothing was recorded or saved


def test_nul_in_a_query_string_is_harmless(client, logged_in_operator):
    assert client.get("/staff/audit-log?action=a%00b").status_code == 200
    assert client.get("/login?next=/cust%00omers").status_code == 200


def test_nul_in_a_staff_form_saves_nothing(client, logged_in_operator):
    before = db.session.query(AuditEvent).count()
    response = client.post("/customers/new", data={"first_name": "A\x00", "last_name": "B",
                                                   "email": "ab@example.test"})
    assert response.status_code == 400
    assert b"Nothing was saved" in response.data
    assert db.session.query(AuditEvent).count() == before


def test_tabs_and_line_breaks_are_still_accepted(client):
    response = client.post("/login", data={"email": "x@example.test", "password": "a\tb\r\nc"})
    assert response.status_code == 200
    assert b"do not match" in response.data


@pytest.mark.parametrize("url", [
    "/customers/99999999999999999999999",
    "/customers/2147483648",
    "/portal/invoices/99999999999999999999999",
])
def test_ids_too_large_for_the_database_are_not_found(client, logged_in_operator, url):
    assert client.get(url).status_code == 404


@pytest.mark.parametrize("url", [
    "/staff/audit-log?page=99999999999999999999999999",
    "/staff/audit-log?page=-3",
    "/customers/?page=99999999999999999999999999",
])
def test_absurd_page_numbers_show_a_page(client, logged_in_operator, url):
    assert client.get(url).status_code == 200


def test_a_password_typed_into_the_email_box_is_not_written_down(client):
    client.post("/login", data={"email": "MyS3cretPassw0rd!", "password": "x"})
    summaries = [e.summary for e in db.session.query(AuditEvent).all()]
    failures = [f.email for f in db.session.query(LoginFailure).all()]
    assert not any("MyS3cretPassw0rd" in s for s in summaries)
    assert not any("MyS3cretPassw0rd" in f for f in failures)
    assert failures == ["(not an email address)"]


def test_guessing_the_password_behind_log_in_as_customer_locks_the_staff_account(
        app, client, auth, make_staff, make_customer):
    operator = make_staff("operator")
    customer = make_customer()
    auth.login(operator.email)
    limit = app.config["LOGIN_MAX_FAILURES"]
    for i in range(limit):
        response = client.post(f"/customers/{customer.id}/impersonate", data={"password": f"guess {i}"})
        assert response.status_code == 200
    db.session.refresh(operator)
    assert operator.locked_until is not None
    # Even the right password is refused now: the guesses were counted against the account.
    response = client.post(f"/customers/{customer.id}/impersonate", data={"password": TEST_PASSWORD})
    assert response.status_code == 200
    assert b"locked" in response.data
    with client.session_transaction() as session:
        assert "impersonator_id" not in session


def test_guessing_from_one_address_is_throttled_across_accounts(app, client, auth, make_staff, make_customer):
    app.config["LOGIN_MAX_FAILURES_PER_ADDRESS"] = 3
    operator = make_staff("operator")
    customer = make_customer()
    for i in range(3):
        db.session.add(LoginFailure(address="127.0.0.1", email=f"other{i}@example.test"))
    db.session.commit()
    client.post("/login", data={"email": operator.email, "password": TEST_PASSWORD})  # throttled
    app.config["LOGIN_MAX_FAILURES_PER_ADDRESS"] = 4
    auth.login(operator.email)
    app.config["LOGIN_MAX_FAILURES_PER_ADDRESS"] = 3
    response = client.post(f"/customers/{customer.id}/impersonate", data={"password": TEST_PASSWORD})
    assert b"Too many failed password attempts" in response.data


def test_new_customers_list_survives_an_absurd_page(client, logged_in_operator):
    response = client.get("/business-settings/integrations/officernd/new-customers?page=99999999999999999999999")
    assert response.status_code == 200


def test_thousands_of_digits_in_payment_terms_get_a_message(client, logged_in_operator):
    page = client.get("/billing/settings").get_data(as_text=True)
    assert "payment_terms_days" in page
    response = client.post("/billing/settings", data={"currency": "EUR", "recipient_price": "5.00",
                                                       "payment_terms_days": "1" * 5000, "invoice_prefix": "INV-"})
    assert response.status_code == 200
    assert "whole number of days" in response.get_data(as_text=True)
