"""The "Run the bill run" button on the billing overview, and staff links to online payments
(payment problems on the overview, the customer panel and the invoice page)."""
from __future__ import annotations

import datetime as dt

import pytest
from flask_sqlalchemy.record_queries import get_recorded_queries
from sqlalchemy import select

from spheremail.extensions import db
from spheremail.models import AuditEvent, Invoice, JobLease, JobSlot
from spheremail.models.base import today, utcnow
from spheremail.services import billing

OLD = dt.datetime(2025, 1, 1)


def count(model):
    return db.session.execute(select(db.func.count()).select_from(model)).scalar()


def bill_run_events():
    return db.session.execute(select(AuditEvent).filter_by(action="bill_run").order_by(AuditEvent.id)).scalars().all()


@pytest.fixture
def two_customers(make_customer, make_plan, billing_settings):
    plan = make_plan("Basic", 1500)
    return [make_customer(plan_id=plan.id, created_at=OLD) for _ in range(2)]


def test_overview_offers_the_bill_run_for_this_month_and_links_online_payments(client, logged_in_operator):
    page = client.get("/billing/").get_data(as_text=True)
    assert 'action="/billing/bill-run"' in page and "Run the bill run" in page
    assert f'value="{today().strftime("%Y-%m")}"' in page
    assert 'href="/payments/"' in page and "Online payments" in page


def test_bill_run_creates_then_says_nothing_new(client, logged_in_operator, two_customers):
    r = client.post("/billing/bill-run", data={"period": "2026-03"}, follow_redirects=True)
    assert r.status_code == 200
    assert "2 invoices created for 2026-03." in r.get_data(as_text=True)
    assert count(Invoice) == 2
    assert {i.period for i in db.session.execute(select(Invoice)).scalars()} == {"2026-03"}

    r = client.post("/billing/bill-run", data={"period": "2026-03"}, follow_redirects=True)
    assert "Nothing new: every active customer already has an invoice for 2026-03." in r.get_data(as_text=True)
    assert count(Invoice) == 2

    first, again = bill_run_events()
    assert "2026-03" in first.summary and "2 invoice(s) created" in first.summary
    assert "0 invoice(s) created" in again.summary and "2 already billed" in again.summary
    assert first.actor_id == logged_in_operator.id
    # The lease is released, and a run by hand does not mark the monthly job's slot done.
    assert db.session.get(JobLease, "monthly-bill-run").owner is None
    assert count(JobSlot) == 0


def test_bill_run_says_who_had_nothing_to_bill(client, logged_in_admin, two_customers, make_customer):
    make_customer(created_at=OLD)  # no plan, no recipients, no fees
    r = client.post("/billing/bill-run", data={"period": "2026-03"}, follow_redirects=True)
    text = r.get_data(as_text=True)
    assert "2 invoices created for 2026-03: 1 customer(s) have nothing to bill" in text
    r = client.post("/billing/bill-run", data={"period": "2026-03"}, follow_redirects=True)
    text = r.get_data(as_text=True)
    assert "Nothing new for 2026-03: 2 customer(s) already had one; 1 customer(s) have nothing to bill" in text


def test_bill_run_with_htmx_redirects(client, logged_in_operator, two_customers):
    r = client.post("/billing/bill-run", data={"period": "2026-03"}, headers={"HX-Request": "true"})
    assert r.status_code == 204 and r.headers["HX-Redirect"].endswith("/billing/")


@pytest.mark.parametrize("period", ["", "2026-13", "2026-00", "26-03", "2026-3", "March", "2026-03-01",
                                    "<script>alert(1)</script>", "9" * 500, "1999-12", "２０２６-０３"])
def test_bill_run_bad_period(client, logged_in_operator, two_customers, period):
    r = client.post("/billing/bill-run", data={"period": period})
    assert r.status_code == 200
    text = r.get_data(as_text=True)
    assert "Give the period as YYYY-MM" in text and 'aria-invalid="true"' in text
    assert "<script>alert(1)</script>" not in text
    assert count(Invoice) == 0 and bill_run_events() == []


def test_bill_run_missing_field(client, logged_in_operator, two_customers):
    r = client.post("/billing/bill-run", data={})
    assert r.status_code == 200 and "Give the period as YYYY-MM" in r.get_data(as_text=True)
    assert count(Invoice) == 0


def test_bill_run_refused_while_the_monthly_job_holds_the_lease(client, app, logged_in_operator, two_customers):
    db.session.add(JobLease(name="monthly-bill-run", owner="other-host:123:abcd",
                            expires_at=utcnow() + dt.timedelta(minutes=5)))
    db.session.commit()
    r = client.post("/billing/bill-run", data={"period": "2026-03"})
    assert r.status_code == 200
    assert "A bill run is already in progress" in r.get_data(as_text=True)
    assert count(Invoice) == 0 and bill_run_events() == []
    assert db.session.get(JobLease, "monthly-bill-run").owner == "other-host:123:abcd"  # not taken over
    # The CLI takes the same path and says the same.
    result = app.test_cli_runner().invoke(args=["billing", "run", "--period", "2026-03"])
    assert result.exit_code != 0 and "already in progress" in result.output
    # Once the job's lease has expired (the job finished or died), the button works.
    db.session.get(JobLease, "monthly-bill-run").expires_at = utcnow() - dt.timedelta(seconds=1)
    db.session.commit()
    r = client.post("/billing/bill-run", data={"period": "2026-03"}, follow_redirects=True)
    assert "2 invoices created" in r.get_data(as_text=True)


