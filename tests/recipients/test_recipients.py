"""Additional recipients: services, the staff routes, the inline status change, the setting."""
from __future__ import annotations

import pytest

from spheremail.models import AuditEvent, Recipient, Setting
from spheremail.services import recipients as service
from spheremail.services.customers import CustomerError

HX = {"HX-Request": "true"}


def test_default_status_comes_from_the_setting(db, customer):
    assert service.add_recipient(customer, "A", "One").status == "paid"
    Setting.put("new_recipient_status", "free")
    db.session.commit()
    assert service.add_recipient(customer, "B", "Two").status == "free"
    assert service.add_recipient(customer, "C", "Three", status="inactive").status == "inactive"


def test_add_update_and_status_are_audited(db, customer, operator):
    r = service.add_recipient(customer, " Mary ", " Hawes ", company=" Navy ", actor=operator)
    assert (r.first_name, r.last_name, r.company) == ("Mary", "Hawes", "Navy")
    assert service.update_recipient(r, "Mary", "Hawes-Smith", None, actor=operator) == ["last_name", "company"]
    assert service.set_recipient_status(r, "free", actor=operator) is True
    assert service.set_recipient_status(r, "free", actor=operator) is False
    db.session.commit()
    events = db.session.execute(db.select(AuditEvent).order_by(AuditEvent.id)).scalars().all()
    assert [e.action for e in events] == ["recipient_added", "recipient_updated", "recipient_status_changed"]
    assert "paid → free" in events[-1].summary and events[-1].actor_id == operator.id


@pytest.mark.parametrize("kw", [
    {"first_name": ""}, {"last_name": " "}, {"first_name": "x" * 101}, {"company": "c" * 201},
    {"status": "vip"}, {"first_name": "A\x00"},
])
def test_bad_recipient_input(db, customer, kw):
    values = {"first_name": "A", "last_name": "B", **kw}
    with pytest.raises(CustomerError):
        service.add_recipient(customer, **values)


def test_status_change_rejects_unknown_status(db, customer):
    r = service.add_recipient(customer, "A", "B")
    with pytest.raises(CustomerError):
        service.set_recipient_status(r, "deleted")


# --- routes -----------------------------------------------------------------------------------

def test_add_recipient_route(client, logged_in_operator, customer, db):
    url = f"/customers/{customer.id}/recipients"
    response = client.post(url, headers=HX, data={"first_name": "Mary", "last_name": "Hawes",
                                                   "company": "", "status": "free"})
    assert response.status_code == 204
    assert response.headers["HX-Redirect"].endswith(f"/customers/{customer.id}")
    r = db.session.execute(db.select(Recipient)).scalar_one()
    assert (r.full_name, r.status, r.company) == ("Mary Hawes", "free", None)


@pytest.mark.parametrize("data, message", [
    ({"first_name": "", "last_name": "B", "status": "free"}, "Enter the first name."),
    ({"first_name": "A", "last_name": "", "status": "free"}, "Enter the last name."),
    ({"first_name": "A" * 101, "last_name": "B", "status": "free"}, "at most 100"),
    ({"first_name": "A", "last_name": "B", "company": "c" * 201, "status": "free"}, "at most 200"),
    ({"first_name": "A", "last_name": "B", "status": "gold"}, "Not a valid choice"),
    ({"first_name": "A\x07", "last_name": "B", "status": "free"}, "not allowed"),
])
def test_add_recipient_bad_input(client, logged_in_operator, customer, db, templates, data, message):
    response = client.post(f"/customers/{customer.id}/recipients", headers=HX, data=data)
    assert response.status_code == 200
    assert templates == ["recipients/partials/add_form.html"]
    assert message in response.get_data(as_text=True)
    assert db.session.execute(db.select(Recipient)).first() is None


def test_add_form_starts_at_the_operators_default(client, logged_in_operator, customer, db):
    Setting.put("new_recipient_status", "free")
    db.session.commit()
    html = client.get(f"/customers/{customer.id}").get_data(as_text=True)
    form = html[html.index('id="recipient-add-form"'):]
    assert '<option selected value="free">' in form or 'value="free" selected' in form


