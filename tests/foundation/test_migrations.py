"""The Alembic migrations build exactly the schema the models describe."""
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import upgrade

from spheremail.extensions import db
from tests.conftest import make_test_app


def test_migrations_match_models(tmp_path, database_url):
    if database_url:
        url = database_url  # PostgreSQL: the session database, emptied first
    else:
        url = f"sqlite:///{tmp_path / 'migrated.sqlite3'}"
    app = make_test_app(url)
    with app.app_context():
        if database_url:
            db.drop_all()
            with db.engine.begin() as conn:
                conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
        upgrade()
        with db.engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                     db.metadata)
        if database_url:
            # Leave the session database as the other tests expect it.
            db.drop_all()
            with db.engine.begin() as conn:
                conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
            db.create_all()
        db.engine.dispose()
    assert diffs == [], f"models and migrations differ: {diffs}"
