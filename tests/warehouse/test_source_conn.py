"""``source_conn_id``: the query runs on another Airflow SQL connection than the sink's database; ``source_sql``
is templated like any Airflow field (``{{ ds }}``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _databases import server_url
from _nightly import PROMPT, Nightly, expected_content

from airflow_provider_glm.operators.chat import GLMChatOperator

DAYS = ["2026-11-27", "2026-11-28"]


def connection_json(backend: str, tmp_path: Path) -> tuple[str, str]:
    """An Airflow connection (JSON) to a source database of ``backend``, and its SQLAlchemy URL."""
    if backend == "sqlite":
        path = tmp_path / "source.db"
        return json.dumps({"conn_type": "sqlite", "host": str(path)}), f"sqlite:///{path}"
    url = sa.engine.make_url(server_url(backend))
    conn = {"conn_type": "postgres", "host": url.host, "port": url.port or 5432, "login": url.username,
            "schema": url.database}
    return json.dumps(conn), url.render_as_string(hide_password=False)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_rows_come_from_the_source_connection_and_results_go_to_the_sink(
    glm_conn: Any, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn_json, source_url = connection_json(backend, tmp_path)
    monkeypatch.setenv("AIRFLOW_CONN_REVIEWS_SOURCE", conn_json)
    table = f"reviews_{tmp_path.name[-12:]}".replace("-", "_").lower()
    source = sa.create_engine(source_url, poolclass=sa.pool.NullPool)
    with source.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, day VARCHAR(10), product VARCHAR(20), "
                             "body VARCHAR(200))"))
        conn.execute(sa.text(f"INSERT INTO {table} VALUES (:id, :day, :product, :body)"),
                     [{"id": i, "day": DAYS[i % 2], "product": "P1", "body": f"Review {i}"} for i in range(10)])
    sink_url = f"sqlite:///{tmp_path / 'sink.db'}"
    try:
        op = GLMChatOperator(task_id="summarize", source_conn_id="reviews_source", row_key="id", prompt=PROMPT,
                             source_sql=f"SELECT id, product, body FROM {table} WHERE day = '{{{{ ds }}}}'",
                             sqlalchemy_url=sink_url, source_chunk_size=2)
        context = Nightly.context("scheduled__2026-11-28")
        context["ds"] = "2026-11-28"
        op.render_template_fields(context)
        assert op.source_sql.endswith("WHERE day = '2026-11-28'")
        op.execute(context)

        assert glm_conn.stats.requests == 5
        sink = sa.create_engine(sink_url)
        with sink.connect() as conn:
            rows = {r.row_key: r.content for r in conn.execute(sa.text("SELECT row_key, content FROM glm_results"))}
            assert not sa.inspect(conn).has_table(table), "the query ran on the source, not the sink"
        sink.dispose()
        assert rows == {str(i): expected_content("P1", f"Review {i}") for i in range(1, 10, 2)}
        lineage = op.get_openlineage_facets_on_complete(None)
        (read,) = lineage.inputs
        assert read.namespace.startswith("sqlite://" if backend == "sqlite" else "postgres://")
        assert read.name.endswith(table)
        assert {d.namespace for d in lineage.outputs} == {f"sqlite://{tmp_path / 'sink.db'}"}
    finally:
        with source.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        source.dispose()
