"""Exact money: amounts are integers in the currency's minor unit (cents), never floats.

User input is parsed strictly. "12", "12.5" and "12.50" are accepted; anything that could
be read two ways is refused with a message that says what to type instead: thousands
separators ("1,234" or "1.234,56"), a decimal comma ("12,50"), currency symbols or codes
("€12", "12 EUR"), signs, exponents, more decimals than the currency has, and amounts
above :data:`MAX_AMOUNT`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

# Digits of the minor unit per ISO 4217 code. Billing offers the two-decimal ones
# (see BILLING_CURRENCIES) so a change of currency never re-scales stored prices.
CURRENCY_EXPONENTS: dict[str, int] = {
    "EUR": 2, "USD": 2, "GBP": 2, "CHF": 2, "SEK": 2, "NOK": 2, "DKK": 2, "PLN": 2, "CZK": 2,
    "CAD": 2, "AUD": 2, "NZD": 2, "ZAR": 2, "JPY": 0, "KRW": 0, "BHD": 3, "KWD": 3,
}
BILLING_CURRENCIES = ("EUR", "USD", "GBP", "CHF", "SEK", "NOK", "DKK", "PLN", "CZK", "CAD", "AUD", "NZD", "ZAR")
SYMBOLS = {"EUR": "€", "USD": "$", "GBP": "£"}

# The largest amount any billing form accepts, in major units (a sanity bound, not a business rule).
MAX_AMOUNT = Decimal("1000000")

_PLAIN = re.compile(r"^[0-9]+(?:\.[0-9]+)?$")
_SYMBOL_CHARS = re.compile(r"[€$£¥₹₩¤]")
_LETTERS = re.compile(r"[A-Za-z]{3}")


class MoneyError(ValueError):
    """The text is not an amount we accept; the message is shown to the user as is."""


def exponent(currency: str) -> int:
    """Digits after the decimal point for ``currency`` (2 when unknown)."""
    return CURRENCY_EXPONENTS.get((currency or "").upper(), 2)


def parse_amount(text: str | None, currency: str, *, allow_zero: bool = True,
                 maximum: Decimal = MAX_AMOUNT) -> int:
    """Parse user input into integer minor units of ``currency``; raise MoneyError with a clear message.

    >>> parse_amount("12.5", "EUR")
    1250
    """
    digits = exponent(currency)
    example = "12" if digits == 0 else "12." + "5" + "0" * (digits - 1)
    raw = (text or "").strip()
    if not raw:
        raise MoneyError("Enter an amount.")
    if len(raw) > 30:
        raise MoneyError("That amount is too long.")
    if raw.startswith("-"):
        raise MoneyError("The amount cannot be negative.")
    if _SYMBOL_CHARS.search(raw) or any(w.upper() in CURRENCY_EXPONENTS for w in _LETTERS.findall(raw)):
        raise MoneyError(f"Enter the number only, without a currency symbol or code (for example {example}).")
    if not _PLAIN.match(raw):
        if "," in raw or " " in raw or "'" in raw or raw.count(".") > 1:
            raise MoneyError(f"Enter the amount without thousands separators, with a dot for decimals "
                             f"(for example 1234.56).")
        raise MoneyError(f"Enter an amount as a number, for example {example}.")
    value = Decimal(raw)
    places = len(raw.partition(".")[2])
    if places > digits:
        if digits == 0:
            raise MoneyError(f"{currency} amounts have no decimals.")
        raise MoneyError(f"Use at most {digits} decimals for {currency}.")
    if value > maximum:
        raise MoneyError(f"The amount cannot be more than {format_money(to_minor(maximum, currency), currency)}.")
    if value == 0 and not allow_zero:
        raise MoneyError("The amount must be more than zero.")
    return to_minor(value, currency)


def to_minor(value: Decimal, currency: str) -> int:
    """An exact Decimal in major units to integer minor units (raises if it does not fit exactly)."""
    scaled = value.scaleb(exponent(currency))
    if scaled != scaled.to_integral_value():
        raise MoneyError(f"Use at most {exponent(currency)} decimals for {currency}.")
    return int(scaled)


def to_decimal(minor: int, currency: str) -> Decimal:
    """Integer minor units to an exact Decimal in major units."""
    return Decimal(int(minor)).scaleb(-exponent(currency))


def format_amount(minor: int, currency: str) -> str:
    """Plain number with the currency's decimals, for form values and exports: ``1234.50``."""
    digits = exponent(currency)
    value = to_decimal(minor, currency)
    return f"{value:.{digits}f}"


def format_money(minor: int | None, currency: str) -> str:
    """For people: ``€1,234.50``, or ``SEK 1,234.50`` when the currency has no common symbol."""
    if minor is None:
        return ""
    digits = exponent(currency)
    value = to_decimal(minor, currency)
    sign = "-" if value < 0 else ""
    number = f"{abs(value):,.{digits}f}"
    symbol = SYMBOLS.get(currency.upper())
    return f"{sign}{symbol}{number}" if symbol else f"{sign}{currency.upper()} {number}"


@dataclass(frozen=True)
class Money:
    """An amount in one currency, exact. Adding different currencies is an error."""

    minor: int
    currency: str

    @classmethod
    def parse(cls, text: str | None, currency: str, **kw) -> "Money":
        """Strictly parse user input (see :func:`parse_amount`)."""
        return cls(parse_amount(text, currency, **kw), currency)

    def __add__(self, other: "Money") -> "Money":
        if not isinstance(other, Money) or other.currency != self.currency:
            raise TypeError("cannot add amounts of different currencies")
        return Money(self.minor + other.minor, self.currency)

    def __mul__(self, quantity: int) -> "Money":
        if not isinstance(quantity, int):
            raise TypeError("money is multiplied by whole quantities only")
        return Money(self.minor * quantity, self.currency)

    @property
    def decimal(self) -> Decimal:
        return to_decimal(self.minor, self.currency)

    def __str__(self) -> str:
        return format_money(self.minor, self.currency)
