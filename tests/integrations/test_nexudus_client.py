"""NexudusProvider against the local Nexudus stand-in, over real HTTP.

Nothing here asserts on elapsed time: throttling and pacing are checked by counting
requests and 409 answers on both sides. Rate limits run 100 times faster (the stand-in's
``scale`` and the client's ``time_scale``) so the published shapes still apply.
"""
from __future__ import annotations

import datetime as dt
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
import requests

from spheremail.integrations.base import (InvoiceExport, MemoryTokenStore, NewMember,
                                          OutcomeUnknown, ProviderError)
from spheremail.integrations.nexudus import NexudusProvider
from tests.standins.nexudus import NexudusStandin

EMAIL = "ops@space.test"
PASSWORD = "s3cret-Passw0rd"
SCALE = 100  # limits: 1 request per 1 ms, 120 per 0.6 s, 60 writes per 0.6 s


class FakeTime:
    """A clock that only moves when the code under test sleeps; records every sleep."""

    def __init__(self, start: float = 1000.0):
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def make_standin():
    """Start stand-ins (with one API user and two businesses); stop them after the test."""
    started = []

    def make(**kw) -> NexudusStandin:
        kw.setdefault("scale", SCALE)
        standin = NexudusStandin(**kw)
        standin.add_user(EMAIL, PASSWORD)
        standin.central = standin.add_business("Central", currency="EUR", country_id=1205,
                                               time_zone_id=2045)
        standin.harbour = standin.add_business("Harbour", currency="GBP", country_id=1234,
                                               time_zone_id=2001)
        standin.start()
        started.append(standin)
        return standin

    yield make
    for standin in started:
        standin.stop()


@pytest.fixture
def standin(make_standin) -> NexudusStandin:
    return make_standin()


def provider_for(standin: NexudusStandin, email=EMAIL, password=PASSWORD, **kw) -> NexudusProvider:
    """A provider pointed at ``standin`` with its limits mirrored and short timeouts."""
    kw.setdefault("token_store", MemoryTokenStore())
    kw.setdefault("timeout", 1.0)
    kw.setdefault("time_scale", SCALE)
    kw.setdefault("backoff", 0.01)
    kw.setdefault("max_wait", 5)
    return NexudusProvider(email, password, api_base=standin.base_url, **kw)


def export_for(member_id: str, location_id: str, number: str = "INV-2025-0007",
               total: str = "123.45", currency: str = "EUR") -> InvoiceExport:
    return InvoiceExport(invoice_number=number, member_id=member_id, location_id=location_id,
                         total=Decimal(total), currency=currency,
                         issue_date=dt.date(2025, 3, 1), description="Mail handling, March")


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


# ---------------------------------------------------------------- auth


def test_password_grant_keeps_tokens_not_password(standin):
    store = MemoryTokenStore()
    provider = provider_for(standin, token_store=store)

    provider.check_credentials()

    assert standin.count("POST", "/api/token") == 1
    assert standin.count("GET", "/api/sys/businesses") == 1
    assert set(store.token) >= {"access_token", "refresh_token", "expires_at"}
    assert store.token["access_token"] in standin.access_tokens
    assert PASSWORD not in repr(store.token)
    assert provider._password is None  # the password is not kept after connecting

    # A later process needs only the store: no new sign-in.
    later = provider_for(standin, email=None, password=None, token_store=store)
    assert [loc.name for loc in later.locations()] == ["Central", "Harbour"]
    assert standin.count("POST", "/api/token") == 1


def test_locations_keep_country_and_time_zone(standin):
    locations = provider_for(standin).locations()
    central = next(loc for loc in locations if loc.name == "Central")
    assert central.id == str(standin.central["Id"])
    assert central.raw["CountryId"] == 1205
    assert central.raw["SimpleTimeZoneId"] == 2045


