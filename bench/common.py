"""Helpers the benchmarks share: a throw-away database, bulk seeding, gunicorn on a free
port, logging in through the real form, a bounded HTTP load loop and plain-text tables.

Benchmarks print numbers; they never fail on time. Everything here talks to 127.0.0.1 only.
"""
from __future__ import annotations

import contextlib
import http.client
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_PASSWORD = "bench password 123"
BENCH_OPERATOR_EMAIL = "bench-operator@example.test"
# Cheap hashing keeps the single login fast; the hash method does not matter to a page benchmark.
BENCH_HASH_METHOD = "pbkdf2:sha256:1000"


def quiet_environment() -> None:
    """Keys from the environment so creating an app writes nothing into instance/."""
    os.environ.setdefault("SECRET_KEY", "bench-" + uuid.uuid4().hex)
    if not os.environ.get("SPHEREMAIL_ENCRYPTION_KEYS"):
        from cryptography.fernet import Fernet

        os.environ["SPHEREMAIL_ENCRYPTION_KEYS"] = Fernet.generate_key().decode()
    os.environ["SPHEREMAIL_SCHEDULER"] = "0"  # the scheduler never ticks in a benchmark


# --- databases ------------------------------------------------------------------------------

def normalize_url(url: str) -> str:
    """The short PostgreSQL forms, with the psycopg 3 driver we ship (as config.py does)."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


@contextlib.contextmanager
def temporary_database(label: str = "bench"):
    """Yield the URL of an empty database that is removed afterwards.

    With DATABASE_URL pointing at PostgreSQL: a database of our own on that server
    (created and dropped like tests/conftest.py does). Otherwise a SQLite file in a
    temporary folder.
    """
    base = normalize_url(os.environ.get("DATABASE_URL", "").strip())
    if not base.startswith("postgresql"):
        folder = tempfile.mkdtemp(prefix=f"spheremail-{label}-")
        try:
            yield f"sqlite:///{Path(folder) / 'bench.sqlite3'}"
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    from sqlalchemy import create_engine, text

    name = f"spheremail_{label}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": name})
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def make_app(database_url: str, **extra):
    """The real app on ``database_url``, configured like the tests (no scheduler, no CSRF,
    queries recorded) for in-process measurements and seeding."""
    quiet_environment()
    from spheremail import create_app

    config = {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "WTF_CSRF_ENABLED": False,
        "SCHEDULER_ENABLED": False,
        "PASSWORD_HASH_METHOD": BENCH_HASH_METHOD,
        "MAIL_SUPPRESS": True,
        "SQLALCHEMY_RECORD_QUERIES": True,
    }
    config.update(extra)
    app = create_app(config)
    # create_app logs at INFO for a server; a benchmark's output is its table.
    import logging

    logging.getLogger().setLevel(logging.WARNING)
    return app


# --- seeding in bulk ------------------------------------------------------------------------

FIRST_NAMES = (
    "Ada Alan Amara Ana Anika Arjun Beatriz Bilal Carla Chen Chloe Daniel Dmitri Elena Emma Fatima "
    "Felix Grace Hana Hugo Ines Ivan Jamal Jana Jonas Julia Kai Karim Laura Leila Liam Lucas Maya "
    "Mei Mohammed Nadia Noah Nora Olga Omar Paula Pedro Priya Rafael Rosa Sara Sofia Tariq Tom "
    "Valentina Wei Yusuf Zara Zoe"
).split()
LAST_NAMES = (
    "Abbott Adeyemi Alvarez Andersen Baker Becker Bianchi Brown Castillo Chen Costa Dubois Dupont "
    "Evans Fischer Garcia Gonzalez Green Hansen Hoffmann Ibrahim Ito Jansen Johnson Kim Kowalski "
    "Larsen Lee Lopez Martin Martinez Meyer Moreau Muller Nakamura Nguyen Novak Okafor Olsen Patel "
    "Perez Petrov Ricci Rossi Santos Schmidt Silva Smith Smithson Suzuki Tanaka Taylor Thomas "
    "Walker Wang Weber Williams Wilson Wright Young Zimmermann"
).split()
COMPANY_WORDS = (
    "Atlas Beacon Cedar Delta Ember Fjord Granite Harbor Indigo Juniper Kestrel Lumen Meridian "
    "Nimbus Orchard Pioneer Quartz Riverstone Summit Tidal Umbra Vertex Willow Zenith"
).split()
COMPANY_SUFFIXES = ("Ltd", "GmbH", "LLC", "Studio", "Labs", "Consulting", "& Co", "Partners")


def seed_people(customers: int, recipients: int, *, rng_seed: int = 7, inactive_share: float = 0.1,
                first_mailbox: int = 101, batch: int = 2_000) -> dict:
    """Insert ``customers`` customer logins + profiles and ``recipients`` recipients in bulk.

    Call inside an app context on an empty schema. Ids are given explicitly so the
    customers can point at their users without a round trip; on PostgreSQL the id
    sequences are moved past them afterwards. Customers get mailbox numbers
    ``first_mailbox``, ``first_mailbox + 1``, ...; about ``inactive_share`` are inactive.
    Returns {"customers": n, "recipients": n, "first_user_id": id}.
    """
    from sqlalchemy import func, insert, select

    from spheremail.extensions import db
    from spheremail.models import Customer, Recipient, User
    from spheremail.models.base import utcnow

    rng = random.Random(rng_seed)
    now = utcnow()
    first_user_id = (db.session.execute(select(func.max(User.id))).scalar() or 0) + 1
    first_customer_id = (db.session.execute(select(func.max(Customer.id))).scalar() or 0) + 1
    first_recipient_id = (db.session.execute(select(func.max(Recipient.id))).scalar() or 0) + 1

    def chunks(rows):
        for start in range(0, len(rows), batch):
            yield rows[start:start + batch]

    users, profiles = [], []
    for i in range(customers):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        company = (f"{rng.choice(COMPANY_WORDS)} {rng.choice(COMPANY_SUFFIXES)}"
                   if rng.random() < 0.5 else None)
        users.append({"id": first_user_id + i, "email": f"{first}.{last}.{i}@example.com".lower(),
                      "role": "customer", "password_hash": None, "is_enabled": True,
                      "failed_logins": 0, "created_at": now})
        profiles.append({"id": first_customer_id + i, "user_id": first_user_id + i,
                         "first_name": first, "last_name": last, "company": company,
                         "phone": f"+1 555 {rng.randrange(1000, 9999)}",
                         "mailbox_number": first_mailbox + i,
                         "status": "inactive" if rng.random() < inactive_share else "active",
                         "signed_up_via": "staff", "created_at": now, "updated_at": now})
    for rows in chunks(users):
        db.session.execute(insert(User), rows)
    for rows in chunks(profiles):
        db.session.execute(insert(Customer), rows)
    extra = []
    for i in range(recipients):
        extra.append({"id": first_recipient_id + i,
                      "customer_id": first_customer_id + rng.randrange(customers),
                      "first_name": rng.choice(FIRST_NAMES), "last_name": rng.choice(LAST_NAMES),
                      "company": None, "status": rng.choice(("free", "paid", "paid", "inactive")),
                      "created_at": now})
    for rows in chunks(extra):
        db.session.execute(insert(Recipient), rows)
    db.session.commit()
    fix_sequences()
    analyze()
    return {"customers": customers, "recipients": recipients, "first_user_id": first_user_id}


def seed_operator(email: str = BENCH_OPERATOR_EMAIL, password: str = BENCH_PASSWORD):
    """One operator login with a known password (cheap hash); the caller commits."""
    from werkzeug.security import generate_password_hash

    from spheremail.extensions import db
    from spheremail.models import User

    user = User(email=email, role="operator",
                password_hash=generate_password_hash(password, method=BENCH_HASH_METHOD))
    db.session.add(user)
    db.session.flush()
    return user


def analyze() -> None:
    """PostgreSQL: refresh the planner statistics after a bulk load.

    Autovacuum would do it a little later on a real server; without it the planner
    believes the tables are nearly empty and picks plans ~30x slower (a 10,000-row
    nested loop for a 50-row page). SQLite never gathers statistics by itself, so it is
    left as a real install would be.
    """
    from spheremail.extensions import db

    if db.engine.dialect.name != "postgresql":
        return
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")


def fix_sequences() -> None:
    """PostgreSQL: move every id sequence past the ids inserted explicitly."""
    from sqlalchemy import text

    from spheremail.extensions import db

    if db.engine.dialect.name != "postgresql":
        return
    for table in db.metadata.sorted_tables:
        if "id" not in table.c:
            continue
        db.session.execute(text(
            f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
            f"COALESCE((SELECT MAX(id) FROM \"{table.name}\"), 0) + 1, false) "
            f"WHERE pg_get_serial_sequence('{table.name}', 'id') IS NOT NULL"))
    db.session.commit()


# --- serving --------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Gunicorn:
    """``gunicorn <app_spec>`` on a free loopback port, stopped (its whole process group) on exit.

    ``ready_path`` is fetched until it answers below 500, for at most ``timeout`` seconds.
    """

    def __init__(self, app_spec: str, env: dict | None = None, *, workers: int = 2, threads: int = 1,
                 ready_path: str = "/", timeout: float = 30.0, cwd: Path = ROOT):
        self.app_spec, self.workers, self.threads = app_spec, workers, threads
        self.env = {**os.environ, **(env or {})}
        self.ready_path, self.timeout, self.cwd = ready_path, timeout, cwd
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Gunicorn":
        cmd = [sys.executable, "-m", "gunicorn", "--workers", str(self.workers),
               "--threads", str(self.threads), "--bind", f"127.0.0.1:{self.port}",
               "--log-level", "warning", "--timeout", "60", self.app_spec]
        self.proc = subprocess.Popen(cmd, cwd=self.cwd, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn {self.app_spec} exited:\n{self.log()}")
            try:
                status, _ = http_get("127.0.0.1", self.port, self.ready_path, timeout=2)
                if status < 500:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.__exit__(None, None, None)
        raise RuntimeError(f"gunicorn {self.app_spec} did not answer within {self.timeout:.0f}s:\n{self.log()}")

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def __exit__(self, *exc) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # Our own child started in its own session: signal exactly that group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


# --- HTTP -----------------------------------------------------------------------------------

def http_get(host: str, port: int, path: str, headers: dict | None = None,
             timeout: float = 10) -> tuple[int, bytes]:
    """One GET on a fresh connection (gunicorn's sync workers close after each response)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def login_cookie(base_url: str, email: str = BENCH_OPERATOR_EMAIL, password: str = BENCH_PASSWORD,
                 check_path: str = "/") -> str:
    """Log in through the real form (CSRF token taken from the page); returns a Cookie header."""
    import requests

    with requests.Session() as session:
        form = session.get(f"{base_url}/login", timeout=10)
        match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', form.text) or \
            re.search(r'value="([^"]+)"[^>]*name="csrf_token"', form.text)
        if not match:
            raise RuntimeError("no csrf_token on the login form")
        done = session.post(f"{base_url}/login", timeout=10, allow_redirects=False,
                            data={"csrf_token": match.group(1), "email": email, "password": password})
        if done.status_code not in (302, 303):
            raise RuntimeError(f"login failed: HTTP {done.status_code}")
        cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
    status, body = http_get("127.0.0.1", int(base_url.rsplit(":", 1)[1]), check_path,
                            {"Cookie": cookie})
    if status != 200:
        raise RuntimeError(f"logged in, but {check_path} answered HTTP {status}")
    return cookie


