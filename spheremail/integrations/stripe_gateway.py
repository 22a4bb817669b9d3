"""Stripe, the operator's payment gateway. The only module that imports ``stripe``.

Everything the rest of the app needs goes through :class:`StripeGateway`, and every
failure Stripe (or the network) can produce comes out as a :class:`GatewayError`
subclass carrying a message fit for a person, so no caller ever shows a 500 for it.

Objects come back as plain dicts (``StripeObject.to_dict()``) so services and tests
do not depend on the library's object model.
"""
from __future__ import annotations

import logging

import stripe

log = logging.getLogger(__name__)


class GatewayError(Exception):
    """Stripe refused or could not be reached. ``message`` is safe to show to people."""

    def __init__(self, message: str, *, code: str | None = None, detail: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        # Stripe's own words, for staff and logs (never contains a key).
        self.detail = detail


class GatewayUnavailable(GatewayError):
    """Network failure, timeout or a 5xx: the outcome of a write is unknown."""


class GatewayRejected(GatewayError):
    """Stripe answered with an error (bad key, bad request, idempotency clash...)."""


class CardDeclined(GatewayError):
    """The card was declined: ``code`` (e.g. card_declined) and ``decline_code`` (e.g. insufficient_funds)."""

    def __init__(self, message: str, *, code: str | None, decline_code: str | None,
                 payment_intent_id: str | None = None):
        super().__init__(message, code=code)
        self.decline_code = decline_code
        self.payment_intent_id = payment_intent_id


class InvalidWebhook(Exception):
    """A webhook whose signature, timestamp or body does not check out."""


def _translate(exc: Exception) -> GatewayError:
    """Map a stripe library error onto our small hierarchy."""
    if isinstance(exc, stripe.CardError):
        error = getattr(exc, "error", None)
        pi = getattr(error, "payment_intent", None) if error is not None else None
        pi_id = pi.get("id") if isinstance(pi, dict) else getattr(pi, "id", None)
        return CardDeclined(
            getattr(exc, "user_message", None) or "The card was declined.",
            code=getattr(exc, "code", None),
            decline_code=getattr(error, "decline_code", None) if error is not None else None,
            payment_intent_id=pi_id,
        )
    if isinstance(exc, stripe.APIConnectionError):
        return GatewayUnavailable("The payment provider could not be reached. Please try again in a few minutes.",
                                  detail=str(exc)[:300])
    if isinstance(exc, stripe.AuthenticationError):
        return GatewayRejected("Online payment is not configured correctly (the payment provider refused "
                               "the key). Please contact us.", code="authentication", detail=str(exc)[:300])
    if isinstance(exc, stripe.RateLimitError):
        return GatewayUnavailable("The payment provider is busy. Please try again in a minute.",
                                  code="rate_limit", detail=str(exc)[:300])
    if isinstance(exc, stripe.StripeError):
        status = getattr(exc, "http_status", None) or 0
        kind = GatewayUnavailable if status >= 500 or status == 0 else GatewayRejected
        return kind("The payment provider could not process the request. Please try again later.",
                    code=getattr(exc, "code", None), detail=str(exc)[:300])
    return GatewayUnavailable("The payment provider could not be reached. Please try again in a few minutes.",
                              detail=repr(exc)[:300])


def _plain(obj) -> dict:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


class StripeGateway:
    """A Stripe client for one secret key. ``api_base`` points it at a stand-in (tests)."""

    def __init__(self, secret_key: str, api_base: str | None = None, timeout: int = 20):
        options: dict = {"http_client": stripe.RequestsClient(timeout=timeout)}
        if api_base:
            # Against a stand-in, retries would hide failures the code must handle.
            options.update(base_addresses={"api": api_base}, max_network_retries=0)
        else:
            # Real Stripe: the library retries safely with idempotency keys.
            options.update(max_network_retries=2)
        self._client = stripe.StripeClient(secret_key, **options)

    def _call(self, fn, *args, **kwargs) -> dict:
        try:
            return _plain(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - everything Stripe can answer becomes a GatewayError
            error = _translate(exc)
            log.warning("stripe call failed: %s (%s)", exc.__class__.__name__, error.detail or error.message)
            raise error from exc

    # --- customers -----------------------------------------------------------------------

    def create_customer(self, *, email: str, name: str, our_id: int, idempotency_key: str) -> dict:
        """Create the Stripe customer for one of ours (idempotent on ``idempotency_key``)."""
        return self._call(self._client.v1.customers.create,
                          params={"email": email, "name": name, "metadata": {"customer_id": str(our_id)}},
                          options={"idempotency_key": idempotency_key})

    # --- checkout ------------------------------------------------------------------------

    def create_payment_session(self, *, amount_minor: int, currency: str, description: str,
                               invoice_id: int, customer: str | None, customer_email: str | None,
                               success_url: str, cancel_url: str, idempotency_key: str) -> dict:
        """A Checkout Session (mode=payment) for exactly ``amount_minor`` of ``currency``."""
        params: dict = {
            "mode": "payment",
            "line_items": [{
                "quantity": 1,
                "price_data": {
                    "currency": currency.lower(),
                    "unit_amount": int(amount_minor),
                    "product_data": {"name": description[:250]},
                },
            }],
            "client_reference_id": str(invoice_id),
            "metadata": {"invoice_id": str(invoice_id)},
            "payment_intent_data": {"metadata": {"invoice_id": str(invoice_id)}},
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        if customer:
            params["customer"] = customer
        elif customer_email:
            params["customer_email"] = customer_email
        return self._call(self._client.v1.checkout.sessions.create, params=params,
                          options={"idempotency_key": idempotency_key})

    def create_setup_session(self, *, customer: str, currency: str, our_customer_id: int,
                             success_url: str, cancel_url: str, idempotency_key: str) -> dict:
        """A Checkout Session (mode=setup) that saves a card on ``customer`` for later charges."""
        return self._call(self._client.v1.checkout.sessions.create, params={
            "mode": "setup",
            "currency": currency.lower(),
            "customer": customer,
            "client_reference_id": f"customer-{our_customer_id}",
            "metadata": {"customer_id": str(our_customer_id), "purpose": "save_card"},
            "success_url": success_url,
            "cancel_url": cancel_url,
        }, options={"idempotency_key": idempotency_key})

    def retrieve_session(self, session_id: str, expand: list[str] | None = None) -> dict:
        """A Checkout Session, with ``expand`` paths (e.g. ``setup_intent.payment_method``)."""
        params = {"expand": expand} if expand else None
        return self._call(self._client.v1.checkout.sessions.retrieve, session_id, params=params)

    # --- off-session charges -------------------------------------------------------------

    def charge_saved_card(self, *, amount_minor: int, currency: str, customer: str, payment_method: str,
                          invoice_id: int, description: str, idempotency_key: str) -> dict:
        """Charge a saved card without the customer present. Raises CardDeclined on a decline."""
        return self._call(self._client.v1.payment_intents.create, params={
            "amount": int(amount_minor),
            "currency": currency.lower(),
            "customer": customer,
            "payment_method": payment_method,
            "off_session": True,
            "confirm": True,
            "description": description[:250],
            "metadata": {"invoice_id": str(invoice_id)},
        }, options={"idempotency_key": idempotency_key})

    # --- webhooks ------------------------------------------------------------------------

    @staticmethod
    def verify_webhook(payload: bytes, signature_header: str | None, webhook_secret: str,
                       tolerance: int = 300) -> dict:
        """Check the ``Stripe-Signature`` over the RAW body (and its age); return the event as a dict."""
        if not signature_header:
            raise InvalidWebhook("missing Stripe-Signature header")
        try:
            event = stripe.Webhook.construct_event(payload, signature_header, webhook_secret,
                                                   tolerance=tolerance)
        except stripe.SignatureVerificationError as exc:
            raise InvalidWebhook(f"signature check failed: {exc.user_message or exc}") from exc
        except ValueError as exc:  # body is not JSON
            raise InvalidWebhook("body is not a JSON event") from exc
        return _plain(event)
