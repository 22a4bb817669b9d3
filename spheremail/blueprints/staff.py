"""Staff-wide pages: settings and the audit log."""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("staff", __name__, url_prefix="/staff")
