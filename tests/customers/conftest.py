"""Fixtures for the customer and recipient tests: logins by role, rendered templates, query counts."""
from __future__ import annotations

import pytest
from flask import template_rendered
from flask_sqlalchemy.record_queries import get_recorded_queries


@pytest.fixture
def templates(app):
    """Names of the templates rendered during the test, in order."""
    names: list[str] = []

    def record(sender, template, context, **extra):
        names.append(template.name)

    template_rendered.connect(record, app)
    yield names
    template_rendered.disconnect(record, app)


@pytest.fixture
def query_counter(app):
    """``with query_counter() as q: ...`` then ``q.count``: SQL statements issued inside."""
    from contextlib import contextmanager

    class Counter:
        count = 0

    @contextmanager
    def counting():
        counter = Counter()
        before = len(get_recorded_queries())
        yield counter
        counter.count = len(get_recorded_queries()) - before

    return counting


@pytest.fixture
def logged_in_as(make_staff, auth):
    """Log the client in as a new staff user of ``role``; returns the user."""

    def login(role):
        user = make_staff(role)
        response = auth.login(user.email)
        assert response.status_code == 302
        return user

    return login


@pytest.fixture
def customer(make_customer):
    return make_customer("Grace", "Hopper", email="grace@example.test", company="Compiler Works")
