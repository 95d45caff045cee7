"""A validated run, built before any API call: the request builder, the rows, the tables, the rules.

:func:`build_plan` turns a GLM operator's parameters into a :class:`RunPlan`. Everything that can
be refused is refused here, at zero API calls: request options, templates (every row of ``rows=``),
table names, output columns, price requirements, the export path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook
from pydantic import TypeAdapter, ValidationError

from airflow_provider_glm._compat import AIRFLOW_EXCEPTIONS
from airflow_provider_glm.rows._outcomes import Outcome, OutcomeRules
from airflow_provider_glm.rows._pricing import Pricer, PriceTable
from airflow_provider_glm.rows._records import RunScope, utcnow
from airflow_provider_glm.rows._rendering import (
    MessageTemplate,
    PreparedRequest,
    RequestBuilder,
    Row,
    normalize_rows,
    prompt_messages,
)
from airflow_provider_glm.rows._sources import PreparedRows, QueryRows, RequestChunks, prepare_all
from airflow_provider_glm.rows._state import RunState, spend_from_rows
from airflow_provider_glm.rows._structured_output import OutputSpec
from airflow_provider_glm.rows._writer import RecordWriter
from airflow_provider_glm.sinks._objectstorage import JSONLResultsExport
from airflow_provider_glm.sinks.sql._sink import SQLSink
from airflow_provider_glm.sinks.sql._tables import output_column_defs

if TYPE_CHECKING:
    import datetime

    from airflow.sdk import Context

    from airflow_provider_glm.hooks.glm import GLMHook

__all__ = ["SINGLE_ROW_KEY", "RunConfig", "RunPlan", "build_plan"]

SINGLE_ROW_KEY = "single"
"""The row key of a single-mode request in the results table."""


@dataclass(frozen=True)
class RunConfig:
    """An operator's parameters after templating: everything a run is built from.

    Each field is the operator parameter of the same name (``docs/operator.md``); ``row_mode`` says
    whether ``rows`` or ``source_sql`` was given when the operator was built.
    """

    prompt: str | None
    system_prompt: str | None
    messages: Any
    model: str | None
    request_params: Any
    rows: Any
    columns: Sequence[str] | None
    row_key: str | None
    source_sql: str | None
    source_conn_id: str | None
    source_chunk_size: int
    output_schema: Any
    output_mode: str
    output_columns: bool
    sql_conn_id: str | None
    sqlalchemy_url: str | None
    results_table: str
    usage_table: str
    runs_table: str
    latest_table: str | None
    prices: Mapping[str, Mapping[str, Any]] | None
    max_xcom_rows: int
    fail_on_truncation: bool
    write_timeout: float
    output_path: str | None
    output_conn_id: str | None
    row_mode: bool


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
    started_at: datetime.datetime | None = None
    outcome: Outcome | None = None
    """Single mode: the request's outcome, once there is one."""
    stored: Mapping[str, Any] | None = None
    """Single mode: the result an earlier try stored, when the request is resumed from it."""

    @property
    def scope(self) -> RunScope:
        return self.rules.scope

    def record(self, outcome: Outcome) -> None:
        """Count a row's outcome and buffer its records: the one way every path records an outcome
        (``await self.writer.flush()`` then writes it)."""
        self.state.add(outcome)
        self.writer.add(outcome)


def build_plan(config: RunConfig, hook: GLMHook, context: Context, *, api: str, log: Any,
               price_required: bool = False, discount: Decimal = Decimal(1)) -> RunPlan:
    """Validate an operator's parameters and set up its run; no API call happens here.

    :param config: the operator's parameters.
    :param hook: the ``glm`` connection's hook.
    :param api: ``online``, ``async`` or ``batch`` (recorded in the ledger).
    :param log: the task's logger.
    :param price_required: refuse a model the price table does not know (cost budgets need it).
    :param discount: price multiplier of the API used (0.5 for batch).
    """
    started_at = utcnow()
    params = _request_params(config.request_params)
    model = config.model or hook.settings.model
    output = OutputSpec(params.get("response_format"), config.output_schema, mode=config.output_mode)
    params = output.request_params(params)
    messages = _with_instruction(prompt_messages(config.prompt, config.system_prompt, config.messages),
                                 output.instruction())
    if config.row_mode and "request_id" in params:
        raise ValueError("request_params.request_id would repeat on every row (GLM refuses duplicates, 1231)")
    if config.row_mode:
        builder = RequestBuilder(model, params, template=MessageTemplate(messages, context))
    else:
        builder = RequestBuilder(model, params, messages=messages)
    table = PriceTable.default().with_overrides(hook.settings.prices).with_overrides(config.prices)
    if price_required and table.lookup(model) is None:
        raise ValueError(f"max_cost needs a price for model {model!r}, which the price table lacks; "
                         "add it with `prices`")
    prepared, single = _rows(config, builder)
    source: RequestChunks | None = prepared
    export = _export(config)
    sink = _sink(config, output, row_count=len(prepared) if prepared is not None else None, log=log)
    if config.source_sql is not None:
        source = _query_rows(config, builder, sink)
    ti = context["ti"]
    scope = RunScope(ti.dag_id, ti.task_id, ti.run_id, ti.map_index if ti.map_index is not None else -1,
                     logical_date=context.get("logical_date"))
    try_number = ti.try_number or 1
    pricer = Pricer(table, model, discount, log=log)
    rules = OutcomeRules(scope=scope, try_number=try_number, model=model, api=api, output=output, pricer=pricer,
                         max_tokens=builder.max_tokens, fail_on_truncation=config.fail_on_truncation)
    spent_before = spend_from_rows(sink.spent(scope)) if sink is not None else None
    state = RunState(keep_values=config.max_xcom_rows, spent_before=spent_before)
    writer = RecordWriter(sink, write_timeout=config.write_timeout, keep_records=export is not None and sink is None,
                          log=log)
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


