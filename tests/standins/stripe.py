"""A local stand-in for the slice of the Stripe API that SphereMail billing uses.

The official ``stripe`` library is pointed at it with::

    client = stripe.StripeClient(
        stand_in.secret_key,
        base_addresses={"api": stand_in.base_url},
        max_network_retries=0,
    )

(or module-level ``stripe.api_key`` / ``stripe.api_base`` /
``stripe.max_network_retries = 0``).  ``max_network_retries=0`` matters: with
retries on, the library silently re-sends after some error answers and a
test would see fewer failures than the code under test had to handle.

What it covers (everything else answers Stripe's 404 "Unrecognized request URL"):

* ``POST /v1/customers``, ``GET|POST /v1/customers/<id>``,
  ``GET /v1/customers/<id>/payment_methods``
* ``POST /v1/checkout/sessions`` (mode ``payment`` and ``setup``),
  ``GET /v1/checkout/sessions/<id>``, ``GET .../line_items``, ``POST .../expire``
* ``POST /v1/payment_intents`` (off-session charge of a saved card),
  ``GET /v1/payment_intents/<id>``
* ``GET /v1/setup_intents/<id>``, ``GET /v1/payment_methods/<id>``,
  ``GET /v1/payment_methods?customer=...``
* the hosted payment page ``GET|POST /checkout/<id>`` that ``session.url``
  points at, which completes the session and delivers a signed
  ``checkout.session.completed`` webhook before redirecting to success_url
* ``/_control/*`` JSON endpoints so browser tests that run the stand-in as a
  separate process can configure and inspect it.

Test cards (spaces are ignored):

* ``4242 4242 4242 4242`` / ``5555 5555 5555 4444``: succeed.
* ``4000 0000 0000 0002``: declined on the hosted page ("Your card was declined.").
* ``4000 0000 0000 9995``: in payment mode declined on the page with
  insufficient funds; in setup mode it is saved fine, and any later
  off-session PaymentIntent with it answers 402 ``card_declined`` /
  ``insufficient_funds`` (like Stripe's own test card).

Events: only ``checkout.session.completed`` (hosted page / complete_session)
and ``checkout.session.expired`` (expire) are sent on their own; real Stripe
would also send ``payment_intent.*`` events, which billing does not rely on.
Use :meth:`StripeStandIn.send_event` to deliver any other event, e.g.
``checkout.session.async_payment_succeeded``.

Run standalone: ``python -m tests.standins.stripe --port 8103 --webhook-url URL``.
"""

import argparse
import base64
import copy
import hashlib
import hmac
import html
import itertools
import json
import re
import secrets
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from tests.standins.server import start_server

# The API version stamped on events.  Stripe stamps the account's version; the
# library only uses it for a warning, so any plausible value works.
DEFAULT_API_VERSION = "2026-10-28.endive"

CARD_SUCCESS = "4242424242424242"
CARD_DECLINE = "4000000000000002"
CARD_INSUFFICIENT_FUNDS = "4000000000009995"

# Currencies Stripe counts in whole units (no minor unit); only affects how the
# hosted page prints the amount.
_ZERO_DECIMAL = {
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf",
    "ugx", "vnd", "vuv", "xaf", "xof", "xpf",
}

_DECLINE_MESSAGES = {
    "generic_decline": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
    "lost_card": "Your card was declined.",
    "stolen_card": "Your card was declined.",
    "expired_card": "Your card has expired.",
}


class StripeStandInError(Exception):
    """An error answer from the stand-in API: rendered as Stripe error JSON."""

    def __init__(self, status, message, type_="invalid_request_error", **extra):
        super().__init__(message)
        self.status = status
        self.body = {"error": dict({"type": type_, "message": message}, **extra)}


class CardDeclined(Exception):
    """Raised by :meth:`StripeStandIn.complete_session` when the card is declined."""

    def __init__(self, message, decline_code):
        super().__init__(message)
        self.message = message
        self.decline_code = decline_code


@dataclass
class Delivery:
    """One webhook delivery attempt (what :attr:`StripeStandIn.events_sent` holds)."""

    event: Dict[str, Any]
    payload: bytes
    headers: Dict[str, str]
    url: Optional[str]
    status: Optional[int] = None
    response_body: bytes = b""
    error: Optional[str] = None

    @property
    def ok(self):
        """True when the receiver answered 2xx, which is what Stripe counts as delivered."""
        return self.status is not None and 200 <= self.status < 300


@dataclass
class _StoredAnswer:
    """A response remembered under an Idempotency-Key."""

    fingerprint: Tuple
    status: int
    body: Dict[str, Any]


@dataclass
class RequestRecord:
    """One API request as seen by the stand-in (for assertions on call counts)."""

    method: str
    path: str
    route: str
    params: Dict[str, Any]
    idempotency_key: Optional[str]
    status: int = 0
    replayed: bool = False


def _new_id(prefix):
    """Make an id shaped like Stripe's (``cus_``, ``cs_test_``...) that is unique per process."""
    return prefix + secrets.token_hex(12)


def parse_bracket_params(pairs):
    """Turn form pairs like ``("a[b][0][c]", "x")`` into nested dicts and lists.

    Stripe's encoding writes arrays as ``key[0]``, ``key[1]`` (the official
    library always indexes) and sometimes ``key[]``; a dict whose keys are all
    decimal digits becomes a list ordered by index.  Values stay strings, as
    on the wire; each endpoint converts the fields it understands.
    """
    root: Dict[str, Any] = {}
    # ``key[]`` has no index of its own, so number them per parent node.
    append_counters: Dict[int, itertools.count] = {}
    for raw_key, value in pairs:
        head, _, rest = raw_key.partition("[")
        tokens = [head]
        if rest:
            tokens += rest.rstrip("]").split("][")
        node = root
        for i, token in enumerate(tokens):
            if token == "":
                counter = append_counters.setdefault(id(node), itertools.count())
                token = str(next(counter))
            last = i == len(tokens) - 1
            if last:
                node[token] = value
            else:
                child = node.get(token)
                if not isinstance(child, dict):
                    child = {}
                    node[token] = child
                node = child
    return _listify(root)


