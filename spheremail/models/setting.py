"""Operator settings as key/value rows, read with typed defaults."""
from __future__ import annotations

import json

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from spheremail.extensions import db

# Every known setting and its default; a key not listed here is refused.
DEFAULTS: dict[str, object] = {
    "new_recipient_status": "paid",  # status given to recipients customers add themselves
    # Billing (spheremail.services.billing): money in minor units of billing_currency.
    "billing_currency": "EUR",
    "billing_recipient_price_minor": 0,
    "billing_payment_terms_days": 14,
    "billing_invoice_prefix": "INV-",
    "billing_email_invoices": False,
    "billing_gateway_publishable_key": "",
    "billing_gateway_secret_key_encrypted": "",  # spheremail.crypto.encrypt; never shown back
    "billing_gateway_webhook_secret_encrypted": "",  # idem
    # Payments (spheremail.services.payments): charge saved cards when invoices fall due.
    "payments_autocharge_saved_cards": False,
}


class Setting(db.Model):
    """One setting, stored as JSON text."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    value: Mapped[str] = mapped_column(Text)

    @classmethod
    def get(cls, key: str):
        """The stored value of ``key``, or its default."""
        if key not in DEFAULTS:
            raise KeyError(key)
        row = db.session.get(cls, key)
        return json.loads(row.value) if row else DEFAULTS[key]

    @classmethod
    def put(cls, key: str, value) -> None:
        """Store ``value`` for ``key`` (the caller commits)."""
        if key not in DEFAULTS:
            raise KeyError(key)
        row = db.session.get(cls, key)
        if row is None:
            row = cls(key=key, value=json.dumps(value))
            db.session.add(row)
        else:
            row.value = json.dumps(value)
