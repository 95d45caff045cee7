"""The ``budget`` extra of a ``glm`` connection, checked: the cap, its period, and where it is kept.

Example extra::

    {"budget": {"per": "day", "max_cost": "200", "currency": "CNY", "sql_conn_id": "warehouse"}}

``per`` is ``"day"`` or ``"month"``, in UTC (a day starts at 00:00 UTC, a month on its first day at
00:00 UTC). ``max_cost`` (with its ``currency``, which must be the price table's currency for the
models used) and/or ``max_tokens`` set the cap. ``sql_conn_id`` names the SQL connection whose
reservation tables every task using this GLM connection counts in. A bad budget is refused when the
connection is used, before any call, naming the field.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["BUDGET_KEYS", "BudgetSpec"]

BUDGET_KEYS = ("per", "max_cost", "currency", "max_tokens", "sql_conn_id")
_CURRENCY = re.compile(r"[A-Z]{3}")


@dataclass(frozen=True)
class BudgetSpec:
    """A connection's budget.

    :param name: what the budget is kept under: the GLM connection id.
    :param per: ``day`` or ``month`` (UTC).
    :param sql_conn_id: the SQL connection of the reservation tables.
    :param max_cost: the cap on cost in ``currency`` per period, or ``None``.
    :param currency: the currency of ``max_cost``.
    :param max_tokens: the cap on tokens per period, or ``None``.
    """

    name: str
    per: str
    sql_conn_id: str
    max_cost: Decimal | None = None
    currency: str | None = None
    max_tokens: int | None = None

    @classmethod
    def parse(cls, value: Any, conn_id: str) -> BudgetSpec | None:
        """The budget in a connection's extra (an object, or its JSON text from the form), or ``None``.

        :raises ValueError: naming the connection and the field at fault.
        """
        if value in (None, "", {}):
            return None
        where = f"connection {conn_id!r}: extra 'budget'"
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError(f"{where} must be a JSON object, e.g. {{\"per\": \"day\", \"max_cost\": \"200\", "
                                 "\"currency\": \"CNY\", \"sql_conn_id\": \"warehouse\"}") from None
        if not isinstance(value, Mapping):
            raise ValueError(f"{where} must be an object, got {type(value).__name__}")
        unknown = sorted(set(value) - set(BUDGET_KEYS))
        if unknown:
            raise ValueError(f"{where} has unknown field(s) {unknown}; known: {', '.join(BUDGET_KEYS)}")
        per = value.get("per")
        if per not in ("day", "month"):
            raise ValueError(f"{where}.per must be 'day' or 'month' (UTC), got {per!r}")
        sql_conn_id = value.get("sql_conn_id")
        if not isinstance(sql_conn_id, str) or not sql_conn_id.strip():
            raise ValueError(f"{where}.sql_conn_id must name the SQL connection that keeps the budget's "
                             f"reservations, got {sql_conn_id!r}")
        max_cost = _positive_decimal(where, value.get("max_cost"))
        max_tokens = _positive_int(where, value.get("max_tokens"))
        if max_cost is None and max_tokens is None:
            raise ValueError(f"{where} needs max_cost (with currency) or max_tokens, or both")
        currency = value.get("currency")
        if max_cost is not None:
            if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency.strip().upper()):
                raise ValueError(f"{where}.currency must be the 3-letter code of max_cost's currency (e.g. 'CNY', "
                                 f"'USD'), got {currency!r}")
            currency = currency.strip().upper()
        elif currency is not None:
            raise ValueError(f"{where}.currency is set but max_cost is not")
        return cls(conn_id, per, sql_conn_id.strip(), max_cost, currency, max_tokens)

    def period_start(self, now: dt.datetime) -> dt.datetime:
        """The start (UTC) of the period ``now`` falls in."""
        now = now.astimezone(dt.UTC)
        day = dt.datetime(now.year, now.month, now.day, tzinfo=dt.UTC)
        return day if self.per == "day" else day.replace(day=1)

    def period_end(self, start: dt.datetime) -> dt.datetime:
        """The end (exclusive, UTC) of the period that starts at ``start``."""
        if self.per == "day":
            return start + dt.timedelta(days=1)
        return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)

    def describe(self) -> str:
        """``200 CNY and 5000000 tokens per day``: the cap, for messages."""
        parts = [f"{self.max_cost} {self.currency}" if self.max_cost is not None else None,
                 f"{self.max_tokens} tokens" if self.max_tokens is not None else None]
        return f"{' and '.join(p for p in parts if p)} per {self.per} (UTC)"


def _positive_decimal(where: str, value: Any) -> Decimal | None:
    if value in (None, ""):
        return None
    try:
        number = Decimal(str(value)) if not isinstance(value, bool) else Decimal("NaN")
    except InvalidOperation:
        number = Decimal("NaN")
    if not number.is_finite() or number <= 0:
        raise ValueError(f"{where}.max_cost must be a positive amount (a number or a decimal string), got {value!r}")
    return number


def _positive_int(where: str, value: Any) -> int | None:
    if value in (None, ""):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit() \
            or int(value) <= 0:
        raise ValueError(f"{where}.max_tokens must be a whole number above 0, got {value!r}")
    return int(value)
