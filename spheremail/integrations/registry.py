"""Which coworking systems exist and how to build a client for a stored connection.

Adding a system = one :class:`ProviderSpec` here (its label, the credential fields of
the Connect popup, the popup template and a builder). Everything else (sync, manual
connect, sign-up hook, export, the settings page) is written once against
:class:`~spheremail.integrations.base.Provider`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

from flask import current_app
from sqlalchemy import update

from spheremail.extensions import db
from spheremail.integrations.base import MemoryTokenStore, Provider, TokenStore


@dataclass(frozen=True)
class CredentialField:
    """One input of the popup's first step."""

    name: str
    label: str
    secret: bool = False  # never echoed back, never logged
    max_length: int = 200
    pattern: str | None = None  # a regex the value must match (fullmatch)
    hint: str = ""
    input_type: str = "text"
    required: bool = True  # an optional field may be left empty (e.g. a two-factor code)
    autocomplete: str = "off"


@dataclass(frozen=True)
class ProviderSpec:
    """Everything the app needs to know about one coworking system."""

    name: str
    label: str
    fields: tuple[CredentialField, ...]
    credentials_template: str  # popup step 1
    location_template: str  # popup step 2
    location_label: str  # "location" (OfficeRnD) / "business" (Nexudus)
    fee_label: str  # "one-off fee" / "charge"
    needs_fee_plan: bool
    build: Callable[..., Provider] = field(repr=False)
    account_label: Callable[[dict], str] = field(default=lambda creds: "", repr=False)
    # Credential fields forgotten once the token flow succeeded: the stored (encrypted)
    # refresh token replaces them (Nexudus: the password and the two-factor code).
    drop_after_token: tuple[str, ...] = ()
    # Popup headlines per ProviderError kind that differ from the generic ones.
    error_headlines: dict = field(default_factory=dict, repr=False)

    def stored_credentials(self, creds: dict, token: dict | None) -> dict:
        """What to keep of ``creds`` (encrypted) after a successful check with ``token``."""
        if token and token.get("refresh_token") and self.drop_after_token:
            return {k: v for k, v in creds.items() if k not in self.drop_after_token and v}
        return {k: v for k, v in creds.items() if v}


class ConnectionTokenStore:
    """A TokenStore on the connection row, encrypted, shared by every process.

    ``save`` writes with its own short transaction on a separate connection so it never
    commits (or waits on) the caller's unit of work; the caller holds no write
    transaction during HTTP calls anyway.
    """

    def __init__(self, connection_id: int):
        self.connection_id = connection_id

    def load(self) -> dict | None:
        from spheremail.crypto import decrypt
        from spheremail.models import IntegrationConnection

        with db.engine.connect() as conn:
            value = conn.execute(
                db.select(IntegrationConnection.token_encrypted)
                .where(IntegrationConnection.id == self.connection_id)
            ).scalar_one_or_none()
        if not value:
            return None
        try:
            return json.loads(decrypt(value))
        except ValueError:
            return None  # key rotated away: fetch a new token

    def save(self, token: dict) -> None:
        from spheremail.crypto import encrypt
        from spheremail.models import IntegrationConnection

        with db.engine.begin() as conn:
            conn.execute(update(IntegrationConnection)
                         .where(IntegrationConnection.id == self.connection_id)
                         .values(token_encrypted=encrypt(json.dumps(token))))


class RefreshLease:
    """A cross-process lock around one token refresh, on the job lease table.

    A Nexudus refresh token dies when used, so two workers (or hosts) refreshing the same
    account at once would leave one of them holding a dead token: the whole refresh
    (re-load the store, call the token URL, save) runs under this lease. It uses its own
    short transactions on a separate connection, never the caller's unit of work.
    ``seconds`` bounds how long a dead holder blocks the others.
    """

    def __init__(self, name: str, *, seconds: int = 60, wait: float = 45, poll: float = 0.05):
        self.name = name[:80]
        self.seconds = seconds
        self.wait = wait
        self.poll = poll
        self.owner: str | None = None

    def _try(self, owner: str) -> bool:
        import datetime as dt

        from sqlalchemy import insert
        from sqlalchemy.exc import IntegrityError

        from spheremail.models import JobLease
        from spheremail.models.base import utcnow

        now = utcnow()
        with db.engine.begin() as conn:
            taken = conn.execute(
                update(JobLease).where(JobLease.name == self.name)
                .where((JobLease.expires_at < now) | (JobLease.owner == owner))
                .values(owner=owner, expires_at=now + dt.timedelta(seconds=self.seconds))
            ).rowcount
        if taken == 1:
            return True
        try:
            with db.engine.begin() as conn:
                conn.execute(insert(JobLease).values(
                    name=self.name, owner=owner, expires_at=now + dt.timedelta(seconds=self.seconds)))
            return True
        except IntegrityError:
            return False  # the row exists and someone else holds it

    def __enter__(self):
        import time
        import uuid

        from spheremail.integrations.base import ProviderError
        from spheremail.jobs import PROCESS_ID

        owner = f"{PROCESS_ID}:{uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + self.wait
        while not self._try(owner):
            if time.monotonic() >= deadline:
                raise ProviderError("rate_limited", "Another worker is renewing the sign-in right now; "
                                    "the rest continues on the next run.")
            time.sleep(self.poll)
        self.owner = owner
        return self

    def __exit__(self, *exc):
        import datetime as dt

        from spheremail.models import JobLease

        with db.engine.begin() as conn:
            conn.execute(update(JobLease).where(JobLease.name == self.name, JobLease.owner == self.owner)
                         .values(owner=None, expires_at=dt.datetime(1970, 1, 1)))
        self.owner = None
        return False


