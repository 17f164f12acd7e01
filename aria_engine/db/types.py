"""Column types shared by the models.

`Money` keeps USD amounts exact on both backends. SQLite has no exact decimal type (NUMERIC degrades to
REAL), so amounts are stored as integer pico-dollars (1e-12 USD) in a BIGINT everywhere. Arithmetic in SQL
(`total_cost = total_cost + :delta`, `SUM(cost)`) stays exact, and Python sees `Decimal` values.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import BigInteger, Dialect
from sqlalchemy.types import TypeDecorator

__all__ = ["MONEY_QUANTUM", "Money", "format_money", "to_money"]

MONEY_QUANTUM = Decimal("1e-12")
_SCALE = 10**12


def to_money(value: Decimal | int | float | str | None) -> Decimal:
    """Round an amount to the stored precision (banker's rounding, as accounting does)."""
    if value is None:
        return Decimal(0).quantize(MONEY_QUANTUM)
    return Decimal(str(value)).quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN)


def format_money(value: Decimal | None) -> str:
    """An exact decimal string for the wire ("0.0015", "0"), never a float or an exponent."""
    if not value:
        return "0"
    return format(to_money(value).normalize(), "f")


class Money(TypeDecorator[Decimal]):
    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> int | None:
        if value is None:
            return None
        return int(to_money(value) * _SCALE)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return (Decimal(int(value)) / _SCALE).quantize(MONEY_QUANTUM)
