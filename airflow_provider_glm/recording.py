"""Turning answers into records: one result per row, one ledger entry per billed response.

:class:`RunRecorder` is shared by every way rows reach GLM (online chat, async chat, batch): it
prices each response, decides the row's status, keeps the values XCom will carry, buffers records
and writes them to the sink in transactions, and never drops a batch a failing database refused:
the records stay buffered while the write is retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
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
    from airflow_provider_glm.models import ChatCompletion
    from airflow_provider_glm.sinks.sql import SQLSink
    from airflow_provider_glm.structured_output import OutputSpec

__all__ = ["FATAL_ERRORS", "Pricer", "RunRecorder", "RunTotals", "outcome_of"]

FATAL_ERRORS: tuple[type[GLMError], ...] = (
    GLMAuthenticationError,
    GLMPermissionError,
    GLMInsufficientBalanceError,
    GLMQuotaExceededError,
)
"""Errors that concern the account, not the row: dispatching stops and the task fails without retries."""

Pricer = Callable[[str, int, int, int], tuple[Decimal | None, str | None]]
"""(model, prompt_tokens, completion_tokens, cached_tokens) -> (cost, currency)."""


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
    """Why dispatching stopped early: ``fatal``, ``deadline``, ``budget`` or ``sink`` (``None``: no stop)."""
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


class RunRecorder:
    """Records outcomes of one task try and writes them to the sink.

    :param scope: the (dag, task, run, map_index) slice of the tables.
    :param try_number: the Airflow try, stored in the ledger.
    :param model: the model asked for (its price applies when an answer names an unpriced model).
    :param pricer: prices a response.
    :param sink: where results and usage go; ``None`` keeps them in memory only.
    :param output: parses and validates structured output.
    :param keep_values: how many row values (content or output) to keep for XCom.
    :param fail_on_truncation: a truncated answer fails its row instead of warning.
    :param write_timeout: seconds a failing database is retried before the task fails.
    :param keep_records: keep every result in :attr:`kept` (an export without a SQL sink needs them).
    :param on_billed: called with each ledger entry as soon as it exists (single mode's XCom).
    """

    def __init__(self, *, scope: RunScope, try_number: int, model: str, pricer: Pricer, sink: SQLSink | None,
                 output: OutputSpec, keep_values: int, fail_on_truncation: bool = False,
                 write_timeout: float = 300.0,
                 log: Any = None, keep_records: bool = False,
                 on_billed: Callable[[UsageRecord], None] | None = None) -> None:
        self.scope = scope
        self.try_number = try_number
        self.model = model
        self.pricer = pricer
        self.sink = sink
        self.output = output
        self.keep_values = keep_values
        self.fail_on_truncation = fail_on_truncation
        self.write_timeout = write_timeout
        self.log = log or logging.getLogger(__name__)
        self.on_billed = on_billed
        self.totals = RunTotals()
        self.kept: list[ResultRecord] | None = [] if keep_records else None
        self.values: dict[str, Any] | None = {}
        self.fatal: GLMError | None = None
        self.first_error: GLMError | None = None
        self.truncated = 0
        self.todo: list[str] = []
        """Row keys this try must answer (set by :meth:`resume`)."""
        self.pending: set[str] = set()
        """Keys of :attr:`todo` with no outcome recorded yet (kept by callers that collect results)."""
        self.write_error: BaseException | None = None
        """Set when the sink refused a write for ``write_timeout``; the records stay buffered."""
        self._results: list[ResultRecord] = []
        self._usage: list[UsageRecord] = []
        self._added = 0
        self._written = 0
        self._write_lock = asyncio.Lock()

    async def resume(self, keys: list[str]) -> list[str]:
        """Load earlier tries' spend and return the keys still to do (those not ``ok`` in the sink)."""
        self.totals.rows = len(keys)
        self.todo = list(keys)
        self.pending = set(keys)
        if self.sink is None:
            return keys
        done = await asyncio.to_thread(self.sink.ok_row_keys, self.scope)
        self.totals.spent_before_tokens, self.totals.spent_before_cost = await asyncio.to_thread(
            self.sink.spent, self.scope
        )
        todo = self.todo = [key for key in keys if key not in done]
        self.pending = set(todo)
        self.totals.resumed = len(keys) - len(todo)
        if self.totals.resumed:
            self.log.info("Resuming: %d of %d rows are already ok and will not be requested again.",
                          self.totals.resumed, len(keys))
        return todo

    async def completion(self, row_key: str, completion: ChatCompletion) -> None:
        """Record a billed answer: its ledger entry, then the row's outcome."""
        usage = self.usage_record(row_key, completion)
        if self.on_billed is not None:
            self.on_billed(usage)
        status, output, error = outcome_of(completion, self.output, self.fail_on_truncation)
        if completion.finish_reason in ("length", "model_context_window_exceeded"):
            self.truncated += 1
        result = ResultRecord(
            self.scope, row_key, status,
            content=completion.content,
            reasoning_content=completion.choices[0].message.reasoning_content if completion.choices else None,
            finish_reason=completion.finish_reason,
            output=output,
            error=error,
            model=completion.model or self.model,
            # an answer without usage was billed all the same: its tokens are unknown (NULL), not 0
            prompt_tokens=usage.prompt_tokens if completion.usage is not None else None,
            completion_tokens=usage.completion_tokens if completion.usage is not None else None,
            total_tokens=usage.total_tokens if completion.usage is not None else None,
        )
        if status == "ok" and self.values is not None:
            self.values[row_key] = output if self.output.expects_json else completion.content
            if len(self.values) > self.keep_values:
                self.values = None
        await self._add(result, usage)

    async def failed(self, row_key: str, reason: str, *, filtered: bool = False) -> None:
        """Record a row that came back without an answer (a batch error line, an async ``FAIL``)."""
        await self._add(ResultRecord(self.scope, row_key, "filtered" if filtered else "failed", error=reason,
                                     model=self.model), None)

    async def error(self, row_key: str, exc: GLMError) -> None:
        """Record a row whose call failed (nothing billed as far as the client knows)."""
        self.first_error = self.first_error or exc
        if isinstance(exc, FATAL_ERRORS):
            self.fatal = self.fatal or exc
        status: RowStatus = "filtered" if isinstance(exc, GLMContentFilterError) else "failed"
        await self._add(ResultRecord(self.scope, row_key, status, error=f"{type(exc).__name__}: {exc}",
                                     model=self.model), None)

    async def skipped(self, row_key: str, reason: str) -> None:
        """Record a row that was not sent."""
        await self._add(ResultRecord(self.scope, row_key, "skipped", error=reason), None)

    def usage_record(self, row_key: str | None, completion: ChatCompletion) -> UsageRecord:
        """The ledger entry for a billed answer, priced by the answer's model (else the one asked for)."""
        usage = completion.usage
        model = completion.model or self.model
        prompt = usage.prompt_tokens if usage else 0
        completion_tokens = usage.completion_tokens if usage else 0
        cached = usage.cached_tokens if usage else 0
        cost: Decimal | None = None
        currency: str | None = None
        if usage is not None:
            cost, currency = self.pricer(model, prompt, completion_tokens, cached)
            if cost is None and model.lower() != self.model.lower():
                cost, currency = self.pricer(self.model, prompt, completion_tokens, cached)
        info = completion.call_info
        response_id = completion.id or completion.request_id or f"unidentified-{uuid.uuid4().hex}"
        if usage is None:
            self.log.warning(
                "GLM answered row %s without usage (response %s): it was billed, but its tokens are unknown; "
                "the ledger records 0 tokens and a NULL cost for it.", row_key, response_id,
            )
        return UsageRecord(
            scope=self.scope,
            response_id=response_id,
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
            attempts=info.attempts if info else 1,
            unknown_billing_attempts=info.unknown_billing_attempts if info else 0,
        )

    async def _add(self, result: ResultRecord, usage: UsageRecord | None) -> None:
        self.totals.count(result.status)
        if result.status in ("failed", "filtered") and result.error:
            self.totals.failures.append(f"{result.row_key}: {result.error}")
        if usage is not None:
            self.totals.bill(usage)
            self._usage.append(usage)
        self._results.append(result)
        self._added += 1
        if self.kept is not None:
            self.kept.append(result)
        await self.flush()

    async def flush(self, *, force: bool = False) -> None:
        """Wait until every record added so far is written (``force`` is kept for callers' clarity).

        Group commit: one writer at a time takes everything buffered into one transaction; callers
        queued behind it find their records already written. A worker therefore never starts its
        next row before its last answer is committed, so a crash loses at most the answers in flight.
        A batch the database refused stays buffered.
        """
        if self.sink is None:
            self._results.clear()
            self._usage.clear()
            return
        target = self._added
        async with self._write_lock:
            if self._written >= target or self.write_error is not None:
                return
            results, usage, upto = self._results, self._usage, self._added
            self._results, self._usage = [], []
            try:
                await self._write(results, usage)
            except (SQLAlchemyError, OSError) as exc:
                self._results[:0], self._usage[:0] = results, usage
                self.write_error = exc
                return
            except BaseException:
                self._results[:0], self._usage[:0] = results, usage
                raise
            self._written = upto

    async def _write(self, results: list[ResultRecord], usage: list[UsageRecord]) -> None:
        assert self.sink is not None
        started, wait = time.monotonic(), 1.0
        while True:
            try:
                await asyncio.to_thread(self.sink.write, results, usage)
                return
            except (SQLAlchemyError, OSError) as exc:
                if time.monotonic() - started + wait > self.write_timeout:
                    self.log.error("Giving up writing %d results and %d ledger entries after %.0f s: %s",
                                   len(results), len(usage), time.monotonic() - started, exc)
                    raise
                self.log.warning("Writing %d results failed (%s); the answers are kept, retrying in %.0f s.",
                                 len(results), type(exc).__name__, wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, 30.0)

    def unwritten(self) -> int:
        """Records still buffered (non-zero only after a failed final write)."""
        return len(self._results) + len(self._usage)