def test_refresh_token_rotates_and_old_one_dies(standin):
    store = MemoryTokenStore()
    provider = provider_for(standin, token_store=store)
    provider.check_credentials()
    old_refresh = store.token["refresh_token"]

    standin.expire_all_tokens()
    provider.locations()  # 401 -> refresh -> repeat

    assert provider.stats["refreshes"] == 1
    assert store.token["refresh_token"] != old_refresh
    assert store.token["access_token"] in standin.access_tokens
    assert standin.statuses[401] == 1
    reused = requests.post(f"{standin.base_url}/api/token",
                           data={"grant_type": "refresh_token", "refresh_token": old_refresh})
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"


def test_dead_refresh_token_asks_for_reconnect(standin):
    store = MemoryTokenStore()
    provider_for(standin, token_store=store).check_credentials()
    stale = dict(store.token)  # e.g. a backup restored after the token rotated
    standin.expire_all_tokens()
    provider_for(standin, token_store=store).locations()  # rotates; `stale` is dead now

    standin.expire_all_tokens()
    with pytest.raises(ProviderError) as err:
        provider_for(standin, None, None, token_store=MemoryTokenStore(stale)).locations()
    assert err.value.kind == "auth"
    assert "reconnect needed" in err.value.message


def test_second_worker_uses_the_refresh_done_by_the_first(standin):
    store = MemoryTokenStore()
    lock = threading.Lock()
    first = provider_for(standin, token_store=store, refresh_lock=lock)
    first.check_credentials()
    second = provider_for(standin, None, None, token_store=store, refresh_lock=lock)
    second.locations()  # both now hold the same access token in memory
    standin.expire_all_tokens()

    first.locations()
    second.locations()  # 401, then finds the new token in the store: no second refresh

    assert first.stats["refreshes"] == 1
    assert second.stats["refreshes"] == 0
    assert standin.count("POST", "/api/token") == 2  # one password grant, one refresh


def test_refresh_lock_may_be_a_callable_returning_a_context_manager(standin):
    entered = []
    lock = threading.Lock()

    class Lease:
        def __enter__(self):
            lock.acquire()
            entered.append(True)

        def __exit__(self, *exc):
            lock.release()

    provider = provider_for(standin, refresh_lock=Lease)
    provider.check_credentials()
    standin.expire_all_tokens()
    provider.locations()
    assert entered == [True]


def test_token_expiry_in_the_middle_of_paging(standin):
    ids = standin.seed_coworkers(2500)  # 3 pages of 1,000
    provider = provider_for(standin)
    provider.check_credentials()

    members = provider.iter_members()
    first = next(members)
    standin.expire_all_tokens()  # between page 1 and page 2
    rest = list(members)

    assert [first.id] + [m.id for m in rest] == [str(i) for i in ids]
    assert provider.stats["refreshes"] == 1
    assert standin.count("GET", "/api/spaces/coworkers") == 4  # 3 pages + the one refused
    assert standin.statuses[401] == 1


def test_expired_token_is_refreshed_before_the_call(make_standin):
    server_time = FakeTime()
    standin = make_standin(token_ttl=3600, clock=server_time.clock, rate_limits=False)
    wall = FakeTime(start=1_700_000_000)
    provider = provider_for(standin, wall_clock=wall.clock)
    provider.check_credentials()

    server_time.now += 3601  # the server no longer accepts the access token
    wall.now += 3601  # and the client knows it from expires_at
    provider.locations()

    assert standin.statuses[401] == 0
    assert provider.stats["refreshes"] == 1


def test_two_factor_user(standin):
    standin.add_user("twofa@space.test", "pw-2fa", two_factor=True, totp="424242")

    with pytest.raises(ProviderError) as err:
        provider_for(standin, "twofa@space.test", "pw-2fa").check_credentials()
    assert err.value.kind == "two_factor"

    with pytest.raises(ProviderError) as err:
        provider_for(standin, "twofa@space.test", "pw-2fa", totp="000000").check_credentials()
    assert err.value.kind == "auth"

    provider_for(standin, "twofa@space.test", "pw-2fa", totp="424242").check_credentials()


