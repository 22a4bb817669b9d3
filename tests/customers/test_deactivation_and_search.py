"""Deactivation (now, end of billing period, chosen date), withdraw, reactivate, the daily job; search."""
from __future__ import annotations

import datetime as dt

import pytest

from spheremail.jobs import REGISTRY, run_job
from spheremail.models import AuditEvent, Customer, JobSlot
from spheremail.services import customers as service
from spheremail.services.customers import CustomerError

TODAY = dt.date(2026, 3, 17)


def audit_actions(db):
    return [e.action for e in db.session.execute(db.select(AuditEvent).order_by(AuditEvent.id)).scalars()]


def test_deactivate_now(db, operator, make_customer):
    c = make_customer()
    service.deactivate_now(c, actor=operator)
    db.session.commit()
    assert c.status == "inactive" and c.deactivated_at is not None and not c.is_active
    assert "customer_deactivated" in audit_actions(db)
    with pytest.raises(CustomerError, match="already inactive"):
        service.deactivate_now(c)


@pytest.mark.parametrize("today, expected", [
    (dt.date(2026, 3, 17), dt.date(2026, 4, 1)),
    (dt.date(2026, 3, 1), dt.date(2026, 4, 1)),
    (dt.date(2026, 12, 31), dt.date(2027, 1, 1)),
    (dt.date(2028, 2, 29), dt.date(2028, 3, 1)),
])
def test_end_of_billing_period_is_first_of_next_month(today, expected):
    assert service.end_of_billing_period(today) == expected


def test_schedule_end_of_period_then_withdraw(db, operator, make_customer):
    c = make_customer()
    when = service.schedule_deactivation(c, "end_of_period", actor=operator, today=TODAY)
    db.session.commit()
    assert when == dt.date(2026, 4, 1)
    assert (c.deactivate_on, c.deactivate_reason, c.status) == (when, "end_of_period", "active")
    service.withdraw_scheduled_deactivation(c, actor=operator)
    db.session.commit()
    assert c.deactivate_on is None and c.deactivate_reason is None
    assert audit_actions(db)[-2:] == ["deactivation_scheduled", "deactivation_withdrawn"]
    with pytest.raises(CustomerError, match="no scheduled"):
        service.withdraw_scheduled_deactivation(c)


def test_schedule_on_a_date(db, make_customer):
    c = make_customer()
    with pytest.raises(CustomerError, match="past") as exc:
        service.schedule_deactivation(c, "date", TODAY - dt.timedelta(days=1), today=TODAY)
    assert exc.value.field == "on_date"
    with pytest.raises(CustomerError, match="Choose the date"):
        service.schedule_deactivation(c, "date", None, today=TODAY)
    with pytest.raises(CustomerError):
        service.schedule_deactivation(c, "tomorrow", today=TODAY)
    when = service.schedule_deactivation(c, "date", TODAY + dt.timedelta(days=30), today=TODAY)
    assert when == dt.date(2026, 4, 16) and c.deactivate_reason == "date"


def test_a_date_of_today_means_now(db, make_customer):
    c = make_customer()
    assert service.schedule_deactivation(c, "date", TODAY, today=TODAY) is None
    assert c.status == "inactive" and c.deactivate_on is None


def test_mode_now_and_inactive_customers(db, make_customer):
    c = make_customer()
    assert service.schedule_deactivation(c, "now") is None
    assert c.status == "inactive"
    with pytest.raises(CustomerError, match="already inactive"):
        service.schedule_deactivation(c, "end_of_period")


def test_reactivate(db, operator, make_customer):
    c = make_customer(status="inactive")
    service.reactivate(c, actor=operator)
    db.session.commit()
    assert c.is_active and "customer_reactivated" in audit_actions(db)
    with pytest.raises(CustomerError, match="already active"):
        service.reactivate(c)


