"""Benchmark (issue #4): auto-connect 10,000 customers to OfficeRnD through the real sync service.

Run: ``.venv/bin/python bench/officernd_sync.py`` (``--help`` for the knobs). SQLite in a
temporary folder by default; ``DATABASE_URL=postgresql://...`` runs it on a throw-away
PostgreSQL database instead.

What runs is what the app runs: the customers are in the app's database, the
connection is an ``IntegrationConnection`` row (credentials encrypted, as the Connect
popup stores them), the client comes from ``registry.provider_for`` and the work is
``spheremail.services.member_sync.run_sync`` (what ``start_sync`` and the daily job call),
in this process. The other side is the OfficeRnD stand-in (tests/standins/officernd.py)
on 127.0.0.1 with added latency per request and a per-second limit equal to the
per-minute limit / 60 (a one-second fixed window, so the limit really binds: in a
one-minute window 5,000 writes would fit before it ever said no).

Half of the customers already are members (a fifth of those stored with different
letter case, which the sync must still match); the other half must be created.

The floor is what any client must spend against this stand-in:
  token (1 request, one latency)
  + pages × max(latency, 1 / read rate)   (cursor paging: a page's cursor comes with the
                                           previous answer, so pages are sequential)
  + creates / write rate + one latency    (creates may overlap; the limit paces them)
Its request count is pages + creates (+ the one token request, shown apart).

``--pool-baseline N`` also runs the same algorithm directly on the provider with N
threads doing the creates (no database), against a fresh stand-in: what the client and
the stand-in allow, measured in the same run.

Benchmarks print numbers; this never fails on time (exit 0 unless something crashes).
"""
from __future__ import annotations

import argparse
import collections
import logging
import math
import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402  (after the path fix: the script runs from bench/)

