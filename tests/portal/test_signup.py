"""Portal sign-up: next free mailbox number, email unique ignoring case, logged in after."""
import pytest

from spheremail.models import AuditEvent, Customer, User

GOOD = {"first_name": "Ada", "last_name": "Lovelace", "company": "", "email": "Ada@Example.test",
        "password": "a long password", "confirm": "a long password"}


def _count(db, model):
    return db.session.execute(db.select(db.func.count()).select_from(model)).scalar_one()


def test_signup_creates_customer_with_next_number_and_logs_in(client, db, make_customer):
    make_customer(mailbox_number=150)
    response = client.post("/signup", data=GOOD)
    assert response.status_code == 303
    assert response.headers["Location"] == "/portal"
    customer = db.session.execute(db.select(Customer).join(User).filter(User.email == "ada@example.test")).scalar_one()
    assert customer.signed_up_via == "portal"
    assert customer.mailbox_number != 150 and customer.mailbox_number > 0
    assert customer.company is None
    home = client.get("/portal")
    assert home.status_code == 200
    assert f"Mailbox {customer.mailbox_number}".encode() in home.data
    assert db.session.execute(db.select(AuditEvent).filter_by(action="customer_created")).scalar_one()


def test_signup_page_and_logged_in_users_are_sent_home(client, make_customer, auth):
    assert b"Rent a mailbox" in client.get("/signup").data
    auth.login(make_customer().email)
    assert client.get("/signup").status_code == 302


def test_signup_refuses_an_email_taken_in_another_case(client, db, make_customer, make_staff):
    make_customer(first_name="Secret", last_name="Holder", email="taken@example.test")
    response = client.post("/signup", data={**GOOD, "email": "TAKEN@example.TEST"})
    assert response.status_code == 200
    assert b"An account with this email already exists" in response.data
    assert b"Secret" not in response.data  # says nothing about whose account it is
    staff = make_staff("admin")
    response = client.post("/signup", data={**GOOD, "email": staff.email.upper()})
    assert b"already exists" in response.data
    assert _count(db, Customer) == 1


@pytest.mark.parametrize("change, message", [
    ({"first_name": ""}, b"Enter a first name"),
    ({"last_name": "   "}, b"Enter a last name"),
    ({"first_name": "x" * 101}, b"at most 100"),
    ({"company": "c" * 201}, b"at most 200"),
    ({"first_name": "<script>alert(1)</script>"}, b"cannot contain &lt; or &gt;"),
    ({"email": "not-an-email"}, b"Enter a valid email address"),
    ({"email": ""}, b"Enter your email address"),
    ({"email": "a" * 250 + "@x.test"}, b"at most 254"),
    ({"password": "short", "confirm": "short"}, b"at least 8"),
    ({"confirm": "something else"}, b"not the same"),
    ({"password": "p" * 201, "confirm": "p" * 201}, b"at most 200"),
])
def test_signup_bad_input_is_refused_with_a_message(client, db, change, message):
    response = client.post("/signup", data={**GOOD, **change})
    assert response.status_code == 200
    assert message in response.data, response.data.decode()[:3000]
    assert b"<script>alert" not in response.data
    assert _count(db, Customer) == 0 and _count(db, User) == 0


def test_signup_with_nothing_posted(client, db):
    response = client.post("/signup", data={})
    assert response.status_code == 200
    assert b"Some fields need your attention" in response.data
    assert _count(db, User) == 0
