"""A local stand-in for the OfficeRnD Flex API v2 (token endpoint + a few resources).

It behaves the way ``docs/vendor-apis.md`` describes the real service, including
the parts that hurt: OAuth2 client-credentials tokens that expire, scopes checked
per endpoint, an unknown slug answering 500 "Organization not found", NestJS-style
400s for unknown query parameters, ``$limit`` capped at 50 with opaque cursors,
per-minute rate limits with ``x-ratelimit-*`` headers and 429 + ``Retry-After``.

On top of that it can misbehave on purpose (latency, 5xx, timeouts, dropped
connections, "commit then fail"), controlled from Python through the
:class:`OfficeRnDStandIn` object or over HTTP under ``/_control/...`` (for browser
tests and the demo).

Run it alone for a demo organisation::

    python -m tests.standins.officernd --port 8101

Clocks: token expiry and rate-limit windows use the ``clock`` given to the
constructor (``time.monotonic`` by default) so a test can share a fake clock with
the client and fast-forward through waits. Latency and injected timeouts always
sleep for real (they exist to exercise real sockets).
"""
from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import itertools
import json
import math
import os
import secrets
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass

from flask import Flask, Response, g, jsonify, request

# Every scope the vendor article asks operators to grant (vendor-apis.md).
ALL_SCOPES = (
    "flex.settings.webhooks.read",
    "flex.settings.integrations.read",
    "flex.space.locations.read",
    "flex.community.members.read",
    "flex.community.members.create",
    "flex.community.members.update",
    "flex.community.members.delete",
    "flex.community.fees.create",
)

# Scope each (method, resource) needs; the resource is the first path segment
# after /organizations/<slug>.
ENDPOINT_SCOPES = {
    ("GET", "locations"): "flex.space.locations.read",
    ("GET", "members"): "flex.community.members.read",
    ("POST", "members"): "flex.community.members.create",
    ("PUT", "members"): "flex.community.members.update",
    ("POST", "fees"): "flex.community.fees.create",
    ("GET", "webhooks"): "flex.settings.webhooks.read",
}

MEMBER_STATUSES = ("active", "former", "pending", "contact", "not_approved", "drop-in", "lead")
MAX_LIMIT = 50
_PAGING_PARAMS = {"$limit", "$cursorNext", "$cursorPrev", "$sort", "$select"}
_DATE_OPS = ("$gt", "$gte", "$lt", "$lte")
_DATE_FILTERS = {f"{field}[{op}]" for field in ("createdAt", "modifiedAt") for op in _DATE_OPS}
ALLOWED_PARAMS = {
    "locations": _PAGING_PARAMS | {"name"},
    "members": _PAGING_PARAMS | _DATE_FILTERS
    | {"email", "name", "status", "status[$in]", "location", "company"},
    "webhooks": _PAGING_PARAMS,
}
MEMBER_FIELDS = {"name", "email", "location", "startDate", "phone", "company",
                 "description", "tags", "properties"}
FEE_FIELDS = {"name", "issueDate", "location", "plan", "price", "member", "company",
              "quantity", "isPersonal", "shouldBillInAdvance", "properties", "description"}


def _nest_error(status: int, message, error: str) -> Response:
    """A NestJS-shaped error answer, the way the real API formats them."""
    resp = jsonify({"statusCode": status, "message": message, "error": error})
    resp.status_code = status
    return resp


def _bad_request(messages: list[str]) -> Response:
    return _nest_error(400, messages, "Bad Request")


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_iso(value) -> bool:
    """True when ``value`` is an ISO date or date-time string."""
    if not isinstance(value, str) or not value:
        return False
    try:
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


