"""Password reset by email: neutral answer, one-time expiring link, lock cleared, staff helper."""
import datetime as dt
import re

import pytest

from spheremail.models import AuditEvent, User
from spheremail.models.base import utcnow

NEUTRAL = b"If an account uses that email"


def _link_path(message) -> str:
    body = message.get_content()
    match = re.search(r"https?://[^\s/]+(/reset-password/\S+)", body)
    assert match, body
    return match.group(1)


def test_forgot_password_answers_the_same_for_known_and_unknown_emails(client, make_customer, smtp_server):
    customer = make_customer()
    known = client.post("/forgot-password", data={"email": customer.email.upper()})
    unknown = client.post("/forgot-password", data={"email": "nobody@example.test"})
    assert known.status_code == unknown.status_code == 200
    assert NEUTRAL in known.data
    # Same page, apart from the CSRF token (off in tests): nothing tells the two apart.
    assert known.data == unknown.data
    assert len(smtp_server.messages) == 1
    assert smtp_server.messages[0]["To"] == customer.email


def test_forgot_password_mail_failure_still_answers_neutrally(client, app, make_customer):
    customer = make_customer()
    app.config.update(MAIL_SUPPRESS=False, MAIL_SERVER="127.0.0.1", MAIL_PORT=9)  # nothing listens there
    response = client.post("/forgot-password", data={"email": customer.email})
    assert response.status_code == 200
    assert NEUTRAL in response.data


def test_forgot_password_empty_form(client):
    response = client.post("/forgot-password", data={"email": ""})
    assert response.status_code == 200
    assert b"Enter the email address of your account" in response.data


def test_reset_link_sets_password_once_and_clears_the_lock(client, app, db, make_customer, smtp_server, auth):
    customer = make_customer()
    user = customer.user
    user.locked_until = utcnow() + dt.timedelta(minutes=10)
    user.failed_logins = 2
    db.session.commit()
    client.post("/forgot-password", data={"email": customer.email})
    path = _link_path(smtp_server.messages[0])

    page = client.get(path)
    assert page.status_code == 200
    assert b"Choose a new password" in page.data
    assert page.headers["Referrer-Policy"] == "no-referrer"

    mismatch = client.post(path, data={"password": "brand new pass 1", "confirm": "other pass 2"})
    assert b"not the same" in mismatch.data
    short = client.post(path, data={"password": "short", "confirm": "short"})
    assert b"at least 8" in short.data

    done = client.post(path, data={"password": "brand new pass 1", "confirm": "brand new pass 1"})
    assert done.status_code == 302
    db.session.expire_all()
    user = db.session.get(User, user.id)
    assert user.locked_until is None and user.failed_logins == 0
    assert user.check_password("brand new pass 1")

    # One time only: the same link is dead now.
    again = client.get(path)
    assert b"does not work any more" in again.data
    reuse = client.post(path, data={"password": "another pass 12", "confirm": "another pass 12"})
    assert b"does not work any more" in reuse.data
    db.session.expire_all()
    assert db.session.get(User, user.id).check_password("brand new pass 1")

    assert auth.login(customer.email, "brand new pass 1").status_code == 302


def test_link_dies_when_password_changes_another_way(client, db, make_customer, smtp_server):
    customer = make_customer()
    client.post("/forgot-password", data={"email": customer.email})
    path = _link_path(smtp_server.messages[0])
    customer.user.set_password("changed elsewhere 1")
    db.session.commit()
    assert b"does not work any more" in client.get(path).data


def test_link_expires(client, app, make_customer, smtp_server):
    customer = make_customer()
    client.post("/forgot-password", data={"email": customer.email})
    path = _link_path(smtp_server.messages[0])
    app.config["PASSWORD_RESET_MAX_AGE"] = -1  # every token is older than that
    assert b"does not work any more" in client.get(path).data


@pytest.mark.parametrize("token", ["garbage", "a" * 300, "eyJ1aWQiOjF9.x.y"])
def test_tampered_tokens_are_refused(client, make_customer, token):
    make_customer()
    response = client.get(f"/reset-password/{token}")
    assert response.status_code == 200
    assert b"does not work any more" in response.data