def test_must_reset_password(standin):
    standin.add_user("reset@space.test", "old-pw", must_reset=True)
    with pytest.raises(ProviderError) as err:
        provider_for(standin, "reset@space.test", "old-pw").check_credentials()
    assert err.value.kind == "auth"
    assert "reset" in err.value.message


def test_user_without_api_access(standin):
    standin.add_user("noapi@space.test", "pw-noapi", api_access=False)
    store = MemoryTokenStore()
    with pytest.raises(ProviderError) as err:
        provider_for(standin, "noapi@space.test", "pw-noapi", token_store=store).check_credentials()
    assert err.value.kind == "scope"
    assert "no API access" in err.value.message
    assert store.token is not None  # the sign-in itself worked


def test_wrong_password(standin):
    with pytest.raises(ProviderError) as err:
        provider_for(standin, EMAIL, "not-the-password").check_credentials()
    assert err.value.kind == "auth"
    assert "incorrect" in err.value.message
    assert "not-the-password" not in err.value.message


def test_unreachable_host():
    fake = FakeTime()
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(ProviderError) as err:
        NexudusProvider(EMAIL, PASSWORD, api_base=url, token_store=MemoryTokenStore(),
                        timeout=1, sleep=fake.sleep, clock=fake.clock).check_credentials()
    assert err.value.kind == "unreachable"

    # With a token already stored, reads are retried with backoff before giving up.
    token = {"access_token": "a", "refresh_token": "r", "expires_at": 4e9}
    provider = NexudusProvider(api_base=url, token_store=MemoryTokenStore(token), timeout=1,
                               sleep=fake.sleep, clock=fake.clock, read_retries=3)
    with pytest.raises(ProviderError) as err:
        provider.locations()
    assert err.value.kind == "unreachable"
    assert provider.stats["requests"] == 4
    assert provider.stats["retries"] == 3


# ---------------------------------------------------------------- members


def test_email_filter_is_substring_so_client_matches_exactly(standin):
    joann = standin.add_coworker("Joann Long", "joann@x.com")
    ann = standin.add_coworker("Ann Short", "Ann@X.com")
    provider = provider_for(standin)

    # The stand-in (like Nexudus, possibly) answers both for ann@x.com ...
    raw = requests.get(f"{standin.base_url}/api/spaces/coworkers",
                       params={"Coworker_Email": "ann@x.com"}, auth=(EMAIL, PASSWORD)).json()
    assert {r["Id"] for r in raw["Records"]} == {joann["Id"], ann["Id"]}
    # ... and the client keeps only the exact, case-insensitive match.
    found = provider.find_member_by_email("ann@x.com")
    assert found is not None and found.id == str(ann["Id"])
    assert provider.find_member_by_email("nn@x.com") is None
    assert provider.find_member_by_email("JOANN@x.com").id == str(joann["Id"])


def test_search_members_by_name_and_email(standin):
    standin.add_coworker("Ann Short", "ann@x.com", CompanyName="Short Ltd")
    standin.add_coworker("Bob Tall", "bob@annex.test")
    standin.add_coworker("Carl Other", "carl@y.com", Archived=True)
    provider = provider_for(standin)

    assert {m.email for m in provider.search_members("ann")} == {"ann@x.com", "bob@annex.test"}
    assert [m.name for m in provider.search_members("carl@y.com")] == ["Carl Other"]
    assert provider.search_members("carl@y.com")[0].active is False
    assert len(provider.search_members("a", limit=1)) == 1
    assert provider.search_members("   ") == []


def test_create_member_uses_the_business_country_and_time_zone(standin):
    provider = provider_for(standin)
    member = provider.create_member(NewMember(name="Dana New", email="dana@new.test",
                                              location_id=str(standin.harbour["Id"]),
                                              company="Dana Co"))
    stored = standin.coworkers[int(member.id)]
    assert stored["CountryId"] == 1234
    assert stored["SimpleTimeZoneId"] == 2001
    assert stored["InvoicingBusinessId"] == standin.harbour["Id"]
    assert stored["CoworkerType"] == 1
    assert stored["CreateUser"] is False
    assert stored["CompanyName"] == "Dana Co"
    assert member.email == "dana@new.test"
    # The businesses were read once and cached for the next create.
    provider.create_member(NewMember(name="Eve", email="eve@new.test",
                                     location_id=str(standin.harbour["Id"])))
    assert standin.count("GET", "/api/sys/businesses") == 1