def test_apply_due_deactivations(db, make_customer):
    due = make_customer(deactivate_on=TODAY, deactivate_reason="date")
    overdue = make_customer(deactivate_on=TODAY - dt.timedelta(days=3), deactivate_reason="date")
    later = make_customer(deactivate_on=TODAY + dt.timedelta(days=1), deactivate_reason="date")
    untouched = make_customer()
    done = service.apply_due_deactivations(TODAY)
    db.session.commit()
    assert {c.id for c in done} == {due.id, overdue.id}
    assert [c.status for c in (due, overdue, later, untouched)] == ["inactive", "inactive", "active", "active"]
    assert due.deactivate_on is None
    assert service.apply_due_deactivations(TODAY) == []


def test_the_job_applies_a_scheduled_cancellation_once_per_day(app, db, make_customer):
    """Through the real job registry: due today (UTC), applied by 'apply-cancellations' once."""
    from spheremail.models.base import today

    c = make_customer()
    service.schedule_deactivation(c, "date", today() + dt.timedelta(days=1))
    db.session.commit()
    # The day before: nothing to do.
    job = REGISTRY["apply-cancellations"]
    assert run_job(job, "before") == "0 customer(s) deactivated"
    # Its day comes (the job uses today's date; we move the schedule to today).
    c.deactivate_on = today()
    db.session.commit()
    slot = today().isoformat()
    assert run_job(job, slot) == "1 customer(s) deactivated"
    db.session.expire_all()
    assert db.session.get(Customer, c.id).status == "inactive"
    assert run_job(job, slot) is None  # the slot is done: not run again
    assert db.session.execute(db.select(JobSlot).filter_by(job_name=job.name, slot_key=slot)).scalar_one().status == "done"
    event = db.session.execute(db.select(AuditEvent).filter_by(action="customer_deactivated")).scalar_one()
    assert event.actor_id is None and "as scheduled" in event.summary


def test_an_inactive_customer_cannot_log_in(client, auth, make_customer, db):
    c = make_customer(email="gone@example.test")
    service.deactivate_now(c)
    db.session.commit()
    response = auth.login("gone@example.test")
    assert response.status_code == 200
    assert b"inactive" in response.data


# --- search -------------------------------------------------------------------------------------

@pytest.fixture
def people(make_customer):
    return {
        "grace": make_customer("Grace", "Hopper", email="grace@navy.test", company="Compiler Works", mailbox_number=104),
        "alan": make_customer("Alan", "Turing", email="alan@bletchley.test", company="Enigma Ltd", mailbox_number=1042),
        "zoe": make_customer("Zoë", "Ångström", email="zoe@nordlys.test", company="100% Design", mailbox_number=230),
        "ada": make_customer("Ada", "Lovelace", email="ada@engines.test", mailbox_number=17, status="inactive"),
    }


def names(rows):
    return [c.first_name for c in rows]


@pytest.mark.parametrize("q, status, expected", [
    ("", "active", ["Grace", "Zoë", "Alan"]),
    ("", "all", ["Ada", "Grace", "Zoë", "Alan"]),
    ("", "inactive", ["Ada"]),
    ("hopper", "active", ["Grace"]),
    ("HOPPER", "active", ["Grace"]),
    ("grace hop", "active", ["Grace"]),
    ("grace turing", "active", []),
    ("bletchley", "active", ["Alan"]),
    ("enigma", "active", ["Alan"]),
    ("Ångström", "active", ["Zoë"]),
    ("104", "active", ["Grace", "Alan"]),
    ("#104", "active", ["Grace", "Alan"]),
    ("1042", "active", ["Alan"]),
    ("23", "active", ["Zoë"]),
    ("17", "active", []),
    ("17", "all", ["Ada"]),
    ("99999999", "all", []),
    ("%", "all", ["Zoë"]),
    ("_", "all", []),
    ("lovelace", "inactive", ["Ada"]),
])
def test_search(db, people, q, status, expected):
    rows, total = service.search_customers(q, status)
    assert names(rows) == expected
    assert total == len(expected)


def test_search_pages_in_number_order(db, make_customer):
    for n in range(1, 8):
        make_customer("P", f"Person{n}", mailbox_number=300 + n)
    rows, total = service.search_customers("person", "active", page=2, per_page=3)
    assert total == 7 and [c.mailbox_number for c in rows] == [304, 305, 306]
    rows, total = service.search_customers("person", "active", page=9, per_page=3)
    assert rows == [] and total == 7
