"""The small interface every coworking system (OfficeRnD Flex, Nexudus) implements.

Sync, manual connect, the sign-up hook and invoice export are written once, in
``spheremail/services/``, against :class:`Provider`; each module in this package
only translates that interface into one vendor's HTTP API.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable, Iterator, Protocol


@dataclass(frozen=True)
class Location:
    """A place members belong to: an OfficeRnD location or a Nexudus business."""

    id: str
    name: str
    raw: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Member:
    """A member (OfficeRnD) or coworker (Nexudus) as we need it."""

    id: str
    name: str
    email: str
    company: str | None = None
    active: bool = True
    raw: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class NewMember:
    """What we send to create a member from one of our customers."""

    name: str
    email: str
    location_id: str
    phone: str | None = None
    company: str | None = None
    start_date: dt.date | None = None


@dataclass(frozen=True)
class InvoiceExport:
    """One local invoice, exported as one fee (OfficeRnD) or charge (Nexudus)."""

    invoice_number: str  # our reference; goes into name/description/PurchaseOrder
    member_id: str
    location_id: str
    total: Decimal  # invoice total in major units, exact
    currency: str
    issue_date: dt.date
    description: str


class ProviderError(Exception):
    """An answer (or silence) from the other system that the caller must handle.

    ``kind`` is one of: ``auth`` (bad credentials), ``scope`` (missing permission),
    ``two_factor`` (Nexudus 2FA account), ``not_found`` (unknown slug/record),
    ``unreachable`` (connection refused, DNS, TLS), ``rate_limited`` (429/409 we
    could not wait out), ``invalid`` (400 validation), ``remote`` (5xx).
    ``message`` is safe to show an operator: it never contains a secret.
    """

    def __init__(self, kind: str, message: str, *, status: int | None = None,
                 retry_after: float | None = None, details: object = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.details = details


class OutcomeUnknown(ProviderError):
    """A write whose result we cannot know (timeout, dropped connection, 5xx after send).

    The remote object may or may not exist: never resend blindly; look it up by our
    reference first (``Provider.find_export``) or hand it to a person.
    """

    def __init__(self, message: str, **kw):
        super().__init__("unknown", message, **kw)


class TokenStore(Protocol):
    """Where a client keeps its tokens between calls and processes (encrypted by the caller)."""

    def load(self) -> dict | None: ...

    def save(self, token: dict) -> None: ...


class MemoryTokenStore:
    """A token store that lives as long as the object: for tests and one-off checks."""

    def __init__(self, token: dict | None = None):
        self.token = token

    def load(self) -> dict | None:
        return self.token

    def save(self, token: dict) -> None:
        self.token = token


class Provider(Protocol):
    """What the shared sync/export logic needs from a coworking system."""

    name: str  # "officernd" | "nexudus"
    supports_export_lookup: bool  # can find_export() search by our reference?

    def check_credentials(self) -> None:
        """Get a token (and make one cheap call); raise ProviderError with a clear kind."""

    def locations(self) -> list[Location]:
        """Every location (business) of the organisation."""

    def iter_members(self) -> Iterator[Member]:
        """Every member, read page by page at the vendor's largest page size."""

    def search_members(self, query: str, limit: int = 20) -> list[Member]:
        """Members whose name or email matches ``query``, for the manual-connect search."""

    def find_member_by_email(self, email: str) -> Member | None:
        """The member whose email equals ``email`` ignoring case, or None."""

    def create_member(self, new: NewMember) -> Member:
        """Create a member; raise ProviderError(kind='invalid') when refused (e.g. duplicate email)."""

    def export_invoice(self, export: InvoiceExport) -> str:
        """Create the fee/charge and return its remote id; OutcomeUnknown when the result is unknown."""

    def find_export(self, invoice_number: str) -> str | None:
        """Remote id of an earlier export of this invoice, or None; only if supports_export_lookup."""


Sleeper = Callable[[float], None]
