"""Two bill runs at once (separate app instances, SQLite or PostgreSQL), the job and the CLI."""
from __future__ import annotations

import datetime as dt
import threading

from sqlalchemy import select

from spheremail.extensions import db
from spheremail.models import Invoice, OneOffFee
from tests.conftest import make_test_app

OLD = dt.datetime(2025, 1, 1)


def _seed(make_customer, make_plan, add_fee, n=150):
    plan = make_plan("Standard", 2500)
    for i in range(n):
        c = make_customer(plan_id=plan.id, created_at=OLD)
        if i % 5 == 0:
            add_fee(c, 100 + i)


def test_two_app_instances_bill_the_same_period_at_once(app, make_customer, make_plan, add_fee, billing_settings):
    _seed(make_customer, make_plan, add_fee)
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    results, errors = [], []
    barrier = threading.Barrier(2)

    def worker():
        other = make_test_app(url)
        try:
            with other.app_context():
                from spheremail.services.billing import run_bill_run

                barrier.wait()
                # small batches so the two runs interleave batch by batch
                res = run_bill_run("2026-03", run_date=dt.date(2026, 3, 1), batch_size=5)
                results.append((res.created, res.retries))
                db.session.remove()
                db.engine.dispose()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    print("created, retries per run:", results)
    assert sum(created for created, _ in results) == 150
    # The counter row lock serialises the batches: no run ever lost a race and redid a batch.
    assert [retries for _, retries in results] == [0, 0]
    db.session.expire_all()
    invoices = db.session.execute(select(Invoice).order_by(Invoice.number)).scalars().all()
    assert len(invoices) == 150
    assert len({inv.customer_id for inv in invoices}) == 150
    assert [inv.number for inv in invoices] == [f"INV-2026-{n:05d}" for n in range(1, 151)]
    fees = db.session.execute(select(OneOffFee)).scalars().all()
    assert all(f.invoice_id is not None for f in fees)
    assert sum(len(inv.lines) for inv in invoices) == 150 + len(fees)


def test_a_rolled_back_batch_leaves_no_gap(app, make_customer, make_plan, billing_settings, monkeypatch):
    """A batch that fails after taking numbers rolls its numbers back with it."""
    import spheremail.services.billing as billing

    plan = make_plan()
    for _ in range(4):
        make_customer(plan_id=plan.id, created_at=OLD)
    real = billing._bill_batch
    calls = {"n": 0}

    def flaky(*a, **kw):
        out = real(*a, **kw)
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("crash after numbering")
        return out

    monkeypatch.setattr(billing, "_bill_batch", flaky)
    try:
        billing.run_bill_run("2026-03", run_date=dt.date(2026, 3, 1), batch_size=2)
    except RuntimeError:
        db.session.rollback()
    monkeypatch.setattr(billing, "_bill_batch", real)
    billing.run_bill_run("2026-03", run_date=dt.date(2026, 3, 1), batch_size=2)
    numbers = db.session.execute(select(Invoice.number).order_by(Invoice.number)).scalars().all()
    assert numbers == [f"INV-2026-{n:05d}" for n in range(1, 5)]


def test_job_runs_the_bill_run_once_per_month(app, make_customer, make_plan, billing_settings):
    from spheremail.jobs import load_jobs, run_job, tick

    plan = make_plan()
    make_customer(plan_id=plan.id, created_at=OLD)
    job = load_jobs()["monthly-bill-run"]
    assert job.current_slot(dt.datetime(2026, 3, 1, 0, 5)) == "2026-03"
    summary = run_job(job, "2026-03")
    assert "1 invoice(s) created" in summary
    assert run_job(job, "2026-03") is None  # slot done
    tick(dt.datetime(2026, 3, 1, 0, 6))  # a second tick in March does nothing
    assert db.session.execute(select(db.func.count(Invoice.id))).scalar() == 1


def test_cli_billing_run(app, make_customer, make_plan, billing_settings):
    plan = make_plan()
    make_customer(plan_id=plan.id, created_at=OLD)
    runner = app.test_cli_runner()
    first = runner.invoke(args=["billing", "run", "--period", "2026-03"])
    assert first.exit_code == 0, first.output
    assert "1 invoice(s) created" in first.output
    again = runner.invoke(args=["billing", "run", "--period", "2026-03"])
    assert "0 invoice(s) created, 1 already billed" in again.output
    bad = runner.invoke(args=["billing", "run", "--period", "2026-3x"])
    assert bad.exit_code != 0 and "YYYY-MM" in bad.output
    assert db.session.execute(select(db.func.count(Invoice.id))).scalar() == 1
