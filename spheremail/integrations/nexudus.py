"""Nexudus: the :class:`~spheremail.integrations.base.Provider` for Nexudus Spaces.

What this module has to get right (see ``docs/vendor-apis.md``, Nexudus section):

* Auth: one password grant when the operator connects, then only the access and
  refresh tokens live in the caller's :class:`TokenStore` (encrypted there); the password
  is dropped. The refresh token *rotates*: every refresh kills the old one, so the new
  one is saved at once and refreshes are serialised (``refresh_lock``) with a re-load
  of the store, in case another worker or process refreshed first.
* Errors: every failure becomes a :class:`ProviderError` with a ``kind`` the services
  understand and a message an operator can act on (never a secret in it).
* Writes are never retried blindly: a timeout, dropped connection or 5xx after sending
  raises :class:`OutcomeUnknown`; the export service then calls :meth:`find_export`.
  Only HTTP 409 (Nexudus' "too many requests", which means *not processed*) and
  connection failures before anything was sent are retried.
* Pacing: Nexudus counts every request (1 per 100 ms, 120/min, 5,000/hour) and every
  write (60/min, 5,000/day). :class:`RateLimiter` keeps us under those on our side, so
  409s are the exception; when one comes anyway we wait its ``Retry-After``. A request
  is counted where the server counts it: on arrival, estimated from its round trip, so
  a write does not pay a whole round trip on top of the write interval.
"""
from __future__ import annotations

import collections
import datetime as dt
import logging
import math
import random
import threading
import time
from contextlib import nullcontext
from decimal import Decimal
from typing import Callable, Iterator
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError

from .base import (InvoiceExport, Location, Member, NewMember, OutcomeUnknown, ProviderError,
                   TokenStore)

log = logging.getLogger(__name__)

NEXUDUS_BASE = "https://spaces.nexudus.com"

# Published limits (vendor-apis.md, confirmed). Constructor parameters of the provider use
# the same names so a benchmark can scale them together with the stand-in's.
PUBLISHED_LIMITS = {
    "min_interval": 0.1,
    "per_minute": 120,
    "per_hour": 5000,
    "writes_per_minute": 60,
    "writes_per_day": 5000,
}

MAX_PAGE_SIZE = 1000
DEFAULT_TOKEN_LIFETIME = 604799

RECONNECT = ("reconnect needed: Nexudus no longer accepts the saved sign-in (it expired, was "
             "revoked or was used elsewhere). Connect Nexudus again with the email and password "
             "of a Nexudus user that has API access.")
NO_API_ACCESS = ("Nexudus refused the call (401): this Nexudus user has no API access, or lacks "
                 "permission for {what}. In Nexudus, give the user \"API access\" and the needed "
                 "permissions, then try again.")


# --------------------------------------------------------------------------- pacing

class _Slot:
    """One request counted by the limiter, at the moment we think the server counted it.

    The server counts a request when it arrives: some time after we sent it and before
    its answer reached us. ``at`` is None while the request is in flight; once answered it
    is the answer's time minus half of the fastest round trip seen (see
    :meth:`RateLimiter.release`); after a failure (timeout, dropped connection) it is the
    time of the failure, the latest the server can have counted it.
    """

    __slots__ = ("at", "sent")

    def __init__(self, sent: float):
        self.at: float | None = None  # None while in flight
        self.sent = sent


class _Rule:
    def __init__(self, count: int, window: float, writes_only: bool):
        self.count = max(1, int(count))
        self.window = float(window)
        self.writes_only = writes_only
        self.slots: collections.deque[_Slot] = collections.deque()


