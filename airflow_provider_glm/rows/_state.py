"""The state of one task try: counts, spend (known and possibly billed), values for XCom, why it stopped.

:class:`RunState` changes only through its methods (:meth:`RunState.add`, :meth:`RunState.stop`,
...); everything else reads it. Spend counts what is known and, separately, the upper bound of
what may have been billed without an answer; budgets and reports use both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow_provider_glm.exceptions import GLMError
from airflow_provider_glm.rows._records import RowStatus

if TYPE_CHECKING:
    from airflow_provider_glm.rows._outcomes import Outcome
    from airflow_provider_glm.rows._records import UsageRecord

__all__ = ["MAX_FAILURES_KEPT", "RunState", "Spend"]

MAX_FAILURES_KEPT = 20
_COUNTED: tuple[RowStatus, ...] = ("ok", "failed", "filtered", "skipped")


@dataclass
class Spend:
    """Tokens and cost, known and possibly billed. ``cost`` sums the priced calls; ``unpriced_calls`` counts
    the billed calls whose model has no price, so a partial sum is never shown as the whole."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost: Decimal | None = None
    currency: str | None = None
    mixed_currencies: bool = False
    unknown_attempts: int = 0
    unknown_tokens_max: int = 0
    unknown_cost_max: Decimal | None = None
    unpriced_calls: int = 0

    def add(self, usage: UsageRecord) -> None:
        """Count one ledger entry."""
        self.calls += usage.billing == "known"
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.total_tokens += usage.total_tokens
        self.unknown_attempts += usage.unknown_billing_attempts
        self.unknown_tokens_max += usage.unknown_tokens_max
        self.unpriced_calls += usage.cost is None and usage.billing == "known"
        self._add_cost("cost", usage.cost, usage.currency)
        self._add_cost("unknown_cost_max", usage.unknown_cost_max, usage.currency)

    def _add_cost(self, name: str, amount: Decimal | None, currency: str | None) -> None:
        if amount is None or self.mixed_currencies:
            return
        if self.currency is not None and currency != self.currency:
            self.mixed_currencies, self.cost, self.unknown_cost_max = True, None, None
            return
        setattr(self, name, (getattr(self, name) or Decimal(0)) + amount)
        self.currency = currency

    @property
    def tokens_bound(self) -> int:
        """Known tokens plus the bound of possibly billed ones: what budgets compare."""
        return self.total_tokens + self.unknown_tokens_max

    @property
    def cost_bound(self) -> Decimal | None:
        if self.cost is None and self.unknown_cost_max is None:
            return None
        return (self.cost or Decimal(0)) + (self.unknown_cost_max or Decimal(0))

    def plus(self, other: Spend) -> Spend:
        """This spend and ``other`` together (earlier tries' spend and this try's)."""
        total = Spend()
        for part in (self, other):
            total.calls += part.calls
            total.prompt_tokens += part.prompt_tokens
            total.completion_tokens += part.completion_tokens
            total.total_tokens += part.total_tokens
            total.unknown_attempts += part.unknown_attempts
            total.unknown_tokens_max += part.unknown_tokens_max
            total.unpriced_calls += part.unpriced_calls
            total.mixed_currencies |= part.mixed_currencies
            total._add_cost("cost", part.cost, part.currency)
            total._add_cost("unknown_cost_max", part.unknown_cost_max, part.currency)
        return total

    @property
    def nothing_spent(self) -> bool:
        return not self.calls and not self.unknown_attempts

    @property
    def total_cost(self) -> Decimal | None:
        """``cost``, or exactly 0 when nothing was billed at all (a night that reused every answer)."""
        if self.cost is None and self.nothing_spent and not self.mixed_currencies:
            return Decimal(0)
        return self.cost

    def cost_text(self) -> str:
        """The cost for a log line: ``"0"`` when nothing was spent, ``"unknown"`` when nothing was priced."""
        if self.cost is None:
            return "0" if self.nothing_spent and not self.mixed_currencies else "unknown"
        text = f"{self.cost:.6f} {self.currency}"
        return f"{text} (+{self.unpriced_calls} calls without a price)" if self.unpriced_calls else text

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens, "cost": _float(self.total_cost), "currency": self.currency,
            "unpriced_calls": self.unpriced_calls,
            "mixed_currencies": self.mixed_currencies, "unknown_billing_attempts": self.unknown_attempts,
            "unknown_tokens_max": self.unknown_tokens_max, "unknown_cost_max": _float(self.unknown_cost_max),
        }


