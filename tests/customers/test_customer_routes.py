"""Staff customer pages: live search, paging, query counts, forms, numbers, deactivation, access."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from spheremail.models import AuditEvent, Customer
from spheremail.models.base import today

HX = {"HX-Request": "true"}


def count_customers(db):
    return db.session.execute(db.select(db.func.count(Customer.id))).scalar()


# --- list and live search -----------------------------------------------------------------------

def test_full_page_and_htmx_partial(client, logged_in_operator, customer, templates):
    response = client.get("/customers/?q=hopper")
    assert response.status_code == 200
    assert templates[0] == "customers/index.html"
    assert "HX-Request" in response.headers.get("Vary", "")
    html = response.get_data(as_text=True)
    assert 'hx-trigger="input changed delay:300ms, search"' in html
    assert 'hx-target="#customer-results"' in html and 'hx-push-url="true"' in html
    assert "Grace Hopper" in html and "<h1>Customers</h1>" in html

    templates.clear()
    response = client.get("/customers/?q=hopper", headers=HX)
    assert templates == ["customers/partials/customer_rows.html"]
    assert "HX-Request" in response.headers.get("Vary", "")
    html = response.get_data(as_text=True)
    assert "Grace Hopper" in html and "<h1>" not in html and "<html" not in html


def test_rows_link_to_the_customer_page_and_show_every_column(app, client, logged_in_operator, make_customer):
    # The row links are built from the list's URL (one url_for per page): they must still
    # be the detail route's URL, whatever that route becomes.
    from flask import url_for

    grace = make_customer("Grace", "Hopper", email="grace@navy.test", company="Compiler Works",
                          mailbox_number=104, deactivate_on=dt.date(2030, 1, 1))
    make_customer("Ada", "Lovelace", email="ada@engines.test", mailbox_number=105)
    with app.test_request_context():
        detail_url = url_for("customers.detail", customer_id=grace.id)
    for headers in ({}, HX):
        html = client.get("/customers/?q=hopper", headers=headers).get_data(as_text=True)
        assert html.count(f'href="{detail_url}"') == 2
        assert "#104" in html and "Grace Hopper" in html and "Compiler Works" in html
        assert "grace@navy.test" in html and "until 2030-01-01" in html and "badge-active" in html
        assert "Lovelace" not in html


def test_boosted_and_history_restore_requests_get_the_full_page(client, logged_in_operator, templates):
    client.get("/customers/", headers={**HX, "HX-History-Restore-Request": "true"})
    client.get("/customers/", headers={**HX, "HX-Boosted": "true"})
    assert templates == ["customers/index.html", "customers/index.html"]


def test_search_by_number_and_status_filter(client, logged_in_operator, make_customer):
    make_customer("Grace", "Hopper", mailbox_number=104)
    make_customer("Ada", "Lovelace", mailbox_number=105, status="inactive")
    html = client.get("/customers/?q=10", headers=HX).get_data(as_text=True)
    assert "Grace Hopper" in html and "Ada Lovelace" not in html
    html = client.get("/customers/?q=10&status=all", headers=HX).get_data(as_text=True)
    assert "Grace Hopper" in html and "Ada Lovelace" in html
    html = client.get("/customers/?status=inactive", headers=HX).get_data(as_text=True)
    assert "Grace Hopper" not in html and "Ada Lovelace" in html
    # Unknown filters and pages fall back instead of failing.
    for url in ("/customers/?status=bogus", "/customers/?page=abc", "/customers/?page=-3",
                "/customers/?page=99999999999999999999", "/customers/?q=" + "x" * 5000,
                "/customers/?q=%00%25'--"):
        assert client.get(url).status_code == 200, url


def test_paging_keeps_the_search(client, logged_in_operator, make_customer):
    for n in range(55):
        make_customer("Pat", f"Member{n:02d}", mailbox_number=200 + n)
    make_customer("Other", "Person", mailbox_number=900)
    html = client.get("/customers/?q=member").get_data(as_text=True)
    assert "55 customers" in html and "page 1 of 2" in html
    assert "/customers/?q=member&amp;status=active&amp;page=2" in html
    assert "Member49" in html and "Member50" not in html
    html = client.get("/customers/?q=member&status=active&page=2", headers=HX).get_data(as_text=True)
    assert "Member50" in html and "Member54" in html and "Member49" not in html
    assert "page=1" in html and "Other Person" not in html
    # Past the end: the last page.
    assert "Member54" in client.get("/customers/?q=member&page=7").get_data(as_text=True)


@pytest.mark.parametrize("headers", [{}, HX])
def test_list_query_count_does_not_grow_with_rows(client, logged_in_operator, make_customer,
                                                  query_counter, headers):
    for n in range(5):
        make_customer("Few", f"N{n}")
    with query_counter() as few:
        assert client.get("/customers/?status=all", headers=headers).status_code == 200
    for n in range(55):
        make_customer("Many", f"N{n}")
    with query_counter() as many:
        html = client.get("/customers/?status=all", headers=headers).get_data(as_text=True)
    assert html.count("/customers/") >= 50
    assert many.count == few.count
    assert few.count <= 4  # the user, the count, the page (users joined in)


def test_detail_query_count_does_not_grow_with_recipients(client, logged_in_operator, customer, db,
                                                          query_counter):
    from spheremail.services.customers import change_mailbox_number
    from spheremail.services.recipients import add_recipient

    add_recipient(customer, "One", "R")
    change_mailbox_number(customer, 500, actor=logged_in_operator)
    db.session.commit()
    with query_counter() as few:
        assert client.get(f"/customers/{customer.id}").status_code == 200
    for n in range(10):
        add_recipient(customer, "More", f"R{n}")
        change_mailbox_number(customer, 600 + n, actor=logged_in_operator)
    db.session.commit()
    with query_counter() as many:
        assert client.get(f"/customers/{customer.id}").status_code == 200
    assert many.count == few.count


def test_names_are_escaped(client, logged_in_operator, make_customer):
    c = make_customer("<script>alert(1)</script>", "O'Brien & <b>Co</b>", company="<img src=x>")
    for url in ("/customers/?status=all", f"/customers/{c.id}"):
        html = client.get(url).get_data(as_text=True)
        assert "<script>alert(1)</script>" not in html and "<img src=x>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


# --- detail -------------------------------------------------------------------------------------

def test_detail_page_shows_everything(client, logged_in_operator, db, templates):
    from spheremail.services.customers import create_customer
    from spheremail.services.recipients import add_recipient

    customer = create_customer("Grace", "Hopper", "grace@example.test")
    add_recipient(customer, "Mary", "Hawes", company="Navy", status="free")
    db.session.commit()
    response = client.get(f"/customers/{customer.id}")
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and templates[0] == "customers/detail.html"
    for text in ("Grace Hopper", "grace@example.test", "#101", "Mary Hawes", "Change number",
                 "Deactivate", "Add a recipient", "(first number)", 'value="free" selected'):
        assert text in html, text
    assert client.get("/customers/999999").status_code == 404


def test_detail_template_keeps_the_include_hooks():
    source = (Path(__file__).parents[2] / "spheremail/templates/customers/detail.html").read_text()
    for line in (
        '{% include "customers/partials/login_help_hook.html" ignore missing %}',
        '{% include "billing/partials/customer_billing.html" ignore missing %}',
        '{% include "integrations/partials/customer_connection.html" ignore missing %}',
        '{% include "customers/partials/impersonate_hook.html" ignore missing %}',
    ):
        assert line in source


# --- create and edit ----------------------------------------------------------------------------

def test_create_customer(client, logged_in_operator, db):
    assert client.get("/customers/new").status_code == 200
    response = client.post("/customers/new", data={"first_name": " Zoë ", "last_name": "Ångström",
                                                   "email": "Zoe@Example.test", "company": "",
                                                   "phone": "", "mailbox_number": ""})
    assert response.status_code == 303
    c = db.session.execute(db.select(Customer)).scalar_one()
    assert response.headers["Location"].endswith(f"/customers/{c.id}")
    assert (c.first_name, c.email, c.mailbox_number, c.signed_up_via) == ("Zoë", "zoe@example.test", 101, "staff")
    event = db.session.execute(db.select(AuditEvent).filter_by(action="customer_created")).scalar_one()
    assert event.actor_id == logged_in_operator.id
    # HTMX-submitted: 204 + HX-Redirect.
    response = client.post("/customers/new", headers=HX, data={"first_name": "B", "last_name": "C",
                                                                "email": "b@example.test", "mailbox_number": "700"})
    assert response.status_code == 204 and "/customers/" in response.headers["HX-Redirect"]


GOOD = {"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.test", "company": "",
        "phone": "", "mailbox_number": ""}


@pytest.mark.parametrize("changes, message", [
    ({"first_name": ""}, "Enter the first name."),
    ({"last_name": "   "}, "Enter the last name."),
    ({"first_name": "x" * 101}, "at most 100"),
    ({"company": "c" * 201}, "at most 200"),
    ({"email": ""}, "Enter the email address."),
    ({"email": "nope"}, "valid email"),
    ({"email": "x" * 300 + "@example.test"}, "at most 254"),
    ({"mailbox_number": "abc"}, "Not a valid integer"),
    ({"mailbox_number": "0"}, "from 1 to 9,999,999"),
    ({"mailbox_number": "10000000"}, "from 1 to 9,999,999"),
    ({"mailbox_number": "104"}, "Mailbox 104 belongs to Grace Hopper (active)"),
    ({"email": "GRACE@example.test"}, "already belongs to Grace Hopper"),
    ({"first_name": "Ada\x01"}, "not allowed"),
])
def test_create_bad_input(client, logged_in_operator, make_customer, db, changes, message):
    make_customer("Grace", "Hopper", email="grace@example.test", mailbox_number=104)
    response = client.post("/customers/new", data={**GOOD, **changes})
    assert response.status_code == 200
    assert message in response.get_data(as_text=True)
    assert count_customers(db) == 1


def test_create_with_script_in_name_is_saved_and_escaped(client, logged_in_operator, db):
    response = client.post("/customers/new", data={**GOOD, "first_name": "<script>x</script>"})
    assert response.status_code == 303
    html = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "<script>x</script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html


def test_edit_customer(client, logged_in_operator, customer, make_customer, db):
    make_customer("Other", "One", email="other@example.test")
    url = f"/customers/{customer.id}/edit"
    assert 'value="grace@example.test"' in client.get(url).get_data(as_text=True)
    response = client.post(url, data={"first_name": "Grace", "last_name": "", "email": "grace@example.test"})
    assert response.status_code == 200 and "Enter the last name." in response.get_data(as_text=True)
    response = client.post(url, data={"first_name": "Grace", "last_name": "Hopper", "email": "OTHER@example.test"})
    assert response.status_code == 200 and "already belongs to Other One" in response.get_data(as_text=True)
    response = client.post(url, data={"first_name": "Grace", "last_name": "Murray Hopper",
                                      "email": "gmh@example.test", "company": "US Navy"})
    assert response.status_code == 303
    db.session.expire_all()
    c = db.session.get(Customer, customer.id)
    assert (c.last_name, c.email, c.company) == ("Murray Hopper", "gmh@example.test", "US Navy")


# --- mailbox number -------------------------------------------------------------------------------

def test_number_change_conflict_is_shown_inline(client, logged_in_operator, customer, make_customer,
                                                templates, db):
    make_customer("Alan", "Turing", mailbox_number=104, status="inactive")
    url = f"/customers/{customer.id}/number"
    response = client.post(url, headers=HX, data={"new_number": "104"})
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert templates == ["customers/partials/number_form.html"]
    assert "Mailbox 104 belongs to Alan Turing (inactive)." in html and 'aria-invalid="true"' in html
    for bad, message in (("", "Enter the new mailbox number."), ("abc", "Not a valid integer"),
                         ("-1", "from 1 to 9,999,999"), ("101", "already has mailbox 101")):
        html = client.post(url, headers=HX, data={"new_number": bad}).get_data(as_text=True)
        assert message in html, bad
    # Without JavaScript the whole page comes back with the error in place.
    templates.clear()
    response = client.post(url, data={"new_number": "104"})
    assert response.status_code == 200 and templates[0] == "customers/detail.html"
    db.session.expire_all()
    assert db.session.get(Customer, customer.id).mailbox_number == 101


def test_number_change_success_and_history(client, logged_in_operator, customer, db):
    response = client.post(f"/customers/{customer.id}/number", headers=HX, data={"new_number": "4242"})
    assert response.status_code == 204
    assert response.headers["HX-Redirect"].endswith(f"/customers/{customer.id}")
    html = client.get(f"/customers/{customer.id}").get_data(as_text=True)
    assert "#4242" in html and "#101" in html and logged_in_operator.email in html
    assert "from 101 to 4242" in html  # the flash


# --- deactivation ---------------------------------------------------------------------------------

def test_deactivate_now_and_reactivate(client, logged_in_operator, customer, db):
    url = f"/customers/{customer.id}"
    response = client.post(url + "/deactivate", data={"mode": "now"})
    assert response.status_code == 303
    html = client.get(url).get_data(as_text=True)
    assert "is now inactive" in html and "Reactivate" in html and "deactivate-form" not in html
    response = client.post(url + "/reactivate", headers=HX)
    assert response.status_code == 204 and response.headers["HX-Redirect"].endswith(url)
    db.session.expire_all()
    assert db.session.get(Customer, customer.id).is_active
    response = client.post(url + "/reactivate", follow_redirects=True)
    assert "already active" in response.get_data(as_text=True)


def test_schedule_end_of_period_and_withdraw(client, logged_in_operator, customer, db):
    from spheremail.services.customers import end_of_billing_period

    url = f"/customers/{customer.id}"
    assert client.post(url + "/deactivate", data={"mode": "end_of_period"}).status_code == 303
    html = client.get(url).get_data(as_text=True)
    when = end_of_billing_period(today())
    assert when.strftime("%d %B %Y") in html and "end of the billing period" in html
    assert "Withdraw the cancellation" in html
    assert client.post(url + "/deactivation/withdraw").status_code == 303
    db.session.expire_all()
    c = db.session.get(Customer, customer.id)
    assert c.deactivate_on is None and c.is_active
    html = client.post(url + "/deactivation/withdraw", follow_redirects=True).get_data(as_text=True)
    assert "no scheduled deactivation" in html


def test_schedule_on_a_date(client, logged_in_operator, customer, db):
    url = f"/customers/{customer.id}"
    on = today() + dt.timedelta(days=30)
    assert client.post(url + "/deactivate", data={"mode": "date", "on_date": on.isoformat()}).status_code == 303
    db.session.expire_all()
    c = db.session.get(Customer, customer.id)
    assert (c.deactivate_on, c.deactivate_reason, c.status) == (on, "date", "active")


@pytest.mark.parametrize("data, message", [
    ({}, "Choose when the customer becomes inactive."),
    ({"mode": "someday"}, "Not a valid choice"),
    ({"mode": "date"}, "Choose the date"),
    ({"mode": "date", "on_date": "not-a-date"}, "Not a valid date"),
    ({"mode": "date", "on_date": "2000-01-01"}, "cannot be in the past"),
])
def test_deactivate_bad_input(client, logged_in_operator, customer, db, templates, data, message):
    response = client.post(f"/customers/{customer.id}/deactivate", headers=HX, data=data)
    assert response.status_code == 200
    assert templates == ["customers/partials/deactivate_form.html"]
    assert message in response.get_data(as_text=True)
    db.session.expire_all()
    c = db.session.get(Customer, customer.id)
    assert c.is_active and c.deactivate_on is None


# --- access ---------------------------------------------------------------------------------------

def change_urls(customer_id):
    return [
        ("post", "/customers/new", {**GOOD}),
        ("get", "/customers/new", None),
        ("get", f"/customers/{customer_id}/edit", None),
        ("post", f"/customers/{customer_id}/edit", {**GOOD}),
        ("post", f"/customers/{customer_id}/number", {"new_number": "555"}),
        ("post", f"/customers/{customer_id}/deactivate", {"mode": "now"}),
        ("post", f"/customers/{customer_id}/deactivation/withdraw", {}),
        ("post", f"/customers/{customer_id}/reactivate", {}),
        ("post", f"/customers/{customer_id}/recipients", {"first_name": "A", "last_name": "B", "status": "free"}),
        ("get", "/staff/settings", None),
        ("post", "/staff/settings", {"new_recipient_status": "free"}),
    ]


def test_mail_admin_can_look_customers_up_but_not_change_them(client, logged_in_as, customer, db):
    logged_in_as("mail_admin")
    assert client.get("/customers/?q=grace").status_code == 200
    html = client.get(f"/customers/{customer.id}").get_data(as_text=True)
    assert "Grace Hopper" in html
    assert "Change number" not in html and "deactivate-form" not in html and "Add a recipient" not in html
    for method, url, data in change_urls(customer.id):
        response = getattr(client, method)(url, data=data)
        assert response.status_code == 403, (method, url)
    db.session.expire_all()
    c = db.session.get(Customer, customer.id)
    assert c.mailbox_number == 101 and c.is_active and c.recipients == [] and count_customers(db) == 1


def test_admin_can_change_customers(client, logged_in_as, customer):
    logged_in_as("admin")
    assert client.post(f"/customers/{customer.id}/number", data={"new_number": "555"}).status_code == 303


def test_logged_out_users_are_sent_to_login(client, customer):
    response = client.get("/customers/")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert client.get("/customers/", headers=HX).status_code == 401


def test_customers_cannot_use_staff_pages(client, auth, customer):
    auth.login(customer.email)
    assert client.get("/customers/").status_code == 403
    assert client.get(f"/customers/{customer.id}").status_code == 403


def test_no_route_deletes_a_customer_or_recipient(app):
    for rule in app.url_map.iter_rules():
        if rule.endpoint.split(".")[0] in ("customers", "recipients"):
            assert "DELETE" not in rule.methods, rule
            assert "delete" not in rule.rule and "delete" not in rule.endpoint, rule


def test_no_state_change_on_get(app):
    for rule in app.url_map.iter_rules():
        if rule.endpoint.split(".")[0] in ("customers", "recipients") and "GET" in rule.methods:
            assert rule.endpoint in {"customers.index", "customers.detail", "customers.create",
                                     "customers.edit", "recipients.edit"}, rule


@pytest.mark.parametrize("app_config", [{"WTF_CSRF_ENABLED": True}])
def test_csrf_is_required(client, make_staff, customer, db):
    import re

    staff = make_staff("operator")
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    token = token.group(1) if token else re.search(r'"X-CSRFToken": "([^"]+)"', page).group(1)
    client.post("/login", data={"email": staff.email, "password": "correct horse battery", "csrf_token": token})
    response = client.post(f"/customers/{customer.id}/number", data={"new_number": "555"})
    assert response.status_code == 400
    detail = client.get(f"/customers/{customer.id}").get_data(as_text=True)
    token = re.search(r'"X-CSRFToken": "([^"]+)"', detail).group(1)
    response = client.post(f"/customers/{customer.id}/number", data={"new_number": "555"},
                           headers={"X-CSRFToken": token, **HX})
    assert response.status_code == 204


def test_staff_nav_follows_the_role_and_marks_the_section(client, auth, make_staff):
    # The nav links are built once per role and reused: a second role must get its own.
    import re

    def nav(url):
        html = client.get(url).get_data(as_text=True)
        main_nav = html[html.index('aria-label="Main"'):html.index("</nav>")]
        links = re.findall(r'<a href="([^"]+)"[^>]*>([^<]+)</a>', main_nav)
        current = re.findall(r'<a href="[^"]+" aria-current="page">([^<]+)</a>', main_nav)
        return [label for _, label in links], current

    auth.login(make_staff("operator").email)
    labels, current = nav("/customers/")
    assert {"Customers", "Billing", "Audit log"} <= set(labels) and current == ["Customers"]
    auth.logout()
    auth.login(make_staff("mail_admin").email)
    for _ in range(2):
        labels, current = nav("/customers/")
        assert "Customers" in labels and current == ["Customers"]
        assert "Billing" not in labels and "Audit log" not in labels
    auth.logout()
    auth.login(make_staff("operator").email)
    assert "Audit log" in nav("/customers/")[0]
