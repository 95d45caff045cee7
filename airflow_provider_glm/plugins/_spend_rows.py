"""What the spend page asks for, and how grouped rows become its figures (no database access here).

:class:`SpendFilters` is the period and the DAGs and model to include; the functions fold the rows
:class:`~airflow_provider_glm.plugins._spend_queries.SpendQueries` returns (the ledger grouped by
day, DAG, task, model and currency; outcomes by DAG, task and status; the top runs) into totals per
currency, per day, per task and per run.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

__all__ = ["RESULT_STATUSES", "TOKENS", "SpendFilters", "Sums", "fold_ledger", "iso", "merge_tasks", "money",
           "run_row"]

TOKENS = ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens")
RESULT_STATUSES = ("ok", "failed", "filtered", "skipped")

@dataclass(frozen=True)
class SpendFilters:
    """What to aggregate: a period and the DAGs and model to include."""

    start: dt.datetime
    """Start of the period, inclusive (timezone-aware)."""
    end: dt.datetime
    """End of the period, exclusive (timezone-aware)."""
    dag_ids: frozenset[str] | None = None
    """The DAGs the user may read; ``None`` means no restriction (only for trusted callers)."""
    dag_id: str | None = None
    """Only this DAG."""
    model: str | None = None
    """Only this model."""
    stack: str = "model"
    """What the daily series is split by: ``model`` or ``dag``."""
    limit: int = field(default=10)
    """Rows of the most-expensive-runs and budget lists."""

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("start and end must be timezone-aware datetimes")
        if self.end <= self.start:
            raise ValueError(f"the period is empty: end {self.end.isoformat()} is not after start "
                             f"{self.start.isoformat()}")
        if self.stack not in ("model", "dag"):
            raise ValueError(f"stack must be 'model' or 'dag', got {self.stack!r}")

    @classmethod
    def last_days(cls, days: int, *, now: dt.datetime | None = None, **kwargs: Any) -> SpendFilters:
        """The last ``days`` UTC calendar days, today included.

        :param days: how many days, at least 1.
        :param now: the current time (for tests); default now.
        """
        if days < 1:
            raise ValueError(f"days must be at least 1, got {days}")
        today = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).replace(hour=0, minute=0, second=0,
                                                                              microsecond=0)
        return cls(start=today - dt.timedelta(days=days - 1), end=today + dt.timedelta(days=1), **kwargs)

    def days(self) -> list[str]:
        """Every UTC day of the period, ``YYYY-MM-DD``, oldest first."""
        day = self.start.astimezone(dt.UTC).date()
        last = (self.end.astimezone(dt.UTC) - dt.timedelta(microseconds=1)).date()
        out = []
        while day <= last:
            out.append(day.isoformat())
            day += dt.timedelta(days=1)
        return out


_COUNTERS = ("calls", "entries", "unpriced_calls", *TOKENS, "possibly_billed_attempts", "possibly_billed_tokens_max")
_MONEY = ("cost", "possibly_billed_cost_max")
_CALLS, _ENTRIES, _TOTAL = _COUNTERS.index("calls"), _COUNTERS.index("entries"), _COUNTERS.index("total_tokens")


def fold_ledger(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals, per-DAG, per-model, per-day (by model and by DAG) and per-task sums of ledger rows grouped
    by day, DAG, task, model and currency.

    Each row is added once per figure keyed by currency, with plain lists; the per-currency sums are
    then merged into :class:`Sums` (a few per DAG and model), so folding stays cheap for many rows.

    :return: ``{"totals", "by_dag", "by_model", "daily": {"model": [...], "dag": [...]}, "task_spend"}``;
        ``task_spend`` rows are ``{"dag_id", "task_id", "currency", "entries", "total_tokens", "cost"}``.
    """
    per_dag: dict[tuple[str, str], list[Any]] = {}
    per_model: dict[tuple[str, str], list[Any]] = {}
    daily: dict[str, dict[tuple[str, str, str], list[Any]]] = {"model": {}, "dag": {}}
    tasks: dict[tuple[str, str, str], list[Any]] = {}
    per_dag_model: dict[tuple[str, str, str], list[Any]] = {}
    for row in rows:
        amounts = [None if row[name] is None else Decimal(row[name]) for name in _MONEY]
        values = [int(row[name] or 0) for name in _COUNTERS]
        currency, dag_id, model, cost = row["currency"], row["dag_id"], row["model"], amounts[0]
        day = str(row["day"])[:10]
        _add(per_dag_model, (dag_id, model, currency), values, amounts)
        _add(daily["model"], (day, model, currency), [values[_CALLS], values[_TOTAL]], [cost])
        _add(daily["dag"], (day, dag_id, currency), [values[_CALLS], values[_TOTAL]], [cost])
        _add(tasks, (dag_id, row["task_id"], currency), [values[_ENTRIES], values[_TOTAL]], [cost])
    for (dag_id, model, currency), sums in per_dag_model.items():
        _add(per_dag, (dag_id, currency), sums[:len(_COUNTERS)], sums[len(_COUNTERS):])
        _add(per_model, (model, currency), sums[:len(_COUNTERS)], sums[len(_COUNTERS):])
    totals = Sums(_COUNTERS, _MONEY)
    by_dag = _merge(per_dag, totals)
    by_model = _merge(per_model, None)
    return {
        "totals": totals.as_dict(),
        "by_dag": [{"dag_id": k, **v.as_dict()} for k, v in sorted(by_dag.items())],
        "by_model": [{"model": k, **v.as_dict()} for k, v in sorted(by_model.items())],
        "daily": {stack: [{"day": d, "key": k, "currency": c, "calls": v[0], "total_tokens": v[1],
                           "cost": {} if v[2] is None else {c: money(v[2])}} for (d, k, c), v in sorted(series.items())]
                  for stack, series in daily.items()},
        "task_spend": [{"dag_id": d, "task_id": t, "currency": c, "entries": v[0], "total_tokens": v[1], "cost": v[2]}
                       for (d, t, c), v in sorted(tasks.items())],
    }


