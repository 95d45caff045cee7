"""What every GLM operator shares: parameters, the run's outcome, XCom and the runs table.

:class:`GLMBaseOperator` holds the parameters; :func:`~airflow_provider_glm.rows._plan.build_plan`
validates them into a run before any API call; :meth:`GLMBaseOperator.finish` turns the run's state
into the task's outcome: a return value sized for XCom, or a clear failure raised only after
everything that succeeded is written. The online chat and the batch operators differ only in how
the rows reach GLM in between.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_glm._compat import AirflowFailException, AirflowTaskTimeout
from airflow_provider_glm.exceptions import (
    GLMBudgetExceededError,
    GLMEndpointUnreachableError,
    GLMRowsFailedError,
)
from airflow_provider_glm.rows._records import utcnow

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_glm.hooks.glm import GLMHook
    from airflow_provider_glm.operators._lineage import LineageInfo
    from airflow_provider_glm.rows._plan import RunPlan
    from airflow_provider_glm.rows._state import RunState

__all__ = ["GLMBaseOperator"]

_MESSAGE_FIELDS = ("prompt", "system_prompt", "messages")


class GLMBaseOperator(BaseOperator):
    """Shared base of the GLM operators; see ``docs/operator.md`` for every parameter."""

    template_fields: Sequence[str] = (
        "prompt", "system_prompt", "messages", "model", "request_params", "rows", "columns", "row_key",
        "source_sql", "source_conn_id", "glm_conn_id", "sql_conn_id", "sqlalchemy_url", "results_table",
        "usage_table", "runs_table", "latest_table", "output_path", "output_conn_id",
    )
    template_fields_renderers = {"messages": "json", "request_params": "json", "rows": "json", "source_sql": "sql"}
    ui_color = "#3b5bdb"

    def __init__(
        self,
        *,
        prompt: str | None = None,
        system_prompt: str | None = None,
        messages: list[dict[str, Any]] | str | None = None,
        model: str | None = None,
        glm_conn_id: str = "glm_default",
        request_params: dict[str, Any] | None = None,
        rows: Any = None,
        columns: Sequence[str] | None = None,
        row_key: str | None = None,
        source_sql: str | None = None,
        source_conn_id: str | None = None,
        source_chunk_size: int = 1000,
        reuse_unchanged: bool = True,
        max_failed_rows: int = 0,
        max_filtered_rows: int | None = None,
        output_schema: Any = None,
        output_mode: str = "json",
        output_columns: bool = False,
        sql_conn_id: str | None = None,
        sqlalchemy_url: str | None = None,
        results_table: str = "glm_results",
        usage_table: str = "glm_usage",
        runs_table: str = "glm_runs",
        latest_table: str | None = None,
        prices: Mapping[str, Mapping[str, Any]] | None = None,
        max_xcom_rows: int = 1000,
        max_xcom_bytes: int = 48_000,
        fail_on_truncation: bool = False,
        write_timeout: float = 300.0,
        output_path: str | None = None,
        output_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        where = kwargs.get("task_id")
        if (prompt is None) == (messages is None):
            raise ValueError(f"{where}: give exactly one of `prompt` or `messages`")
        if sql_conn_id and sqlalchemy_url:
            raise ValueError(f"{where}: give `sql_conn_id` or `sqlalchemy_url`, not both")
        if rows is not None and source_sql is not None:
            raise ValueError(f"{where}: give `rows` or `source_sql`, not both")
        for name, value in (("max_failed_rows", max_failed_rows), ("max_filtered_rows", max_filtered_rows or 0),
                            ("max_xcom_rows", max_xcom_rows), ("max_xcom_bytes", max_xcom_bytes),
                            ("source_chunk_size", source_chunk_size - 1), ("write_timeout", write_timeout)):
            if isinstance(value, bool) or value < 0:
                raise ValueError(f"{where}: {name} must be >= {1 if name == 'source_chunk_size' else 0}")
        if output_mode not in ("json", "tool"):
            raise ValueError(f"{where}: output_mode must be 'json' or 'tool', got {output_mode!r}")
        self.prompt = prompt
        self.system_prompt = system_prompt
        self.messages = messages
        self.model = model
        self.glm_conn_id = glm_conn_id
        self.request_params = request_params or {}
        self.rows = rows
        self._row_mode = rows is not None or source_sql is not None
        self.columns = columns
        self.row_key = row_key
        self.source_sql = source_sql
        self.source_conn_id = source_conn_id
        self.source_chunk_size = source_chunk_size
        self.reuse_unchanged = reuse_unchanged
        self.max_failed_rows = max_failed_rows
        self.max_filtered_rows = max_filtered_rows
        self.output_schema = output_schema
        self.output_mode = output_mode
        self.output_columns = output_columns
        self.sql_conn_id = sql_conn_id
        self.sqlalchemy_url = sqlalchemy_url
        self.results_table = results_table
        self.usage_table = usage_table
        self.runs_table = runs_table
        self.latest_table = latest_table
        self.prices = prices
        self.max_xcom_rows = max_xcom_rows
        self.max_xcom_bytes = max_xcom_bytes
        self.fail_on_truncation = fail_on_truncation
        self.write_timeout = write_timeout
        self.output_path = output_path
        self.output_conn_id = output_conn_id

    @property
    def row_mode(self) -> bool:
        """Whether ``rows`` or ``source_sql`` was given (decided at construction: an upstream ``None`` is an
        error, not a prompt)."""
        return self._row_mode

    def _do_render_template_fields(self, parent: Any, template_fields: Any, context: Any, jinja_env: Any,
                                   seen_oids: set[int]) -> None:
        if parent is self and self.row_mode:
            skip = set(_MESSAGE_FIELDS)
            if isinstance(self.rows, (list, tuple)):
                skip.add("rows")
            template_fields = [f for f in template_fields if f not in skip]
        super()._do_render_template_fields(parent, template_fields, context, jinja_env, seen_oids)

    @cached_property
    def hook(self) -> GLMHook:
        """The ``glm`` connection's hook (built once per task instance)."""
        from airflow_provider_glm.hooks.glm import GLMHook  # lazy: DAG files import operators on every parse

        return GLMHook(glm_conn_id=self.glm_conn_id)

    def plan(self, context: Context, *, api: str, price_required: bool = False, discount: Any = None) -> RunPlan:
        """Validate everything and set up the run (see :func:`~airflow_provider_glm.rows._plan.build_plan`)."""
        from airflow_provider_glm.rows._plan import RunConfig, build_plan  # lazy: the row engine loads at execute

        config = RunConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(RunConfig)})
        return build_plan(config, self.hook, context, api=api, log=self.log, price_required=price_required,
                          discount=Decimal(1) if discount is None else discount)

    def finish(self, context: Context, run: RunPlan, *, api: str, budgets: Mapping[str, Any] | None = None) -> Any:
        """The task's outcome once every record is written: a return value, or the failure."""
        writer, state = run.writer, run.state
        if writer.unwritten:
            raise RuntimeError(
                f"{writer.unwritten} records could not be written to the sink ({writer.error}) within "
                f"{writer.write_timeout:.0f} s. Rows already written as ok are kept; a rerun requests the "
                "unwritten rows again."
            ) from writer.error
        if run.export is not None:
            run.output_path = run.export.write(run.scope, sink=run.sink,
                                               records=None if run.sink else writer.kept)
            if self.do_xcom_push:
                context["ti"].xcom_push(key="output_path", value=run.output_path)
        summary = state.summary(results_table=self.results_table if run.sink else None,
                                usage_table=self.usage_table if run.sink else None, output_path=run.output_path)
        self._lineage = _lineage_info(run, summary)
        try:
            outcome = self._row_result(context, run, summary) if self.row_mode else self._single_result(run)
        except BaseException:
            self._record_run(run, summary, api, budgets, "failed")
            raise
        self._record_run(run, summary, api, budgets, "success")
        return outcome

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the tables ``source_sql`` read, the tables written, and a ``glm`` run facet (rows,
        tokens, cost). Called by ``apache-airflow-providers-openlineage`` when it is installed."""
        from airflow_provider_glm.operators._lineage import operator_lineage  # lazy: only OpenLineage calls this

        return operator_lineage(getattr(self, "_lineage", None))

    def _record_run(self, run: RunPlan, summary: dict[str, Any], api: str, budgets: Mapping[str, Any] | None,
                    outcome: str) -> None:
        if run.sink is None:
            return
        row = {**summary, **(budgets or {}), "operator": type(self).__name__, "api": api, "model": run.model,
               "state": outcome, "started_at": run.started_at, "ended_at": utcnow()}
        row.update(cost=run.state.spend.total_cost, unknown_cost_max=run.state.spend.unknown_cost_max,
                   unknown_billing_attempts=run.state.spend.unknown_attempts)
        try:
            run.sink.write_run(run.scope, run.rules.try_number, row)
        except Exception as exc:  # the summary is a convenience: never fail a task that wrote its rows
            self.log.warning("Could not write this try's summary to %s: %s", self.runs_table, exc)

    def _single_result(self, run: RunPlan) -> Any:
        state = run.state
        if state.fatal is not None:
            raise AirflowFailException(f"GLM refused the account: {state.fatal}") from state.fatal
        self._raise_if_stopped(state)
        if state.first_error is not None:
            raise state.first_error
        assert run.single is not None
        return state.value(run.single.key)

    def _row_result(self, context: Context, run: RunPlan, summary: dict[str, Any]) -> Any:
        state = run.state
        if self.do_xcom_push:
            context["ti"].xcom_push(key="usage", value=summary)
        if state.fatal is not None:
            raise AirflowFailException(
                f"GLM refused the account ({state.fatal}); {state.count('skipped')} rows were not sent. "
                "Retrying cannot help until the account is fixed."
            ) from state.fatal
        self._raise_if_stopped(state)
        failed, filtered = state.count("failed"), state.count("filtered")
        first = "; ".join(str(f) for f in state.failures[:5])
        if failed > self.max_failed_rows or (self.max_filtered_rows is not None and filtered > self.max_filtered_rows):
            raise GLMRowsFailedError(
                f"{failed} rows failed and {filtered} were filtered (max_failed_rows={self.max_failed_rows}, "
                f"max_filtered_rows={self.max_filtered_rows}); the {state.count('ok')} ok rows are written. "
                f"First failures: {first}"
            )
        if failed or filtered:
            self.log.warning("%d rows failed and %d were filtered, within max_failed_rows=%d; first: %s",
                             failed, filtered, self.max_failed_rows, first)
        return self._return_value(run, summary)

    @staticmethod
    def _raise_if_stopped(state: RunState) -> None:
        """Fail for a budget (no retry: the budget counts every try), a timeout, an unreachable endpoint or a
        bad input row."""
        if state.stopped is None:
            return
        kind, reason = state.stopped
        message = f"{reason}; {state.count('skipped')} rows recorded as skipped"
        if kind == "budget":
            raise AirflowFailException(message) from GLMBudgetExceededError(message)
        if kind == "deadline":
            raise AirflowTaskTimeout(message)
        if kind == "unreachable":
            raise GLMEndpointUnreachableError(message)
        if kind == "input":
            raise ValueError(message)

    def _return_value(self, run: RunPlan, summary: dict[str, Any]) -> Any:
        values = run.state.values()
        if values is None:
            return summary
        if len(json.dumps(values, default=str)) > self.max_xcom_bytes:
            self.log.info("The row values exceed max_xcom_bytes=%d; returning a summary.", self.max_xcom_bytes)
            return summary
        return values


def _lineage_info(run: RunPlan, summary: dict[str, Any]) -> LineageInfo:
    """What OpenLineage will be told about this run (cheap: no parsing until it asks)."""
    # lazy, like every engine import here: DAG files import operators on every parse
    from airflow_provider_glm.operators._lineage import LineageInfo, dataset_namespace, table_name
    from airflow_provider_glm.rows._sources import QueryRows

    info = LineageInfo(summary=summary)
    if run.sink is not None:
        namespace, database = dataset_namespace(run.sink.engine)
        dialect = run.sink.engine.dialect.name
        tables = [run.sink.results_table, run.sink.usage_table, run.sink.runs_table, run.sink.latest_table]
        info.outputs = [(namespace, table_name(t, dialect, database)) for t in tables if t is not None]
    if isinstance(run.source, QueryRows):
        info.source_sql = run.source.sql
        info.source_namespace, info.source_database = dataset_namespace(run.source.engine)
        info.source_dialect = run.source.engine.dialect.name
    return info
