"""Budgets on a GLM connection: a daily or monthly cap held across DAGs, mapped tasks and workers.

A connection's ``budget`` extra (:mod:`._spec`) names a SQL database whose reservation tables
(:mod:`._store`) every task using the connection counts in: before each attempt its upper bound is
reserved, in a transaction that serializes concurrent reservers; the answer replaces the reservation
by what was billed; a lost answer keeps its bound as possibly billed. :mod:`._gate` connects that to
the client's attempt loop. Internal: ``docs/operator.md`` (Budgets) and ``docs/connections.md``
describe the extra and what users see.
"""

__all__: list[str] = []
