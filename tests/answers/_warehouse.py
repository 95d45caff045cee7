"""The results warehouse of the whole-answer tests: unique tables on one backend, read back per row key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow_provider_glm.rows._records import RunScope
from airflow_provider_glm.sinks.sql import SQLSink

SCOPE = RunScope("test_dag", "glm", "run-1")
"""The scope of the ``context`` fixture's task instance."""


@dataclass
class Warehouse:
    """Unique table names on one backend, and the sink that reads them back."""

    url: str
    results_table: str
    usage_table: str
    runs_table: str
    sink: SQLSink

    def operator_kwargs(self) -> dict[str, Any]:
        """What an operator needs to write to these tables."""
        return {"sqlalchemy_url": self.url, "results_table": self.results_table, "usage_table": self.usage_table,
                "runs_table": self.runs_table}

    def results(self, output_schema: Any = None) -> dict[str, dict[str, Any]]:
        """This scope's results by row key; with ``output_schema``, the typed output columns too."""
        if output_schema is None:
            return {row["row_key"]: row for row in self.sink.results(SCOPE)}
        from airflow_provider_glm.sinks.sql._tables import output_column_defs

        schema = output_schema.model_json_schema() if hasattr(output_schema, "model_json_schema") else output_schema
        typed = SQLSink(self.sink.engine, self.results_table, self.usage_table, self.runs_table,
                        output_columns=output_column_defs(schema))
        return {row["row_key"]: row for row in typed.results(SCOPE)}
