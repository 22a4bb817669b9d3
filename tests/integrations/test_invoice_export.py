"""Invoice export, exactly once, over real HTTP against a coworking system's stand-in:
due days and February, missed slots, old invoices, 429 storms, 5xx, timeouts, crashes
between the remote create and the local close, and two processes at once."""
from __future__ import annotations

import datetime as dt
import itertools
import threading

import pytest
from flask_sqlalchemy.record_queries import get_recorded_queries

from spheremail.extensions import db
from spheremail.jobs import REGISTRY, load_jobs, run_job
from spheremail.models import IntegrationConnection, Invoice, InvoiceExport, InvoiceLine, JobSlot
from spheremail.models.base import utcnow
from spheremail.services import invoice_export
from spheremail.services.invoice_export import ExportStopped, export_pending
from spheremail.services.member_sync import start_sync

HX = {"HX-Request": "true"}
BASE = "/business-settings/integrations"
_numbers = itertools.count(1)


def make_invoice(customer, *, created_at=None, total_minor=2500, status="pending"):
    number = f"SM-2030-{next(_numbers):05d}"
    invoice = Invoice(number=number, customer_id=customer.id, status=status, currency="EUR",
                      total_minor=total_minor, issue_date=dt.date(2030, 3, 1),
                      created_at=created_at or utcnow())
    invoice.lines.append(InvoiceLine(position=0, kind="plan", description="Mailbox plan", quantity=1,
                                     unit_minor=total_minor, amount_minor=total_minor))
    db.session.add(invoice)
    db.session.commit()
    return invoice


@pytest.fixture
def connected(provider_env, make_customer):
    """A connected integration (export on) with two linked customers."""
    env = provider_env
    customers = [make_customer(first_name=f"Cus{i}", last_name="Tomer", email=f"cus{i}@example.com")
                 for i in range(2)]
    env.connect(enabled_at=utcnow() - dt.timedelta(hours=1))
    run = start_sync(env.name, background=False)
    assert run.created == 2
    return env, customers


def _wait_until(condition, limit: float = 10.0) -> None:
    """Wait for the stand-in's server thread (not a timing assertion: it fails only if it never happens)."""
    import time

    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "the stand-in never finished"
        time.sleep(0.02)


def lookup(env) -> bool:
    return env.name != "officernd"  # OfficeRnD cannot read fees back with the granted scopes


def refs(env) -> list[str]:
    return sorted(e["reference"] for e in env.remote_exports())


def export_job():
    load_jobs()
    return REGISTRY["invoice-export"]


def run_slot(now: dt.datetime):
    job = export_job()
    return run_job(job, job.current_slot(now))


# ------------------------------------------------------------------------- slots
@pytest.mark.parametrize("now, slot", [
    ("2030-03-05 00:00", "2030-03-05"),
    ("2030-03-09 23:59", "2030-03-05"),
    ("2030-03-30 08:00", "2030-03-30"),
    ("2030-03-31 08:00", "2030-03-30"),
    ("2030-04-04 08:00", "2030-03-30"),
    ("2030-02-27 08:00", "2030-02-25"),
    ("2030-02-28 08:00", "2030-02-28"),  # February's last day stands in for the 30th
    ("2030-03-01 08:00", "2030-02-28"),
    ("2028-02-29 08:00", "2028-02-29"),  # leap year
    ("2028-02-28 08:00", "2028-02-25"),
    ("2030-01-04 08:00", "2029-12-30"),
])
def test_current_slot(now, slot):
    from spheremail.jobs.integrations import current_slot

    assert current_slot(dt.datetime.fromisoformat(now)) == slot


