"""A connection budget's books on SQLite, PostgreSQL and MariaDB: reservations hold the cap exactly, also when
reservers race in separate processes; lost answers and expired reservations stay counted."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _databases import BACKENDS, backend_url

from airflow_provider_glm.budgets._spec import BudgetSpec
from airflow_provider_glm.budgets._store import BudgetStore, Reservation
from airflow_provider_glm.rows._records import RunScope

SCOPE = RunScope("budget_dag", "budget_task", "run-1")


def spec(**fields: Any) -> BudgetSpec:
    value = {"per": "day", "sql_conn_id": "warehouse", **fields}
    parsed = BudgetSpec.parse(value, f"glm_{uuid.uuid4().hex[:12]}")
    assert parsed is not None
    return parsed


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_url(request.param, tmp_path)


def store_for(url: str, budget: BudgetSpec, clock: Any = None) -> BudgetStore:
    store = BudgetStore(sa.create_engine(url), budget, **({"clock": clock} if clock else {}))
    store.ensure_tables()
    return store


def test_reservations_hold_the_cap_and_settle_into_spend(url: str) -> None:
    store = store_for(url, spec(max_tokens=100, max_cost="1.00", currency="USD"))
    first = store.reserve(SCOPE, 1, "r1", 60, Decimal("0.5"), ttl=600)
    assert isinstance(first, Reservation)
    refused = store.reserve(SCOPE, 1, "r2", 50, Decimal("0.1"), ttl=600)
    assert isinstance(refused, str) and "60 tokens spent, possibly billed or reserved" in refused
    store.settle(first, "settled", tokens=20, cost=Decimal("0.02"))
    second = store.reserve(SCOPE, 1, "r2", 50, Decimal("0.1"), ttl=600)
    assert isinstance(second, Reservation)
    store.settle(second, "lost")
    state = store.state()
    assert (state.spent_tokens, state.unknown_tokens, state.reserved_tokens) == (20, 50, 0)
    assert (state.spent_cost, state.unknown_cost) == (Decimal("0.02"), Decimal("0.1"))
    assert state.remaining_tokens == 30 and state.remaining_cost == Decimal("0.88")
    third = store.reserve(SCOPE, 1, "r3", 30, Decimal("0.1"), ttl=600)
    assert isinstance(third, Reservation)
    store.settle(third, "released")
    store.settle(third, "settled", tokens=99)  # an attempt is settled once: a second settle changes nothing
    assert store.state().spent_tokens == 20 and store.state().reserved_tokens == 0


def test_a_cost_cap_refuses_an_attempt_without_a_price(url: str) -> None:
    store = store_for(url, spec(max_cost="1", currency="CNY"))
    refused = store.reserve(SCOPE, 1, "r1", 10, None, ttl=600)
    assert isinstance(refused, str) and "unknown cost (no price)" in refused


def test_an_expired_reservation_counts_as_possibly_billed_until_settled(url: str) -> None:
    now = [dt.datetime(2026, 12, 8, 10, 0, tzinfo=dt.UTC)]
    store = store_for(url, spec(max_tokens=100), clock=lambda: now[0])
    killed = store.reserve(SCOPE, 1, "r1", 40, None, ttl=60)
    assert isinstance(killed, Reservation)
    now[0] += dt.timedelta(seconds=61)
    assert (store.state().unknown_tokens, store.state().reserved_tokens) == (40, 0)
    assert isinstance(store.reserve(SCOPE, 2, "r2", 60, None, ttl=60), Reservation)  # 40 + 60: exactly the cap
    assert isinstance(store.reserve(SCOPE, 2, "r3", 1, None, ttl=60), str)
    store.settle(killed, "settled", tokens=15)  # its answer was recorded after all: spent, no longer unknown
    state = store.state()
    assert (state.spent_tokens, state.unknown_tokens, state.reserved_tokens) == (15, 0, 60)


def test_periods_are_utc_days_and_months() -> None:
    day, month = spec(max_tokens=1), spec(max_tokens=1, per="month")
    late = dt.datetime(2026, 12, 31, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))  # 2027-01-01 04:30 UTC
    assert day.period_start(late) == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    assert month.period_start(late) == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    assert month.period_end(dt.datetime(2026, 12, 1, tzinfo=dt.UTC)) == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    assert day.period_end(dt.datetime(2026, 12, 31, tzinfo=dt.UTC)) == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)


def _reserve_until_refused(url: str, budget: BudgetSpec, bound: int, queue: Any) -> None:
    store = BudgetStore(sa.create_engine(url), budget)
    granted = 0
    while isinstance(store.reserve(SCOPE, 1, None, bound, None, ttl=600), Reservation):
        granted += 1
    queue.put(granted)


def test_reservers_in_separate_processes_never_pass_the_cap(url: str) -> None:
    budget = spec(max_tokens=700)
    store_for(url, budget)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_reserve_until_refused, args=(url, budget, 7, queue)) for _ in range(3)]
    for worker in workers:
        worker.start()
    granted = [queue.get(timeout=240) for _ in workers]
    for worker in workers:
        worker.join(60)
    assert sum(granted) == 100, granted  # 700 / 7 exactly: none more, none lost to the race
    assert store_for(url, budget).state().reserved_tokens == 700
