"""Passwords typed anywhere (login, reset, impersonation, sign-up, change) never reach the audit trail."""
import re

from sqlalchemy import text

from tests.conftest import TEST_PASSWORD

WRONG = "Wr0ng-Secret-Typed-On-Login"
RESET = "Brand-New-Reset-Secret-1"
IMPERSONATION_WRONG = "Not-My-Staff-Secret-2"
SIGNUP = "Signup-Secret-Password-3"
CHANGED = "Changed-Portal-Secret-4"


def test_no_password_in_audit_events(client, db, make_staff, make_customer, auth, smtp_server):
    staff = make_staff("operator")
    customer = make_customer()
    auth.login(customer.email, WRONG)
    auth.login(staff.email, WRONG)
    auth.login("nobody@example.test", WRONG)

    client.post("/forgot-password", data={"email": customer.email})
    path = re.search(r"(/reset-password/\S+)", smtp_server.messages[0].get_content()).group(1)
    client.post(path, data={"password": RESET, "confirm": RESET})
    auth.login(customer.email, RESET)
    auth.logout()

    auth.login(staff.email)
    client.post(f"/customers/{customer.id}/impersonate", data={"password": IMPERSONATION_WRONG})
    client.post(f"/customers/{customer.id}/impersonate", data={"password": TEST_PASSWORD})
    client.post("/stop-impersonating")
    auth.logout()

    client.post("/signup", data={"first_name": "New", "last_name": "One", "email": "new@example.test",
                                 "password": SIGNUP, "confirm": SIGNUP})
    client.post("/portal/password", data={"current": SIGNUP, "password": CHANGED, "confirm": CHANGED})

    rows = db.session.execute(text("SELECT * FROM audit_events")).all()
    actions = {row._mapping["action"] for row in rows}
    # The flow really happened (so the check below looked at something).
    assert {"login_failed", "password_reset", "impersonation_failed", "impersonation_started",
            "impersonation_ended", "customer_created", "password_changed"} <= actions, actions
    dump = "\n".join(" | ".join(str(v) for v in row) for row in rows)
    for secret in (WRONG, RESET, IMPERSONATION_WRONG, SIGNUP, CHANGED, TEST_PASSWORD, path.rsplit("/", 1)[1]):
        assert secret not in dump
