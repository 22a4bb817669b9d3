"""A staff account switched off loses its open sessions at once, also behind "log in as customer"."""
from flask import g

from spheremail.extensions import db


def _forget_cached_user():
    """The test shares one app context with its requests, so Flask-Login's per-context cache of
    the current user would outlive a request; a real server starts every request afresh."""
    g.pop("_login_user", None)


def test_switched_off_staff_is_logged_out_on_the_next_request(client, auth, make_staff):
    admin = make_staff("admin")
    auth.login(admin.email)
    assert client.get("/customers/").status_code == 200
    admin.is_enabled = False
    db.session.commit()
    _forget_cached_user()
    response = client.get("/customers/")
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


def test_switched_off_staff_acting_as_customer_is_logged_out(client, auth, make_staff, make_customer):
    admin = make_staff("admin")
    customer = make_customer()
    auth.login(admin.email)
    with client.session_transaction() as session:
        # The state "log in as customer" leaves behind (its own flow is tested in tests/accounts).
        session["impersonator_id"] = admin.id
        session["_user_id"] = str(customer.user.id)
    _forget_cached_user()
    assert client.get("/portal").status_code == 200
    admin.is_enabled = False
    db.session.commit()
    _forget_cached_user()
    response = client.get("/portal")
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]
    assert client.get("/portal").status_code == 302  # the session is gone, not just one request