@dataclass(frozen=True)
class Failure:
    """One failed or filtered row, kept (the first :data:`MAX_FAILURES_KEPT`) for the summary and the log."""

    row_key: str
    status: RowStatus
    error: BaseException | None

    def __str__(self) -> str:
        return f"{self.row_key}: {_describe(self.error)}"


@dataclass
class _Counts:
    ok: int = 0
    failed: int = 0
    filtered: int = 0
    skipped: int = 0
    reused: int = 0
    resumed: int = 0
    truncated: int = 0
    seen: int = 0


class RunState:
    """Everything one task try knows about its rows and spend.

    :param keep_values: how many ``ok`` row values to keep for XCom (beyond it, only the summary).
    :param spent_before: what earlier tries of this task instance spent (budgets count every try).
    """

    def __init__(self, *, keep_values: int, spent_before: Spend | None = None) -> None:
        self._keep_values = keep_values
        self._values: dict[str, Any] | None = {}
        self._order: list[str] | None = []
        self._counts = _Counts()
        self._failures: list[Failure] = []
        self._fatal: BaseException | None = None
        self._first_error: BaseException | None = None
        self._stop: tuple[str, str] | None = None
        self.spend = Spend()
        """This try's spend (read only outside this class)."""
        self.spent_before = spent_before or Spend()

    # --- changes -------------------------------------------------------------------------------------

    def saw(self, keys: int = 1) -> None:
        """Rows read from the input (they will each get an outcome)."""
        self._counts.seen += keys

    def add(self, outcome: Outcome) -> None:
        """Count one row's outcome, its spend, its value and, for a failure, its error."""
        counts = self._counts
        setattr(counts, outcome.status, getattr(counts, outcome.status) + 1)
        counts.reused += outcome.reused
        counts.resumed += outcome.resumed
        counts.truncated += outcome.truncated
        if outcome.usage is not None:
            self.spend.add(outcome.usage)
        if outcome.status in ("failed", "filtered"):
            self._first_error = self._first_error or outcome.error
            if outcome.fatal:
                self._fatal = self._fatal or outcome.error
            if len(self._failures) < MAX_FAILURES_KEPT:
                self._failures.append(Failure(outcome.row_key, outcome.status, outcome.error))
        if outcome.status == "ok":
            self._keep(outcome.row_key, outcome.value)

    def add_spend(self, usage: UsageRecord) -> None:
        """Count a ledger entry that belongs to no single row (a batch's unaccounted answers)."""
        self.spend.add(usage)

    def _keep(self, key: str, value: Any) -> None:
        if self._values is None or self._order is None:
            return
        self._values[key] = value
        if len(self._values) > self._keep_values:
            self._values = self._order = None

    def order(self, key: str) -> None:
        """Remember the input position of a row (XCom returns values in input order)."""
        if self._order is not None:
            self._order.append(key)
            if len(self._order) > self._keep_values:
                self._values = self._order = None

    def stop(self, kind: str, reason: str) -> None:
        """Stop dispatching: ``fatal``, ``sink``, ``deadline``, ``budget``, ``unreachable`` or ``input``
        (the first stop wins)."""
        if self._stop is None:
            self._stop = (kind, reason)

    # --- reads -------------------------------------------------------------------------------------

    @property
    def stopped(self) -> tuple[str, str] | None:
        """``(kind, reason)`` once dispatching stopped, else ``None``."""
        return self._stop

    @property
    def fatal(self) -> BaseException | None:
        return self._fatal

    @property
    def first_error(self) -> BaseException | None:
        return self._first_error

    @property
    def failures(self) -> list[Failure]:
        return list(self._failures)

    def count(self, name: str) -> int:
        """``ok``, ``failed``, ``filtered``, ``skipped``, ``reused``, ``resumed``, ``truncated`` or ``seen``."""
        return int(getattr(self._counts, name))

    @property
    def done(self) -> int:
        return sum(self.count(status) for status in _COUNTED)

    @property
    def total_spend(self) -> Spend:
        """Earlier tries' spend and this try's together."""
        return self.spent_before.plus(self.spend)

    def values(self) -> list[Any] | None:
        """The ``ok`` values in input order (``None`` for other rows), or ``None`` when too many rows to keep."""
        if self._values is None or self._order is None:
            return None
        return [self._values.get(key) for key in self._order]

    def value(self, key: str) -> Any:
        return (self._values or {}).get(key)

    def budget_exceeded(self, max_total_tokens: int | None, max_cost: Decimal | None) -> str | None:
        """Why no new row may start for a budget (known spend plus the bound of possibly billed), else ``None``."""
        total = self.total_spend
        if max_total_tokens is not None and total.tokens_bound >= max_total_tokens:
            return (f"not sent: budget max_total_tokens={max_total_tokens} reached ({total.total_tokens} tokens "
                    f"spent, up to {total.unknown_tokens_max} more possibly billed)")
        bound = total.cost_bound
        if max_cost is not None and bound is not None and bound >= max_cost:
            return (f"not sent: budget max_cost={max_cost} reached ({total.cost or 0:.6f} spent, up to "
                    f"{total.unknown_cost_max or 0:.6f} more possibly billed)")
        return None

    def summary(self, **extra: Any) -> dict[str, Any]:
        """Plain JSON values for XCom and the runs table."""
        counts = {name: self.count(name) for name in ("ok", "failed", "filtered", "skipped", "reused", "resumed")}
        stop = self._stop or (None, None)
        out = {"rows": self.count("seen"), **counts, **self.spend.as_dict(),
               "spent_before": self.spent_before.as_dict(), "stop_kind": stop[0], "stop_reason": stop[1],
               "possibly_billed": self.possibly_billed_text(),
               "failures": [str(f) for f in self._failures]}
        out.update(extra)
        return out

    def possibly_billed_text(self) -> str | None:
        """``"N attempts may have been billed, up to X tokens / cost"``, or ``None`` when none were."""
        spend = self.spend
        if not spend.unknown_attempts:
            return None
        cost = (f" / {spend.unknown_cost_max:.6f} {spend.currency}" if spend.unknown_cost_max is not None
                else " / an unknown cost")
        return (f"{spend.unknown_attempts} attempt{'s' if spend.unknown_attempts != 1 else ''} may have been billed, "
                f"up to {spend.unknown_tokens_max} tokens{cost}")

    def progress_line(self, *, final: bool, rate: float, eta: str, extra: str = "") -> str:
        """One log line: rows by outcome, tokens and cost (possibly billed included), rate, ETA."""
        spend = self.spend
        cost = spend.cost_text()
        line = (f"{'Done:' if final else 'Progress:'} rows {self.done}/{self.count('seen')} (ok {self.count('ok')}, "
                f"failed {self.count('failed')}, filtered {self.count('filtered')}, skipped {self.count('skipped')}, "
                f"reused {self.count('reused')}, resumed {self.count('resumed')}); tokens {spend.total_tokens}; "
                f"cost {cost}")
        possibly = self.possibly_billed_text()
        if possibly:
            line += f"; {possibly}"
        return f"{line}; {rate:.1f} rows/s; ETA {eta}{extra}"


def _float(value: Decimal | None) -> float | None:
    return float(value) if value is not None else None


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "failed"
    return f"{type(error).__name__}: {error}" if isinstance(error, GLMError) else str(error)


def spend_from_rows(rows: Mapping[str, Any]) -> Spend:
    """A :class:`Spend` from the ledger sums the sink returns (see ``SQLSink.spent``)."""
    spend = Spend(calls=int(rows.get("calls") or 0), total_tokens=int(rows.get("total_tokens") or 0),
                  unknown_attempts=int(rows.get("unknown_billing_attempts") or 0),
                  unknown_tokens_max=int(rows.get("unknown_tokens_max") or 0))
    spend.cost = rows.get("cost")
    spend.unknown_cost_max = rows.get("unknown_cost_max")
    spend.currency = rows.get("currency")
    return spend
