"""Bill run over 10,000 customers: wall time and SQL statement count, then a second (no-op) run.

    .venv/bin/python bench/bill_run.py            # SQLite temp file
    DATABASE_URL=postgresql://... .venv/bin/python bench/bill_run.py

Seeds with bulk inserts (not timed), runs the bill run, prints numbers. Never a test.
"""
from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sqlalchemy import event, text  # noqa: E402

N_CUSTOMERS = int(os.environ.get("BENCH_CUSTOMERS", "10000"))


def main() -> None:
    from spheremail import create_app
    from spheremail.extensions import db

    tmp = None
    url = os.environ.get("DATABASE_URL")
    if url:
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://"):]
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
    else:
        tmp = tempfile.mkdtemp(prefix="spheremail-bench-")
        url = f"sqlite:///{tmp}/bench.sqlite3"
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "TESTING": True, "SCHEDULER_ENABLED": False,
                      "MAIL_SUPPRESS": True, "SECRET_KEY": "bench",
                      "ENCRYPTION_KEYS": ["x3qzjY0y8Sw6b3Yb0m6jQb1C3s6fS0a3rVd0WmBZ9bE="]})
    with app.app_context():
        db.drop_all()
        db.create_all()
        seed(db)
        from spheremail.services.billing import run_bill_run

        counter = {"n": 0}

        @event.listens_for(db.engine, "before_cursor_execute")
        def _count(*_a, **_kw):
            counter["n"] += 1

        def timed():
            counter["n"] = 0
            start = time.perf_counter()
            result = run_bill_run("2026-03", run_date=dt.date(2026, 3, 1))
            return time.perf_counter() - start, counter["n"], result

        t1, n1, r1 = timed()
        t2, n2, r2 = timed()
        lines = db.session.execute(text("SELECT count(*) FROM invoice_lines")).scalar()
        print(f"database          {db.engine.dialect.name}")
        print(f"customers         {N_CUSTOMERS}")
        print(f"first run         {t1:.2f} s, {n1} SQL statements, {r1.created} invoices, {lines} lines")
        print(f"second run        {t2:.3f} s, {n2} SQL statements, {r2.created} invoices (no-op)")
        print(f"ratio 2nd/1st     time {t2 / t1:.3f}, statements {n2 / n1:.3f}")
        print(f"statements per customer (1st run) {n1 / N_CUSTOMERS:.4f}")
        if url.startswith("postgresql"):
            db.drop_all()
    if tmp:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def seed(db) -> None:
    """10,000 customers (most on a plan), 1-3 recipients for every 3rd, fees for every 4th: bulk inserts."""
    from spheremail.models import Customer, OneOffFee, Plan, Recipient, Setting, User

    start = time.perf_counter()
    db.session.add_all([Plan(id=1, name="Basic", monthly_price_minor=1500),
                        Plan(id=2, name="Business", monthly_price_minor=3999)])
    db.session.add(Setting(key="billing_recipient_price_minor", value="500"))
    db.session.flush()
    old = dt.datetime(2025, 1, 1)
    users = [{"id": i, "email": f"c{i}@bench.test", "role": "customer", "created_at": old}
             for i in range(1, N_CUSTOMERS + 1)]
    db.session.execute(User.__table__.insert(), users)
    customers = [{"id": i, "user_id": i, "first_name": "Cust", "last_name": str(i), "mailbox_number": 1000 + i,
                  "status": "inactive" if i % 50 == 0 else "active", "plan_id": None if i % 10 == 0 else 1 + i % 2,
                  "created_at": old, "updated_at": old} for i in range(1, N_CUSTOMERS + 1)]
    db.session.execute(Customer.__table__.insert(), customers)
    recipients = [{"customer_id": i, "first_name": "R", "last_name": f"{i}-{k}",
                   "status": "paid" if k < 2 else "free", "created_at": old}
                  for i in range(1, N_CUSTOMERS + 1, 3) for k in range(1 + i % 3)]
    db.session.execute(Recipient.__table__.insert(), recipients)
    fees = [{"customer_id": i, "description": f"Scan {k}", "amount_minor": 250 + k, "fee_date": dt.date(2026, 2, 10),
             "created_at": old} for i in range(1, N_CUSTOMERS + 1, 4) for k in range(2)]
    db.session.execute(OneOffFee.__table__.insert(), fees)
    db.session.commit()
    if db.engine.dialect.name == "postgresql":
        for table in ("users", "customers", "plans"):
            db.session.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                    f"(SELECT max(id) FROM {table}))"))
        db.session.commit()
    print(f"seeded            {N_CUSTOMERS} customers, {len(recipients)} recipients, {len(fees)} fees "
          f"in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
