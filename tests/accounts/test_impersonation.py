"""Log in as a customer: own password again, banner, audited start and end, no staff pages meanwhile."""
import pytest

from spheremail.models import AuditEvent
from tests.conftest import TEST_PASSWORD


def _events(db, action):
    return db.session.execute(db.select(AuditEvent).filter_by(action=action)).scalars().all()


@pytest.mark.parametrize("role", ["operator", "admin"])
def test_staff_logs_in_as_customer_and_back(client, db, make_staff, make_customer, auth, role):
    staff = make_staff(role)
    customer = make_customer(first_name="Grace", last_name="Hopper")
    auth.login(staff.email)

    form = client.get(f"/customers/{customer.id}/impersonate")
    assert form.status_code == 200
    assert b"Your own password" in form.data

    response = client.post(f"/customers/{customer.id}/impersonate", data={"password": TEST_PASSWORD})
    assert response.status_code == 303
    assert response.headers["Location"] == "/portal"
    with client.session_transaction() as sess:
        assert sess["impersonator_id"] == staff.id

    home = client.get("/portal")
    assert home.status_code == 200
    assert b"You are acting as" in home.data and customer.email.encode() in home.data
    assert b"Back to staff" in home.data
    # Staff pages are out of reach while acting as the customer.
    assert client.get("/staff/audit-log").status_code == 403
    assert client.get(f"/customers/{customer.id}/impersonate").status_code == 403

    started = _events(db, "impersonation_started")
    assert len(started) == 1
    assert started[0].actor_id == staff.id and started[0].subject_id == customer.id
    assert staff.email in started[0].summary and customer.email in started[0].summary

    back = client.post("/stop-impersonating")
    assert back.status_code == 302
    with client.session_transaction() as sess:
        assert "impersonator_id" not in sess
    ended = _events(db, "impersonation_ended")
    assert len(ended) == 1 and ended[0].actor_id == staff.id and ended[0].subject_id == customer.id
    # Staff again: the portal refuses them, the banner is gone.
    assert client.get("/portal").status_code == 403
    if role == "operator":
        assert client.get("/staff/audit-log").status_code == 200


def test_htmx_impersonation_answers_with_hx_redirect(client, make_staff, make_customer, auth):
    auth.login(make_staff("operator").email)
    customer = make_customer()
    modal = client.get(f"/customers/{customer.id}/impersonate", headers={"HX-Request": "true"})
    assert b"<dialog" in modal.data and b"<html" not in modal.data
    response = client.post(f"/customers/{customer.id}/impersonate", data={"password": TEST_PASSWORD},
                           headers={"HX-Request": "true"})
    assert response.status_code == 204
    assert response.headers["HX-Redirect"] == "/portal"


def test_wrong_password_is_refused_and_audited(client, db, make_staff, make_customer, auth):
    staff = make_staff("admin")
    customer = make_customer()
    auth.login(staff.email)
    # The customer's password is not the staff member's own password.
    response = client.post(f"/customers/{customer.id}/impersonate", data={"password": "wrong but long"})
    assert response.status_code == 200
    assert b"That is not your password" in response.data
    with client.session_transaction() as sess:
        assert "impersonator_id" not in sess
    failed = _events(db, "impersonation_failed")
    assert len(failed) == 1 and failed[0].actor_id == staff.id and failed[0].subject_id == customer.id
    assert client.get("/portal").status_code == 403  # still staff
    empty = client.post(f"/customers/{customer.id}/impersonate", data={"password": ""})
    assert b"Enter your own password" in empty.data


def test_mail_admin_cannot_impersonate(client, make_staff, make_customer, auth):
    customer = make_customer()
    auth.login(make_staff("mail_admin").email)
    assert client.get(f"/customers/{customer.id}/impersonate").status_code == 403
    assert client.post(f"/customers/{customer.id}/impersonate", data={"password": TEST_PASSWORD}).status_code == 403


def test_inactive_customer_cannot_be_impersonated(client, db, make_staff, make_customer, auth):
    customer = make_customer(status="inactive")
    auth.login(make_staff("operator").email)
    response = client.post(f"/customers/{customer.id}/impersonate", data={"password": TEST_PASSWORD})
    assert response.status_code == 200
    assert b"inactive" in response.data
    with client.session_transaction() as sess:
        assert "impersonator_id" not in sess
    assert _events(db, "impersonation_started") == []


def test_stop_works_after_customer_was_deactivated_meanwhile(client, db, make_staff, make_customer, auth):
    staff = make_staff("operator")
    customer = make_customer()
    auth.login(staff.email)
    client.post(f"/customers/{customer.id}/impersonate", data={"password": TEST_PASSWORD})
    customer.status = "inactive"
    db.session.commit()
    assert client.get("/portal").status_code == 403
    client.post("/stop-impersonating")
    assert client.get("/staff/audit-log").status_code == 200


def test_stop_without_impersonation_does_nothing(client, db, make_customer, auth):
    customer = make_customer()
    auth.login(customer.email)
    response = client.post("/stop-impersonating")
    assert response.status_code == 302
    assert client.get("/portal").status_code == 200  # still the customer
    assert _events(db, "impersonation_ended") == []


def test_impersonate_hook_renders_by_role(app, make_staff, make_customer):
    from flask import render_template
    from flask_login import login_user

    active, inactive = make_customer(), make_customer(status="inactive")
    for role, customer, expected in [("operator", active, True), ("admin", active, True),
                                     ("mail_admin", active, False), ("operator", inactive, False)]:
        with app.test_request_context("/"):
            login_user(make_staff(role))
            html = render_template("customers/partials/impersonate_hook.html", customer=customer)
        assert ("Log in as customer" in html) is expected, (role, customer)
