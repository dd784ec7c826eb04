"""Conversion to the display currency: exact Decimal arithmetic, one rounding at the end.

Rule: value = amount x 10^-decimals x rate, computed exactly (a 200-digit context; amounts up to 2^256
and rates of 50 significant digits fit), then rounded ONCE to the display currency's decimals with
ROUND_HALF_EVEN (banker's rounding). A total is the exact sum of the exact values, rounded once the same
way; so a total may differ by one minor unit from the sum of the rounded lines, by design.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, localcontext

CONTEXT_PRECISION = 200


def exact_value(amount: int, decimals: int, rate: Decimal) -> Decimal:
    """`amount` smallest units of an asset with `decimals`, times `rate`, without rounding."""
    with localcontext() as context:
        context.prec = CONTEXT_PRECISION
        return Decimal(amount).scaleb(-decimals) * rate


def exact_sum(values: list[Decimal]) -> Decimal:
    with localcontext() as context:
        context.prec = CONTEXT_PRECISION
        return sum(values, Decimal(0))


def round_display(value: Decimal, display_decimals: int) -> Decimal:
    """The one rounding: to `display_decimals` places, half to even."""
    with localcontext() as context:
        context.prec = CONTEXT_PRECISION
        return value.quantize(Decimal(1).scaleb(-display_decimals), rounding=ROUND_HALF_EVEN)


def display_text(value: Decimal, display_decimals: int) -> str:
    """The rounded value as the API sends it: a plain decimal string, e.g. "1234.50" (never exponent)."""
    return format(round_display(value, display_decimals), "f")