def test_monthly_job_still_runs_after_a_run_by_hand(client, logged_in_operator, two_customers, make_customer):
    from spheremail.jobs import load_jobs, run_job

    client.post("/billing/bill-run", data={"period": "2026-03"})
    make_customer(plan_id=two_customers[0].plan_id, created_at=OLD)  # joined after the run by hand
    summary = run_job(load_jobs()["monthly-bill-run"], "2026-03")
    assert "1 invoice(s) created, 2 already billed" in summary
    assert count(Invoice) == 3


def test_cli_run_is_audited(app, two_customers):
    result = app.test_cli_runner().invoke(args=["billing", "run", "--period", "2026-03"])
    assert result.exit_code == 0, result.output
    [event] = bill_run_events()
    assert "2026-03" in event.summary and event.actor_id is None


@pytest.mark.parametrize("role, status", [("mail_admin", 403), ("operator", 303), ("admin", 303)])
def test_bill_run_access(client, make_staff, auth, two_customers, role, status):
    auth.login(make_staff(role).email)
    assert client.post("/billing/bill-run", data={"period": "2026-03"}).status_code == status


def test_customer_and_anonymous_cannot_run_it(client, make_customer, auth, two_customers):
    assert client.post("/billing/bill-run", data={"period": "2026-03"}).status_code in (302, 401, 403)
    auth.login(make_customer().email)
    assert client.post("/billing/bill-run", data={"period": "2026-03"}).status_code == 403
    assert count(Invoice) == 0


def test_get_does_not_run_it(client, logged_in_operator, two_customers):
    assert client.get("/billing/bill-run?period=2026-03").status_code == 405
    assert count(Invoice) == 0


# ---------------------------------------------------------------- payment problems on staff pages

def _declined(invoice, n=1, status="declined"):
    from spheremail.models.payments import PaymentAttempt

    db.session.add(PaymentAttempt(invoice_id=invoice.id, kind="off_session", attempt=n,
                                  idempotency_key=f"k-{invoice.id}-{n}", status=status, amount_minor=100,
                                  currency="EUR", failure_code="card_declined",
                                  failure_message="Your card was declined."))
    db.session.commit()


def _invoices(period="2026-03"):
    billing.run_bill_run(period, run_date=dt.date(int(period[:4]), int(period[5:]), 1))
    return db.session.execute(select(Invoice).order_by(Invoice.id)).scalars().all()


def test_staff_invoice_page_shows_the_problem_and_links_the_attempts(client, logged_in_operator, two_customers):
    bad, fine = _invoices()
    _declined(bad)
    page = client.get(f"/billing/invoices/{bad.id}").get_data(as_text=True)
    assert "Online payment: declined" in page and "Your card was declined." in page
    assert f'href="/payments/invoices/{bad.id}"' in page
    page = client.get(f"/billing/invoices/{fine.id}").get_data(as_text=True)
    assert "Online payment:" not in page and f'href="/payments/invoices/{fine.id}"' in page
    # and the printable staff copy links back
    assert f'href="/billing/invoices/{bad.id}"' in client.get(f"/payments/invoices/{bad.id}").get_data(as_text=True)


def test_overview_and_customer_panel_mark_problem_invoices(client, logged_in_operator, two_customers):
    bad, fine = _invoices()
    _declined(bad)
    _declined(fine, 1)
    _declined(fine, 2, status="succeeded")  # the latest attempt went through: no problem
    page = client.get("/billing/").get_data(as_text=True)
    assert page.count("online payment declined") == 1
    assert f'<a class="badge badge-attempt-declined" href="/payments/invoices/{bad.id}">' in page
    panel = client.get(f"/billing/customers/{bad.customer_id}").get_data(as_text=True)
    assert "online payment declined" in panel
    panel = client.get(f"/billing/customers/{fine.customer_id}").get_data(as_text=True)
    assert "online payment" not in panel


def test_overview_query_count_with_payment_problems(client, logged_in_operator, make_customer, make_plan,
                                                    billing_settings):
    plan = make_plan("Basic", 1000)

    def add(n, period):
        for _ in range(n):
            make_customer(plan_id=plan.id, created_at=OLD)
        for inv in _invoices(period):
            if inv.period == period:
                _declined(inv)

    def queries():
        before = len(get_recorded_queries())
        assert client.get("/billing/").status_code == 200
        return len(get_recorded_queries()) - before

    add(2, "2026-02")
    few = queries()
    add(20, "2026-03")
    assert queries() == few