def test_create_member_duplicate_email_is_invalid(standin):
    standin.add_coworker("Dana Old", "dana@new.test")
    with pytest.raises(ProviderError) as err:
        provider_for(standin).create_member(NewMember(name="Dana New", email="DANA@new.test",
                                                      location_id=str(standin.central["Id"])))
    assert err.value.kind == "invalid"
    assert "already" in err.value.message
    assert err.value.status == 400


# ---------------------------------------------------------------- export


def test_export_invoice_creates_one_charge(standin):
    coworker = standin.add_coworker("Ann", "ann@x.com")
    provider = provider_for(standin)
    charge_id = provider.export_invoice(export_for(str(coworker["Id"]), str(standin.central["Id"])))

    charge = standin.charges[int(charge_id)]
    assert charge["CoworkerId"] == coworker["Id"]
    assert charge["BusinessId"] == standin.central["Id"]
    assert (charge["Quantity"], charge["DiscountAmount"], charge["CreditAmount"]) == (1, 0, 0)
    assert Decimal(str(charge["TotalAmount"])) == Decimal("123.45")
    assert charge["PurchaseOrder"] == "INV-2025-0007"
    assert "INV-2025-0007" in charge["Description"]
    assert charge["SaleDate"].startswith("2025-03-01")
    assert provider.find_export("INV-2025-0007") == charge_id
    assert provider.find_export("INV-2025-000") is None  # substring is not a match


def test_export_in_another_currency_is_refused_before_sending(standin):
    coworker = standin.add_coworker("Ann", "ann@x.com")
    with pytest.raises(ProviderError) as err:
        provider_for(standin).export_invoice(export_for(str(coworker["Id"]),
                                                        str(standin.harbour["Id"])))
    assert err.value.kind == "invalid"
    assert standin.count("POST", "/api/billing/charges") == 0


def test_was_successful_false_on_200_is_an_error(standin):
    coworker = standin.add_coworker("Ann", "ann@x.com")
    standin.fail_command_next(path="/api/billing/charges", message="Billing is locked.")
    with pytest.raises(ProviderError) as err:
        provider_for(standin).export_invoice(export_for(str(coworker["Id"]),
                                                        str(standin.central["Id"])))
    assert type(err.value) is ProviderError  # a known refusal, not an unknown outcome
    assert err.value.kind == "invalid"
    assert "Billing is locked." in err.value.message
    assert standin.charges == {}


def test_400_envelope_errors_become_invalid_with_messages(standin):
    with pytest.raises(ProviderError) as err:
        provider_for(standin).export_invoice(export_for("999999", str(standin.central["Id"])))
    assert err.value.kind == "invalid"
    assert "CoworkerId: Customer not found." in err.value.message
    assert err.value.details[0]["PropertyName"] == "CoworkerId"


@pytest.mark.parametrize("mode", ["drop", "500", "timeout"])
def test_charge_committed_but_answer_lost(standin, mode):
    coworker = standin.add_coworker("Ann", "ann@x.com")
    provider = provider_for(standin, timeout=0.5)
    provider.locations()  # sign in first, so the fault hits the charge
    standin.lose_answer_next(path="/api/billing/charges", mode=mode, seconds=1.5)

    with pytest.raises(OutcomeUnknown):
        provider.export_invoice(export_for(str(coworker["Id"]), str(standin.central["Id"])))

    assert standin.count("POST", "/api/billing/charges") == 1  # never re-sent blindly
    [charge] = standin.charges_for("INV-2025-0007")
    assert provider.find_export("INV-2025-0007") == str(charge["Id"])


