"""Business Settings → Integrations → Systems and the OfficeRnD Connect popup, over real HTTP
against the OfficeRnD stand-in: access, each credential error, nothing saved on error,
the location step, auto-connect on connecting, disconnect, the marketplace dialog."""
from __future__ import annotations

import socket

import pytest

from spheremail.models import IntegrationConnection, MemberLink, SyncRun
from spheremail.services.member_sync import wait_for_background

HX = {"HX-Request": "true"}
BASE = "/business-settings/integrations"


@pytest.fixture
def env(officernd_env):
    return officernd_env


def _enable(client):
    resp = client.post(f"{BASE}/officernd/enabled", data={"enabled": "on"}, headers=HX)
    assert resp.status_code == 204 and resp.headers["HX-Redirect"].endswith("/systems")


def _good(env, **over):
    return {**env.credentials, **over}


@pytest.mark.parametrize("role", ["admin", "mail_admin"])
def test_admins_and_mail_admins_get_403_and_no_link(client, auth, make_staff, role, env):
    user = make_staff(role)
    auth.login(user.email)
    for url in (f"{BASE}/systems", f"{BASE}/officernd/connect", f"{BASE}/marketplace"):
        assert client.get(url).status_code == 403
    assert client.post(f"{BASE}/officernd/enabled", data={"enabled": "on"}).status_code == 403
    page = client.get("/", follow_redirects=True).get_data(as_text=True)
    assert f"{BASE}/systems" not in page and f"{BASE}/marketplace" not in page


def test_operator_sees_systems_tab_and_link(client, logged_in_operator, env):
    resp = client.get(f"{BASE}/systems")
    assert resp.status_code == 200
    body = resp.get_data(as_text=True)
    assert "OfficeRnD Flex" in body and "Nexudus" in body and body.count("<h1") == 1
    assert 'href="/business-settings/integrations/systems"' in body  # nav link


def test_connect_requires_the_toggle(client, logged_in_operator, env):
    body = client.get(f"{BASE}/officernd/connect", headers=HX).get_data(as_text=True)
    assert "Turn the OfficeRnD Flex integration on first" in body
    resp = client.post(f"{BASE}/officernd/connect", data=_good(env), headers=HX)
    assert "Turn the OfficeRnD Flex integration on first" in resp.get_data(as_text=True)
    assert env.standin.token_requests == 0


def test_popup_is_a_dialog_for_htmx_and_a_page_without_js(client, logged_in_operator, env):
    _enable(client)
    partial = client.get(f"{BASE}/officernd/connect", headers=HX).get_data(as_text=True)
    assert partial.lstrip().startswith("<dialog") and "<html" not in partial
    assert 'name="client_secret"' in partial and 'type="password"' in partial
    page = client.get(f"{BASE}/officernd/connect").get_data(as_text=True)
    assert "<html" in page and "<dialog open" in page and 'action="/business-settings/integrations/officernd/connect"' in page


@pytest.mark.parametrize("case, headline", [
    ("wrong_secret", "did not accept these credentials"),
    ("unknown_slug", "does not know this organization"),
    ("missing_scope", "missing a permission"),
    ("unreachable", "cannot be reached"),
])
def test_each_credential_error_has_its_message_and_nothing_is_saved(app, client, logged_in_operator, env,
                                                                    case, headline):
    _enable(client)
    data = _good(env)
    if case == "wrong_secret":
        data["client_secret"] = "not-the-secret"
    elif case == "unknown_slug":
        data["slug"] = "nope"
    elif case == "missing_scope":
        env.standin.remove_scope("flex.community.fees.create")
    elif case == "unreachable":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        app.config["OFFICERND_TOKEN_URL"] = f"http://127.0.0.1:{port}/oauth/token"
        app.config["OFFICERND_API_BASE"] = f"http://127.0.0.1:{port}/api/v2"
    resp = client.post(f"{BASE}/officernd/connect", data=data, headers=HX)
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert headline in body and "Nothing was saved" in body
    assert data["client_secret"] not in body  # never echoed back
    kinds = {"wrong_secret": "auth", "unknown_slug": "not_found", "missing_scope": "scope",
             "unreachable": "unreachable"}
    assert f'data-error-kind="{kinds[case]}"' in body
    conn = IntegrationConnection.get("officernd")
    assert conn.credentials_encrypted is None and conn.token_encrypted is None
    assert conn.state == "disconnected" and conn.locations_json is None


