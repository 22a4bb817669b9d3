"""Nexudus on the app side, over real HTTP against the Nexudus stand-in: the Connect popup
(email and password, each error, 2FA), what is stored (the refresh token, never the password),
auto-connect at 1,000 coworkers a page, substring email matches, tokens expiring or dying in
the middle of a sync, refreshes serialised across app instances, 409 throttling, a charge
whose answer is lost, WasSuccessful false, and the Marketplace "+" in every staff view.

The shared scenarios (sync, manual connect, sign-ups, export slots, crashes, CLI) run for
Nexudus too, through ``provider_env`` in the other modules. The stand-in keeps its published
rate limits on, on the same fake clock the client paces itself by: a 409 in these tests
comes from an injected fault or from us going too fast, never from the machine being slow.
"""
from __future__ import annotations

import datetime as dt
import json
import socket
import threading

import pytest

from spheremail.crypto import decrypt
from spheremail.extensions import db
from spheremail.models import IntegrationConnection, Invoice, InvoiceExport, MemberLink, SyncRun
from spheremail.models.base import utcnow
from spheremail.services.invoice_export import export_pending
from spheremail.services.member_sync import start_sync, wait_for_background
from tests.integrations.conftest import CHARGES, NEXUDUS_EMAIL, NEXUDUS_PASSWORD
from tests.integrations.test_invoice_export import make_invoice

HX = {"HX-Request": "true"}
BASE = "/business-settings/integrations"
COWORKERS = "/api/spaces/coworkers"


@pytest.fixture
def env(nexudus_env):
    return nexudus_env


def _enable(client):
    resp = client.post(f"{BASE}/nexudus/enabled", data={"enabled": "on"}, headers=HX)
    assert resp.status_code == 204


def _stored_token(conn_id: int) -> dict:
    db.session.expire_all()
    return json.loads(decrypt(db.session.get(IntegrationConnection, conn_id).token_encrypted))


# ------------------------------------------------------------------------- the popup
def test_popup_connects_keeps_the_token_not_the_password_and_auto_connects(app, client, logged_in_operator,
                                                                          env, make_customer):
    matched = make_customer(first_name="Mia", last_name="Match", email="mia@example.test")
    missing = make_customer(first_name="Nils", last_name="New", email="nils@example.test")
    env.add_member("Mia Match", "MIA@Example.TEST")
    _enable(client)

    form = client.get(f"{BASE}/nexudus/connect", headers=HX).get_data(as_text=True)
    assert 'name="email"' in form and 'name="password"' in form and 'type="password"' in form
    assert 'name="totp"' in form and "Two-factor code (optional)" in form

    resp = client.post(f"{BASE}/nexudus/connect", data={"email": NEXUDUS_EMAIL, "password": NEXUDUS_PASSWORD},
                       headers=HX)
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200 and 'data-step="location"' in body
    assert "Amsterdam Central" in body and "Rotterdam Port" in body and "Business" in body
    assert NEXUDUS_PASSWORD not in body
    conn = IntegrationConnection.get("nexudus")
    assert conn.state == "connecting"
    assert conn.credentials() == {"email": NEXUDUS_EMAIL}  # the password is gone
    token = _stored_token(conn.id)
    assert token["refresh_token"] in env.standin.refresh_tokens
    assert NEXUDUS_PASSWORD not in json.dumps(token)
    assert env.standin.count("POST", "/api/token") == 1

    body = client.post(f"{BASE}/nexudus/connect/location", data={"location_id": "999"},
                       headers=HX).get_data(as_text=True)
    assert "Choose a business" in body
    resp = client.post(f"{BASE}/nexudus/connect/location",
                       data={"location_id": env.location_id, "invoice_export": "on"}, headers=HX)
    assert resp.status_code == 204
    assert wait_for_background(30)
    db.session.expire_all()
    conn = IntegrationConnection.get("nexudus")
    assert conn.is_active and conn.invoice_export and conn.location_name == "Amsterdam Central"
    assert env.standin.count("POST", "/api/token") == 1  # the saved token is reused

    run = SyncRun.query.filter_by(provider="nexudus", kind="all").one()
    assert (run.status, run.matched, run.created, run.failed) == ("done", 1, 1, 0)
    assert MemberLink.active_for(matched.id, "nexudus").source == "auto"
    link = MemberLink.active_for(missing.id, "nexudus")
    created = env.standin.coworkers[int(link.member_id)]
    business = env.extras["business"]
    assert created["FullName"] == "Nils New" and created["Email"] == "nils@example.test"
    assert created["CountryId"] == business["CountryId"]
    assert created["SimpleTimeZoneId"] == business["SimpleTimeZoneId"]
    assert created["InvoicingBusinessId"] == business["Id"] and created["CreateUser"] is False

    page = client.get(f"{BASE}/systems").get_data(as_text=True)
    assert "user ops@space.test" in page and "Nils New" in page and "1 matched, 1 created, 0 failed" in page
    assert NEXUDUS_PASSWORD not in page
    from spheremail.models import AuditEvent

    assert all(NEXUDUS_PASSWORD not in (e.summary or "") for e in AuditEvent.query.all())


