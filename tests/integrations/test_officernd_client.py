"""OfficeRnDProvider against the local OfficeRnD stand-in, over real HTTP.

One loopback server serves the whole module; each test gets a fresh stand-in
(swapped in behind it) and a fake clock shared by the stand-in and the client,
so rate-limit waits and token expiry are fast-forwarded instead of slept.
Nothing here asserts on elapsed time.
"""
from __future__ import annotations

import datetime as dt
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
import requests

from spheremail.integrations.base import (InvoiceExport, MemoryTokenStore, NewMember, OutcomeUnknown,
                                          ProviderError)
from spheremail.integrations.officernd import SCOPES, OfficeRnDProvider
from tests.standins.officernd import ALL_SCOPES, OfficeRnDStandIn
from tests.standins.server import start_server

SLUG = "acme"


class FakeClock:
    """A clock for both sides: ``sleep`` records the wait and jumps time forward."""

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

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


class _SwappableApp:
    """A WSGI app that forwards to whichever stand-in the current test installed."""

    app = None

    def __call__(self, environ, start_response):
        return self.app(environ, start_response)


@pytest.fixture(scope="module")
def server():
    """(base_url, swappable app): one real HTTP server for the whole module."""
    swap = _SwappableApp()
    base_url, stop = start_server(swap)
    yield base_url, swap
    stop()


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def make_standin(server, clock):
    """Build a stand-in with one location and one fee plan, served at the module's server."""
    base_url, swap = server
    made = []

    def make(**kwargs) -> OfficeRnDStandIn:
        standin = OfficeRnDStandIn(slug=SLUG, clock=clock.monotonic, timeout_seconds=2.0, **kwargs)
        standin.location = standin.add_location("Main street")["_id"]
        standin.plan = standin.add_plan("Mailbox fees")
        standin.base_url = base_url
        swap.app = standin.app
        made.append(standin)
        return standin

    yield make
    for standin in made:
        standin.stop()  # wakes requests parked in an injected timeout


@pytest.fixture
def standin(make_standin):
    return make_standin()


@pytest.fixture
def make_provider(standin, clock):
    """Build a client pointed at the stand-in; keyword arguments override the defaults."""

    def make(**kwargs) -> OfficeRnDProvider:
        options = dict(token_url=standin.token_url, api_base=standin.api_base,
                       token_store=MemoryTokenStore(), fee_plan_id=standin.plan, timeout=0.5,
                       sleep=clock.sleep, clock=clock.monotonic, wall_clock=clock.time, max_wait=30)
        options.update(kwargs)
        client_id = options.pop("client_id", "test-client")
        secret = options.pop("client_secret", "test-secret")
        slug = options.pop("slug", SLUG)
        return OfficeRnDProvider(client_id, secret, slug, **options)

    return make


@pytest.fixture
def provider(make_provider):
    return make_provider()


def _export(standin, member_id, number="INV-2024-0007", total="49.95") -> InvoiceExport:
    return InvoiceExport(invoice_number=number, member_id=member_id, location_id=standin.location,
                         total=Decimal(total), currency="EUR", issue_date=dt.date(2024, 5, 10),
                         description="Mailbox May 2024")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------- tokens
def test_one_token_serves_many_calls(standin, provider):
    standin.add_members_bulk(3)
    provider.check_credentials()
    provider.locations()
    list(provider.iter_members())
    provider.find_member_by_email("member2@example.com")
    assert standin.token_requests == 1
    assert provider.counters()["token_requests"] == 1


def test_token_asks_for_the_documented_scopes(standin, provider):
    provider.locations()
    assert set(SCOPES) == set(ALL_SCOPES)
    assert set(provider.token_store.load()["scope"].split()) == set(SCOPES)


def test_stored_token_is_reused_by_a_new_client(standin, make_provider):
    store = MemoryTokenStore()
    make_provider(token_store=store).locations()
    make_provider(token_store=store).locations()
    assert standin.token_requests == 1
    assert "test-secret" not in repr(store.token)


