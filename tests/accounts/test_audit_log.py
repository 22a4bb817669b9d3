"""The audit log page: Operators only, filter by action, paging, constant query count."""
from flask_sqlalchemy.record_queries import get_recorded_queries

from spheremail.services import audit


def _add_events(db, n, action="customer_updated"):
    for i in range(n):
        audit.record(action, f"event {i}", actor=None)
    db.session.commit()


def _queries_for(client, url):
    before = len(get_recorded_queries())
    response = client.get(url)
    return response, len(get_recorded_queries()) - before


def test_operator_sees_filters_and_pages(client, db, logged_in_operator):
    _add_events(db, 60)
    _add_events(db, 3, action="password_reset_sent")
    page1 = client.get("/staff/audit-log")
    assert page1.status_code == 200
    assert b"Page 1 of 2" in page1.data
    assert b"<option value=\"password_reset_sent\"" in page1.data
    filtered = client.get("/staff/audit-log?action=password_reset_sent")
    assert filtered.data.count(b"<code>password_reset_sent</code>") == 3
    assert b"<code>customer_updated</code>" not in filtered.data
    page2 = client.get("/staff/audit-log?page=2")
    assert page2.status_code == 200 and b"Page 2 of 2" in page2.data
    beyond = client.get("/staff/audit-log?page=99")
    assert beyond.status_code == 200
    nonsense = client.get("/staff/audit-log?page=abc&action=" + "x" * 500)
    assert nonsense.status_code == 200 and b"No events" in nonsense.data


def test_htmx_filter_returns_the_table_only(client, db, logged_in_operator):
    _add_events(db, 2)
    response = client.get("/staff/audit-log?action=customer_updated", headers={"HX-Request": "true"})
    assert b"<table" in response.data and b"<h1" not in response.data
    assert "HX-Request" in response.headers["Vary"]


def test_query_count_does_not_grow_with_rows(client, db, logged_in_operator):
    _add_events(db, 2)
    _, few = _queries_for(client, "/staff/audit-log")
    _add_events(db, 45, action="other_action")
    _, many = _queries_for(client, "/staff/audit-log")
    assert few == many


def test_summaries_are_escaped(client, db, logged_in_operator):
    _add_events(db, 1, action="<script>x</script>")
    response = client.get("/staff/audit-log")
    assert b"<script>x</script>" not in response.data


def test_admin_and_mail_admin_are_refused(client, make_staff, auth):
    for role in ("admin", "mail_admin"):
        auth.login(make_staff(role).email)
        assert client.get("/staff/audit-log").status_code == 403
        auth.logout()