@dataclass
class Fault:
    """One injected misbehaviour, used ``remaining`` more times.

    kinds: ``error`` (answer ``status`` without doing anything), ``timeout``
    (sleep ``seconds`` then carry on normally: the client gave up, the server did
    not), ``drop`` (close the socket without answering, nothing done),
    ``commit_error`` / ``commit_drop`` (do the work, then answer 500 / drop).
    """

    kind: str
    remaining: int = 1
    method: str | None = None
    path: str | None = None
    status: int = 500
    seconds: float | None = None
    retry_after: float | None = None

    def matches(self, method: str, rel_path: str) -> bool:
        if self.method and self.method.upper() != method:
            return False
        if self.path and not (rel_path == self.path or rel_path.startswith(self.path.rstrip("/") + "/")):
            return False
        return True

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class _Window:
    """A fixed rate-limit window on the stand-in's clock."""

    def __init__(self, limit: int, seconds: float):
        self.limit = limit
        self.seconds = seconds
        self.index = None
        self.used = 0

    def _roll(self, now: float) -> None:
        index = math.floor(now / self.seconds)
        if index != self.index:
            self.index = index
            self.used = 0

    def take(self, now: float) -> bool:
        """Count one request; False (and nothing counted) when the window is full."""
        self._roll(now)
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def remaining(self, now: float) -> int:
        self._roll(now)
        return max(0, self.limit - self.used)

    def reset_in(self, now: float) -> float:
        """Seconds until the window resets, as the header carries it.

        Whole seconds rounded up, like real APIs; for the short windows some
        benchmarks use (under 10 s) a millisecond fraction so pacing stays tight.
        """
        self._roll(now)
        left = (self.index + 1) * self.seconds - now
        if self.seconds >= 10:
            return max(1, math.ceil(left))
        return max(0.001, round(left + 0.0005, 3))


def _fmt_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


