"""Partitioning helpers: parts are disjoint, cover the whole job, and refuse bad input."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from _databases import BACKENDS, backend_url

from airflow_provider_glm.partitioning import partition_queries, split_rows


@pytest.mark.parametrize(("count", "partitions", "sizes"), [
    (10, 4, [3, 3, 2, 2]), (3, 5, [1, 1, 1]), (0, 3, []), (8, 1, [8]), (9, 3, [3, 3, 3]),
])
def test_split_rows_sizes_differ_by_at_most_one(count: int, partitions: int, sizes: list[int]) -> None:
    parts = split_rows([{"id": i} for i in range(count)], partitions)
    assert [len(p) for p in parts] == sizes
    assert [row["id"] for part in parts for row in part] == list(range(count)), "order kept, nothing lost"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4"])
def test_partitions_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        split_rows([1, 2], bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive integer"):
        partition_queries("SELECT id FROM t", bad)  # type: ignore[arg-type]


def test_key_must_be_a_column_name_unless_an_expression_is_given() -> None:
    with pytest.raises(ValueError, match="column name"):
        partition_queries("SELECT id FROM t", 2, key="id; DROP TABLE t")
    assert partition_queries("SELECT id FROM t;", 2, key_expression="crc32(glm_part.id)")[1] == (
        "SELECT * FROM (SELECT id FROM t) glm_part WHERE COALESCE((((crc32(glm_part.id)) % 2) + 2) % 2, 0) = 1")


@pytest.mark.parametrize("backend", BACKENDS)
def test_partition_queries_cover_the_rows_exactly_once(backend: str, tmp_path: Path) -> None:
    url = backend_url(backend, tmp_path)
    table = f"part_{tmp_path.name[-8:]}".replace("-", "_")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, body VARCHAR(20))"))
            conn.execute(sa.text(f"INSERT INTO {table} (id, body) VALUES (:id, :body)"),
                         [{"id": i, "body": f"row {i}"} for i in range(1, 101)])
        parts = partition_queries(f"SELECT id, body FROM {table} ORDER BY id", 4)
        with engine.connect() as conn:
            seen = [sorted(r.id for r in conn.execute(sa.text(sql))) for sql in parts]
        assert sorted(i for part in seen for i in part) == list(range(1, 101))
        assert all(len(part) == 25 for part in seen)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


EDGE_KEYS = [-(2**63), -(2**53) - 1, -7, -3, -1, 0, 1, 2, 3, 5, 2**31, 2**53 + 1, 2**63 - 1, None, None]
"""Negative, zero, NULL and huge (64-bit extremes, beyond a double's exact integers) partition keys."""


@pytest.mark.parametrize("partitions", [1, 3, 4])
@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_null_and_huge_keys_land_in_exactly_one_part(backend: str, partitions: int,
                                                              tmp_path: Path) -> None:
    """Issue 22, finding 5: ``(k) % N = i`` gave no part to negative or NULL keys (ids -3, -1 and NULL were lost)."""
    url = backend_url(backend, tmp_path)
    table = f"part_edge_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    rows = [{"id": i, "k": k} for i, k in enumerate(EDGE_KEYS)]
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, k BIGINT NULL)"))
            conn.execute(sa.text(f"INSERT INTO {table} (id, k) VALUES (:id, :k)"), rows)
        parts = partition_queries(f"SELECT id, k FROM {table}", partitions, key="k")
        with engine.connect() as conn:
            seen = [sorted(r.id for r in conn.execute(sa.text(sql))) for sql in parts]
        assert sorted(i for part in seen for i in part) == [row["id"] for row in rows], "every row exactly once"
        # The documented assignment: Python's non-negative k % N, and the first part for NULL.
        expected = [sorted(r["id"] for r in rows if (0 if r["k"] is None else r["k"] % partitions) == i)
                    for i in range(partitions)]
        assert seen == expected
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()
