"""The SQL sink's schema: validated table names, column types, and the table definitions.

Four tables: results (one row per input row and run), the usage ledger (one row per billed or
possibly billed call), runs (one summary row per task try) and, when asked for, latest (the current
answer per row key, across runs).

The results table's primary key is the surrogate ``result_key``: the SHA-256 hex digest of the
logical key ``(dag_id, task_id, run_id, map_index, row_key)`` serialized as a compact UTF-8 JSON
array (see :func:`result_key`), because MySQL/MariaDB cannot index five long utf8mb4 VARCHARs
(3072-byte limit). Timestamps are stored in UTC on every dialect; long text is LONGTEXT on MySQL.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect

from airflow_provider_glm.rows._records import RunScope

__all__ = [
    "ID_LENGTH", "MYSQL_DIALECTS", "RESERVED_COLUMNS", "RESPONSE_ID_LENGTH", "ROW_KEY_LENGTH", "RUN_COUNTS",
    "SCOPE_COLUMNS", "column_category", "latest_key", "latest_table_def", "output_column_defs", "result_key",
    "results_table_def", "run_key", "runs_table_def", "usage_table_def", "validate_table_name",
]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
MYSQL_DIALECTS = ("mysql", "mariadb")
ID_LENGTH = 250
ROW_KEY_LENGTH = 255
RESPONSE_ID_LENGTH = 128
SCOPE_COLUMNS = ("dag_id", "task_id", "run_id")
_TOKENS = ("prompt_tokens", "completion_tokens", "total_tokens")
_USAGE_TOKENS = (*_TOKENS, "cached_tokens", "reasoning_tokens")
_ANSWER_JSON = ("tool_calls", "web_search", "content_filter")
RUN_COUNTS = ("rows", "ok", "failed", "filtered", "skipped", "reused", "resumed")
_RUN_TOKENS = ("prompt_tokens", "completion_tokens", "total_tokens", "unknown_tokens_max")


def validate_table_name(name: str) -> tuple[str | None, str]:
    """Split and validate ``table`` or ``schema.table``; each part must be a plain identifier.

    :param name: the configured table name.
    :return: ``(schema, table)``, schema ``None`` when not given.
    """
    parts = name.split(".") if isinstance(name, str) else []
    if not 1 <= len(parts) <= 2 or not all(_IDENTIFIER.fullmatch(part) for part in parts):
        raise ValueError(
            f"invalid table name {name!r}: expected 'table' or 'schema.table', each part matching "
            "[A-Za-z_][A-Za-z0-9_]{0,62}"
        )
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def _digest(logical: list[Any]) -> str:
    payload = json.dumps(logical, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def result_key(scope: RunScope, row_key: str) -> str:
    """The results table's primary key: SHA-256 hex of the compact JSON array of the logical key.

    :param scope: the task try's scope.
    :param row_key: the input row's key.
    """
    return _digest([scope.dag_id, scope.task_id, scope.run_id, scope.map_index, row_key])


def latest_key(dag_id: str, task_id: str, row_key: str) -> str:
    """The latest table's primary key: SHA-256 hex of ``[dag_id, task_id, row_key]``."""
    return _digest([dag_id, task_id, row_key])


def run_key(scope: RunScope, try_number: int) -> str:
    """The runs table's primary key: SHA-256 hex of ``[dag_id, task_id, run_id, map_index, try_number]``."""
    return _digest([scope.dag_id, scope.task_id, scope.run_id, scope.map_index, try_number])


RESERVED_COLUMNS = frozenset({
    "result_key", "latest_key", "dag_id", "task_id", "run_id", "map_index", "logical_date", "try_number", "row_key",
    "status", "content", "reasoning_content", "finish_reason", "output", "tool_calls", "web_search",
    "content_filter", "error", "model", "prompt_tokens", "completion_tokens", "total_tokens", "fingerprint",
    "reused_from_run_id", "updated_at",
})


def output_column_defs(json_schema: Any) -> list[sa.Column[Any]]:
    """One typed, nullable column per top-level property of a JSON schema (``output_columns=True``).

    integer → BIGINT, number → FLOAT (DOUBLE on MySQL/MariaDB), boolean → BOOLEAN, string and enum → TEXT,
    array and object → JSON.

    :raises ValueError: the schema has no top-level properties, or a property's name is not a plain
        identifier or is one of the results table's own columns.
    """
    properties = json_schema.get("properties") if isinstance(json_schema, dict) else None
    if not isinstance(properties, dict) or not properties:
        raise ValueError("output_columns needs an output_schema with top-level properties")
    columns = []
    for name, spec in properties.items():
        if not _IDENTIFIER.fullmatch(name) or name.lower() in RESERVED_COLUMNS:
            raise ValueError(
                f"output_schema property {name!r} cannot be a column: it must match [A-Za-z_][A-Za-z0-9_]{{0,62}} "
                f"and not be one of the results table's own columns ({', '.join(sorted(RESERVED_COLUMNS))})"
            )
        columns.append(sa.Column(name, _column_type(_resolve(json_schema, spec))))
    return columns


