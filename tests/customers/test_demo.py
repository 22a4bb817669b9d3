"""The demo seed: idempotent, one password kept in the instance folder, customers in every state."""
from __future__ import annotations

from spheremail.models import Customer, Recipient, User
from spheremail.services.demo import OPERATOR_EMAIL, seed_demo


def test_seed_demo_is_idempotent(app, db, tmp_path, client, auth):
    app.instance_path = str(tmp_path / "instance")
    login = seed_demo()
    db.session.commit()
    password_file = tmp_path / "instance" / "demo_operator_password"
    assert password_file.read_text().strip() == login["password"]
    assert oct(password_file.stat().st_mode & 0o777) == "0o600"
    counts = (db.session.query(Customer).count(), db.session.query(Recipient).count(), db.session.query(User).count())
    assert seed_demo() == login
    db.session.commit()
    assert (db.session.query(Customer).count(), db.session.query(Recipient).count(),
            db.session.query(User).count()) == counts
    assert login["email"] == OPERATOR_EMAIL and counts[0] == 12

    customers = db.session.query(Customer).all()
    assert sorted(c.mailbox_number for c in customers) == list(range(101, 113))
    assert sum(not c.is_active for c in customers) == 1
    assert sum(c.deactivate_on is not None for c in customers) == 2
    assert {r.status for r in db.session.query(Recipient)} == {"free", "paid", "inactive"}
    roles = {u.role for u in db.session.query(User).filter(User.email.like("%@demo.spheremail.test"))}
    assert {"operator", "admin", "mail_admin", "customer"} <= roles

    # The printed login works, even after someone changed that password.
    operator = db.session.query(User).filter_by(email=OPERATOR_EMAIL).one()
    operator.set_password("something else entirely")
    db.session.commit()
    seed_demo()
    db.session.commit()
    assert auth.login(login["email"], login["password"]).status_code == 302


def test_seed_demo_cli(app, db, tmp_path):
    app.instance_path = str(tmp_path)
    runner = app.test_cli_runner()
    first = runner.invoke(args=["seed-demo"])
    second = runner.invoke(args=["seed-demo"])
    assert first.exit_code == 0, first.output
    assert OPERATOR_EMAIL in first.output and first.output == second.output
