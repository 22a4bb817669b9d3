"""Export safety: a 5xx after sending is never re-sent in the same run (a gateway 504
while the backend still saves the charge would otherwise bill twice), and the export and
member-sync jobs renew their lease and stop when it is lost."""
from __future__ import annotations

import datetime as dt

import pytest
from flask import request

from spheremail.extensions import db
from spheremail.jobs import JobContext, StopEarly
from spheremail.models import Invoice, InvoiceExport, JobSlot, MemberLink, SyncRun
from spheremail.models.base import utcnow
from spheremail.services import member_sync
from spheremail.services.invoice_export import ExportStopped, export_pending
from spheremail.services.member_sync import start_sync
from tests.integrations.conftest import CHARGES
from tests.integrations.test_invoice_export import connected, make_invoice, refs, run_slot  # noqa: F401


@pytest.fixture
def exporting(nexudus_env, make_customer):
    customers = [make_customer(first_name=f"Saf{i}", last_name="Ety", email=f"saf{i}@example.test")
                 for i in range(2)]
    nexudus_env.connect(enabled_at=utcnow() - dt.timedelta(hours=1))
    assert start_sync("nexudus", background=False).created == 2
    return customers


def _gateway_504_backend_saves_late(standin) -> None:
    """The next charge POST is answered 504 by the gateway while the backend is still
    saving it: the charge becomes visible only right after the first look-up."""
    standin.lose_answer_next(1, path=CHARGES, mode="500")  # committed, then answered 500
    state = {"armed": True, "late": None}

    def _late(response):
        if request.method == "POST" and request.path == CHARGES and state["armed"] \
                and response.status_code == 500:
            state["armed"] = False
            response.status_code = 504
            with standin.lock:  # not saved yet, as far as a reader can tell
                state["late"] = standin.charges.pop(max(standin.charges))
        elif request.method == "GET" and request.path == CHARGES and state["late"] is not None:
            with standin.lock:  # ...saved right after our first look-up
                standin.charges[state["late"]["Id"]] = state["late"]
            state["late"] = None
        return response

    # The stand-in already served requests, so Flask refuses @after_request now: add it directly.
    standin.app.after_request_funcs.setdefault(None, []).append(_late)


def test_a_504_whose_charge_lands_late_is_not_sent_twice(app, nexudus_env, exporting):
    env = nexudus_env
    invoice = make_invoice(exporting[0])
    _gateway_504_backend_saves_late(env.standin)
    env.standin.reset_counters()

    # The run gets a 504, looks it up at once (not there yet) and does NOT send it again.
    with pytest.raises(ExportStopped):
        export_pending("nexudus")
    assert env.standin.count("POST", CHARGES) == 1
    assert len(env.standin.charges_for(invoice.number)) == 1
    assert db.session.get(Invoice, invoice.id).status == "pending"
    row = InvoiceExport.query.filter_by(invoice_id=invoice.id).one()
    assert row.state == "failed" and row.sending_at is not None  # still in doubt

    # A later run finds it by PurchaseOrder and closes the invoice: exactly one charge.
    later = utcnow() + dt.timedelta(minutes=10)
    assert export_pending("nexudus", now=later).exported == 1
    assert env.standin.count("POST", CHARGES) == 1
    (charge,) = env.standin.charges_for(invoice.number)
    db.session.expire_all()
    closed = db.session.get(Invoice, invoice.id)
    assert closed.status == "closed_by_export" and closed.external_reference == str(charge["Id"])
    assert InvoiceExport.query.filter_by(invoice_id=invoice.id).one().state == "done"