def test_stored_token_of_other_credentials_is_not_used(standin, make_provider):
    store = MemoryTokenStore()
    make_provider(token_store=store).locations()
    standin.client_id = "other-client"
    make_provider(token_store=store, client_id="other-client").locations()
    assert standin.token_requests == 2


def test_token_refreshed_shortly_before_expiry(standin, provider, clock):
    provider.locations()
    clock.advance(3599 - 50)  # still valid on the server, but inside the refresh margin
    provider.locations()
    assert standin.token_requests == 2
    assert standin.count("GET", "/locations") == 2  # no 401 was needed


def test_token_kept_until_the_margin(standin, provider, clock):
    provider.locations()
    clock.advance(3599 - 120)
    provider.locations()
    assert standin.token_requests == 1


def test_401_fetches_a_new_token_once(standin, provider):
    provider.locations()
    standin.revoke_tokens()
    assert [loc.name for loc in provider.locations()] == ["Main street"]
    assert standin.token_requests == 2
    assert standin.count("GET", "/locations") == 3


def test_401_twice_is_auth(standin, provider):
    provider.locations()
    standin.fail_next(2, status=401, path="/locations")
    with pytest.raises(ProviderError) as err:
        provider.locations()
    assert err.value.kind == "auth"
    assert standin.token_requests == 2


# --------------------------------------------------------------- error kinds
def test_wrong_secret_is_auth(standin, make_provider):
    with pytest.raises(ProviderError) as err:
        make_provider(client_secret="wrong").check_credentials()
    assert err.value.kind == "auth"
    assert "Client Secret" in err.value.message
    assert "wrong" not in err.value.message


def test_scope_not_granted_is_scope_and_named(make_standin, make_provider):
    make_standin(granted_scopes=[s for s in ALL_SCOPES if s != "flex.community.fees.create"])
    with pytest.raises(ProviderError) as err:
        make_provider().check_credentials()
    assert err.value.kind == "scope"
    assert "flex.community.fees.create" in err.value.message


def test_403_names_the_missing_scope(standin, provider):
    provider.locations()
    standin.remove_scope("flex.space.locations.read")
    with pytest.raises(ProviderError) as err:
        provider.locations()
    assert err.value.kind == "scope"
    assert err.value.status == 403
    assert "flex.space.locations.read" in err.value.message


def test_unknown_slug_is_not_found_and_not_retried(standin, make_provider):
    with pytest.raises(ProviderError) as err:
        make_provider(slug="acme-typo").check_credentials()
    assert err.value.kind == "not_found"
    assert "acme-typo" in err.value.message
    assert standin.count("GET", "/locations") == 1


def test_connection_refused_is_unreachable(make_provider):
    dead = f"http://127.0.0.1:{_free_port()}"
    provider = make_provider(token_url=f"{dead}/oauth/token", api_base=f"{dead}/api/v2")
    with pytest.raises(ProviderError) as err:
        provider.check_credentials()
    assert err.value.kind == "unreachable"
    assert not isinstance(err.value, OutcomeUnknown)


def test_write_that_never_left_is_unreachable_not_unknown(standin, provider, clock):
    provider.locations()  # token cached; now the API host goes away
    provider.api_base = f"http://127.0.0.1:{_free_port()}/api/v2"
    with pytest.raises(ProviderError) as err:
        provider.export_invoice(_export(standin, "m1"))
    assert err.value.kind == "unreachable"
    assert not isinstance(err.value, OutcomeUnknown)


# -------------------------------------------------------------------- paging
def test_iter_members_follows_cursors_at_50(standin, provider):
    ids = standin.add_members_bulk(123)
    members = list(provider.iter_members())
    assert [m.id for m in members] == ids
    assert standin.count("GET", "/members") == 3
    assert standin.limits_seen == ["50", "50", "50"]


