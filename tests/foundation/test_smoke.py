"""The app boots, logs staff in, and refuses views that declare no access."""


def test_login_page_renders(client):
    response = client.get("/login")
    assert response.status_code == 200
    assert b"Log in" in response.data


def test_operator_can_log_in(client, operator, auth):
    response = auth.login(operator.email)
    assert response.status_code == 302


def test_wrong_password_gives_clear_message(client, operator, auth):
    response = auth.login(operator.email, "nope-nope-nope")
    assert response.status_code == 200
    assert b"do not match" in response.data


def test_smtp_fixture_receives_mail(app, smtp_server):
    from spheremail.services.mail import send_email

    app.jinja_env.from_string  # templates are files; use a tiny inline one through a loader
    from jinja2 import DictLoader, ChoiceLoader

    app.jinja_loader = ChoiceLoader([DictLoader({"email/t.txt": "Hello {{ name }}"}), app.jinja_loader])
    app.jinja_env.loader = app.jinja_loader
    with app.test_request_context():
        send_email("x@example.test", "Hi", "email/t.txt", name="Ada")
    assert len(smtp_server.messages) == 1
    assert "Hello Ada" in smtp_server.messages[0].get_content()