class OfficeRnDStandIn:
    """One OfficeRnD organisation (and its OAuth application) served over HTTP.

    Python API for tests: seed helpers (:meth:`add_location`, :meth:`add_plan`,
    :meth:`add_company`, :meth:`add_member`, :meth:`add_members_bulk`,
    :meth:`add_webhook`), faults (:meth:`set_latency`, :meth:`fail_next`,
    :meth:`timeout_next`, :meth:`drop_next`, :meth:`commit_then_fail`,
    :meth:`clear_faults`), auth (:meth:`revoke_tokens`, :meth:`remove_scope`),
    limits (:meth:`set_limits`), counters (:attr:`request_counts`,
    :meth:`count`, :attr:`token_requests`, :attr:`rate_limited_count`,
    :attr:`rejected_params`, :attr:`limits_seen`) and the stored records
    (:attr:`locations`, :attr:`members`, :attr:`fees`, ...; dicts keyed by id).
    """

    def __init__(self, *, slug: str = "demo", client_id: str = "test-client",
                 client_secret: str = "test-secret", granted_scopes=ALL_SCOPES,
                 token_ttl: float = 3599, token_limit: int = 5, read_limit: int = 400,
                 write_limit: int = 400, read_day_limit: int = 100_000, window: float = 60.0,
                 clock=time.monotonic, timeout_seconds: float = 5.0, id_prefix: str | None = None):
        """Limits are per ``window`` seconds (per minute by default); ``token_limit``
        applies to ``POST /oauth/token``. ``id_prefix`` (8 hex characters) makes
        record ids predictable, e.g. for the demo; by default it is random.
        """
        self.slug = slug
        self.client_id = client_id
        self.client_secret = client_secret
        self.granted_scopes = set(granted_scopes)
        self.token_ttl = token_ttl
        self.clock = clock
        self.timeout_seconds = timeout_seconds
        self.base_url: str | None = None

        self.locations: dict[str, dict] = {}
        self.members: dict[str, dict] = {}
        self.fees: dict[str, dict] = {}
        self.companies: dict[str, dict] = {}
        self.plans: dict[str, dict] = {}
        self.webhooks: dict[str, dict] = {}
        self._email_index: dict[str, str] = {}  # casefolded email -> member id

        self._tokens: dict[str, dict] = {}
        self._faults: list[Fault] = []
        self.latency = 0.0
        self._lock = threading.RLock()
        self._in_flight: Counter = Counter()  # requests being served now, by (method, path)
        self._stopping = threading.Event()
        self._ids = itertools.count(1)
        self._id_prefix = id_prefix or secrets.token_hex(4)
        self._stop_server = None
        self._set_windows(read_limit, write_limit, token_limit, read_day_limit, window)
        self.reset_counters()
        self.app = self._build_app()

    # ----------------------------------------------------------------- lifecycle
    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on a free loopback port in a background thread; returns the base URL."""
        from tests.standins.server import start_server

        self.base_url, self._stop_server = start_server(self.app, host=host, port=port)
        return self.base_url

    def stop(self) -> None:
        """Stop serving; wakes any request parked in an injected timeout."""
        self._stopping.set()
        if self._stop_server:
            self._stop_server()
            self._stop_server = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def token_url(self) -> str:
        """Where a client asks for tokens (the identity host in production)."""
        return f"{self.base_url}/oauth/token"

    @property
    def api_base(self) -> str:
        """``.../api/v2`` ; the client appends ``/organizations/<slug>/...``."""
        return f"{self.base_url}/api/v2"

    # -------------------------------------------------------------------- seeding
    def _new_id(self) -> str:
        # 24 hex characters like a Mongo ObjectId; increasing so creation order sorts.
        return f"{self._id_prefix}{next(self._ids):016x}"

    def add_location(self, name: str, **extra) -> dict:
        """Add a location and return its record."""
        loc = {"_id": self._new_id(), "name": name,
               "address": {"country": "NL", "city": "Amsterdam", "address": f"{name} street 1"},
               "timezone": "Europe/Amsterdam", "isOpen": True, "isPublic": True,
               "code": name[:3].upper()}
        loc.update(extra)
        with self._lock:
            self.locations[loc["_id"]] = loc
        return loc

    def add_plan(self, name: str = "SphereMail fees") -> str:
        """Add a price plan (fees must be booked on one) and return its id."""
        plan_id = self._new_id()
        with self._lock:
            self.plans[plan_id] = {"_id": plan_id, "name": name}
        return plan_id

    def add_company(self, name: str) -> dict:
        """Add a company record (members may reference it by id)."""
        company = {"_id": self._new_id(), "name": name}
        with self._lock:
            self.companies[company["_id"]] = company
        return company

    def add_webhook(self, url: str, event_types=("member.created",), description: str = "") -> dict:
        """Add a webhook subscription (listed by ``GET /webhooks``)."""
        hook = {"_id": self._new_id(), "url": url, "description": description,
                "eventTypes": list(event_types), "isEnabled": True}
        with self._lock:
            self.webhooks[hook["_id"]] = hook
        return hook

    def _store_member(self, fields: dict, stamp: str) -> dict:
        member = {"_id": self._new_id(), "name": fields["name"], "email": fields.get("email"),
                  "phone": fields.get("phone"), "location": fields.get("location"),
                  "company": fields.get("company"), "status": fields.get("status", "active"),
                  "startDate": fields.get("startDate") or stamp[:10], "description": fields.get("description"),
                  "tags": fields.get("tags") or [], "properties": fields.get("properties") or {},
                  "createdAt": stamp, "modifiedAt": stamp}
        self.members[member["_id"]] = member
        if member["email"]:
            self._email_index[member["email"].casefold()] = member["_id"]
        return member

    def add_member(self, name: str, email: str | None, location: str | None = None, **extra) -> dict:
        """Add one member directly (no validation, no duplicate check: seed freely)."""
        location = location or next(iter(self.locations), None)
        with self._lock:
            return self._store_member({"name": name, "email": email, "location": location, **extra},
                                      _now_iso())

    def add_members_bulk(self, count: int, *, location: str | None = None, start: int = 1,
                         name: str = "Member {i}", email: str = "member{i}@example.com",
                         status: str = "active") -> list[str]:
        """Add ``count`` members quickly (10,000 take well under a second); returns their ids."""
        location = location or next(iter(self.locations), None)
        stamp = _now_iso()
        with self._lock:
            return [self._store_member({"name": name.format(i=i), "email": email.format(i=i),
                                        "location": location, "status": status}, stamp)["_id"]
                    for i in range(start, start + count)]

    # ---------------------------------------------------------------------- faults
    def set_latency(self, seconds: float) -> None:
        """Add ``seconds`` of real delay to every API and token request."""
        self.latency = float(seconds)

    def _add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def fail_next(self, n: int = 1, *, status: int = 500, method: str | None = None,
                  path: str | None = None, retry_after: float | None = None) -> Fault:
        """The next ``n`` matching requests answer ``status`` without doing anything.

        ``path`` is relative to the organisation (``/fees``, ``/members``) or
        ``/oauth/token``; it also matches sub-paths. With ``status=429`` the
        answer carries ``Retry-After: retry_after`` (default 1).
        """
        return self._add_fault(Fault("error", n, method, path, status=status, retry_after=retry_after))

    def timeout_next(self, n: int = 1, *, seconds: float | None = None, method: str | None = None,
                     path: str | None = None) -> Fault:
        """The next ``n`` matching requests stall ``seconds`` (default ``timeout_seconds``), then proceed."""
        return self._add_fault(Fault("timeout", n, method, path, seconds=seconds))

    def drop_next(self, n: int = 1, *, method: str | None = None, path: str | None = None) -> Fault:
        """The next ``n`` matching requests get their connection closed, unanswered and undone."""
        return self._add_fault(Fault("drop", n, method, path))

    def commit_then_fail(self, n: int = 1, *, path: str = "/fees", method: str = "POST",
                         drop: bool = False) -> Fault:
        """The next ``n`` successful matching writes are stored, then answered 500 (or dropped)."""
        return self._add_fault(Fault("commit_drop" if drop else "commit_error", n, method, path))

    def clear_faults(self) -> None:
        """Forget every pending fault and the latency."""
        with self._lock:
            self._faults.clear()
        self.latency = 0.0

    def _take_fault(self, method: str, rel_path: str, commit: bool) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind.startswith("commit_") == commit and fault.matches(method, rel_path):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    @property
    def faults(self) -> list[dict]:
        """Pending faults, for inspection."""
        with self._lock:
            return [f.as_dict() for f in self._faults]

    # -------------------------------------------------------------- auth & limits
    def revoke_tokens(self) -> None:
        """Invalidate every issued token (the next API call with one answers 401)."""
        with self._lock:
            self._tokens.clear()

    def remove_scope(self, scope: str) -> None:
        """The operator withdrew a permission: new token requests for it fail, old tokens lose it."""
        with self._lock:
            self.granted_scopes.discard(scope)
            for token in self._tokens.values():
                token["scopes"].discard(scope)

    def _set_windows(self, read, write, token, read_day, window) -> None:
        self.window = window
        self._read_window = _Window(read, window)
        self._write_window = _Window(write, window)
        self._token_window = _Window(token, window)
        self._read_day_window = _Window(read_day, 86400)

    def set_limits(self, *, read: int | None = None, write: int | None = None,
                   token: int | None = None, window: float | None = None) -> None:
        """Change the per-window limits (and optionally the window length); counts restart."""
        with self._lock:
            self._set_windows(read if read is not None else self._read_window.limit,
                              write if write is not None else self._write_window.limit,
                              token if token is not None else self._token_window.limit,
                              self._read_day_window.limit,
                              window if window is not None else self.window)

    # ------------------------------------------------------------------- counters
    def reset_counters(self) -> None:
        """Zero the request counters (records are kept)."""
        with self._lock:
            self.request_counts: Counter = Counter()
            self.rate_limited_count = 0
            self.rejected_params: list[str] = []
            self.limits_seen: list[str] = []  # raw $limit values clients sent
            # Most requests of one (method, path) being served at the same time (concurrency).
            self.max_in_flight: Counter = Counter()

    def count(self, method: str, path: str) -> int:
        """Requests seen for ``method`` and relative ``path`` (e.g. ``"GET", "/members"``)."""
        return self.request_counts[(method.upper(), path)]

    @property
    def token_requests(self) -> int:
        """How many times ``POST /oauth/token`` was called."""
        return self.count("POST", "/oauth/token")

    def state(self) -> dict:
        """A JSON-friendly summary (also ``GET /_control/state``)."""
        with self._lock:
            return {
                "slug": self.slug,
                "requests": {f"{m} {p}": n for (m, p), n in sorted(self.request_counts.items())},
                "rate_limited": self.rate_limited_count,
                "rejected_params": list(self.rejected_params),
                "faults": self.faults,
                "latency": self.latency,
                "limits": {"read": self._read_window.limit, "write": self._write_window.limit,
                           "token": self._token_window.limit, "window": self.window},
                "counts": {"locations": len(self.locations), "members": len(self.members),
                           "fees": len(self.fees), "plans": len(self.plans)},
            }

    # ------------------------------------------------------------------ the app
    def _build_app(self) -> Flask:
        app = Flask(f"officernd_standin_{id(self)}")
        app.json.sort_keys = False
        standin = self

        @app.before_request
        def _gate():
            return standin._before(request.path)

        @app.after_request
        def _finish(resp):
            return standin._after(resp)

        @app.teardown_request
        def _served(_exc):
            key = g.pop("in_flight_key", None)
            if key is not None:
                with standin._lock:
                    standin._in_flight[key] -= 1

        @app.errorhandler(404)
        def _not_found(_e):
            return _nest_error(404, "Cannot %s %s" % (request.method, request.path), "Not Found")

        @app.errorhandler(405)
        def _not_allowed(_e):
            return _nest_error(404, "Cannot %s %s" % (request.method, request.path), "Not Found")

        @app.post("/oauth/token")
        def token():
            return standin._token()

        api = "/api/v2/organizations/<slug>"
        for resource in ("locations", "members", "webhooks"):
            app.add_url_rule(f"{api}/{resource}", endpoint=f"list_{resource}",
                             view_func=lambda slug, _r=resource: standin._list(_r))
        app.add_url_rule(f"{api}/members", endpoint="create_member", methods=["POST"],
                         view_func=lambda slug: standin._create_member())
        app.add_url_rule(f"{api}/members/<member_id>", endpoint="update_member", methods=["PUT"],
                         view_func=lambda slug, member_id: standin._update_member(member_id))
        app.add_url_rule(f"{api}/fees", endpoint="create_fee", methods=["POST"],
                         view_func=lambda slug: standin._create_fee())
        self._register_control(app)
        return app

    # Request pipeline: count -> latency -> injected fault -> bearer (401) ->
    # organisation (500) -> rate limit (429) -> scope (403) -> view -> headers.
    def _before(self, path: str):
        if path.startswith("/_control"):
            return None
        prefix = "/api/v2/organizations/"
        slug = None
        if path.startswith(prefix):
            slug, _, rest = path[len(prefix):].partition("/")
            rel_path = "/" + rest
        else:
            rel_path = path
        method = request.method
        g.rel_path = rel_path
        g.is_api = slug is not None
        with self._lock:
            self.request_counts[(method, rel_path)] += 1
            if "$limit" in request.args:
                self.limits_seen.append(request.args["$limit"])
            key = g.in_flight_key = (method, rel_path)
            self._in_flight[key] += 1
            self.max_in_flight[key] = max(self.max_in_flight[key], self._in_flight[key])
        if self.latency:
            time.sleep(self.latency)

        fault = self._take_fault(method, rel_path, commit=False)
        if fault is not None:
            answer = self._apply_fault(fault)
            if answer is not None:
                return answer

        if slug is None:
            if rel_path == "/oauth/token":
                with self._lock:
                    allowed = self._token_window.take(self.clock())
                    retry = self._token_window.reset_in(self.clock())
                if not allowed:
                    return self._too_many(retry)
            return None

        token = self._check_bearer()
        if token is None:
            return _nest_error(401, "Unauthorized access", "Unauthorized")
        if slug != self.slug:
            return _nest_error(500, "Organization not found", "Internal Server Error")

        now = self.clock()
        with self._lock:
            window = self._read_window if method == "GET" else self._write_window
            allowed = window.take(now)
            if allowed and method == "GET":
                self._read_day_window.take(now)
            retry = window.reset_in(now)
        if not allowed:
            return self._too_many(retry)

        resource = rel_path.strip("/").split("/")[0]
        needed = ENDPOINT_SCOPES.get((method, resource))
        if needed and needed not in token["scopes"]:
            return _nest_error(403, "Forbidden resource", "Forbidden")
        return None

    def _apply_fault(self, fault: Fault):
        if fault.kind == "error":
            if fault.status == 429:
                return self._too_many(fault.retry_after if fault.retry_after is not None else 1)
            return _nest_error(fault.status, "Injected failure", "Internal Server Error"
                               if fault.status >= 500 else "Error")
        if fault.kind == "timeout":
            # Stall past the client's timeout, then carry on as if nothing happened:
            # the server did the work, the client just stopped listening.
            self._stopping.wait(fault.seconds if fault.seconds is not None else self.timeout_seconds)
            return None
        if fault.kind == "drop":
            return self._drop_connection()
        return None

    def _drop_connection(self) -> Response:
        """Close the client's socket without an answer.

        Shutting the socket down makes the client see a closed connection (a
        ``requests`` ConnectionError); werkzeug's later write then fails with a
        broken pipe, which it treats as a client that went away and stays quiet.
        """
        sock = request.environ.get("werkzeug.socket")
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return Response(b"", status=500)

    def _too_many(self, retry_after: float) -> Response:
        with self._lock:
            self.rate_limited_count += 1
        resp = _nest_error(429, "ThrottlerException: Too Many Requests", "Too Many Requests")
        resp.headers["Retry-After"] = _fmt_seconds(retry_after)
        return resp

    def _rate_headers(self, method: str) -> dict:
        """The x-ratelimit-* headers every API answer carries (429s and errors included)."""
        now = self.clock()
        headers = {
            "x-ratelimit-limit-read-minute": str(self._read_window.limit),
            "x-ratelimit-remaining-read-minute": str(self._read_window.remaining(now)),
            "x-ratelimit-reset-read-minute": _fmt_seconds(self._read_window.reset_in(now)),
            "x-ratelimit-limit-read-day": str(self._read_day_window.limit),
            "x-ratelimit-remaining-read-day": str(self._read_day_window.remaining(now)),
            "x-ratelimit-reset-read-day": _fmt_seconds(self._read_day_window.reset_in(now)),
        }
        if method != "GET":
            # Assumption (not in the vendor docs): writes report their own bucket too.
            headers.update({
                "x-ratelimit-limit-write-minute": str(self._write_window.limit),
                "x-ratelimit-remaining-write-minute": str(self._write_window.remaining(now)),
                "x-ratelimit-reset-write-minute": _fmt_seconds(self._write_window.reset_in(now)),
            })
        return headers

    def _after(self, resp: Response) -> Response:
        if getattr(g, "is_api", False):
            with self._lock:
                resp.headers.update(self._rate_headers(request.method))
        rel_path = getattr(g, "rel_path", None)
        if rel_path is not None and 200 <= resp.status_code < 300:
            fault = self._take_fault(request.method, rel_path, commit=True)
            if fault is not None:
                if fault.kind == "commit_drop":
                    return self._drop_connection()
                return _nest_error(500, "Injected failure after commit", "Internal Server Error")
        return resp

    def _check_bearer(self) -> dict | None:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value:
            return None
        with self._lock:
            token = self._tokens.get(value.strip())
            if token is None or token["expires_at"] <= self.clock():
                return None
            return token

    # --------------------------------------------------------------- token view
    def _token(self):
        form = request.form
        if form.get("grant_type") != "client_credentials":
            return jsonify({"error": "unsupported_grant_type",
                            "error_description": "Only client_credentials is supported"}), 400
        if (form.get("client_id") != self.client_id
                or not secrets.compare_digest(form.get("client_secret", ""), self.client_secret)):
            return jsonify({"error": "invalid_client",
                            "error_description": "Client authentication failed"}), 401
        requested = set(form.get("scope", "").split()) or set(self.granted_scopes)
        missing = sorted(requested - self.granted_scopes)
        if missing:
            return jsonify({"error": "invalid_scope",
                            "error_description": "Scope not granted: " + " ".join(missing)}), 400
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = {"scopes": set(requested), "expires_at": self.clock() + self.token_ttl}
        return jsonify({"access_token": token, "token_type": "Bearer",
                        "expires_in": int(self.token_ttl), "scope": " ".join(sorted(requested))})

    # ---------------------------------------------------------------- list views
    def _encode_cursor(self, offset: int) -> str:
        raw = json.dumps({"o": offset, "s": self._id_prefix}).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def _decode_cursor(self, value: str) -> int | None:
        try:
            data = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
            offset = int(data["o"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        return offset if offset >= 0 and data.get("s") == self._id_prefix else None

    def _list(self, resource: str):
        args = request.args
        unknown = sorted(set(args) - ALLOWED_PARAMS[resource])
        if unknown:
            with self._lock:
                self.rejected_params.extend(unknown)
            return _bad_request([f"property {name} should not exist" for name in unknown])
        try:
            limit = int(args.get("$limit", MAX_LIMIT))
        except ValueError:
            return _bad_request(["$limit must be an integer number"])
        if limit < 1:
            return _bad_request(["$limit must not be less than 1"])
        limit = min(limit, MAX_LIMIT)  # larger values are capped, not refused

        offset = 0
        for key in ("$cursorNext", "$cursorPrev"):
            if key in args:
                decoded = self._decode_cursor(args[key])
                if decoded is None:
                    return _bad_request([f"{key} is not a valid cursor"])
                offset = decoded

        with self._lock:
            items = list(getattr(self, resource).values())
        for key in ("email", "name", "status", "location", "company"):
            if key in args:
                items = [it for it in items if it.get(key) == args[key]]
        if "status[$in]" in args:
            wanted = set(args["status[$in]"].split(","))
            items = [it for it in items if it.get("status") in wanted]
        for key in _DATE_FILTERS & set(args):
            field, op = key[:-1].split("[")
            value = args[key]
            compare = {"$gt": str.__gt__, "$gte": str.__ge__, "$lt": str.__lt__, "$lte": str.__le__}[op]
            items = [it for it in items if it.get(field) and compare(it[field], value)]
        if "$sort" in args:
            for field in reversed([f for f in args["$sort"].split(",") if f]):
                desc = field.startswith("-")
                name = field.lstrip("-+")
                items.sort(key=lambda it: (it.get(name) is None, str(it.get(name) or "")), reverse=desc)

        page = items[offset:offset + limit]
        if "$select" in args:
            fields = {f for f in args["$select"].replace(",", " ").split() if f} | {"_id"}
            page = [{k: v for k, v in it.items() if k in fields} for it in page]
        return jsonify({
            "results": page,
            "cursorNext": self._encode_cursor(offset + limit) if offset + limit < len(items) else None,
            "cursorPrev": self._encode_cursor(max(0, offset - limit)) if offset > 0 else None,
            "rangeStart": offset + 1 if page else 0,
            "rangeEnd": offset + len(page),
        })

    # --------------------------------------------------------------- write views
    def _json_body(self):
        body = request.get_json(silent=True)
        return body if isinstance(body, dict) else None

    def _validate_member(self, body: dict, *, partial: bool, member_id: str | None = None) -> list[str]:
        errors = [f"property {k} should not exist" for k in sorted(set(body) - MEMBER_FIELDS)]
        required = () if partial else ("name", "email", "location")
        for key in required:
            if not body.get(key):
                errors.append(f"{key} should not be empty")
        if "name" in body and not (isinstance(body["name"], str) and body["name"].strip()):
            errors.append("name must be a non-empty string")
        email = body.get("email")
        if "email" in body:
            if not (isinstance(email, str) and "@" in email):
                errors.append("email must be an email")
            else:
                owner = self._email_index.get(email.casefold())
                if owner is not None and owner != member_id:
                    errors.append(f"Member with email {email} already exists")
        if body.get("location") and body["location"] not in self.locations:
            errors.append("location must be a valid location id")
        if body.get("company") and body["company"] not in self.companies:
            errors.append("company must be a valid company id")
        if body.get("startDate") and not _parse_iso(body["startDate"]):
            errors.append("startDate must be a valid ISO 8601 date string")
        if "properties" in body and not isinstance(body["properties"], dict):
            errors.append("properties must be an object")
        return errors

    def _create_member(self):
        body = self._json_body()
        if body is None:
            return _bad_request(["body must be a JSON object"])
        with self._lock:
            errors = self._validate_member(body, partial=False)
            if errors:
                return _bad_request(errors)
            member = self._store_member(body, _now_iso())
        return jsonify(member), 201

    def _update_member(self, member_id: str):
        body = self._json_body()
        if body is None:
            return _bad_request(["body must be a JSON object"])
        with self._lock:
            member = self.members.get(member_id)
            if member is None:
                return _nest_error(404, "Member not found", "Not Found")
            errors = self._validate_member(body, partial=True, member_id=member_id)
            if errors:
                return _bad_request(errors)
            if "email" in body and member.get("email"):
                self._email_index.pop(member["email"].casefold(), None)
            member.update(body)
            member["modifiedAt"] = _now_iso()
            if member.get("email"):
                self._email_index[member["email"].casefold()] = member_id
            return jsonify(member)

    def _create_fee(self):
        body = self._json_body()
        if body is None:
            return _bad_request(["body must be a JSON object"])
        errors = [f"property {k} should not exist" for k in sorted(set(body) - FEE_FIELDS)]
        for key in ("name", "issueDate", "location", "plan", "price"):
            if body.get(key) in (None, ""):
                errors.append(f"{key} should not be empty")
        with self._lock:
            if body.get("issueDate") and not _parse_iso(body["issueDate"]):
                errors.append("issueDate must be a valid ISO 8601 date string")
            if body.get("location") and body["location"] not in self.locations:
                errors.append("location must be a valid location id")
            if body.get("plan") and body["plan"] not in self.plans:
                errors.append("plan must be a valid plan id")
            if body.get("member") and body["member"] not in self.members:
                errors.append("member must be a valid member id")
            price = body.get("price")
            if price is not None and (isinstance(price, bool) or not isinstance(price, (int, float))):
                errors.append("price must be a number")
            quantity = body.get("quantity", 1)
            if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
                errors.append("quantity must be a positive integer")
            if errors:
                return _bad_request(errors)
            stamp = _now_iso()
            fee = {"_id": self._new_id(), **body, "quantity": quantity, "status": "approved",
                   "payment": {"status": "pending"}, "createdAt": stamp, "modifiedAt": stamp}
            self.fees[fee["_id"]] = fee
        return jsonify(fee), 201

    # ---------------------------------------------------------------- /_control
    def _register_control(self, app: Flask) -> None:
        """HTTP switches for browser tests and the demo (no auth: loopback only)."""
        standin = self

        def params() -> dict:
            return request.get_json(silent=True) or request.form.to_dict() or request.args.to_dict()

        def num(data, key, cast=float, default=None):
            return cast(data[key]) if data.get(key) not in (None, "") else default

        @app.get("/_control/state")
        def control_state():
            return jsonify(standin.state())

        @app.post("/_control/latency")
        def control_latency():
            standin.set_latency(num(params(), "seconds", default=0.0))
            return jsonify(standin.state())

        @app.post("/_control/faults")
        def control_faults():
            data = params()
            kind = data.get("kind", "error")
            n = num(data, "count", int, 1)
            where = {"method": data.get("method") or None, "path": data.get("path") or None}
            if kind == "error":
                standin.fail_next(n, status=num(data, "status", int, 500),
                                  retry_after=num(data, "retry_after"), **where)
            elif kind == "timeout":
                standin.timeout_next(n, seconds=num(data, "seconds"), **where)
            elif kind == "drop":
                standin.drop_next(n, **where)
            elif kind in ("commit_error", "commit_drop"):
                standin.commit_then_fail(n, path=where["path"] or "/fees", method=where["method"] or "POST",
                                         drop=kind == "commit_drop")
            else:
                return jsonify({"error": f"unknown fault kind {kind!r}"}), 400
            return jsonify(standin.state())

        @app.post("/_control/clear")
        def control_clear():
            standin.clear_faults()
            return jsonify(standin.state())

        @app.post("/_control/limits")
        def control_limits():
            data = params()
            standin.set_limits(read=num(data, "read", int), write=num(data, "write", int),
                               token=num(data, "token", int), window=num(data, "window"))
            return jsonify(standin.state())

        @app.post("/_control/reset-counters")
        def control_reset_counters():
            standin.reset_counters()
            return jsonify(standin.state())

        @app.post("/_control/revoke-tokens")
        def control_revoke():
            standin.revoke_tokens()
            return jsonify(standin.state())

        @app.post("/_control/seed/members")
        def control_seed_members():
            data = params()
            ids = standin.add_members_bulk(num(data, "count", int, 10), start=num(data, "start", int, 1),
                                           name=data.get("name", "Member {i}"),
                                           email=data.get("email", "member{i}@example.com"))
            return jsonify({"created": len(ids)})

        @app.get("/_control/members")
        def control_members():
            with standin._lock:
                return jsonify(list(standin.members.values()))

        @app.get("/_control/fees")
        def control_fees():
            with standin._lock:
                return jsonify(list(standin.fees.values()))

        @app.get("/_control/locations")
        def control_locations():
            with standin._lock:
                return jsonify(list(standin.locations.values()))


def demo_standin(**kwargs) -> OfficeRnDStandIn:
    """The demo organisation: slug ``demo``, two locations, a fee plan and a few members."""
    standin = OfficeRnDStandIn(**{"slug": "demo", "client_id": "demo-client",
                                  "client_secret": "demo-secret", "id_prefix": "0ff1ce00", **kwargs})
    amsterdam = standin.add_location("Amsterdam Central")
    standin.add_location("Rotterdam Harbour", code="RTM")
    standin.add_plan("Virtual mailbox fees")
    for name, email in [("Ada Lovelace", "ada@example.com"), ("Grace Hopper", "grace@example.com"),
                        ("Alan Turing", "alan@example.com"), ("Katherine Johnson", "katherine@example.com")]:
        standin.add_member(name, email, amsterdam["_id"])
    return standin


def main(argv=None) -> None:
    """Run the demo organisation in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(description="Local OfficeRnD Flex API v2 stand-in")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--client-id", default=os.environ.get("OFFICERND_STANDIN_CLIENT_ID", "demo-client"))
    parser.add_argument("--client-secret", default=os.environ.get("OFFICERND_STANDIN_CLIENT_SECRET", "demo-secret"))
    parser.add_argument("--members", type=int, default=0, help="extra generated members to seed")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    args = parser.parse_args(argv)

    from werkzeug.serving import make_server

    standin = demo_standin(client_id=args.client_id, client_secret=args.client_secret)
    if args.members:
        standin.add_members_bulk(args.members)
    standin.set_latency(args.latency)
    server = make_server(args.host, args.port, standin.app, threaded=True)
    base = f"http://{args.host}:{server.server_port}"
    standin.base_url = base
    plan_id = next(iter(standin.plans))
    print(f"OfficeRnD stand-in on {base}")
    print(f"  token URL      {standin.token_url}")
    print(f"  API base       {standin.api_base}")
    print(f"  slug           {standin.slug}")
    print(f"  client id      {standin.client_id}")
    print(f"  client secret  {standin.client_secret}")
    print(f"  fee plan id    {plan_id}")
    for loc in standin.locations.values():
        print(f"  location       {loc['_id']}  {loc['name']}")
    print(f"  control        {base}/_control/state")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        standin._stopping.set()
        server.server_close()


if __name__ == "__main__":
    main()
