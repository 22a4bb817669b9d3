"""OfficeRnD Flex (API v2) behind the :class:`~spheremail.integrations.base.Provider` interface.

What the vendor expects is written down in ``docs/vendor-apis.md``; the parts that
shape this module:

* OAuth2 client credentials. The token endpoint allows only a handful of calls a
  minute, so the token is cached (in memory and in the caller's TokenStore) and
  refreshed shortly before it expires or once after a 401.
* Reads are retried on 5xx, timeouts and dropped connections with backoff and
  jitter. Writes (POST/PUT) are never retried once they may have reached the
  server: a timeout, a dropped connection or a 5xx raises :class:`OutcomeUnknown`
  and the caller decides (look up, or hand to a person). A 429 is the exception:
  it means "not processed", so the same request is sent again after the wait.
* Rate limits: requests are paced from the ``x-ratelimit-*`` headers by a limiter
  shared by every thread using this client, so the client never knowingly goes
  over the announced budget; a ``Retry-After`` is honoured. A wait longer than
  ``max_wait`` is not slept: ``ProviderError(kind="rate_limited", retry_after=...)``
  lets a job stop early and resume on its next tick.
"""
from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
from decimal import Decimal
from typing import Callable, Iterator
from urllib.parse import quote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from .base import (InvoiceExport, Location, Member, NewMember, OutcomeUnknown, ProviderError,
                   Sleeper, TokenStore)

DEFAULT_TOKEN_URL = "https://identity.officernd.com/oauth/token"
DEFAULT_API_BASE = "https://app.officernd.com/api/v2"

# The minimum list from the vendor article; asking for one the application was not
# granted fails the whole token request, which is how a missing grant shows up.
SCOPES = (
    "flex.settings.webhooks.read",
    "flex.settings.integrations.read",
    "flex.space.locations.read",
    "flex.community.members.read",
    "flex.community.members.create",
    "flex.community.members.update",
    "flex.community.members.delete",
    "flex.community.fees.create",
)

# Which scope an endpoint needs, so a 403 can name it for the operator.
_ENDPOINT_SCOPES = {
    ("GET", "locations"): "flex.space.locations.read",
    ("GET", "members"): "flex.community.members.read",
    ("POST", "members"): "flex.community.members.create",
    ("PUT", "members"): "flex.community.members.update",
    ("POST", "fees"): "flex.community.fees.create",
    ("GET", "webhooks"): "flex.settings.webhooks.read",
}

PAGE_SIZE = 50  # the vendor's maximum $limit
REFRESH_MARGIN = 60.0  # seconds before expiry at which a cached token is replaced
ACTIVE_STATUSES = frozenset({"active", "drop-in"})
COMPANY_PROPERTY = "spheremailCompany"  # where a customer's company *name* is kept
INVOICE_PROPERTY = "spheremailInvoice"  # our invoice number on an exported fee
MAX_429_RETRIES = 8  # consecutive 429s on one call before giving up as rate_limited


class _Window:
    """What the server last told us about one rate-limit window."""

    __slots__ = ("limit", "remaining", "reset_at")

    def __init__(self):
        self.limit: int | None = None
        self.remaining: int | None = None
        self.reset_at: float | None = None  # on our clock


