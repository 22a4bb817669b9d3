"""A local stand-in for the Nexudus API, for tests, benchmarks and the demo.

It behaves like the shapes written down in ``docs/vendor-apis.md`` (Nexudus section),
including the awkward parts a real client has to cope with:

* ``POST /api/token`` password and refresh-token grants; the refresh token rotates
  (the old one dies when used); access tokens expire after ``token_ttl`` seconds;
* Bearer *or* Basic auth on API calls; any failed or unpermitted call answers 401;
* the ``Records`` paging envelope, ``Coworker_Email`` matching as a case-insensitive
  *substring* (deliberately: exact matching is the client's job);
* write envelopes (``WasSuccessful``/``Errors``), 400 validation envelopes, and
  commands that answer 200 with ``WasSuccessful: false``;
* the published rate limits, answered with HTTP 409, ``Retry-After: 1`` and an empty body;
* fault injection (latency, 5xx, timeouts, dropped connections, "commit then lose the
  answer"), controllable from Python and over HTTP under ``/_control/``.

Use it from Python::

    standin = NexudusStandin(scale=100)
    user = standin.add_user("ops@example.test", "pw")
    with standin.running() as base_url:
        ...

or standalone: ``python -m tests.standins.nexudus --port 8102``.
"""
from __future__ import annotations

import argparse
import base64
import collections
import datetime as dt
import math
import secrets
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from flask import Flask, Response, jsonify, request

from tests.standins.server import start_server

DEFAULT_TOKEN_TTL = 604799

# The published limits (vendor-apis.md, "Rate limits", confirmed). Names are shared with
# the client's constructor so a test or benchmark can scale both sides the same way.
PUBLISHED_LIMITS = {
    "min_interval": 0.1,  # all requests: 1 per 100 ms
    "per_minute": 120,  # all requests
    "per_hour": 5000,  # all requests
    "writes_per_minute": 60,
    "writes_per_day": 5000,
}

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

BAD_CREDENTIALS = "The user name or password is incorrect."


@dataclass
class StandinUser:
    """A Nexudus user that can log in to the API."""

    email: str
    password: str
    api_access: bool = True
    two_factor: bool = False
    totp: str = "123456"
    must_reset: bool = False


@dataclass
class _Fault:
    kind: str  # fail | timeout | drop | throttle | lose_answer | command_fails
    remaining: int
    method: str | None = None
    path: str | None = None
    status: int = 500
    seconds: float = 2.0
    mode: str = "drop"  # lose_answer: drop | timeout | 500
    message: str = "The command could not be completed."

    def matches(self, kind: str, method: str, path: str) -> bool:
        return (self.kind == kind and self.remaining > 0
                and (self.method is None or self.method.upper() == method)
                and (self.path is None or self.path == path))


@dataclass
class _Rule:
    name: str
    count: int
    window: float
    writes_only: bool
    log: collections.deque = field(default_factory=collections.deque)


def _limit_rules(limits: dict, scale: float) -> list[_Rule]:
    """Sliding windows for ``limits``; ``scale`` makes time run faster (windows / scale)."""
    return [
        _Rule("min_interval", 1, limits["min_interval"] / scale, False),
        _Rule("per_minute", limits["per_minute"], 60.0 / scale, False),
        _Rule("per_hour", limits["per_hour"], 3600.0 / scale, False),
        _Rule("writes_per_minute", limits["writes_per_minute"], 60.0 / scale, True),
        _Rule("writes_per_day", limits["writes_per_day"], 86400.0 / scale, True),
    ]


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def _envelope(status: int, message: str, *, value=None, errors=None) -> dict:
    return {"Status": status, "Message": message, "Value": value,
            "WasSuccessful": status == 200 and not errors, "Errors": errors}


class _DropConnection(Exception):
    """Raised inside a view: the WSGI wrapper closes the socket instead of answering."""