PAGE_SIZE = 50  # OfficeRnD's maximum $limit
SLUG = "bench-org"
CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-secret-not-real"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--customers", type=int, default=10_000, help="active customers to sync (default 10000)")
    p.add_argument("--existing-share", type=float, default=0.5,
                   help="share of customers that already are members (default 0.5)")
    p.add_argument("--latency", type=float, default=0.030, help="seconds added to every request (default 0.030)")
    p.add_argument("--per-minute", type=int, default=6_000,
                   help="requests per minute allowed, reads and writes each (default 6000)")
    p.add_argument("--pool-baseline", type=int, default=0, metavar="THREADS",
                   help="also run the same algorithm directly on the provider with THREADS create "
                        "threads (0 = skip, the default)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- set-up

def start_standin(args, rate_per_second: int):
    """A running OfficeRnD stand-in with one location, latency and the per-second limits."""
    from tests.standins.officernd import OfficeRnDStandIn

    standin = OfficeRnDStandIn(slug=SLUG, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                               read_limit=rate_per_second, write_limit=rate_per_second,
                               read_day_limit=10_000_000, window=1.0)
    location = standin.add_location("Bench Centre")
    standin.start()
    standin.set_latency(args.latency)
    return standin, location["_id"]


def seed_existing_members(standin, location_id: str, customers: list[tuple[int, str, str]],
                          share: float) -> int:
    """Make ``share`` of the customers members already; every fifth one with other letter case."""
    rng = random.Random(11)
    chosen = sorted(rng.sample(range(len(customers)), int(round(len(customers) * share))))
    for n, index in enumerate(chosen):
        _cid, email, name = customers[index]
        local, _, domain = email.partition("@")
        stored = f"{local.title()}@{domain.upper()}" if n % 5 == 0 else email
        standin.add_member(name, stored, location_id)
    return len(chosen)


def seed_customers(count: int) -> list[tuple[int, str, str]]:
    """``count`` active customers (bulk insert); returns (id, email, name) of each."""
    from spheremail.extensions import db
    from spheremail.models import Customer, User

    common.seed_people(count, 0, inactive_share=0.0)
    rows = db.session.execute(
        db.select(Customer.id, User.email, Customer.first_name, Customer.last_name)
        .join(User, User.id == Customer.user_id).order_by(Customer.id)).all()
    return [(r.id, r.email, f"{r.first_name} {r.last_name}") for r in rows]


def connect(location_id: str):
    """The connection row as the Connect popup leaves it (enabled, connected, location chosen)."""
    from spheremail.extensions import db
    from spheremail.models import IntegrationConnection
    from spheremail.models.base import utcnow
    from spheremail.models.integrations import ConnectionState

    conn = IntegrationConnection.get_or_create("officernd")
    conn.enabled = True
    conn.set_credentials({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "slug": SLUG})
    conn.account_label = f"organization “{SLUG}”"
    conn.location_id, conn.location_name = location_id, "Bench Centre"
    conn.state = ConnectionState.CONNECTED.value
    conn.connected_at = conn.enabled_at = utcnow()
    db.session.commit()
    return conn


# --------------------------------------------------------------------------- floor

def floor(pages: int, creates: int, latency: float, rate: float) -> dict:
    token = latency
    reads = pages * max(latency, 1 / rate)
    writes = (creates / rate + latency) if creates else 0.0
    return {"requests": pages + creates, "seconds": token + reads + writes,
            "token_s": token, "reads_s": reads, "writes_s": writes}


def show_floor(f: dict, pages: int, creates: int, latency: float, rate: float) -> None:
    print("Floor (what any client needs against this stand-in):")
    print(f"  token      1 request  x {latency * 1000:.0f} ms latency             = {f['token_s']:7.2f} s")
    print(f"  pages    {pages:>4} requests x max({latency * 1000:.0f} ms latency, 1/{rate:g} s)"
          f"  = {f['reads_s']:7.2f} s   (sequential: each cursor comes with the previous page)")
    print(f"  creates {creates:>5} requests / {rate:g} per s + {latency * 1000:.0f} ms      "
          f"= {f['writes_s']:7.2f} s   (may overlap; the write limit paces them)")
    print(f"  floor: {f['requests']} API requests (pages + creates; the token request apart), "
          f"{f['seconds']:.2f} s")


# --------------------------------------------------------------------------- checks

def member_email_counts(standin) -> collections.Counter:
    with standin._lock:
        return collections.Counter((m.get("email") or "").casefold() for m in standin.members.values())


def quiet_logs() -> None:
    """The app logs each connected customer at INFO and werkzeug each request: keep the output to numbers."""
    for name in ("werkzeug", "spheremail"):
        logging.getLogger(name).setLevel(logging.WARNING)


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


# --------------------------------------------------------------------------- the service

def run_service(args, rate: int) -> dict:
    from flask_sqlalchemy.record_queries import get_recorded_queries

    from spheremail.extensions import db
    from spheremail.integrations.registry import provider_for
    from spheremail.models import MemberLink, SyncRun
    from spheremail.services import member_sync

    standin, location_id = start_standin(args, rate)
    try:
        with common.temporary_database("officernd") as url:
            app = common.make_app(url, OFFICERND_TOKEN_URL=standin.token_url,
                                  OFFICERND_API_BASE=standin.api_base)
            quiet_logs()
            with app.app_context():
                db.create_all()
                started = time.perf_counter()
                customers = seed_customers(args.customers)
                existing = seed_existing_members(standin, location_id, customers, args.existing_share)
                conn = connect(location_id)
                print(f"Seeded {len(customers)} active customers and {existing} existing members "
                      f"({existing // 5 + (1 if existing % 5 else 0)} of them stored in other letter case) "
                      f"in {time.perf_counter() - started:.1f} s; database {db.engine.dialect.name}.")

                run = SyncRun(provider="officernd", kind="all", status="pending")
                db.session.add(run)
                db.session.commit()
                run_id = run.id
                provider = provider_for(conn)  # exactly what run_sync builds for itself
                standin.reset_counters()
                queries_before = len(get_recorded_queries())
                began = time.perf_counter()
                member_sync.run_sync(run_id, provider_client=provider)
                wall = time.perf_counter() - began
                queries = len(get_recorded_queries()) - queries_before

                run = db.session.get(SyncRun, run_id)
                links = db.session.execute(
                    db.select(db.func.count(MemberLink.id)).filter_by(provider="officernd", active=True)
                ).scalar()
                created_links = db.session.execute(
                    db.select(db.func.count(MemberLink.id))
                    .filter_by(provider="officernd", active=True, source="created")).scalar()
                result = {
                    "wall": wall, "existing": existing, "customers": len(customers),
                    "pages": standin.count("GET", "/members"), "creates": standin.count("POST", "/members"),
                    "token": standin.token_requests, "all": sum(standin.request_counts.values()),
                    "other": {f"{m} {p}": n for (m, p), n in standin.request_counts.items()
                              if (m, p) not in {("GET", "/members"), ("POST", "/members"),
                                                ("POST", "/oauth/token")}},
                    "429": standin.rate_limited_count, "client": provider.counters(),
                    "status": run.status, "message": run.message, "matched": run.matched,
                    "created": run.created, "failed": run.failed, "errors": run.errors()[:3],
                    "links": links, "created_links": created_links, "queries": queries,
                    "emails": member_email_counts(standin), "members": len(standin.members),
                }
                db.engine.dispose()
    finally:
        standin.stop()
    return result


def report(title: str, r: dict, f: dict, total_customers: int) -> dict:
    dupes = {e: n for e, n in r["emails"].items() if n > 1}
    api = r["pages"] + r["creates"]
    ratio = r["wall"] / f["seconds"]
    print(f"\n== {title} ==")
    print(common.table(["", "value"], [
        ["run status", f"{r['status']}" + (f" ({r['message']})" if r.get("message") else "")],
        ["matched / created / failed", f"{r['matched']} / {r['created']} / {r['failed']}"],
        ["GET /members (pages)", r["pages"]],
        ["POST /members (creates)", r["creates"]],
        ["POST /oauth/token", r["token"]],
        ["other requests", ", ".join(f"{k}: {v}" for k, v in r["other"].items()) or "none"],
        ["requests made (all)", r["all"]],
        ["429s received", r["429"]],
        ["client: requests / 429 / waits / waited s",
         f"{r['client']['requests']} / {r['client']['rate_limited_429']} / {r['client']['waits']} / "
         f"{r['client']['waited_seconds']:.1f}"],
        ["wall time", f"{r['wall']:.2f} s"],
        ["floor", f"{f['seconds']:.2f} s, {f['requests']} API requests"],
        ["wall / floor", f"{ratio:.3f}x"],
        ["active links (created)", f"{r['links']} ({r['created_links']})" if r.get("links") is not None else "n/a"],
        ["SQL statements", f"{r['queries']} ({r['queries'] / max(1, total_customers):.1f} per customer)"
         if r.get("queries") is not None else "n/a"],
        ["members over there", f"{r['members']} for {total_customers} customers"],
        ["emails held by >1 member", len(dupes)],
    ], align="lr"))
    if r.get("errors"):
        print("  first errors:", r["errors"])
    aims = {
        "requests == floor count": api == f["requests"],
        "wall <= 1.2 x floor": ratio <= 1.2,
        "zero 429s": r["429"] == 0,
        "no duplicate members": not dupes and r["members"] == total_customers,
    }
    for name, ok in aims.items():
        print(f"  aim {name:<24} {verdict(ok)}")
    return aims


# ------------------------------------------------------------------- pooled baseline

def run_pool_baseline(args, rate: int, threads: int) -> dict:
    """The same algorithm straight on the provider, creates from ``threads`` threads.

    No database: this measures what the client and the stand-in allow, to tell the
    service's own cost from theirs.
    """
    from spheremail.integrations.base import MemoryTokenStore, NewMember
    from spheremail.integrations.officernd import OfficeRnDProvider

    quiet_logs()
    standin, location_id = start_standin(args, rate)
    try:
        customers = [(i, f"customer.{i}@example.com", f"Customer {i}") for i in range(args.customers)]
        existing = seed_existing_members(standin, location_id, customers, args.existing_share)
        provider = OfficeRnDProvider(CLIENT_ID, CLIENT_SECRET, SLUG, token_url=standin.token_url,
                                     api_base=standin.api_base, token_store=MemoryTokenStore(),
                                     pool_size=max(10, threads))
        standin.reset_counters()
        began = time.perf_counter()
        known = {m.email.strip().lower() for m in provider.iter_members() if m.email}
        missing = [c for c in customers if c[1].lower() not in known]
        failed = []
        lock = threading.Lock()

        def create(c):
            try:
                provider.create_member(NewMember(name=c[2], email=c[1], location_id=location_id))
            except Exception as exc:  # noqa: BLE001 - counted and shown
                with lock:
                    failed.append(repr(exc)[:200])

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(create, missing))
        wall = time.perf_counter() - began
        return {"wall": wall, "existing": existing, "customers": len(customers),
                "pages": standin.count("GET", "/members"), "creates": standin.count("POST", "/members"),
                "token": standin.token_requests, "all": sum(standin.request_counts.values()),
                "other": {}, "429": standin.rate_limited_count, "client": provider.counters(),
                "status": "done" if not failed else "errors", "message": None,
                "matched": len(customers) - len(missing), "created": len(missing) - len(failed),
                "failed": len(failed), "errors": failed[:3], "links": None, "queries": None,
                "emails": member_email_counts(standin), "members": len(standin.members)}
    finally:
        standin.stop()


