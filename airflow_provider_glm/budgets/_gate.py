"""Budgets at the client's attempt loop: every attempt reserves its bound first, and settles it after.

:class:`ConnectionBudget` is the connection's budget for one run: it opens the budget's
:class:`~airflow_provider_glm.budgets._store.BudgetStore` and hands out one
:class:`RequestBudget` per request, the :class:`~airflow_provider_glm.client._attempts.AttemptGate` the
client asks before each attempt (first sends, retries and resends alike). An attempt's bound is the
request's prompt bound plus ``max_tokens`` (or the model's output limit), priced by the run's price
table; a refusal raises :class:`~airflow_provider_glm.exceptions.GLMBudgetExceededError` and nothing
is sent. After the attempt, an answer replaces the reservation by what it billed, a lost answer keeps
the bound as possibly billed, and an attempt that was not billed (never sent, or a GLM error answer)
frees it. The store's transactions run in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow_provider_glm.budgets._store import BudgetStore, Reservation
from airflow_provider_glm.exceptions import GLMBudgetExceededError, GLMError
from airflow_provider_glm.sinks.sql._retry import database_retry

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from airflow_provider_glm.budgets._spec import BudgetSpec
    from airflow_provider_glm.client.models import ChatCompletion
    from airflow_provider_glm.rows._pricing import Pricer
    from airflow_provider_glm.rows._records import RunScope

__all__ = ["ConnectionBudget", "RequestBudget", "reservation_seconds"]

SETTLE_GRACE_SECONDS = 300.0
"""How long after an attempt's own timeout its reservation may still be settled before it expires."""
SETTLE_RETRY_SECONDS = 60.0
"""How long a settle is retried when the budget's database refuses it (then the reservation expires)."""


def reservation_seconds(attempt_timeout: float) -> float:
    """How long a reservation lives: the attempt's total timeout plus :data:`SETTLE_GRACE_SECONDS`. A
    reservation its worker never settled (the worker was killed) then counts as possibly billed."""
    return attempt_timeout + SETTLE_GRACE_SECONDS


class ConnectionBudget:
    """A connection's budget as one run uses it.

    :param spec: the budget (the connection's ``budget`` extra).
    :param engine: the database of ``spec.sql_conn_id``.
    :param pricer: prices a request's bound and an answer's usage.
    :param scope: the task instance, recorded with each reservation.
    :param try_number: the Airflow try.
    :param ttl: seconds a reservation lives (:func:`reservation_seconds`).
    """

    def __init__(self, spec: BudgetSpec, engine: Engine, pricer: Pricer, *, scope: RunScope, try_number: int,
                 ttl: float, log: Any = None) -> None:
        self.spec = spec
        self.store = BudgetStore(engine, spec)
        self.pricer = pricer
        self.scope = scope
        self.try_number = try_number
        self.ttl = ttl
        self.log = log or logging.getLogger(__name__)

    def check(self) -> None:
        """Refuse, before any call, a budget the run cannot keep (a cost cap in another currency than its
        prices), and create the budget's tables when missing."""
        spec = self.spec
        if spec.max_cost is not None and self.pricer.currency != spec.currency:
            raise ValueError(f"connection {spec.name!r}: extra 'budget'.currency is {spec.currency}, but the price "
                             f"of model {self.pricer.model!r} is in {self.pricer.currency or 'no currency (no price)'}"
                             "; the budget must be in the currency of the prices (set prices in it, or change the "
                             "budget's currency)")
        self.store.ensure_tables(log=self.log)

    def for_request(self, row_key: str | None, prompt_bound: int, max_tokens: int | None) -> RequestBudget:
        """The gate of one request."""
        tokens, cost = self.pricer.bound(prompt_bound, max_tokens)
        return RequestBudget(self, row_key, tokens, cost)


class RequestBudget:
    """The attempt gate of one request (see :class:`~airflow_provider_glm.client._attempts.AttemptGate`)."""

    def __init__(self, budget: ConnectionBudget, row_key: str | None, tokens: int, cost: Decimal | None) -> None:
        self.budget = budget
        self.row_key = row_key
        self.tokens = tokens
        self.cost = cost
        self._open: Reservation | None = None

    async def admit(self, attempt: int) -> None:
        budget = self.budget
        got = await asyncio.to_thread(budget.store.reserve, budget.scope, budget.try_number, self.row_key,
                                      self.tokens, self.cost, budget.ttl)
        if isinstance(got, str):
            raise GLMBudgetExceededError(got)
        self._open = got

    async def settle(self, answer: Any, error: GLMError | None) -> None:
        reservation, self._open = self._open, None
        if reservation is None:
            return
        if error is None:
            state, tokens, cost = self._billed(answer)
        else:
            state, tokens, cost = ("lost" if error.may_have_been_billed else "released"), 0, None
        try:
            await self._settle(reservation, state, tokens, cost)
        except Exception as exc:  # noqa: BLE001 - the attempt happened: its reservation expires and stays counted
            self.budget.log.error("Could not settle budget reservation %s (%s: %s); it expires in %.0f s and then "
                                  "counts as possibly billed.", reservation.reservation_id, type(exc).__name__, exc,
                                  self.budget.ttl)

    def _billed(self, answer: ChatCompletion) -> tuple[str, int, Decimal | None]:
        usage = getattr(answer, "usage", None)
        if usage is None:
            return "lost", 0, None  # billed, but its tokens never came back: the bound stays counted
        cost, _ = self.budget.pricer.cost(answer.model, usage.prompt_tokens, usage.completion_tokens,
                                          usage.cached_tokens)
        return "settled", usage.total_tokens, cost

    async def _settle(self, reservation: Reservation, state: str, tokens: int, cost: Decimal | None) -> None:
        store = self.budget.store
        retrying = database_retry(SETTLE_RETRY_SECONDS, what="settling a budget reservation", log=self.budget.log)
        async for attempt in retrying:
            with attempt:
                await asyncio.to_thread(store.settle, reservation, state, tokens, cost)
