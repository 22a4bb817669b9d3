"""Configuration, read only from the environment (and an optional ``.env`` file)."""
from __future__ import annotations

import os
import secrets
from pathlib import Path


def _bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _secret_key(instance_path: Path) -> str:
    """SECRET_KEY from the environment, else one generated once into the instance folder."""
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    key_file = instance_path / "secret_key"
    if not key_file.exists():
        instance_path.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(48))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


def _encryption_keys(instance_path: Path) -> list[str]:
    """Fernet keys for secrets at rest: first one encrypts, all decrypt (rotation).

    From SPHEREMAIL_ENCRYPTION_KEYS (comma-separated); else one generated once into
    the instance folder, so a single box works out of the box.
    """
    raw = os.environ.get("SPHEREMAIL_ENCRYPTION_KEYS", "").strip()
    if raw:
        return [k.strip() for k in raw.split(",") if k.strip()]
    from cryptography.fernet import Fernet

    key_file = instance_path / "encryption_key"
    if not key_file.exists():
        instance_path.mkdir(parents=True, exist_ok=True)
        key_file.write_text(Fernet.generate_key().decode())
        key_file.chmod(0o600)
    return [key_file.read_text().strip()]


def _database_url(instance_path: Path) -> str:
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        instance_path.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{instance_path / 'spheremail.sqlite3'}"
    # Accept the common short forms and use the psycopg 3 driver we ship.
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def load_config(instance_path: str) -> dict:
    """Build the Flask config dict from the environment."""
    path = Path(instance_path)
    return {
        "SECRET_KEY": _secret_key(path),
        "SQLALCHEMY_DATABASE_URI": _database_url(path),
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
        "SQLALCHEMY_RECORD_QUERIES": _bool("SQLALCHEMY_RECORD_QUERIES"),
        "ENCRYPTION_KEYS": _encryption_keys(path),
        # htmx requests carry the token in a header; forms in a long-open tab must still post.
        "WTF_CSRF_TIME_LIMIT": None,
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": _bool("SESSION_COOKIE_SECURE"),
        "REMEMBER_COOKIE_HTTPONLY": True,
        "REMEMBER_COOKIE_SAMESITE": "Lax",
        "REMEMBER_COOKIE_SECURE": _bool("SESSION_COOKIE_SECURE"),
        "BASE_URL": os.environ.get("SPHEREMAIL_BASE_URL", "http://127.0.0.1:5000"),
        "MAIL_SERVER": os.environ.get("SMTP_HOST", "localhost"),
        "MAIL_PORT": int(os.environ.get("SMTP_PORT", "25")),
        "MAIL_USERNAME": os.environ.get("SMTP_USERNAME") or None,
        "MAIL_PASSWORD": os.environ.get("SMTP_PASSWORD") or None,
        "MAIL_USE_TLS": _bool("SMTP_STARTTLS"),
        "MAIL_SENDER": os.environ.get("SMTP_FROM", "SphereMail <no-reply@localhost>"),
        "MAIL_SUPPRESS": _bool("SMTP_SUPPRESS"),
        "SCHEDULER_ENABLED": _bool("SPHEREMAIL_SCHEDULER", True),
        "PASSWORD_RESET_MAX_AGE": int(os.environ.get("PASSWORD_RESET_MAX_AGE", str(60 * 60))),
        "LOGIN_MAX_FAILURES": int(os.environ.get("LOGIN_MAX_FAILURES", "5")),
        "LOGIN_LOCK_SECONDS": int(os.environ.get("LOGIN_LOCK_SECONDS", str(15 * 60))),
        "LOGIN_MAX_FAILURES_PER_ADDRESS": int(os.environ.get("LOGIN_MAX_FAILURES_PER_ADDRESS", "20")),
        "OFFICERND_TOKEN_URL": os.environ.get("OFFICERND_TOKEN_URL", "https://identity.officernd.com/oauth/token"),
        "OFFICERND_API_BASE": os.environ.get("OFFICERND_API_BASE", "https://app.officernd.com/api/v2"),
        "NEXUDUS_API_BASE": os.environ.get("NEXUDUS_API_BASE", "https://spaces.nexudus.com"),
        "STRIPE_API_BASE": os.environ.get("STRIPE_API_BASE") or None,
        # Threads that send member creates during auto-connect (HTTP only; the DB stays on one thread).
        "MEMBER_SYNC_WORKERS": int(os.environ.get("MEMBER_SYNC_WORKERS", "6")),
    }