def test_dropped_write_before_processing_is_unknown_too(standin):
    coworker = standin.add_coworker("Ann", "ann@x.com")
    provider = provider_for(standin)
    provider.locations()
    standin.drop_next(path="/api/billing/charges")
    with pytest.raises(OutcomeUnknown):
        provider.export_invoice(export_for(str(coworker["Id"]), str(standin.central["Id"])))
    assert provider.find_export("INV-2025-0007") is None  # safe to export again


def test_reads_are_retried_on_5xx_and_timeouts(standin):
    fake = FakeTime()
    standin.set_limits(enabled=False)  # the fake clock does not pace in real time
    provider = provider_for(standin, sleep=fake.sleep, clock=fake.clock, timeout=0.5)
    provider.check_credentials()
    standin.fail_next(2, status=503, path="/api/sys/businesses")
    standin.timeout_next(1, seconds=1.5, path="/api/sys/businesses")

    assert len(provider.locations()) == 2
    assert provider.stats["retries"] == 3
    assert standin.count("GET", "/api/sys/businesses") == 5


def test_reads_give_up_after_retries_with_remote(standin):
    fake = FakeTime()
    standin.set_limits(enabled=False)
    provider = provider_for(standin, sleep=fake.sleep, clock=fake.clock, read_retries=2)
    provider.check_credentials()
    standin.fail_next(5, status=500, path="/api/sys/businesses")
    with pytest.raises(ProviderError) as err:
        provider.locations()
    assert err.value.kind == "remote"
    assert standin.count("GET", "/api/sys/businesses") == 1 + 3


# ---------------------------------------------------------------- limits


def test_409_retry_after_is_honoured_and_the_request_repeated(standin):
    fake = FakeTime()
    standin.set_limits(enabled=False)
    coworker = standin.add_coworker("Ann", "ann@x.com")
    provider = provider_for(standin, sleep=fake.sleep, clock=fake.clock)
    provider.check_credentials()
    standin.throttle_next(2, path="/api/billing/charges")

    charge_id = provider.export_invoice(export_for(str(coworker["Id"]),
                                                   str(standin.central["Id"])))

    assert standin.throttled == 2 and provider.throttled == 2
    assert standin.count("POST", "/api/billing/charges") == 3
    assert len(standin.charges) == 1 and str(next(iter(standin.charges))) == charge_id
    assert sum(s for s in fake.sleeps if s >= 0.99) >= 2.0  # waited Retry-After: 1, twice


def test_409_longer_than_max_wait_raises_rate_limited(standin):
    fake = FakeTime()
    standin.set_limits(enabled=False)
    provider = provider_for(standin, sleep=fake.sleep, clock=fake.clock, max_wait=0.5)
    provider.check_credentials()
    standin.reset_counters()
    standin.throttle_next(1, path="/api/sys/businesses")
    with pytest.raises(ProviderError) as err:
        provider.locations()
    assert err.value.kind == "rate_limited"
    assert err.value.retry_after == 1.0
    assert standin.count("GET", "/api/sys/businesses") == 1


def test_day_limit_used_up_raises_rate_limited_without_sending(standin):
    coworker = standin.add_coworker("Ann", "ann@x.com")
    provider = provider_for(standin, writes_per_day=2, time_scale=1, min_interval=0.001,
                            per_minute=60000, writes_per_minute=60000, max_wait=5)
    standin.set_limits(enabled=False)
    for n in range(2):
        provider.export_invoice(export_for(str(coworker["Id"]), str(standin.central["Id"]),
                                           number=f"INV-{n}"))
    with pytest.raises(ProviderError) as err:
        provider.export_invoice(export_for(str(coworker["Id"]), str(standin.central["Id"]),
                                           number="INV-2"))
    assert err.value.kind == "rate_limited"
    assert err.value.retry_after > 5
    assert standin.count("POST", "/api/billing/charges") == 2