def test_inline_status_change(client, logged_in_operator, customer, db, templates):
    r = service.add_recipient(customer, "<b>Mary</b>", "Hawes")
    db.session.commit()
    url = f"/customers/{customer.id}/recipients/{r.id}/status"
    response = client.post(url, headers=HX, data={"status": "inactive"})
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert templates == ["recipients/partials/recipient_row.html"]
    assert html.strip().startswith(f'<tr id="recipient-{r.id}">')
    assert 'value="inactive" selected' in html and "Saved" in html
    assert "<b>Mary</b>" not in html and "&lt;b&gt;Mary&lt;/b&gt;" in html
    db.session.expire_all()
    assert db.session.get(Recipient, r.id).status == "inactive"
    assert db.session.execute(db.select(AuditEvent).filter_by(action="recipient_status_changed")).scalar_one()
    # A bad value: the row comes back with the message, nothing changes.
    html = client.post(url, headers=HX, data={"status": "deleted"}).get_data(as_text=True)
    assert "Not a valid choice" in html and 'value="inactive" selected' in html
    # Without JavaScript: a redirect back to the customer.
    response = client.post(url, data={"status": "paid"})
    assert response.status_code == 303
    db.session.expire_all()
    assert db.session.get(Recipient, r.id).status == "paid"


def test_edit_recipient(client, logged_in_operator, customer, db):
    r = service.add_recipient(customer, "Mary", "Hawes")
    db.session.commit()
    url = f"/customers/{customer.id}/recipients/{r.id}/edit"
    assert "Edit recipient Mary Hawes" in client.get(url).get_data(as_text=True)
    response = client.post(url, data={"first_name": "", "last_name": "Hawes"})
    assert response.status_code == 200 and "Enter the first name." in response.get_data(as_text=True)
    assert client.post(url, data={"first_name": "Mary", "last_name": "Hawes-Smith", "company": "Navy"}).status_code == 303
    db.session.expire_all()
    assert db.session.get(Recipient, r.id).full_name == "Mary Hawes-Smith"


def test_a_recipient_of_another_customer_is_not_found(client, logged_in_operator, customer, make_customer, db):
    other = make_customer("Other", "Customer")
    r = service.add_recipient(other, "Not", "Yours")
    db.session.commit()
    assert client.get(f"/customers/{customer.id}/recipients/{r.id}/edit").status_code == 404
    assert client.post(f"/customers/{customer.id}/recipients/{r.id}/status", data={"status": "free"}).status_code == 404


def test_mail_admin_cannot_change_recipients(client, logged_in_as, customer, db):
    r = service.add_recipient(customer, "Mary", "Hawes")
    db.session.commit()
    logged_in_as("mail_admin")
    html = client.get(f"/customers/{customer.id}").get_data(as_text=True)
    assert "Mary Hawes" in html and "<select" not in html
    assert client.post(f"/customers/{customer.id}/recipients/{r.id}/status", headers=HX,
                       data={"status": "free"}).status_code == 403
    assert client.get(f"/customers/{customer.id}/recipients/{r.id}/edit").status_code == 403
    db.session.expire_all()
    assert db.session.get(Recipient, r.id).status == "paid"


# --- operator settings --------------------------------------------------------------------------

def test_settings_page(client, logged_in_operator, db):
    import re

    html = client.get("/staff/settings").get_data(as_text=True)
    assert re.search(r'<input checked[^>]*value="paid"', html)
    response = client.post("/staff/settings", data={"new_recipient_status": "inactive"})
    assert response.status_code == 200 and "Not a valid choice" in response.get_data(as_text=True)
    response = client.post("/staff/settings", data={})
    assert response.status_code == 200 and "Choose free or paid" in response.get_data(as_text=True)
    assert Setting.get("new_recipient_status") == "paid"
    assert client.post("/staff/settings", data={"new_recipient_status": "free"}).status_code == 303
    db.session.expire_all()
    assert Setting.get("new_recipient_status") == "free"
    assert db.session.execute(db.select(AuditEvent).filter_by(action="setting_changed")).scalar_one()