def test_locations_page_too(standin, provider):
    for i in range(60):
        standin.add_location(f"Location {i}")
    assert len(provider.locations()) == 61
    assert standin.count("GET", "/locations") == 2


def test_standin_caps_limit_and_rejects_unknown_params(standin, provider):
    standin.add_members_bulk(80)
    provider.locations()
    headers = {"Authorization": f"Bearer {provider.token_store.load()['access_token']}"}
    url = f"{standin.api_base}/organizations/{SLUG}/members"
    capped = requests.get(url, params={"$limit": 500}, headers=headers, timeout=5).json()
    assert len(capped["results"]) == 50
    refused = requests.get(url, params={"search": "x"}, headers=headers, timeout=5)
    assert refused.status_code == 400
    assert refused.json() == {"statusCode": 400, "message": ["property search should not exist"],
                              "error": "Bad Request"}


def test_client_never_sends_an_unknown_parameter(standin, provider):
    standin.add_members_bulk(70)
    standin.add_webhook("https://example.com/hook")
    provider.check_credentials()
    provider.locations()
    list(provider.iter_members())
    provider.find_member_by_email("Member3@example.com")
    provider.search_members("member 6")
    provider.search_members("member5@example.com")
    provider.webhooks()
    assert standin.rejected_params == []
    assert all(int(v) <= 50 for v in standin.limits_seen)


# ---------------------------------------------------------------- rate limits
def test_paces_from_headers_without_a_single_429(standin, make_provider, clock):
    standin.set_limits(read=5)
    provider = make_provider(max_wait=90)  # a full minute's wait is allowed here
    standin.add_members_bulk(600)  # 12 pages, more than two windows' worth
    assert len(list(provider.iter_members())) == 600
    assert standin.rate_limited_count == 0
    assert provider.counters()["waits"] >= 2
    assert all(0 < s <= 60 for s in clock.sleeps)


def test_429_retry_after_is_honoured_then_retried(standin, provider, clock):
    standin.fail_next(3, status=429, retry_after=2, path="/locations")
    assert len(provider.locations()) == 1
    assert standin.rate_limited_count == 3
    assert provider.counters()["rate_limited_429"] == 3
    assert clock.sleeps == [2.0, 2.0, 2.0]


def test_429_from_a_shared_budget(standin, make_provider, clock):
    standin.set_limits(read=3)
    first, second = make_provider(), make_provider()
    for _ in range(3):
        first.locations()
    assert len(second.locations()) == 1  # got a real 429, waited Retry-After, retried
    assert standin.rate_limited_count == 1
    assert second.counters()["rate_limited_429"] == 1
    assert standin.count("GET", "/locations") == 5


def test_wait_beyond_max_wait_on_known_budget_stops_early(standin, make_provider):
    standin.set_limits(read=1)
    provider = make_provider(max_wait=5)
    provider.locations()
    with pytest.raises(ProviderError) as err:
        provider.locations()
    assert err.value.kind == "rate_limited"
    assert 5 < err.value.retry_after <= 60
    assert standin.rate_limited_count == 0  # it did not even ask
    assert standin.count("GET", "/locations") == 1


def test_retry_after_beyond_max_wait_stops_early(standin, make_provider, clock):
    standin.fail_next(1, status=429, retry_after=120, path="/fees")
    provider = make_provider(max_wait=30)
    member = standin.add_member("Ann", "ann@example.com", standin.location)
    with pytest.raises(ProviderError) as err:
        provider.export_invoice(_export(standin, member["_id"]))
    assert err.value.kind == "rate_limited"
    assert err.value.retry_after == 120
    assert not isinstance(err.value, OutcomeUnknown)
    assert standin.fees == {}
    assert clock.sleeps == []


