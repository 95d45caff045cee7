"""The example warehouse shared by the example DAGs (not a DAG itself; listed in .airflowignore).

``GLM_WAREHOUSE_URL`` picks the database (default: an embedded SQLite file under ``$AIRFLOW_HOME``);
``read_reviews`` is what an extract task of a real warehouse would do.
"""

from __future__ import annotations

import os

AIRFLOW_HOME = os.path.abspath(os.environ.get("AIRFLOW_HOME", "."))
WAREHOUSE_URL = os.environ.get("GLM_WAREHOUSE_URL", f"sqlite:///{os.path.join(AIRFLOW_HOME, 'warehouse.db')}")


def read_reviews() -> list[dict]:
    """Every row of ``reviews`` (a nightly job would select yesterday's)."""
    import sqlalchemy as sa

    engine = sa.create_engine(WAREHOUSE_URL)
    try:
        with engine.connect() as conn:
            result = conn.execute(sa.text("SELECT id, product, body FROM reviews ORDER BY id"))
            return [dict(row._mapping) for row in result]
    finally:
        engine.dispose()