def _add(table: dict[Any, list[Any]], key: Any, values: list[int], amounts: list[Decimal | None]) -> None:
    """Add counters and amounts (``None``: no amount) to ``table[key]``, a list of counters then amounts."""
    sums = table.get(key)
    if sums is None:
        table[key] = [*values, *amounts]
        return
    count = len(values)
    for index in range(count):
        sums[index] += values[index]
    for index, amount in enumerate(amounts, start=count):
        if amount is not None:
            sums[index] = amount if sums[index] is None else sums[index] + amount


def _merge(per_currency: dict[tuple[str, str], list[Any]], totals: Sums | None) -> dict[str, Sums]:
    """Per-key, per-currency lists merged into one :class:`Sums` per key (and into ``totals``)."""
    out: dict[str, Sums] = {}
    count = len(_COUNTERS)
    for (key, currency), sums in per_currency.items():
        for target in (out.setdefault(key, Sums(_COUNTERS, _MONEY)), totals):
            if target is not None:
                target.add(sums[:count], sums[count:], currency)
    return out


def run_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "dag_id": row["dag_id"], "run_id": row["run_id"], "currency": row["currency"],
        "entries": int(row["entries"]), "total_tokens": int(row["total_tokens"] or 0),
        "cost": None if row["cost"] is None else money(row["cost"]),
        "first_call": iso(row["first_call"]), "last_call": iso(row["last_call"]),
    }


def merge_tasks(outcomes: list[dict[str, Any]], spend: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per DAG and task from the results counts and the ledger sums, the costliest first."""
    table: dict[tuple[str, str], dict[str, Any]] = {}

    def entry(dag_id: str, task_id: str) -> dict[str, Any]:
        return table.setdefault((dag_id, task_id), {
            "dag_id": dag_id, "task_id": task_id, "rows": 0, **dict.fromkeys(RESULT_STATUSES, 0),
            "other": 0, "reused": 0, "entries": 0, "total_tokens": 0, "cost": {}, "cost_per_1000_rows": {},
        })

    for row in outcomes:
        item = entry(row["dag_id"], row["task_id"])
        item["rows"] += int(row["n"])
        item[row["status"] if row["status"] in RESULT_STATUSES else "other"] += int(row["n"])
        item["reused"] += int(row["reused"] or 0)
    for row in spend:
        item = entry(row["dag_id"], row["task_id"])
        item["entries"] += int(row["entries"])
        item["total_tokens"] += int(row["total_tokens"] or 0)
        if row["cost"] is not None:
            item["cost"][row["currency"]] = money(row["cost"])
    for item in table.values():
        item["cost"] = dict(sorted(item["cost"].items()))
        if item["rows"]:
            item["cost_per_1000_rows"] = {c: round(v * 1000 / item["rows"], 10) for c, v in item["cost"].items()}
    return sorted(table.values(), key=lambda i: (-max(i["cost"].values(), default=0.0), i["dag_id"], i["task_id"]))


class Sums:
    """Running sums of counters (ints) and of money per currency (decimals), in a fixed order."""

    def __init__(self, counters: Sequence[str], money: Sequence[str]) -> None:
        self.counters = tuple(counters)
        self.values = [0] * len(self.counters)
        self.money = tuple(money)
        self.amounts: list[dict[str, Decimal]] = [{} for _ in self.money]

    def add(self, values: Sequence[int], amounts: Sequence[Decimal | None], currency: str) -> None:
        """Add one group's counters and amounts, given in the order of the names."""
        self.values = [a + b for a, b in zip(self.values, values, strict=True)]
        for per_currency, amount in zip(self.amounts, amounts, strict=True):
            if amount is not None:
                per_currency[currency] = per_currency.get(currency, Decimal(0)) + amount

    def as_dict(self) -> dict[str, Any]:
        return {**dict(zip(self.counters, self.values, strict=True)),
                **{name: {c: money(v) for c, v in sorted(per.items())}
                   for name, per in zip(self.money, self.amounts, strict=True)}}


def money(value: Any) -> float:
    return round(float(value), 10)


def iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return str(value.astimezone(dt.UTC).isoformat())
