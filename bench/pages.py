"""Page benchmark (issue #2): the staff customer list and its live search under gunicorn.

Seeds a fresh database (SQLite by default; DATABASE_URL=postgresql://... for a throw-away
database on that server) with 10,000 customers and 20,000 recipients, serves the real app
and a bare Flask + SQLAlchemy app (bench/bare_app.py) on the same database with the same
gunicorn settings, and prints requests per second and p50/p95 latency of:

- the real customer list (logged in through the real form) and the bare list,
- the real live search (HTMX partial) and the bare search with the same SQL filter,

plus the SQL statement count of each real page with 100 and with 10,000 customers.
Aims: list within 1.5x of the bare route, search p95 under 50 ms, query count independent
of the number of rows. Always exits 0: benchmarks report, they never fail on time.

    .venv/bin/python bench/pages.py [--requests 500] [--concurrency 2] [--profile]
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    BENCH_OPERATOR_EMAIL,
    BENCH_PASSWORD,
    Gunicorn,
    LoadResult,
    http_get,
    login_cookie,
    make_app,
    quiet_environment,
    run_load,
    seed_operator,
    seed_people,
    table,
    temporary_database,
)

# What an operator types: surname fragments, a name with a company word, mailbox numbers.
SEARCH_TERMS = ["mart", "nguy", "smith", "pat", "52", "4711", "lee", "garc"]
HX = {"HX-Request": "true"}
AIM_LIST_RATIO = 1.5
AIM_SEARCH_P95_MS = 50.0
_ROW_LINK = re.compile(rb'href="/customers/\d+"')


def _search_query(term: str) -> str:
    from urllib.parse import urlencode

    return urlencode({"q": term, "status": "active"})


def seed(url: str, customers: int, recipients: int) -> float:
    """Schema (create_all, as the tests do) plus the people; returns the seconds it took."""
    from spheremail.extensions import db

    started = time.perf_counter()
    app = make_app(url)
    with app.app_context():
        db.create_all()
        seed_operator()
        db.session.commit()
        seed_people(customers, recipients)
        db.session.remove()
        db.engine.dispose()
    return time.perf_counter() - started


def count_queries(url: str, list_path: str, search_term: str) -> dict:
    """SQL statements of each real page, measured in-process through the test client."""
    from flask_sqlalchemy.record_queries import get_recorded_queries

    from spheremail.extensions import db

    app = make_app(url)
    pages = {
        "list page 1": (list_path, {}),
        "list page 2": (f"{list_path}?page=2", {}),
        f"search '{search_term}' (HTMX)": (f"{list_path}?{_search_query(search_term)}", HX),
        "search '15' (HTMX)": (f"{list_path}?{_search_query('15')}", HX),
    }
    counts = {}
    client = app.test_client()
    response = client.post("/login", data={"email": BENCH_OPERATOR_EMAIL, "password": BENCH_PASSWORD})
    if response.status_code not in (302, 303):
        raise RuntimeError(f"in-process login failed: HTTP {response.status_code}")
    for name, (path, headers) in pages.items():
        client.get(path, headers=headers)  # warm: the first request may load more
        # Each request gets its own app context, as when served: a fresh session, the
        # logged-in user loaded again. `with client` keeps that context open to read it.
        with client:
            response = client.get(path, headers=headers)
            statements = [q.statement for q in get_recorded_queries()]
        counts[name] = {"status": response.status_code, "queries": len(statements),
                        "rows": len(_ROW_LINK.findall(response.data)) // 2, "sql": statements}
    with app.app_context():
        db.engine.dispose()
    return counts


def profile(url: str, list_path: str, n: int = 200) -> None:
    """cProfile of ``n`` list-page renders in-process, to see where the time goes."""
    import cProfile
    import pstats

    from spheremail.extensions import db

    app = make_app(url, SQLALCHEMY_RECORD_QUERIES=False)
    client = app.test_client()
    client.post("/login", data={"email": BENCH_OPERATOR_EMAIL, "password": BENCH_PASSWORD})
    for path, headers in ((list_path, {}), (f"{list_path}?{_search_query('mart')}", HX)):
        client.get(path, headers=headers)
        prof = cProfile.Profile()
        started = time.perf_counter()
        prof.enable()
        for _ in range(n):
            client.get(path, headers=headers)
        prof.disable()
        took = (time.perf_counter() - started) / n * 1000
        print(f"\nProfile of {n} in-process GET {path} {headers or ''}: {took:.2f} ms each (with profiler)")
        pstats.Stats(prof).sort_stats("cumulative").print_stats(35)
    with app.app_context():
        db.engine.dispose()


def _load() -> str:
    if not hasattr(os, "getloadavg"):
        return "unknown"
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _ms(value: float) -> str:
    return f"{value:.1f}"


def _verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=500, help="timed requests per page")
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=2, help="client threads")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (sync, 1 thread)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds over the four pages")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per page at most")
    parser.add_argument("--show-sql", action="store_true", help="print the SQL of each page")
    parser.add_argument("--profile", action="store_true", help="cProfile the real pages in-process")
    args = parser.parse_args(argv)

    quiet_environment()
    backend = "PostgreSQL" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "SQLite"
    print(f"SphereMail page benchmark — {backend}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {_load()}")
    print(f"gunicorn: {args.workers} sync workers x 1 thread each, for the real and the bare app; "
          f"client: {args.concurrency} threads, {args.requests} timed requests per page "
          f"in {args.rounds} interleaved rounds after {args.warmup} warm-up ones, "
          f"new connection each (loopback)\n")

    with temporary_database("bench_small") as small_url, temporary_database("bench_pages") as url:
        took = seed(small_url, 100, 200)
        print(f"Seeded small dataset: 100 customers, 200 recipients ({took:.1f}s)")
        took = seed(url, args.customers, args.recipients)
        print(f"Seeded dataset: {args.customers:,} customers, {args.recipients:,} recipients, "
              f"1 operator ({took:.1f}s)")

        app = make_app(url)
        with app.test_request_context():
            from flask import url_for

            list_path = url_for("customers.index")
        with app.app_context():
            from spheremail.extensions import db

            db.engine.dispose()

        # --- query counts -----------------------------------------------------------------
        small = count_queries(small_url, list_path, SEARCH_TERMS[0])
        large = count_queries(url, list_path, SEARCH_TERMS[0])
        print("\nSQL statements per request (in-process test client, logged in as an operator)")
        rows = []
        for name in small:
            s, lg = small[name], large[name]
            rows.append([name, f"{s['queries']} ({s['rows']} rows)", f"{lg['queries']} ({lg['rows']} rows)",
                         "yes" if s["queries"] == lg["queries"] else "NO"])
        print(table(["page", "100 customers", f"{args.customers:,} customers", "same?"], rows))
        counts_ok = all(small[n]["queries"] == large[n]["queries"] for n in small) and \
            all(large[n]["status"] == 200 for n in large)
        if args.show_sql:
            for name, info in large.items():
                print(f"\n-- {name}:")
                for statement in info["sql"]:
                    print("   ", " ".join(statement.split()))

        # --- served by gunicorn -----------------------------------------------------------
        env_real = {"DATABASE_URL": url, "SPHEREMAIL_SCHEDULER": "0", "SQLALCHEMY_RECORD_QUERIES": "0"}
        env_bare = {"BENCH_DATABASE_URL": url}
        real_search = [f"{list_path}?{_search_query(t)}" for t in SEARCH_TERMS]
        bare_search = [f"/customers?{_search_query(t)}" for t in SEARCH_TERMS]
        with Gunicorn("app:app", env_real, workers=args.workers, ready_path="/login") as real, \
                Gunicorn("bench.bare_app:app", env_bare, workers=args.workers, ready_path="/") as bare:
            cookie = login_cookie(real.base_url, check_path=list_path)
            auth = {"Cookie": cookie}
            # Same rows on both sides before timing anything.
            for label, port, path, headers in (
                ("real list", real.port, list_path, auth),
                ("bare list", bare.port, "/customers", {}),
                ("real search", real.port, real_search[0], {**auth, **HX}),
                ("bare search", bare.port, bare_search[0], {}),
            ):
                status, body = http_get("127.0.0.1", port, path, headers)
                print(f"check {label:<12} HTTP {status}, {len(_ROW_LINK.findall(body)) // 2} rows, "
                      f"{len(body):,} bytes")

            targets = {
                "real list": (real.port, [list_path], auth),
                "bare list": (bare.port, ["/customers"], {}),
                "real search": (real.port, real_search, {**auth, **HX}),
                "bare search": (bare.port, bare_search, {}),
            }
            # Rounds interleave the four pages, so load from elsewhere on the machine hits
            # the real and the bare app alike and the ratios stay meaningful.
            results = {name: LoadResult(name, concurrency=args.concurrency) for name in targets}
            per_round = max(1, args.requests // args.rounds)
            for n in range(args.rounds):
                for name, (port, paths, headers) in targets.items():
                    part = run_load(name, port, paths, headers, requests=per_round,
                                    concurrency=args.concurrency,
                                    warmup=args.warmup if n == 0 else 5,
                                    time_limit=args.time_limit / args.rounds)
                    results[name].latencies += part.latencies
                    results[name].elapsed += part.elapsed
                    results[name].errors += part.errors

        print(f"\nServed by gunicorn ({args.customers:,} customers; search cycles {len(SEARCH_TERMS)} "
              f"terms: {', '.join(SEARCH_TERMS)})")
        rows = []
        for name, r in results.items():
            kind = name.split()[1]
            ratio = ""
            if name.startswith("real"):
                bare_r = results[f"bare {kind}"]
                ratio = (f"{bare_r.rps / r.rps:.2f}x" if r.rps else "-")
            rows.append([name, r.count, r.errors, f"{r.rps:.0f}", _ms(r.pct_ms(50)), _ms(r.pct_ms(95)),
                         _ms(r.mean_ms), ratio])
        print(table(["page", "requests", "errors", "req/s", "p50 ms", "p95 ms", "mean ms",
                     "slower than bare"], rows))
        if args.profile:
            profile(url, list_path)

    real_list, bare_list = results["real list"], results["bare list"]
    real_search_r = results["real search"]
    list_ratio = bare_list.rps / real_list.rps if real_list.rps else float("inf")
    list_ok = list_ratio <= AIM_LIST_RATIO and not real_list.errors
    search_ok = real_search_r.count > 0 and real_search_r.pct_ms(95) < AIM_SEARCH_P95_MS \
        and not real_search_r.errors
    print("\nAims")
    print(f"  list within {AIM_LIST_RATIO}x of the bare route (req/s): {list_ratio:.2f}x "
          f"(p50 {real_list.pct_ms(50) / max(bare_list.pct_ms(50), 1e-9):.2f}x) -> {_verdict(list_ok)}")
    print(f"  live search p95 under {AIM_SEARCH_P95_MS:.0f} ms: {real_search_r.pct_ms(95):.1f} ms "
          f"-> {_verdict(search_ok)}")
    print(f"  query count independent of the number of rows: "
          + ", ".join(f"{n}: {large[n]['queries']}" for n in large) + f" -> {_verdict(counts_ok)}")
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    print(f"Load average now {_load()}.", "Other work was running on this machine: the timings are "
          "pessimistic; run again on a quiet machine." if busy > (os.cpu_count() or 1) else "")
    print("(Benchmarks never fail on time: exit status 0 whatever the figures.)")

    return 0


if __name__ == "__main__":
    sys.exit(main())
