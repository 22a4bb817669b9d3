"""Fixtures for the app side of the integrations, over real HTTP against the stand-ins.

``provider_env`` is parametrised over the coworking systems whose stand-in exists;
adding Nexudus = one more entry in ``PROVIDER_ENVS`` (a factory returning a
:class:`ProviderEnv`). Tests that use ``provider_env`` get an app configured to talk
to that stand-in (``app_config`` below) with a fake clock, so waits are not slept.
"""
from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import pytest

from spheremail.extensions import db as _db


class FakeClock:
    """Shared by the client(s) of one test: ``sleep`` jumps time forward and is recorded."""

    def __init__(self, start: float = 1000.0):
        self.now = start
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.monotonic()

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += max(0.0, seconds)
        if seconds <= 0.02:
            # A short poll (waiting for another thread's request still in flight): let real
            # time pass too, or a thread could spin through its whole wait budget at once.
            time.sleep(0.001)


@dataclass
class ProviderEnv:
    """One coworking system's stand-in plus what the shared tests need to drive it."""

    name: str
    standin: object
    config: dict  # app config pointing the client at the stand-in
    credentials: dict  # good popup credentials
    location_id: str
    location_name: str
    fee_plan_id: str | None
    clock: FakeClock
    add_member: Callable[..., dict]  # (name, email) -> record with the remote id under "id"
    remote_members: Callable[[], list[dict]]  # [{"id", "name", "email"}]
    remote_exports: Callable[[], list[dict]]  # [{"id", "reference"}] one per fee/charge
    fail_export: Callable[..., None]  # (kind, n=1) kind: 429 | 429-long | 500 | timeout | commit_drop | commit_500
    extras: dict = field(default_factory=dict)

    def connect(self, *, invoice_export: bool = True, enabled_at: dt.datetime | None = None):
        """A connected, enabled connection row as the popup would leave it (no sync run)."""
        import json

        from spheremail.crypto import encrypt
        from spheremail.integrations.base import MemoryTokenStore
        from spheremail.integrations.registry import build_provider, spec_for
        from spheremail.models import IntegrationConnection
        from spheremail.models.base import utcnow

        conn = IntegrationConnection.get_or_create(self.name)
        conn.enabled = True
        conn.state = "connected"
        spec = spec_for(self.name)
        if spec.drop_after_token:
            # As the popup does: sign in once, keep the (encrypted) token, not the password.
            store = MemoryTokenStore()
            _db.session.commit()
            build_provider(self.name, self.credentials, token_store=store).check_credentials()
            conn.set_credentials(spec.stored_credentials(self.credentials, store.token))
            conn.token_encrypted = encrypt(json.dumps(store.token))
        else:
            conn.set_credentials(self.credentials)
        conn.location_id, conn.location_name = self.location_id, self.location_name
        conn.invoice_export = invoice_export
        conn.fee_plan_id = self.fee_plan_id
        conn.enabled_at = enabled_at or (utcnow() - dt.timedelta(seconds=1))
        conn.connected_at = conn.enabled_at
        _db.session.commit()
        return conn


def _officernd_env(clock: FakeClock):
    from tests.standins.officernd import OfficeRnDStandIn

    standin = OfficeRnDStandIn(slug="acme", client_id="acme-client", client_secret="acme-secret-123",
                               token_limit=1000, read_limit=100_000, write_limit=100_000, timeout_seconds=1.0)
    loc = standin.add_location("Amsterdam Central")
    standin.add_location("Rotterdam Port")
    plan_id = standin.add_plan("Mailbox fees")
    standin.start()

    def add_member(name, email, **extra):
        record = standin.add_member(name, email, loc["_id"], **extra)
        return {**record, "id": record["_id"]}

    def remote_members():
        return [{"id": m["_id"], "name": m["name"], "email": m["email"]} for m in standin.members.values()]

    def remote_exports():
        return [{"id": f["_id"], "reference": (f.get("properties") or {}).get("spheremailInvoice"),
                 "name": f["name"], "member": f.get("member"), "price": f.get("price")}
                for f in standin.fees.values()]

    def fail_export(kind, n=1):
        if kind == "429":
            standin.fail_next(n, status=429, method="POST", path="/fees", retry_after=1)
        elif kind == "429-long":
            standin.fail_next(n, status=429, method="POST", path="/fees", retry_after=3600)
        elif kind == "500":
            standin.fail_next(n, status=503, method="POST", path="/fees")
        elif kind == "timeout":
            standin.timeout_next(n, method="POST", path="/fees", seconds=1.0)
        elif kind == "commit_drop":
            standin.commit_then_fail(n, path="/fees", drop=True)
        elif kind == "commit_500":
            standin.commit_then_fail(n, path="/fees")
        elif kind == "refused":
            standin.fail_next(n, status=400, method="POST", path="/fees")
        else:
            raise ValueError(kind)

    config = {
        "OFFICERND_TOKEN_URL": standin.token_url,
        "OFFICERND_API_BASE": standin.api_base,
        "INTEGRATIONS_CLIENT_OPTIONS": {"clock": clock.monotonic, "sleep": clock.sleep,
                                        "wall_clock": clock.time, "timeout": 0.5, "max_wait": 30,
                                        "backoff": 0.01},
    }
    env = ProviderEnv(
        name="officernd", standin=standin, config=config,
        credentials={"client_id": "acme-client", "client_secret": "acme-secret-123", "slug": "acme"},
        location_id=loc["_id"], location_name="Amsterdam Central", fee_plan_id=plan_id, clock=clock,
        add_member=add_member, remote_members=remote_members, remote_exports=remote_exports,
        fail_export=fail_export,
    )
    return env, standin.stop