@pytest.mark.parametrize("case, headline, kind", [
    ("wrong_password", "Nexudus did not accept this email and password.", "auth"),
    ("no_api_access", "This Nexudus user has no API access.", "scope"),
    ("two_factor", "This Nexudus user signs in with two-factor authentication.", "two_factor"),
    ("must_reset", "Nexudus did not accept this email and password.", "auth"),
    ("unreachable", "Nexudus cannot be reached.", "unreachable"),
])
def test_each_popup_error_has_its_own_message_and_nothing_is_saved(app, client, logged_in_operator, env,
                                                                   case, headline, kind):
    _enable(client)
    data = {"email": NEXUDUS_EMAIL, "password": NEXUDUS_PASSWORD}
    if case == "wrong_password":
        data["password"] = "not-the-password"
    elif case == "no_api_access":
        env.standin.add_user("frontdesk@space.test", "desk-password-1", api_access=False)
        data = {"email": "frontdesk@space.test", "password": "desk-password-1"}
    elif case == "two_factor":
        env.standin.add_user("2fa@space.test", "twofa-password-1", two_factor=True, totp="654321")
        data = {"email": "2fa@space.test", "password": "twofa-password-1"}
    elif case == "must_reset":
        env.standin.add_user("reset@space.test", "reset-password-1", must_reset=True)
        data = {"email": "reset@space.test", "password": "reset-password-1"}
    elif case == "unreachable":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        app.config["NEXUDUS_API_BASE"] = f"http://127.0.0.1:{port}"
    resp = client.post(f"{BASE}/nexudus/connect", data=data, headers=HX)
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200 and headline in body and "Nothing was saved" in body
    assert f'data-error-kind="{kind}"' in body
    assert data["password"] not in body and f'value="{data["email"]}"' in body
    detail = {"wrong_password": "incorrect", "no_api_access": "API access",
              "two_factor": "code from the authenticator app", "must_reset": "must_reset_password",
              "unreachable": "Could not reach Nexudus"}[case]
    assert detail in body
    conn = IntegrationConnection.get("nexudus")
    assert conn.credentials_encrypted is None and conn.token_encrypted is None
    assert conn.state == "disconnected" and conn.locations_json is None


def test_two_factor_user_connects_with_the_code(client, logged_in_operator, env):
    env.standin.add_user("2fa@space.test", "twofa-password-1", two_factor=True, totp="654321")
    _enable(client)
    data = {"email": "2fa@space.test", "password": "twofa-password-1", "totp": "111111"}
    body = client.post(f"{BASE}/nexudus/connect", data=data, headers=HX).get_data(as_text=True)
    assert "code is incorrect" in body and IntegrationConnection.get("nexudus").credentials_encrypted is None
    data["totp"] = "654321"
    body = client.post(f"{BASE}/nexudus/connect", data=data, headers=HX).get_data(as_text=True)
    assert 'data-step="location"' in body
    assert IntegrationConnection.get("nexudus").credentials() == {"email": "2fa@space.test"}


