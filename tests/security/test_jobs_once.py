"""Scheduled jobs run once per slot however many app instances or processes tick at once.

Two app instances on one database (SQLite file or PostgreSQL, whichever the suite runs on),
each ticking in its own thread at the same moment; then a real second OS process.
"""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from spheremail import jobs
from spheremail.jobs import Job, JobContext, daily_slot, register, tick
from spheremail.models import Customer, JobLease, JobSlot
from spheremail.models.base import utcnow
from tests.conftest import make_test_app

COUNTER = "test-run-counter"
REPO = Path(__file__).resolve().parents[2]


def tenth_of_month_slot(now: dt.datetime) -> str:
    """Like the invoice export: the most recent 10th of a month that has come."""
    day = now.date()
    if day.day >= 10:
        return day.replace(day=10).isoformat()
    previous = day.replace(day=1) - dt.timedelta(days=1)
    return previous.replace(day=10).isoformat()


class Counter:
    """A job body that counts its runs and holds its lease a moment, so the rival tries meanwhile."""

    def __init__(self):
        self.runs: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, ctx: JobContext) -> str:
        with self.lock:
            self.runs.append(ctx.slot_key)
        time.sleep(0.2)
        return f"counted {ctx.slot_key}"


@pytest.fixture
def second_app(app):
    """Another app instance (own engine and sessions) on the same database."""
    other = make_test_app(app.config["SQLALCHEMY_DATABASE_URI"])
    yield other
    with other.app_context():
        from spheremail.extensions import db

        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def only_jobs(second_app):
    """Replace the registry for the test (other features' jobs are not under test here)."""
    saved = dict(jobs.REGISTRY)

    def install(*wanted: Job):
        jobs.REGISTRY.clear()
        for job in wanted:
            register(job)

    yield install
    jobs.REGISTRY.clear()
    jobs.REGISTRY.update(saved)


def _tick_together(apps, now=None):
    """Each app ticks in its own thread, released at the same moment; returns their results."""
    barrier = threading.Barrier(len(apps))
    results: list = [None] * len(apps)
    errors: list = []

    def worker(i, application):
        try:
            with application.app_context():
                barrier.wait()
                results[i] = tick(now)
        except Exception as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i, a)) for i, a in enumerate(apps)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def _slots(db, name):
    db.session.expire_all()
    return db.session.execute(db.select(JobSlot).filter_by(job_name=name)).scalars().all()


def test_two_instances_run_apply_cancellations_once(app, db, second_app, only_jobs, make_customer):
    today = utcnow().date()
    leaving = make_customer(deactivate_on=today, deactivate_reason="date")
    staying = make_customer(deactivate_on=today + dt.timedelta(days=30), deactivate_reason="date")
    cancellations = jobs.REGISTRY["apply-cancellations"]
    counter = Counter()
    real_run = cancellations.run

    def counted(ctx):
        counter(ctx)
        return real_run(ctx)

    only_jobs(Job(name=cancellations.name, description=cancellations.description,
                  current_slot=cancellations.current_slot, run=counted),
              Job(name=COUNTER, description="counts runs", current_slot=daily_slot, run=Counter()))
    counter_job = jobs.REGISTRY[COUNTER]

    results = _tick_together([app, second_app])

    assert counter.runs == [daily_slot(utcnow())]
    assert len(counter_job.run.runs) == 1
    for name in ("apply-cancellations", COUNTER):
        outcomes = sorted(str(r[name]) for r in results)
        assert outcomes[1] == "None" or outcomes[0] == "None", outcomes  # one ran, the other did not
        assert "error" not in outcomes, outcomes
        [slot] = _slots(db, name)
        assert slot.status == "done"
    db.session.expire_all()
    assert db.session.get(Customer, leaving.id).status == "inactive"
    assert db.session.get(Customer, staying.id).status == "active"

    # Ticking again later the same day does nothing.
    _tick_together([app, second_app])
    assert len(counter.runs) == 1 and len(counter_job.run.runs) == 1


