"""Strict parsing of amounts typed by people, and exact formatting."""
from decimal import Decimal

import pytest

from spheremail.money import Money, MoneyError, format_amount, format_money, parse_amount


@pytest.mark.parametrize("text, minor", [
    ("12", 1200), ("12.5", 1250), ("12.50", 1250), (" 7.10 ", 710), ("0", 0), ("0.01", 1),
    ("1000000", 100_000_000), ("999999.99", 99_999_999),
])
def test_good_amounts(text, minor):
    assert parse_amount(text, "EUR") == minor


@pytest.mark.parametrize("text, message", [
    ("", "Enter an amount"),
    ("   ", "Enter an amount"),
    ("-1", "negative"),
    ("-0.01", "negative"),
    ("1000000.01", "more than €1,000,000.00"),
    ("99999999999", "more than"),
    ("12.505", "at most 2 decimals"),
    ("1.234,56", "thousands separators"),
    ("1,234.56", "thousands separators"),
    ("1,234", "thousands separators"),
    ("12,50", "dot for decimals"),
    ("1 000", "thousands separators"),
    ("€12", "without a currency symbol"),
    ("12€", "without a currency symbol"),
    ("$12", "without a currency symbol"),
    ("12 EUR", "without a currency symbol"),
    ("EUR12", "without a currency symbol"),
    ("abc", "as a number"),
    ("1e5", "as a number"),
    ("NaN", "as a number"),
    ("Infinity", "as a number"),
    ("+5", "as a number"),
    (".5", "as a number"),
    ("12.", "as a number"),
    ("٣", "as a number"),  # Arabic-Indic digit: Decimal would take it, we do not
    ("<script>alert(1)</script>", "as a number"),
    ("1" * 40, "too long"),
])
def test_bad_amounts_have_clear_messages(text, message):
    with pytest.raises(MoneyError) as exc:
        parse_amount(text, "EUR")
    assert message in str(exc.value)


def test_zero_can_be_refused():
    with pytest.raises(MoneyError, match="more than zero"):
        parse_amount("0.00", "EUR", allow_zero=False)


def test_currency_without_decimals():
    assert parse_amount("1200", "JPY") == 1200
    with pytest.raises(MoneyError, match="no decimals"):
        parse_amount("12.5", "JPY")


def test_formatting_is_exact():
    assert format_money(123456789, "EUR") == "€1,234,567.89"
    assert format_money(5, "SEK") == "SEK 0.05"
    assert format_amount(1250, "EUR") == "12.50"
    assert Money.parse("0.10", "EUR") + Money.parse("0.20", "EUR") == Money(30, "EUR")
    assert Money(30, "EUR").decimal == Decimal("0.30")
    with pytest.raises(TypeError):
        Money(1, "EUR") + Money(1, "USD")
    with pytest.raises(TypeError):
        Money(1, "EUR") * 1.5