def test_a_lost_lookup_keeps_the_send_in_doubt(app, nexudus_env, exporting):
    """A 503 that did nothing, then the recheck's look-up is throttled: the send is still in
    doubt, so the next run soon after must not send it without a late enough look-up."""
    env = nexudus_env
    invoice = make_invoice(exporting[0])
    env.standin.fail_next(1, status=503, method="POST", path=CHARGES)
    with pytest.raises(ExportStopped):
        export_pending("nexudus")
    env.standin.fail_next(1, status=400, method="GET", path=CHARGES)
    assert export_pending("nexudus").failed == 1  # the recheck's look-up was refused
    with pytest.raises(ExportStopped):
        export_pending("nexudus")
    assert refs(env) == []
    assert export_pending("nexudus", now=utcnow() + dt.timedelta(minutes=10)).exported == 1
    assert refs(env) == [invoice.number]


# ------------------------------------------------------------------------ leases
def _beats(allowed: int):
    calls = []

    def beat() -> bool:
        calls.append(1)
        return len(calls) <= allowed

    return beat, calls


def test_export_stops_when_the_lease_is_lost(app, connected):  # noqa: F811
    env, (a, b) = connected
    invoices = [make_invoice(a), make_invoice(b), make_invoice(a)]
    beat, calls = _beats(2)

    with pytest.raises(ExportStopped, match="lease"):
        export_pending(env.name, heartbeat=beat)
    assert refs(env) == sorted(i.number for i in invoices[:2])
    assert db.session.get(Invoice, invoices[2].id).status == "pending"
    assert InvoiceExport.query.filter_by(invoice_id=invoices[2].id).first() is None  # untouched

    assert export_pending(env.name).exported == 1  # the next tick does the rest
    assert refs(env) == sorted(i.number for i in invoices)


def test_export_job_renews_its_lease_and_stops_when_lost(app, connected, monkeypatch):  # noqa: F811
    env, (a, b) = connected
    invoices = [make_invoice(a), make_invoice(b), make_invoice(a)]
    beat, calls = _beats(1)
    monkeypatch.setattr(JobContext, "renew", lambda self: beat())

    summary = run_slot(dt.datetime(2030, 3, 5, 6))
    assert "stopped early" in summary and "lease" in summary
    assert JobSlot.query.filter_by(slot_key="2030-03-05").one().status == "partial"
    assert refs(env) == [invoices[0].number]
    monkeypatch.undo()
    assert "2 exported" in run_slot(dt.datetime(2030, 3, 5, 7))
    assert refs(env) == sorted(i.number for i in invoices)


def test_member_sync_stops_when_the_lease_is_lost(app, provider_env, make_customer, monkeypatch):
    env = provider_env
    for i in range(3):
        make_customer(first_name=f"Lea{i}", last_name="Se", email=f"lea{i}@example.test")
        env.add_member(f"Lea{i} Se", f"lea{i}@example.test")  # matched, no create calls
    env.connect(enabled_at=utcnow() - dt.timedelta(hours=1))
    monkeypatch.setattr(member_sync, "BATCH", 1)  # a heartbeat after every link
    beat, calls = _beats(0)

    run = start_sync(env.name, background=False, heartbeat=beat)
    assert run.status == "failed" and "lease" in run.message
    assert len(calls) == 1 and MemberLink.query.filter_by(active=True).count() == 1
    # The next run links the rest.
    assert start_sync(env.name, background=False).status == "done"
    assert MemberLink.query.filter_by(active=True).count() == 3
    assert SyncRun.query.count() == 2


def test_member_sync_job_passes_its_lease_renewal(app, provider_env, make_customer, monkeypatch):
    env = provider_env
    make_customer(first_name="Job", last_name="Sync", email="jobsync@example.test")
    env.add_member("Job Sync", "jobsync@example.test")
    env.connect(enabled_at=utcnow() - dt.timedelta(hours=1))
    monkeypatch.setattr(member_sync, "BATCH", 1)
    seen = []

    def fake_start_sync(provider, *, background=True, heartbeat=None, by=None):
        seen.append(heartbeat)
        raise StopEarly("checked")

    monkeypatch.setattr(member_sync, "start_sync", fake_start_sync)
    from spheremail.jobs import REGISTRY, load_jobs, run_job

    load_jobs()
    run_job(REGISTRY["member-sync"], "2030-03-05")
    assert len(seen) == 1 and callable(seen[0])