def test_token_signed_with_another_key_is_refused(client, app, make_customer):
    from itsdangerous import URLSafeTimedSerializer

    from spheremail.services.accounts import RESET_SALT, _fingerprint

    customer = make_customer()
    forged = URLSafeTimedSerializer("not-the-key", salt=RESET_SALT).dumps(
        {"uid": customer.user.id, "fp": _fingerprint(customer.user)})
    assert b"does not work any more" in client.get(f"/reset-password/{forged}").data


# --- Staff: "cannot log in" ------------------------------------------------------------------

def test_account_state_codes(app, db, make_customer, make_staff):
    from spheremail.services.accounts import account_state

    ok = make_customer()
    assert account_state(ok.user)[0] == "ok"
    inactive = make_customer(status="inactive")
    assert account_state(inactive.user)[0] == "inactive"
    never = make_customer(password=None)
    code, reason = account_state(never.user)
    assert code == "never_activated" and "No password" in reason
    locked = make_customer()
    locked.user.locked_until = utcnow() + dt.timedelta(minutes=5)
    db.session.commit()
    code, reason = account_state(locked.user)
    assert code == "locked" and f"{locked.user.locked_until:%Y-%m-%d %H:%M}" in reason
    staff = make_staff("admin")
    staff.is_enabled = False
    assert account_state(staff)[0] == "inactive"


def _render_hook(app, customer, user):
    from flask import render_template
    from flask_login import login_user

    with app.test_request_context("/customers/1"):
        login_user(user)
        return render_template("customers/partials/login_help_hook.html", customer=customer)


def test_login_help_hook_shows_state_and_button(app, db, make_customer, make_staff):
    customer = make_customer(password=None)
    html = _render_hook(app, customer, make_staff("admin"))
    assert "Never activated" in html and "Send password-reset email" in html
    html = _render_hook(app, customer, make_staff("mail_admin"))
    assert "Never activated" in html and "Send password-reset email" not in html


def test_staff_sends_reset_to_never_activated_customer_who_sets_first_password(
        client, db, make_customer, make_staff, auth, smtp_server):
    customer = make_customer(password=None)
    admin = make_staff("admin")
    auth.login(admin.email)
    response = client.post(f"/customers/{customer.id}/send-password-reset", headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert b"A password-reset email was sent" in response.data
    message = smtp_server.messages[0]
    assert message["Subject"] == "Set your SphereMail password"
    event = db.session.execute(db.select(AuditEvent).filter_by(action="password_reset_sent")).scalar_one()
    assert event.actor_id == admin.id and event.subject_id == customer.user.id

    auth.logout()
    path = _link_path(message)
    client.post(path, data={"password": "first password 1", "confirm": "first password 1"})
    assert auth.login(customer.email, "first password 1").headers["Location"] == "/"


def test_staff_reset_without_htmx_redirects_back(client, make_customer, make_staff, auth, smtp_server):
    customer = make_customer()
    auth.login(make_staff("operator").email)
    response = client.post(f"/customers/{customer.id}/send-password-reset", data={"next": "/somewhere"})
    assert response.status_code == 303
    assert response.headers["Location"] == "/somewhere"


def test_staff_reset_mail_failure_gives_clear_message(client, app, db, make_customer, make_staff, auth):
    customer = make_customer()
    auth.login(make_staff("admin").email)
    app.config.update(MAIL_SUPPRESS=False, MAIL_SERVER="127.0.0.1", MAIL_PORT=9)
    response = client.post(f"/customers/{customer.id}/send-password-reset", headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert b"could not be sent" in response.data
    assert db.session.execute(db.select(AuditEvent).filter_by(action="password_reset_sent")).first() is None


def test_mail_admin_cannot_send_reset(client, make_customer, make_staff, auth):
    customer = make_customer()
    auth.login(make_staff("mail_admin").email)
    assert client.post(f"/customers/{customer.id}/send-password-reset").status_code == 403
    assert client.post("/customers/999999/send-password-reset").status_code == 403


def test_staff_reset_unknown_customer_is_404(client, make_staff, auth):
    auth.login(make_staff("admin").email)
    assert client.post("/customers/999999/send-password-reset").status_code == 404
