"""OpenLineage for the GLM operators: what a run read, what it wrote, and what it spent.

With ``apache-airflow-providers-openlineage`` installed (the ``openlineage`` extra), Airflow asks each
finished GLM task for :func:`operator_lineage`: the input datasets are the tables ``source_sql``
reads (parsed with OpenLineage's SQL parser), the outputs are the results table, the usage ledger,
the runs table and the latest table, and a ``glm`` run facet carries the rows, tokens and cost.
Nothing here is imported unless OpenLineage asks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = ["LineageInfo", "dataset_namespace", "operator_lineage"]


@dataclass
class LineageInfo:
    """What a finished run reports (plain values, kept on the operator until OpenLineage asks)."""

    outputs: list[tuple[str, str]] = field(default_factory=list)
    """``(namespace, name)`` of every table written."""
    source_sql: str | None = None
    source_namespace: str | None = None
    source_dialect: str | None = None
    source_database: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def dataset_namespace(engine: Engine) -> tuple[str, str | None]:
    """The OpenLineage namespace of a database (no credentials) and its database name.

    PostgreSQL ``postgres://host:port``, MySQL/MariaDB ``mysql://host:port``, SQLite ``sqlite://<path>``.
    """
    url = engine.url
    backend = url.get_backend_name()
    if backend == "sqlite":
        return f"sqlite://{url.database or ':memory:'}", None
    scheme = "postgres" if backend == "postgresql" else "mysql" if backend in ("mysql", "mariadb") else backend
    port = url.port or {"postgres": 5432, "mysql": 3306}.get(scheme)
    return f"{scheme}://{url.host}:{port}", url.database


def table_name(table: Any, dialect: str, database: str | None) -> str:
    """A table's OpenLineage name: ``database.schema.table`` on PostgreSQL, ``database.table`` on MySQL."""
    if dialect == "postgresql":
        return f"{database}.{table.schema or 'public'}.{table.name}"
    if dialect in ("mysql", "mariadb"):
        return f"{table.schema or database}.{table.name}"
    return str(table.fullname)


def operator_lineage(info: LineageInfo | None) -> Any:
    """The ``OperatorLineage`` for a finished run (``None`` before a run)."""
    if info is None:
        return None
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import Dataset

    inputs = [Dataset(namespace=info.source_namespace or "", name=name) for name in _source_tables(info)]
    outputs = [Dataset(namespace=namespace, name=name) for namespace, name in info.outputs]
    return OperatorLineage(inputs=inputs, outputs=outputs, run_facets={"glm": _run_facet(info.summary)})


def _source_tables(info: LineageInfo) -> list[str]:
    if not info.source_sql:
        return []
    from openlineage.common.sql import parse  # type: ignore[import-untyped]

    dialect = {"postgresql": "postgres", "mariadb": "mysql"}.get(info.source_dialect or "", info.source_dialect)
    meta = parse([info.source_sql], dialect=dialect)
    names = []
    for table in (meta.in_tables if meta is not None else []):
        parts = [table.database, table.schema, table.name]
        if info.source_dialect == "postgresql":
            parts = [table.database or info.source_database, table.schema or "public", table.name]
        elif info.source_dialect in ("mysql", "mariadb"):
            parts = [table.schema or info.source_database, table.name]
        names.append(".".join(p for p in parts if p))
    return names


def _run_facet(summary: Mapping[str, Any]) -> Any:
    import attrs
    from openlineage.client.facet_v2 import RunFacet

    @attrs.define
    class GLMRunFacet(RunFacet):
        """Rows, tokens and cost of one GLM task run (possibly billed attempts included)."""

        rows: int = 0
        ok: int = 0
        failed: int = 0
        filtered: int = 0
        skipped: int = 0
        reused: int = 0
        total_tokens: int = 0
        cost: float | None = None
        currency: str | None = None
        unknownBillingAttempts: int = 0  # noqa: N815 - OpenLineage facets use camelCase keys
        unknownTokensMax: int = 0  # noqa: N815

    return GLMRunFacet(
        rows=int(summary.get("rows") or 0), ok=int(summary.get("ok") or 0), failed=int(summary.get("failed") or 0),
        filtered=int(summary.get("filtered") or 0), skipped=int(summary.get("skipped") or 0),
        reused=int(summary.get("reused") or 0), total_tokens=int(summary.get("total_tokens") or 0),
        cost=summary.get("cost"), currency=summary.get("currency"),
        unknownBillingAttempts=int(summary.get("unknown_billing_attempts") or 0),
        unknownTokensMax=int(summary.get("unknown_tokens_max") or 0),
    )
