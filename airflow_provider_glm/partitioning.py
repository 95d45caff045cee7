"""Splitting one big GLM job into N mapped tasks that share the results table and the ledger.

Two shapes, both for ``GLMChatOperator.partial(...).expand(...)``:

* :func:`partition_queries` turns one ``source_sql`` into N queries that each read a disjoint part
  (the key's non-negative remainder modulo N; NULL keys in the first part), for
  ``.expand(source_sql=...)``: each mapped task streams its part.
* :func:`split_rows` cuts a list of rows into N lists of nearly equal size, for ``.expand(rows=...)``
  (call it in the upstream task that returns the rows).

Every mapped task has its own ``map_index`` in the tables, so they write the same results table and
ledger safely; reuse of unchanged rows works across them. With a ``pool`` sized to the account's
concurrency limit, each task holds ``max_concurrency`` slots, so N tasks never exceed the limit
together (see ``docs/scaling.md``). This module imports nothing heavy: DAG files may use it freely.

Example::

    GLMChatOperator.partial(
        task_id="summarize", row_key="id", prompt="Summarize: {{ row.body }}",
        sqlalchemy_url=WAREHOUSE, pool="glm_account", max_concurrency=8,
    ).expand(source_sql=partition_queries("SELECT id, body FROM reviews", partitions=4))
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, TypeVar

__all__ = ["partition_queries", "split_rows"]

T = TypeVar("T")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def partition_queries(sql: str, partitions: int, *, key: str = "id", key_expression: str | None = None) -> list[str]:
    """``partitions`` queries that together return exactly the rows of ``sql``, each a disjoint part.

    The query is wrapped, not edited::

        SELECT * FROM (<sql>) glm_part WHERE COALESCE((((<key>) % N) + N) % N, 0) = i

    A row goes to part ``key mod N`` counted non-negatively (as Python's ``%``: key -3 of 4 parts goes
    to part 1), and a row whose key is NULL to the first part, so negative, zero, NULL and 64-bit keys
    each land in exactly one part. SQL's ``%`` keeps the dividend's sign on SQLite, PostgreSQL and
    MySQL/MariaDB, hence the ``+ N``; the remainder is below N in size, so the sum cannot overflow.
    The key must be an integer column; for another key give ``key_expression``, an integer
    expression over the query's columns (e.g. ``hashtext(glm_part.id)`` on PostgreSQL,
    ``crc32(glm_part.id)`` on MySQL). The SQL may hold Airflow templates (``{{ ds }}``): each part
    is rendered per mapped task.

    :param sql: the query of the whole job (no trailing semicolon).
    :param partitions: how many parts (mapped tasks).
    :param key: the integer column that decides a row's part.
    :param key_expression: an integer SQL expression to use instead of ``key`` (trusted text, not a value).
    """
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        raise ValueError(f"partitions must be a positive integer, got {partitions!r}")
    if key_expression is None and not _KEY.fullmatch(key):
        raise ValueError(f"key must be a column name, got {key!r}; use key_expression for an expression")
    body = sql.strip().rstrip(";").strip()
    if not body:
        raise ValueError("sql is empty")
    expression = key_expression or f"glm_part.{key}"
    n = partitions
    part = f"COALESCE(((({expression}) % {n}) + {n}) % {n}, 0)"
    return [f"SELECT * FROM ({body}) glm_part WHERE {part} = {i}" for i in range(n)]


def split_rows(rows: Sequence[T] | Any, partitions: int) -> list[list[T]]:
    """``rows`` cut into ``partitions`` consecutive lists whose sizes differ by at most one (empty ones dropped)."""
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        raise ValueError(f"partitions must be a positive integer, got {partitions!r}")
    items = list(rows)
    size, extra = divmod(len(items), partitions)
    out: list[list[T]] = []
    start = 0
    for index in range(partitions):
        end = start + size + (index < extra)
        if end > start:
            out.append(items[start:end])
        start = end
    return out
