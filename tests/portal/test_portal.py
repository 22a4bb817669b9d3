"""The portal: home, profile, password, additional recipients (own only, no status changes)."""
import pytest
from flask_sqlalchemy.record_queries import get_recorded_queries

from spheremail.models import AuditEvent, Recipient, Setting, User
from tests.conftest import TEST_PASSWORD


@pytest.fixture
def customer(make_customer, auth):
    c = make_customer(first_name="Grace", last_name="Hopper", company="Navy")
    auth.login(c.email)
    return c


def test_home_shows_number_address_and_recipients(client, db, customer):
    from spheremail.services.recipients import add_recipient

    add_recipient(customer, "Alan", "Turing", company="Bletchley")
    db.session.commit()
    response = client.get("/portal")
    assert response.status_code == 200
    text = response.data.decode()
    assert f"Mailbox {customer.mailbox_number}" in text
    assert "Grace Hopper" in text and "Navy" in text
    assert "Alan Turing" in text and "Bletchley" in text
    # Portal nav is there (and only links that exist).
    assert 'href="/portal/profile"' in text and 'href="/portal/password"' in text


def test_home_query_count_does_not_grow_with_recipients(client, db, customer):
    from spheremail.services.recipients import add_recipient

    def count():
        before = len(get_recorded_queries())
        assert client.get("/portal").status_code == 200
        return len(get_recorded_queries()) - before

    add_recipient(customer, "One", "Person")
    db.session.commit()
    few = count()
    for i in range(20):
        add_recipient(customer, f"P{i}", "Person")
    db.session.commit()
    assert count() == few


def test_profile_edit(client, db, customer):
    page = client.get("/portal/profile")
    assert b'value="Grace"' in page.data
    response = client.post("/portal/profile", data={"first_name": "Grace B.", "last_name": "Hopper", "company": "",
                                                    "phone": "+1 555", "email": "New@Example.test"})
    assert response.status_code == 303
    db.session.expire_all()
    assert customer.first_name == "Grace B." and customer.company is None and customer.phone == "+1 555"
    assert customer.user.email == "new@example.test"
    event = db.session.execute(db.select(AuditEvent).filter_by(action="customer_updated")).scalar_one()
    assert event.actor_id == customer.user.id


def test_profile_email_must_be_unique_ignoring_case(client, db, customer, make_customer):
    other = make_customer(first_name="Other", last_name="Person", email="other@example.test")
    response = client.post("/portal/profile", data={"first_name": "Grace", "last_name": "Hopper", "company": "Navy",
                                                    "phone": "", "email": "OTHER@example.test"})
    assert response.status_code == 200
    assert b"Another account already uses this email address" in response.data
    assert b"Other Person" not in response.data
    db.session.expire_all()
    assert customer.user.email != "other@example.test"


@pytest.mark.parametrize("change, message", [
    ({"first_name": ""}, b"Enter a first name"),
    ({"last_name": "<b>x</b>"}, b"cannot contain"),
    ({"phone": "9" * 51}, b"at most 50"),
    ({"email": "nope"}, b"Enter a valid email"),
])
def test_profile_bad_input_changes_nothing(client, db, customer, change, message):
    data = {"first_name": "Changed", "last_name": "Hopper", "company": "Navy", "phone": "", "email": customer.email}
    response = client.post("/portal/profile", data={**data, **change})
    assert response.status_code == 200 and message in response.data
    db.session.expire_all()
    assert customer.first_name == "Grace"


def test_password_change_requires_current_password(client, db, customer, auth):
    wrong = client.post("/portal/password", data={"current": "not it at all", "password": "new password 1",
                                                  "confirm": "new password 1"})
    assert wrong.status_code == 200 and b"current password is not right" in wrong.data
    mismatch = client.post("/portal/password", data={"current": TEST_PASSWORD, "password": "new password 1",
                                                     "confirm": "new password 2"})
    assert b"not the same" in mismatch.data
    short = client.post("/portal/password", data={"current": TEST_PASSWORD, "password": "short", "confirm": "short"})
    assert b"at least 8" in short.data
    db.session.expire_all()
    assert db.session.get(User, customer.user.id).check_password(TEST_PASSWORD)
    ok = client.post("/portal/password", data={"current": TEST_PASSWORD, "password": "new password 1",
                                               "confirm": "new password 1"})
    assert ok.status_code == 303
    auth.logout()
    assert auth.login(customer.email, "new password 1").status_code == 302