@pytest.mark.parametrize("field, value, message", [
    ("client_id", "", "Enter the Client ID"),
    ("client_secret", "", "Enter the Client Secret"),
    ("slug", "", "Enter the OfficeRnD Slug"),
    ("slug", "<script>alert(1)</script>", "does not look like a valid OfficeRnD Slug"),
    ("client_id", "x" * 201, "at most 200 characters"),
    ("slug", "a b", "does not look like a valid"),
])
def test_bad_input_is_refused_without_calling_officernd(client, logged_in_operator, env, field, value, message):
    _enable(client)
    resp = client.post(f"{BASE}/officernd/connect", data=_good(env, **{field: value}), headers=HX)
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200 and message in body
    assert "<script>alert" not in body
    assert env.standin.token_requests == 0
    assert IntegrationConnection.get("officernd").credentials_encrypted is None


def test_whole_popup_flow_connects_and_auto_connects(app, client, logged_in_operator, env, make_customer):
    matched = make_customer(first_name="Mia", last_name="Match", email="mia@example.test")
    missing = make_customer(first_name="Nils", last_name="New", email="nils@example.test", phone="+31 6 1")
    env.add_member("Mia Match", "MIA@Example.test")
    _enable(client)

    resp = client.post(f"{BASE}/officernd/connect", data=_good(env), headers=HX)
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200 and 'data-step="location"' in body
    assert "Amsterdam Central" in body and "Rotterdam Port" in body
    assert env.credentials["client_secret"] not in body
    conn = IntegrationConnection.get("officernd")
    assert conn.state == "connecting"
    assert env.credentials["client_secret"] not in (conn.credentials_encrypted or "")  # encrypted
    assert conn.credentials()["client_secret"] == env.credentials["client_secret"]
    assert conn.token_encrypted  # the checked token is reused, not fetched again
    tokens_after_check = env.standin.token_requests

    # Step 2 errors: no location; export on without a fee plan id; a malformed plan id.
    body = client.post(f"{BASE}/officernd/connect/location", data={"invoice_export": "on"},
                       headers=HX).get_data(as_text=True)
    assert "Choose a location" in body and "Enter the fee plan id" in body
    body = client.post(f"{BASE}/officernd/connect/location",
                       data={"location_id": "not-a-location", "fee_plan_id": "<script>"}, headers=HX).get_data(as_text=True)
    assert "Choose a location" in body and "up to 64 letters" in body
    assert IntegrationConnection.get("officernd").state == "connecting"

    resp = client.post(f"{BASE}/officernd/connect/location",
                       data={"location_id": env.location_id, "invoice_export": "on", "fee_plan_id": env.fee_plan_id},
                       headers=HX)
    assert resp.status_code == 204 and resp.headers["HX-Redirect"].endswith("/systems")
    assert wait_for_background(30)
    conn = IntegrationConnection.get("officernd")
    assert conn.state == "connected" and conn.is_active and conn.invoice_export
    assert conn.location_name == "Amsterdam Central" and conn.enabled_at is not None
    assert env.standin.token_requests == tokens_after_check

    run = SyncRun.query.filter_by(provider="officernd", kind="all").one()
    assert (run.status, run.matched, run.created, run.failed) == ("done", 1, 1, 0)
    assert MemberLink.active_for(matched.id, "officernd").source == "auto"
    created = MemberLink.active_for(missing.id, "officernd")
    assert created.source == "created" and created.created_in_remote_at is not None
    remote = {m["email"]: m for m in env.standin.members.values()}
    assert remote["nils@example.test"]["location"] == env.location_id
    assert remote["nils@example.test"]["phone"] == "+31 6 1"
    assert remote["nils@example.test"]["startDate"]

    page = client.get(f"{BASE}/systems").get_data(as_text=True)
    assert "Amsterdam Central" in page and "1 matched, 1 created, 0 failed" in page
    assert "Nils New" in page  # the New customers list
    assert env.credentials["client_secret"] not in page

    from spheremail.models import AuditEvent

    summaries = " ".join(e.summary for e in AuditEvent.query.all())
    assert "integration_connected" in {e.action for e in AuditEvent.query.all()}
    assert env.credentials["client_secret"] not in summaries


def test_step_one_without_js_renders_full_pages(client, logged_in_operator, env):
    _enable(client)
    resp = client.post(f"{BASE}/officernd/connect", data=_good(env))
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200 and "<html" in body and 'data-step="location"' in body
    resp = client.post(f"{BASE}/officernd/connect/location", data={"location_id": env.location_id})
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/systems")