def test_write_after_429_is_sent_again_and_created_once(standin, provider):
    member = standin.add_member("Ann", "ann@example.com", standin.location)
    standin.fail_next(1, status=429, retry_after=1, method="POST", path="/fees")
    fee_id = provider.export_invoice(_export(standin, member["_id"]))
    assert list(standin.fees) == [fee_id]
    assert standin.count("POST", "/fees") == 2


def test_threads_share_one_limiter(standin, make_provider):
    standin.set_limits(write=10)
    provider = make_provider(max_wait=90)
    provider.locations()  # warm the token outside the pool

    def create(i):
        return provider.create_member(NewMember(name=f"Person {i}", email=f"p{i}@example.com",
                                                location_id=standin.location))

    with ThreadPoolExecutor(max_workers=4) as pool:
        created = list(pool.map(create, range(40)))
    assert len({m.id for m in created}) == 40
    assert len(standin.members) == 40
    assert standin.rate_limited_count == 0
    assert provider.counters()["requests"] == 41


# ---------------------------------------------------- retries and lost answers
def test_read_5xx_is_retried(standin, provider):
    standin.fail_next(2, status=502, path="/locations")
    assert len(provider.locations()) == 1
    assert standin.count("GET", "/locations") == 3
    assert provider.counters()["retries"] == 2


def test_read_5xx_gives_up_as_remote(standin, provider):
    standin.fail_next(10, status=503, path="/members")
    with pytest.raises(ProviderError) as err:
        list(provider.iter_members())
    assert err.value.kind == "remote"
    assert standin.count("GET", "/members") == 1 + provider.read_retries


def test_read_dropped_connection_is_retried(standin, provider):
    standin.drop_next(1, path="/locations")
    assert len(provider.locations()) == 1
    assert standin.count("GET", "/locations") == 2


def test_read_timeout_is_retried(standin, provider):
    standin.timeout_next(1, seconds=1.5, path="/locations")
    assert len(provider.locations()) == 1
    assert standin.count("GET", "/locations") == 2


def test_fee_timeout_is_outcome_unknown_and_not_resent(standin, provider):
    member = standin.add_member("Ann", "ann@example.com", standin.location)
    standin.timeout_next(1, seconds=1.5, path="/fees")
    with pytest.raises(OutcomeUnknown):
        provider.export_invoice(_export(standin, member["_id"]))
    assert standin.count("POST", "/fees") == 1


def test_fee_committed_then_dropped_is_outcome_unknown(standin, provider):
    member = standin.add_member("Ann", "ann@example.com", standin.location)
    standin.commit_then_fail(1, path="/fees", drop=True)
    with pytest.raises(OutcomeUnknown):
        provider.export_invoice(_export(standin, member["_id"]))
    assert standin.count("POST", "/fees") == 1
    assert len(standin.fees) == 1
    (fee,) = standin.fees.values()
    assert fee["properties"] == {"spheremailInvoice": "INV-2024-0007"}


def test_member_committed_then_500_is_outcome_unknown(standin, provider):
    standin.commit_then_fail(1, path="/members", method="POST")
    with pytest.raises(OutcomeUnknown) as err:
        provider.create_member(NewMember(name="Bo", email="bo@example.com", location_id=standin.location))
    assert err.value.kind == "unknown"
    assert len(standin.members) == 1
    assert standin.count("POST", "/members") == 1


def test_fee_5xx_is_outcome_unknown_not_retried(standin, provider):
    member = standin.add_member("Ann", "ann@example.com", standin.location)
    standin.fail_next(1, status=500, path="/fees")
    with pytest.raises(OutcomeUnknown):
        provider.export_invoice(_export(standin, member["_id"]))
    assert standin.count("POST", "/fees") == 1
    assert standin.fees == {}