@pytest.mark.parametrize("field, value, message", [
    ("email", "", "Enter the Email"),
    ("password", "", "Enter the Password"),
    ("email", "not-an-email", "does not look like a valid Email"),
    ("email", "<script>alert(1)</script>", "does not look like a valid Email"),
    ("email", "a" * 250 + "@x.test", "at most 254 characters"),
    ("password", "p" * 201, "at most 200 characters"),
    ("totp", "12ab56", "does not look like a valid Two-factor code"),
    ("totp", "123456789", "at most 8 characters"),
])
def test_bad_popup_input_is_refused_without_calling_nexudus(client, logged_in_operator, env, field, value,
                                                            message):
    _enable(client)
    data = {"email": NEXUDUS_EMAIL, "password": NEXUDUS_PASSWORD, field: value}
    resp = client.post(f"{BASE}/nexudus/connect", data=data, headers=HX)
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200 and message in body and "<script>alert" not in body
    assert env.standin.api_requests == 0
    assert IntegrationConnection.get("nexudus").credentials_encrypted is None


# -------------------------------------------------------------------------- sync
def test_coworkers_are_read_1000_a_page_and_never_duplicated(app, env, make_customer):
    env.standin.seed_coworkers(1500, email_pattern="member{i}@example.test")
    ann = make_customer(first_name="Ann", last_name="Paged", email="member1450@example.test")
    bob = make_customer(first_name="Bob", last_name="Missing", email="bob@example.test")
    env.connect()
    env.standin.reset_counters()

    run = start_sync("nexudus", background=False)

    assert (run.status, run.matched, run.created) == ("done", 1, 1)
    assert env.standin.count("GET", COWORKERS) == 2  # 1,500 coworkers: two pages of 1,000
    assert MemberLink.active_for(ann.id, "nexudus").member_email == "member1450@example.test"
    assert MemberLink.active_for(bob.id, "nexudus").source == "created"
    again = start_sync("nexudus", background=False)
    assert (again.matched, again.created) == (2, 0)
    assert env.standin.count("POST", COWORKERS) == 1


def test_substring_email_match_is_not_linked(app, env):
    from spheremail.services.customers import create_customer

    joann = env.add_member("Joann Sample", "joann@example.test")
    env.connect()
    # The sign-up hook asks Nexudus by email; Coworker_Email matches "ann@" inside "joann@".
    ann = create_customer("Ann", "Exact", "ann@example.test", signed_up_via="portal")
    db.session.commit()
    assert wait_for_background(30)
    assert env.standin.count("GET", COWORKERS) >= 1
    link = MemberLink.active_for(ann.id, "nexudus")
    assert link.member_id != joann["id"] and link.source == "created" and link.member_email == "ann@example.test"
    assert sorted(m["email"] for m in env.remote_members()) == ["ann@example.test", "joann@example.test"]
    # And the full sync keeps it that way.
    run = start_sync("nexudus", background=False)
    assert (run.matched, run.created) == (1, 0)
    assert MemberLink.active_for(ann.id, "nexudus").member_id == link.member_id


def _after_coworker_created(env, monkeypatch, n, action):
    """Run ``action`` in the stand-in once it has created its ``n``-th coworker, before it
    answers: the sync's creates run in worker threads, but a write in flight holds the
    client's way, so no other create is sent meanwhile. Returns the real answer method."""
    real = env.standin._answer_created
    created = {"n": 0}

    def answer(new_id, message):
        if message.startswith("Coworker"):
            created["n"] += 1
            if created["n"] == n:
                action()
        return real(new_id, message)

    monkeypatch.setattr(env.standin, "_answer_created", answer)
    return real


