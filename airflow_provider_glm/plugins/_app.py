"""The spend page's FastAPI app: the HTML page and the JSON endpoints behind it.

Mounted by the API server at ``/glm-spend`` (see :mod:`~airflow_provider_glm.plugins.spend`).
Every route asks Airflow's auth manager who the caller is (the UI's ``_token`` cookie or an
``Authorization: Bearer`` token) and answers only about the DAGs that user may read; an anonymous
request gets 401. Only ``/openapi.json`` (the routes and their parameters, no data) and the static
files are served without login, as Airflow serves its own API's schema. The routes are synchronous:
they block on SQL, so FastAPI runs them in its thread pool. The app keeps one answer cache and one
query gate for the process (:mod:`~airflow_provider_glm.plugins._spend_cache`).

A database or connection failure is logged in full with an error id, and the viewer sees only a
generic message with that id: no SQL, table, connection or driver text reaches the browser.

No ``from __future__ import annotations`` here: FastAPI reads the route and dependency
annotations at runtime, and they name types imported inside :func:`create_app`.
"""

import datetime as dt
import functools
import logging
import threading
import uuid
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import SQLAlchemyError

from airflow_provider_glm.plugins import _svg_chart as svg_chart
from airflow_provider_glm.plugins._spend_cache import CACHE_SECONDS, AnswerCache, QueryGate, SpendBusy
from airflow_provider_glm.plugins._spend_queries import SpendFilters, SpendQueries

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = ["SpendConfig", "create_app"]

log = logging.getLogger(__name__)

_DEFAULT_DAYS = 30
_MAX_DAYS = 366
_CHART_SERIES = 8
FIRST_DAY = dt.date(1970, 1, 1)
"""The earliest day a period may start on."""
LAST_DAY = dt.date(9999, 12, 30)
"""The latest day a period may end on (its end, the next midnight, must still be a date)."""


@dataclass(frozen=True)
class SpendConfig:
    """The ``[glm]`` section of ``airflow.cfg``: where the ledger, results and runs tables live."""

    spend_conn_id: str
    usage_table: str = "glm_usage"
    results_table: str = "glm_results"
    runs_table: str = "glm_runs"

    @classmethod
    def from_airflow(cls) -> "SpendConfig":
        """Read ``[glm] spend_conn_id``, ``usage_table``, ``results_table`` and ``runs_table``."""
        from airflow.configuration import conf

        return cls(
            spend_conn_id=conf.get("glm", "spend_conn_id", fallback="") or "",
            usage_table=conf.get("glm", "usage_table", fallback="") or cls.usage_table,
            results_table=conf.get("glm", "results_table", fallback="") or cls.results_table,
            runs_table=conf.get("glm", "runs_table", fallback="") or cls.runs_table,
        )


class _Engines:
    """One SQLAlchemy engine per connection id, built from the Airflow connection on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: dict[str, Engine] = {}

    def get(self, conn_id: str) -> "Engine":
        with self._lock:
            if conn_id not in self._engines:
                self._engines[conn_id] = _engine_of(conn_id)
            return self._engines[conn_id]


def _engine_of(conn_id: str) -> "Engine":
    """The engine of a SQL connection, as the operator's ``sql_conn_id`` builds it."""
    from airflow.models.connection import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = Connection.get_connection_from_secrets(conn_id)
    except AirflowNotFoundException as exc:
        raise _Unavailable(f"[glm] spend_conn_id names connection {conn_id!r}, which does not exist") from exc
    make = getattr(conn.get_hook(), "get_sqlalchemy_engine", None)  # type: ignore[no-untyped-call]
    if make is None:
        raise _Unavailable(f"[glm] spend_conn_id: connection {conn_id!r} (type {conn.conn_type!r}) is not a SQL "
                           "connection with a SQLAlchemy engine")
    engine: Engine = make()
    return engine


class _Unavailable(Exception):
    """The page cannot read the tables: the connection is missing or not a SQL connection (logged, not shown)."""


class _NotConfigured(Exception):
    """``[glm] spend_conn_id`` is not set (the message names only that setting, so it is shown)."""


