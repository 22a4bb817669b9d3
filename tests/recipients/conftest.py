from tests.customers.conftest import customer, logged_in_as, query_counter, templates  # noqa: F401