def _listify(node):
    """Convert dicts keyed exactly "0".."n-1" (bracket arrays) into lists, recursively.

    Requiring the full 0..n-1 run keeps a hash such as ``metadata[7]=x`` a dict.
    """
    if not isinstance(node, dict):
        return node
    converted = {k: _listify(v) for k, v in node.items()}
    if converted and all(k.isdigit() for k in converted):
        indexes = sorted(int(k) for k in converted)
        if indexes == list(range(len(indexes))):
            return [converted[str(i)] for i in indexes]
    return converted


def _as_bool(value, param):
    """Parse a Stripe boolean form value ("true"/"false")."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if value in ("true", "false"):
        return value == "true"
    raise StripeStandInError(400, "Invalid boolean: %s" % value, param=param)


def _as_int(value, param, required=True):
    """Parse a Stripe integer form value, answering Stripe's 400 when it is not one."""
    if value is None or value == "":
        if required:
            raise StripeStandInError(
                400, "Missing required param: %s." % param,
                param=param, code="parameter_missing",
            )
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StripeStandInError(
            400, "Invalid integer: %s" % value, param=param, code="parameter_invalid_integer"
        )


def _require(params, name):
    """Fetch a required top-level param or answer Stripe's parameter_missing 400."""
    value = params.get(name)
    if value is None or value == "":
        raise StripeStandInError(
            400, "Missing required param: %s." % name, param=name, code="parameter_missing"
        )
    return value


def _metadata(params, name="metadata"):
    """Read a metadata hash (always string -> string)."""
    value = params.get(name) or {}
    if isinstance(value, list):
        # All-digit metadata keys were read as a bracket array; undo that.
        value = {str(i): v for i, v in enumerate(value)}
    if not isinstance(value, dict):
        raise StripeStandInError(400, "Invalid object", param=name)
    return {str(k): str(v) for k, v in value.items()}