def create_app(config: "SpendConfig | None" = None, *, cache: AnswerCache | None = None,
               gate: QueryGate | None = None) -> FastAPI:
    """Build the app.

    :param config: where the tables are; default: read from ``airflow.cfg`` on each request.
    :param cache: the answer cache; default answers are kept :data:`CACHE_SECONDS` seconds.
    :param gate: the limit on spend queries at once; default the process's :class:`QueryGate`.

    The two auth dependencies are in ``app.state.auth_dependencies`` (``may_read_dags``: the route
    guard, ``readable_dag_ids``: the DAG filter), for ``app.dependency_overrides`` in benchmarks;
    the cache and the gate are ``app.state.cache`` and ``app.state.gate``.
    """
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag

    engines = _Engines()
    cache = cache if cache is not None else AnswerCache(CACHE_SECONDS)
    gate = gate if gate is not None else QueryGate()
    app = FastAPI(title="GLM spend", description="Tokens and cost from the GLM usage ledger.", docs_url=None,
                  redoc_url=None, openapi_url="/openapi.json")
    static = resources.files("airflow_provider_glm.plugins") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    def readable_dag_ids(user: GetUserDep) -> frozenset[str]:
        return frozenset(get_auth_manager().get_authorized_dag_ids(user=user, method="GET"))

    def filters(
        readable: Annotated[frozenset[str], Depends(readable_dag_ids)],
        days: Annotated[int, Query(ge=1, le=_MAX_DAYS, description="The last N UTC days, today included.")] = (
            _DEFAULT_DAYS),
        start: Annotated[dt.date | None, Query(description="First UTC day (overrides days).")] = None,
        end: Annotated[dt.date | None, Query(description="Last UTC day, included (default today).")] = None,
        dag_id: Annotated[str | None, Query(description="Only this DAG.")] = None,
        model: Annotated[str | None, Query(description="Only this model.")] = None,
        stack: Annotated[Literal["model", "dag"], Query(description="Split the daily series by.")] = "model",
        limit: Annotated[int, Query(ge=1, le=100, description="Rows of the run and budget lists.")] = 10,
    ) -> SpendFilters:
        extra: dict[str, Any] = {"dag_ids": readable, "dag_id": dag_id or None, "model": model or None,
                                 "stack": stack, "limit": limit}
        if start is None and end is None:
            return SpendFilters.last_days(days, **extra)
        for name, day in (("start", start), ("end", end)):
            if day is not None and not FIRST_DAY <= day <= LAST_DAY:
                raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                    f"{name}={day} is outside the dates the page can show, {FIRST_DAY} to {LAST_DAY}")
        last = end or dt.datetime.now(dt.UTC).date()
        if start is None and last.toordinal() - (days - 1) < FIRST_DAY.toordinal():
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                f"the {days} days up to end={last} start before {FIRST_DAY}, the earliest day the "
                                "page can show")
        first = start or last - dt.timedelta(days=days - 1)
        if last < first or (last - first).days >= _MAX_DAYS:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                f"the period {first}..{last} must run forwards and span at most {_MAX_DAYS} days")
        midnight = dt.time(tzinfo=dt.UTC)
        return SpendFilters(start=dt.datetime.combine(first, midnight),
                            end=dt.datetime.combine(last + dt.timedelta(days=1), midnight), **extra)

    def queries() -> SpendQueries:
        cfg = config or SpendConfig.from_airflow()
        if not cfg.spend_conn_id:
            raise _NotConfigured("the spend page is not configured: set [glm] spend_conn_id in airflow.cfg to the "
                                 "connection of the database that holds the usage ledger")
        return SpendQueries(engines.get(cfg.spend_conn_id), cfg.usage_table, cfg.results_table, cfg.runs_table,
                            cache=cache, gate=gate)

    may_read_dags = requires_access_dag("GET")
    guard = [Depends(may_read_dags)]
    app.state.auth_dependencies = {"may_read_dags": may_read_dags, "readable_dag_ids": readable_dag_ids}
    app.state.cache = cache
    app.state.gate = gate
    Filters = Annotated[SpendFilters, Depends(filters)]

    @app.exception_handler(_NotConfigured)
    def not_configured(request: Request, exc: _NotConfigured) -> Response:
        return _unavailable(request, str(exc))

    @app.exception_handler(_Unavailable)
    @app.exception_handler(SQLAlchemyError)
    def unreadable(request: Request, exc: Exception) -> Response:
        error_id = uuid.uuid4().hex[:12]
        log.error("GLM spend page: error id %s: %s %s could not read the spend tables: %s: %s", error_id,
                  request.method, request.url.path, type(exc).__name__, exc, exc_info=exc)
        return _unavailable(request, f"The spend page could not read its data (error id {error_id}). An Airflow "
                                     "administrator can find the cause in the API server's log under this id.")

    @app.exception_handler(SpendBusy)
    def busy(request: Request, exc: SpendBusy) -> Response:
        log.warning("GLM spend page: %s %s refused: %s", request.method, request.url.path, exc)
        return _unavailable(request, "The spend page is busy answering other requests; try again in a minute.",
                            headers={"Retry-After": "30"})

    @app.get("/api/summary", dependencies=guard)
    def summary(f: Filters) -> dict[str, Any]:
        """Totals, and the same sums per DAG and per model."""
        data = queries().overview(f)
        return {"period": _period(f), **{k: data[k] for k in ("totals", "by_dag", "by_model")}}

    @app.get("/api/daily", dependencies=guard)
    def daily(f: Filters) -> dict[str, Any]:
        """Calls, tokens and cost per UTC day and model (or DAG, with ``stack=dag``) and currency."""
        return {"period": _period(f), "stack": f.stack, "daily": queries().overview(f)["daily"]}

    @app.get("/api/tasks", dependencies=guard)
    def tasks(f: Filters) -> dict[str, Any]:
        """Per DAG and task: result rows by outcome, spend, cost per 1,000 rows."""
        return {"period": _period(f), "tasks": queries().tasks(f)}

    @app.get("/api/runs", dependencies=guard)
    def runs(f: Filters) -> dict[str, Any]:
        """The most expensive DAG runs of the period."""
        return {"period": _period(f), "runs": queries().expensive_runs(f)}

    @app.get("/api/budgets", dependencies=guard)
    def budgets(f: Filters) -> dict[str, Any]:
        """Task tries that set ``max_cost``, with the share of the budget they spent."""
        return {"period": _period(f), "budgets": queries().budgets(f)}

    @app.get("/", dependencies=guard, response_class=HTMLResponse)
    def page(f: Filters, currency: str | None = None) -> HTMLResponse:
        """The spend page."""
        data = queries().page(f)
        context = _page_context(f, data["overview"], data["tasks"], data["runs"], data["budgets"], currency)
        return HTMLResponse(_render("spend.html", **context))

    @app.exception_handler(HTTPException)
    def refused(request: Request, exc: HTTPException) -> Response:
        if _wants_html(request) and exc.status_code in (status.HTTP_401_UNAUTHORIZED, status.HTTP_403_FORBIDDEN,
                                                        status.HTTP_422_UNPROCESSABLE_CONTENT):
            message = {
                status.HTTP_401_UNAUTHORIZED:
                    "Log in to Airflow first: this page shows spend only to users who may read the DAGs.",
                status.HTTP_403_FORBIDDEN: "You may not read the DAG (or DAGs) this page was asked about.",
            }.get(exc.status_code, str(exc.detail))
            return HTMLResponse(_render("message.html", title="GLM spend", message=message),
                                status_code=exc.status_code)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    return app


