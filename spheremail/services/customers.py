"""Customers on the operator's side: creation, mailbox numbers, deactivation, search.

Every function adds to ``db.session`` and leaves the commit to the caller. Errors the
user can fix raise :class:`CustomerError` with a message fit for the page.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import NamedTuple

from sqlalchemy import String, func, or_, select, text
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.visitors import iterate

from spheremail.extensions import db
from spheremail.models import Customer, CustomerStatus, MailboxNumberChange, User
from spheremail.models.base import today as utc_today
from spheremail.models.base import utcnow
from spheremail.models.user import Role, normalize_email
from spheremail.services import audit, hooks

FIRST_MAILBOX_NUMBER = 101
MAX_MAILBOX_NUMBER = 9_999_999
MAX_NAME = 100
MAX_COMPANY = 200
MAX_PHONE = 50
MAX_EMAIL = 254
PER_PAGE = 50
MAX_QUERY = 100

# Control characters break exports and e-mail headers; PostgreSQL refuses NUL outright.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_NUMBER_QUERY = re.compile(r"^#?([0-9]{1,7})$")

DEACTIVATION_MODES = ("now", "end_of_period", "date")


class CustomerError(ValueError):
    """A change that cannot be made; ``str(exc)`` is shown to the user.

    ``field`` names the form field the message belongs to, when there is one.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


# --- validation ---------------------------------------------------------------------------

def clean_text(value, label: str, max_length: int, *, required: bool, field: str) -> str | None:
    """Strip ``value`` and check it; returns None for an empty optional value.

    Any Unicode is welcome (templates escape it on output); control characters are not.
    """
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise CustomerError(f"{label} must be text.", field)
    value = value.strip()
    if _CONTROL.search(value):
        raise CustomerError(f"{label} contains characters that are not allowed.", field)
    if required and not value:
        raise CustomerError(f"Enter the {label.lower()}.", field)
    if len(value) > max_length:
        raise CustomerError(f"{label} is too long: at most {max_length} characters.", field)
    return value or None


def clean_email(value) -> str:
    """A trimmed, lower-cased email that looks like one (no DNS lookups)."""
    if not isinstance(value, str):
        raise CustomerError("Enter a valid email address.", "email")
    email = normalize_email(value)
    if not email:
        raise CustomerError("Enter the email address.", "email")
    if len(email) > MAX_EMAIL:
        raise CustomerError(f"The email address is too long: at most {MAX_EMAIL} characters.", "email")
    if _CONTROL.search(email) or not _EMAIL.match(email):
        raise CustomerError("Enter a valid email address, like name@example.com.", "email")
    return email


def clean_mailbox_number(value) -> int:
    """A whole number from 1 to 9,999,999."""
    if isinstance(value, bool):
        raise CustomerError("The mailbox number must be a whole number.", "mailbox_number")
    if isinstance(value, str):
        value = value.strip().lstrip("#")
        if not value.isascii() or not value.isdigit():
            raise CustomerError("The mailbox number must be a whole number.", "mailbox_number")
        value = int(value)
    if not isinstance(value, int):
        raise CustomerError("The mailbox number must be a whole number.", "mailbox_number")
    if not 1 <= value <= MAX_MAILBOX_NUMBER:
        raise CustomerError(f"The mailbox number must be between 1 and {MAX_MAILBOX_NUMBER:,}.",
                            "mailbox_number")
    return value


def _describe(customer: Customer) -> str:
    return f"{customer.full_name} ({customer.status})"


# --- mailbox numbers ------------------------------------------------------------------------