def test_add_recipient_gets_status_from_setting_and_ignores_posted_status(client, db, customer):
    Setting.put("new_recipient_status", "free")
    db.session.commit()
    response = client.post("/portal/recipients/new", data={"first_name": "Alan", "last_name": "Turing",
                                                           "company": "", "status": "inactive"})
    assert response.status_code == 303
    recipient = db.session.execute(db.select(Recipient)).scalar_one()
    assert recipient.status == "free" and recipient.customer_id == customer.id and recipient.company is None
    Setting.put("new_recipient_status", "paid")
    db.session.commit()
    client.post("/portal/recipients/new", data={"first_name": "Kurt", "last_name": "Gödel", "status": "free"})
    statuses = db.session.execute(db.select(Recipient.status).order_by(Recipient.id)).scalars().all()
    assert statuses == ["free", "paid"]


@pytest.mark.parametrize("data, message", [
    ({"first_name": "", "last_name": "X"}, b"Enter a first name"),
    ({"first_name": "<script>", "last_name": "X"}, b"cannot contain"),
    ({"first_name": "A", "last_name": "B" * 101}, b"at most 100"),
])
def test_add_recipient_bad_input(client, db, customer, data, message):
    response = client.post("/portal/recipients/new", data=data)
    assert response.status_code == 200 and message in response.data
    assert db.session.execute(db.select(db.func.count(Recipient.id))).scalar_one() == 0


def test_edit_own_recipient_but_never_its_status(client, db, customer):
    from spheremail.services.recipients import add_recipient

    recipient = add_recipient(customer, "Alan", "Turing", status="inactive")
    db.session.commit()
    assert b'value="Alan"' in client.get(f"/portal/recipients/{recipient.id}/edit").data
    response = client.post(f"/portal/recipients/{recipient.id}/edit",
                           data={"first_name": "Alan M.", "last_name": "Turing", "company": "", "status": "paid"})
    assert response.status_code == 303
    db.session.expire_all()
    assert recipient.first_name == "Alan M." and recipient.status == "inactive"


def test_cannot_touch_another_customers_recipient(client, db, customer, make_customer):
    from spheremail.services.recipients import add_recipient

    other = make_customer(first_name="Other")
    theirs = add_recipient(other, "Their", "Person")
    db.session.commit()
    assert client.get(f"/portal/recipients/{theirs.id}/edit").status_code == 404
    response = client.post(f"/portal/recipients/{theirs.id}/edit", data={"first_name": "Hacked", "last_name": "X"})
    assert response.status_code == 404
    assert client.get("/portal/recipients/999999/edit").status_code == 404
    db.session.expire_all()
    assert theirs.first_name == "Their"


def test_staff_acting_as_customer_cannot_change_the_password_and_is_the_audited_actor(
        client, db, make_staff, make_customer, auth):
    staff = make_staff("operator")
    c = make_customer()
    auth.login(staff.email)
    client.post(f"/customers/{c.id}/impersonate", data={"password": TEST_PASSWORD})
    response = client.post("/portal/password", data={"current": TEST_PASSWORD, "password": "new password 1",
                                                     "confirm": "new password 1"})
    assert b"cannot change the customer" in response.data
    db.session.expire_all()
    assert db.session.get(User, c.user.id).check_password(TEST_PASSWORD)
    client.post("/portal/recipients/new", data={"first_name": "Added", "last_name": "ByStaff"})
    event = db.session.execute(db.select(AuditEvent).filter_by(action="recipient_added")).scalar_one()
    assert event.actor_id == staff.id


def test_inactive_customer_session_is_refused(client, db, customer):
    customer.status = "inactive"
    db.session.commit()
    assert client.get("/portal").status_code == 403