def _wants_html(request: Request) -> bool:
    return "/api/" not in request.url.path and "text/html" in request.headers.get("accept", "")


def _unavailable(request: Request, message: str, headers: dict[str, str] | None = None) -> Response:
    """503 with ``message``: JSON for the API, the message page otherwise."""
    if "/api/" in request.url.path:
        return JSONResponse({"detail": message}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE, headers=headers)
    return HTMLResponse(_render("message.html", title="GLM spend is not available", message=message),
                        status_code=status.HTTP_503_SERVICE_UNAVAILABLE, headers=headers)


def _period(f: SpendFilters) -> dict[str, Any]:
    return {"start": f.start.isoformat(), "end": f.end.isoformat(), "dag_id": f.dag_id, "model": f.model}


def _page_context(f: SpendFilters, overview: dict[str, Any], tasks: list[dict[str, Any]],
                  runs: list[dict[str, Any]], budgets: list[dict[str, Any]], currency: str | None) -> dict[str, Any]:
    """What the template needs: the sections, the chart for one currency, links and filter choices."""
    totals = overview["totals"]
    calls: dict[str, int] = {}
    for row in overview["daily"]:
        if row["cost"]:
            calls[row["currency"]] = calls.get(row["currency"], 0) + row["calls"]
    currencies = sorted(totals["cost"], key=lambda c: (-calls.get(c, 0), c))
    shown = currency if currency in currencies else (currencies[0] if currencies else "")
    days = f.days()
    per_key: dict[str, list[float]] = {}
    for row in overview["daily"]:
        if row["currency"] == shown and row["cost"].get(shown):
            per_key.setdefault(row["key"], [0.0] * len(days))[days.index(row["day"])] += row["cost"][shown]
    ranked = sorted(per_key, key=lambda k: -sum(per_key[k]))
    series = {k: per_key[k] for k in ranked[:_CHART_SERIES]}
    if len(ranked) > _CHART_SERIES:
        series[svg_chart.OTHER] = [sum(per_key[k][i] for k in ranked[_CHART_SERIES:]) for i in range(len(days))]
    chart = svg_chart.stacked_bars(days, series, unit=shown or "unpriced",
                                   title=f"Spend per day by {f.stack}") if series else ""
    query = {"start": days[0], "end": days[-1], "stack": f.stack, "dag_id": f.dag_id or "", "model": f.model or ""}
    return {
        "f": f, "days": days, "totals": totals, "currencies": currencies, "shown_currency": shown, "chart": chart,
        "by_dag": overview["by_dag"], "by_model": overview["by_model"], "tasks": tasks, "runs": runs,
        "budgets": budgets,
        "dag_choices": sorted({row["dag_id"] for row in overview["by_dag"]} | ({f.dag_id} if f.dag_id else set())),
        "model_choices": sorted({row["model"] for row in overview["by_model"]} | ({f.model} if f.model else set())),
        "run_href": lambda dag_id, run_id: f"../dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}",
        "self_href": lambda **changes: "?" + urlencode({**query, **changes}),
        "json_query": urlencode({k: v for k, v in query.items() if v}),
    }


def _render(template: str, **context: Any) -> str:
    return str(_templates().get_template(template).render(**context))


@functools.cache
def _templates() -> Any:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("airflow_provider_glm.plugins", "templates"),
                      autoescape=select_autoescape(default_for_string=True, default=True))
    env.filters["money"] = lambda v: "–" if v is None else f"{v:,.4f}"
    env.filters["count"] = lambda v: f"{int(v or 0):,}"
    env.filters["pct"] = lambda v: "–" if v is None else f"{v * 100:.0f} %"
    return env
