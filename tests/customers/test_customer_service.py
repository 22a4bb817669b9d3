"""services.customers: creation, mailbox numbers, hooks, validation."""
from __future__ import annotations

import threading

import pytest

from spheremail.models import AuditEvent, Customer, MailboxNumberChange
from spheremail.services import hooks
from spheremail.services import customers as service
from spheremail.services.customers import CustomerError


def create(**kw):
    values = dict(first_name="Ada", last_name="Lovelace", email="ada@example.test")
    values.update(kw)
    return service.create_customer(**values)


def actions(db):
    return [e.action for e in db.session.execute(db.select(AuditEvent).order_by(AuditEvent.id)).scalars()]


def test_first_customer_gets_101_then_max_plus_one(db, operator):
    first = create(actor=operator)
    db.session.commit()
    assert first.mailbox_number == 101
    assert first.user.role == "customer" and first.user.password_hash is None
    create(email="b@example.test", mailbox_number=500)
    third = create(email="c@example.test")
    db.session.commit()
    assert third.mailbox_number == 501
    assert service.next_free_mailbox_number() == 502
    history = db.session.execute(db.select(MailboxNumberChange).filter_by(customer_id=first.id)).scalars().all()
    assert [(h.old_number, h.new_number, h.changed_by_id) for h in history] == [(None, 101, operator.id)]
    assert "customer_created" in actions(db)


def test_fields_are_stripped_and_unicode_kept(db):
    c = create(first_name="  Zoë ", last_name=" Ångström-Núñez ", email="  ZOE@Example.TEST ",
               company="  ", phone=" +31 20 123 ")
    db.session.commit()
    assert (c.first_name, c.last_name, c.email, c.company, c.phone) == (
        "Zoë", "Ångström-Núñez", "zoe@example.test", None, "+31 20 123")


def test_email_is_unique_ignoring_case_and_names_the_holder(db, make_customer):
    make_customer("Grace", "Hopper", email="grace@example.test", mailbox_number=104)
    with pytest.raises(CustomerError) as exc:
        create(email="GRACE@example.TEST")
    assert "Grace Hopper" in str(exc.value) and "104" in str(exc.value)
    assert exc.value.field == "email"


def test_email_of_a_staff_account_is_refused(db, operator):
    with pytest.raises(CustomerError, match="staff account"):
        create(email=operator.email.upper())


@pytest.mark.parametrize("kw, field", [
    ({"first_name": ""}, "first_name"),
    ({"first_name": "   "}, "first_name"),
    ({"last_name": "x" * 101}, "last_name"),
    ({"company": "c" * 201}, "company"),
    ({"phone": "1" * 51}, "phone"),
    ({"first_name": "Ada\x00"}, "first_name"),
    ({"last_name": "Love\nlace"}, "last_name"),
    ({"first_name": 42}, "first_name"),
    ({"email": ""}, "email"),
    ({"email": "not-an-email"}, "email"),
    ({"email": "a b@example.test"}, "email"),
    ({"email": "a@" + "x" * 250 + ".test"}, "email"),
    ({"mailbox_number": 0}, "mailbox_number"),
    ({"mailbox_number": -5}, "mailbox_number"),
    ({"mailbox_number": 10_000_000}, "mailbox_number"),
    ({"mailbox_number": "12a"}, "mailbox_number"),
    ({"mailbox_number": True}, "mailbox_number"),
    ({"password": "short"}, "password"),
])
def test_bad_input_is_refused_and_nothing_saved(db, kw, field):
    with pytest.raises(CustomerError) as exc:
        create(**kw)
    assert exc.value.field == field
    db.session.rollback()
    assert db.session.execute(db.select(db.func.count(Customer.id))).scalar() == 0


def test_explicit_taken_number_names_the_holder(db, make_customer):
    make_customer("Grace", "Hopper", mailbox_number=104)
    with pytest.raises(CustomerError, match=r"Mailbox 104 belongs to Grace Hopper \(active\)"):
        create(mailbox_number=104)


