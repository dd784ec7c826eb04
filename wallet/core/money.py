"""Amounts: integers in the asset's smallest unit, exact on every database.

`AmountField` is NUMERIC(78,0) on PostgreSQL (room for 2^256-1) and TEXT on SQLite, whose numeric
affinity would silently turn values above 2^63 into floats. Python sees `int` either way. Arithmetic on
amounts happens in Python on rows the caller has locked, never in SQL, so that both databases agree.

`parse_amount` turns API input into an int with a distinct error code for each way it can be wrong.
"""

from __future__ import annotations

import re
from typing import Any

from django.db import models

from wallet.core.errors import error_class

MAX_AMOUNT = 2**256 - 1

AmountNotString = error_class("amount_not_string", 400, "Amounts are sent as strings of digits")
AmountFloat = error_class("amount_float", 400, "Amounts may not be floating-point numbers")
AmountExponent = error_class("amount_exponent", 400, "Amounts may not use exponent notation")
AmountNegative = error_class("amount_negative", 400, "The amount must be positive")
AmountZero = error_class("amount_zero", 400, "The amount must be positive")
AmountTooPrecise = error_class(
    "amount_too_precise", 400, "Amounts are whole numbers of the asset's smallest unit (no fraction)"
)
AmountTooLarge = error_class("amount_too_large", 400, "The amount exceeds 2^256-1")
AmountInvalid = error_class("amount_invalid", 400, "The amount is not a number")

_DIGITS = re.compile(r"^[0-9]+$")


def parse_amount(value: Any, *, field: str = "amount") -> int:
    """A positive integer amount in the smallest unit, from its JSON value (a string of digits)."""
    pointer = {"pointer": f"/{field}"}
    if isinstance(value, bool) or value is None:
        raise AmountInvalid(**pointer)
    if isinstance(value, float):
        raise AmountFloat(**pointer)
    if isinstance(value, int):
        raise AmountNotString(**pointer)
    if not isinstance(value, str):
        raise AmountInvalid(**pointer)
    text = value.strip()
    if text.startswith("-"):
        raise AmountNegative(**pointer)
    if "e" in text.lower() and re.match(r"^[+]?[0-9.]+[eE][+-]?[0-9]+$", text):
        raise AmountExponent(**pointer)
    if re.match(r"^[+]?[0-9]*\.[0-9]+$|^[+]?[0-9]+\.[0-9]*$", text):
        raise AmountTooPrecise(**pointer)
    if not _DIGITS.match(text):
        raise AmountInvalid(**pointer)
    if len(text) > 80:  # cheap guard before int() on absurd input
        raise AmountTooLarge(**pointer)
    amount = int(text)
    if amount == 0:
        raise AmountZero(**pointer)
    if amount > MAX_AMOUNT:
        raise AmountTooLarge(**pointer)
    return amount


def format_amount(amount: int) -> str:
    return str(amount)


class AmountField(models.Field):
    """A signed integer amount of up to 78 digits, exact on PostgreSQL and SQLite."""

    description = "Integer amount in the smallest unit (NUMERIC(78,0))"

    def get_internal_type(self) -> str:
        return "AmountField"

    def db_type(self, connection: Any) -> str:
        if connection.vendor == "postgresql":
            return "numeric(78,0)"
        return "text"

    def rel_db_type(self, connection: Any) -> str:
        return self.db_type(connection)

    def to_python(self, value: Any) -> int | None:
        if value is None or isinstance(value, int):
            return value
        return int(value)

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> int | None:
        return None if value is None else int(value)

    def get_prep_value(self, value: Any) -> int | None:
        value = super().get_prep_value(value)
        if value is None:
            return None
        if isinstance(value, float):
            raise TypeError("amounts are never floats")
        return int(value)

    def formfield(self, **kwargs: Any) -> Any:
        from django import forms

        return super().formfield(**{"form_class": forms.IntegerField, **kwargs})

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        if not prepared:
            value = self.get_prep_value(value)
        if value is None:
            return None
        if connection.vendor == "postgresql":
            return value
        return str(value)
