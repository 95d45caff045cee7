"""Creating and extending the sink's tables: create what is missing, add what a table lacks, never drop.

A table created by an older release, or before a field was added to ``output_schema``, gains the
missing columns (all nullable or defaulted) and indexes with ``ALTER TABLE ... ADD COLUMN``. A typed
output column whose type would change is refused before any call: that migration is the user's.
Several tasks may migrate at once; a statement that loses such a race is followed by a fresh look.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from airflow_provider_glm.sinks.sql._retry import database_retry
from airflow_provider_glm.sinks.sql._tables import column_category

__all__ = ["migrate"]


def migrate(engine: Engine, tables: list[tuple[sa.Table, str]], *, timeout: float = 60.0, log: Any = None) -> None:
    """Bring ``tables`` (each with its key column, or its columns joined by commas) to their definitions in
    ``engine``'s database.

    :raises ValueError: a table lacks its primary key / unique key, or a column's type would change.
    """
    log = log or logging.getLogger(__name__)
    retrying = database_retry(timeout, what="preparing the tables", log=log, asynchronous=False,
                              retry_on=lambda exc: isinstance(exc, DBAPIError))
    for attempt in retrying:
        with attempt, engine.begin() as conn:
            for table, key in tables:
                _create_or_extend(conn, table, key, log)
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        for table, key in tables:
            _check_key(inspector, table, key)


def _create_or_extend(conn: Connection, table: sa.Table, key: str, log: Any) -> None:
    inspector = sa.inspect(conn)
    if not inspector.has_table(table.name, schema=table.schema):
        table.create(conn, checkfirst=True)
        return
    existing = {c["name"].lower(): c for c in inspector.get_columns(table.name, schema=table.schema)}
    if any(part not in existing for part in key.split(",")):
        # not a table of ours (or not one we can recognise): never alter it
        missing = [c.name for c in table.columns if c.name.lower() not in existing]
        raise ValueError(f"table {table.fullname!r} exists but lacks required column(s) {missing}: migrate or "
                         "drop it, or configure another table name")
    required = [c.name for c in table.columns if c.name.lower() not in existing and not c.nullable
                and c.server_default is None]
    if required:
        raise ValueError(f"table {table.fullname!r} exists but lacks required column(s) {required}: migrate or "
                         "drop it, or configure another table name")
    dialect = conn.dialect.name
    for column in table.columns:
        found = existing.get(column.name.lower())
        if found is None:
            _add_column(conn, table, column)
            log.info("Added column %s to table %s.", column.name, table.fullname)
            continue
        want, have = column_category(column.type, dialect), column_category(found["type"], dialect)
        if column.nullable and not column.primary_key and "other" not in (want, have) and want != have \
                and not _compatible(want, have):
            raise ValueError(
                f"table {table.fullname!r}: column {column.name!r} is {found['type']} but output_schema now makes "
                f"it {column.type.compile(dialect=conn.dialect)}; the sink never changes a column's type. "
                "Migrate the column yourself, or write to a new results table"
            )
    indexed = {index["name"] for index in inspector.get_indexes(table.name, schema=table.schema)}
    for index in table.indexes:
        if index.name not in indexed:
            index.create(conn, checkfirst=True)


def _compatible(want: str, have: str) -> bool:
    """SQLite keeps JSON and booleans by affinity; accept the pairs it reflects differently."""
    return {want, have} in ({"boolean", "numeric"},)


def _add_column(conn: Connection, table: sa.Table, column: sa.Column[Any]) -> None:
    preparer = conn.dialect.identifier_preparer
    ddl = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
    conn.execute(sa.text(f"ALTER TABLE {preparer.format_table(table)} ADD COLUMN {ddl}"))


def _check_key(inspector: sa.Inspector, table: sa.Table, key: str) -> None:
    keys: list[list[Any]] = [inspector.get_pk_constraint(table.name, schema=table.schema)["constrained_columns"]]
    keys += [u["column_names"] for u in inspector.get_unique_constraints(table.name, schema=table.schema)]
    keys += [i["column_names"] for i in inspector.get_indexes(table.name, schema=table.schema) if i["unique"]]
    if not any([str(name).lower() for name in cols] == key.split(",") for cols in keys):
        raise ValueError(f"table {table.fullname!r} exists but has no primary key or unique index on ({key})")