def test_client_pacing_sends_a_burst_of_writes_without_a_single_409(standin):
    coworker = standin.add_coworker("Ann", "ann@x.com")
    business = str(standin.central["Id"])
    provider = provider_for(standin)  # same limits, same time scale as the stand-in
    exports = [export_for(str(coworker["Id"]), business, number=f"INV-{n:04d}")
               for n in range(90)]  # more than the 60 writes one (scaled) minute allows

    with ThreadPoolExecutor(max_workers=4) as pool:  # one shared limiter, several threads
        ids = list(pool.map(provider.export_invoice, exports))

    assert len(set(ids)) == 90 and len(standin.charges) == 90
    assert standin.throttled == 0 and provider.throttled == 0

    # The same burst without pacing does get throttled: the limit in this test is real.
    standin.set_limits(scale=SCALE)  # forget what was counted so far
    auth = (EMAIL, PASSWORD)
    body = {"CoworkerId": coworker["Id"], "BusinessId": standin.central["Id"], "Quantity": 1,
            "DiscountAmount": 0, "CreditAmount": 0, "TotalAmount": 1}

    def unpaced(_):
        return requests.post(f"{standin.base_url}/api/billing/charges", json=body,
                             auth=auth).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(unpaced, range(90)))
    assert statuses.count(409) > 0
    assert standin.throttled == statuses.count(409)


# ---------------------------------------------------------------- control over HTTP


def test_control_endpoints(standin):
    base = standin.base_url
    assert requests.post(f"{base}/_control/seed", json={"coworkers": 30}).json()["count"] == 30
    requests.post(f"{base}/_control/fail", json={"count": 1, "status": 502,
                                                  "path": "/api/sys/businesses"})
    first = requests.get(f"{base}/api/sys/businesses", auth=(EMAIL, PASSWORD))
    assert first.status_code == 502
    requests.post(f"{base}/_control/throttle", json={"count": 1})
    throttled = requests.get(f"{base}/api/sys/businesses", auth=(EMAIL, PASSWORD))
    assert throttled.status_code == 409
    assert throttled.headers["Retry-After"] == "1" and throttled.content == b""
    counters = requests.get(f"{base}/_control/counters").json()
    assert counters["requests"]["GET /api/sys/businesses"] == 2
    assert counters["throttled"] == 1
    assert len(requests.get(f"{base}/_control/coworkers").json()) == 30
    token = requests.post(f"{base}/api/token", data={"grant_type": "password", "username": EMAIL,
                                                     "password": PASSWORD}).json()
    requests.post(f"{base}/_control/expire-tokens")
    expired = requests.get(f"{base}/api/sys/businesses",
                           headers={"Authorization": f"Bearer {token['access_token']}"})
    assert expired.status_code == 401


def test_limiter_paces_writes_from_their_estimated_arrival_not_their_answer():
    """The server counts a write when it arrives, between our send and its answer: the next
    write may leave one interval after that, not one interval after the answer (which would
    add a whole round trip to every write); a slow answer or a failure moves it later."""
    from spheremail.integrations.nexudus import RateLimiter

    now = {"t": 0.0}
    limiter = RateLimiter(clock=lambda: now["t"], writes_per_minute=60, per_minute=60_000,
                          min_interval=0.001)  # one write a second binds
    slot, _ = limiter.try_acquire(True)
    now["t"] = 0.2
    # Still in flight: its arrival is not known yet, so it holds the way (wait for its answer).
    assert limiter.try_acquire(True) == (None, 0.0)
    limiter.release(slot, answered=True)  # the fastest round trip so far: 0.2 s
    _, wait = limiter.try_acquire(True)
    assert wait == pytest.approx(0.9)  # counted at ~0.1 s: free at 1.1 s (not 1.2 s)

    now["t"] = 1.1
    slot, wait = limiter.try_acquire(True)
    assert slot is not None and wait == 0
    now["t"] = 2.1  # a slow answer (1 s): it may have arrived as late as 2.0 s
    limiter.release(slot, answered=True)
    assert limiter.try_acquire(True)[1] == pytest.approx(0.9)

    now["t"] = 3.0
    slot, _ = limiter.try_acquire(True)
    now["t"] = 3.5
    limiter.release(slot)  # no answer (timeout): it may have been counted until now
    assert limiter.try_acquire(True)[1] == pytest.approx(1.0)
