"""Login hardening: lock per account, throttle per address, safe ``next``."""
import pytest

from spheremail.models import AuditEvent, User


@pytest.fixture
def app_config():
    return {"LOGIN_MAX_FAILURES": 3, "LOGIN_MAX_FAILURES_PER_ADDRESS": 6, "LOGIN_LOCK_SECONDS": 900}


def test_account_locks_after_n_failures_and_correct_password_is_refused_while_locked(client, operator, auth, db):
    for _ in range(3):
        response = auth.login(operator.email, "wrong password!")
        assert b"do not match" in response.data
    db.session.expire_all()
    assert db.session.get(User, operator.id).is_locked()
    response = auth.login(operator.email)  # the right password, but the account is locked
    assert response.status_code == 200
    assert b"This account is locked after too many failed logins" in response.data
    assert b"reset your password" in response.data
    assert client.get("/staff/audit-log").status_code in (302, 401)  # still not logged in
    actions = db.session.execute(db.select(AuditEvent.action)).scalars().all()
    assert "account_locked" in actions


def test_successful_login_resets_the_failure_count(client, operator, auth, db):
    auth.login(operator.email, "wrong password!")
    auth.login(operator.email, "wrong password!")
    assert auth.login(operator.email).status_code == 302
    db.session.expire_all()
    assert db.session.get(User, operator.id).failed_logins == 0


def test_address_is_throttled_across_accounts(client, make_staff, auth):
    users = [make_staff("admin") for _ in range(3)]
    # Six failures spread over several accounts (none of them reaches its own lock of 3)...
    for user in users:
        auth.login(user.email, "wrong password!")
        auth.login(user.email, "wrong password!")
    fresh = make_staff("operator")
    # ...block the address, even for a correct password of an untouched account.
    response = auth.login(fresh.email)
    assert response.status_code == 200
    assert b"Too many failed logins from your network" in response.data


def test_unknown_email_failures_count_for_the_address(client, operator, auth):
    for n in range(6):
        response = auth.login(f"nobody{n}@example.test", "whatever12")
        assert b"do not match" in response.data  # same answer as a wrong password: no enumeration
    assert b"Too many failed logins" in auth.login(operator.email).data


def test_empty_and_oversized_login_form(client):
    assert b"Enter your email and password" in client.post("/login", data={}).data
    response = client.post("/login", data={"email": "a@b.c" * 100, "password": "x" * 500})
    assert response.status_code == 200


@pytest.mark.parametrize("target", [
    "https://evil.test/", "//evil.test/", "/\\evil.test", "\\\\evil.test", "/\t/evil.test",
    "javascript:alert(1)", "http:/evil.test", "/%0a/evil.test\n",
])
def test_next_cannot_leave_the_site(client, make_customer, target):
    customer = make_customer()
    response = client.post("/login", query_string={"next": target},
                           data={"email": customer.email, "password": "correct horse battery"})
    assert response.status_code == 302
    location = response.headers["Location"]
    assert "evil" not in location and "javascript" not in location
    assert location in ("/", "http://localhost/")


def test_next_to_a_local_page_is_followed(client, make_customer):
    customer = make_customer()
    response = client.post("/login", query_string={"next": "/portal/profile?x=1"},
                           data={"email": customer.email, "password": "correct horse battery"})
    assert response.headers["Location"] == "/portal/profile?x=1"


def test_protected_page_redirects_to_login_with_next(client):
    response = client.get("/portal/profile")
    assert response.status_code == 302
    assert "/login?next=/portal/profile" in response.headers["Location"]


def test_inactive_customer_cannot_log_in(client, make_customer, auth):
    customer = make_customer(status="inactive")
    response = auth.login(customer.email)
    assert response.status_code == 200
    assert b"inactive" in response.data
