"""``GLMChatOperator``: one chat request, or every row of an upstream result, answered by GLM.

Single mode sends ``prompt`` (or ``messages``) once and returns the content. Row mode (``rows=``)
renders the prompt per row with ``{{ row.<column> }}``, runs the rows concurrently at
``max_concurrency``, writes results and a usage ledger to SQL, resumes without re-billing on a
retry, and returns the contents (or a summary when they would not fit in XCom).

Example::

    GLMChatOperator(
        task_id="summarize",
        rows=extract.output,
        row_key="id",
        prompt="Summarize in one sentence: {{ row.text }}",
        sqlalchemy_url="sqlite:///warehouse.db",
    )
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_glm.hooks.glm import GLMHook
    from airflow_provider_glm.rendering import Row
    from airflow_provider_glm.runner import RowRunner, RunTotals
    from airflow_provider_glm.sinks.records import RunScope, UsageRecord
    from airflow_provider_glm.sinks.sql import SQLSink

__all__ = ["GLMChatOperator"]

_MESSAGE_FIELDS = ("prompt", "system_prompt", "messages")
_SINGLE_ROW_KEY = "single"
_WORKERS_PER_POOL = 8
"""Workers sharing one httpx pool: its per-request scan grows with pool size (measured in benchmarks/)."""


class GLMChatOperator(BaseOperator):
    """Ask GLM once, or once per upstream row; content and usage to XCom and SQL.

    Every parameter is documented in ``docs/operator.md``.

    :param prompt: the user message (a template); in row mode it sees ``row``.
    :param system_prompt: an optional system message placed first.
    :param messages: a full message list instead of ``prompt``.
    :param model: the model; default the connection's ``model`` extra.
    :param glm_conn_id: the ``glm`` connection.
    :param request_params: other request options (temperature, max_tokens, thinking, tools, ...).
    :param rows: upstream records (dicts, or sequences with ``columns``); turns on row mode.
    :param columns: names for sequence rows.
    :param row_key: the column identifying a row (default: its position).
    :param max_concurrency: rows in flight at once (the account's concurrency limit).
    :param max_failed_rows: failed rows tolerated before the task fails.
    :param max_filtered_rows: content-filtered rows tolerated (``None``: any number, each recorded).
    :param output_schema: pydantic model class or JSON schema the JSON answer must satisfy.
    :param sql_conn_id: an Airflow SQL connection whose engine receives the tables.
    :param sqlalchemy_url: a SQLAlchemy URL instead of ``sql_conn_id``.
    :param results_table: results table name (``schema.table`` allowed).
    :param usage_table: usage ledger table name.
    :param prices: per-model price overrides on top of the connection's.
    :param max_xcom_rows: above this many rows ``return_value`` is a summary.
    :param max_xcom_bytes: above this JSON size ``return_value`` is a summary.
    :param max_total_tokens: budget over all tries of this task in this run.
    :param max_cost: budget in the price table's currency.
    :param fail_on_truncation: fail instead of warn when an answer hits ``max_tokens``.
    :param progress_interval: seconds between progress log lines.
    """

    template_fields: Sequence[str] = (
        "prompt", "system_prompt", "messages", "model", "request_params", "rows", "columns", "row_key",
        "glm_conn_id", "sql_conn_id", "sqlalchemy_url", "results_table", "usage_table",
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
        max_concurrency: int = 8,
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
        max_total_tokens: int | None = None,
        max_cost: float | Decimal | None = None,
        fail_on_truncation: bool = False,
        progress_interval: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if prompt is None and messages is None:
            raise ValueError(f"{kwargs.get('task_id')}: give `prompt` or `messages`")
        if prompt is not None and messages is not None:
            raise ValueError(f"{kwargs.get('task_id')}: give `prompt` or `messages`, not both")
        if sql_conn_id and sqlalchemy_url:
            raise ValueError(f"{kwargs.get('task_id')}: give `sql_conn_id` or `sqlalchemy_url`, not both")
        if max_concurrency < 1 or max_failed_rows < 0:
            raise ValueError("max_concurrency must be >= 1 and max_failed_rows >= 0")
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
        self.max_concurrency = max_concurrency
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
        self.max_total_tokens = max_total_tokens
        self.max_cost = Decimal(str(max_cost)) if max_cost is not None else None
        self.fail_on_truncation = fail_on_truncation
        self.progress_interval = progress_interval

    @property
    def row_mode(self) -> bool:
        """Whether ``rows`` was given (decided at construction: an upstream ``None`` is an error, not a prompt)."""
        return self._row_mode

    def _do_render_template_fields(self, parent: Any, template_fields: Any, context: Any, jinja_env: Any,
                                   seen_oids: set[int]) -> None:
        if parent is self and self.row_mode:
            template_fields = [f for f in template_fields if f not in _MESSAGE_FIELDS]
        super()._do_render_template_fields(parent, template_fields, context, jinja_env, seen_oids)

    @property
    def hook(self) -> GLMHook:
        from airflow_provider_glm.hooks.glm import GLMHook

        return GLMHook(glm_conn_id=self.glm_conn_id)

    def execute(self, context: Context) -> Any:
        from airflow_provider_glm.models import build_chat_request
        from airflow_provider_glm.rendering import MessageTemplate, Row, normalize_rows, prompt_messages
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
            rows = [Row(_SINGLE_ROW_KEY, {})]
            template = _Literal(messages)
        for row in rows:
            build_chat_request(model, template.render(row), **params)
        sink = self._sink(len(rows))
        runner = self._runner(context, hook, model, params, template, output, sink)
        try:
            totals = asyncio.run(self._run(runner, hook, rows))
        finally:
            if sink is not None:
                sink.dispose()
        if not self.row_mode:
            return self._single_result(runner, totals, sink)
        return self._row_result(context, runner, totals, rows, sink)

    async def _run(self, runner: RowRunner, hook: GLMHook, rows: list[Row]) -> RunTotals:
        concurrency = runner.limits.max_concurrency
        pools = -(-concurrency // _WORKERS_PER_POOL)
        async with contextlib.AsyncExitStack() as stack:
            runner.client = [
                await stack.enter_async_context(
                    hook.get_async_client(max_connections=-(-concurrency // pools))
                )
                for _ in range(pools)
            ]
            return await runner.run(rows)

    def _sink(self, row_count: int) -> SQLSink | None:
        """Build and prepare the SQL sink before any API call (names and tables checked here)."""
        from airflow_provider_glm.sinks.sql import SQLSink

        if self.sqlalchemy_url:
            sink = SQLSink.from_url(self.sqlalchemy_url, results_table=self.results_table,
                                    usage_table=self.usage_table)
        elif self.sql_conn_id:
            db_hook = self.get_connection(self.sql_conn_id).get_hook()
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

    def _runner(self, context: Context, hook: GLMHook, model: str, params: dict[str, Any], template: Any,
                output: Any, sink: SQLSink | None) -> RowRunner:
        from airflow_provider_glm.pricing import PriceTable, compute_cost
        from airflow_provider_glm.runner import RowRunner, RunLimits
        from airflow_provider_glm.sinks.records import RunScope

        ti = context["ti"]
        scope = RunScope(ti.dag_id, ti.task_id, ti.run_id, ti.map_index if ti.map_index is not None else -1)
        table = PriceTable.default().with_overrides(hook.settings.prices).with_overrides(self.prices)

        if self.max_cost is not None and table.lookup(model) is None:
            raise ValueError(
                f"max_cost needs a price for model {model!r}, which the price table lacks; add it with `prices`"
            )

        def pricer(model: str, prompt: int, completion: int, cached: int) -> tuple[Decimal | None, str | None]:
            price = table.lookup(model)
            return compute_cost(price, prompt, completion, cached), price.currency if price else None

        deadline = time.monotonic() + self.execution_timeout.total_seconds() if self.execution_timeout else None
        limits = RunLimits(
            max_concurrency=self.max_concurrency if self.row_mode else 1,
            max_total_tokens=self.max_total_tokens,
            max_cost=self.max_cost,
            deadline=deadline,
            progress_interval=self.progress_interval,
        )
        return RowRunner(
            client=None,  # type: ignore[arg-type]  # set in _run, inside the event loop
            model=model, request_params=params, template=template, output=output,
            scope=scope, try_number=ti.try_number or 1, pricer=pricer, sink=sink, limits=limits,
            keep_values=self.max_xcom_rows, fail_on_truncation=self.fail_on_truncation, log=self.log,
            on_billed=None if self.row_mode else lambda usage: self._push_usage(context, usage),
        )

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

    def _single_result(self, runner: RowRunner, totals: RunTotals, sink: SQLSink | None) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_provider_glm.exceptions import GLMInvalidOutputError

        if runner.fatal is not None:
            raise AirflowFailException(f"GLM refused the account: {runner.fatal}") from runner.fatal
        self._raise_if_stopped(totals)
        if runner.first_error is not None:
            raise runner.first_error
        if totals.failed or totals.filtered:
            raise GLMInvalidOutputError(totals.failures[0].removeprefix(": "))
        if totals.resumed and sink is not None:
            stored = sink.results(runner.scope)[0]
            self.log.info("This request already succeeded in an earlier try; returning the stored answer.")
            return stored["output"] if runner.output.expects_json else stored["content"]
        assert runner.values is not None
        return runner.values.get(_SINGLE_ROW_KEY)

    def _row_result(self, context: Context, runner: RowRunner, totals: RunTotals, rows: list[Row],
                    sink: SQLSink | None) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_provider_glm.exceptions import GLMRowsFailedError

        summary = totals.as_dict()
        summary.update(results_table=self.results_table if sink else None,
                       usage_table=self.usage_table if sink else None)
        if self.do_xcom_push:
            context["ti"].xcom_push(key="usage", value=summary)
        if runner.fatal is not None:
            raise AirflowFailException(
                f"GLM refused the account ({runner.fatal}); {totals.skipped} rows were not sent. "
                "Retrying cannot help until the account is fixed."
            ) from runner.fatal
        self._raise_if_stopped(totals)
        if totals.failed > self.max_failed_rows or (
            self.max_filtered_rows is not None and totals.filtered > self.max_filtered_rows
        ):
            raise GLMRowsFailedError(
                f"{totals.failed} rows failed and {totals.filtered} were filtered (max_failed_rows="
                f"{self.max_failed_rows}, max_filtered_rows={self.max_filtered_rows}); the {totals.ok} ok rows "
                f"are written. First failures: {'; '.join(totals.failures[:5])}"
            )
        return self._return_value(runner, rows, sink, summary)

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

    def _return_value(self, runner: RowRunner, rows: list[Row], sink: SQLSink | None,
                      summary: dict[str, Any]) -> Any:
        if len(rows) > self.max_xcom_rows:
            return summary
        values = runner.values
        if values is None:
            return summary
        if runner.totals.resumed and sink is not None:
            column = "output" if runner.output.expects_json else "content"
            values = {r["row_key"]: r[column] for r in sink.results(runner.scope) if r["status"] == "ok"}
        out = [values.get(row.key) for row in rows]
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