# ------------------------------------------------------------ members & fees
def test_export_invoice_books_one_fee(standin, provider):
    member = standin.add_member("Ann", "ann@example.com", standin.location)
    fee_id = provider.export_invoice(_export(standin, member["_id"], total="1234.56"))
    fee = standin.fees[fee_id]
    assert "INV-2024-0007" in fee["name"]
    assert fee["properties"] == {"spheremailInvoice": "INV-2024-0007"}
    assert (fee["price"], fee["quantity"], fee["plan"]) == (1234.56, 1, standin.plan)
    assert (fee["member"], fee["location"], fee["issueDate"]) == (member["_id"], standin.location, "2024-05-10")
    assert provider.supports_export_lookup is False
    with pytest.raises(NotImplementedError):
        provider.find_export("INV-2024-0007")


def test_export_without_fee_plan_is_invalid_before_sending(standin, make_provider):
    with pytest.raises(ProviderError) as err:
        make_provider(fee_plan_id=None).export_invoice(_export(standin, "m1"))
    assert err.value.kind == "invalid"
    assert standin.count("POST", "/fees") == 0


def test_export_refused_by_vendor_is_invalid(standin, make_provider):
    with pytest.raises(ProviderError) as err:
        make_provider(fee_plan_id="no-such-plan").export_invoice(_export(standin, "m1"))
    assert err.value.kind == "invalid"
    assert "plan must be a valid plan id" in err.value.message


def test_create_member_keeps_company_name_out_of_company(standin, provider):
    member = provider.create_member(NewMember(name="Cy Dee", email="cy@example.com",
                                              location_id=standin.location, phone="+31 20 123",
                                              company="Dee & Co", start_date=dt.date(2024, 6, 1)))
    stored = standin.members[member.id]
    assert stored["company"] is None
    assert stored["description"] == "Dee & Co"
    assert (stored["startDate"], stored["phone"], stored["location"]) == ("2024-06-01", "+31 20 123",
                                                                         standin.location)
    assert member.company == "Dee & Co"
    assert member.email == "cy@example.com"


def test_duplicate_email_in_other_case_is_invalid(standin, provider):
    standin.add_member("Ann", "ann@example.com", standin.location)
    with pytest.raises(ProviderError) as err:
        provider.create_member(NewMember(name="Ann Again", email="ANN@Example.com",
                                         location_id=standin.location))
    assert err.value.kind == "invalid"
    assert "already exists" in err.value.message
    assert len(standin.members) == 1


def test_update_member(standin, provider):
    member = standin.add_member("Ann", "ann@example.com", standin.location)
    updated = provider.update_member(member["_id"], name="Ann B", company="B BV")
    assert updated.name == "Ann B"
    assert standin.members[member["_id"]]["description"] == "B BV"
    assert standin.count("PUT", f"/members/{member['_id']}") == 1


def test_find_member_by_email_ignores_case(standin, provider):
    standin.add_member("Ann", "ann@example.com", standin.location)
    mixed = standin.add_member("Bob", "Bob.Smith@Example.com", standin.location)
    assert provider.find_member_by_email("ANN@example.com").name == "Ann"
    assert provider.find_member_by_email("Bob.Smith@Example.com").id == mixed["_id"]
    # Documented limit: a stored mixed-case address is not found from another spelling.
    assert provider.find_member_by_email("bob.smith@example.com") is None
    assert provider.find_member_by_email("nobody@example.com") is None
    assert standin.count("GET", "/members") <= 6  # never a scan


def test_search_members(standin, provider):
    standin.add_members_bulk(120)
    standin.add_member("Zoë Jansen", "zoe@jansen.nl", standin.location)
    assert [m.email for m in provider.search_members("zoe@jansen.nl")] == ["zoe@jansen.nl"]
    assert [m.name for m in provider.search_members("jansen")] == ["Zoë Jansen"]
    assert len(provider.search_members("member 1", limit=5)) == 5
    assert provider.search_members("   ") == []
    inactive = standin.add_member("Old Timer", "old@example.com", standin.location, status="former")
    (found,) = provider.search_members("Old Timer")
    assert found.id == inactive["_id"] and found.active is False