# ------------------------------------------------------------------ the schedule
def test_exports_on_a_due_day_and_not_on_other_days(app, connected):
    env, (a, b) = connected
    first = make_invoice(a)
    assert "1 exported" in run_slot(dt.datetime(2030, 3, 5, 6))
    assert db.session.get(Invoice, first.id).status == "closed_by_export"

    second = make_invoice(b)
    assert run_slot(dt.datetime(2030, 3, 7, 6)) is None  # the 5th is done; the 7th is no slot
    assert run_slot(dt.datetime(2030, 3, 9, 23)) is None
    assert db.session.get(Invoice, second.id).status == "pending"
    assert "1 exported" in run_slot(dt.datetime(2030, 3, 10, 0, 5))
    assert db.session.get(Invoice, second.id).status == "closed_by_export"
    assert refs(env) == sorted([first.number, second.number])


def test_february_last_day_stands_in_for_the_30th(app, connected):
    env, (a, _b) = connected
    invoice = make_invoice(a)
    assert run_slot(dt.datetime(2030, 2, 27, 12)) is not None  # the 25th slot (caught up)
    invoice2 = make_invoice(a)
    assert run_slot(dt.datetime(2030, 2, 28, 9)) is not None
    assert db.session.get(Invoice, invoice2.id).status == "closed_by_export"
    assert run_slot(dt.datetime(2030, 3, 1, 9)) is None  # March 1st: still the Feb 28 slot, done
    assert JobSlot.query.filter_by(job_name="invoice-export", slot_key="2030-02-28").one().status == "done"
    assert len(refs(env)) == 2 and invoice.number in refs(env)


def test_a_missed_slot_runs_once_when_back(app, connected):
    env, (a, _b) = connected
    run_slot(dt.datetime(2030, 3, 5, 6))
    invoice = make_invoice(a)
    # Down from the 9th to the 13th: the 10th slot runs once on return.
    assert "1 exported" in run_slot(dt.datetime(2030, 3, 13, 8))
    assert run_slot(dt.datetime(2030, 3, 13, 9)) is None
    assert run_slot(dt.datetime(2030, 3, 14, 9)) is None
    assert refs(env) == [invoice.number]


def test_slots_before_the_integration_existed_do_not_run(app, connected):
    env, (a, _b) = connected
    make_invoice(a)
    conn = IntegrationConnection.get(env.name)
    day_before = conn.enabled_at - dt.timedelta(days=1)
    summary = run_slot(day_before.replace(day=min(day_before.day, 28)))
    assert summary is None or "precedes the integration" in summary or "exported" not in summary
    assert refs(env) == []


# -------------------------------------------------------------------- eligibility
def test_only_new_pending_invoices_of_connected_customers(app, connected, make_customer):
    env, (a, b) = connected
    conn = IntegrationConnection.get(env.name)
    old = make_invoice(a, created_at=conn.enabled_at - dt.timedelta(minutes=1))
    paid = make_invoice(a, status="paid")
    stranger = make_customer(email="not-connected@example.com")
    unconnected = make_invoice(stranger)
    new = make_invoice(b, total_minor=1999)

    result = export_pending(env.name)

    assert result.exported == 1 and refs(env) == [new.number]
    for invoice, status in ((old, "pending"), (paid, "paid"), (unconnected, "pending"), (new, "closed_by_export")):
        assert db.session.get(Invoice, invoice.id).status == status
    exported = env.remote_exports()[0]
    closed = db.session.get(Invoice, new.id)
    assert closed.external_provider == env.name and closed.external_reference == str(exported["id"])
    if env.name == "officernd":
        assert new.number in exported["name"] and exported["price"] == 19.99
    # Nothing more to do on a second run.
    assert export_pending(env.name).exported == 0 and len(refs(env)) == 1


def test_export_switched_off_exports_nothing(app, connected):
    env, (a, _b) = connected
    conn = IntegrationConnection.get(env.name)
    conn.invoice_export = False
    db.session.commit()
    make_invoice(a)
    assert "switched off" in export_pending(env.name).summary()
    assert refs(env) == []


def test_is_externally_billed(app, connected, make_customer):
    from spheremail.services.billing import is_externally_billed

    env, (a, _b) = connected
    other = make_customer(email="plain@example.com")
    assert is_externally_billed(a) and not is_externally_billed(other)
    conn = IntegrationConnection.get(env.name)
    conn.enabled = False
    db.session.commit()
    assert not is_externally_billed(a)


