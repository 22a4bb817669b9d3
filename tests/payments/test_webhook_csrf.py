"""With CSRF protection on (as in production), Stripe's webhook still gets through, forms do not without a token."""
import pytest

from spheremail.extensions import db
from spheremail.models import Invoice


@pytest.fixture
def app_config():
    return {"WTF_CSRF_ENABLED": True}


def test_webhook_is_csrf_exempt_but_pay_now_is_not(client, customer, gateway, make_invoice):
    invoice = make_invoice(customer)
    event = gateway.build_event("checkout.session.completed", {
        "id": "cs_test_csrf", "object": "checkout.session", "mode": "payment", "status": "complete",
        "payment_status": "paid", "amount_total": invoice.total_minor, "currency": "eur",
        "client_reference_id": str(invoice.id), "metadata": {"invoice_id": str(invoice.id)},
        "payment_intent": "pi_csrf"})
    assert gateway.send_event(event).status == 200
    db.session.expire_all()
    assert db.session.get(Invoice, invoice.id).status == "paid"
    # A portal form without its token is refused.
    login_page = client.get("/login").get_data(as_text=True)
    assert client.post(f"/portal/invoices/{invoice.id}/pay").status_code in (302, 400)
    assert "csrf_token" in login_page