def test_access_token_expiring_mid_sync_is_refreshed_once_and_the_new_refresh_token_kept(app, env,
                                                                                         make_customer,
                                                                                         monkeypatch):
    customers = [make_customer(first_name=f"T{i}", last_name="Token", email=f"t{i}@example.test")
                 for i in range(5)]
    conn = env.connect()
    before = _stored_token(conn.id)
    # Every access token dies mid-run, as the second coworker is created.
    _after_coworker_created(env, monkeypatch, 2, env.standin.expire_all_tokens)
    env.standin.reset_counters()
    run = start_sync("nexudus", background=False)

    assert (run.status, run.created, run.failed) == ("done", 5, 0)
    assert env.standin.count("POST", "/api/token") == 1  # one refresh, no password grant
    after = _stored_token(conn.id)
    assert after["refresh_token"] != before["refresh_token"]
    assert before["refresh_token"] not in env.standin.refresh_tokens  # rotated: the old one is dead
    assert after["refresh_token"] in env.standin.refresh_tokens
    assert IntegrationConnection.get("nexudus").credentials() == {"email": NEXUDUS_EMAIL}
    assert all(MemberLink.active_for(c.id, "nexudus") for c in customers)


def test_a_dead_refresh_token_mid_sync_stops_and_asks_to_reconnect(app, client, logged_in_operator, env,
                                                                   make_customer, monkeypatch):
    for i in range(4):
        make_customer(first_name=f"D{i}", last_name="Dead", email=f"d{i}@example.test")
    env.connect()

    def kill_tokens():
        with env.standin.lock:
            env.standin.refresh_tokens.clear()  # e.g. revoked, or used by a copy elsewhere
        env.standin.expire_all_tokens()

    real_answer = _after_coworker_created(env, monkeypatch, 2, kill_tokens)
    run = start_sync("nexudus", background=False)

    assert run.status == "failed" and run.created == 2 and "reconnect needed" in run.message
    conn = IntegrationConnection.get("nexudus")
    assert conn.state == "error" and "reconnect needed" in conn.last_error and not conn.is_active
    page = client.get(f"{BASE}/systems").get_data(as_text=True)
    assert f'href="{BASE}/nexudus/connect"' in page
    assert len(env.remote_members()) == 2  # nothing sent blindly after the refusal

    # Connecting again (password once more) keeps the export window and finishes the job.
    enabled_at = conn.enabled_at
    monkeypatch.setattr(env.standin, "_answer_created", real_answer)
    client.post(f"{BASE}/nexudus/connect", data={"email": NEXUDUS_EMAIL, "password": NEXUDUS_PASSWORD},
                headers=HX)
    resp = client.post(f"{BASE}/nexudus/connect/location", data={"location_id": env.location_id,
                                                                  "invoice_export": "on"}, headers=HX)
    assert resp.status_code == 204 and wait_for_background(30)
    db.session.expire_all()
    conn = IntegrationConnection.get("nexudus")
    assert conn.is_active and conn.enabled_at == enabled_at
    assert len(env.remote_members()) == 4 and MemberLink.query.filter_by(active=True).count() == 4


