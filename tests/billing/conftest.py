"""Helpers for the billing tests: plans, recipients, fees, settings."""
from __future__ import annotations

import datetime as dt

import pytest

from spheremail.extensions import db


@pytest.fixture
def make_plan(app):
    from spheremail.models import Plan

    def factory(name="Standard", price_minor=2500, active=True, description=""):
        plan = Plan(name=name, monthly_price_minor=price_minor, is_active=active, description=description)
        db.session.add(plan)
        db.session.commit()
        return plan

    return factory


@pytest.fixture
def add_recipient(app):
    from spheremail.models import Recipient

    def factory(customer, status="paid", first_name="Bob", last_name="Jones"):
        r = Recipient(customer_id=customer.id, first_name=first_name, last_name=last_name, status=status)
        db.session.add(r)
        db.session.commit()
        return r

    return factory


@pytest.fixture
def add_fee(app):
    from spheremail.models import OneOffFee

    def factory(customer, amount_minor=1000, description="Scan", fee_date=dt.date(2026, 2, 20)):
        fee = OneOffFee(customer_id=customer.id, amount_minor=amount_minor, description=description,
                        fee_date=fee_date)
        db.session.add(fee)
        db.session.commit()
        return fee

    return factory


@pytest.fixture
def billing_settings(app):
    """Set billing settings directly: billing_settings(recipient_price_minor=500, ...)."""
    from spheremail.models import Setting

    def put(**values):
        for key, value in values.items():
            Setting.put(f"billing_{key}", value)
        db.session.commit()

    put(recipient_price_minor=500)
    return put


@pytest.fixture
def admin(make_staff):
    return make_staff("admin")


@pytest.fixture
def logged_in_admin(admin, auth):
    auth.login(admin.email)
    return admin