def _resolve(root: dict[str, Any], spec: Any) -> dict[str, Any]:
    """Follow ``$ref`` and drop the ``null`` branch of ``anyOf``/``oneOf`` (an Optional field)."""
    for _ in range(20):
        if not isinstance(spec, dict):
            return {}
        ref = spec.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = root
            for part in ref[2:].split("/"):
                target = target.get(part, {}) if isinstance(target, dict) else {}
            spec = target
            continue
        branches = spec.get("anyOf") or spec.get("oneOf")
        if isinstance(branches, list):
            kept = [b for b in branches if not (isinstance(b, dict) and b.get("type") == "null")]
            if len(kept) == 1:
                spec = kept[0]
                continue
        return spec
    return {}


def _column_type(spec: dict[str, Any]) -> sa.types.TypeEngine[Any]:
    kind = spec.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if kind is None and "enum" in spec:
        values = spec["enum"]
        kind = "string" if all(isinstance(v, str) for v in values) else None
    if kind is None and "const" in spec and isinstance(spec["const"], str):
        kind = "string"
    if kind == "integer":
        return sa.BigInteger()
    if kind == "number":
        # MySQL/MariaDB's FLOAT is single precision (123456.789 reads back as 123457): DOUBLE there
        return sa.Float().with_variant(mysql.DOUBLE(asdecimal=False), *MYSQL_DIALECTS)
    if kind == "boolean":
        return sa.Boolean()
    if kind == "string":
        return _long_text()
    return sa.JSON(none_as_null=True)


def column_category(type_: sa.types.TypeEngine[Any], dialect: str) -> str:
    """A coarse kind of a column type (``numeric``, ``boolean``, ``text``, ``json``, ``other``) for comparing
    a typed output column with the one a table already has (MariaDB stores JSON as LONGTEXT and BOOLEAN as
    TINYINT, so those compare as text and numeric there)."""
    if isinstance(type_, sa.JSON):
        return "text" if dialect in MYSQL_DIALECTS else "json"
    if isinstance(type_, sa.Boolean):
        return "numeric" if dialect in MYSQL_DIALECTS else "boolean"
    if isinstance(type_, (sa.Integer, sa.Float, sa.Numeric)):
        return "numeric"
    if isinstance(type_, (sa.String, sa.Text)):
        return "text"
    return "other"


