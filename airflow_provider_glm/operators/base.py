"""What every GLM row operator shares: parameters, pre-flight validation, sinks, results and XCom.

:class:`GLMBaseOperator` turns its parameters into a :class:`Prepared` run (every row rendered and
validated, tables checked, resume and pricing set up) before any API call, and turns the run's
totals into the task's outcome: a return value sized for XCom, or a clear failure raised only after
everything that succeeded is written. The online chat and the batch operators differ only in how
the rows reach GLM in between.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook, BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_glm.hooks.glm import GLMHook
    from airflow_provider_glm.recording import RunRecorder, RunTotals
    from airflow_provider_glm.rendering import Row
    from airflow_provider_glm.sinks.objectstorage import JSONLResultsExport
    from airflow_provider_glm.sinks.records import UsageRecord
    from airflow_provider_glm.sinks.sql import SQLSink

__all__ = ["GLMBaseOperator", "Prepared"]

_MESSAGE_FIELDS = ("prompt", "system_prompt", "messages")
SINGLE_ROW_KEY = "single"
"""The row key of a single-mode request in the results table."""


@dataclass
class Prepared:
    """A validated run: nothing here has called the API yet."""

    hook: GLMHook
    model: str
    params: dict[str, Any]
    rows: list[Row]
    template: Any
    recorder: RunRecorder
    sink: SQLSink | None
    export: JSONLResultsExport | None = None
    output_path: str | None = None


class GLMBaseOperator(BaseOperator):
    """Shared base of the GLM operators; see ``docs/operator.md`` for every parameter."""

    template_fields: Sequence[str] = (
        "prompt", "system_prompt", "messages", "model", "request_params", "rows", "columns", "row_key",
        "glm_conn_id", "sql_conn_id", "sqlalchemy_url", "results_table", "usage_table", "output_path",
        "output_conn_id",
    )
    template_fields_renderers = {"messages": "json", "request_params": "json", "rows": "json"}
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
        max_failed_rows: int = 0,
        max_filtered_rows: int | None = None,
        output_schema: Any = None,
        sql_conn_id: str | None = None,
        sqlalchemy_url: str | None = None,
        results_table: str = "glm_results",
        usage_table: str = "glm_usage",
        prices: Mapping[str, Mapping[str, Any]] | None = None,
        max_xcom_rows: int = 1000,
        max_xcom_bytes: int = 48_000,
        fail_on_truncation: bool = False,
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
        for name, value in (("max_failed_rows", max_failed_rows), ("max_filtered_rows", max_filtered_rows or 0),
                            ("max_xcom_rows", max_xcom_rows), ("max_xcom_bytes", max_xcom_bytes)):
            if value < 0:
                raise ValueError(f"{where}: {name} must be >= 0, got {value}")
        self.prompt = prompt
        self.system_prompt = system_prompt
        self.messages = messages
        self.model = model
        self.glm_conn_id = glm_conn_id
        self.request_params = request_params or {}
        self.rows = rows
        self._row_mode = rows is not None
        self.columns = columns
        self.row_key = row_key
        self.max_failed_rows = max_failed_rows
        self.max_filtered_rows = max_filtered_rows
        self.output_schema = output_schema
        self.sql_conn_id = sql_conn_id
        self.sqlalchemy_url = sqlalchemy_url
        self.results_table = results_table
        self.usage_table = usage_table
        self.prices = prices
        self.max_xcom_rows = max_xcom_rows
        self.max_xcom_bytes = max_xcom_bytes
        self.fail_on_truncation = fail_on_truncation
        self.output_path = output_path
        self.output_conn_id = output_conn_id

    @property
    def row_mode(self) -> bool:
        """Whether ``rows`` was given (decided at construction: an upstream ``None`` is an error, not a prompt)."""
        return self._row_mode

    def _do_render_template_fields(self, parent: Any, template_fields: Any, context: Any, jinja_env: Any,
                                   seen_oids: set[int]) -> None:
        if parent is self and self.row_mode:
            skip = set(_MESSAGE_FIELDS)
            if isinstance(self.rows, (list, tuple)):
                skip.add("rows")
            template_fields = [f for f in template_fields if f not in skip]
        super()._do_render_template_fields(parent, template_fields, context, jinja_env, seen_oids)

    @property
    def hook(self) -> GLMHook:
        from airflow_provider_glm.hooks.glm import GLMHook

        return GLMHook(glm_conn_id=self.glm_conn_id)

    def prepare(self, context: Context, *, price_required: bool = False, discount: Decimal = Decimal(1)) -> Prepared:
        """Validate everything and set up the sink and recorder; no API call happens here.

        :param price_required: refuse a model the price table does not know (cost budgets need it).
        :param discount: price multiplier of the API used (0.5 for batch).
        """
        from airflow_provider_glm.models import build_chat_request
        from airflow_provider_glm.pricing import PriceTable, compute_cost
        from airflow_provider_glm.recording import RunRecorder
        from airflow_provider_glm.rendering import MessageTemplate, Row, normalize_rows, prompt_messages
        from airflow_provider_glm.sinks.records import RunScope
        from airflow_provider_glm.structured_output import OutputSpec

        if not isinstance(self.request_params, Mapping) or self.request_params.get("stream"):
            raise ValueError("request_params must be a mapping and cannot ask for stream=True")
        params = dict(self.request_params)
        if self.output_schema is not None:
            params.setdefault("response_format", {"type": "json_object"})
        hook = self.hook
        model = self.model or hook.settings.model
        output = OutputSpec(params.get("response_format"), self.output_schema)
        messages = prompt_messages(self.prompt, self.system_prompt, self.messages)
        if self.row_mode:
            if "request_id" in params:
                raise ValueError("request_params.request_id would repeat on every row (GLM refuses duplicates, 1231)")
            rows = normalize_rows(self.rows, self.columns, self.row_key)
            template: Any = MessageTemplate(messages, context)
        else:
            rows = [Row(SINGLE_ROW_KEY, {})]
            template = _Literal(messages)
        for row in rows:
            build_chat_request(model, template.render(row), **params)
        table = PriceTable.default().with_overrides(hook.settings.prices).with_overrides(self.prices)
        if price_required and table.lookup(model) is None:
            raise ValueError(
                f"max_cost needs a price for model {model!r}, which the price table lacks; add it with `prices`"
            )
        export = None
        if self.output_path:
            from airflow_provider_glm.sinks.objectstorage import JSONLResultsExport

            export = JSONLResultsExport(self.output_path, self.output_conn_id)
            export.validate()
        sink = self._sink(len(rows))

        def pricer(name: str, prompt: int, completion: int, cached: int) -> tuple[Decimal | None, str | None]:
            price = table.lookup(name)
            return compute_cost(price, prompt, completion, cached, discount), price.currency if price else None

        ti = context["ti"]
        recorder = RunRecorder(
            scope=RunScope(ti.dag_id, ti.task_id, ti.run_id, ti.map_index if ti.map_index is not None else -1),
            try_number=ti.try_number or 1, model=model, pricer=pricer, sink=sink, output=output,
            keep_values=self.max_xcom_rows, fail_on_truncation=self.fail_on_truncation, log=self.log,
            on_billed=None if self.row_mode else lambda usage: self._push_usage(context, usage),
            keep_records=export is not None and sink is None,
        )
        return Prepared(hook, model, params, rows, template, recorder, sink, export)

    def _sink(self, row_count: int) -> SQLSink | None:
        """Build and check the SQL sink before any API call (names and tables checked here)."""
        from airflow_provider_glm.sinks.sql import SQLSink

        if self.sqlalchemy_url:
            sink = SQLSink.from_url(self.sqlalchemy_url, results_table=self.results_table,
                                    usage_table=self.usage_table)
        elif self.sql_conn_id:
            db_hook = BaseHook.get_connection(self.sql_conn_id).get_hook()  # type: ignore[no-untyped-call]
            engine = getattr(db_hook, "get_sqlalchemy_engine", None)
            if engine is None:
                raise ValueError(f"connection {self.sql_conn_id!r} is not a SQL connection with a SQLAlchemy engine")
            sink = SQLSink(engine(), results_table=self.results_table, usage_table=self.usage_table)
        else:
            if self.row_mode and row_count > self.max_xcom_rows:
                raise ValueError(
                    f"{row_count} rows exceed max_xcom_rows={self.max_xcom_rows} and no SQL sink is set: "
                    "results would not fit in XCom. Set sql_conn_id or sqlalchemy_url."
                )
            return None
        sink.ensure_tables()
        return sink

    def _push_usage(self, context: Context, usage: UsageRecord) -> None:
        if not self.do_xcom_push:
            return
        value = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "cached_tokens": usage.cached_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "model": usage.model,
            "request_id": usage.request_id,
            "response_id": usage.response_id,
            "try_number": usage.try_number,
            "cost": float(usage.cost) if usage.cost is not None else None,
            "currency": usage.currency,
        }
        context["ti"].xcom_push(key="usage", value=value)

    def finish(self, context: Context, run: Prepared) -> Any:
        """The task's outcome once every record is written: a return value, or the failure."""
        recorder = run.recorder
        if recorder.unwritten():
            raise RuntimeError(
                f"{recorder.unwritten()} records could not be written to the sink ({recorder.write_error}) "
                f"within {recorder.write_timeout:.0f} s. Rows already written as ok are kept; a rerun requests "
                "the unwritten rows again."
            ) from recorder.write_error
        if run.export is not None:
            run.output_path = run.export.write(recorder.scope, sink=run.sink,
                                               records=None if run.sink else recorder.kept)
            if self.do_xcom_push:
                context["ti"].xcom_push(key="output_path", value=run.output_path)
        return self._row_result(context, run) if self.row_mode else self._single_result(run)

    def _single_result(self, run: Prepared) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_provider_glm.exceptions import GLMContentFilterError, GLMInvalidOutputError

        recorder, totals = run.recorder, run.recorder.totals
        if recorder.fatal is not None:
            raise AirflowFailException(f"GLM refused the account: {recorder.fatal}") from recorder.fatal
        self._raise_if_stopped(totals)
        if recorder.first_error is not None:
            raise recorder.first_error
        if totals.filtered or totals.failed:
            reason = totals.failures[0].split(": ", 1)[1]
            raise (GLMContentFilterError if totals.filtered else GLMInvalidOutputError)(reason)
        if totals.resumed and run.sink is not None:
            stored = run.sink.results(recorder.scope)[0]
            self.log.info("This request already succeeded in an earlier try; returning the stored answer.")
            return stored["output"] if recorder.output.expects_json else stored["content"]
        assert recorder.values is not None
        return recorder.values.get(SINGLE_ROW_KEY)

    def _row_result(self, context: Context, run: Prepared) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_provider_glm.exceptions import GLMRowsFailedError

        recorder, totals = run.recorder, run.recorder.totals
        summary = totals.as_dict()
        summary.update(results_table=self.results_table if run.sink else None,
                       usage_table=self.usage_table if run.sink else None, output_path=run.output_path)
        if self.do_xcom_push:
            context["ti"].xcom_push(key="usage", value=summary)
        if recorder.fatal is not None:
            raise AirflowFailException(
                f"GLM refused the account ({recorder.fatal}); {totals.skipped} rows were not sent. "
                "Retrying cannot help until the account is fixed."
            ) from recorder.fatal
        self._raise_if_stopped(totals)
        if totals.failed > self.max_failed_rows or (
            self.max_filtered_rows is not None and totals.filtered > self.max_filtered_rows
        ):
            raise GLMRowsFailedError(
                f"{totals.failed} rows failed and {totals.filtered} were filtered (max_failed_rows="
                f"{self.max_failed_rows}, max_filtered_rows={self.max_filtered_rows}); the {totals.ok} ok rows "
                f"are written. First failures: {'; '.join(totals.failures[:5])}"
            )
        return self._return_value(run, summary)

    @staticmethod
    def _raise_if_stopped(totals: RunTotals) -> None:
        """Fail for a budget (no retry: the budget counts every try) or a timeout (retryable)."""
        from airflow.sdk.exceptions import AirflowFailException, AirflowTaskTimeout

        from airflow_provider_glm.exceptions import GLMBudgetExceededError

        message = f"{totals.stop_reason}; {totals.skipped} rows recorded as skipped"
        if totals.stop_kind == "budget":
            raise AirflowFailException(message) from GLMBudgetExceededError(message)
        if totals.stop_kind == "deadline":
            raise AirflowTaskTimeout(message)

    def _return_value(self, run: Prepared, summary: dict[str, Any]) -> Any:
        recorder = run.recorder
        values = recorder.values
        if len(run.rows) > self.max_xcom_rows or values is None:
            return summary
        if recorder.totals.resumed and run.sink is not None:
            column = "output" if recorder.output.expects_json else "content"
            values = {r["row_key"]: r[column] for r in run.sink.results(recorder.scope) if r["status"] == "ok"}
        out = [values.get(row.key) for row in run.rows]
        if len(json.dumps(out, default=str)) > self.max_xcom_bytes:
            self.log.info("The row values exceed max_xcom_bytes=%d; returning a summary.", self.max_xcom_bytes)
            return summary
        return out


class _Literal:
    """Messages already rendered by Airflow: sent as they are, never rendered again."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.messages = messages

    def render(self, row: Row) -> list[dict[str, Any]]:
        return self.messages