# ------------------------------------------------------------- rate limits, errors
def test_429s_are_waited_out_per_retry_after(app, connected):
    env, (a, _b) = connected
    invoice = make_invoice(a)
    env.fail_export("429", n=3)
    result = export_pending(env.name)
    assert result.exported == 1 and refs(env) == [invoice.number]
    assert env.clock.sleeps.count(1.0) >= 3  # honoured Retry-After: 1, on the fake clock


def test_429_storm_stops_early_and_resumes_next_tick(app, connected):
    env, (a, b) = connected
    invoices = [make_invoice(a), make_invoice(b)]
    env.fail_export("429-long", n=1)  # Retry-After far beyond what a run waits
    summary = run_slot(dt.datetime(2030, 3, 5, 6))
    assert "stopped early" in summary
    slot = JobSlot.query.filter_by(slot_key="2030-03-05").one()
    assert slot.status == "partial"
    assert refs(env) == []
    assert db.session.get(Invoice, invoices[0].id).status == "pending"
    assert InvoiceExport.query.filter_by(invoice_id=invoices[0].id).one().state == "failed"

    # The next tick (same slot, later) resumes and sends each invoice once.
    assert "2 exported" in run_slot(dt.datetime(2030, 3, 5, 7))
    assert refs(env) == sorted(i.number for i in invoices)
    assert JobSlot.query.filter_by(slot_key="2030-03-05").one().status == "done"


def test_a_refused_export_is_retried_next_run(app, connected):
    env, (a, _b) = connected
    invoice = make_invoice(a)
    env.fail_export("refused")
    assert export_pending(env.name).failed == 1
    assert db.session.get(Invoice, invoice.id).status == "pending"
    assert export_pending(env.name).exported == 1
    assert refs(env) == [invoice.number]


@pytest.mark.parametrize("fault", ["500", "timeout", "commit_drop", "commit_500"])
def test_unknown_outcomes_are_never_resent_blindly(app, client, logged_in_operator, connected, fault):
    env, (a, _b) = connected
    invoice = make_invoice(a)
    env.fail_export(fault)
    created_remotely = fault != "500"  # a 503 did nothing; the others did the work

    if lookup(env) and fault == "500":
        # A 5xx after sending may come from a gateway while the backend still saves it:
        # "not found" at once proves nothing, so nothing is re-sent in this run...
        with pytest.raises(ExportStopped):
            export_pending(env.name)
        assert refs(env) == []
        # ...nor on the next tick soon after; only once a lookup well after the send
        # still finds nothing is it sent again, once.
        with pytest.raises(ExportStopped):
            export_pending(env.name)
        assert refs(env) == [] and db.session.get(Invoice, invoice.id).status == "pending"
        later = utcnow() + invoice_export.RECHECK_AFTER + dt.timedelta(minutes=1)
        assert export_pending(env.name, now=later).exported == 1
        assert refs(env) == [invoice.number]
        return
    if lookup(env) and fault == "timeout":
        # No answer at all, and the slow server has not finished yet: "not found" proves
        # nothing, so nothing is sent again in this run; it stops early instead.
        with pytest.raises(ExportStopped):
            export_pending(env.name)
        _wait_until(lambda: env.remote_exports())  # the stand-in finishes the work after we gave up
        assert InvoiceExport.query.filter_by(invoice_id=invoice.id).one().state == "failed"
        assert db.session.get(Invoice, invoice.id).status == "pending"
        # The next tick looks it up by our reference before sending anything: found, closed.
        assert export_pending(env.name).exported == 1
        db.session.expire_all()
        assert InvoiceExport.query.filter_by(invoice_id=invoice.id).one().state == "done"
        assert len(refs(env)) == 1 and db.session.get(Invoice, invoice.id).status == "closed_by_export"
        return
    result = export_pending(env.name)
    if fault == "timeout":
        _wait_until(lambda: env.remote_exports())  # the stand-in finishes the work after we gave up

    row = InvoiceExport.query.filter_by(invoice_id=invoice.id).one()
    if lookup(env):
        # Looked up by our reference before any retry: exactly one, closed.
        assert row.state == "done" and len(refs(env)) == 1
        assert db.session.get(Invoice, invoice.id).external_reference == env.remote_exports()[0]["id"]
        return
    assert result.unknown == 1 and row.state == "unknown"
    assert db.session.get(Invoice, invoice.id).status == "pending"
    assert len(refs(env)) == (1 if created_remotely else 0)
    # Further runs leave it alone until a person decides.
    export_pending(env.name)
    assert len(refs(env)) == (1 if created_remotely else 0)

    page = client.get(f"{BASE}/systems").get_data(as_text=True)
    assert invoice.number in page and "It was not created: retry" in page
    if created_remotely:
        fee_id = env.remote_exports()[0]["id"]
        bad = client.post(f"{BASE}/exports/{row.id}/created", data={"remote_id": ""}, headers=HX)
        assert bad.status_code == 200 and "Enter the id" in bad.get_data(as_text=True)
        resp = client.post(f"{BASE}/exports/{row.id}/created", data={"remote_id": fee_id}, headers=HX)
        assert resp.status_code == 204
        db.session.expire_all()
        assert db.session.get(Invoice, invoice.id).external_reference == fee_id
    else:
        resp = client.post(f"{BASE}/exports/{row.id}/not-created", headers=HX)
        assert resp.status_code == 204
        db.session.expire_all()
        assert export_pending(env.name).exported == 1
    assert db.session.get(Invoice, invoice.id).status == "closed_by_export"
    assert len(refs(env)) == 1
    assert export_pending(env.name).exported == 0 and len(refs(env)) == 1


