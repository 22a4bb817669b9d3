"""Reading query-string values that every list page shares."""
from __future__ import annotations

from flask import request

MAX_PAGE = 100_000  # far past any real list; keeps the SQL offset inside the database's integers


def page_arg(name: str = "page") -> int:
    """The 1-based page number from the query string: junk, zero and negatives give 1, and a
    huge number is capped (the page is then simply empty)."""
    page = request.args.get(name, 1, type=int) or 1
    return min(max(1, page), MAX_PAGE)
