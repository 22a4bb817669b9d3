"""The baseline for bench/pages.py: the least a Flask app can do to show the same 50 customers.

Plain Flask + SQLAlchemy Core, one SELECT (customers joined to users, the same filter and
order as the real list), a trivial Jinja template with the same fields. No login, no
session, no CSRF, no ORM objects, no count, no layout. Served by the same gunicorn settings
as the real app: ``gunicorn bench.bare_app:app`` with BENCH_DATABASE_URL set.
"""
from __future__ import annotations

import os
import re

from flask import Flask, request
from sqlalchemy import MetaData, Table, and_, create_engine, func, or_, select

PER_PAGE = 50
_NUMBER = re.compile(r"^#?([0-9]{1,7})$")

engine = create_engine(os.environ["BENCH_DATABASE_URL"])
_meta = MetaData()
customers = Table("customers", _meta, autoload_with=engine)
users = Table("users", _meta, autoload_with=engine)

app = Flask(__name__)
ROWS = app.jinja_env.from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Customers</title></head><body><main>
<h1>Customers</h1>
<table><thead><tr><th>Mailbox</th><th>Name</th><th>Company</th><th>Email</th><th>Status</th></tr></thead>
<tbody>
{% for c in rows %}<tr><td><a href="/customers/{{ c.id }}">#{{ c.mailbox_number }}</a></td>
<td><a href="/customers/{{ c.id }}">{{ c.first_name }} {{ c.last_name }}</a></td>
<td>{{ c.company or "" }}</td><td>{{ c.email }}</td><td>{{ c.status }}
{% if c.deactivate_on %}until {{ c.deactivate_on }}{% endif %}</td></tr>
{% endfor %}</tbody></table></main></body></html>""")


def _no_fold(column):
    return column


def _conditions(q: str, status: str) -> list:
    """The same WHERE as spheremail.services.customers.search_conditions, written by hand."""
    where = []
    if status in ("active", "inactive"):
        where.append(customers.c.status == status)
    q = q.strip()[:100]
    if not q:
        return where
    number = _NUMBER.match(q)
    if number:
        digits = number.group(1)
        value = int(digits)
        if digits.startswith("0") or value == 0:
            where.append(customers.c.mailbox_number == value)
            return where
        ranges = []
        for extra in range(0, 8 - len(digits)):
            low = value * 10 ** extra
            if low > 9_999_999:
                break
            high = min(low + 10 ** extra - 1, 9_999_999)
            ranges.append(customers.c.mailbox_number == low if extra == 0
                          else customers.c.mailbox_number.between(low, high))
        where.append(or_(*ranges))
        return where
    for word in q.lower().split()[:5]:
        pattern = "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        # As the real search: SQLite's LIKE already ignores ASCII case, so no lower() there.
        fold = _no_fold if word.isascii() and engine.dialect.name == "sqlite" else func.lower
        where.append(or_(
            fold(customers.c.first_name).like(pattern, escape="\\"),
            fold(customers.c.last_name).like(pattern, escape="\\"),
            fold(customers.c.company).like(pattern, escape="\\"),
            users.c.email.like(pattern, escape="\\"),
        ))
    return where


@app.get("/customers")
def customer_list():
    """50 customers in mailbox-number order, filtered like the real list and search."""
    q = request.args.get("q", "")
    status = request.args.get("status", "active")
    page = max(1, request.args.get("page", 1, type=int) or 1)
    query = (
        select(customers.c.id, customers.c.mailbox_number, customers.c.first_name,
               customers.c.last_name, customers.c.company, customers.c.status,
               customers.c.deactivate_on, users.c.email)
        .select_from(customers.join(users, customers.c.user_id == users.c.id))
        .where(and_(True, *_conditions(q, status)))
        .order_by(customers.c.mailbox_number)
        .offset((page - 1) * PER_PAGE).limit(PER_PAGE)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return ROWS.render(rows=rows)


@app.get("/")
def ready():
    """Answers once the worker is up (the benchmark waits for it)."""
    return "ok"