class RateLimiter:
    """Thread-safe client-side pacing under Nexudus' limits; share one per account.

    The per-minute limits are *smoothed* into a minimum gap (120/min → one request per
    0.5 s; 60 writes/min → one write per second) so a long batch never stalls for most of
    a minute waiting for a window to empty. The hour and day limits are sliding windows.
    Gaps are measured between the moments the server counted the requests (their arrival,
    estimated as explained in :meth:`release`), so the next write may leave one interval
    after the previous one arrived, not one interval after its answer came back; a
    request still in flight holds its place (its arrival is not known yet), so writes
    never overtake one another on the way. :meth:`try_acquire` never sleeps: it returns
    how long to wait, so the caller decides (and can give up past its ``max_wait``).

    ``time_scale`` divides every window (a stand-in running ``scale`` times faster, for
    tests and benchmarks); count limits can also be changed one by one.
    """

    def __init__(self, *, min_interval: float = 0.1, per_minute: int = 120,
                 per_hour: int = 5000, writes_per_minute: int = 60,
                 writes_per_day: int = 5000, time_scale: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._answered = threading.Condition(self._lock)
        self._paused_until = 0.0
        self._fastest: float | None = None  # shortest round trip seen, seconds
        minute, hour, day = 60.0 / time_scale, 3600.0 / time_scale, 86400.0 / time_scale
        self._rules = [
            _Rule(1, min_interval / time_scale, False),
            _Rule(1, minute / per_minute, False),
            _Rule(per_hour, hour, False),
            _Rule(1, minute / writes_per_minute, True),
            _Rule(writes_per_day, day, True),
        ]

    def try_acquire(self, write: bool) -> tuple[_Slot | None, float]:
        """``(slot, 0)`` when a request may go now (call :meth:`release` after), else
        ``(None, wait)``: sleep ``wait`` seconds, or, when ``wait`` is 0, a request in
        flight holds the way: :meth:`wait_for_answer`, then try again."""
        with self._lock:
            now = self._clock()
            wait = max(0.0, self._paused_until - now)
            held = False
            rules = [r for r in self._rules if write or not r.writes_only]
            for rule in rules:
                slots = rule.slots
                while slots and slots[0].at is not None and slots[0].at <= now - rule.window:
                    slots.popleft()
                if len(slots) >= rule.count:
                    oldest = slots[0]
                    if oldest.at is None:
                        held = True  # its arrival time is unknown until it is answered
                    else:
                        wait = max(wait, oldest.at + rule.window - now)
            if wait > 0:
                return None, wait
            if held:
                return None, 0.0
            slot = _Slot(now)
            for rule in rules:
                rule.slots.append(slot)
            return slot, 0.0

    def wait_for_answer(self, write: bool, timeout: float) -> None:
        """Block (in real time: it is about another thread) until no request in flight
        holds the way of a ``write`` (or a read), or ``timeout`` seconds."""
        rules = [r for r in self._rules if write or not r.writes_only]
        with self._answered:
            self._answered.wait_for(
                lambda: not any(len(r.slots) >= r.count and r.slots[0].at is None for r in rules),
                timeout)

    def release(self, slot: _Slot, *, answered: bool = False) -> None:
        """The request of ``slot`` is finished: ``answered`` when an HTTP answer came back.

        The server counted it between our send and its answer. With ``F`` the fastest
        round trip seen, the answer time minus ``F / 2`` is late enough: the next request
        then reaches the server at least one window after this one as long as this
        request's way back plus the next one's way out take at least ``F / 2``. On a
        symmetric path each way takes about ``F / 2`` at the least, so that is a margin of
        about ``F / 2`` for jitter (pure send-time stamping would have none: a request
        delayed on its way out would arrive too close to the next one). A slow answer
        moves the estimate later, never earlier. Without an answer (timeout, dropped
        connection) the server may have counted it until now, so now it is.
        """
        with self._lock:
            now = self._clock()
            if answered:
                trip = max(0.0, now - slot.sent)
                self._fastest = trip if self._fastest is None else min(self._fastest, trip)
                slot.at = max(slot.sent, now - self._fastest / 2)
            else:
                slot.at = now
            self._answered.notify_all()

    def pause(self, seconds: float) -> None:
        """Hold every request for ``seconds`` (after a 409: the server wants us to slow down)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)


_SHARED_LIMITERS: dict[tuple, RateLimiter] = {}
_SHARED_LOCK = threading.Lock()


def shared_limiter(api_base: str, **limits) -> RateLimiter:
    """The process-wide limiter for ``api_base`` with these limits (created on first use).

    Every provider in a process that talks to the same Nexudus host shares it, so the sync
    job, the sign-up hook and the export job together stay under the account's limits.
    """
    merged = {**PUBLISHED_LIMITS, "time_scale": 1.0, **limits}
    key = (api_base, tuple(sorted(merged.items())))
    with _SHARED_LOCK:
        limiter = _SHARED_LIMITERS.get(key)
        if limiter is None:
            limiter = _SHARED_LIMITERS[key] = RateLimiter(**merged)
        return limiter


# A refresh kills the old refresh token, so two refreshes of the same account must never
# run at once. Refreshing is rare (about once a week), so one process-wide lock costs
# nothing; across processes, pass a database lease as ``refresh_lock``.
_REFRESH_LOCK = threading.Lock()


# --------------------------------------------------------------------------- helpers

def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request failed before any byte left (safe to retry even a write)."""
    if isinstance(exc, (requests.exceptions.ConnectTimeout, requests.exceptions.SSLError)):
        return True
    # requests wraps urllib3's MaxRetryError, whose ``reason`` says what went wrong;
    # NewConnectionError (refused, DNS) means the TCP connection never existed.
    cause = exc.args[0] if exc.args else None
    reason = getattr(cause, "reason", cause)
    return isinstance(reason, NewConnectionError)


def _retry_after(response: requests.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0


def _json(response: requests.Response):
    try:
        return response.json()
    except ValueError:
        return None


def _errors_text(data) -> str:
    """The messages of a Nexudus envelope, for an operator (no attempted values)."""
    if not isinstance(data, dict):
        return ""
    parts = []
    for err in data.get("Errors") or []:
        if isinstance(err, dict):
            prop, msg = err.get("PropertyName"), err.get("Message")
            if msg:
                parts.append(f"{prop}: {msg}" if prop else str(msg))
    if not parts and data.get("Message"):
        parts.append(str(data["Message"]))
    return "; ".join(parts)


def _int_id(value: str):
    """Nexudus Ids are integers; ours are strings. Send ints when they look like ints."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def _amount(total: Decimal) -> float:
    """``total`` as a JSON number that reads back as exactly the same decimal.

    JSON numbers go out as Python floats; for money amounts (a few decimals) the shortest
    float repr is the same decimal text, and we refuse any amount where it would not be.
    """
    if not isinstance(total, Decimal):
        total = Decimal(str(total))
    if not total.is_finite():
        raise ProviderError("invalid", "The invoice total is not a number.")
    value = float(total)
    if Decimal(repr(value)) != total:
        raise ProviderError("invalid", f"The invoice total {total} cannot be sent to Nexudus exactly.")
    return value


def _member(record: dict) -> Member:
    return Member(
        id=str(record.get("Id")),
        name=record.get("FullName") or "",
        email=(record.get("Email") or "").strip(),
        company=record.get("CompanyName") or None,
        active=bool(record.get("Active", True)) and not record.get("Archived", False),
        raw=record,
    )


# --------------------------------------------------------------------------- provider

class NexudusProvider:
    """:class:`~spheremail.integrations.base.Provider` for Nexudus over its REST API.

    ``email``/``password`` (and ``totp`` for a 2FA user) are only needed to connect:
    the first :meth:`check_credentials` does the password grant, saves the tokens in
    ``token_store`` and forgets the password. Later instances need only the store.

    ``api_base`` is the host root (``https://spaces.nexudus.com``; a trailing ``/api``
    is accepted); ``token_url`` defaults to ``{api_base}/api/token``. ``business_id`` is
    the business used when a :class:`NewMember` or :class:`InvoiceExport` names none.
    ``timeout`` applies to connecting and to reading each answer. ``sleep``/``clock``
    drive waiting and pacing; ``wall_clock`` (epoch seconds) stamps token expiry, which
    is persisted. ``max_wait`` caps how long one call waits for rate limits before it
    raises ``ProviderError(kind="rate_limited")``. ``refresh_lock`` is a context manager,
    or a callable returning one, held while refreshing (default: a process-wide lock;
    pass a database lease when several processes share the store). ``limiter`` defaults
    to the process-wide one for ``api_base`` and the limits given here
    (``min_interval``, ``per_minute``, ``per_hour``, ``writes_per_minute``,
    ``writes_per_day``; ``time_scale`` divides every window, mirroring a stand-in started
    with ``scale``). Reads are retried ``read_retries`` times on 5xx, timeouts and
    connection errors, with exponential backoff from ``backoff`` seconds plus jitter.
    """

    name = "nexudus"
    supports_export_lookup = True

    def __init__(self, email: str | None = None, password: str | None = None, *,
                 api_base: str = NEXUDUS_BASE, token_store: TokenStore,
                 token_url: str | None = None, business_id: str | None = None,
                 timeout: float = 10, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, max_wait: float = 30,
                 totp: str | None = None, refresh_lock=None,
                 limiter: RateLimiter | None = None,
                 min_interval: float = PUBLISHED_LIMITS["min_interval"],
                 per_minute: int = PUBLISHED_LIMITS["per_minute"],
                 per_hour: int = PUBLISHED_LIMITS["per_hour"],
                 writes_per_minute: int = PUBLISHED_LIMITS["writes_per_minute"],
                 writes_per_day: int = PUBLISHED_LIMITS["writes_per_day"],
                 time_scale: float = 1.0, read_retries: int = 3, backoff: float = 0.5,
                 session: requests.Session | None = None):
        base = api_base.rstrip("/")
        if base.endswith("/api"):
            base = base[:-4]
        self._base = base
        self._token_url = token_url or f"{base}/api/token"
        self._email = email
        self._password = password
        self._totp = totp
        self._store = token_store
        self._business_id = business_id
        self._timeout = timeout
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock
        self._max_wait = max_wait
        self._refresh_lock = refresh_lock if refresh_lock is not None else _REFRESH_LOCK
        limits = dict(min_interval=min_interval, per_minute=per_minute, per_hour=per_hour,
                      writes_per_minute=writes_per_minute, writes_per_day=writes_per_day,
                      time_scale=time_scale)
        if limiter is None:
            # A fake clock (tests) must not leak into the limiter other providers share.
            limiter = (shared_limiter(base, **limits) if clock is time.monotonic
                       else RateLimiter(clock=clock, **limits))
        self._limiter = limiter
        self._read_retries = read_retries
        self._backoff = backoff
        self._rng = random.SystemRandom()
        self._token: dict | None = None
        self._grant_lock = threading.Lock()
        self._businesses: dict[str, Location] | None = None
        self._businesses_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.stats: collections.Counter = collections.Counter()
        if session is None:
            session = requests.Session()
            # No transport-level retries: whether a request may be repeated is decided
            # here, per request, because repeating a write could create it twice.
            adapter = HTTPAdapter(max_retries=0, pool_maxsize=8)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        session.headers.update({"Accept": "application/json", "User-Agent": "SphereMail"})
        self._session = session

    # ------------------------------------------------------------------ counters

    def _bump(self, name: str, amount: float = 1) -> None:
        with self._stats_lock:
            self.stats[name] += amount

    @property
    def requests_made(self) -> int:
        """HTTP requests sent (token requests included)."""
        return self.stats["requests"]

    @property
    def throttled(self) -> int:
        """409 answers seen."""
        return self.stats["throttled"]

    # ------------------------------------------------------------------ tokens

    def _host(self) -> str:
        return urlsplit(self._base).netloc or self._base

    def _token_from(self, data: dict) -> dict:
        lifetime = float(data.get("expires_in") or 3600)
        # Renew a little early (10 % of the lifetime, at most a minute) so a token does not
        # expire between our check and the server's.
        margin = min(60.0, lifetime * 0.1)
        return {"access_token": data["access_token"],
                "refresh_token": data.get("refresh_token"),
                "token_type": data.get("token_type", "bearer"),
                "expires_at": self._wall_clock() + lifetime - margin}

    def _expired(self, token: dict) -> bool:
        expires_at = token.get("expires_at")
        return expires_at is not None and float(expires_at) <= self._wall_clock()

    def _locked(self):
        lock = self._refresh_lock
        # An object whose *type* is a context manager (threading.Lock()) is used as is;
        # anything else callable (a class, a factory for a database lease) makes one.
        if hasattr(type(lock), "__enter__"):
            return lock
        if callable(lock):
            return lock()
        return nullcontext()

    def _token_request(self, form: dict, *, refreshing: bool) -> dict:
        """POST the token URL; map OAuth errors to ProviderError kinds."""
        throttle_waited = 0.0
        while True:
            try:
                response = self._send("POST", self._token_url, write=False, data=form,
                                      headers={"Accept": "application/json"})
            except requests.Timeout:
                # A refresh that timed out may have rotated the token on the server; the next
                # attempt then fails with invalid_grant and asks for a reconnect.
                raise ProviderError("unreachable", f"Nexudus at {self._host()} did not answer "
                                    "the sign-in request in time; try again.") from None
            except requests.RequestException as exc:
                raise ProviderError("unreachable", f"Could not reach Nexudus at {self._host()} "
                                    f"({exc.__class__.__name__}); check the address and the "
                                    "network.") from None
            if response.status_code == 409:
                throttle_waited = self._throttled(response, throttle_waited)
                continue
            break
        data = _json(response)
        if response.ok and isinstance(data, dict) and data.get("access_token"):
            return data
        if response.status_code >= 500:
            raise ProviderError("remote", f"Nexudus had an internal error ({response.status_code}) "
                                "while signing in; try again later.", status=response.status_code)
        code = data.get("error") if isinstance(data, dict) else None
        description = data.get("error_description") if isinstance(data, dict) else None
        if code == "two_factor_auth_check":
            raise ProviderError("two_factor", "This Nexudus user has two-factor authentication: "
                                "enter the current code from the authenticator app and connect "
                                "again.", status=response.status_code)
        if code == "must_reset_password":
            raise ProviderError("auth", "Nexudus requires this user to reset their password "
                                "(must_reset_password): sign in to Nexudus, set a new password, "
                                "then connect again.", status=response.status_code)
        if refreshing:
            raise ProviderError("auth", RECONNECT, status=response.status_code)
        if code == "invalid_grant":
            raise ProviderError("auth", "Nexudus rejected the sign-in: "
                                f"{description or 'the email or password is incorrect.'}",
                                status=response.status_code)
        raise ProviderError("auth", f"Nexudus refused the sign-in ({code or response.status_code}).",
                            status=response.status_code)

    def _password_grant(self) -> dict:
        if not (self._email and self._password):
            raise ProviderError("auth", "Nexudus is not connected: enter the email and password "
                                "of a Nexudus user with API access.")
        form = {"grant_type": "password", "username": self._email, "password": self._password}
        if self._totp:
            form["totp"] = self._totp
        token = self._token_from(self._token_request(form, refreshing=False))
        self._store.save(token)
        self._token = token
        self._bump("password_grants")
        # Only the rotating refresh token is kept from now on (engineering.md, "Secrets").
        self._password = None
        self._totp = None
        return token

    def _refresh(self, failed_access: str | None) -> dict:
        """Swap the refresh token for new tokens, unless another worker already did."""
        with self._locked():
            # Re-load under the lock: another thread/process may have refreshed while we
            # waited, in which case our refresh token is already dead and theirs is good.
            stored = self._store.load()
            if (stored and stored.get("access_token")
                    and stored["access_token"] != failed_access and not self._expired(stored)):
                self._token = stored
                return stored
            current = stored or self._token
            refresh_token = current.get("refresh_token") if current else None
            if not refresh_token:
                raise ProviderError("auth", RECONNECT)
            data = self._token_request({"grant_type": "refresh_token",
                                        "refresh_token": refresh_token}, refreshing=True)
            token = self._token_from(data)
            if not token.get("refresh_token"):
                token["refresh_token"] = refresh_token
            # Save before anything else: the old refresh token is dead already.
            self._store.save(token)
            self._token = token
            self._bump("refreshes")
            return token

    def _access_token(self) -> tuple[str, bool]:
        """A usable access token, and whether it was obtained just now."""
        token = self._token or self._store.load()
        if token is None:
            # Threads sharing this provider must not all sign in at once (the first one
            # drops the password); the others wait and use its token.
            with self._grant_lock:
                token = self._token or self._store.load()
                if token is None:
                    return self._password_grant()["access_token"], True
        self._token = token
        if self._expired(token):
            return self._refresh(token.get("access_token"))["access_token"], True
        return token["access_token"], False

    # ------------------------------------------------------------------ HTTP

    def _send(self, method: str, url: str, *, write: bool, **kw) -> requests.Response:
        """One HTTP request, paced by the limiter; no retries here."""
        waited = 0.0
        while True:
            slot, wait = self._limiter.try_acquire(write)
            if slot is not None:
                break
            if wait <= 0:
                # Another thread's request holds the way until its answer tells when the
                # server counted it; that answer comes within its timeout.
                self._limiter.wait_for_answer(write, self._timeout)
                continue
            if waited + wait > self._max_wait:
                raise ProviderError("rate_limited", "Nexudus' request limit is used up for now; "
                                    f"the rest continues in about {math.ceil(wait)} s.",
                                    retry_after=wait)
            self._sleep(wait)
            waited += wait
        self._bump("paced_seconds", waited)
        self._bump("requests")
        try:
            response = self._session.request(method, url, timeout=self._timeout, **kw)
        except BaseException:
            self._limiter.release(slot)
            raise
        self._limiter.release(slot, answered=True)
        return response

    def _throttled(self, response: requests.Response, waited: float) -> float:
        """Handle a 409 (not processed): pause everyone for Retry-After, or give up."""
        self._bump("throttled")
        retry_after = _retry_after(response)
        if waited + retry_after > self._max_wait:
            raise ProviderError("rate_limited", "Nexudus is limiting requests (409) longer than "
                                "we wait; the rest continues on the next run.", status=409,
                                retry_after=retry_after)
        self._limiter.pause(retry_after)
        return waited + retry_after

    def _backoff_sleep(self, attempt: int) -> None:
        delay = min(10.0, self._backoff * (2 ** attempt)) * (0.5 + self._rng.random())
        self._bump("retries")
        self._sleep(delay)

    def _call(self, method: str, path: str, *, what: str, params: dict | None = None,
              body: dict | None = None):
        """An API call with auth, pacing, 409 waits and (for reads) retries; returns JSON."""
        write = method != "GET"
        url = f"{self._base}{path}"
        attempt = 0
        throttle_waited = 0.0
        refreshed = False
        while True:
            access, fresh = self._access_token()
            try:
                response = self._send(method, url, write=write, params=params, json=body,
                                      headers={"Authorization": f"Bearer {access}"})
            except requests.RequestException as exc:
                if write and not _never_sent(exc):
                    raise OutcomeUnknown(
                        f"No answer from Nexudus to {what} ({exc.__class__.__name__}): it may or "
                        "may not have been done. Check before repeating it.") from None
                if attempt < self._read_retries:
                    self._backoff_sleep(attempt)
                    attempt += 1
                    continue
                raise ProviderError("unreachable", f"Could not reach Nexudus at {self._host()} to "
                                    f"{what} ({exc.__class__.__name__}).") from None
            status = response.status_code
            if status == 409:
                throttle_waited = self._throttled(response, throttle_waited)
                continue
            if status == 401:
                # An expired or revoked access token also answers 401: refresh once and
                # repeat (a 401 was not processed, so repeating a write is safe). A 401
                # with a token we just obtained means the user may not do this.
                if not fresh and not refreshed:
                    self._refresh(access)
                    refreshed = True
                    continue
                raise ProviderError("scope", NO_API_ACCESS.format(what=what), status=401)
            if status >= 500:
                if write:
                    raise OutcomeUnknown(
                        f"Nexudus answered {status} to {what}: it may or may not have been done. "
                        "Check before repeating it.", status=status)
                if attempt < self._read_retries:
                    self._backoff_sleep(attempt)
                    attempt += 1
                    continue
                raise ProviderError("remote", f"Nexudus had an internal error ({status}) when "
                                    f"asked to {what}; try again later.", status=status)
            data = _json(response)
            if status == 400:
                detail = _errors_text(data) or "the request was refused"
                raise ProviderError("invalid", f"Nexudus refused to {what}: {detail}", status=400,
                                    details=(data or {}).get("Errors") if isinstance(data, dict)
                                    else None)
            if status == 403:
                raise ProviderError("scope", NO_API_ACCESS.format(what=what), status=403)
            if status == 404:
                raise ProviderError("not_found", f"Nexudus does not know the record needed to "
                                    f"{what}.", status=404)
            if not response.ok or data is None:
                raise ProviderError("remote", f"Nexudus gave an unexpected answer ({status}) when "
                                    f"asked to {what}.", status=status)
            if write and isinstance(data, dict) and not data.get("WasSuccessful", False):
                # Commands answer 200 even when they fail: only WasSuccessful tells.
                detail = _errors_text(data) or "no reason given"
                raise ProviderError("invalid", f"Nexudus did not {what}: {detail}", status=status,
                                    details=data.get("Errors"))
            return data

    def _pages(self, path: str, params: dict | None = None, *, what: str,
               size: int = MAX_PAGE_SIZE) -> Iterator[dict]:
        """Every record of a Records list, page by page (stable order by Id)."""
        page = 1
        while True:
            query = {"page": page, "size": size, "orderBy": "Id", "dir": "Ascending",
                     **(params or {})}
            data = self._call("GET", path, what=what, params=query)
            records = data.get("Records") or []
            yield from records
            total_pages = data.get("TotalPages") or 0
            if not records or not data.get("HasNextPage") or page >= total_pages:
                return
            page += 1

    # ------------------------------------------------------------------ Provider

    def check_credentials(self) -> None:
        """Sign in if there is no token yet, then read the businesses once."""
        self._access_token()  # signs in when there is no token yet
        self._call("GET", "/api/sys/businesses", what="list the businesses",
                   params={"page": 1, "size": 1})

    def locations(self) -> list[Location]:
        """Every business; ``raw`` keeps CountryId, SimpleTimeZoneId and CurrencyCode."""
        found = [Location(id=str(rec.get("Id")), name=rec.get("Name") or "", raw=rec)
                 for rec in self._pages("/api/sys/businesses", what="list the businesses")]
        self._businesses = {loc.id: loc for loc in found}
        return found

    def _business(self, location_id: str | None) -> Location:
        wanted = str(location_id or self._business_id or "")
        if not wanted:
            raise ProviderError("invalid", "No Nexudus business chosen for this location.")
        if self._businesses is None or wanted not in self._businesses:
            with self._businesses_lock:
                # Creates sent from several threads read the businesses once, not each.
                if self._businesses is None or wanted not in self._businesses:
                    self.locations()
        business = (self._businesses or {}).get(wanted)
        if business is None:
            raise ProviderError("not_found", f"Nexudus has no business with id {wanted}.")
        return business

    def iter_members(self) -> Iterator[Member]:
        """Every coworker, 1,000 per page."""
        for record in self._pages("/api/spaces/coworkers", what="list the coworkers"):
            yield _member(record)

    def search_members(self, query: str, limit: int = 20) -> list[Member]:
        """Coworkers whose name (or email) contains ``query``; emails first if it has an ``@``."""
        query = query.strip()
        if not query:
            return []
        size = max(1, min(limit, MAX_PAGE_SIZE))
        filters = (["Coworker_Email"] if "@" in query
                   else ["Coworker_FullName", "Coworker_Email"])
        found: dict[str, Member] = {}
        for name in filters:
            data = self._call("GET", "/api/spaces/coworkers", what="search the coworkers",
                              params={"page": 1, "size": size, "orderBy": "FullName",
                                      "dir": "Ascending", name: query})
            for record in data.get("Records") or []:
                member = _member(record)
                found.setdefault(member.id, member)
            if len(found) >= limit:
                break
        return list(found.values())[:limit]

    def find_member_by_email(self, email: str) -> Member | None:
        """The coworker with exactly this email (ignoring case), or None.

        Nexudus may match ``Coworker_Email`` as a substring (``ann@x.com`` would also find
        ``joann@x.com``), so the answer is filtered here for an exact match.
        """
        wanted = email.strip().lower()
        if not wanted:
            return None
        matches = [m for m in (_member(r) for r in self._pages(
            "/api/spaces/coworkers", {"Coworker_Email": wanted}, what="look up a coworker"))
            if m.email.lower() == wanted]
        if not matches:
            return None
        if len(matches) > 1:
            log.warning("Nexudus has %d coworkers with the same email; using the first active one",
                        len(matches))
        matches.sort(key=lambda m: (not m.active, _int_id(m.id) if m.id.isdigit() else 0))
        return matches[0]

    def create_member(self, new: NewMember) -> Member:
        """Create an individual coworker in the chosen business; ``invalid`` when refused."""
        business = self._business(new.location_id)
        country, zone = business.raw.get("CountryId"), business.raw.get("SimpleTimeZoneId")
        if country is None or zone is None:
            raise ProviderError("invalid", f"The Nexudus business {business.name} has no country "
                                "or time zone set; set them in Nexudus first.")
        body = {"FullName": new.name, "Email": new.email, "CountryId": country,
                "SimpleTimeZoneId": zone, "CoworkerType": 1,
                "InvoicingBusinessId": _int_id(business.id),
                # False: SphereMail sends its own welcome email, not Nexudus.
                "CreateUser": False}
        if new.company:
            body["CompanyName"] = new.company
        if new.phone:
            body["MobilePhone"] = new.phone  # field name unconfirmed (vendor-apis.md)
        data = self._call("POST", "/api/spaces/coworkers", what="create the coworker", body=body)
        new_id = (data.get("Value") or {}).get("Id")
        if new_id is None:
            raise OutcomeUnknown("Nexudus created the coworker but did not say its id; look it "
                                 "up by email before trying again.")
        return Member(id=str(new_id), name=new.name, email=new.email, company=new.company,
                      active=True, raw={**body, "Id": new_id})

    def export_invoice(self, export: InvoiceExport) -> str:
        """Create one pending charge for the whole invoice; return the charge Id.

        The invoice number goes into ``PurchaseOrder`` (and ``Description``) so that
        :meth:`find_export` can find the charge after an unknown outcome.
        """
        business = self._business(export.location_id)
        currency = business.raw.get("CurrencyCode")
        if currency and export.currency and currency.upper() != export.currency.upper():
            raise ProviderError("invalid", f"Invoice {export.invoice_number} is in "
                                f"{export.currency} but the Nexudus business {business.name} "
                                f"bills in {currency}.")
        number = export.invoice_number
        text = (export.description or "").strip()
        description = text if number in text else (f"{text} (invoice {number})" if text
                                                    else f"Invoice {number}")
        body = {"CoworkerId": _int_id(export.member_id), "BusinessId": _int_id(business.id),
                # One line with the invoice total: whether TotalAmount is per unit or per
                # line is unconfirmed, and with Quantity 1 both readings agree.
                "Quantity": 1, "DiscountAmount": 0, "CreditAmount": 0,
                "TotalAmount": _amount(export.total),
                "Description": description, "InvoiceLineDisplayAs": description,
                "PurchaseOrder": number,
                "SaleDate": dt.datetime.combine(export.issue_date, dt.time()).isoformat()}
        data = self._call("POST", "/api/billing/charges", what=f"export invoice {number}",
                          body=body)
        charge_id = (data.get("Value") or {}).get("Id")
        if charge_id is None:
            found = self.find_export(number)
            if found is None:
                raise OutcomeUnknown(f"Nexudus accepted invoice {number} without saying the "
                                     "charge id, and it cannot be found yet.")
            return found
        return str(charge_id)

    def find_export(self, invoice_number: str) -> str | None:
        """The Id of the charge whose PurchaseOrder is exactly ``invoice_number``, or None."""
        matches = [r for r in self._pages("/api/billing/charges",
                                          {"Charge_PurchaseOrder": invoice_number},
                                          what=f"look up the export of invoice {invoice_number}")
                   if str(r.get("PurchaseOrder") or "") == invoice_number]
        if not matches:
            return None
        if len(matches) > 1:
            log.warning("invoice %s was exported to Nexudus %d times", invoice_number, len(matches))
        matches.sort(key=lambda r: _int_id(r.get("Id")) if str(r.get("Id")).isdigit() else 0)
        return str(matches[0].get("Id"))
