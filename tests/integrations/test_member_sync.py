"""Auto-connect, manual connect and new sign-ups against a coworking system's stand-in,
over real HTTP (parametrised over ``provider_env``)."""
from __future__ import annotations

import pytest
from flask_sqlalchemy.record_queries import get_recorded_queries

from spheremail.extensions import db
from spheremail.models import IntegrationConnection, MemberLink, SyncRun
from spheremail.services import member_sync
from spheremail.services.member_sync import start_sync, wait_for_background

HX = {"HX-Request": "true"}
BASE = "/business-settings/integrations"


def _emails(env):
    return sorted((m["email"] or "").lower() for m in env.remote_members())


def test_auto_connect_matches_ignoring_case_creates_missing_and_pages(app, provider_env, make_customer):
    env = provider_env
    # 120 members: more than two pages of 50; the customers' members are on the last page.
    for i in range(118):
        env.add_member(f"Other {i}", f"other{i}@example.com")
    env.add_member("Ann Upper", "ANN.UPPER@Example.COM")
    env.add_member("Bob Lower", "bob@example.com")
    ann = make_customer(first_name="Ann", last_name="Upper", email="ann.upper@example.com")
    bob = make_customer(first_name="Bob", last_name="Lower", email="Bob@Example.com")
    cat = make_customer(first_name="Cat", last_name="New", email="cat@example.com", company="Cat & Co")
    make_customer(first_name="Ivy", last_name="Inactive", email="ivy@example.com", status="inactive")
    env.connect()
    if env.name == "officernd":
        env.standin.reset_counters()

    run = start_sync(env.name, background=False)

    assert (run.status, run.total, run.matched, run.created, run.failed) == ("done", 3, 2, 1, 0)
    assert MemberLink.active_for(ann.id, env.name).member_email == "ANN.UPPER@Example.COM"
    assert MemberLink.active_for(bob.id, env.name).source == "auto"
    assert MemberLink.active_for(cat.id, env.name).source == "created"
    assert "ivy@example.com" not in _emails(env)  # inactive customers are left alone
    assert _emails(env).count("cat@example.com") == 1
    if env.name == "officernd":
        # All members read once, 50 a page: 3 list requests, not one per customer.
        assert env.standin.count("GET", "/members") == 3
        assert env.standin.count("POST", "/members") == 1


def test_rerun_never_duplicates_and_keeps_manual_choices(app, provider_env, make_customer):
    env = provider_env
    pinned = env.add_member("Pinned Elsewhere", "pinned-other@example.com")
    env.add_member("Dee", "dee@example.com")
    dee = make_customer(first_name="Dee", last_name="Manual", email="dee@example.com")
    eve = make_customer(first_name="Eve", last_name="Created", email="eve@example.com")
    env.connect()
    member_sync.connect_manually(dee, env.name, member_sync.Member(id=pinned["id"], name="Pinned Elsewhere",
                                                                   email="pinned-other@example.com"))
    db.session.commit()

    first = start_sync(env.name, background=False)
    second = start_sync(env.name, background=False)

    assert (first.created, second.created) == (1, 0)
    assert second.matched == 2 and second.failed == 0
    link = MemberLink.active_for(dee.id, env.name)
    assert link.source == "manual" and link.member_id == pinned["id"]
    assert _emails(env).count("eve@example.com") == 1
    assert MemberLink.active_for(eve.id, env.name).source == "created"


