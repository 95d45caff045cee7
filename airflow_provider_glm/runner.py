"""The row engine: many rows through one async client, bounded concurrency, nothing lost.

:class:`RowRunner` dispatches rendered rows to GLM with at most ``max_concurrency`` in flight,
records each row's outcome (one failure never touches another row), writes results and the usage
ledger to the sink in transactions of many rows, stops dispatching at a budget, a deadline or an
account-wide error, and logs progress at a steady pace.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from airflow_provider_glm.exceptions import (
    GLMAuthenticationError,
    GLMContentFilterError,
    GLMError,
    GLMInsufficientBalanceError,
    GLMInvalidOutputError,
    GLMPermissionError,
    GLMQuotaExceededError,
)
from airflow_provider_glm.sinks.records import ResultRecord, RowStatus, RunScope, UsageRecord

if TYPE_CHECKING:
    from airflow_provider_glm.client import AsyncGLMClient
    from airflow_provider_glm.models import ChatCompletion
    from airflow_provider_glm.rendering import MessageTemplate, Row
    from airflow_provider_glm.sinks.sql import SQLSink
    from airflow_provider_glm.structured_output import OutputSpec

__all__ = ["FATAL_ERRORS", "RowRunner", "RunLimits", "RunTotals", "outcome_of"]

FATAL_ERRORS: tuple[type[GLMError], ...] = (
    GLMAuthenticationError,
    GLMPermissionError,
    GLMInsufficientBalanceError,
    GLMQuotaExceededError,
)
"""Errors that concern the account, not the row: dispatching stops and the task fails without retries."""

Pricer = Callable[[str, int, int, int], tuple[Decimal | None, str | None]]
"""(model, prompt_tokens, completion_tokens, cached_tokens) -> (cost, currency)."""


@dataclass(frozen=True)
class RunLimits:
    """Bounds on one run.

    :param max_concurrency: requests in flight at once.
    :param max_total_tokens: stop dispatching once the scope's ledger reaches this many tokens.
    :param max_cost: stop dispatching once the scope's ledger reaches this cost.
    :param deadline: ``time.monotonic()`` instant after which nothing new starts.
    :param progress_interval: seconds between progress lines.
    :param flush_rows: write to the sink after this many outcomes.
    :param flush_interval: or after this many seconds.
    """

    max_concurrency: int = 8
    max_total_tokens: int | None = None
    max_cost: Decimal | None = None
    deadline: float | None = None
    progress_interval: float = 5.0
    flush_rows: int = 500
    flush_interval: float = 2.0


@dataclass
class RunTotals:
    """Counts and spend of one run (this try; ``spent_before_*`` holds earlier tries)."""

    rows: int = 0
    ok: int = 0
    failed: int = 0
    filtered: int = 0
    skipped: int = 0
    resumed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost: Decimal | None = None
    currency: str | None = None
    spent_before_tokens: int = 0
    spent_before_cost: Decimal | None = None
    stop_kind: str | None = None
    """Why dispatching stopped early: ``fatal``, ``deadline`` or ``budget`` (``None``: it did not)."""
    stop_reason: str | None = None
    mixed_currencies: bool = False
    """Prices in more than one currency: the run's total cost is unknown (each ledger row keeps its own)."""
    failures: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.ok + self.failed + self.filtered + self.skipped

    def count(self, status: RowStatus) -> None:
        setattr(self, status, getattr(self, status) + 1)

    def bill(self, usage: UsageRecord) -> None:
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.total_tokens += usage.total_tokens
        if usage.cost is None or self.mixed_currencies:
            return
        if self.currency is not None and usage.currency != self.currency:
            self.mixed_currencies, self.cost = True, None
            return
        self.cost = (self.cost or Decimal(0)) + usage.cost
        self.currency = usage.currency

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values, for XCom."""
        out = asdict(self)
        out["cost"] = float(self.cost) if self.cost is not None else None
        out["spent_before_cost"] = float(self.spent_before_cost) if self.spent_before_cost is not None else None
        out["failures"] = self.failures[:20]
        return out


def outcome_of(
    completion: ChatCompletion, output: OutputSpec, fail_on_truncation: bool
) -> tuple[RowStatus, Any, str | None]:
    """Status, parsed output and error text for a billed answer."""
    reason = completion.finish_reason
    if reason == "sensitive":
        return "filtered", None, "the answer was blocked by content review (finish_reason=sensitive)"
    if reason == "network_error":
        return "failed", None, "inference failed on the server (finish_reason=network_error)"
    if reason in ("length", "model_context_window_exceeded") and fail_on_truncation:
        return "failed", None, f"the answer was truncated (finish_reason={reason})"
    try:
        return "ok", output.parse(completion.content), None
    except GLMInvalidOutputError as exc:
        return "failed", None, str(exc)


class RowRunner:
    """Runs rows to completion. One instance per task try.

    :param client: the async client, or one client per group of workers (owned by the caller). httpx's
        connection pool scans every connection per request, so several small pools beat one large one.
    :param model: model name sent with every row.
    :param request_params: other request options, validated once before the run.
    :param template: renders a row's messages.
    :param output: parses and validates structured output.
    :param scope: the (dag, task, run, map_index) slice of the tables.
    :param try_number: the Airflow try, stored in the ledger.
    :param pricer: prices a response.
    :param sink: where results and usage go; ``None`` keeps them in memory only.
    :param limits: concurrency, budget, deadline, pacing.
    :param keep_values: how many row values (content or output) to keep for XCom.
    :param fail_on_truncation: a ``length`` finish fails the row instead of warning.
    """

    def __init__(self, *, client: AsyncGLMClient | Sequence[AsyncGLMClient], model: str, request_params: dict[str, Any],
                 template: MessageTemplate, output: OutputSpec, scope: RunScope, try_number: int,
                 pricer: Pricer, sink: SQLSink | None, limits: RunLimits, keep_values: int,
                 fail_on_truncation: bool = False, log: logging.Logger | None = None,
                 on_billed: Callable[[UsageRecord], None] | None = None) -> None:
        self.client = client
        self.model = model
        self.params = request_params
        self.template = template
        self.output = output
        self.scope = scope
        self.try_number = try_number
        self.pricer = pricer
        self.sink = sink
        self.limits = limits
        self.keep_values = keep_values
        self.fail_on_truncation = fail_on_truncation
        self.log = log or logging.getLogger(__name__)
        self.totals = RunTotals()
        self.values: dict[str, Any] | None = {}
        self.fatal: GLMError | None = None
        self.first_error: GLMError | None = None
        self.on_billed = on_billed
        self._results: list[ResultRecord] = []
        self._usage: list[UsageRecord] = []
        self._last_flush = time.monotonic()
        self._write_lock = asyncio.Lock()
        self._started = time.monotonic()
        self._truncated = 0

    async def run(self, rows: Sequence[Row]) -> RunTotals:
        """Send every row not already ``ok`` in the sink; return the totals once all is written."""
        totals = self.totals
        totals.rows = len(rows)
        done_keys: set[str] = set()
        if self.sink is not None:
            done_keys = await asyncio.to_thread(self.sink.ok_row_keys, self.scope)
            totals.spent_before_tokens, totals.spent_before_cost = await asyncio.to_thread(self.sink.spent, self.scope)
        pending = [row for row in rows if row.key not in done_keys]
        totals.resumed = len(rows) - len(pending)
        if totals.resumed:
            self.log.info("Resuming: %d of %d rows are already ok and will not be requested again.",
                          totals.resumed, len(rows))
        queue = iter(pending)
        progress = asyncio.create_task(self._progress())
        try:
            clients = self.client if isinstance(self.client, Sequence) else [self.client]
            count = max(1, self.limits.max_concurrency)
            workers = [
                asyncio.create_task(self._worker(queue, clients[i * len(clients) // count])) for i in range(count)
            ]
            await asyncio.gather(*workers)
        finally:
            progress.cancel()
            await self._flush(force=True)
        if self._truncated and not self.fail_on_truncation:
            self.log.warning("%d answers were cut short (finish_reason length or model_context_window_exceeded).",
                             self._truncated)
        self._log_progress(final=True)
        return totals

    def _stop(self) -> tuple[str, str] | None:
        """``(kind, reason)`` when no new row may start, else ``None``."""
        if self.fatal is not None:
            return "fatal", f"not sent: {type(self.fatal).__name__}: {self.fatal}"
        limits, totals = self.limits, self.totals
        if limits.deadline is not None and time.monotonic() >= limits.deadline:
            return "deadline", "not sent: the task's execution_timeout was reached"
        spent_tokens = totals.spent_before_tokens + totals.total_tokens
        if limits.max_total_tokens is not None and spent_tokens >= limits.max_total_tokens:
            return "budget", f"not sent: budget max_total_tokens={limits.max_total_tokens} reached ({spent_tokens} spent)"
        if limits.max_cost is not None:
            spent_cost = (totals.spent_before_cost or Decimal(0)) + (totals.cost or Decimal(0))
            if spent_cost >= limits.max_cost:
                return "budget", f"not sent: budget max_cost={limits.max_cost} reached ({spent_cost:.6f} spent)"
        return None

    async def _worker(self, queue: Any, client: AsyncGLMClient) -> None:
        for row in queue:
            stop = self._stop()
            if stop is not None:
                if self.totals.stop_kind is None:
                    self.totals.stop_kind, self.totals.stop_reason = stop
                await self._record(ResultRecord(self.scope, row.key, "skipped", error=stop[1]), None)
                continue
            await self._process(row, client)

    async def _process(self, row: Row, client: AsyncGLMClient) -> None:
        messages = self.template.render(row)
        try:
            completion = await client.chat_completion(
                self.model, messages, deadline=self.limits.deadline, **self.params
            )
        except GLMError as exc:
            self.first_error = self.first_error or exc
            if isinstance(exc, FATAL_ERRORS):
                self.fatal = self.fatal or exc
            status: RowStatus = "filtered" if isinstance(exc, GLMContentFilterError) else "failed"
            await self._record(self._error_result(row, status, exc), None)
            return
        usage = self._usage_record(row.key, completion)
        if self.on_billed is not None:
            self.on_billed(usage)
        status, output, error = outcome_of(completion, self.output, self.fail_on_truncation)
        if completion.finish_reason in ("length", "model_context_window_exceeded"):
            self._truncated += 1
        result = ResultRecord(
            self.scope, row.key, status,
            content=completion.content,
            reasoning_content=completion.choices[0].message.reasoning_content,
            finish_reason=completion.finish_reason,
            output=output,
            error=error,
            model=completion.model or self.model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
        )
        if status == "ok" and self.values is not None:
            self.values[row.key] = output if self.output.expects_json else completion.content
            if len(self.values) > self.keep_values:
                self.values = None
        await self._record(result, usage)

    def _error_result(self, row: Row, status: RowStatus, exc: GLMError) -> ResultRecord:
        return ResultRecord(self.scope, row.key, status, error=f"{type(exc).__name__}: {exc}", model=self.model)

    def _usage_record(self, row_key: str | None, completion: ChatCompletion) -> UsageRecord:
        usage = completion.usage
        model = completion.model or self.model
        prompt = usage.prompt_tokens if usage else 0
        completion_tokens = usage.completion_tokens if usage else 0
        cached = usage.cached_tokens if usage else 0
        cost, currency = self.pricer(model, prompt, completion_tokens, cached) if usage else (None, None)
        info = completion.call_info
        return UsageRecord(
            scope=self.scope,
            response_id=completion.id or completion.request_id or f"unidentified-{uuid.uuid4().hex}",
            request_id=completion.request_id,
            try_number=self.try_number,
            row_key=row_key,
            model=model,
            prompt_tokens=prompt,
            completion_tokens=completion_tokens,
            total_tokens=usage.total_tokens if usage else 0,
            cached_tokens=cached,
            reasoning_tokens=usage.reasoning_tokens if usage else 0,
            cost=cost,
            currency=currency,
            latency_ms=info.latency_ms if info else None,
        )

    async def _record(self, result: ResultRecord, usage: UsageRecord | None) -> None:
        self.totals.count(result.status)
        if result.status in ("failed", "filtered") and result.error:
            self.totals.failures.append(f"{result.row_key}: {result.error}")
        if usage is not None:
            self.totals.bill(usage)
            self._usage.append(usage)
        self._results.append(result)
        await self._flush()

    async def _flush(self, *, force: bool = False) -> None:
        due = len(self._results) >= self.limits.flush_rows or (
            time.monotonic() - self._last_flush >= self.limits.flush_interval
        )
        if not (force or due) or not (self._results or self._usage):
            return
        results, usage = self._results, self._usage
        self._results, self._usage = [], []
        self._last_flush = time.monotonic()
        if self.sink is None:
            return
        async with self._write_lock:
            await write_with_retry(self.sink, results, usage, self.log)

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(self.limits.progress_interval)
            self._log_progress()

    def _log_progress(self, *, final: bool = False) -> None:
        t = self.totals
        elapsed = max(1e-6, time.monotonic() - self._started)
        sent = t.done
        rate = sent / elapsed
        todo = t.rows - t.resumed - sent
        eta = f"{todo / rate:.0f} s" if rate > 0 and todo > 0 else "-"
        cost = f"{t.cost:.6f} {t.currency}" if t.cost is not None else "unknown"
        self.log.info(
            "%s rows %d/%d (ok %d, failed %d, filtered %d, skipped %d, resumed %d); tokens %d; cost %s; "
            "%.1f rows/s; ETA %s",
            "Done:" if final else "Progress:", sent + t.resumed, t.rows, t.ok, t.failed, t.filtered,
            t.skipped, t.resumed, t.total_tokens, cost, rate, eta,
        )


async def write_with_retry(sink: SQLSink, results: list[ResultRecord], usage: list[UsageRecord],
                           log: logging.Logger, attempts: int = 6, first_wait: float = 1.0) -> None:
    """Write one batch, retrying a failing database: answers already paid for are never dropped here."""
    for attempt in range(1, attempts + 1):
        try:
            await asyncio.to_thread(sink.write, results, usage)
            return
        except (SQLAlchemyError, OSError) as exc:
            if attempt == attempts:
                raise
            wait = first_wait * 2 ** (attempt - 1)
            log.warning("Writing %d results failed (%s); retrying in %.0f s.", len(results), type(exc).__name__, wait)
            await asyncio.sleep(wait)