def _luhn_ok(number):
    """Check a card number's Luhn digit, so typos on the hosted page behave like Stripe."""
    digits = [int(d) for d in number]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _format_amount(amount, currency):
    """Human form of a minor-unit amount for the hosted page, e.g. ``EUR 12.34``."""
    if amount is None:
        return ""
    if currency.lower() in _ZERO_DECIMAL:
        return "%s %d" % (currency.upper(), amount)
    return "%s %d.%02d" % (currency.upper(), amount // 100, amount % 100)


class StripeStandIn:
    """In-memory Stripe (test mode) served over real HTTP for the real ``stripe`` library.

    State is plain dicts keyed by id (:attr:`customers`, :attr:`sessions`,
    :attr:`payment_intents`, :attr:`setup_intents`, :attr:`payment_methods`)
    holding the same JSON objects the API answers, so tests can assert on them
    directly.  Webhooks go to :attr:`webhook_url` over HTTP, or to
    :attr:`webhook_handler` (a Python callable) when that is set, which lets a
    test deliver straight into a Flask test client without a server.
    """

    def __init__(
        self,
        secret_key=None,
        webhook_secret=None,
        webhook_url=None,
        webhook_handler=None,
        api_version=DEFAULT_API_VERSION,
    ):
        """Create a stand-in; keys default to fresh random ``sk_test_`` / ``whsec_`` values."""
        self.secret_key = secret_key or "sk_test_standin_" + secrets.token_hex(12)
        self.webhook_secret = webhook_secret or "whsec_" + secrets.token_hex(16)
        self.webhook_url = webhook_url
        # callable(payload: bytes, headers: dict) -> int status, or an object
        # with ``status_code`` (e.g. a Flask test client response).
        self.webhook_handler: Optional[Callable] = webhook_handler
        self.api_version = api_version
        self.base_url: Optional[str] = None
        self._stop = None
        # One lock for all state: the API is tiny, and serialising requests
        # also makes idempotent replays race-free.  Webhooks are delivered
        # outside it because the receiver may call back into the API.
        self._lock = threading.RLock()
        self._url_map = Map(
            [
                Rule("/v1/customers", methods=["POST"], endpoint="customer_create"),
                Rule("/v1/customers/<id>", methods=["GET"], endpoint="customer_get"),
                Rule("/v1/customers/<id>", methods=["POST"], endpoint="customer_update"),
                Rule("/v1/customers/<id>/payment_methods", methods=["GET"],
                     endpoint="customer_payment_methods"),
                Rule("/v1/checkout/sessions", methods=["POST"], endpoint="session_create"),
                Rule("/v1/checkout/sessions/<id>", methods=["GET"], endpoint="session_get"),
                Rule("/v1/checkout/sessions/<id>/line_items", methods=["GET"],
                     endpoint="session_line_items"),
                Rule("/v1/checkout/sessions/<id>/expire", methods=["POST"],
                     endpoint="session_expire"),
                Rule("/v1/payment_intents", methods=["POST"], endpoint="payment_intent_create"),
                Rule("/v1/payment_intents/<id>", methods=["GET"], endpoint="payment_intent_get"),
                Rule("/v1/setup_intents/<id>", methods=["GET"], endpoint="setup_intent_get"),
                Rule("/v1/payment_methods", methods=["GET"], endpoint="payment_method_list"),
                Rule("/v1/payment_methods/<id>", methods=["GET"], endpoint="payment_method_get"),
                Rule("/checkout/<id>", methods=["GET"], endpoint="page_get"),
                Rule("/checkout/<id>", methods=["POST"], endpoint="page_post"),
                Rule("/_control/config", methods=["GET", "POST"], endpoint="control_config"),
                Rule("/_control/state", methods=["GET"], endpoint="control_state"),
                Rule("/_control/reset", methods=["POST"], endpoint="control_reset"),
                Rule("/_control/decline", methods=["POST"], endpoint="control_decline"),
                Rule("/_control/complete_session", methods=["POST"],
                     endpoint="control_complete_session"),
                Rule("/_control/resend_last_event", methods=["POST"],
                     endpoint="control_resend_last_event"),
            ],
            strict_slashes=False,
        )
        self.reset()

    # ------------------------------------------------------------------ lifecycle

    def start(self, host="127.0.0.1", port=0):
        """Serve on a free port (or ``port``) in a background thread; return the base URL."""
        if self.base_url is None:
            self.base_url, self._stop = start_server(self.wsgi_app, host=host, port=port)
        return self.base_url

    def stop(self):
        """Stop the server started by :meth:`start` (state is kept)."""
        if self._stop is not None:
            self._stop()
        self._stop = None
        self.base_url = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def reset(self):
        """Forget every object, event, request record and idempotency key."""
        with self._lock:
            self.customers: Dict[str, Dict[str, Any]] = {}
            self.sessions: Dict[str, Dict[str, Any]] = {}
            self.payment_intents: Dict[str, Dict[str, Any]] = {}
            self.setup_intents: Dict[str, Dict[str, Any]] = {}
            self.payment_methods: Dict[str, Dict[str, Any]] = {}
            self.events_sent: List[Delivery] = []
            self.requests: List[RequestRecord] = []
            self.request_counts: Counter = Counter()
            # Session internals that are not part of the API object.
            self._session_private: Dict[str, Dict[str, Any]] = {}
            # pm id -> decline_code for off-session charges.
            self._declining_pms: Dict[str, str] = {}
            self._idempotency: Dict[str, _StoredAnswer] = {}

    @property
    def api_base(self):
        """Same as :attr:`base_url`; the value for ``base_addresses={"api": ...}``."""
        return self.base_url

    def client(self, **kwargs):
        """A ``stripe.StripeClient`` wired to this stand-in (retries off)."""
        import stripe

        options = {"base_addresses": {"api": self.base_url}, "max_network_retries": 0}
        options.update(kwargs)
        return stripe.StripeClient(self.secret_key, **options)

    def count(self, method, route):
        """How many requests hit ``route`` (e.g. ``"/v1/checkout/sessions"`` or
        ``"/v1/payment_intents/<id>"``) with ``method``."""
        return self.request_counts["%s %s" % (method.upper(), route)]

    # ------------------------------------------------------------------ Python helpers

    def make_decline(self, pm_id, decline_code="insufficient_funds"):
        """Make later off-session charges with payment method ``pm_id`` fail with ``decline_code``."""
        with self._lock:
            if pm_id not in self.payment_methods:
                raise KeyError(pm_id)
            self._declining_pms[pm_id] = decline_code

    def create_payment_method(self, card=CARD_SUCCESS, customer=None):
        """Create a card payment method directly (optionally attached); returns the pm dict."""
        with self._lock:
            pm = self._new_payment_method(re.sub(r"\D", "", card))
            if customer:
                self._attach(pm["id"], customer)
            return copy.deepcopy(pm)

    def complete_session(self, session_id, card=CARD_SUCCESS):
        """Pay (or save a card for) a Checkout Session the way the hosted page does.

        Delivers the ``checkout.session.completed`` webhook before returning
        the completed session.  Raises :class:`CardDeclined` for declining
        cards, leaving the session open.
        """
        session, error = self._complete(session_id, card)
        if error:
            raise CardDeclined(*error)
        self.send_event("checkout.session.completed", session)
        return self.get_session(session_id)

    def expire_session(self, session_id):
        """Expire an open session and deliver ``checkout.session.expired``; return it."""
        with self._lock:
            snapshot = self._expire_locked(session_id)
        self.send_event("checkout.session.expired", snapshot)
        return snapshot

    def get_session(self, session_id):
        """A copy of the current session object."""
        with self._lock:
            return copy.deepcopy(self.sessions[session_id])

    def success_redirect_url(self, session_id):
        """Where the hosted page redirects after success (``{CHECKOUT_SESSION_ID}`` filled in)."""
        with self._lock:
            url = self.sessions[session_id]["success_url"] or ""
        return url.replace("{CHECKOUT_SESSION_ID}", session_id)

    def build_event(self, type_, obj):
        """Build an event envelope shaped like Stripe's around ``obj`` (not sent)."""
        return {
            "id": _new_id("evt_"),
            "object": "event",
            "api_version": self.api_version,
            "created": int(time.time()),
            "data": {"object": copy.deepcopy(obj)},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": type_,
        }

    @staticmethod
    def serialize_event(event):
        """The exact bytes sent for ``event``; Stripe pretty-prints, so do we, which
        catches receivers that verify a re-serialised body instead of the raw one."""
        return json.dumps(event, indent=2).encode("utf-8")

    def signed_headers(self, payload, secret=None, timestamp=None):
        """Webhook headers with a ``Stripe-Signature`` over ``payload``.

        ``secret`` defaults to :attr:`webhook_secret` and ``timestamp`` to now;
        pass others to craft bad or stale signatures.  ``payload`` may be bytes,
        str, or an event dict (serialised with :meth:`serialize_event`).
        """
        if isinstance(payload, dict):
            payload = self.serialize_event(payload)
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        secret = self.webhook_secret if secret is None else secret
        timestamp = int(time.time()) if timestamp is None else int(timestamp)
        signed = b"%d." % timestamp + payload
        digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()
        return {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Stripe-Signature": "t=%d,v1=%s" % (timestamp, digest),
        }

    def send_event(self, type_or_event, obj=None):
        """Build (unless given a built event), sign and deliver an event; return the :class:`Delivery`."""
        if isinstance(type_or_event, dict):
            event = type_or_event
        else:
            event = self.build_event(type_or_event, obj)
        return self.deliver(event)

    def deliver(self, event, payload=None, headers=None):
        """Deliver ``event`` to the webhook handler or URL and record it in :attr:`events_sent`.

        Never raises for receiver failures: Stripe just records them and
        retries later, so the outcome is in the returned :class:`Delivery`.
        """
        payload = self.serialize_event(event) if payload is None else payload
        headers = self.signed_headers(payload) if headers is None else headers
        delivery = Delivery(event=event, payload=payload, headers=headers, url=self.webhook_url)
        handler = self.webhook_handler
        if handler is not None:
            try:
                result = handler(payload, dict(headers))
                delivery.status = getattr(result, "status_code", result)
            except Exception as exc:  # the receiver's bug is the test's to see
                delivery.error = repr(exc)
        elif self.webhook_url:
            req = urllib.request.Request(self.webhook_url, data=payload, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    delivery.status = resp.status
                    delivery.response_body = resp.read()
            except urllib.error.HTTPError as exc:
                delivery.status = exc.code
                delivery.response_body = exc.read()
            except (urllib.error.URLError, OSError) as exc:
                delivery.error = repr(exc)
        else:
            delivery.error = "no webhook_url or webhook_handler configured"
        with self._lock:
            self.events_sent.append(delivery)
        return delivery

    def resend_last_event(self):
        """Deliver the last event again, same id and body, freshly signed (a Stripe retry)."""
        with self._lock:
            if not self.events_sent:
                raise LookupError("no event has been sent yet")
            last = self.events_sent[-1]
        return self.deliver(last.event, payload=last.payload)

    # ------------------------------------------------------------------ object helpers

    def _get(self, kind, store, obj_id, param="id"):
        obj = store.get(obj_id)
        if obj is None:
            raise StripeStandInError(
                404, "No such %s: '%s'" % (kind, obj_id), code="resource_missing", param=param
            )
        return obj

    def _new_customer(self, params):
        customer = {
            "id": _new_id("cus_"),
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": int(time.time()),
            "currency": None,
            "description": params.get("description"),
            "email": params.get("email"),
            "invoice_settings": {"default_payment_method": None},
            "livemode": False,
            "metadata": _metadata(params),
            "name": params.get("name"),
            "phone": params.get("phone"),
            "preferred_locales": [],
        }
        self.customers[customer["id"]] = customer
        return customer

    def _new_payment_method(self, number, customer=None):
        brand = "mastercard" if number.startswith("5") else "visa"
        pm = {
            "id": _new_id("pm_"),
            "object": "payment_method",
            "billing_details": {"address": None, "email": None, "name": None, "phone": None},
            "card": {
                "brand": brand,
                "country": "US",
                "exp_month": 12,
                "exp_year": time.gmtime().tm_year + 5,
                "funding": "credit",
                "last4": number[-4:],
            },
            "created": int(time.time()),
            "customer": customer,
            "livemode": False,
            "metadata": {},
            "type": "card",
        }
        self.payment_methods[pm["id"]] = pm
        if number == CARD_INSUFFICIENT_FUNDS:
            self._declining_pms[pm["id"]] = "insufficient_funds"
        elif number == CARD_DECLINE:
            self._declining_pms[pm["id"]] = "generic_decline"
        return pm

    def _attach(self, pm_id, customer_id):
        self._get("customer", self.customers, customer_id, param="customer")
        self.payment_methods[pm_id]["customer"] = customer_id

    def _new_payment_intent(self, amount, currency, customer, pm_id, metadata, extra=None):
        pi = {
            "id": _new_id("pi_"),
            "object": "payment_intent",
            "amount": amount,
            "amount_received": 0,
            "capture_method": "automatic",
            "client_secret": None,
            "confirmation_method": "automatic",
            "created": int(time.time()),
            "currency": currency,
            "customer": customer,
            "description": None,
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": metadata,
            "payment_method": pm_id,
            "payment_method_types": ["card"],
            "setup_future_usage": None,
            "status": "requires_payment_method" if pm_id is None else "requires_confirmation",
        }
        pi.update(extra or {})
        pi["client_secret"] = pi["id"] + "_secret_" + secrets.token_hex(8)
        self.payment_intents[pi["id"]] = pi
        return pi

    def _succeed(self, pi):
        pi["status"] = "succeeded"
        pi["amount_received"] = pi["amount"]
        pi["latest_charge"] = _new_id("ch_")
        pi["last_payment_error"] = None

    def _expand(self, obj, expand):
        """Replace id strings by objects for each dotted ``expand`` path."""
        obj = copy.deepcopy(obj)
        stores = {
            "cus_": self.customers,
            "pm_": self.payment_methods,
            "pi_": self.payment_intents,
            "seti_": self.setup_intents,
            "cs_": self.sessions,
        }
        for path in expand or []:
            head, _, rest = path.partition(".")
            if head == "line_items" and obj.get("object") == "checkout.session":
                obj["line_items"] = self._line_items_list(obj["id"])
                continue
            value = obj.get(head)
            if isinstance(value, str):
                for prefix, store in stores.items():
                    if value.startswith(prefix) and value in store:
                        value = copy.deepcopy(store[value])
                        break
                else:
                    raise StripeStandInError(
                        400, "This property cannot be expanded (%s)." % head, param="expand"
                    )
            if rest and isinstance(value, dict):
                value = self._expand(value, [rest])
            obj[head] = value
        return obj

    def _line_items_list(self, session_id):
        items = self._session_private[session_id]["line_items"]
        return {
            "object": "list",
            "data": copy.deepcopy(items),
            "has_more": False,
            "url": "/v1/checkout/sessions/%s/line_items" % session_id,
        }

    # ------------------------------------------------------------------ checkout completion

    def _card_outcome(self, number, mode):
        """(message, decline_code) when the hosted page must refuse ``number``, else None."""
        if len(number) < 12 or not _luhn_ok(number):
            return ("Your card number is invalid.", "incorrect_number")
        if number == CARD_DECLINE:
            return (_DECLINE_MESSAGES["generic_decline"], "generic_decline")
        # Saving a card does not charge it; 9995 only fails when money moves.
        if number == CARD_INSUFFICIENT_FUNDS and mode == "payment":
            return (_DECLINE_MESSAGES["insufficient_funds"], "insufficient_funds")
        return None

    def _complete(self, session_id, card):
        """Apply a card to a session.  Returns (completed session copy, None) or (None, error)."""
        number = re.sub(r"\D", "", card or "")
        with self._lock:
            session = self.sessions.get(session_id)
            if session is None:
                raise KeyError(session_id)
            if session["status"] != "open":
                raise ValueError("session %s is %s, not open" % (session_id, session["status"]))
            private = self._session_private[session_id]
            error = self._card_outcome(number, session["mode"])
            if error:
                return None, error
            customer = session["customer"]
            keep_card = session["mode"] == "setup" or private["setup_future_usage"] is not None
            if customer is None and session["mode"] == "payment" and keep_card:
                # Checkout creates a Customer when it has to keep the card for one
                # (customer_creation=if_required); the webhook carries its id.
                customer = self._new_customer({"email": session["customer_email"]})["id"]
                session["customer"] = customer
            pm = self._new_payment_method(number)
            if keep_card and customer:
                self._attach(pm["id"], customer)
            email = session["customer_email"]
            if email is None and customer:
                email = self.customers[customer]["email"]
            session["customer_details"] = {"email": email, "name": None, "address": None}
            session["status"] = "complete"
            session["url"] = None
            if session["mode"] == "payment":
                pi = self._new_payment_intent(
                    session["amount_total"], session["currency"], customer, pm["id"],
                    private["payment_intent_metadata"],
                    {"setup_future_usage": private["setup_future_usage"]},
                )
                self._succeed(pi)
                session["payment_intent"] = pi["id"]
                session["payment_status"] = "paid"
            else:
                seti = {
                    "id": _new_id("seti_"),
                    "object": "setup_intent",
                    "created": int(time.time()),
                    "customer": customer,
                    "livemode": False,
                    "metadata": private["setup_intent_metadata"],
                    "payment_method": pm["id"],
                    "payment_method_types": ["card"],
                    "status": "succeeded",
                    "usage": "off_session",
                }
                self.setup_intents[seti["id"]] = seti
                session["setup_intent"] = seti["id"]
            return copy.deepcopy(session), None

    # ------------------------------------------------------------------ API handlers

    def _api_customer_create(self, params, ids):
        return 200, self._new_customer(params)

    def _api_customer_get(self, params, ids):
        return 200, self._get("customer", self.customers, ids["id"])

    def _api_customer_update(self, params, ids):
        customer = self._get("customer", self.customers, ids["id"])
        for key in ("email", "name", "description", "phone"):
            if key in params:
                customer[key] = params[key] or None
        if "metadata" in params:
            customer["metadata"].update(_metadata(params))
        settings = params.get("invoice_settings") or {}
        if "default_payment_method" in settings:
            pm_id = settings["default_payment_method"] or None
            if pm_id:
                pm = self._get("payment_method", self.payment_methods, pm_id,
                               param="invoice_settings[default_payment_method]")
                if pm["customer"] != customer["id"]:
                    raise StripeStandInError(
                        400, "The customer does not have a payment method with the ID %s. "
                        "The payment method must be attached to the customer." % pm_id,
                        param="invoice_settings[default_payment_method]",
                    )
            customer["invoice_settings"]["default_payment_method"] = pm_id
        return 200, customer

    def _pm_list(self, customer_id, url):
        data = [pm for pm in self.payment_methods.values() if pm["customer"] == customer_id]
        data.sort(key=lambda pm: pm["created"], reverse=True)
        return {"object": "list", "data": data, "has_more": False, "url": url}

    def _api_customer_payment_methods(self, params, ids):
        self._get("customer", self.customers, ids["id"])
        return 200, self._pm_list(ids["id"], "/v1/customers/%s/payment_methods" % ids["id"])

    def _api_payment_method_list(self, params, ids):
        customer = _require(params, "customer")
        return 200, self._pm_list(customer, "/v1/payment_methods")

    def _api_session_create(self, params, ids):
        mode = _require(params, "mode")
        if mode not in ("payment", "setup"):
            raise StripeStandInError(
                400, "The stand-in only supports mode=payment and mode=setup, not %r." % mode,
                param="mode",
            )
        customer = params.get("customer") or None
        if customer:
            self._get("customer", self.customers, customer, param="customer")
        if params.get("ui_mode", "hosted") == "hosted":
            _require(params, "success_url")
        line_items: List[Dict[str, Any]] = []
        currency = (params.get("currency") or "").lower() or None
        amount_total = None
        pi_data = params.get("payment_intent_data") or {}
        setup_future_usage = pi_data.get("setup_future_usage") or None
        if setup_future_usage not in (None, "off_session", "on_session"):
            raise StripeStandInError(
                400, "Invalid payment_intent_data[setup_future_usage]",
                param="payment_intent_data[setup_future_usage]",
            )
        if mode == "payment":
            raw_items = params.get("line_items")
            if not raw_items:
                raise StripeStandInError(
                    400, "Missing required param: line_items.",
                    param="line_items", code="parameter_missing",
                )
            if not isinstance(raw_items, list):
                raise StripeStandInError(400, "Invalid array", param="line_items")
            amount_total = 0
            for i, item in enumerate(raw_items):
                if item.get("price"):
                    raise StripeStandInError(
                        400, "No such price: '%s'" % item["price"],
                        param="line_items[%d][price]" % i, code="resource_missing",
                    )
                price_data = item.get("price_data")
                if not isinstance(price_data, dict):
                    raise StripeStandInError(
                        400, "Missing required param: line_items[%d][price_data]." % i,
                        param="line_items[%d][price_data]" % i, code="parameter_missing",
                    )
                item_currency = _require(price_data, "currency").lower()
                if currency is None:
                    currency = item_currency
                elif item_currency != currency:
                    raise StripeStandInError(
                        400, "All line items must use the same currency.",
                        param="line_items[%d][price_data][currency]" % i,
                    )
                unit_amount = _as_int(
                    price_data.get("unit_amount"), "line_items[%d][price_data][unit_amount]" % i
                )
                quantity = _as_int(item.get("quantity"), "line_items[%d][quantity]" % i)
                if unit_amount < 0 or quantity < 1:
                    raise StripeStandInError(
                        400, "Invalid amount or quantity.", param="line_items[%d]" % i
                    )
                product = price_data.get("product_data") or {}
                if not price_data.get("product") and not product.get("name"):
                    raise StripeStandInError(
                        400, "Missing required param: line_items[%d][price_data][product_data][name]." % i,
                        param="line_items[%d][price_data][product_data][name]" % i,
                        code="parameter_missing",
                    )
                line_total = unit_amount * quantity
                amount_total += line_total
                line_items.append({
                    "id": _new_id("li_"),
                    "object": "item",
                    "amount_subtotal": line_total,
                    "amount_total": line_total,
                    "currency": item_currency,
                    "description": product.get("name"),
                    "quantity": quantity,
                    "price": {
                        "id": _new_id("price_"),
                        "object": "price",
                        "currency": item_currency,
                        "unit_amount": unit_amount,
                        "product": price_data.get("product") or _new_id("prod_"),
                        "type": "one_time",
                    },
                })
        elif currency is None and not params.get("payment_method_types"):
            # Stripe needs a currency to decide which payment methods a setup
            # session can offer; billing code must pass it.
            raise StripeStandInError(
                400, "Missing required param: currency.", param="currency", code="parameter_missing"
            )
        session_id = "cs_test_" + secrets.token_hex(24)
        session = {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": amount_total,
            "amount_total": amount_total,
            "cancel_url": params.get("cancel_url"),
            "client_reference_id": params.get("client_reference_id"),
            "created": int(time.time()),
            "currency": currency,
            "customer": customer,
            "customer_details": None,
            "customer_email": params.get("customer_email"),
            "expires_at": int(time.time()) + 24 * 3600,
            "livemode": False,
            "locale": params.get("locale"),
            "metadata": _metadata(params),
            "mode": mode,
            "payment_intent": None,
            "payment_method_types": params.get("payment_method_types") or ["card"],
            # Setup sessions never take money, so Stripe reports no_payment_required.
            "payment_status": "unpaid" if mode == "payment" else "no_payment_required",
            "setup_intent": None,
            "status": "open",
            "success_url": params.get("success_url"),
            "ui_mode": params.get("ui_mode", "hosted"),
            "url": "%s/checkout/%s" % (self.base_url or "", session_id),
        }
        self.sessions[session_id] = session
        self._session_private[session_id] = {
            "line_items": line_items,
            "setup_future_usage": setup_future_usage,
            "payment_intent_metadata": _metadata(pi_data),
            "setup_intent_metadata": _metadata(params.get("setup_intent_data") or {}),
        }
        return 200, session

    def _api_session_get(self, params, ids):
        return 200, self._get("checkout.session", self.sessions, ids["id"])

    def _api_session_line_items(self, params, ids):
        self._get("checkout.session", self.sessions, ids["id"])
        return 200, self._line_items_list(ids["id"])

    def _api_payment_intent_create(self, params, ids):
        amount = _as_int(params.get("amount"), "amount")
        currency = _require(params, "currency").lower()
        if amount < 1:
            raise StripeStandInError(400, "Amount must be at least 1.", param="amount",
                                     code="amount_too_small")
        customer = params.get("customer") or None
        if customer:
            self._get("customer", self.customers, customer, param="customer")
        pm_id = params.get("payment_method") or None
        pm = None
        if pm_id:
            pm = self._get("payment_method", self.payment_methods, pm_id, param="payment_method")
            if pm["customer"] and pm["customer"] != customer:
                raise StripeStandInError(
                    400, "The provided PaymentMethod %s belongs to a different Customer "
                    "than the one on this PaymentIntent (or none was given)." % pm_id,
                    param="payment_method",
                )
        off_session = _as_bool(params.get("off_session", "false"), "off_session")
        confirm = _as_bool(params.get("confirm", "false"), "confirm")
        if off_session and not confirm:
            raise StripeStandInError(
                400, "You may only specify `off_session` when `confirm` is true.",
                param="off_session",
            )
        if confirm and pm is None:
            raise StripeStandInError(
                400, "You cannot confirm this PaymentIntent because it's missing a payment method.",
                param="payment_method", code="payment_intent_unexpected_state",
            )
        pi = self._new_payment_intent(
            amount, currency, customer, pm_id, _metadata(params),
            {"description": params.get("description"),
             "setup_future_usage": params.get("setup_future_usage") or None},
        )
        if not confirm:
            return 200, pi
        decline_code = self._declining_pms.get(pm_id)
        if decline_code:
            message = _DECLINE_MESSAGES.get(decline_code, "Your card was declined.")
            error = {
                "charge": _new_id("ch_"),
                "code": "card_declined",
                "decline_code": decline_code,
                "doc_url": "https://stripe.com/docs/error-codes/card-declined",
                "message": message,
                "payment_method": copy.deepcopy(pm),
                "type": "card_error",
            }
            pi["status"] = "requires_payment_method"
            pi["latest_charge"] = error["charge"]
            pi["last_payment_error"] = copy.deepcopy(error)
            pi["payment_method"] = None  # Stripe detaches a failed pm from the intent
            error["payment_intent"] = copy.deepcopy(pi)
            raise StripeStandInError(402, message, **{k: v for k, v in error.items()
                                                     if k not in ("type", "message")},
                                     type_="card_error")
        self._succeed(pi)
        return 200, pi

    def _api_payment_intent_get(self, params, ids):
        return 200, self._get("payment_intent", self.payment_intents, ids["id"])

    def _api_setup_intent_get(self, params, ids):
        return 200, self._get("setup_intent", self.setup_intents, ids["id"])

    def _api_payment_method_get(self, params, ids):
        return 200, self._get("payment_method", self.payment_methods, ids["id"])

    # ------------------------------------------------------------------ WSGI plumbing

    def wsgi_app(self, environ, start_response):
        """The WSGI entry point (API, hosted page and control endpoints)."""
        request = Request(environ)
        adapter = self._url_map.bind_to_environ(environ)
        try:
            rule, ids = adapter.match(return_rule=True)
        except HTTPException:
            if request.path.startswith("/v1/"):
                response = self._json(404, {"error": {
                    "type": "invalid_request_error",
                    "message": "Unrecognized request URL (%s: %s)." % (request.method, request.path),
                }})
            else:
                response = Response("Not found", status=404, mimetype="text/plain")
            return response(environ, start_response)
        endpoint = rule.endpoint
        if endpoint.startswith("page_"):
            response = getattr(self, "_" + endpoint)(request, ids["id"])
        elif endpoint.startswith("control_"):
            response = self._control(endpoint, request)
        else:
            response = self._api(endpoint, rule.rule, request, ids)
        return response(environ, start_response)

    def _json(self, status, body, extra_headers=None):
        headers = {
            "Request-Id": _new_id("req_"),
            "Stripe-Version": self.api_version,
        }
        headers.update(extra_headers or {})
        return Response(json.dumps(body), status=status, mimetype="application/json",
                        headers=headers)

    def _check_auth(self, request):
        header = request.headers.get("Authorization", "")
        key = None
        if header.startswith("Bearer "):
            key = header[len("Bearer "):].strip()
        elif header.startswith("Basic "):
            # Stripe also accepts the key as the Basic-auth user name (curl -u).
            try:
                key = base64.b64decode(header[6:]).decode("utf-8").split(":", 1)[0]
            except (ValueError, UnicodeDecodeError):
                key = None
        if not key:
            raise StripeStandInError(
                401, "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY')."
            )
        if not hmac.compare_digest(key, self.secret_key):
            raise StripeStandInError(
                401, "Invalid API Key provided: %s" % (key[:8] + "*" * 8 + key[-4:]),
                code="api_key_invalid" if key.startswith("sk_") else None,
            )

    def _api(self, endpoint, route, request, ids):
        """Authenticate, apply idempotency, dispatch to ``_api_<endpoint>``, answer JSON."""
        pairs = list(request.args.items(multi=True))
        if request.method == "POST":
            pairs += list(request.form.items(multi=True))
        params = parse_bracket_params(pairs)
        key = request.headers.get("Idempotency-Key")
        record = RequestRecord(request.method, request.path, route, params, key)
        with self._lock:
            self.requests.append(record)
            self.request_counts["%s %s" % (request.method, route)] += 1
        to_deliver = None
        replay_header = {}
        try:
            self._check_auth(request)
            if key is not None and len(key) > 255:
                raise StripeStandInError(400, "Idempotency-Key must be at most 255 characters.")
            # Compare as sorted raw pairs: same parameters in another order are the same request.
            fingerprint = (request.method, request.path, tuple(sorted(pairs)))
            with self._lock:
                stored = self._idempotency.get(key) if (key and request.method == "POST") else None
                if stored is not None:
                    if stored.fingerprint != fingerprint:
                        raise StripeStandInError(
                            400,
                            "Keys for idempotent requests can only be used with the same "
                            "parameters they were first used with. Try using a key other than "
                            "'%s' if you meant to execute a different request." % key,
                            type_="idempotency_error",
                        )
                    record.replayed = True
                    status, body = stored.status, stored.body
                    replay_header = {"Idempotent-Replayed": "true"}
                else:
                    try:
                        if endpoint == "session_expire":
                            # Its webhook must go out after the lock is released.
                            body = to_deliver = self._expire_locked(ids["id"])
                            status = 200
                        else:
                            status, body = getattr(self, "_api_" + endpoint)(params, ids)
                            body = self._expand(body, params.get("expand"))
                    except StripeStandInError as exc:
                        # Stripe saves an idempotent result once the endpoint
                        # has started doing work (a 402 decline), not for
                        # validation failures, which the caller may fix and retry.
                        if key and request.method == "POST" and exc.status == 402:
                            self._idempotency[key] = _StoredAnswer(fingerprint, exc.status, exc.body)
                        raise
                    body = copy.deepcopy(body)
                    if key and request.method == "POST":
                        self._idempotency[key] = _StoredAnswer(fingerprint, status, body)
        except StripeStandInError as exc:
            record.status = exc.status
            return self._json(exc.status, exc.body)
        if to_deliver is not None:
            self.send_event("checkout.session.expired", to_deliver)
        record.status = status
        return self._json(status, body, replay_header)

    def _expire_locked(self, session_id):
        """Expire without delivering (the caller delivers after releasing the lock)."""
        session = self._get("checkout.session", self.sessions, session_id)
        if session["status"] != "open":
            raise StripeStandInError(
                400,
                "Only Checkout Sessions with a status in [\"open\"] can be expired. "
                "This Checkout Session has a status of \"%s\"." % session["status"],
            )
        session["status"] = "expired"
        session["url"] = None
        return copy.deepcopy(session)

    # ------------------------------------------------------------------ hosted page

    def _render_page(self, session, error=None, card=None, status=200):
        private = self._session_private[session["id"]]
        esc = html.escape
        setup = session["mode"] == "setup"
        title = "Save a card" if setup else "Pay %s" % _format_amount(
            session["amount_total"], session["currency"])
        items = "".join(
            "<li>%s &times; %d: %s</li>" % (
                esc(item["description"] or ""), item["quantity"],
                esc(_format_amount(item["amount_total"], item["currency"])))
            for item in private["line_items"]
        )
        alert = '<p role="alert" class="error">%s</p>' % esc(error) if error else ""
        cancel = (
            '<p><a href="%s">Cancel</a></p>' % esc(session["cancel_url"])
            if session.get("cancel_url") else ""
        )
        body = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{title} | Stripe stand-in Checkout</title></head>
<body>
<main>
<h1>{title}</h1>
{items}
{alert}
<form method="post" action="/checkout/{sid}">
  <p><label for="card-number">Card number</label>
     <input id="card-number" name="card_number" value="{card}" inputmode="numeric"
            autocomplete="cc-number" required></p>
  <p><label for="card-expiry">Expiry (MM / YY)</label>
     <input id="card-expiry" name="card_expiry" value="12 / 34" autocomplete="cc-exp"></p>
  <p><label for="card-cvc">CVC</label>
     <input id="card-cvc" name="card_cvc" value="123" autocomplete="cc-csc"></p>
  <button type="submit">{button}</button>
</form>
{cancel}
</main>
</body>
</html>
""".format(
            title=esc(title),
            items="<ul>%s</ul>" % items if items else "",
            alert=alert,
            sid=esc(session["id"]),
            card=esc(card or "4242 4242 4242 4242"),
            button="Save card" if setup else "Pay",
            cancel=cancel,
        )
        return Response(body, status=status, mimetype="text/html")

    def _closed_page(self, session):
        text = "This Checkout Session is %s." % session["status"]
        return Response(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Checkout</title>"
            "</head><body><main><h1>%s</h1></main></body></html>" % html.escape(text),
            status=410 if session["status"] == "expired" else 200, mimetype="text/html",
        )

    def _page_get(self, request, session_id):
        with self._lock:
            session = self.sessions.get(session_id)
            if session is None:
                return Response("No such Checkout Session", status=404, mimetype="text/plain")
            if session["status"] != "open":
                return self._closed_page(session)
            return self._render_page(session)

    def _page_post(self, request, session_id):
        card = request.form.get("card_number", "")
        with self._lock:
            session = self.sessions.get(session_id)
            if session is None:
                return Response("No such Checkout Session", status=404, mimetype="text/plain")
            if session["status"] != "open":
                return self._closed_page(session)
        completed, error = self._complete(session_id, card)
        if error:
            with self._lock:
                return self._render_page(self.sessions[session_id], error=error[0], card=card)
        # Deliver before redirecting so that, by the time the browser lands on
        # success_url, the app has already seen the webhook: tests can then
        # assert "paid" without polling.  (Real Stripe does not promise this
        # order, which is why the app must not trust the redirect itself.)
        self.send_event("checkout.session.completed", completed)
        response = Response(status=303)
        response.headers["Location"] = self.success_redirect_url(session_id)
        return response

    # ------------------------------------------------------------------ control endpoints

    def _control(self, endpoint, request):
        """JSON endpoints for browser tests that run the stand-in out of process."""
        data = request.get_json(silent=True) or {}
        try:
            if endpoint == "control_config":
                if request.method == "POST":
                    for name in ("webhook_url", "webhook_secret", "secret_key"):
                        if name in data:
                            setattr(self, name, data[name])
                return self._json(200, self._config())
            if endpoint == "control_state":
                with self._lock:
                    state = {
                        "sessions": self.sessions,
                        "payment_intents": self.payment_intents,
                        "setup_intents": self.setup_intents,
                        "payment_methods": self.payment_methods,
                        "customers": self.customers,
                        "events_sent": [
                            {"id": d.event["id"], "type": d.event["type"], "url": d.url,
                             "status": d.status, "error": d.error}
                            for d in self.events_sent
                        ],
                        "request_counts": dict(self.request_counts),
                    }
                    return self._json(200, json.loads(json.dumps(state)))
            if endpoint == "control_reset":
                self.reset()
                return self._json(200, self._config())
            if endpoint == "control_decline":
                self.make_decline(data["payment_method"], data.get("decline_code", "insufficient_funds"))
                return self._json(200, {"ok": True})
            if endpoint == "control_complete_session":
                try:
                    session = self.complete_session(data["id"], data.get("card", CARD_SUCCESS))
                except CardDeclined as exc:
                    return self._json(402, {"declined": exc.message, "decline_code": exc.decline_code})
                return self._json(200, session)
            if endpoint == "control_resend_last_event":
                delivery = self.resend_last_event()
                return self._json(200, {"id": delivery.event["id"], "status": delivery.status,
                                        "error": delivery.error})
        except (KeyError, LookupError, ValueError) as exc:
            return self._json(400, {"error": repr(exc)})
        return self._json(404, {"error": "unknown control endpoint"})

    def _config(self):
        return {
            "base_url": self.base_url,
            "secret_key": self.secret_key,
            "webhook_secret": self.webhook_secret,
            "webhook_url": self.webhook_url,
        }


def main(argv=None):
    """Run the stand-in standalone until interrupted; print the keys the app needs."""
    parser = argparse.ArgumentParser(description="Local Stripe API stand-in")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8103)
    parser.add_argument("--webhook-url", default=None)
    parser.add_argument("--secret-key", default=None, help="default: random sk_test_...")
    parser.add_argument("--webhook-secret", default=None, help="default: random whsec_...")
    args = parser.parse_args(argv)
    stand_in = StripeStandIn(
        secret_key=args.secret_key, webhook_secret=args.webhook_secret, webhook_url=args.webhook_url
    )
    base_url = stand_in.start(host=args.host, port=args.port)
    # KEY=value lines so a launcher can read them straight into the app's environment.
    print("STRIPE_API_BASE=%s" % base_url)
    print("STRIPE_SECRET_KEY=%s" % stand_in.secret_key)
    print("STRIPE_WEBHOOK_SECRET=%s" % stand_in.webhook_secret)
    print("STRIPE_WEBHOOK_URL=%s" % (stand_in.webhook_url or ""))
    sys.stdout.flush()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        stand_in.stop()


if __name__ == "__main__":
    main()
