"""Shared fixtures: a fresh database per test (SQLite file, or PostgreSQL when DATABASE_URL
says so), the app and its client, logins, factories, and a real SMTP server (aiosmtpd)."""
from __future__ import annotations

import itertools
import os
import uuid

import pytest
from sqlalchemy import create_engine, text

from spheremail import create_app
from spheremail.extensions import db as _db

TEST_PASSWORD = "correct horse battery"

_pg_url = None


def _postgres_base_url() -> str | None:
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql")):
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://"):]
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        return url
    return None


@pytest.fixture(scope="session")
def database_url(tmp_path_factory):
    """For PostgreSQL: one database of our own for this test session, dropped at the end,
    so parallel runs on one server do not collide. For SQLite: None (a file per test)."""
    base = _postgres_base_url()
    if base is None:
        yield None
        return
    name = f"spheremail_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = base.rsplit("/", 1)[0] + "/" + name
    yield url
    with admin.connect() as conn:
        conn.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"
        ), {"n": name})
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


_pg_schema_ready: set[str] = set()


def make_test_app(database_url: str, **extra):
    """An app configured for tests on ``database_url`` (used by fixtures and multi-process tests)."""
    config = {
        "TESTING": True,
        "SECRET_KEY": "test-secret",
        "SQLALCHEMY_DATABASE_URI": database_url,
        "WTF_CSRF_ENABLED": False,
        "SCHEDULER_ENABLED": False,
        "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",
        "MAIL_SUPPRESS": True,
        "SERVER_NAME": None,
        "ENCRYPTION_KEYS": ["x3qzjY0y8Sw6b3Yb0m6jQb1C3s6fS0a3rVd0WmBZ9bE="],
        "SQLALCHEMY_RECORD_QUERIES": True,
    }
    config.update(extra)
    return create_app(config)


@pytest.fixture
def app_config():
    """Override in a test module to change the app's config."""
    return {}


@pytest.fixture
def app(database_url, tmp_path, app_config):
    """A fresh app and an empty database for each test."""
    url = database_url or f"sqlite:///{tmp_path / 'test.sqlite3'}"
    application = make_test_app(url, **app_config)
    with application.app_context():
        if database_url is None or database_url not in _pg_schema_ready:
            _db.create_all()
            if database_url:
                _pg_schema_ready.add(database_url)
        yield application
        _db.session.remove()
        if database_url:
            _empty_postgres(_db.engine)
        _db.engine.dispose()


def _empty_postgres(engine) -> None:
    """Empty every table and restart the id sequences. DELETE on small tables is much
    faster than TRUNCATE on PostgreSQL (which rewrites files), and this runs after every test."""
    with engine.begin() as conn:
        for table in reversed(_db.metadata.sorted_tables):
            conn.execute(table.delete())
        sequences = conn.execute(text(
            "SELECT sequence_schema, sequence_name FROM information_schema.sequences"
        )).all()
        for schema, name in sequences:
            conn.execute(text(f'ALTER SEQUENCE "{schema}"."{name}" RESTART'))


@pytest.fixture
def db(app):
    return _db


_counter = itertools.count(1)


@pytest.fixture
def make_staff(app):
    """Factory: a staff user of ``role`` with TEST_PASSWORD."""
    from spheremail.services.accounts import create_staff_user

    def factory(role="operator", email=None, password=TEST_PASSWORD):
        user = create_staff_user(email=email or f"{role}{next(_counter)}@example.test",
                                 role=role, password=password)
        _db.session.commit()
        return user

    return factory


@pytest.fixture
def make_customer(app):
    """Factory: an active customer with a login (TEST_PASSWORD) and the next free mailbox number."""
    from spheremail.models import Customer, User
    from spheremail.models.user import normalize_email

    def factory(first_name="Ada", last_name="Lovelace", email=None, company=None,
                mailbox_number=None, password=TEST_PASSWORD, status="active", **fields):
        n = next(_counter)
        user = User(email=normalize_email(email or f"customer{n}@example.test"), role="customer")
        if password:
            user.set_password(password)
        if mailbox_number is None:
            highest = _db.session.execute(_db.select(_db.func.max(Customer.mailbox_number))).scalar()
            mailbox_number = (highest or 100) + 1
        customer = Customer(user=user, first_name=first_name, last_name=last_name, company=company,
                            mailbox_number=mailbox_number, status=status, **fields)
        _db.session.add_all([user, customer])
        _db.session.commit()
        return customer

    return factory


class AuthActions:
    """Log a test client in and out through the real login form."""

    def __init__(self, client):
        self._client = client

    def login(self, email, password=TEST_PASSWORD):
        return self._client.post("/login", data={"email": email, "password": password})

    def logout(self):
        return self._client.post("/logout")


@pytest.fixture
def auth(client):
    return AuthActions(client)


@pytest.fixture
def operator(make_staff):
    return make_staff("operator")


@pytest.fixture
def logged_in_operator(operator, auth):
    auth.login(operator.email)
    return operator


@pytest.fixture
def smtp_server(app):
    """A real SMTP server (aiosmtpd) on a free port; the app sends to it. ``.messages`` holds
    the parsed emails received."""
    from email import message_from_bytes, policy

    from aiosmtpd.controller import Controller

    class Collector:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):
            self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
            return "250 OK"

    import socket

    with socket.socket() as probe:  # aiosmtpd cannot report a port it was given as 0
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    handler = Collector()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    app.config.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=port, MAIL_SUPPRESS=False)
    yield handler
    controller.stop()