def _lock_numbers() -> None:
    """Serialize mailbox-number and email allocation until the transaction ends.

    "max + 1" is only correct if no one else allocates between our read and our insert.
    PostgreSQL: a transaction-scoped advisory lock. SQLite: take the database's write lock
    now (BEGIN IMMEDIATE) instead of at the first INSERT, so our read is already the
    writer's view. The unique constraints stay as the last line of defence.
    """
    conn = db.session.connection()
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(7310101)"))
    elif dialect == "sqlite":
        raw = conn.connection.driver_connection
        if not raw.in_transaction:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def next_free_mailbox_number() -> int:
    """The number a new customer gets: one above the highest in use, starting at 101.

    Numbers below the highest that were freed are not reused automatically: staff
    can give one explicitly.
    """
    highest = db.session.execute(select(func.max(Customer.mailbox_number))).scalar()
    number = max((highest or 0) + 1, FIRST_MAILBOX_NUMBER)
    if number > MAX_MAILBOX_NUMBER:
        raise CustomerError("Every mailbox number up to 9,999,999 is taken; give a free one explicitly.",
                            "mailbox_number")
    return number


def holder_of(number: int) -> Customer | None:
    """The customer (active or not) who has mailbox ``number``."""
    return db.session.execute(
        select(Customer).where(Customer.mailbox_number == number)
    ).scalar_one_or_none()


def _refuse_taken(number: int, customer: Customer | None = None) -> None:
    holder = holder_of(number)
    if holder is not None and holder is not customer:
        hint = " Change that customer's number first to free it." if not holder.is_active else ""
        raise CustomerError(f"Mailbox {number} belongs to {_describe(holder)}.{hint}", "mailbox_number")


def _flush(conflict_message: str) -> None:
    """Flush; a unique-constraint race that slipped past the checks becomes a CustomerError."""
    try:
        db.session.flush()
    except IntegrityError as exc:
        db.session.rollback()
        raise CustomerError(conflict_message) from exc


def change_mailbox_number(customer: Customer, new_number, actor=None) -> MailboxNumberChange:
    """Give ``customer`` mailbox ``new_number`` (any free number from 1 to 9,999,999).

    The old number becomes free. Raises CustomerError naming the holder when taken.
    Records a :class:`MailboxNumberChange` and the audit event ``mailbox_number_changed``.
    """
    new_number = clean_mailbox_number(new_number)
    if new_number == customer.mailbox_number:
        raise CustomerError(f"This customer already has mailbox {new_number}.", "mailbox_number")
    _lock_numbers()
    _refuse_taken(new_number, customer)
    old = customer.mailbox_number
    change = MailboxNumberChange(customer=customer, old_number=old, new_number=new_number,
                                 changed_by_id=getattr(actor, "id", None))
    customer.mailbox_number = new_number
    db.session.add(change)
    audit.record("mailbox_number_changed", f"Mailbox {old} → {new_number} for {customer.full_name}",
                 subject=customer, actor=actor)
    _flush(f"Mailbox {new_number} was taken a moment ago. Choose another number.")
    return change


# --- creating and editing -------------------------------------------------------------------

def _refuse_taken_email(email: str, user: User | None = None) -> None:
    existing = db.session.execute(select(User).filter_by(email=email)).scalar_one_or_none()
    if existing is None or existing is user:
        return
    if existing.customer is not None:
        c = existing.customer
        raise CustomerError(f"The email {email} already belongs to {c.full_name} "
                            f"(mailbox {c.mailbox_number}, {c.status}).", "email")
    raise CustomerError(f"The email {email} already belongs to a staff account.", "email")