class RateGate:
    """A limiter shared by all threads using one client, fed by the server's headers.

    Before each request a thread reserves a slot: it may go when every known
    window still has room after counting the requests already in flight. When a
    window is exhausted the thread sleeps until the announced reset (through the
    injected ``sleep``), or raises ``rate_limited`` if that is beyond ``max_wait``.
    Until the first answer nothing is known and requests go freely; a 429 then
    closes the window for everyone until ``Retry-After``.
    """

    def __init__(self, prefix: str, *, clock: Callable[[], float], sleep: Sleeper, max_wait: float,
                 on_wait: Callable[[float], None] | None = None):
        self.prefix = prefix  # e.g. "read" -> x-ratelimit-*-read-minute / -read-day
        self.clock = clock
        self.sleep = sleep
        self.max_wait = max_wait
        self.on_wait = on_wait
        self.windows: dict[str, _Window] = {}
        self.blocked_until: float | None = None  # set by a 429's Retry-After
        self.in_flight = 0
        self._cond = threading.Condition()

    def _wait_needed(self, now: float) -> tuple[float, bool]:
        """(seconds to sleep until a reset, whether we are only waiting for in-flight answers)."""
        wait, crowded = 0.0, False
        if self.blocked_until is not None:
            if now >= self.blocked_until:
                self.blocked_until = None
            else:
                wait = self.blocked_until - now
        for window in self.windows.values():
            if window.reset_at is not None and now >= window.reset_at:
                # The window has rolled over: the full budget is back.
                window.remaining = window.limit
                window.reset_at = None
            if window.remaining is None:
                continue
            if window.remaining <= 0:
                wait = max(wait, (window.reset_at - now) if window.reset_at is not None else 1.0)
            elif window.remaining - self.in_flight <= 0:
                crowded = True
        return wait, crowded

    def acquire(self) -> None:
        """Block until a request may be sent; raise ProviderError('rate_limited') past max_wait."""
        while True:
            with self._cond:
                wait, crowded = self._wait_needed(self.clock())
                if wait <= 0 and not crowded:
                    self.in_flight += 1
                    return
                if wait <= 0:
                    # Room remains only for requests already on the wire; their answers
                    # will tell us more. Real-time wait: it is about other threads.
                    self._cond.wait(timeout=0.05)
                    continue
            if wait > self.max_wait:
                raise ProviderError(
                    "rate_limited",
                    f"OfficeRnD's request limit is used up; it resets in {wait:.0f} s. "
                    "The work will continue on the next run.",
                    retry_after=wait)
            if self.on_wait:
                self.on_wait(wait)
            self.sleep(wait)

    def release(self, headers=None) -> None:
        """The request is answered (or failed): free its slot and learn from the headers."""
        with self._cond:
            self.in_flight = max(0, self.in_flight - 1)
            if headers is not None:
                self._learn(headers)
            self._cond.notify_all()

    def learn(self, headers) -> None:
        """Update what we know from an answer that did not hold one of our slots."""
        with self._cond:
            self._learn(headers)
            self._cond.notify_all()

    def _learn(self, headers) -> None:
        now = self.clock()
        for period in ("minute", "day"):
            suffix = f"{self.prefix}-{period}"
            limit = _number(headers.get(f"x-ratelimit-limit-{suffix}"))
            remaining = _number(headers.get(f"x-ratelimit-remaining-{suffix}"))
            reset = _number(headers.get(f"x-ratelimit-reset-{suffix}"))
            if remaining is None:
                continue
            window = self.windows.setdefault(period, _Window())
            if limit is not None:
                window.limit = int(limit)
            # The reset header is taken as seconds from now; a Unix time (as some
            # APIs send) is recognised by its size.
            reset_at = None
            if reset is not None:
                reset_at = now + (reset - time.time() if reset > 1e9 else reset)
            # Whole-second resets are rounded, so two answers of one window may
            # disagree by up to a second; fractional ones are precise.
            tolerance = 1.0 if reset is not None and float(reset).is_integer() else 0.05
            same_window = (window.remaining is not None and window.reset_at is not None
                           and reset_at is not None and reset_at <= window.reset_at + tolerance)
            # Answers can arrive out of order: within one window keep the lowest count.
            window.remaining = min(window.remaining, int(remaining)) if same_window else int(remaining)
            if reset_at is not None:
                window.reset_at = max(window.reset_at, reset_at) if same_window else reset_at

    def block(self, seconds: float) -> None:
        """A 429 said 'wait ``seconds``': no thread sends through this gate until then."""
        with self._cond:
            until = self.clock() + seconds
            self.blocked_until = max(self.blocked_until or until, until)


def _number(value) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _json_default(value):
    if isinstance(value, Decimal):
        as_float = float(value)
        # JSON has only one number type; refuse amounts a float cannot carry exactly.
        if Decimal(repr(as_float)) != value:
            raise ValueError(f"amount {value} cannot be sent exactly")
        return as_float
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


def _not_sent(exc: requests.RequestException) -> bool:
    """True when the request never left: connection refused, DNS failure, connect timeout."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    seen = set()
    stack = [exc]
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, (NewConnectionError, ConnectTimeoutError)):
            return True
        stack.extend([getattr(err, "reason", None), err.__cause__, err.__context__])
        stack.extend(a for a in getattr(err, "args", ()) if isinstance(a, BaseException))
    return False


def _messages(payload) -> list[str]:
    """The vendor's error text(s) from a NestJS or OAuth2 error body."""
    if not isinstance(payload, dict):
        return []
    message = payload.get("message") or payload.get("error_description") or payload.get("error")
    if isinstance(message, list):
        return [str(m) for m in message]
    return [str(message)] if message else []


