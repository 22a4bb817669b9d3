"""Staff accounts and jobs from the command line."""
from spheremail.models import JobSlot, User


def test_create_user_with_password(app, db):
    result = app.test_cli_runner().invoke(args=["create-user", "--email", "Boss@Example.test",
                                                "--role", "operator", "--password", "a long password"])
    assert result.exit_code == 0, result.output
    user = db.session.execute(db.select(User).filter_by(email="boss@example.test")).scalar_one()
    assert user.role == "operator" and user.check_password("a long password")


def test_create_user_prompts_for_password(app, db):
    result = app.test_cli_runner().invoke(args=["create-user", "--email", "m@example.test", "--role", "mail_admin"],
                                          input="prompted password\nprompted password\n")
    assert result.exit_code == 0, result.output
    assert "Password" in result.output and "prompted password" not in result.output
    user = db.session.execute(db.select(User).filter_by(email="m@example.test")).scalar_one()
    assert user.role == "mail_admin" and user.check_password("prompted password")


def test_create_user_refuses_duplicates_bad_roles_and_short_passwords(app, db):
    runner = app.test_cli_runner()
    assert runner.invoke(args=["create-user", "--email", "a@example.test", "--role", "admin",
                               "--password", "a long password"]).exit_code == 0
    dup = runner.invoke(args=["create-user", "--email", "A@EXAMPLE.test", "--role", "admin",
                              "--password", "a long password"])
    assert dup.exit_code != 0 and "already exists" in dup.output
    bad_role = runner.invoke(args=["create-user", "--email", "b@example.test", "--role", "customer",
                                   "--password", "a long password"])
    assert bad_role.exit_code != 0
    short = runner.invoke(args=["create-user", "--email", "c@example.test", "--role", "admin", "--password", "x"])
    assert short.exit_code != 0 and "at least" in short.output
    assert db.session.execute(db.select(db.func.count(User.id))).scalar_one() == 1


def test_jobs_list_and_run(app, db):
    runner = app.test_cli_runner()
    listed = runner.invoke(args=["jobs", "list"])
    assert listed.exit_code == 0, listed.output
    assert "apply-cancellations" in listed.output

    first = runner.invoke(args=["jobs", "run", "apply-cancellations", "--slot", "2030-01-01"])
    assert first.exit_code == 0, first.output
    assert "apply-cancellations 2030-01-01:" in first.output
    again = runner.invoke(args=["jobs", "run", "apply-cancellations", "--slot", "2030-01-01"])
    assert "not run" in again.output
    slots = db.session.execute(db.select(JobSlot).filter_by(job_name="apply-cancellations")).scalars().all()
    assert [s.slot_key for s in slots] == ["2030-01-01"]

    unknown = runner.invoke(args=["jobs", "run", "no-such-job"])
    assert unknown.exit_code != 0 and "no job named" in unknown.output
