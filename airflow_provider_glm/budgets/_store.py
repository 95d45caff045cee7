"""A connection budget's books in SQL: one totals row per budget and period, one row per reservation.

Every change happens in a short transaction that holds the budget's totals row: ``SELECT ... FOR
UPDATE`` on PostgreSQL and MySQL/MariaDB, ``BEGIN IMMEDIATE`` on SQLite; concurrent reservers (other
tasks, other workers) wait for it, so the check "spent + possibly billed + reserved + this bound <= the
cap" and the reservation that follows are one step. Tables:

``glm_budget_totals``: ``budget``, ``period_start`` (key), ``spent_tokens``, ``spent_cost`` (known
usage of settled attempts), ``unknown_tokens``, ``unknown_cost`` (bounds of attempts that may have
been billed: lost answers and expired reservations), ``reserved_tokens``, ``reserved_cost`` (bounds of
attempts in flight), ``updated_at``.

``glm_budget_reservations``: one row per attempt: ``reservation_id``, ``budget``, ``period_start``,
the task instance (``dag_id``, ``task_id``, ``run_id``, ``map_index``, ``try_number``), ``row_key``,
``state`` (``reserved``, ``settled``, ``lost``, ``released``, ``expired``), the bound
(``tokens_bound``, ``cost_bound``), what was billed (``tokens``, ``cost``), ``created_at``,
``expires_at``, ``settled_at``. A reservation still ``reserved`` after ``expires_at`` (its worker was
killed) is moved to ``expired`` by the next reserver and counted as possibly billed; an expired
reservation that is settled after all moves from possibly billed to spent.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from airflow_provider_glm.budgets._spec import BudgetSpec
from airflow_provider_glm.rows._records import RunScope, utcnow
from airflow_provider_glm.sinks.sql._migrate import migrate
from airflow_provider_glm.sinks.sql._tables import ID_LENGTH, ROW_KEY_LENGTH
from airflow_provider_glm.sinks.sql._tables import _table_options as table_options
from airflow_provider_glm.sinks.sql._tables import _UTCDateTime as UTCDateTime

__all__ = ["BudgetState", "BudgetStore", "Reservation"]

TOTALS_TABLE = "glm_budget_totals"
RESERVATIONS_TABLE = "glm_budget_reservations"
_COST = sa.Numeric(20, 10)
_STATES = ("reserved", "settled", "lost", "released", "expired")


@dataclass(frozen=True)
class Reservation:
    """One attempt's reservation: its id, period and bound."""

    reservation_id: str
    period_start: dt.datetime
    tokens: int
    cost: Decimal | None


@dataclass(frozen=True)
class BudgetState:
    """A budget's figures for one period (what the spend page and the SQL in the docs show)."""

    budget: str
    period_start: dt.datetime
    period_end: dt.datetime
    spent_tokens: int
    spent_cost: Decimal
    unknown_tokens: int
    unknown_cost: Decimal
    reserved_tokens: int
    reserved_cost: Decimal
    max_tokens: int | None
    max_cost: Decimal | None
    currency: str | None

    @property
    def remaining_tokens(self) -> int | None:
        if self.max_tokens is None:
            return None
        return max(0, self.max_tokens - self.spent_tokens - self.unknown_tokens - self.reserved_tokens)

    @property
    def remaining_cost(self) -> Decimal | None:
        if self.max_cost is None:
            return None
        return max(Decimal(0), self.max_cost - self.spent_cost - self.unknown_cost - self.reserved_cost)