def test_disconnect_forgets_secrets_and_keeps_history(client, logged_in_operator, env, make_customer):
    customer = make_customer(email="kim@example.test")
    env.add_member("Kim", "kim@example.test")
    env.connect()
    from spheremail.services.member_sync import start_sync

    start_sync("officernd", background=False)
    assert MemberLink.active_for(customer.id, "officernd") is not None

    confirm = client.get(f"{BASE}/officernd/disconnect", headers=HX).get_data(as_text=True)
    assert "<dialog" in confirm and "Disconnect" in confirm
    resp = client.post(f"{BASE}/officernd/disconnect", headers=HX)
    assert resp.status_code == 204
    conn = IntegrationConnection.get("officernd")
    assert conn.state == "disconnected" and conn.credentials_encrypted is None and conn.token_encrypted is None
    assert MemberLink.active_for(customer.id, "officernd") is None
    assert MemberLink.query.filter_by(customer_id=customer.id).one().unlinked_at is not None


def test_only_one_system_connected_at_a_time_switching_asks_first(client, logged_in_operator, env,
                                                                      make_customer):
    customer = make_customer(email="sam@example.test")
    env.add_member("Sam", "sam@example.test")
    env.connect()
    from spheremail.services.member_sync import start_sync

    start_sync("officernd", background=False)
    assert MemberLink.active_for(customer.id, "officernd") is not None

    # The toggle, the Connect button and the Marketplace all ask before switching.
    resp = client.post(f"{BASE}/nexudus/enabled", data={"enabled": "on", "then": "connect"}, headers=HX)
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200 and resp.headers["HX-Retarget"] == "#modal"
    assert "Disconnect OfficeRnD Flex and connect Nexudus?" in body
    assert "only one system can be connected at a time" in body and 'data-step="switch"' in body
    assert IntegrationConnection.get("nexudus") is None  # nothing changed yet
    assert "Disconnect OfficeRnD Flex and connect Nexudus?" in client.get(
        f"{BASE}/nexudus/connect", headers=HX).get_data(as_text=True)
    # Going round the dialog does not work either.
    refused = client.post(f"{BASE}/nexudus/connect", data={"email": "a@b.test", "password": "x"}, headers=HX)
    assert "Disconnect it first" in refused.get_data(as_text=True)
    assert IntegrationConnection.get("officernd").state == "connected"

    resp = client.post(f"{BASE}/nexudus/switch", headers=HX)
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200 and 'data-step="credentials"' in body and 'name="email"' in body
    old = IntegrationConnection.get("officernd")
    assert old.state == "disconnected" and not old.enabled and old.credentials_encrypted is None
    assert IntegrationConnection.get("nexudus").enabled
    assert MemberLink.active_for(customer.id, "officernd") is None
    history = MemberLink.query.filter_by(customer_id=customer.id, provider="officernd").one()
    assert history.unlinked_at is not None  # kept as history
    from spheremail.models import AuditEvent

    assert any("disconnected to connect Nexudus" in e.summary for e in AuditEvent.query.all())


def test_switching_without_javascript(client, logged_in_operator, env):
    env.connect()
    resp = client.post(f"{BASE}/nexudus/enabled", data={"enabled": "on"})
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/nexudus/switch")
    page = client.get(f"{BASE}/nexudus/switch").get_data(as_text=True)
    assert "<html" in page and "<dialog open" in page and "Disconnect OfficeRnD Flex" in page
    resp = client.post(f"{BASE}/nexudus/switch")
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/nexudus/connect")
    assert IntegrationConnection.get("officernd").state == "disconnected"
    # Nothing to switch from any more: the switch page leads to the popup.
    assert client.get(f"{BASE}/nexudus/switch").status_code == 303


def test_marketplace_lists_systems_and_opens_the_popup(client, logged_in_operator, env):
    dialog = client.get(f"{BASE}/marketplace", headers=HX).get_data(as_text=True)
    assert "<dialog" in dialog and "Connect OfficeRnD Flex" in dialog and "Connect Nexudus" in dialog
    resp = client.post(f"{BASE}/officernd/enabled", data={"enabled": "on", "then": "connect"}, headers=HX)
    assert resp.status_code == 200 and 'data-step="credentials"' in resp.get_data(as_text=True)
    assert IntegrationConnection.get("officernd").enabled
    nav = client.get(f"{BASE}/systems").get_data(as_text=True)
    assert 'aria-label="Marketplace: add an integration"' in nav


def test_csrf_is_enforced_on_the_popup(app, client, logged_in_operator, env):
    app.config["WTF_CSRF_ENABLED"] = True
    resp = client.post(f"{BASE}/officernd/connect", data=_good(env))
    assert resp.status_code == 400
    assert env.standin.token_requests == 0