NEXUDUS_EMAIL = "ops@space.test"
NEXUDUS_PASSWORD = "s3cret-Passw0rd"
CHARGES = "/api/billing/charges"


def _nexudus_env(clock: FakeClock):
    """The Nexudus stand-in on the test's fake clock, with its published limits ON: the
    client paces itself on the same clock, so a 409 only comes from an injected fault."""
    from spheremail.integrations.nexudus import RateLimiter
    from tests.standins.nexudus import NexudusStandin

    standin = NexudusStandin(clock=clock.monotonic)
    standin.add_user(NEXUDUS_EMAIL, NEXUDUS_PASSWORD)
    central = standin.add_business("Amsterdam Central", currency="EUR", country_id=1205, time_zone_id=2045)
    standin.add_business("Rotterdam Port", currency="EUR", country_id=1205, time_zone_id=2045)
    # "429-long": the next 409s carry a Retry-After far beyond what a run waits (the
    # stand-in's own header is fixed, so rewrite it here, once per fault).
    long_409s = {"n": 0}

    @standin.app.after_request
    def _long_retry_after(response):
        if response.status_code == 409 and long_409s["n"] > 0:
            long_409s["n"] -= 1
            response.headers["Retry-After"] = "3600"
        return response

    standin.start()

    def add_member(name, email, **extra):
        record = standin.add_coworker(name, email, business_id=central["Id"], **extra)
        return {**record, "id": str(record["Id"])}

    def remote_members():
        with standin.lock:
            rows = list(standin.coworkers.values())
        return [{"id": str(c["Id"]), "name": c["FullName"], "email": c["Email"]} for c in rows]

    def remote_exports():
        with standin.lock:
            rows = list(standin.charges.values())
        return [{"id": str(c["Id"]), "reference": c.get("PurchaseOrder"), "name": c.get("Description"),
                 "member": str(c.get("CoworkerId")), "price": c.get("TotalAmount"),
                 "quantity": c.get("Quantity"), "business": c.get("BusinessId")} for c in rows]

    def fail_export(kind, n=1):
        if kind == "429":
            standin.throttle_next(n, method="POST", path=CHARGES)
        elif kind == "429-long":
            long_409s["n"] += n
            standin.throttle_next(n, method="POST", path=CHARGES)
        elif kind == "500":
            standin.fail_next(n, status=503, method="POST", path=CHARGES)
        elif kind == "timeout":
            standin.timeout_next(n, method="POST", path=CHARGES, seconds=1.0)
        elif kind == "commit_drop":
            standin.lose_answer_next(n, path=CHARGES, mode="drop")
        elif kind == "commit_500":
            standin.lose_answer_next(n, path=CHARGES, mode="500")
        elif kind == "refused":
            standin.fail_command_next(n, method="POST", path=CHARGES)
        else:
            raise ValueError(kind)

    # One limiter for every client of the test, as in production (one per process and
    # host): with a fake clock each client would otherwise get its own.
    limiter = RateLimiter(clock=clock.monotonic)
    config = {
        "NEXUDUS_API_BASE": standin.base_url,
        "INTEGRATIONS_CLIENT_OPTIONS": {"clock": clock.monotonic, "sleep": clock.sleep,
                                        "wall_clock": clock.time, "timeout": 0.5, "max_wait": 30,
                                        "backoff": 0.01, "limiter": limiter},
    }
    env = ProviderEnv(
        name="nexudus", standin=standin, config=config,
        credentials={"email": NEXUDUS_EMAIL, "password": NEXUDUS_PASSWORD},
        location_id=str(central["Id"]), location_name="Amsterdam Central", fee_plan_id=None, clock=clock,
        add_member=add_member, remote_members=remote_members, remote_exports=remote_exports,
        fail_export=fail_export, extras={"business": central},
    )
    return env, standin.stop


PROVIDER_ENVS: dict[str, Callable[[FakeClock], tuple[ProviderEnv, Callable[[], None]]]] = {
    "officernd": _officernd_env,
    "nexudus": _nexudus_env,
}


@pytest.fixture(params=sorted(PROVIDER_ENVS))
def provider_env(request):
    """A running stand-in of one coworking system and helpers to drive it."""
    env, stop = PROVIDER_ENVS[request.param](FakeClock())
    yield env
    stop()


@pytest.fixture
def officernd_env():
    """The OfficeRnD stand-in only (OfficeRnD-specific tests: the popup's fields, fee plan)."""
    env, stop = _officernd_env(FakeClock())
    yield env
    stop()


@pytest.fixture
def nexudus_env():
    """The Nexudus stand-in only (Nexudus-specific tests: 409s, tokens, substring emails)."""
    env, stop = _nexudus_env(FakeClock())
    yield env
    stop()


@pytest.fixture
def app_config(request):
    """Point the app's clients at the stand-in of the test's provider environment."""
    for name in ("provider_env", "officernd_env", "nexudus_env"):
        if name in request.fixturenames:
            return dict(request.getfixturevalue(name).config)
    return {}


@pytest.fixture(autouse=True)
def _join_background_work(request):
    """Background sync threads must finish before the database is torn down (set up after
    ``app`` so this teardown runs before the app's)."""
    if "app" in request.fixturenames:
        request.getfixturevalue("app")
    yield
    if "app" in request.fixturenames:
        from spheremail.services.member_sync import wait_for_background

        wait_for_background(30)