def test_crash_between_remote_create_and_local_close(app, client, logged_in_operator, connected, monkeypatch):
    env, (a, _b) = connected
    invoice = make_invoice(a)

    def die(row_id, remote_id):
        raise SystemExit("killed right after the remote create, before the local commit")

    monkeypatch.setattr(invoice_export, "_hook_after_remote_call", die)
    with pytest.raises(SystemExit):
        export_pending(env.name)
    db.session.rollback()
    monkeypatch.undo()
    assert len(refs(env)) == 1
    row = InvoiceExport.query.filter_by(invoice_id=invoice.id).one()
    assert row.state == "sending" and db.session.get(Invoice, invoice.id).status == "pending"

    # Restarted at once: the row may belong to a live run, so nothing is sent; stop early.
    with pytest.raises(ExportStopped):
        export_pending(env.name)
    assert len(refs(env)) == 1

    # Later, the row is stale: its outcome is unknown, and it is never re-sent blindly.
    later = utcnow() + invoice_export.SENDING_STALE + dt.timedelta(minutes=1)
    export_pending(env.name, now=later)
    db.session.expire_all()
    row = db.session.get(InvoiceExport, row.id)
    assert len(refs(env)) == 1
    if lookup(env):
        assert row.state == "done"
    else:
        assert row.state == "unknown"
        fee_id = env.remote_exports()[0]["id"]
        client.post(f"{BASE}/exports/{row.id}/created", data={"remote_id": fee_id}, headers=HX)
        db.session.expire_all()
    assert db.session.get(Invoice, invoice.id).status == "closed_by_export"
    export_pending(env.name, now=later)
    assert len(refs(env)) == 1