def test_slot_of_a_dead_owner_is_resumed_once(app, db, second_app, only_jobs):
    counter = Counter()
    only_jobs(Job(name=COUNTER, description="counts runs", current_slot=daily_slot, run=counter))
    slot_key = daily_slot(utcnow())
    # A process took the slot and died: status running, its lease long expired.
    db.session.add(JobLease(name=COUNTER, owner="dead-host:1:abc", expires_at=utcnow() - dt.timedelta(minutes=5)))
    db.session.add(JobSlot(job_name=COUNTER, slot_key=slot_key, status="running", owner="dead-host:1:abc"))
    db.session.commit()

    _tick_together([app, second_app])
    _tick_together([app, second_app])

    assert counter.runs == [slot_key]
    [slot] = _slots(db, COUNTER)
    assert slot.status == "done" and slot.owner != "dead-host:1:abc"


def test_slot_of_a_live_owner_is_left_alone(app, db, second_app, only_jobs):
    counter = Counter()
    only_jobs(Job(name=COUNTER, description="counts runs", current_slot=daily_slot, run=counter))
    slot_key = daily_slot(utcnow())
    db.session.add(JobLease(name=COUNTER, owner="busy-host:2:abc", expires_at=utcnow() + dt.timedelta(minutes=5)))
    db.session.add(JobSlot(job_name=COUNTER, slot_key=slot_key, status="running", owner="busy-host:2:abc"))
    db.session.commit()

    _tick_together([app, second_app])

    assert counter.runs == []
    [slot] = _slots(db, COUNTER)
    assert slot.status == "running" and slot.owner == "busy-host:2:abc"


def test_missed_slot_is_caught_up_once(app, db, second_app, only_jobs):
    counter = Counter()
    only_jobs(Job(name=COUNTER, description="runs on the 10th", current_slot=tenth_of_month_slot, run=counter))
    # The server was down on the 10th: it comes back on the 14th, twice (two workers).
    _tick_together([app, second_app], now=dt.datetime(2030, 1, 14, 8, 0))
    _tick_together([app, second_app], now=dt.datetime(2030, 1, 15, 8, 0))
    assert counter.runs == ["2030-01-10"]
    # The next slot is a new one, run once too.
    _tick_together([app, second_app], now=dt.datetime(2030, 2, 10, 0, 1))
    assert counter.runs == ["2030-01-10", "2030-02-10"]
    assert sorted(s.slot_key for s in _slots(db, COUNTER)) == ["2030-01-10", "2030-02-10"]


SUBPROCESS_SCRIPT = textwrap.dedent('''
    import os, sys, time
    sys.path.insert(0, sys.argv[1])
    url, runs_file, ready, go = sys.argv[2:6]
    from tests.conftest import make_test_app
    from spheremail import jobs
    from spheremail.jobs import Job, daily_slot, register, tick

    app = make_test_app(url)

    def run(ctx):
        with open(runs_file, "a") as fh:
            fh.write(f"{os.getpid()} {ctx.slot_key}\\n")
        time.sleep(0.3)
        return "counted"

    jobs.REGISTRY.clear()
    register(Job(name="test-run-counter", description="counts", current_slot=daily_slot, run=run))
    open(ready, "w").close()
    for _ in range(600):  # wait (at most a minute) for the parent's signal
        if os.path.exists(go):
            break
        time.sleep(0.1)
    with app.app_context():
        print(tick())
''')


def test_a_second_os_process_does_not_repeat_the_slot(app, db, only_jobs, tmp_path):
    runs_file, ready, go = tmp_path / "runs.txt", tmp_path / "ready", tmp_path / "go"

    def run(ctx):
        with open(runs_file, "a") as fh:
            fh.write(f"{os.getpid()} {ctx.slot_key}\n")
        time.sleep(0.3)
        return "counted"

    only_jobs(Job(name=COUNTER, description="counts", current_slot=daily_slot, run=run))
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    child = subprocess.Popen([sys.executable, "-c", SUBPROCESS_SCRIPT, str(REPO), url, str(runs_file),
                              str(ready), str(go)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        for _ in range(600):
            if ready.exists() or child.poll() is not None:
                break
            time.sleep(0.1)
        assert ready.exists(), child.communicate()[1]
        go.touch()
        mine = tick()
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    lines = runs_file.read_text().splitlines()
    assert len(lines) == 1, lines
    assert [s.slot_key for s in _slots(db, COUNTER)] == [daily_slot(utcnow())]
    # Exactly one of the two processes reports the run.
    assert (mine[COUNTER] == "counted") != ("counted" in out), (mine, out)
