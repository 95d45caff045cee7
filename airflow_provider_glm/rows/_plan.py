"""A validated run, built before any API call: the request builder, the rows, the tables, the rules.

:func:`build_plan` turns a GLM operator's parameters into a :class:`RunPlan`. Everything that can
be refused is refused here, at zero API calls: request options, templates (every row of ``rows=``),
table names, output columns, price requirements, the export path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_glm.hooks.glm import GLMHook
    from airflow_provider_glm.operators.base import GLMBaseOperator
    from airflow_provider_glm.rows._outcomes import OutcomeRules
    from airflow_provider_glm.rows._records import RunScope
    from airflow_provider_glm.rows._rendering import PreparedRequest, RequestBuilder
    from airflow_provider_glm.rows._sources import PreparedRows, RequestChunks
    from airflow_provider_glm.rows._state import RunState
    from airflow_provider_glm.rows._structured_output import OutputSpec
    from airflow_provider_glm.rows._writer import RecordWriter
    from airflow_provider_glm.sinks._objectstorage import JSONLResultsExport
    from airflow_provider_glm.sinks.sql._sink import SQLSink

__all__ = ["SINGLE_ROW_KEY", "RunPlan", "build_plan"]

SINGLE_ROW_KEY = "single"
"""The row key of a single-mode request in the results table."""


@dataclass
class RunPlan:
    """Everything a run needs; nothing here has called the API."""

    hook: GLMHook
    model: str
    builder: RequestBuilder
    output: OutputSpec
    rules: OutcomeRules
    state: RunState
    writer: RecordWriter
    sink: SQLSink | None
    source: RequestChunks | None
    """The rows (row mode); ``None`` in single mode."""
    single: PreparedRequest | None
    """The one request (single mode)."""
    export: JSONLResultsExport | None = None
    output_path: str | None = None
    started_at: Any = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def scope(self) -> RunScope:
        return self.rules.scope


def build_plan(op: GLMBaseOperator, context: Context, *, api: str, price_required: bool = False,
               discount: Decimal = Decimal(1)) -> RunPlan:
    """Validate an operator's parameters and set up its run; no API call happens here.

    :param api: ``online``, ``async`` or ``batch`` (recorded in the ledger).
    :param price_required: refuse a model the price table does not know (cost budgets need it).
    :param discount: price multiplier of the API used (0.5 for batch).
    """
    from airflow_provider_glm.rows._outcomes import OutcomeRules
    from airflow_provider_glm.rows._pricing import Pricer, PriceTable
    from airflow_provider_glm.rows._records import RunScope, utcnow
    from airflow_provider_glm.rows._rendering import MessageTemplate, RequestBuilder, prompt_messages
    from airflow_provider_glm.rows._state import RunState, spend_from_rows
    from airflow_provider_glm.rows._structured_output import OutputSpec
    from airflow_provider_glm.rows._writer import RecordWriter

    started_at = utcnow()
    params = _request_params(op.request_params)
    hook = op.hook
    model = op.model or hook.settings.model
    output = OutputSpec(params.get("response_format"), op.output_schema, mode=op.output_mode)
    params = output.request_params(params)
    messages = _with_instruction(prompt_messages(op.prompt, op.system_prompt, op.messages), output.instruction())
    if op.row_mode and "request_id" in params:
        raise ValueError("request_params.request_id would repeat on every row (GLM refuses duplicates, 1231)")
    if op.row_mode:
        builder = RequestBuilder(model, params, template=MessageTemplate(messages, context))
    else:
        builder = RequestBuilder(model, params, messages=messages)
    table = PriceTable.default().with_overrides(hook.settings.prices).with_overrides(op.prices)
    if price_required and table.lookup(model) is None:
        raise ValueError(f"max_cost needs a price for model {model!r}, which the price table lacks; "
                         "add it with `prices`")
    prepared, single = _rows(op, builder)
    source: RequestChunks | None = prepared
    export = _export(op)
    sink = _sink(op, output, row_count=len(prepared) if prepared is not None else None)
    if op.source_sql is not None:
        source = _query_rows(op, builder, sink)
    ti = context["ti"]
    scope = RunScope(ti.dag_id, ti.task_id, ti.run_id, ti.map_index if ti.map_index is not None else -1,
                     logical_date=context.get("logical_date"))
    try_number = ti.try_number or 1
    pricer = Pricer(table, model, discount, log=op.log)
    rules = OutcomeRules(scope=scope, try_number=try_number, model=model, api=api, output=output, pricer=pricer,
                         max_tokens=builder.max_tokens, fail_on_truncation=op.fail_on_truncation)
    spent_before = spend_from_rows(sink.spent(scope)) if sink is not None else None
    state = RunState(keep_values=op.max_xcom_rows, spent_before=spent_before)
    writer = RecordWriter(sink, write_timeout=op.write_timeout, keep_records=export is not None and sink is None,
                          log=op.log)
    return RunPlan(hook, model, builder, output, rules, state, writer, sink, source, single, export,
                   started_at=started_at)


def _request_params(request_params: Any) -> dict[str, Any]:
    if not isinstance(request_params, Mapping):
        raise ValueError(f"request_params must be a mapping, got {type(request_params).__name__}")
    params = dict(request_params)
    clashing = sorted(set(params) & {"model", "messages", "prompt"})
    if clashing:
        raise ValueError(f"request_params cannot set {clashing}: use the operator's own `model`, `prompt` or "
                         "`messages` parameters")
    if "stream" in params:
        from pydantic import TypeAdapter, ValidationError

        try:
            stream = TypeAdapter(bool | None).validate_python(params.pop("stream"))
        except ValidationError:
            raise ValueError("request_params.stream must be a boolean") from None
        if stream:
            raise ValueError("request_params cannot ask for stream=True: the operators read whole answers")
    return params


def _with_instruction(messages: list[dict[str, Any]], instruction: str | None) -> list[dict[str, Any]]:
    """Add the structured-output instruction to the system message (or as a first system message)."""
    if instruction is None:
        return messages
    if messages and messages[0].get("role") == "system" and isinstance(messages[0].get("content"), str):
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{instruction}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": instruction}, *messages]


def _rows(op: GLMBaseOperator, builder: RequestBuilder) -> tuple[PreparedRows | None, PreparedRequest | None]:
    from airflow_provider_glm.rows._rendering import Row, normalize_rows
    from airflow_provider_glm.rows._sources import PreparedRows, prepare_all

    if not op.row_mode:
        return None, builder.build(Row(SINGLE_ROW_KEY, {}))
    if op.source_sql is not None:
        if op.rows is not None:
            raise ValueError("give `rows` or `source_sql`, not both")
        return None, None
    rows = normalize_rows(op.rows, op.columns, op.row_key)
    return PreparedRows(prepare_all(rows, builder), chunk_size=op.source_chunk_size), None


def _query_rows(op: GLMBaseOperator, builder: RequestBuilder, sink: SQLSink | None) -> RequestChunks:
    from airflow.sdk import BaseHook

    from airflow_provider_glm.rows._sources import QueryRows

    if sink is None:
        raise ValueError("source_sql streams rows that may not fit in XCom: set sql_conn_id or sqlalchemy_url "
                         "for the results")
    if op.source_conn_id:
        engine = _engine_of(BaseHook.get_connection(op.source_conn_id), op.source_conn_id)
    else:
        engine = sink.engine
    return QueryRows(engine, op.source_sql or "", builder, row_key=op.row_key or "",
                     chunk_size=op.source_chunk_size)


def _engine_of(conn: Any, conn_id: str) -> Any:
    db_hook = conn.get_hook()
    engine = getattr(db_hook, "get_sqlalchemy_engine", None)
    if engine is None:
        raise ValueError(f"connection {conn_id!r} is not a SQL connection with a SQLAlchemy engine")
    return engine()


def _export(op: GLMBaseOperator) -> JSONLResultsExport | None:
    if not op.output_path:
        return None
    from airflow_provider_glm.sinks._objectstorage import JSONLResultsExport

    export = JSONLResultsExport(op.output_path, op.output_conn_id)
    export.validate()
    return export


def _sink(op: GLMBaseOperator, output: OutputSpec, row_count: int | None) -> SQLSink | None:
    """Build and check the SQL sink before any API call (names, tables and output columns checked here)."""
    from airflow.sdk import BaseHook

    from airflow_provider_glm.sinks.sql._sink import SQLSink
    from airflow_provider_glm.sinks.sql._tables import output_column_defs

    columns = []
    if op.output_columns:
        if output.json_schema is None:
            raise ValueError("output_columns=True needs an output_schema")
        columns = output_column_defs(output.json_schema)
    tables: dict[str, Any] = {"results_table": op.results_table, "usage_table": op.usage_table,
                              "runs_table": op.runs_table, "latest_table": op.latest_table, "output_columns": columns}
    if op.sqlalchemy_url:
        sink = SQLSink.from_url(op.sqlalchemy_url, **tables)
    elif op.sql_conn_id:
        sink = SQLSink(_engine_of(BaseHook.get_connection(op.sql_conn_id), op.sql_conn_id), **tables)
    else:
        if op.output_columns:
            raise ValueError("output_columns=True writes typed columns: set sql_conn_id or sqlalchemy_url")
        if row_count is not None and row_count > op.max_xcom_rows:
            raise ValueError(
                f"{row_count} rows exceed max_xcom_rows={op.max_xcom_rows} and no SQL sink is set: "
                "results would not fit in XCom. Set sql_conn_id or sqlalchemy_url."
            )
        return None
    try:
        sink.ensure_tables(log=op.log)
    except BaseException:
        sink.dispose()
        raise
    return sink