# --------------------------------------------------------------------- concurrency
def test_two_processes_export_at_once_each_invoice_once(app, connected, make_customer):
    from tests.conftest import make_test_app

    env, customers = connected
    invoices = [make_invoice(customers[i % 2]) for i in range(10)]
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    extra = {k: app.config[k] for k in ("OFFICERND_TOKEN_URL", "OFFICERND_API_BASE", "NEXUDUS_API_BASE",
                                        "INTEGRATIONS_CLIENT_OPTIONS")}
    apps = [make_test_app(url, **extra) for _ in range(2)]
    start = threading.Barrier(2)
    results, errors = [], []

    def worker(other_app):
        with other_app.app_context():
            try:
                start.wait()
                results.append(export_pending(env.name))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            finally:
                db.session.remove()
                db.engine.dispose()

    threads = [threading.Thread(target=worker, args=(a,)) for a in apps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sum(r.exported for r in results) == 10
    assert refs(env) == sorted(i.number for i in invoices)  # each exactly once
    db.session.expire_all()
    assert all(db.session.get(Invoice, i.id).status == "closed_by_export" for i in invoices)


def test_two_schedulers_ticking_at_once_run_the_slot_once(app, connected):
    from tests.conftest import make_test_app

    env, customers = connected
    invoices = [make_invoice(customers[0]) for _ in range(4)]
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    extra = {k: app.config[k] for k in ("OFFICERND_TOKEN_URL", "OFFICERND_API_BASE", "NEXUDUS_API_BASE",
                                        "INTEGRATIONS_CLIENT_OPTIONS")}
    apps = [make_test_app(url, **extra) for _ in range(2)]
    start = threading.Barrier(2)
    summaries = []

    def worker(other_app):
        with other_app.app_context():
            start.wait()
            summaries.append(run_slot(dt.datetime(2030, 3, 5, 6)))
            db.session.remove()
            db.engine.dispose()

    threads = [threading.Thread(target=worker, args=(a,)) for a in apps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ran = [s for s in summaries if s is not None]
    assert len(ran) == 1 and "4 exported" in ran[0]
    assert refs(env) == sorted(i.number for i in invoices)


# ---------------------------------------------------------------------------- CLI
def test_cli_export_and_sync(app, provider_env, make_customer):
    env = provider_env
    customer = make_customer(email="cli@example.com")
    env.connect()
    runner = app.test_cli_runner()
    out = runner.invoke(args=["integrations", "sync", env.name])
    assert out.exit_code == 0 and "1 created" in out.output
    invoice = make_invoice(customer)
    out = runner.invoke(args=["integrations", "export", env.name])
    # Today's slot (if any) precedes the integration, which was enabled just now.
    assert out.exit_code == 0 and "exported" not in out.output.replace("0 exported", "")
    assert refs(env) == []
    out = runner.invoke(args=["integrations", "export", env.name, "--now"])
    assert out.exit_code == 0 and "1 exported" in out.output
    assert refs(env) == [invoice.number]
    other = "nexudus" if env.name == "officernd" else "officernd"
    out = runner.invoke(args=["integrations", "export", other, "--now"])
    assert out.exit_code != 0 and "not the connected integration" in out.output


def test_systems_page_query_count_does_not_grow_with_rows(app, client, logged_in_operator, connected):
    env, (a, _b) = connected

    def page_queries():
        before = len(get_recorded_queries())
        assert client.get(f"{BASE}/systems").status_code == 200
        return len(get_recorded_queries()) - before

    def add_unknown(n):
        for _ in range(n):
            invoice = make_invoice(a)
            db.session.add(InvoiceExport(invoice_id=invoice.id, provider=env.name, state="unknown",
                                         last_error="no answer"))
        db.session.commit()

    add_unknown(1)
    small = page_queries()
    add_unknown(8)
    assert page_queries() == small


def test_each_export_costs_a_fixed_few_statements(app, connected):
    """Claim (commit), mark sending (commit), then close and store in one transaction: the
    row, its invoice and the member link are read together, nothing is read twice."""
    from flask_sqlalchemy.record_queries import get_recorded_queries

    env, (a, b) = connected

    def statements(n):
        for i in range(n):
            make_invoice(a if i % 2 else b)
        db.session.commit()
        before = len(get_recorded_queries())
        assert export_pending(env.name).exported == n
        return len(get_recorded_queries()) - before

    small, large = statements(2), statements(6)
    assert (large - small) / 4 <= 9, (small, large)