class _UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """A timezone-aware timestamp stored in UTC; naive values are taken as UTC.

    PostgreSQL stores ``timestamptz``; SQLite and MySQL/MariaDB store naive UTC (``DATETIME(6)``
    on MySQL, which would otherwise drop microseconds). Values always read back aware, in UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in MYSQL_DIALECTS:
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise ValueError(f"expected a datetime, got {value!r}")
        value = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)  # type: ignore[no-any-return]
        return value.astimezone(dt.UTC)  # type: ignore[no-any-return]


def _long_text() -> sa.types.TypeEngine[str]:
    return sa.Text().with_variant(mysql.LONGTEXT(), *MYSQL_DIALECTS)


def _index_name(table: str, suffix: str) -> str:
    name = f"ix_{table}_{suffix}"
    if len(name) <= 60:
        return name
    return f"ix_{table[:40]}_{hashlib.sha256(table.encode()).hexdigest()[:8]}_{suffix}"


def _table_options() -> dict[str, Any]:
    """InnoDB, utf8mb4 and binary (case-sensitive) comparison of ids on MySQL/MariaDB."""
    options = {"engine": "InnoDB", "default_charset": "utf8mb4", "collate": "utf8mb4_bin"}
    return {f"{prefix}_{name}": value for prefix in MYSQL_DIALECTS for name, value in options.items()}


def _scope_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("dag_id", sa.String(ID_LENGTH), nullable=False),
        sa.Column("task_id", sa.String(ID_LENGTH), nullable=False),
        sa.Column("run_id", sa.String(ID_LENGTH), nullable=False),
        sa.Column("map_index", sa.Integer, nullable=False),
    ]


def _answer_columns() -> list[sa.Column[Any]]:
    """What a result holds: status, the answer's parts, tokens, and where it came from."""
    return [
        sa.Column("logical_date", _UTCDateTime()),
        sa.Column("try_number", sa.Integer),
        sa.Column("row_key", sa.String(ROW_KEY_LENGTH), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        *(sa.Column(column, _long_text()) for column in ("content", "reasoning_content")),
        sa.Column("finish_reason", sa.String(64)),
        sa.Column("output", sa.JSON(none_as_null=True)),
        *(sa.Column(column, sa.JSON(none_as_null=True)) for column in _ANSWER_JSON),
        sa.Column("error", _long_text()),
        sa.Column("model", sa.String(128)),
        *(sa.Column(column, sa.Integer) for column in _TOKENS),
        sa.Column("fingerprint", sa.CHAR(64)),
        sa.Column("reused_from_run_id", sa.String(ID_LENGTH)),
        sa.Column("updated_at", _UTCDateTime(), nullable=False),
    ]


def results_table_def(metadata: sa.MetaData, schema: str | None, name: str,
                      output_columns: Sequence[sa.Column[Any]] = ()) -> sa.Table:
    """The results table: one row per input row and run, upserted on ``result_key``.

    :param output_columns: typed columns filled from the structured output (``output_columns=True``).
    """
    return sa.Table(
        name,
        metadata,
        sa.Column("result_key", sa.CHAR(64), primary_key=True),
        *_scope_columns(),
        *_answer_columns(),
        *output_columns,
        sa.Index(_index_name(name, "scope"), *SCOPE_COLUMNS),
        sa.Index(_index_name(name, "fingerprint"), "fingerprint"),
        schema=schema,
        **_table_options(),
    )


def latest_table_def(metadata: sa.MetaData, schema: str | None, name: str,
                     output_columns: Sequence[sa.Column[Any]] = ()) -> sa.Table:
    """The latest table: the current ``ok`` answer per (dag_id, task_id, row_key), upserted on ``latest_key``.

    Its ``run_id`` is the run that last wrote the row; ``reused_from_run_id`` the run that paid for it.
    """
    return sa.Table(
        name,
        metadata,
        sa.Column("latest_key", sa.CHAR(64), primary_key=True),
        *_scope_columns(),
        *_answer_columns(),
        *output_columns,
        sa.Index(_index_name(name, "task"), "dag_id", "task_id"),
        schema=schema,
        **_table_options(),
    )


def usage_table_def(metadata: sa.MetaData, schema: str | None, name: str) -> sa.Table:
    """The usage ledger: one row per billed (or possibly billed) call, keyed by ``response_id``.

    ``billing`` is ``known`` when the answer's usage came back, ``unknown`` for a call that ended
    without a usable answer after attempts that may have been billed; ``unknown_tokens_max`` and
    ``unknown_cost_max`` bound what those attempts can have cost.
    """
    return sa.Table(
        name,
        metadata,
        sa.Column("response_id", sa.String(RESPONSE_ID_LENGTH), primary_key=True),
        sa.Column("request_id", sa.String(RESPONSE_ID_LENGTH)),
        *_scope_columns(),
        sa.Column("logical_date", _UTCDateTime()),
        sa.Column("try_number", sa.Integer, nullable=False),
        sa.Column("row_key", sa.String(ROW_KEY_LENGTH)),
        sa.Column("api", sa.String(16), nullable=False, server_default="online"),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("billing", sa.String(8), nullable=False, server_default="known"),
        *(sa.Column(column, sa.Integer, nullable=False) for column in _USAGE_TOKENS),
        sa.Column("cost", sa.Numeric(20, 10)),
        sa.Column("currency", sa.String(8)),
        sa.Column("latency_ms", sa.Integer),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
        sa.Column("unknown_billing_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("unknown_tokens_max", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("unknown_cost_max", sa.Numeric(20, 10)),
        sa.Column("created_at", _UTCDateTime(), nullable=False),
        sa.Index(_index_name(name, "scope"), *SCOPE_COLUMNS),
        sa.Index(_index_name(name, "created"), "created_at"),
        sa.Index(_index_name(name, "dag_created"), "dag_id", "created_at"),
        schema=schema,
        **_table_options(),
    )


def runs_table_def(metadata: sa.MetaData, schema: str | None, name: str) -> sa.Table:
    """The runs table: one summary row per task try (counts, spend, budgets), upserted on ``run_key``."""
    return sa.Table(
        name,
        metadata,
        sa.Column("run_key", sa.CHAR(64), primary_key=True),
        *_scope_columns(),
        sa.Column("logical_date", _UTCDateTime()),
        sa.Column("try_number", sa.Integer, nullable=False),
        sa.Column("operator", sa.String(64), nullable=False),
        sa.Column("api", sa.String(16), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        *(sa.Column(column, sa.Integer, nullable=False, server_default="0") for column in RUN_COUNTS),
        *(sa.Column(column, sa.BigInteger, nullable=False, server_default="0") for column in _RUN_TOKENS),
        sa.Column("unknown_billing_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cost", sa.Numeric(20, 10)),
        sa.Column("unknown_cost_max", sa.Numeric(20, 10)),
        sa.Column("currency", sa.String(8)),
        sa.Column("max_total_tokens", sa.BigInteger),
        sa.Column("max_cost", sa.Numeric(20, 10)),
        sa.Column("stop_kind", sa.String(16)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("started_at", _UTCDateTime(), nullable=False),
        sa.Column("ended_at", _UTCDateTime()),
        sa.Index(_index_name(name, "dag_started"), "dag_id", "started_at"),
        schema=schema,
        **_table_options(),
    )