def main(argv=None) -> int:
    args = parse_args(argv)
    rate = max(1, args.per_minute // 60)
    print(f"OfficeRnD sync benchmark: {args.customers} customers, {args.existing_share:.0%} already members, "
          f"{args.latency * 1000:.0f} ms added latency, {args.per_minute}/min "
          f"(= {rate}/s in one-second windows) for reads and for writes.")
    print("Runs spheremail.services.member_sync.run_sync in-process against the stand-in on 127.0.0.1.")

    r = run_service(args, rate)
    pages = max(1, math.ceil(r["existing"] / PAGE_SIZE))
    creates = r["customers"] - r["existing"]
    f = floor(pages, creates, args.latency, rate)
    print()
    show_floor(f, pages, creates, args.latency, rate)
    aims = report("member_sync.run_sync (the service the app runs)", r, f, r["customers"])

    if args.pool_baseline:
        b = run_pool_baseline(args, rate, args.pool_baseline)
        report(f"baseline: same algorithm straight on OfficeRnDProvider, {args.pool_baseline} create "
               "threads, no database", b, f, b["customers"])
        print(f"\n  service / pooled baseline wall time: {r['wall'] / b['wall']:.2f}x")

    if not aims["wall <= 1.2 x floor"]:
        per_customer = r["wall"] / max(1, r["customers"])
        print(f"\nWhy the wall time misses: {r['wall']:.1f} s for {r['customers']} customers is "
              f"{per_customer * 1000:.1f} ms each. run_sync connects customers one after another, so "
              f"each of the {creates} creates waits for its answer ({args.latency * 1000:.0f} ms latency "
              f"+ server time) before the next starts: at least {creates * args.latency:.0f} s of "
              f"latency alone vs {creates / rate:.0f} s at the allowed rate. A few create threads "
              f"(>= rate x latency = {rate * args.latency:.1f} in flight) would let the shared rate "
              "limiter, not the latency, set the pace.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