def create_customer(first_name, last_name, email, company=None, phone=None, mailbox_number=None,
                    password=None, signed_up_via="staff", actor=None) -> Customer:
    """Create an active customer with a login and a mailbox number; the caller commits.

    ``mailbox_number`` defaults to :func:`next_free_mailbox_number`. Without ``password``
    the account is "never activated" until the customer sets one (password reset).
    Subscribers of ``customer_created`` are told after the commit.
    """
    first_name = clean_text(first_name, "First name", MAX_NAME, required=True, field="first_name")
    last_name = clean_text(last_name, "Last name", MAX_NAME, required=True, field="last_name")
    company = clean_text(company, "Company", MAX_COMPANY, required=False, field="company")
    phone = clean_text(phone, "Phone", MAX_PHONE, required=False, field="phone")
    email = clean_email(email)
    if mailbox_number not in (None, ""):
        mailbox_number = clean_mailbox_number(mailbox_number)
    else:
        mailbox_number = None
    if password is not None:
        from spheremail.services.accounts import AccountError, validate_password

        try:
            validate_password(password)
        except AccountError as exc:
            raise CustomerError(str(exc), "password") from exc

    _lock_numbers()
    _refuse_taken_email(email)
    if mailbox_number is None:
        mailbox_number = next_free_mailbox_number()
    else:
        _refuse_taken(mailbox_number)

    user = User(email=email, role=Role.CUSTOMER.value)
    if password is not None:
        user.set_password(password)
    customer = Customer(user=user, first_name=first_name, last_name=last_name, company=company,
                        phone=phone, mailbox_number=mailbox_number,
                        status=CustomerStatus.ACTIVE.value, signed_up_via=signed_up_via)
    db.session.add_all([user, customer])
    db.session.add(MailboxNumberChange(customer=customer, old_number=None, new_number=mailbox_number,
                                       changed_by_id=getattr(actor, "id", None)))
    _flush("That email or mailbox number was taken a moment ago. Check and try again.")
    audit.record("customer_created", f"{customer.full_name}, mailbox {mailbox_number} "
                 f"(via {signed_up_via})", subject=customer, actor=actor)
    hooks.customer_created(customer)
    return customer


def update_customer(customer: Customer, *, first_name, last_name, email, company=None, phone=None,
                    actor=None) -> list[str]:
    """Change a customer's profile and login email; returns the names of changed fields.

    Audited as ``customer_updated`` when anything changed.
    """
    values = {
        "first_name": clean_text(first_name, "First name", MAX_NAME, required=True, field="first_name"),
        "last_name": clean_text(last_name, "Last name", MAX_NAME, required=True, field="last_name"),
        "company": clean_text(company, "Company", MAX_COMPANY, required=False, field="company"),
        "phone": clean_text(phone, "Phone", MAX_PHONE, required=False, field="phone"),
    }
    email = clean_email(email)
    changed = [name for name, value in values.items() if getattr(customer, name) != value]
    if email != customer.user.email:
        _lock_numbers()
        _refuse_taken_email(email, customer.user)
        customer.user.email = email
        changed.append("email")
    for name, value in values.items():
        setattr(customer, name, value)
    if changed:
        audit.record("customer_updated", f"{customer.full_name}: changed {', '.join(changed)}",
                     subject=customer, actor=actor)
        _flush(f"The email {email} was taken a moment ago.")
    return changed


# --- deactivation -----------------------------------------------------------------------------

def end_of_billing_period(today: dt.date) -> dt.date:
    """The day a customer cancelled "at the end of the billing period" becomes inactive.

    The billing period is the calendar month (the monthly bill run invoices whole months),
    so this is the 1st of the next month: the customer keeps the service through the last
    day of the current month and is inactive from the 1st.
    """
    if today.month == 12:
        return dt.date(today.year + 1, 1, 1)
    return dt.date(today.year, today.month + 1, 1)


def _deactivate(customer: Customer) -> None:
    customer.status = CustomerStatus.INACTIVE.value
    customer.deactivated_at = utcnow()
    customer.deactivate_on = None
    customer.deactivate_reason = None


def deactivate_now(customer: Customer, actor=None) -> None:
    """Make ``customer`` inactive at once (records are kept; the portal is closed to them)."""
    if not customer.is_active:
        raise CustomerError(f"{customer.full_name} is already inactive.")
    _deactivate(customer)
    audit.record("customer_deactivated", f"{customer.full_name} deactivated now",
                 subject=customer, actor=actor)