def test_two_app_instances_refresh_the_rotating_token_once(app, env):
    """Each instance loads the same token; both find it expired. The database lease lets one
    refresh; the other re-reads the store under the lease and uses the new token."""
    from spheremail.integrations.nexudus import RateLimiter
    from spheremail.integrations.registry import provider_for
    from tests.conftest import make_test_app

    # Separate processes pace separately; this test is about tokens, so no limits here.
    env.standin.set_limits(enabled=False)
    conn = env.connect()
    conn_id = conn.id
    extra = {k: app.config[k] for k in ("NEXUDUS_API_BASE", "INTEGRATIONS_CLIENT_OPTIONS")}
    apps = [make_test_app(app.config["SQLALCHEMY_DATABASE_URI"], **extra) for _ in range(3)]
    ready = threading.Barrier(3)
    results, errors = [], []

    def worker(other_app):
        with other_app.app_context():
            try:
                client = provider_for(db.session.get(IntegrationConnection, conn_id),
                                      limiter=RateLimiter(clock=env.clock.monotonic))
                client.locations()  # loads the token while it is still good
                ready.wait(30)
                if other_app is apps[0]:
                    env.standin.expire_all_tokens()
                ready.wait(30)
                results.append(len(client.locations()))  # 401 -> refresh under the lease
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            finally:
                db.session.remove()
                db.engine.dispose()

    env.standin.reset_counters()
    threads = [threading.Thread(target=worker, args=(a,)) for a in apps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and results == [2, 2, 2]
    assert env.standin.count("POST", "/api/token") == 1
    assert _stored_token(conn_id)["refresh_token"] in env.standin.refresh_tokens


# ------------------------------------------------------------------------ export
@pytest.fixture
def exporting(env, make_customer):
    customers = [make_customer(first_name=f"Exp{i}", last_name="Orter", email=f"exp{i}@example.test")
                 for i in range(2)]
    env.connect(enabled_at=utcnow() - dt.timedelta(hours=1))
    assert start_sync("nexudus", background=False).created == 2
    return customers


def test_each_invoice_becomes_one_charge_with_the_number_in_description_and_purchase_order(app, env,
                                                                                          exporting):
    invoice = make_invoice(exporting[0], total_minor=4599)
    assert export_pending("nexudus").exported == 1
    (charge,) = env.standin.charges.values()
    link = MemberLink.active_for(exporting[0].id, "nexudus")
    assert charge["CoworkerId"] == int(link.member_id) and charge["BusinessId"] == int(env.location_id)
    assert charge["Quantity"] == 1 and charge["TotalAmount"] == 45.99
    assert charge["DiscountAmount"] == 0 and charge["CreditAmount"] == 0
    assert charge["PurchaseOrder"] == invoice.number and invoice.number in charge["Description"]
    closed = db.session.get(Invoice, invoice.id)
    assert closed.status == "closed_by_export" and closed.external_reference == str(charge["Id"])


def test_409_is_honoured_with_retry_after(app, env, exporting):
    invoice = make_invoice(exporting[0])
    env.standin.throttle_next(3, method="POST", path=CHARGES)
    env.standin.reset_counters()
    result = export_pending("nexudus")
    assert result.exported == 1 and len(env.standin.charges_for(invoice.number)) == 1
    assert env.standin.throttled == 3 and env.standin.count("POST", CHARGES) == 4
    # Each 409 paused us for its Retry-After (1 s, on the fake clock) before the next try.
    assert sum(1 for s in env.clock.sleeps if s >= 1.0) >= 3


def test_a_burst_stays_under_60_writes_a_minute_with_no_409(app, env, make_customer):
    """90 new coworkers, then 90 charges: the stand-in enforces every published limit on the
    shared clock, so a single 409 would mean our pacing let a write through too early."""
    customers = [make_customer(first_name=f"B{i}", last_name="Burst", email=f"b{i}@example.test")
                 for i in range(90)]
    env.connect(enabled_at=utcnow() - dt.timedelta(hours=1))
    env.standin.reset_counters()
    start = env.clock.monotonic()
    assert start_sync("nexudus", background=False).created == 90
    invoices = [make_invoice(c) for c in customers]
    assert export_pending("nexudus").exported == 90

    assert env.standin.throttled == 0 and env.standin.statuses.get(409, 0) == 0
    writes = env.standin.count("POST", COWORKERS) + env.standin.count("POST", CHARGES)
    assert writes == 180
    # 180 writes at no more than one a second take at least three fake minutes.
    assert env.clock.monotonic() - start >= 179
    assert sorted(c["PurchaseOrder"] for c in env.standin.charges.values()) == sorted(i.number for i in invoices)


def test_charge_created_but_answer_lost_is_found_by_purchase_order_not_sent_again(app, env, exporting):
    invoice = make_invoice(exporting[0])
    env.standin.lose_answer_next(1, path=CHARGES, mode="drop")
    env.standin.reset_counters()

    result = export_pending("nexudus")

    assert result.exported == 1
    assert env.standin.count("POST", CHARGES) == 1  # sent once
    assert env.standin.count("GET", CHARGES) == 1  # then looked up by PurchaseOrder
    (charge,) = env.standin.charges_for(invoice.number)
    closed = db.session.get(Invoice, invoice.id)
    assert closed.status == "closed_by_export" and closed.external_reference == str(charge["Id"])
    assert InvoiceExport.query.filter_by(invoice_id=invoice.id).one().state == "done"
    assert export_pending("nexudus").exported == 0 and len(env.standin.charges) == 1


def test_was_successful_false_on_200_is_a_failed_export(app, client, logged_in_operator, env, exporting):
    invoice = make_invoice(exporting[0])
    env.standin.fail_command_next(1, method="POST", path=CHARGES, message="The coworker has no invoicing tariff.")

    result = export_pending("nexudus")

    assert result.failed == 1 and result.exported == 0 and not env.standin.charges
    row = InvoiceExport.query.filter_by(invoice_id=invoice.id).one()
    assert row.state == "failed" and "no invoicing tariff" in row.last_error
    assert db.session.get(Invoice, invoice.id).status == "pending"
    page = client.get(f"{BASE}/systems").get_data(as_text=True)
    assert "Exports refused last time" in page and "no invoicing tariff" in page
    # The next run looks it up first (not there), then sends it once.
    env.standin.reset_counters()
    assert export_pending("nexudus").exported == 1
    assert env.standin.count("GET", CHARGES) == 1 and len(env.standin.charges_for(invoice.number)) == 1


# --------------------------------------------------------------- the Marketplace "+"
def _staff_pages(app):
    """Every GET route without URL parameters outside the portal, auth and integrations'
    own popups: the staff views."""
    skip = ("portal.", "auth.", "static", "payments.stripe", "integrations.")
    for rule in app.url_map.iter_rules():
        if "GET" in rule.methods and not rule.arguments and not rule.endpoint.startswith(skip):
            yield rule.rule


def test_marketplace_plus_is_in_every_staff_view_for_operators_only(app, client, auth, make_staff, env):
    operator = make_staff("operator")
    auth.login(operator.email)
    plus = 'aria-label="Marketplace: add an integration"'
    seen = 0
    for url in _staff_pages(app):
        resp = client.get(url)
        body = resp.get_data(as_text=True)
        if resp.status_code == 200 and resp.mimetype == "text/html" and "<nav" in body:
            assert plus in body, url
            seen += 1
    assert seen >= 3
    assert plus in client.get(f"{BASE}/systems").get_data(as_text=True)

    for role in ("admin", "mail_admin"):
        client.post("/logout")
        auth.login(make_staff(role).email)
        for url in _staff_pages(app):
            resp = client.get(url)
            assert plus not in resp.get_data(as_text=True), (role, url)
        assert client.get(f"{BASE}/marketplace").status_code == 403


def test_marketplace_opens_the_nexudus_popup(client, logged_in_operator, env):
    dialog = client.get(f"{BASE}/marketplace", headers=HX).get_data(as_text=True)
    assert "Connect Nexudus" in dialog
    resp = client.post(f"{BASE}/nexudus/enabled", data={"enabled": "on", "then": "connect"}, headers=HX)
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200 and 'data-step="credentials"' in body and 'name="email"' in body
    assert IntegrationConnection.get("nexudus").enabled