def _tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    totals = sa.Table(
        TOTALS_TABLE, metadata,
        sa.Column("budget", sa.String(ID_LENGTH), primary_key=True),
        sa.Column("period_start", UTCDateTime(), primary_key=True),
        *(sa.Column(f"{kind}_tokens", sa.BigInteger, nullable=False, server_default="0")
          for kind in ("spent", "unknown", "reserved")),
        *(sa.Column(f"{kind}_cost", _COST, nullable=False, server_default="0")
          for kind in ("spent", "unknown", "reserved")),
        sa.Column("updated_at", UTCDateTime()),
        **table_options(),
    )
    reservations = sa.Table(
        RESERVATIONS_TABLE, metadata,
        sa.Column("reservation_id", sa.CHAR(32), primary_key=True),
        sa.Column("budget", sa.String(ID_LENGTH), nullable=False),
        sa.Column("period_start", UTCDateTime(), nullable=False),
        sa.Column("dag_id", sa.String(ID_LENGTH)),
        sa.Column("task_id", sa.String(ID_LENGTH)),
        sa.Column("run_id", sa.String(ID_LENGTH)),
        sa.Column("map_index", sa.Integer),
        sa.Column("try_number", sa.Integer),
        sa.Column("row_key", sa.String(ROW_KEY_LENGTH)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("tokens_bound", sa.BigInteger, nullable=False),
        sa.Column("cost_bound", _COST),
        sa.Column("tokens", sa.BigInteger),
        sa.Column("cost", _COST),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("settled_at", UTCDateTime()),
        sa.Index("ix_glm_budget_reservations_open", "budget", "period_start", "state", "expires_at"),
        **table_options(),
    )
    return totals, reservations


class BudgetStore:
    """Reserve, settle and read one budget's books.

    :param engine: the database of ``spec.sql_conn_id``.
    :param spec: the budget.
    :param clock: the current time, timezone-aware (inject in tests).
    """

    def __init__(self, engine: Engine, spec: BudgetSpec, *, clock: Any = utcnow) -> None:
        self.engine = engine
        self.spec = spec
        self.clock = clock
        self.totals, self.reservations = _tables(sa.MetaData())
        self._sqlite = engine.dialect.name == "sqlite"

    def ensure_tables(self, *, log: Any = None) -> None:
        """Create the two tables when missing (or add what an older version lacks); never drop."""
        migrate(self.engine, [(self.totals, "budget,period_start"), (self.reservations, "reservation_id")], log=log)

    def _begin(self, conn: Connection) -> None:
        if self._sqlite:
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock now: reservers run one at a time

    def _locked_totals(self, conn: Connection, period: dt.datetime) -> Any:
        """The budget's totals row for ``period``, created if missing, locked until the transaction ends."""
        key = {"budget": self.spec.name, "period_start": period}
        totals = self.totals
        where = sa.and_(totals.c.budget == key["budget"], totals.c.period_start == period)
        row = conn.execute(sa.select(totals).where(where).with_for_update()).mappings().first()
        if row is None:
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(totals).values(**key, updated_at=self.clock()))
            except sa.exc.IntegrityError:
                pass  # another reserver created it meanwhile
            row = conn.execute(sa.select(totals).where(where).with_for_update()).mappings().one()
        return row

    def _expire(self, conn: Connection, period: dt.datetime, now: dt.datetime) -> tuple[int, Decimal]:
        """Move reservations past their expiry to ``expired``; their bounds count as possibly billed."""
        r = self.reservations
        stale = conn.execute(sa.select(r.c.reservation_id, r.c.tokens_bound, r.c.cost_bound).where(
            r.c.budget == self.spec.name, r.c.period_start == period, r.c.state == "reserved",
            r.c.expires_at < now)).all()
        if not stale:
            return 0, Decimal(0)
        conn.execute(sa.update(r).where(r.c.reservation_id.in_([s.reservation_id for s in stale]),
                                        r.c.state == "reserved").values(state="expired"))
        return sum(int(s.tokens_bound) for s in stale), sum((Decimal(s.cost_bound or 0) for s in stale), Decimal(0))

    def reserve(self, scope: RunScope | None, try_number: int | None, row_key: str | None, tokens: int,
                cost: Decimal | None, ttl: float) -> Reservation | str:
        """Reserve one attempt's bound, or say why the budget refuses it (nothing is written then)."""
        spec = self.spec
        now = self.clock()
        period = spec.period_start(now)
        with self.engine.connect() as conn:
            self._begin(conn)
            totals = self._locked_totals(conn, period)
            expired_tokens, expired_cost = self._expire(conn, period, now)
            reserved_tokens = int(totals["reserved_tokens"]) - expired_tokens
            reserved_cost = Decimal(totals["reserved_cost"]) - expired_cost
            unknown_tokens = int(totals["unknown_tokens"]) + expired_tokens
            unknown_cost = Decimal(totals["unknown_cost"]) + expired_cost
            used_tokens = int(totals["spent_tokens"]) + unknown_tokens + reserved_tokens
            used_cost = Decimal(totals["spent_cost"]) + unknown_cost + reserved_cost
            refusal = None
            if spec.max_tokens is not None and used_tokens + tokens > spec.max_tokens:
                refusal = (f"not sent: connection budget {spec.name!r} of {spec.describe()} reached ({used_tokens} "
                           f"tokens spent, possibly billed or reserved this {spec.per}; this attempt could bill up "
                           f"to {tokens} more)")
            elif spec.max_cost is not None and (cost is None or used_cost + cost > spec.max_cost):
                more = f"up to {cost:.6f} more" if cost is not None else "an unknown cost (no price)"
                refusal = (f"not sent: connection budget {spec.name!r} of {spec.describe()} reached ({used_cost:.6f} "
                           f"{spec.currency} spent, possibly billed or reserved this {spec.per}; this attempt "
                           f"could cost {more})")
            values: dict[str, Any] = {"reserved_tokens": reserved_tokens, "reserved_cost": reserved_cost,
                                      "unknown_tokens": unknown_tokens, "unknown_cost": unknown_cost,
                                      "updated_at": now}
            reservation = None
            if refusal is None:
                reservation = Reservation(uuid.uuid4().hex, period, tokens, cost)
                values.update(reserved_tokens=reserved_tokens + tokens,
                              reserved_cost=reserved_cost + (cost or Decimal(0)))
                conn.execute(sa.insert(self.reservations).values(
                    reservation_id=reservation.reservation_id, budget=spec.name, period_start=period,
                    **_scope_values(scope), try_number=try_number, row_key=row_key, state="reserved",
                    tokens_bound=tokens, cost_bound=cost, created_at=now,
                    expires_at=now + dt.timedelta(seconds=ttl)))
            if expired_tokens or reservation is not None:
                self._update_totals(conn, period, values)
            conn.commit()
        return reservation if reservation is not None else refusal  # type: ignore[return-value]

    def settle(self, reservation: Reservation, state: str, tokens: int = 0, cost: Decimal | None = None) -> None:
        """End a reservation: ``settled`` with what was billed, ``lost`` (its bound stays counted as possibly
        billed) or ``released`` (nothing was billed)."""
        if state not in ("settled", "lost", "released"):
            raise ValueError(f"a reservation ends settled, lost or released, not {state!r}")
        r = self.reservations
        now = self.clock()
        with self.engine.connect() as conn:
            self._begin(conn)
            totals = self._locked_totals(conn, reservation.period_start)
            before = conn.execute(sa.select(r.c.state).where(r.c.reservation_id == reservation.reservation_id)
                                  .with_for_update()).scalar()
            if before not in ("reserved", "expired"):
                conn.rollback()
                return  # settled already (an attempt is settled once)
            bound_cost = reservation.cost or Decimal(0)
            values: dict[str, Any] = {"updated_at": now}
            pool = "reserved" if before == "reserved" else "unknown"
            values[f"{pool}_tokens"] = int(totals[f"{pool}_tokens"]) - reservation.tokens
            values[f"{pool}_cost"] = Decimal(totals[f"{pool}_cost"]) - bound_cost
            if state == "settled":
                values["spent_tokens"] = int(totals["spent_tokens"]) + tokens
                values["spent_cost"] = Decimal(totals["spent_cost"]) + (cost or Decimal(0))
            elif state == "lost":
                values["unknown_tokens"] = values.get("unknown_tokens", int(totals["unknown_tokens"])) + \
                    reservation.tokens
                values["unknown_cost"] = values.get("unknown_cost", Decimal(totals["unknown_cost"])) + bound_cost
            conn.execute(sa.update(r).where(r.c.reservation_id == reservation.reservation_id).values(
                state=state, tokens=tokens if state == "settled" else None,
                cost=cost if state == "settled" else None, settled_at=now))
            self._update_totals(conn, reservation.period_start, values)
            conn.commit()

    def state(self, now: dt.datetime | None = None) -> BudgetState:
        """The figures of the period ``now`` falls in; reservations past their expiry count as possibly billed."""
        spec = self.spec
        now = now or self.clock()
        period = spec.period_start(now)
        t, r = self.totals, self.reservations
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.budget == spec.name, t.c.period_start == period)
                               ).mappings().first()
            stale = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(r.c.tokens_bound), 0),
                                           sa.func.coalesce(sa.func.sum(r.c.cost_bound), 0)).where(
                r.c.budget == spec.name, r.c.period_start == period, r.c.state == "reserved",
                r.c.expires_at < now)).one()
        get = (lambda name: row[name]) if row is not None else (lambda name: 0)
        stale_tokens, stale_cost = int(stale[0]), Decimal(stale[1])
        return BudgetState(spec.name, period, spec.period_end(period), int(get("spent_tokens")),
                           Decimal(get("spent_cost")), int(get("unknown_tokens")) + stale_tokens,
                           Decimal(get("unknown_cost")) + stale_cost, int(get("reserved_tokens")) - stale_tokens,
                           Decimal(get("reserved_cost")) - stale_cost, spec.max_tokens, spec.max_cost, spec.currency)

    def _update_totals(self, conn: Connection, period: dt.datetime, values: dict[str, Any]) -> None:
        t = self.totals
        conn.execute(sa.update(t).where(t.c.budget == self.spec.name, t.c.period_start == period).values(**values))


def _scope_values(scope: RunScope | None) -> dict[str, Any]:
    if scope is None:
        return {"dag_id": None, "task_id": None, "run_id": None, "map_index": None}
    return {"dag_id": scope.dag_id, "task_id": scope.task_id, "run_id": scope.run_id, "map_index": scope.map_index}