def schedule_deactivation(customer: Customer, mode: str, on_date: dt.date | None = None, actor=None,
                          today: dt.date | None = None) -> dt.date | None:
    """Cancel ``customer``: ``mode`` is "now", "end_of_period" or "date".

    - "end_of_period": inactive from the 1st of next month (the billing period is the
      calendar month; see :func:`end_of_billing_period`).
    - "date": inactive from ``on_date``, which must be today or later; today means now.
    - "now": same as :func:`deactivate_now`.

    Returns the scheduled date, or None when the customer was deactivated at once.
    A later call replaces an earlier schedule. The daily job ``apply-cancellations``
    applies schedules on their day.
    """
    today = today or utc_today()
    if mode not in DEACTIVATION_MODES:
        raise CustomerError("Choose when the customer becomes inactive.", "mode")
    if not customer.is_active:
        raise CustomerError(f"{customer.full_name} is already inactive.")
    if mode == "now":
        deactivate_now(customer, actor=actor)
        return None
    if mode == "end_of_period":
        when = end_of_billing_period(today)
    else:
        if not isinstance(on_date, dt.date):
            raise CustomerError("Choose the date the customer becomes inactive.", "on_date")
        if isinstance(on_date, dt.datetime):
            on_date = on_date.date()
        if on_date < today:
            raise CustomerError("The date cannot be in the past.", "on_date")
        if on_date == today:
            deactivate_now(customer, actor=actor)
            return None
        when = on_date
    customer.deactivate_on = when
    customer.deactivate_reason = mode
    audit.record("deactivation_scheduled",
                 f"{customer.full_name} becomes inactive on {when.isoformat()} "
                 f"({'end of billing period' if mode == 'end_of_period' else 'chosen date'})",
                 subject=customer, actor=actor)
    return when


def withdraw_scheduled_deactivation(customer: Customer, actor=None) -> None:
    """Cancel a scheduled deactivation before it takes effect."""
    if customer.deactivate_on is None:
        raise CustomerError(f"{customer.full_name} has no scheduled deactivation.")
    when = customer.deactivate_on
    customer.deactivate_on = None
    customer.deactivate_reason = None
    audit.record("deactivation_withdrawn",
                 f"{customer.full_name}: deactivation of {when.isoformat()} withdrawn",
                 subject=customer, actor=actor)


def reactivate(customer: Customer, actor=None) -> None:
    """Make an inactive customer active again, with the mailbox number they hold now."""
    if customer.is_active:
        raise CustomerError(f"{customer.full_name} is already active.")
    customer.status = CustomerStatus.ACTIVE.value
    customer.deactivated_at = None
    audit.record("customer_reactivated", f"{customer.full_name} reactivated",
                 subject=customer, actor=actor)


def apply_due_deactivations(today: dt.date) -> list[Customer]:
    """Deactivate every active customer whose scheduled date is ``today`` or earlier.

    Used by the daily job ``apply-cancellations``; a missed day is caught up because
    earlier dates are included. The caller commits.
    """
    due = db.session.execute(
        select(Customer)
        .where(Customer.status == CustomerStatus.ACTIVE.value)
        .where(Customer.deactivate_on.is_not(None), Customer.deactivate_on <= today)
        .order_by(Customer.mailbox_number)
    ).scalars().all()
    for customer in due:
        when = customer.deactivate_on
        _deactivate(customer)
        audit.record("customer_deactivated",
                     f"{customer.full_name} deactivated as scheduled for {when.isoformat()}",
                     subject=customer, actor=None)
    return list(due)


# --- search -----------------------------------------------------------------------------------

STATUS_FILTERS = ("active", "inactive", "all")


class unicode_lower(FunctionElement):
    """lower() that folds every letter, not just ASCII ("Å" → "å").

    PostgreSQL's lower() already does; SQLite's built-in only folds A-Z, so on SQLite
    this calls a Python function registered on the connection (see ``_sqlite_functions``).
    """

    type = String()
    inherit_cache = True
    name = "unicode_lower"


@compiles(unicode_lower)
def _compile_lower(element, compiler, **kw):
    return f"lower({compiler.process(element.clauses, **kw)})"


@compiles(unicode_lower, "sqlite")
def _compile_lower_sqlite(element, compiler, **kw):
    return f"sm_lower({compiler.process(element.clauses, **kw)})"