@dataclass
class LoadResult:
    """Latencies (seconds) of the timed requests and the wall time they took."""

    name: str
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    errors: int = 0
    concurrency: int = 1

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def rps(self) -> float:
        return self.count / self.elapsed if self.elapsed else 0.0

    def pct_ms(self, p: float) -> float:
        return percentile(self.latencies, p) * 1000

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.latencies) * 1000 if self.latencies else 0.0


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(round(p / 100 * len(ordered) + 0.5))))
    return ordered[rank - 1]


def run_load(name: str, port: int, paths: list[str], headers: dict | None = None, *,
             requests: int = 500, concurrency: int = 2, warmup: int = 30,
             time_limit: float = 60.0) -> LoadResult:
    """``warmup`` untimed GETs, then up to ``requests`` timed GETs from ``concurrency`` threads.

    The paths are used in turn (e.g. several search terms). The loop stops early when
    ``time_limit`` seconds have passed, so a slow page never hangs the benchmark.
    A non-200 answer counts as an error and its latency is not recorded.
    """
    headers = headers or {}
    for i in range(warmup):
        http_get("127.0.0.1", port, paths[i % len(paths)], headers)
    result = LoadResult(name, concurrency=concurrency)
    lock = threading.Lock()
    counter = iter(range(requests))
    deadline = time.monotonic() + time_limit

    def worker():
        while time.monotonic() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            started = time.perf_counter()
            try:
                status, _ = http_get("127.0.0.1", port, paths[i % len(paths)], headers)
            except OSError:
                status = 0
            took = time.perf_counter() - started
            with lock:
                if status == 200:
                    result.latencies.append(took)
                else:
                    result.errors += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(time_limit + 30)
    result.elapsed = time.perf_counter() - started
    return result


# --- output ---------------------------------------------------------------------------------

def table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A plain-text table; ``align`` has one of "l"/"r" per column (default: first left)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if a == "l" else c.rjust(w)
                               for c, w, a in zip(row, widths, align)))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
