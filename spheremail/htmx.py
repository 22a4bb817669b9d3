"""One place that decides between a full page and an HTMX partial.

htmx-flask's own ``make_response`` rejects valid swap names (``beforebegin``,
``afterbegin``), so views use these helpers instead.
"""
from __future__ import annotations

import json

from flask import make_response, render_template, request


def wants_partial() -> bool:
    """A partial only for a real HTMX request that is neither boosted nor a history restore."""
    hx = getattr(request, "htmx", None)
    if not hx:
        return False
    return not (hx.boosted or hx.history_restore_request)


def render(page: str, partial: str | None = None, **context):
    """Render ``partial`` for an HTMX request, else the full ``page`` (which includes it)."""
    template = partial if (partial and wants_partial()) else page
    response = make_response(render_template(template, **context))
    response.headers.add("Vary", "HX-Request")
    return response


def hx_trigger(response, events: str | dict):
    """Ask the page to fire ``events`` (a name or a {name: detail} dict) after the swap."""
    value = events if isinstance(events, str) else json.dumps(events)
    response.headers["HX-Trigger"] = value
    return response


def hx_redirect(url: str):
    """Full navigation: HX-Redirect for HTMX requests, a 303 otherwise."""
    from flask import redirect

    if request.headers.get("HX-Request"):
        response = make_response("", 204)
        response.headers["HX-Redirect"] = url
        return response
    return redirect(url, code=303)


def no_content(trigger: str | dict | None = None):
    """204 for a successful HTMX action, optionally firing a refresh event."""
    response = make_response("", 204)
    if trigger:
        hx_trigger(response, trigger)
    return response