class NexudusStandin:
    """An in-memory Nexudus account served over real HTTP.

    Parameters: ``token_ttl`` (seconds an access token lives); ``limits`` (overrides of
    :data:`PUBLISHED_LIMITS`, e.g. ``{"writes_per_minute": 600}``); ``scale`` (time runs
    ``scale`` times faster for the limits: same counts, windows divided, so ``scale=100``
    allows 60 writes per 0.6 s and one request per 1 ms; the client's ``time_scale``
    mirrors it exactly); ``rate_limits`` (False switches them off); ``retry_after`` (the
    header value sent with 409); ``clock`` (monotonic seconds, for tokens and limits).

    Everything below is safe to call from the test thread while the server runs.
    """

    def __init__(self, *, token_ttl: float = DEFAULT_TOKEN_TTL, scale: float = 1.0,
                 limits: dict | None = None, rate_limits: bool = True,
                 retry_after: str = "1", clock=time.monotonic):
        self.token_ttl = token_ttl
        self.retry_after = retry_after
        self.clock = clock
        self.lock = threading.RLock()
        self.rate_limits_enabled = rate_limits
        self.limits = {**PUBLISHED_LIMITS, **(limits or {})}
        self.scale = scale
        self._rules = _limit_rules(self.limits, scale)
        self.latency = 0.0
        self.app = self._build_app()
        # The WSGI entry point: Flask wrapped so a view can really drop the connection.
        self.app.wsgi_app = self._drop_wrapper(self.app.wsgi_app)
        _install_control(self)
        self._stop = None
        self.base_url: str | None = None
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Forget every user, token, record, fault and counter."""
        with self.lock:
            self.users: dict[str, StandinUser] = {}
            self.access_tokens: dict[str, tuple[str, float]] = {}
            self.refresh_tokens: dict[str, str] = {}
            self.businesses: dict[int, dict] = {}
            self.coworkers: dict[int, dict] = {}
            self.charges: dict[int, dict] = {}
            self._emails: dict[str, int] = {}  # lower-cased email -> coworker Id
            # One sequence for all entities so a coworker Id is never a valid business Id:
            # a client that mixes them up fails loudly instead of by luck.
            self._next_id = 1001
            self.faults: list[_Fault] = []
            self.latency = 0.0
            for rule in self._rules:
                rule.log.clear()
            self.reset_counters()

    def reset_counters(self) -> None:
        """Zero the request counters (keeps data and tokens)."""
        with self.lock:
            self.counts: collections.Counter = collections.Counter()
            self.statuses: collections.Counter = collections.Counter()
            self.throttled = 0
            self.log: list[tuple[str, str, object]] = []

    def count(self, method: str, path: str) -> int:
        """How many requests ``method path`` arrived (including throttled and failed ones)."""
        return self.counts[f"{method.upper()} {path}"]

    @property
    def api_requests(self) -> int:
        """All requests to ``/api/...`` so far."""
        return sum(self.counts.values())

    def _new_id(self) -> int:
        with self.lock:
            new_id = self._next_id
            self._next_id += 1
            return new_id

    # ------------------------------------------------------------- seeding

    def add_user(self, email: str, password: str, *, api_access: bool = True,
                 two_factor: bool = False, totp: str = "123456",
                 must_reset: bool = False) -> StandinUser:
        """Create a Nexudus user (an admin login) that can get tokens."""
        user = StandinUser(email, password, api_access, two_factor, totp, must_reset)
        with self.lock:
            self.users[email.lower()] = user
        return user

    def add_business(self, name: str, *, currency: str = "EUR", country_id: int = 1205,
                     time_zone_id: int = 2045, address: str = "", **extra) -> dict:
        """Create a business (a location) and return its record."""
        record = {"Id": self._new_id(), "Name": name, "CurrencyCode": currency,
                  "CountryId": country_id, "SimpleTimeZoneId": time_zone_id,
                  "Address": address, **extra}
        with self.lock:
            self.businesses[record["Id"]] = record
        return record

    def add_coworker(self, full_name: str, email: str, *, business_id: int | None = None,
                     **fields) -> dict:
        """Store a coworker directly (no validation, no counters) and return its record."""
        if business_id is None and self.businesses:
            business_id = next(iter(self.businesses))
        record = {"Id": self._new_id(), "FullName": full_name, "Email": email,
                  "CompanyName": None, "Active": True, "Archived": False,
                  "InvoicingBusinessId": business_id, "BillingEmail": None,
                  "CoworkerType": 1, "UpdatedOn": _now_iso(), **fields}
        with self.lock:
            self.coworkers[record["Id"]] = record
            self._emails[email.lower()] = record["Id"]
        return record

    def seed_coworkers(self, n: int, *, business_id: int | None = None,
                       email_pattern: str = "member{i}@example.test",
                       name_pattern: str = "Member {i}") -> list[int]:
        """Add ``n`` coworkers quickly (thousands in milliseconds); return their Ids."""
        if business_id is None and self.businesses:
            business_id = next(iter(self.businesses))
        stamp = _now_iso()
        ids = []
        with self.lock:
            for i in range(1, n + 1):
                new_id = self._new_id()
                email = email_pattern.format(i=i)
                self.coworkers[new_id] = {
                    "Id": new_id, "FullName": name_pattern.format(i=i), "Email": email,
                    "CompanyName": None, "Active": True, "Archived": False,
                    "InvoicingBusinessId": business_id, "BillingEmail": None,
                    "CoworkerType": 1, "UpdatedOn": stamp}
                self._emails[email.lower()] = new_id
                ids.append(new_id)
        return ids

    def charges_for(self, purchase_order: str) -> list[dict]:
        """Stored charges whose PurchaseOrder equals ``purchase_order`` exactly."""
        with self.lock:
            return [c for c in self.charges.values() if c.get("PurchaseOrder") == purchase_order]

    # ------------------------------------------------------------- faults

    def set_latency(self, seconds: float) -> None:
        """Delay every API answer by ``seconds``."""
        self.latency = float(seconds)

    def _add_fault(self, **kw) -> None:
        with self.lock:
            self.faults.append(_Fault(**kw))

    def fail_next(self, n: int = 1, *, status: int = 500, method: str | None = None,
                  path: str | None = None) -> None:
        """The next ``n`` matching requests answer ``status`` without being processed."""
        self._add_fault(kind="fail", remaining=n, status=status, method=method, path=path)

    def timeout_next(self, n: int = 1, *, seconds: float = 2.0, method: str | None = None,
                     path: str | None = None) -> None:
        """The next ``n`` matching requests sleep ``seconds`` first, then are processed.

        Make ``seconds`` longer than the client's timeout: the client gives up, yet a write
        is still committed after the sleep (a slow server). For a deterministic "nothing
        happened" use :meth:`drop_next`; for "committed, answer lost" use
        :meth:`lose_answer_next`.
        """
        self._add_fault(kind="timeout", remaining=n, seconds=seconds, method=method, path=path)

    def drop_next(self, n: int = 1, *, method: str | None = None, path: str | None = None) -> None:
        """The next ``n`` matching requests get their connection closed, unprocessed."""
        self._add_fault(kind="drop", remaining=n, method=method, path=path)

    def throttle_next(self, n: int = 1, *, method: str | None = None,
                      path: str | None = None) -> None:
        """The next ``n`` matching requests answer 409 as if over a rate limit."""
        self._add_fault(kind="throttle", remaining=n, method=method, path=path)

    def lose_answer_next(self, n: int = 1, *, path: str | None = None, mode: str = "drop",
                         seconds: float = 2.0) -> None:
        """The next ``n`` creates (POST charges/coworkers, or ``path``) commit, then lose the answer.

        ``mode``: ``drop`` closes the connection, ``timeout`` sleeps ``seconds`` before
        answering, ``500`` answers 500 although the record exists.
        """
        if mode not in ("drop", "timeout", "500"):
            raise ValueError("mode must be drop, timeout or 500")
        self._add_fault(kind="lose_answer", remaining=n, method="POST", path=path,
                        mode=mode, seconds=seconds)

    def fail_command_next(self, n: int = 1, *, path: str | None = None, method: str | None = None,
                          message: str = "The command could not be completed.") -> None:
        """The next ``n`` writes answer 200 with ``WasSuccessful: false`` and change nothing."""
        self._add_fault(kind="command_fails", remaining=n, method=method, path=path,
                        message=message)

    def clear_faults(self) -> None:
        """Cancel every pending fault and the latency."""
        with self.lock:
            self.faults.clear()
            self.latency = 0.0

    def expire_all_tokens(self) -> None:
        """Every access token issued so far stops working now (refresh tokens still work)."""
        with self.lock:
            self.access_tokens.clear()

    def set_limits(self, *, enabled: bool | None = None, scale: float | None = None,
                   **overrides) -> dict:
        """Change the rate limits (and forget what was counted against them).

        ``overrides`` use the :data:`PUBLISHED_LIMITS` names; ``scale`` as in the
        constructor. Returns the limits now in force, with ``scale`` and ``enabled``.
        """
        unknown = set(overrides) - set(PUBLISHED_LIMITS)
        if unknown:
            raise ValueError(f"unknown limit(s): {sorted(unknown)}")
        with self.lock:
            if enabled is not None:
                self.rate_limits_enabled = enabled
            if scale is not None:
                self.scale = scale
            self.limits.update(overrides)
            self._rules = _limit_rules(self.limits, self.scale)
            return {**self.limits, "scale": self.scale, "enabled": self.rate_limits_enabled}

    def _take_fault(self, kind: str, method: str, path: str) -> _Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(kind, method, path):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def _admit(self, method: str, path: str) -> bool:
        """Sliding-window check of every published limit; records the request if admitted."""
        is_write = method in WRITE_METHODS and path != "/api/token"
        with self.lock:
            if not self.rate_limits_enabled:
                return True
            now = self.clock()
            rules = [r for r in self._rules if is_write or not r.writes_only]
            for rule in rules:
                while rule.log and rule.log[0] <= now - rule.window:
                    rule.log.popleft()
                if len(rule.log) >= rule.count:
                    return False
            for rule in rules:
                rule.log.append(now)
            return True

    # ------------------------------------------------------------- serving

    def start(self) -> str:
        """Serve on a free loopback port; return the base URL (no trailing slash)."""
        self.base_url, self._stop = start_server(self.app)
        return self.base_url

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._stop:
            self._stop()
            self._stop = None

    @contextmanager
    def running(self):
        """``with standin.running() as base_url:`` serve for the block."""
        url = self.start()
        try:
            yield url
        finally:
            self.stop()

    @staticmethod
    def _drop_wrapper(wsgi_app):
        def wrapper(environ, start_response):
            result = wsgi_app(environ, start_response)
            if environ.get("standin.drop"):
                # Close without a single byte of answer; werkzeug treats the
                # ConnectionError as "client went away" and logs nothing.
                if hasattr(result, "close"):
                    result.close()
                sock = environ.get("werkzeug.socket")
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                raise ConnectionAbortedError("nexudus stand-in dropped the connection")
            return result
        return wrapper

    # ------------------------------------------------------------- the app

    def _build_app(self) -> Flask:
        app = Flask("nexudus_standin")
        standin = self

        def drop():
            request.environ["standin.drop"] = True
            raise _DropConnection()

        @app.errorhandler(_DropConnection)
        def _dropped(_exc):
            # Whatever is returned here is never sent: the wrapper closes the socket.
            return Response(status=599)

        def unauthorized():
            return jsonify({"Message": "Authorization has been denied for this request."}), 401

        @app.before_request
        def gate():
            path, method = request.path, request.method
            if not path.startswith("/api/"):
                return None
            with standin.lock:
                standin.counts[f"{method} {path}"] += 1
            if standin.latency:
                time.sleep(standin.latency)
            if standin._take_fault("throttle", method, path) or not standin._admit(method, path):
                with standin.lock:
                    standin.throttled += 1
                return Response(b"", status=409, headers={"Retry-After": standin.retry_after})
            if standin._take_fault("drop", method, path):
                drop()
            fault = standin._take_fault("fail", method, path)
            if fault:
                return Response(b"", status=fault.status)
            fault = standin._take_fault("timeout", method, path)
            if fault:
                time.sleep(fault.seconds)
            if path == "/api/token":
                return None
            user = standin._authenticate()
            if user is None or not user.api_access:
                return unauthorized()
            return None

        @app.after_request
        def record(response):
            if request.path.startswith("/api/"):
                status = "dropped" if request.environ.get("standin.drop") else response.status_code
                with standin.lock:
                    standin.statuses[status] += 1
                    standin.log.append((request.method, request.path, status))
            return response

        # ---- auth

        @app.post("/api/token")
        def token():
            form = request.form
            grant = form.get("grant_type")
            with standin.lock:
                if grant == "password":
                    user = standin.users.get((form.get("username") or "").lower())
                    if user is None or user.password != form.get("password"):
                        return _oauth_error("invalid_grant", BAD_CREDENTIALS)
                    if user.must_reset:
                        return _oauth_error("must_reset_password",
                                            "The user must reset the password before logging in.")
                    if user.two_factor:
                        code = form.get("totp")
                        if not code:
                            return _oauth_error("two_factor_auth_check",
                                                "Two factor authentication code required.")
                        if code != user.totp:
                            return _oauth_error("invalid_grant",
                                                "The two factor authentication code is incorrect.")
                    return jsonify(standin._issue(user.email))
                if grant == "refresh_token":
                    # pop: a refresh token works exactly once.
                    email = standin.refresh_tokens.pop(form.get("refresh_token") or "", None)
                    if email is None or email.lower() not in standin.users:
                        return _oauth_error("invalid_grant", "The refresh token is invalid.")
                    return jsonify(standin._issue(email))
            return _oauth_error("unsupported_grant_type", "The grant type is not supported.")

        # ---- businesses

        @app.get("/api/sys/businesses")
        def businesses():
            with standin.lock:
                rows = list(standin.businesses.values())
            return jsonify(_page(_filter(rows, "Business", request.args), request.args))

        # ---- coworkers

        @app.get("/api/spaces/coworkers")
        def list_coworkers():
            with standin.lock:
                rows = list(standin.coworkers.values())
            return jsonify(_page(_filter(rows, "Coworker", request.args), request.args))

        @app.post("/api/spaces/coworkers")
        def create_coworker():
            body = request.get_json(silent=True) or {}
            with standin.lock:
                errors = standin._coworker_errors(body, existing_id=None)
                if errors:
                    return _invalid(errors)
                failed = standin._take_fault("command_fails", "POST", request.path)
                if failed:
                    return jsonify(_command_failed(failed.message))
                record = {"CompanyName": None, "Active": True, "Archived": False,
                          "BillingEmail": None, "CoworkerType": 1, **body}
                record["Id"] = standin._new_id()
                record["UpdatedOn"] = _now_iso()
                standin.coworkers[record["Id"]] = record
                standin._emails[record["Email"].lower()] = record["Id"]
            return standin._answer_created(record["Id"], "Coworker was successfully created.")

        @app.put("/api/spaces/coworkers")
        def update_coworker():
            body = request.get_json(silent=True) or {}
            with standin.lock:
                existing = standin.coworkers.get(_as_int(body.get("Id")))
                if existing is None:
                    return unauthorized()  # "any failed call answers 401"
                errors = standin._coworker_errors(body, existing_id=existing["Id"])
                if errors:
                    return _invalid(errors)
                failed = standin._take_fault("command_fails", "PUT", request.path)
                if failed:
                    return jsonify(_command_failed(failed.message))
                standin._emails.pop(existing["Email"].lower(), None)
                record = dict(body, Id=existing["Id"], UpdatedOn=_now_iso())
                standin.coworkers[existing["Id"]] = record
                standin._emails[record["Email"].lower()] = existing["Id"]
            return jsonify(_envelope(200, "Coworker was successfully updated.",
                                     value={"Id": existing["Id"]}))

        # ---- charges

        @app.get("/api/billing/charges")
        def list_charges():
            with standin.lock:
                rows = list(standin.charges.values())
            return jsonify(_page(_filter(rows, "Charge", request.args), request.args))

        @app.post("/api/billing/charges")
        def create_charge():
            body = request.get_json(silent=True) or {}
            with standin.lock:
                errors = []
                for name in ("CoworkerId", "BusinessId", "Quantity", "DiscountAmount",
                             "CreditAmount", "TotalAmount"):
                    if body.get(name) is None:
                        errors.append(_error(name, f"{name} is required.", None))
                if body.get("CoworkerId") is not None and \
                        _as_int(body["CoworkerId"]) not in standin.coworkers:
                    errors.append(_error("CoworkerId", "Customer not found.", body["CoworkerId"]))
                if body.get("BusinessId") is not None and \
                        _as_int(body["BusinessId"]) not in standin.businesses:
                    errors.append(_error("BusinessId", "Business not found.", body["BusinessId"]))
                if errors:
                    return _invalid(errors)
                failed = standin._take_fault("command_fails", "POST", request.path)
                if failed:
                    return jsonify(_command_failed(failed.message))
                record = dict(body, Id=standin._new_id(), CreatedOn=_now_iso(), Invoiced=False)
                standin.charges[record["Id"]] = record
            return standin._answer_created(record["Id"], "Charge was successfully created.")

        return app

    def _answer_created(self, new_id: int, message: str):
        """The success envelope, unless a "commit then lose the answer" fault is pending."""
        fault = self._take_fault("lose_answer", "POST", request.path)
        if fault is None:
            return jsonify(_envelope(200, message, value={"Id": new_id}))
        if fault.mode == "timeout":
            time.sleep(fault.seconds)
            return jsonify(_envelope(200, message, value={"Id": new_id}))
        if fault.mode == "500":
            return Response(b"", status=500)
        request.environ["standin.drop"] = True
        raise _DropConnection()

    def _issue(self, email: str) -> dict:
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        self.access_tokens[access] = (email, self.clock() + self.token_ttl)
        self.refresh_tokens[refresh] = email
        return {"access_token": access, "token_type": "bearer",
                "expires_in": int(self.token_ttl), "refresh_token": refresh}

    def _authenticate(self) -> StandinUser | None:
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        with self.lock:
            if scheme.lower() == "bearer":
                entry = self.access_tokens.get(credentials.strip())
                if entry is None or entry[1] <= self.clock():
                    return None
                return self.users.get(entry[0].lower())
            if scheme.lower() == "basic":
                try:
                    email, _, password = base64.b64decode(credentials).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    return None
                user = self.users.get(email.lower())
                if user is None or user.password != password or user.two_factor or user.must_reset:
                    return None
                return user
        return None

    def _coworker_errors(self, body: dict, existing_id: int | None) -> list[dict]:
        errors = []
        for name, label in (("FullName", "Full name"), ("Email", "Email"),
                            ("CountryId", "Country"), ("SimpleTimeZoneId", "Time zone")):
            if body.get(name) in (None, ""):
                errors.append(_error(name, f"{label} is required.", body.get(name)))
        email = body.get("Email")
        if isinstance(email, str) and email:
            if "@" not in email:
                errors.append(_error("Email", "Email is not a valid email address.", email))
            owner = self._emails.get(email.lower())
            if owner is not None and owner != existing_id:
                errors.append(_error("Email", "There is already a customer with this email.", email))
        business = body.get("InvoicingBusinessId")
        if business is not None and _as_int(business) not in self.businesses:
            errors.append(_error("InvoicingBusinessId", "Business not found.", business))
        return errors


# ------------------------------------------------------------------ helpers

def _as_int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _oauth_error(code: str, description: str):
    return jsonify({"error": code, "error_description": description}), 400


def _error(prop: str, message: str, attempted) -> dict:
    return {"PropertyName": prop, "Message": message, "AttemptedValue": attempted}


def _invalid(errors: list[dict]):
    return jsonify(_envelope(400, "The request is invalid.", errors=errors)), 400


def _command_failed(message: str) -> dict:
    # Nexudus commands can fail and still answer 200: only WasSuccessful tells.
    return {"Status": 200, "Message": message, "Value": None, "WasSuccessful": False,
            "Errors": [_error(None, message, None)]}


def _matches(value, wanted: str) -> bool:
    if isinstance(value, bool):
        return str(value).lower() == wanted.lower()
    if isinstance(value, (int, float)):
        return str(value) == wanted
    if value is None:
        return False
    # Strings match as case-insensitive substrings: this is how the stand-in models the
    # unconfirmed Coworker_Email behaviour, so clients must re-check for exact matches.
    return wanted.lower() in str(value).lower()


def _filter(rows: list[dict], entity: str, args) -> list[dict]:
    prefix = entity + "_"
    for key, wanted in args.items():
        if key.startswith(prefix):
            prop = key[len(prefix):]
            rows = [r for r in rows if _matches(r.get(prop), wanted)]
        elif key.startswith("from_" + prefix):
            prop = key[len("from_" + prefix):]
            rows = [r for r in rows if r.get(prop) is not None and str(r[prop]) >= wanted]
        elif key.startswith("to_" + prefix):
            prop = key[len("to_" + prefix):]
            rows = [r for r in rows if r.get(prop) is not None and str(r[prop]) <= wanted]
    return rows


def _page(rows: list[dict], args) -> dict:
    """The Records envelope for one page of ``rows``."""
    page = max(1, _as_int(args.get("page")) or 1)
    size = _as_int(args.get("size")) or 25
    size = min(max(size, 1), 1000)
    order_by = args.get("orderBy") or "Id"
    descending = (args.get("dir") or "").lower() in ("desc", "descending", "1")
    def key(row):
        value = row.get(order_by)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (value is None, value, "")
        return (value is None, 0, "" if value is None else str(value).lower())

    rows = sorted(rows, key=key, reverse=descending)
    total = len(rows)
    pages = math.ceil(total / size) if total else 0
    start = (page - 1) * size
    records = rows[start:start + size]
    return {"Records": records, "CurrentPage": page, "CurrentPageSize": size,
            "FirstItem": start + 1 if records else 0, "LastItem": start + len(records),
            "TotalItems": total, "TotalPages": pages,
            "HasNextPage": page < pages, "HasPreviousPage": page > 1}


# ------------------------------------------------------------------ HTTP control

def _install_control(standin: NexudusStandin) -> None:
    """``/_control/...``: the same switches as the Python API, for other processes."""
    app = standin.app

    def body() -> dict:
        return request.get_json(silent=True) or {}

    def ok(**extra):
        return jsonify({"ok": True, **extra})

    def fault_args(data: dict, *names) -> dict:
        kw = {k: data[k] for k in names if k in data}
        kw["n"] = int(data.get("count", data.get("n", 1)))
        return kw

    @app.post("/_control/reset")
    def c_reset():
        standin.reset()
        return ok()

    @app.post("/_control/latency")
    def c_latency():
        standin.set_latency(float(body().get("seconds", 0)))
        return ok()

    @app.post("/_control/fail")
    def c_fail():
        standin.fail_next(**fault_args(body(), "status", "method", "path"))
        return ok()

    @app.post("/_control/timeout")
    def c_timeout():
        standin.timeout_next(**fault_args(body(), "seconds", "method", "path"))
        return ok()

    @app.post("/_control/drop")
    def c_drop():
        standin.drop_next(**fault_args(body(), "method", "path"))
        return ok()

    @app.post("/_control/throttle")
    def c_throttle():
        standin.throttle_next(**fault_args(body(), "method", "path"))
        return ok()

    @app.post("/_control/lose-answer")
    def c_lose():
        standin.lose_answer_next(**fault_args(body(), "path", "mode", "seconds"))
        return ok()

    @app.post("/_control/command-fails")
    def c_command_fails():
        standin.fail_command_next(**fault_args(body(), "path", "method", "message"))
        return ok()

    @app.post("/_control/clear-faults")
    def c_clear():
        standin.clear_faults()
        return ok()

    @app.post("/_control/expire-tokens")
    def c_expire():
        standin.expire_all_tokens()
        return ok()

    @app.post("/_control/limits")
    def c_limits():
        return ok(limits=standin.set_limits(**body()))

    @app.get("/_control/counters")
    def c_counters():
        with standin.lock:
            return jsonify({"requests": dict(standin.counts), "throttled": standin.throttled,
                            "statuses": {str(k): v for k, v in standin.statuses.items()},
                            "total": standin.api_requests})

    @app.post("/_control/counters/reset")
    def c_counters_reset():
        standin.reset_counters()
        return ok()

    @app.get("/_control/<any(coworkers, charges, businesses):kind>")
    def c_dump(kind):
        with standin.lock:
            return jsonify(list(getattr(standin, kind).values()))

    @app.post("/_control/users")
    def c_user():
        data = body()
        standin.add_user(data.pop("email"), data.pop("password"), **data)
        return ok()

    @app.post("/_control/businesses")
    def c_business():
        data = body()
        return ok(business=standin.add_business(data.pop("name"), **data))

    @app.post("/_control/seed")
    def c_seed():
        data = body()
        ids = standin.seed_coworkers(int(data.get("coworkers", 0)),
                                     **{k: data[k] for k in ("business_id", "email_pattern",
                                                             "name_pattern") if k in data})
        return ok(count=len(ids), first_id=ids[0] if ids else None)


DEMO_EMAIL = "demo@nexudus.test"
DEMO_PASSWORD = "demo-password-123"


def seed_demo(standin: NexudusStandin) -> None:
    """A demo account: one API user, two businesses, a few coworkers."""
    standin.add_user(DEMO_EMAIL, DEMO_PASSWORD)
    central = standin.add_business("SphereWork Central", currency="EUR",
                                   address="1 Main Street")
    harbour = standin.add_business("SphereWork Harbour", currency="EUR",
                                   address="12 Quay Road")
    standin.add_coworker("Ann Example", "ann@example.test", business_id=central["Id"],
                         CompanyName="Example Ltd")
    standin.add_coworker("Joann Sample", "joann@example.test", business_id=central["Id"])
    standin.add_coworker("Bob Harbour", "bob@harbour.test", business_id=harbour["Id"],
                         CompanyName="Harbour Co")
    standin.add_coworker("Carla Archived", "carla@example.test", business_id=harbour["Id"],
                         Active=False, Archived=True)


def main(argv=None) -> None:
    """``python -m tests.standins.nexudus --port 8102``: serve a demo account until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8102)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="make time run faster for the rate limits (benchmarks)")
    parser.add_argument("--no-limits", action="store_true", help="switch rate limits off")
    parser.add_argument("--token-ttl", type=float, default=DEFAULT_TOKEN_TTL)
    args = parser.parse_args(argv)
    standin = NexudusStandin(scale=args.scale, rate_limits=not args.no_limits,
                             token_ttl=args.token_ttl)
    seed_demo(standin)
    base_url, stop = start_server(standin.app, host=args.host, port=args.port)
    print(f"Nexudus stand-in on {base_url}  (API base {base_url}/api)")
    print(f"  user:     {DEMO_EMAIL}")
    print(f"  password: {DEMO_PASSWORD}")
    print(f"  control:  {base_url}/_control/counters, /_control/expire-tokens, ...")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop()


if __name__ == "__main__":
    main()