class OfficeRnDProvider:
    """One OfficeRnD organisation, reached with one OAuth application's credentials.

    Thread-safe for use from a small thread pool: the token, the rate limiter and
    the counters are shared under locks and ``requests.Session`` pools connections.
    ``counters()`` reports requests made, token requests, 429s seen, retries and
    seconds spent waiting (for benchmarks).
    """

    name = "officernd"
    supports_export_lookup = False  # reading fees needs flex.community.fees.read, not granted

    def __init__(self, client_id: str, client_secret: str, slug: str, *,
                 token_url: str = DEFAULT_TOKEN_URL, api_base: str = DEFAULT_API_BASE,
                 token_store: TokenStore, fee_plan_id: str | None = None, timeout: float = 10,
                 sleep: Sleeper = time.sleep, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, max_wait: float = 30,
                 read_retries: int = 3, backoff: float = 0.5, search_scan_pages: int = 10,
                 pool_size: int = 10, session: requests.Session | None = None):
        """``clock`` paces requests; ``wall_clock`` dates token expiry (tokens outlive processes).

        ``fee_plan_id`` is the price plan fees are booked on (the operator enters it:
        plans cannot be read with the granted scopes). ``max_wait`` is the longest a
        single rate-limit wait may be before ``rate_limited`` is raised instead.
        """
        self.client_id = client_id
        self._client_secret = client_secret
        self.slug = slug
        self.token_url = token_url
        self.api_base = api_base.rstrip("/")
        self.token_store = token_store
        self.fee_plan_id = fee_plan_id
        self.timeout = timeout
        self.sleep = sleep
        self.clock = clock
        self.wall_clock = wall_clock
        self.max_wait = max_wait
        self.read_retries = read_retries
        self.backoff = backoff
        self.search_scan_pages = search_scan_pages
        self._random = random.Random()

        self.session = session or requests.Session()
        # No urllib3 retries behind our back: every retry decision is made here.
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

        self._token: dict | None = None
        self._token_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._stats = {"requests": 0, "token_requests": 0, "rate_limited_429": 0,
                       "retries": 0, "waits": 0, "waited_seconds": 0.0}
        gate_args = dict(clock=clock, sleep=self._sleep_counted, max_wait=max_wait)
        self._read_gate = RateGate("read", **gate_args)
        self._write_gate = RateGate("write", **gate_args)

    def __repr__(self) -> str:  # never show the secret
        return f"<OfficeRnDProvider slug={self.slug!r} client_id={self.client_id!r}>"

    # ------------------------------------------------------------------ counters
    def _count(self, key: str, amount: float = 1) -> None:
        with self._stats_lock:
            self._stats[key] += amount

    def _sleep_counted(self, seconds: float) -> None:
        self._count("waits")
        self._count("waited_seconds", seconds)
        self.sleep(seconds)

    def counters(self) -> dict:
        """A snapshot: requests (API calls sent), token_requests, rate_limited_429, retries, waits, waited_seconds."""
        with self._stats_lock:
            return dict(self._stats)

    # --------------------------------------------------------------------- token
    def _token_usable(self, token: dict | None) -> bool:
        if not token or not token.get("access_token"):
            return False
        # A token stored for other credentials or fewer scopes is not ours to use.
        if token.get("client_id") != self.client_id or token.get("slug") != self.slug:
            return False
        if not set(SCOPES) <= set(str(token.get("scope", "")).split()):
            return False
        return float(token.get("expires_at", 0)) - REFRESH_MARGIN > self.wall_clock()

    def _access_token(self) -> str:
        """The cached token, or a fresh one when it is missing or about to expire."""
        with self._token_lock:
            if self._token is None:
                # The store may be a database row: read it once, then keep it in memory.
                self._token = self.token_store.load()
            if not self._token_usable(self._token):
                self._token = self._fetch_token()
                self.token_store.save(self._token)
            return self._token["access_token"]

    def _drop_token(self, used: str) -> None:
        """Forget the token after a 401, unless another thread already replaced it."""
        with self._token_lock:
            if self._token and self._token.get("access_token") == used:
                self._token = {**self._token, "expires_at": 0}

    def _fetch_token(self) -> dict:
        data = {"grant_type": "client_credentials", "client_id": self.client_id,
                "client_secret": self._client_secret, "scope": " ".join(SCOPES)}
        attempt = 0
        while True:
            self._count("token_requests")
            try:
                resp = self.session.post(self.token_url, data=data, timeout=self.timeout)
            except requests.RequestException as exc:
                if attempt < min(self.read_retries, 2):
                    attempt = self._backoff(attempt)
                    continue
                raise self._unreachable(exc, self.token_url) from None
            payload = _safe_json(resp)
            error = payload.get("error") if isinstance(payload, dict) else None
            if resp.status_code == 200 and isinstance(payload, dict) and payload.get("access_token"):
                expires_in = float(payload.get("expires_in") or 3599)
                return {"access_token": payload["access_token"],
                        "expires_at": self.wall_clock() + expires_in,
                        "scope": payload.get("scope") or " ".join(SCOPES),
                        "client_id": self.client_id, "slug": self.slug}
            if resp.status_code == 401 or error in ("invalid_client", "unauthorized_client"):
                raise ProviderError("auth", "OfficeRnD rejected the Client ID or Client Secret. "
                                    "Copy both again from OfficeRnD (Settings → Developer tools).",
                                    status=resp.status_code)
            if error == "invalid_scope":
                detail = " ".join(_messages(payload))
                raise ProviderError("scope", "The OfficeRnD application lacks a permission SphereMail needs "
                                    f"({detail or 'invalid_scope'}). Grant these scopes: " + ", ".join(SCOPES),
                                    status=resp.status_code, details=payload)
            if resp.status_code == 429:
                wait = _number(resp.headers.get("Retry-After")) or 60.0
                if wait > self.max_wait or attempt >= MAX_429_RETRIES:
                    raise ProviderError("rate_limited", "OfficeRnD refuses new tokens for the moment; "
                                        f"try again in {wait:.0f} s.", status=429, retry_after=wait)
                self._sleep_counted(wait)
                attempt += 1
                continue
            if resp.status_code >= 500 and attempt < min(self.read_retries, 2):
                attempt = self._backoff(attempt)
                continue
            raise ProviderError("remote" if resp.status_code >= 500 else "auth",
                                f"OfficeRnD's sign-in answered {resp.status_code}: "
                                + ("; ".join(_messages(payload)) or "no details"),
                                status=resp.status_code, details=payload)

    # ------------------------------------------------------------------ requests
    def _url(self, path: str) -> str:
        return f"{self.api_base}/organizations/{quote(self.slug, safe='')}{path}"

    def _backoff(self, attempt: int) -> int:
        """Sleep before retry ``attempt + 1``: exponential, with jitter so threads spread out."""
        delay = min(8.0, self.backoff * (2 ** attempt))
        self._count("retries")
        self._sleep_counted(delay * (0.5 + self._random.random() / 2))
        return attempt + 1

    def _unreachable(self, exc: Exception, url: str) -> ProviderError:
        host = urlsplit(url).netloc
        if isinstance(exc, requests.Timeout):
            return ProviderError("unreachable", f"OfficeRnD ({host}) did not answer within {self.timeout:g} s.")
        return ProviderError("unreachable", f"Cannot reach OfficeRnD at {host} (connection refused, "
                             "DNS or TLS failure). Check the API host and the network.")

    def _request(self, method: str, path: str, *, params: dict | None = None, body: dict | None = None) -> dict:
        """Send one API call with auth, pacing and the retry rules above; return the JSON answer."""
        write = method != "GET"
        gate = self._write_gate if write else self._read_gate
        url = self._url(path)
        try:
            data = json.dumps(body, default=_json_default) if body is not None else None
        except ValueError as exc:
            raise ProviderError("invalid", f"Cannot send to OfficeRnD: {exc}.") from None
        attempt = rate_limited = 0
        auth_retried = False
        while True:
            token = self._access_token()
            gate.acquire()
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = "application/json"
            self._count("requests")
            try:
                resp = self.session.request(method, url, params=params, data=data, headers=headers,
                                            timeout=self.timeout)
            except requests.RequestException as exc:
                gate.release()
                if write and not _not_sent(exc):
                    raise OutcomeUnknown(
                        f"OfficeRnD did not confirm {method} {path.split('?')[0]} "
                        f"({'timeout' if isinstance(exc, requests.Timeout) else 'connection lost'}); "
                        "it may or may not have been saved.") from None
                if attempt < self.read_retries:
                    attempt = self._backoff(attempt)
                    continue
                raise self._unreachable(exc, url) from None
            gate.release(resp.headers)
            if write:
                # The read headers ride on every answer; keep the read gate informed too.
                self._read_gate.learn(resp.headers)
            status = resp.status_code
            if 200 <= status < 300:
                payload = _safe_json(resp)
                return payload if payload is not None else {}

            payload = _safe_json(resp)
            messages = _messages(payload)
            if status == 429:
                # Not processed: safe to send again, reads and writes alike.
                self._count("rate_limited_429")
                wait = _number(resp.headers.get("Retry-After")) or 1.0
                gate.block(wait)
                rate_limited += 1
                if wait > self.max_wait or rate_limited > MAX_429_RETRIES:
                    raise ProviderError("rate_limited", "OfficeRnD asks to slow down; "
                                        f"retry in {wait:.0f} s.", status=429, retry_after=wait)
                continue
            if status == 401 and not auth_retried:
                # Expired or revoked early: one fresh token, one more try.
                auth_retried = True
                self._drop_token(token)
                continue
            if status == 401:
                raise ProviderError("auth", "OfficeRnD no longer accepts SphereMail's credentials. "
                                    "Reconnect the integration with a valid Client ID and Secret.", status=401)
            if status == 403:
                resource = path.strip("/").split("/")[0].split("?")[0]
                scope = _ENDPOINT_SCOPES.get((method, resource), "the scope for this action")
                raise ProviderError("scope", f"The OfficeRnD application is missing the permission "
                                    f"'{scope}'. Grant it in OfficeRnD and reconnect.",
                                    status=403, details=payload)
            if any("organization not found" in m.lower() for m in messages):
                raise ProviderError("not_found", f"OfficeRnD has no organization with the slug "
                                    f"'{self.slug}'. Check the slug in your OfficeRnD address.",
                                    status=status, details=payload)
            if status >= 500:
                if write:
                    raise OutcomeUnknown(f"OfficeRnD answered {status} to {method} {path}; "
                                         "it may or may not have been saved.", status=status, details=payload)
                if attempt < self.read_retries:
                    attempt = self._backoff(attempt)
                    continue
                raise ProviderError("remote", f"OfficeRnD is failing ({status}); try again later.",
                                    status=status, details=payload)
            if status == 404:
                raise ProviderError("not_found", "OfficeRnD: " + ("; ".join(messages) or "not found"),
                                    status=404, details=payload)
            raise ProviderError("invalid", "OfficeRnD refused the request: "
                                + ("; ".join(messages) or f"HTTP {status}"), status=status, details=messages)

    def _pages(self, path: str, params: dict | None = None, max_pages: int | None = None) -> Iterator[dict]:
        """Every item of a list endpoint, following ``cursorNext`` at 50 a page."""
        query = {**(params or {}), "$limit": PAGE_SIZE}
        pages = 0
        while True:
            payload = self._request("GET", path, params=query)
            yield from payload.get("results") or []
            pages += 1
            cursor = payload.get("cursorNext")
            if not cursor or (max_pages is not None and pages >= max_pages):
                return
            query = {**query, "$cursorNext": cursor}

    # ------------------------------------------------------------ the interface
    def check_credentials(self) -> None:
        """Fetch a fresh token (proves id, secret and scopes) and read one location (proves the slug)."""
        with self._token_lock:
            self._token = self._fetch_token()
            self.token_store.save(self._token)
        self._request("GET", "/locations", params={"$limit": 1})

    def locations(self) -> list[Location]:
        """Every location of the organisation."""
        return [Location(id=item["_id"], name=item.get("name") or item["_id"], raw=item)
                for item in self._pages("/locations")]

    def iter_members(self) -> Iterator[Member]:
        """Every member, 50 per request, in the vendor's order."""
        for item in self._pages("/members"):
            yield _member(item)

    def find_member_by_email(self, email: str) -> Member | None:
        """The member whose email equals ``email`` ignoring case, or None.

        OfficeRnD's ``email=`` filter is exact, and whether it ignores case is not
        documented. We ask for the address as given and, if that differs, in lower
        case (how most systems store addresses), then re-check each hit ignoring
        case. A member stored in some other mixed case is *not* found: scanning
        every member per lookup would cost the whole read budget, so we return
        None and let the caller create or ask a person (the create is refused with
        a duplicate-email 400 in that case, which surfaces it).
        """
        wanted = email.strip()
        if not wanted:
            return None
        for candidate in dict.fromkeys([wanted, wanted.lower()]):
            for item in self._pages("/members", {"email": candidate}, max_pages=1):
                if (item.get("email") or "").casefold() == wanted.casefold():
                    return _member(item)
        return None

    def search_members(self, query: str, limit: int = 20) -> list[Member]:
        """Members whose name or email contains ``query`` (ignoring case), for manual connect.

        OfficeRnD has only exact filters, so: an exact email lookup when the query
        looks like an address, then an exact ``name=`` filter, then a bounded scan
        of the first ``search_scan_pages`` pages (50 members each) matching
        substrings locally. Results are capped at ``limit``. Members beyond the
        scanned pages are found only by exact name or email; a large organisation
        is better served by searching the members the sync already mirrored.
        """
        q = query.strip()
        if not q or limit <= 0:
            return []
        found: dict[str, Member] = {}
        if "@" in q:
            member = self.find_member_by_email(q)
            if member:
                found[member.id] = member
        if len(found) < limit:
            for item in self._pages("/members", {"name": q}, max_pages=1):
                found.setdefault(item["_id"], _member(item))
        needle = q.casefold()
        if len(found) < limit:
            for item in self._pages("/members", max_pages=self.search_scan_pages):
                if needle in (item.get("name") or "").casefold() or needle in (item.get("email") or "").casefold():
                    found.setdefault(item["_id"], _member(item))
                    if len(found) >= limit:
                        break
        return list(found.values())[:limit]

    def create_member(self, new: NewMember) -> Member:
        """Create a member; the company *name* goes to description/properties (``company`` takes an id)."""
        body: dict = {"name": new.name, "email": new.email, "location": new.location_id,
                      "startDate": (new.start_date or dt.date.today()).isoformat()}
        if new.phone:
            body["phone"] = new.phone
        if new.company:
            body["description"] = new.company
            body["properties"] = {COMPANY_PROPERTY: new.company}
        return _member(self._request("POST", "/members", body=body))

    def update_member(self, member_id: str, *, name: str | None = None, email: str | None = None,
                      phone: str | None = None, company: str | None = None,
                      location_id: str | None = None) -> Member:
        """Send the changed fields of a member with ``PUT /members/{id}`` (not part of Provider)."""
        body: dict = {}
        for key, value in (("name", name), ("email", email), ("phone", phone), ("location", location_id)):
            if value is not None:
                body[key] = value
        if company is not None:
            body["description"] = company
            body["properties"] = {COMPANY_PROPERTY: company}
        return _member(self._request("PUT", f"/members/{quote(member_id, safe='')}", body=body))

    def export_invoice(self, export: InvoiceExport) -> str:
        """Book the invoice as one fee (quantity 1, price = total) on the member; return the fee id.

        The invoice number is in the fee's name and in ``properties`` so a person
        (or a reconciliation) can match it; the fee takes the organisation's
        currency, ``export.currency`` is not sent. Fees cannot be read back with the
        granted scopes, so an unknown outcome must go to a person.
        """
        if not self.fee_plan_id:
            raise ProviderError("invalid", "No OfficeRnD fee plan id is set: enter the price plan "
                                "fees are booked on in the integration settings.")
        name = f"Invoice {export.invoice_number}"
        if export.description:
            name = f"{name}: {export.description}"[:200]
        body = {"name": name, "issueDate": export.issue_date.isoformat(), "location": export.location_id,
                "plan": self.fee_plan_id, "price": export.total, "quantity": 1, "member": export.member_id,
                "properties": {INVOICE_PROPERTY: export.invoice_number}}
        payload = self._request("POST", "/fees", body=body)
        fee_id = payload.get("_id") if isinstance(payload, dict) else None
        if not fee_id:
            raise OutcomeUnknown("OfficeRnD accepted the fee but returned no id.", details=payload)
        return fee_id

    def find_export(self, invoice_number: str) -> str | None:
        """Not possible with the granted scopes (see ``supports_export_lookup``).

        Raises rather than returning None, because None would read as "never
        exported" and invite a second, duplicate fee.
        """
        raise NotImplementedError("OfficeRnD fees cannot be read with the granted scopes")

    def webhooks(self) -> list[dict]:
        """The organisation's webhook subscriptions, as the vendor returns them."""
        return list(self._pages("/webhooks"))


def _safe_json(resp: requests.Response):
    try:
        return resp.json()
    except ValueError:
        return None


def _member(item: dict) -> Member:
    """Our view of an OfficeRnD member record."""
    properties = item.get("properties") or {}
    company = properties.get(COMPANY_PROPERTY) if isinstance(properties, dict) else None
    if not company and isinstance(item.get("company"), dict):
        company = item["company"].get("name")  # when the API expands the reference
    return Member(id=item["_id"], name=item.get("name") or "", email=item.get("email") or "",
                  company=company or None, active=item.get("status", "active") in ACTIVE_STATUSES, raw=item)
