"""The bill run recovers: a crash before emailing still emails the invoices (once), and a
monthly bill run that did not succeed (or was missed) in its month is caught up once."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from spheremail import jobs
from spheremail.extensions import db
from spheremail.models import Invoice, JobSlot
from spheremail.services import billing

OLD = dt.datetime(2025, 1, 1)


@pytest.fixture
def two_customers(make_customer, make_plan, billing_settings):
    plan = make_plan("Standard", 2500)
    make_customer(plan_id=plan.id, created_at=OLD, email="one@example.test")
    make_customer(plan_id=plan.id, created_at=OLD, email="two@example.test")


def _emailed():
    db.session.expire_all()
    return [inv.emailed_at is not None for inv in db.session.execute(select(Invoice).order_by(Invoice.id)).scalars()]


def test_invoices_of_a_run_that_crashed_before_emailing_are_emailed_once(
        app, smtp_server, two_customers, billing_settings, monkeypatch):
    billing_settings(email_invoices=True)
    real = billing.email_invoices

    def crash(ids):
        raise RuntimeError("process killed")

    monkeypatch.setattr(billing, "email_invoices", crash)
    with pytest.raises(RuntimeError):
        billing.run_bill_run("2026-03", run_date=dt.date(2026, 3, 1))
    db.session.rollback()
    assert _emailed() == [False, False] and smtp_server.messages == []  # invoices committed, none sent

    monkeypatch.setattr(billing, "email_invoices", real)
    resumed = billing.run_bill_run("2026-03", run_date=dt.date(2026, 3, 1))
    assert (resumed.created, resumed.already_billed, resumed.emailed) == (0, 2, 2)
    assert sorted(m["To"] for m in smtp_server.messages) == ["one@example.test", "two@example.test"]
    assert _emailed() == [True, True]

    third = billing.run_bill_run("2026-03", run_date=dt.date(2026, 3, 1))
    assert (third.created, third.emailed, third.email_failed) == (0, 0, 0)
    assert len(smtp_server.messages) == 2


def test_run_with_email_off_then_on_emails_pending_unsent_only(app, smtp_server, two_customers,
                                                                billing_settings):
    billing_settings(email_invoices=False)
    billing.run_bill_run("2026-03", run_date=dt.date(2026, 3, 1))
    assert smtp_server.messages == []
    first, second = db.session.execute(select(Invoice).order_by(Invoice.id)).scalars().all()
    billing.void_invoice(first, "wrong plan")  # a void invoice is not sent
    db.session.commit()
    other = billing.run_bill_run("2026-02", run_date=dt.date(2026, 3, 1))  # another period: left alone
    assert other.created == 2

    billing_settings(email_invoices=True)
    again = billing.run_bill_run("2026-03", run_date=dt.date(2026, 3, 1))
    assert (again.created, again.emailed) == (0, 1)
    assert [m["To"] for m in smtp_server.messages] == ["two@example.test"]
    assert billing.run_bill_run("2026-03", run_date=dt.date(2026, 3, 1)).emailed == 0
    assert len(smtp_server.messages) == 1


def test_an_invoice_whose_email_failed_is_not_resent_by_a_rerun(app, two_customers, billing_settings):
    billing_settings(email_invoices=True)
    app.config.update(MAIL_SUPPRESS=False, MAIL_SERVER="127.0.0.1", MAIL_PORT=1)  # every send fails, recorded
    first = billing.run_bill_run("2026-03", run_date=dt.date(2026, 3, 1))
    assert first.email_failed == 2
    again = billing.run_bill_run("2026-03", run_date=dt.date(2026, 3, 1))
    assert (again.emailed, again.email_failed) == (0, 0)  # staff see email_error and resend by hand


# --------------------------------------------------------------------------- catch-up of the job


@pytest.fixture
def bill_job(app, monkeypatch):
    """The bill run job alone in the registry (other features' jobs are not under test here)."""
    job = jobs.load_jobs()["monthly-bill-run"]
    monkeypatch.setattr(jobs, "REGISTRY", {job.name: job})
    return job


def _slot(key, status="done"):
    db.session.add(JobSlot(job_name="monthly-bill-run", slot_key=key, status=status, owner="earlier"))
    db.session.commit()


def _periods():
    return db.session.execute(select(Invoice.period).order_by(Invoice.id)).scalars().all()


def _slots():
    db.session.expire_all()
    return {s.slot_key: s.status for s in db.session.execute(
        select(JobSlot).filter_by(job_name="monthly-bill-run")).scalars()}


def test_previous_month_missed_is_caught_up_once_before_this_month(bill_job, make_customer, make_plan,
                                                                    billing_settings):
    plan = make_plan()
    make_customer(plan_id=plan.id, created_at=OLD)
    _slot("2026-01")  # the job was in service in January, then the server was down all February
    results = jobs.tick(dt.datetime(2026, 3, 2, 8, 0))
    assert _periods() == ["2026-02", "2026-03"]  # oldest first
    assert "2026-02: 1 invoice(s) created" in results["monthly-bill-run 2026-02"]
    assert "2026-03: 1 invoice(s) created" in results["monthly-bill-run"]
    assert _slots() == {"2026-01": "done", "2026-02": "done", "2026-03": "done"}

    assert jobs.tick(dt.datetime(2026, 3, 2, 8, 1)) == {"monthly-bill-run": None}  # nothing runs again
    assert _periods() == ["2026-02", "2026-03"]


@pytest.mark.parametrize("status", ["failed", "partial", "running"])
def test_previous_month_that_did_not_finish_is_caught_up(bill_job, make_customer, make_plan,
                                                         billing_settings, status):
    plan = make_plan()
    make_customer(plan_id=plan.id, created_at=OLD)
    _slot("2026-02", status)  # "running": its owner died (no lease held)
    jobs.tick(dt.datetime(2026, 3, 1, 0, 5))
    assert _periods() == ["2026-02", "2026-03"]
    assert _slots() == {"2026-02": "done", "2026-03": "done"}
    jobs.tick(dt.datetime(2026, 3, 1, 0, 6))
    assert _periods() == ["2026-02", "2026-03"]


def test_previous_month_done_is_not_rerun(bill_job, make_customer, make_plan, billing_settings):
    plan = make_plan()
    make_customer(plan_id=plan.id, created_at=OLD)
    _slot("2026-01")
    _slot("2026-02")  # done (say, before this customer's plan mattered): not repeated
    results = jobs.tick(dt.datetime(2026, 3, 1, 0, 5))
    assert list(results) == ["monthly-bill-run"]
    assert _periods() == ["2026-03"]


def test_a_fresh_install_does_not_bill_last_month(bill_job, make_customer, make_plan, billing_settings):
    plan = make_plan()
    make_customer(plan_id=plan.id, created_at=OLD)
    jobs.tick(dt.datetime(2026, 3, 1, 0, 5))  # no slot ever ran: the job was not in service in February
    assert _periods() == ["2026-03"]
    assert _slots() == {"2026-03": "done"}


def test_catch_up_goes_one_month_back_only(bill_job, make_customer, make_plan, billing_settings):
    plan = make_plan()
    make_customer(plan_id=plan.id, created_at=OLD)
    _slot("2025-10")  # down since November: only February (last month) is caught up, not the history
    jobs.tick(dt.datetime(2026, 3, 1, 0, 5))
    assert _periods() == ["2026-02", "2026-03"]
    assert bill_job.catch_up_slots(dt.datetime(2026, 1, 31, 23, 0)) == ["2025-12"]