def test_numbers_are_unique_under_concurrent_creation(app, db):
    """Several sessions at once (threads with their own connection) never share a number."""
    db.session.commit()
    errors: list[BaseException] = []

    def worker(n):
        try:
            with app.app_context():
                for i in range(5):
                    service.create_customer("T", f"{n}-{i}", f"t{n}-{i}@example.test")
                    db.session.commit()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    numbers = db.session.execute(db.select(Customer.mailbox_number)).scalars().all()
    assert sorted(numbers) == list(range(101, 121))


# --- hooks ----------------------------------------------------------------------------------

@pytest.fixture
def received():
    got = []

    def subscriber(customer, **kw):
        got.append(customer.email)  # reads the database: the session is usable here

    hooks.subscribe("customer_created", subscriber)
    yield got
    hooks.unsubscribe("customer_created", subscriber)


def test_customer_created_is_published_after_commit_only(db, received):
    create()
    db.session.flush()
    assert received == []
    db.session.commit()
    assert received == ["ada@example.test"]
    db.session.commit()  # a later commit does not publish it again
    assert received == ["ada@example.test"]


def test_nothing_is_published_when_rolled_back(db, received):
    create()
    db.session.rollback()
    db.session.commit()
    assert received == []


def test_a_failing_subscriber_breaks_nothing(db, received, caplog):
    def broken(**kw):
        raise RuntimeError("boom")

    hooks.subscribe("customer_created", broken)
    try:
        create()
        db.session.commit()
    finally:
        hooks.unsubscribe("customer_created", broken)
    assert received == ["ada@example.test"]
    assert "boom" in caplog.text
    assert db.session.execute(db.select(db.func.count(Customer.id))).scalar() == 1


# --- mailbox number changes -----------------------------------------------------------------

def test_change_number_records_history_and_audit(db, operator, make_customer):
    c = make_customer(mailbox_number=101)
    change = service.change_mailbox_number(c, 205, actor=operator)
    db.session.commit()
    assert c.mailbox_number == 205
    assert (change.old_number, change.new_number, change.changed_by_id) == (101, 205, operator.id)
    event = db.session.execute(db.select(AuditEvent).filter_by(action="mailbox_number_changed")).scalar_one()
    assert event.actor_id == operator.id and "101" in event.summary and "205" in event.summary


def test_taken_number_names_the_holder_with_status(db, make_customer):
    make_customer("Grace", "Hopper", mailbox_number=104, status="inactive")
    c = make_customer(mailbox_number=120)
    with pytest.raises(CustomerError) as exc:
        service.change_mailbox_number(c, 104)
    assert str(exc.value).startswith("Mailbox 104 belongs to Grace Hopper (inactive).")
    assert c.mailbox_number == 120


def test_same_number_and_bad_numbers_are_refused(db, make_customer):
    c = make_customer(mailbox_number=101)
    for bad in (101, 0, 10_000_000, "abc", None):
        with pytest.raises(CustomerError):
            service.change_mailbox_number(c, bad)


def test_freeing_a_number_by_changing_an_inactive_customers_number(db, operator, make_customer):
    old = make_customer("Old", "Tenant", mailbox_number=101)
    service.deactivate_now(old, actor=operator)
    service.change_mailbox_number(old, 9001, actor=operator)
    db.session.commit()
    new = create(email="new@example.test", mailbox_number=101, actor=operator)
    db.session.commit()
    assert new.mailbox_number == 101 and old.mailbox_number == 9001
    # The old customer's history keeps the number they had.
    assert [(h.old_number, h.new_number) for h in old.number_changes] == [(101, 9001)]


# --- editing ----------------------------------------------------------------------------------

def test_update_customer_changes_email_and_audits(db, make_customer):
    make_customer(email="taken@example.test")
    c = make_customer(email="c@example.test")
    with pytest.raises(CustomerError, match="already belongs"):
        service.update_customer(c, first_name="A", last_name="B", email="TAKEN@example.test")
    db.session.rollback()
    changed = service.update_customer(c, first_name="Ada", last_name="Byron", email="New@Example.test")
    db.session.commit()
    assert set(changed) == {"last_name", "email"}
    assert c.user.email == "new@example.test"
    assert "customer_updated" in actions(db)
    assert service.update_customer(c, first_name="Ada", last_name="Byron", email="new@example.test") == []