def test_interrupted_half_way_then_rerun_creates_no_duplicate(app, provider_env, make_customer, monkeypatch):
    env = provider_env
    customers = [make_customer(first_name=f"C{i}", last_name="Crash", email=f"c{i}@example.com") for i in range(5)]
    env.connect()
    real_link_row = member_sync._link_row
    calls = {"n": 0}

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            # The member was just created over there; we die before linking it here.
            raise KeyboardInterrupt("process killed")
        return real_link_row(*args, **kwargs)

    monkeypatch.setattr(member_sync, "_link_row", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        start_sync(env.name, background=False)
    db.session.rollback()
    monkeypatch.setattr(member_sync, "_link_row", real_link_row)
    # The creates run in parallel and the links are committed in batches: when the process
    # died, at least three members existed over there and fewer of them were linked here.
    created_before = len(env.remote_members())
    linked_before = MemberLink.query.filter_by(provider=env.name, active=True).count()
    assert created_before >= 3 and linked_before < created_before

    # While the dead run still looks alive, a new request shows it instead of starting a second.
    dead = SyncRun.query.filter_by(kind="all").one()
    assert start_sync(env.name, background=False).id == dead.id
    # After a restart, once its heartbeat is old, it counts as interrupted.
    dead.heartbeat_at = dead.heartbeat_at - member_sync.STALE_RUN * 2
    db.session.commit()
    run = start_sync(env.name, background=False)
    assert run.id != dead.id and db.session.get(SyncRun, dead.id).status == "failed"

    assert run.status == "done" and run.failed == 0
    assert sorted(_emails(env)) == sorted(f"c{i}@example.com" for i in range(5))  # no duplicates
    for customer in customers:
        assert MemberLink.active_for(customer.id, env.name) is not None
    # The ones created before the crash are found by email and linked as matched.
    assert run.created == 5 - created_before and run.matched == created_before


def test_create_refused_as_duplicate_links_the_existing_member(app, officernd_env, make_customer):
    env = officernd_env
    # Stored in a letter case the exact email filter cannot find: the create is refused
    # (400, email exists) and the full member list (read first) already knows it.
    env.add_member("Fay", "FaY@Example.com")
    fay = make_customer(first_name="Fay", last_name="Case", email="fay@example.com")
    env.connect()
    member_sync.connect_new_customer(fay)
    assert wait_for_background(30)
    single = SyncRun.query.filter_by(kind="customer").one()
    assert single.failed == 1 and "refused" in single.errors()[0]["reason"]
    run = start_sync(env.name, background=False)
    assert run.matched == 1 and run.created == 0
    assert len(env.remote_members()) == 1


def test_connect_members_runs_in_background_with_polling_progress(client, logged_in_operator, provider_env,
                                                                  make_customer):
    env = provider_env
    for i in range(3):
        make_customer(first_name=f"P{i}", last_name="Poll", email=f"p{i}@example.com")
    env.connect()
    confirm = client.get(f"{BASE}/{env.name}/sync", headers=HX).get_data(as_text=True)
    assert "<dialog" in confirm and "Confirm" in confirm

    resp = client.post(f"{BASE}/{env.name}/sync", headers=HX)
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200 and resp.headers.get("HX-Trigger") == "closeModal"
    run = SyncRun.query.filter_by(kind="all").one()
    assert f'id="sync-run-{run.id}"' in body
    # The request answered before the work was necessarily done; the box polls itself.
    if run.status in ("pending", "running"):
        assert 'hx-trigger="every 1s"' in body
    assert wait_for_background(30)
    db.session.expire_all()  # the test shares the app context (and session) with its requests

    done = client.get(f"{BASE}/sync-runs/{run.id}", headers=HX).get_data(as_text=True)
    assert 'data-status="done"' in done and "every 1s" not in done
    assert "0 matched, 3 created, 0 failed" in done


def test_sync_failures_are_recorded_with_the_reason(app, officernd_env, make_customer):
    env = officernd_env
    make_customer(first_name="Gus", last_name="Fails", email="gus@example.com")
    env.connect()
    env.standin.fail_next(1, status=400, method="POST", path="/members")
    run = start_sync(env.name, background=False)
    assert run.failed == 1 and run.created == 0
    assert run.errors()[0]["name"] == "Gus Fails" and "refused" in run.errors()[0]["reason"].lower()
    # The next run fixes it.
    assert start_sync(env.name, background=False).created == 1


def test_new_sign_up_is_connected_without_waiting(app, provider_env):
    from spheremail.services.customers import create_customer

    env = provider_env
    env.add_member("Hal", "hal@example.com")
    env.connect()
    hal = create_customer("Hal", "Signup", "HAL@example.com", password="a long password", signed_up_via="portal")
    zoe = create_customer("Zoe", "Brandnew", "zoe@example.com", signed_up_via="staff")
    db.session.commit()  # the hook fires after the commit, in the background
    assert wait_for_background(30)
    assert MemberLink.active_for(hal.id, env.name).source == "auto"
    assert MemberLink.active_for(zoe.id, env.name).source == "created"
    assert _emails(env).count("zoe@example.com") == 1


def test_sign_up_succeeds_while_the_system_is_down(app, officernd_env):
    from spheremail.services.customers import create_customer

    env = officernd_env
    env.connect()
    env.standin.fail_next(50, status=503)
    customer = create_customer("Ida", "Down", "ida@example.com", signed_up_via="portal")
    db.session.commit()
    assert wait_for_background(30)
    assert customer.id and MemberLink.active_for(customer.id, env.name) is None
    run = SyncRun.query.filter_by(kind="customer").one()
    assert run.failed == 1 and run.errors()
    env.standin.clear_faults()
    assert start_sync(env.name, background=False).created == 1  # retried by the next sync


def test_sign_up_while_off_does_nothing(app, provider_env):
    from spheremail.services.customers import create_customer

    env = provider_env
    conn = env.connect()
    conn.enabled = False
    db.session.commit()
    customer = create_customer("Jon", "Off", "jon@example.com")
    db.session.commit()
    assert wait_for_background(30)
    assert MemberLink.active_for(customer.id, env.name) is None and not env.remote_members()


def test_manual_connect_on_the_customer_page(client, logged_in_operator, provider_env, make_customer):
    env = provider_env
    kai = make_customer(first_name="Kai", last_name="Hand", email="kai@example.com")
    target = env.add_member("Kai Work Account", "kai.work@example.com")
    env.add_member("Someone Else", "else@example.com")
    env.connect()

    detail = client.get(f"/customers/{kai.id}")  # the customer page includes the connection box
    assert detail.status_code == 200 and 'id="customer-connection"' in detail.get_data(as_text=True)
    box = client.get(f"{BASE}/customers/{kai.id}/connection", headers=HX).get_data(as_text=True)
    assert "Not connected" in box and 'hx-trigger="input changed delay:300ms, search"' in box

    results = client.get(f"{BASE}/customers/{kai.id}/members", query_string={"q": "kai.work@example.com"},
                         headers=HX).get_data(as_text=True)
    assert "Kai Work Account" in results and "Someone Else" not in results
    short = client.get(f"{BASE}/customers/{kai.id}/members", query_string={"q": "k"}, headers=HX)
    assert "at least two characters" in short.get_data(as_text=True)

    resp = client.post(f"{BASE}/customers/{kai.id}/connect", headers=HX,
                       data={"member_id": target["id"], "member_name": "Kai Work Account",
                             "member_email": "kai.work@example.com"})
    assert resp.status_code == 200 and "Kai Work Account" in resp.get_data(as_text=True)
    assert MemberLink.active_for(kai.id, env.name).source == "manual"

    # A later auto-connect keeps the choice (and does not create kai@example.com).
    start_sync(env.name, background=False)
    assert MemberLink.active_for(kai.id, env.name).member_id == str(target["id"])
    assert "kai@example.com" not in _emails(env)

    bad = client.post(f"{BASE}/customers/{kai.id}/connect", data={"member_id": "<script>"}, headers=HX)
    assert bad.status_code == 200 and "Choose a member" in bad.get_data(as_text=True)

    resp = client.post(f"{BASE}/customers/{kai.id}/disconnect", headers=HX)
    assert resp.status_code == 200 and "Not connected" in resp.get_data(as_text=True)
    assert MemberLink.active_for(kai.id, env.name) is None
    assert MemberLink.query.filter_by(customer_id=kai.id).count() == 1  # kept as history


def test_a_member_connected_to_one_customer_cannot_be_connected_to_another(client, logged_in_operator,
                                                                           provider_env, make_customer):
    env = provider_env
    one = make_customer(email="one@example.com")
    two = make_customer(email="two@example.com")
    member = env.add_member("Shared", "shared@example.com")
    env.connect()
    data = {"member_id": member["id"], "member_name": "Shared", "member_email": "shared@example.com"}
    client.post(f"{BASE}/customers/{one.id}/connect", data=data, headers=HX)
    body = client.post(f"{BASE}/customers/{two.id}/connect", data=data, headers=HX).get_data(as_text=True)
    assert "already connected" in body
    assert MemberLink.active_for(two.id, env.name) is None


def test_mail_admin_sees_status_but_cannot_connect(client, auth, make_staff, provider_env, make_customer):
    env = provider_env
    customer = make_customer(email="lea@example.com")
    member = env.add_member("Lea", "lea@example.com")
    env.connect()
    auth.login(make_staff("mail_admin").email)
    box = client.get(f"{BASE}/customers/{customer.id}/connection", headers=HX)
    assert box.status_code == 200 and "search by name or email" not in box.get_data(as_text=True)
    assert client.get(f"{BASE}/customers/{customer.id}/members?q=lea").status_code == 403
    assert client.post(f"{BASE}/customers/{customer.id}/connect",
                       data={"member_id": member["id"]}).status_code == 403


def test_new_customers_list_and_its_query_count(client, logged_in_operator, provider_env, make_customer, app):
    env = provider_env
    env.connect()

    def count_queries(n_new):
        for i in range(n_new):
            make_customer(first_name=f"N{i}", last_name="List", email=f"n{n_new}-{i}@example.com")
        start_sync(env.name, background=False)
        before = len(get_recorded_queries())
        resp = client.get(f"{BASE}/{env.name}/new-customers")
        assert resp.status_code == 200
        return resp, len(get_recorded_queries()) - before

    resp, small = count_queries(2)
    assert "N0 List" in resp.get_data(as_text=True)
    resp, large = count_queries(12)
    assert large == small
    page = client.get(f"{BASE}/systems")
    assert page.status_code == 200


def test_creates_are_sent_from_several_threads_at_once(app, officernd_env, make_customer):
    env = officernd_env
    customers = [make_customer(first_name=f"W{i}", last_name="Pool", email=f"w{i}@example.com")
                 for i in range(16)]
    env.connect()
    env.standin.set_latency(0.05)  # each create takes a while: one at a time would never overlap
    env.standin.reset_counters()

    run = start_sync(env.name, background=False)

    assert (run.status, run.created, run.failed, run.done) == ("done", 16, 0, 16)
    in_flight = env.standin.max_in_flight[("POST", "/members")]
    assert 2 <= in_flight <= member_sync.WORKERS
    assert sorted(_emails(env)) == sorted(f"w{i}@example.com" for i in range(16))
    assert all(MemberLink.active_for(c.id, env.name).source == "created" for c in customers)


def test_a_rate_limit_in_one_create_stops_the_pool_and_links_what_was_created(app, officernd_env,
                                                                             make_customer):
    env = officernd_env
    for i in range(40):
        make_customer(first_name=f"R{i}", last_name="Stop", email=f"r{i}@example.com")
    env.connect()
    env.standin.set_latency(0.02)
    env.standin.reset_counters()
    # The first create is told to wait an hour: far beyond what a run waits.
    env.standin.fail_next(1, status=429, method="POST", path="/members", retry_after=3600)

    run = start_sync(env.name, background=False)

    assert run.status == "failed" and run.message.startswith("stopped:")
    # Only what was already on its way went out, not the other 30-odd creates.
    assert env.standin.count("POST", "/members") <= 2 * member_sync.WORKERS
    linked = MemberLink.query.filter_by(provider=env.name, active=True).count()
    assert linked == len(env.remote_members()) == run.created == run.done
    assert run.failed == 0
    assert db.session.get(IntegrationConnection, env.connect().id).state == "connected"

    env.standin.clear_faults()
    rerun = start_sync(env.name, background=False)
    assert rerun.status == "done" and rerun.created == 40 - linked and rerun.matched == linked
    assert sorted(_emails(env)) == sorted(f"r{i}@example.com" for i in range(40))  # no duplicates


def test_matching_commits_in_batches_not_per_customer(app, provider_env, make_customer):
    env = provider_env
    for i in range(60):
        make_customer(first_name=f"M{i}", last_name="Batch", email=f"m{i}@example.com")
        env.add_member(f"M{i} Batch", f"m{i}@example.com")
    env.connect()

    before = len(get_recorded_queries())
    first = start_sync(env.name, background=False)
    first_statements = len(get_recorded_queries()) - before
    before = len(get_recorded_queries())
    second = start_sync(env.name, background=False)
    second_statements = len(get_recorded_queries()) - before

    assert (first.matched, first.created, second.matched, second.created) == (60, 0, 60, 0)
    # Links and progress go in batches of BATCH: well under one statement per customer.
    assert first_statements < 40, first_statements
    # Nothing to change: a fixed number of statements whatever the number of customers.
    assert second_statements < 20, second_statements


def test_a_member_deleted_over_there_is_connected_again(app, officernd_env, make_customer):
    env = officernd_env
    old = env.add_member("Gil", "gil@example.com")
    gil = make_customer(first_name="Gil", last_name="Gone", email="gil@example.com")
    env.connect()
    assert start_sync(env.name, background=False).matched == 1
    with env.standin._lock:  # someone deletes the member in OfficeRnD
        del env.standin.members[old["id"]]
        env.standin._email_index.pop("gil@example.com", None)

    run = start_sync(env.name, background=False)

    assert (run.matched, run.created, run.failed) == (0, 1, 0)
    link = MemberLink.active_for(gil.id, env.name)
    assert link.source == "created" and link.member_id != old["id"]
    assert MemberLink.query.filter_by(customer_id=gil.id, active=False).one().member_id == old["id"]