def _client_options() -> dict:
    """Extra client keyword arguments from config (tests shorten waits and timeouts)."""
    return dict(current_app.config.get("INTEGRATIONS_CLIENT_OPTIONS") or {})


def _build_officernd(creds: dict, *, token_store: TokenStore, fee_plan_id: str | None = None,
                     **options) -> Provider:
    from spheremail.integrations.officernd import OfficeRnDProvider

    return OfficeRnDProvider(
        creds["client_id"], creds["client_secret"], creds["slug"],
        token_url=current_app.config["OFFICERND_TOKEN_URL"],
        api_base=current_app.config["OFFICERND_API_BASE"],
        token_store=token_store, fee_plan_id=fee_plan_id, **options)


def _build_nexudus(creds: dict, *, token_store: TokenStore, fee_plan_id: str | None = None,
                   location_id: str | None = None, connection_id: int | None = None,
                   **options) -> Provider:
    from spheremail.integrations.nexudus import NexudusProvider

    # The password is only needed for the first token; after that the (encrypted)
    # refresh token in the store is enough, and the stored connection has no password.
    if connection_id is not None:
        # A stored connection is shared by every process: refreshes are serialised by
        # a database lease, and the client re-loads the store once it holds it.
        options.setdefault("refresh_lock", lambda: RefreshLease(f"nexudus-token-refresh:{connection_id}"))
    return NexudusProvider(creds.get("email"), creds.get("password"), totp=creds.get("totp") or None,
                           api_base=current_app.config["NEXUDUS_API_BASE"],
                           token_store=token_store, business_id=location_id, **options)


PROVIDERS: dict[str, ProviderSpec] = {
    "officernd": ProviderSpec(
        name="officernd", label="OfficeRnD Flex",
        fields=(
            CredentialField("client_id", "Client ID", max_length=200, pattern=r"[^\s]+",
                            hint="From OfficeRnD: Settings → Developer Tools → your application → View."),
            CredentialField("client_secret", "Client Secret", secret=True, max_length=500,
                            pattern=r"[^\s]+", input_type="password", autocomplete="new-password"),
            CredentialField("slug", "OfficeRnD Slug", max_length=100, pattern=r"[A-Za-z0-9][A-Za-z0-9_-]*",
                            hint="The part of your OfficeRnD Flex address that names your organization."),
        ),
        credentials_template="integrations/modals/officernd_credentials.html",
        location_template="integrations/modals/officernd_location.html",
        location_label="location", fee_label="one-off fee", needs_fee_plan=True,
        build=_build_officernd,
        account_label=lambda creds: f"organization “{creds.get('slug', '')}”",
    ),
    "nexudus": ProviderSpec(
        name="nexudus", label="Nexudus",
        fields=(
            CredentialField("email", "Email", max_length=254, pattern=r"[^@\s]+@[^@\s]+", input_type="email",
                            hint="A Nexudus user with API access."),
            CredentialField("password", "Password", secret=True, max_length=200, input_type="password",
                            autocomplete="new-password"),
            CredentialField("totp", "Two-factor code", secret=True, max_length=8, pattern=r"[0-9]{6,8}",
                            required=False, autocomplete="one-time-code",
                            hint="Only if this user signs in to Nexudus with two-factor authentication: "
                                 "the current code from the authenticator app."),
        ),
        credentials_template="integrations/modals/nexudus_credentials.html",
        location_template="integrations/modals/nexudus_location.html",
        location_label="business", fee_label="charge", needs_fee_plan=False,
        build=_build_nexudus,
        account_label=lambda creds: f"user {creds.get('email', '')}",
        drop_after_token=("password", "totp"),
        error_headlines={
            "auth": "Nexudus did not accept this email and password.",
            "scope": "This Nexudus user has no API access.",
            "two_factor": "This Nexudus user signs in with two-factor authentication.",
            "not_found": "Nexudus does not know this account.",
        },
    ),
}


def spec_for(name: str) -> ProviderSpec:
    """The spec of provider ``name``; KeyError when unknown."""
    return PROVIDERS[name]


def build_provider(name: str, credentials: dict, *, token_store: TokenStore | None = None,
                   fee_plan_id: str | None = None, location_id: str | None = None) -> Provider:
    """A client for ``credentials`` not (yet) stored anywhere: the popup's check."""
    spec = spec_for(name)
    kwargs = {"token_store": token_store or MemoryTokenStore(), "fee_plan_id": fee_plan_id}
    if name != "officernd":
        kwargs["location_id"] = location_id
    return spec.build(credentials, **kwargs, **_client_options())


def provider_for(connection, **overrides) -> Provider:
    """A client for a stored connection: decrypted credentials, config base URLs and a
    token cache on the connection row (encrypted)."""
    spec = spec_for(connection.provider)
    kwargs = {"token_store": ConnectionTokenStore(connection.id), "fee_plan_id": connection.fee_plan_id}
    if connection.provider != "officernd":
        kwargs["location_id"] = connection.location_id
        kwargs["connection_id"] = connection.id
    options = {**_client_options(), **overrides}
    return spec.build(connection.credentials(), **kwargs, **options)
