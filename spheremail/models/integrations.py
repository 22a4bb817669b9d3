"""Connections to coworking systems (OfficeRnD Flex, Nexudus), member links, sync runs and
the invoice-export outbox. Provider-agnostic: one row per provider, one code path.

Secrets (client secret, Nexudus password or refresh token, access tokens) live only in
the ``*_encrypted`` columns, encrypted with :mod:`spheremail.crypto`; nothing else holds them.
"""
from __future__ import annotations

import datetime as dt
import enum
import json

from sqlalchemy import ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from spheremail.extensions import db
from spheremail.models.base import utcnow


class ConnectionState(str, enum.Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"  # credentials checked, location not chosen yet
    CONNECTED = "connected"
    ERROR = "error"  # was connected; the system refused us later (revoked, scope removed)


class IntegrationConnection(db.Model):
    """The connection to one coworking system. One row per provider name.

    ``enabled`` is the operator's toggle; the integration works (sync, sign-up hook,
    export) only when it is enabled AND connected (:attr:`is_active`). Only one
    provider may be active at a time: :meth:`active_other_than` is the check.
    """

    __tablename__ = "integration_connections"

    id: Mapped[int] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(String(20), unique=True)
    enabled: Mapped[bool] = mapped_column(default=False)
    state: Mapped[str] = mapped_column(String(20), default=ConnectionState.DISCONNECTED.value)
    # JSON of the credentials the provider needs, encrypted (spheremail.crypto).
    credentials_encrypted: Mapped[str | None] = mapped_column(Text)
    # The OAuth token cache, encrypted: shared by every process so the token endpoint
    # (about 5 requests a minute at OfficeRnD) is not asked once per process.
    token_encrypted: Mapped[str | None] = mapped_column(Text)
    # Non-secret view of the account, shown on the settings page (e.g. slug, user email).
    account_label: Mapped[str | None] = mapped_column(String(200))
    # The locations read when the credentials were checked, offered in the popup's step 2.
    locations_json: Mapped[str | None] = mapped_column(Text)
    location_id: Mapped[str | None] = mapped_column(String(64))
    location_name: Mapped[str | None] = mapped_column(String(200))
    invoice_export: Mapped[bool] = mapped_column(default=False)
    fee_plan_id: Mapped[str | None] = mapped_column(String(64))
    # Invoices created before this instant are never exported (they stay payable here).
    # Set when first enabled while connected; kept when the toggle goes off and on again
    # (moving it would strand pending invoices); cleared on disconnect.
    enabled_at: Mapped[dt.datetime | None]
    connected_at: Mapped[dt.datetime | None]
    disconnected_at: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    last_sync_at: Mapped[dt.datetime | None]
    last_sync_summary: Mapped[str | None] = mapped_column(Text)
    last_export_at: Mapped[dt.datetime | None]
    last_export_summary: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @property
    def is_connected(self) -> bool:
        return self.state == ConnectionState.CONNECTED.value

    @property
    def is_active(self) -> bool:
        """Sync, the sign-up hook and export run only for an enabled, connected integration."""
        return bool(self.enabled and self.is_connected)

    @property
    def exports_invoices(self) -> bool:
        return bool(self.is_active and self.invoice_export and self.enabled_at)

    def credentials(self) -> dict:
        """The decrypted credentials (empty when none are stored). Never log the result."""
        from spheremail.crypto import decrypt

        if not self.credentials_encrypted:
            return {}
        return json.loads(decrypt(self.credentials_encrypted))

    def set_credentials(self, values: dict | None) -> None:
        """Store ``values`` encrypted (None forgets them, and the token with them)."""
        from spheremail.crypto import encrypt

        self.credentials_encrypted = encrypt(json.dumps(values)) if values else None
        if not values:
            self.token_encrypted = None

    def locations(self) -> list[dict]:
        """[{"id", "name"}] read when the credentials were checked."""
        return json.loads(self.locations_json) if self.locations_json else []

    def set_locations(self, locations) -> None:
        self.locations_json = json.dumps([{"id": loc.id, "name": loc.name} for loc in locations])

    @classmethod
    def get(cls, provider: str) -> "IntegrationConnection | None":
        return db.session.execute(db.select(cls).filter_by(provider=provider)).scalar_one_or_none()

    @classmethod
    def get_or_create(cls, provider: str) -> "IntegrationConnection":
        """The row for ``provider``, added to the session when new (the caller commits)."""
        row = cls.get(provider)
        if row is None:
            row = cls(provider=provider, enabled=False, state=ConnectionState.DISCONNECTED.value)
            db.session.add(row)
        return row

    @classmethod
    def active(cls) -> "IntegrationConnection | None":
        """The one enabled, connected integration, if any."""
        return db.session.execute(
            db.select(cls).filter_by(enabled=True, state=ConnectionState.CONNECTED.value)
            .order_by(cls.id).limit(1)
        ).scalar_one_or_none()

    @classmethod
    def active_other_than(cls, provider: str) -> "IntegrationConnection | None":
        """Another provider that is connected, being connected, or waiting for a reconnect
        (only one may be at a time: switching disconnects it first)."""
        return db.session.execute(
            db.select(cls).where(cls.provider != provider)
            .where(cls.state.in_([ConnectionState.CONNECTED.value, ConnectionState.CONNECTING.value,
                                  ConnectionState.ERROR.value]))
            .limit(1)
        ).scalar_one_or_none()


class LinkSource(str, enum.Enum):
    AUTO = "auto"  # matched by email
    MANUAL = "manual"  # chosen by staff on the customer's page; kept by auto-connect
    CREATED = "created"  # we created the member in the other system


class MemberLink(db.Model):
    """A customer connected to a member of a coworking system.

    Disconnecting never deletes: the link is marked inactive (with ``unlinked_at``),
    so the history stays. At most one active link per customer and provider, and one
    remote member is actively linked to at most one customer (partial unique indexes,
    valid on SQLite and PostgreSQL).
    """

    __tablename__ = "member_links"
    __table_args__ = (
        Index("uq_member_links_active_customer", "customer_id", "provider", unique=True,
              sqlite_where=text("active"), postgresql_where=text("active")),
        Index("uq_member_links_active_member", "provider", "member_id", unique=True,
              sqlite_where=text("active"), postgresql_where=text("active")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    provider: Mapped[str] = mapped_column(String(20))
    member_id: Mapped[str] = mapped_column(String(64))
    member_name: Mapped[str | None] = mapped_column(String(200))
    member_email: Mapped[str | None] = mapped_column(String(254))
    source: Mapped[str] = mapped_column(String(10), default=LinkSource.AUTO.value)
    created_in_remote_at: Mapped[dt.datetime | None] = mapped_column(index=True)
    active: Mapped[bool] = mapped_column(default=True)
    linked_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    linked_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    unlinked_at: Mapped[dt.datetime | None]

    customer: Mapped["Customer"] = relationship()  # noqa: F821

    def deactivate(self, at: dt.datetime | None = None) -> None:
        """End this link, keeping it as history."""
        self.active = False
        self.unlinked_at = at or utcnow()

    @classmethod
    def active_for(cls, customer_id: int, provider: str) -> "MemberLink | None":
        return db.session.execute(
            db.select(cls).filter_by(customer_id=customer_id, provider=provider, active=True)
        ).scalar_one_or_none()


class SyncRun(db.Model):
    """One auto-connect run (all customers, or one new customer), with live progress.

    Written by the background worker after each customer; the settings page polls it.
    ``errors_json`` is a list of {"customer_id", "name", "reason"}.
    """

    __tablename__ = "sync_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(String(20), index=True)
    kind: Mapped[str] = mapped_column(String(10), default="all")  # all | customer
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    status: Mapped[str] = mapped_column(String(12), default="pending")  # pending|running|done|failed
    total: Mapped[int] = mapped_column(default=0)
    done: Mapped[int] = mapped_column(default=0)
    matched: Mapped[int] = mapped_column(default=0)
    created: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    message: Mapped[str | None] = mapped_column(Text)  # why the whole run stopped, if it did
    errors_json: Mapped[str | None] = mapped_column(Text)
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    heartbeat_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]

    @property
    def is_finished(self) -> bool:
        return self.status in ("done", "failed")

    @property
    def percent(self) -> int:
        return int(100 * self.done / self.total) if self.total else (100 if self.is_finished else 0)

    def errors(self) -> list[dict]:
        return json.loads(self.errors_json) if self.errors_json else []

    def add_error(self, customer_id: int | None, name: str, reason: str) -> None:
        errors = self.errors()
        errors.append({"customer_id": customer_id, "name": name, "reason": reason[:500]})
        self.errors_json = json.dumps(errors[-500:])  # bounded: the summary counts them all

    def summary(self) -> str:
        text_ = f"{self.matched} matched, {self.created} created, {self.failed} failed"
        return f"{text_} ({self.message})" if self.message else text_


class ExportState(str, enum.Enum):
    CLAIMED = "claimed"  # reserved by a run; nothing sent yet
    SENDING = "sending"  # the remote call may have started: outcome unknown if we crash now
    DONE = "done"  # the fee/charge exists remotely and the invoice is closed here
    UNKNOWN = "unknown"  # may or may not exist remotely: a person decides
    FAILED = "failed"  # known NOT created (refused, rate limited, unreachable): retried next run


class InvoiceExport(db.Model):
    """The outbox row of one invoice's export: claimed and committed before the remote
    call, so an invoice is never sent twice whatever crashes in between.
    """

    __tablename__ = "invoice_exports"

    id: Mapped[int] = mapped_column(primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"), unique=True)
    provider: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(10), default=ExportState.CLAIMED.value, index=True)
    member_id: Mapped[str | None] = mapped_column(String(64))
    remote_id: Mapped[str | None] = mapped_column(String(120))
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    owner: Mapped[str | None] = mapped_column(String(120))  # the run that holds the claim
    claimed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sending_at: Mapped[dt.datetime | None]
    done_at: Mapped[dt.datetime | None]
    resolved_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    invoice: Mapped["Invoice"] = relationship()  # noqa: F821