def _rows(config: RunConfig, builder: RequestBuilder) -> tuple[PreparedRows | None, PreparedRequest | None]:
    if not config.row_mode:
        return None, builder.build(Row(SINGLE_ROW_KEY, {}))
    if config.source_sql is not None:
        if config.rows is not None:
            raise ValueError("give `rows` or `source_sql`, not both")
        return None, None
    rows = normalize_rows(config.rows, config.columns, config.row_key)
    return PreparedRows(prepare_all(rows, builder), chunk_size=config.source_chunk_size), None


def _query_rows(config: RunConfig, builder: RequestBuilder, sink: SQLSink | None) -> RequestChunks:
    if sink is None:
        raise ValueError("source_sql streams rows that may not fit in XCom: set sql_conn_id or sqlalchemy_url "
                         "for the results")
    if config.source_conn_id:
        engine = _engine_of(BaseHook.get_connection(config.source_conn_id), config.source_conn_id)
    else:
        engine = sink.engine
    return QueryRows(engine, config.source_sql or "", builder, row_key=config.row_key or "",
                     chunk_size=config.source_chunk_size)


_PROVIDER_EXTRAS = {"postgres": "postgres", "mysql": "mysql"}
"""Connection types whose Airflow provider an extra of this package installs."""


def _engine_of(conn: Any, conn_id: str) -> Any:
    try:
        db_hook = conn.get_hook()
    except AIRFLOW_EXCEPTIONS as exc:  # Airflow's "Unknown hook type": the type's provider is not installed
        extra = _PROVIDER_EXTRAS.get(conn.conn_type)
        fix = (f"pip install 'airflow-provider-glm[{extra}]' installs it" if extra else
               f"install apache-airflow-providers-{conn.conn_type}")
        raise ValueError(f"connection {conn_id!r} is of type {conn.conn_type!r}, whose Airflow provider is not "
                         f"installed ({exc}): {fix}") from None
    engine = getattr(db_hook, "get_sqlalchemy_engine", None)
    if engine is None:
        raise ValueError(f"connection {conn_id!r} is not a SQL connection with a SQLAlchemy engine")
    return engine()


def _export(config: RunConfig) -> JSONLResultsExport | None:
    if not config.output_path:
        return None
    export = JSONLResultsExport(config.output_path, config.output_conn_id)
    export.validate()
    return export


def _sink(config: RunConfig, output: OutputSpec, row_count: int | None, log: Any) -> SQLSink | None:
    """Build and check the SQL sink before any API call (names, tables and output columns checked here)."""
    columns = []
    if config.output_columns:
        if output.json_schema is None:
            raise ValueError("output_columns=True needs an output_schema")
        columns = output_column_defs(output.json_schema)
    tables: dict[str, Any] = {"results_table": config.results_table, "usage_table": config.usage_table,
                              "runs_table": config.runs_table, "latest_table": config.latest_table,
                              "output_columns": columns}
    if config.sqlalchemy_url:
        sink = SQLSink.from_url(config.sqlalchemy_url, **tables)
    elif config.sql_conn_id:
        sink = SQLSink(_engine_of(BaseHook.get_connection(config.sql_conn_id), config.sql_conn_id), **tables)
    else:
        if config.output_columns:
            raise ValueError("output_columns=True writes typed columns: set sql_conn_id or sqlalchemy_url")
        if row_count is not None and row_count > config.max_xcom_rows:
            raise ValueError(
                f"{row_count} rows exceed max_xcom_rows={config.max_xcom_rows} and no SQL sink is set: "
                "results would not fit in XCom. Set sql_conn_id or sqlalchemy_url."
            )
        return None
    try:
        sink.ensure_tables(log=log)
    except BaseException:
        sink.dispose()
        raise
    return sink