class ascii_lower(FunctionElement):
    """lower() for a column compared with LIKE to an all-ASCII, lower-case pattern.

    PostgreSQL: lower(). SQLite: the bare column, because SQLite's LIKE already ignores
    the case of ASCII letters (we never set ``case_sensitive_like``) and its lower()
    folds nothing else, so both find the same rows; skipping the call on every row made
    a word search over 10,000 customers about twice as fast (bench/pages.py).
    """

    type = String()
    inherit_cache = True
    name = "ascii_lower"


@compiles(ascii_lower)
def _compile_ascii_lower(element, compiler, **kw):
    return f"lower({compiler.process(element.clauses, **kw)})"


@compiles(ascii_lower, "sqlite")
def _compile_ascii_lower_sqlite(element, compiler, **kw):
    return compiler.process(element.clauses, **kw)


def _sqlite_functions() -> None:
    """Register ``sm_lower`` on this session's SQLite connection (cheap; idempotent)."""
    conn = db.session.connection()
    if conn.dialect.name == "sqlite":
        conn.connection.driver_connection.create_function(
            "sm_lower", 1, lambda v: v.lower() if isinstance(v, str) else v, deterministic=True)


def _like_escape(word: str) -> str:
    return word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# The search is written against the tables, not the mapped classes: Core statements skip
# the ORM's per-statement work (about a fifth of the list page's database time), and the
# list only needs plain rows (see CustomerRow).
_CUSTOMERS = Customer.__table__
_USERS = User.__table__
_CUSTOMERS_WITH_USERS = _CUSTOMERS.join(_USERS, _CUSTOMERS.c.user_id == _USERS.c.id)


def _number_condition(digits: str):
    """Exact number, or any number starting with ``digits`` as index-friendly ranges."""
    value = int(digits)
    if digits.startswith("0") or value == 0:
        return _CUSTOMERS.c.mailbox_number == value
    ranges = []
    for extra in range(0, 8 - len(digits)):
        low = value * 10 ** extra
        high = min(low + 10 ** extra - 1, MAX_MAILBOX_NUMBER)
        if low > MAX_MAILBOX_NUMBER:
            break
        ranges.append(_CUSTOMERS.c.mailbox_number == low if extra == 0
                      else _CUSTOMERS.c.mailbox_number.between(low, high))
    return or_(*ranges)


def search_conditions(q: str | None, status: str | None) -> list:
    """WHERE conditions for :func:`search_customers` (customers joined with users)."""
    conditions = []
    if status in ("active", "inactive"):
        conditions.append(_CUSTOMERS.c.status == status)
    # Control characters can match nothing (they are refused on save) and PostgreSQL
    # rejects NUL in a parameter: drop them rather than fail.
    q = _CONTROL.sub(" ", q or "").strip()[:MAX_QUERY]
    if not q:
        return conditions
    number = _NUMBER_QUERY.match(q)
    if number:
        conditions.append(_number_condition(number.group(1)))
        return conditions
    # Every word must match one of the fields: "ada love" finds Ada Lovelace.
    # Emails are stored lower-cased; names are folded with a Unicode-aware lower() on both
    # databases, so "ångström" finds "Ångström" on SQLite too.
    for word in q.lower().split()[:5]:
        pattern = f"%{_like_escape(word)}%"
        # For an ASCII word the built-in, ASCII-only folding finds the same rows (folding a
        # non-ASCII letter gives a non-ASCII one) and runs in C: on SQLite the Python
        # sm_lower made a search over 10,000 customers about 5x slower (bench/pages.py).
        # Only words with non-ASCII letters need it.
        fold = ascii_lower if word.isascii() else unicode_lower
        conditions.append(or_(
            fold(_CUSTOMERS.c.first_name).like(pattern, escape="\\"),
            fold(_CUSTOMERS.c.last_name).like(pattern, escape="\\"),
            fold(_CUSTOMERS.c.company).like(pattern, escape="\\"),
            _USERS.c.email.like(pattern, escape="\\"),
        ))
    return conditions


class CustomerRow(NamedTuple):
    """One line of the staff customer list: only the columns the list shows.

    Building 50 of these costs about a third of building 50 Customer + User ORM objects;
    ``full_name``, ``email`` and ``is_active`` read as they do on :class:`Customer`.
    """

    id: int
    mailbox_number: int
    first_name: str
    last_name: str
    company: str | None
    status: str
    deactivate_on: dt.date | None
    email: str

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    @property
    def is_active(self) -> bool:
        return self.status == CustomerStatus.ACTIVE.value


def _count_active_sqlite():
    """SELECT of the number of active customers, the cheap way on SQLite.

    The plain list shows the active customers, usually nearly all of them, and
    ``count(*) WHERE status = 'active'`` walks their whole index range (~0.3 ms for
    10,000). SQLite counts a whole table almost for free, and the customers who are
    not active are few and found through the status index (two ranges, so any other
    status value counts as "not active" too): total minus those is exact and ~4x faster.
    PostgreSQL counts a whole table by reading it, so it keeps the plain WHERE.
    """
    cols = _CUSTOMERS.c
    everyone = select(func.count()).select_from(_CUSTOMERS).scalar_subquery()
    others = (select(func.count()).select_from(_CUSTOMERS)
              .where(or_(cols.status < CustomerStatus.ACTIVE.value,
                         cols.status > CustomerStatus.ACTIVE.value))
              .scalar_subquery())
    return select(everyone - others)


def search_customers(q: str | None = None, status: str | None = "active", page: int = 1,
                     per_page: int = PER_PAGE) -> tuple[list[CustomerRow], int]:
    """One page of customers matching ``q``, ordered by mailbox number, and the total.

    ``q`` matches first name, last name, company and email (case-insensitive, every
    word must match), or — when it is digits (optionally after "#") — the mailbox
    number exactly or by prefix. ``status`` is "active", "inactive" or "all".
    One query whatever the page size (the rows, users joined in, with the total as a
    subquery column), plus a plain count when the page is empty (no match, or past the end).
    The rows are :class:`CustomerRow` tuples, not ORM objects: the list only shows them.
    """
    conditions = search_conditions(q, status)
    _sqlite_functions()
    # Every customer has exactly one user, so the count joins users only when a word search
    # looks at emails: without the join (and with count(*)) SQLite counts from the
    # (status, mailbox_number) index alone, ~0.4 ms instead of ~3 ms for 10,000 customers.
    counting = select(func.count()).select_from(_CUSTOMERS).where(*conditions)
    if any(getattr(part, "table", None) is _USERS for c in conditions for part in iterate(c)):
        counting = select(func.count()).select_from(_CUSTOMERS_WITH_USERS).where(*conditions)
    elif status == "active" and len(conditions) == 1 and db.session.get_bind().dialect.name == "sqlite":
        counting = _count_active_sqlite()
    page = max(1, int(page or 1))
    offset = (page - 1) * per_page
    if offset > MAX_MAILBOX_NUMBER:  # past any list there can be (and past SQLite's integers)
        return [], db.session.execute(counting).scalar_one()
    cols = _CUSTOMERS.c
    # The count rides along as an uncorrelated subquery (computed once by both databases;
    # correlate(None), or SQLAlchemy would tie its customers to the outer row):
    # one statement instead of two saves the per-statement overhead on every page.
    rows = db.session.execute(
        select(cols.id, cols.mailbox_number, cols.first_name, cols.last_name, cols.company, cols.status,
               cols.deactivate_on, _USERS.c.email, counting.correlate(None).scalar_subquery())
        .select_from(_CUSTOMERS_WITH_USERS)
        .where(*conditions).order_by(cols.mailbox_number).offset(offset).limit(per_page)
    ).all()
    if not rows:
        return [], db.session.execute(counting).scalar_one()
    return [CustomerRow._make(row[:8]) for row in rows], rows[0][8]
