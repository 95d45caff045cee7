"""From what happened to a row to what is recorded: pure functions, no I/O.

Each function takes the run's :class:`OutcomeRules` and one event (an answer, a failed call, a
skip, a reuse) and returns an :class:`Outcome`: the row's status, its result record, its ledger
entry (priced, with the bound of attempts that may have been billed), the value XCom carries and,
for a failure, the error object. :class:`~airflow_provider_glm.rows._state.RunState` counts outcomes;
:class:`~airflow_provider_glm.rows._writer.RecordWriter` stores their records.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow_provider_glm.exceptions import (
    GLMAuthenticationError,
    GLMContentFilterError,
    GLMError,
    GLMInsufficientBalanceError,
    GLMInvalidOutputError,
    GLMPermissionError,
    GLMQuotaExceededError,
)
from airflow_provider_glm.rows._records import ResultRecord, RowStatus, RunScope, UsageRecord

if TYPE_CHECKING:
    from collections.abc import Mapping

    from airflow_provider_glm.client.models import ChatCompletion
    from airflow_provider_glm.rows._pricing import Pricer
    from airflow_provider_glm.rows._rendering import PreparedRequest
    from airflow_provider_glm.rows._structured_output import OutputSpec

__all__ = ["FATAL_ERRORS", "Outcome", "OutcomeRules", "answered", "call_failed", "not_answered", "resumed",
           "reused", "skipped", "tool_calls_of", "unaccounted"]

FATAL_ERRORS: tuple[type[GLMError], ...] = (
    GLMAuthenticationError,
    GLMPermissionError,
    GLMInsufficientBalanceError,
    GLMQuotaExceededError,
)
"""Errors that concern the account, not the row: dispatching stops and the task fails without retries."""

TRUNCATED = frozenset({"length", "model_context_window_exceeded"})


@dataclass(frozen=True)
class OutcomeRules:
    """What decides a run's outcomes: where records go, how answers are judged and priced.

    :param scope: the task instance's slice of the tables.
    :param try_number: the Airflow try, stored with every record.
    :param model: the model asked for.
    :param api: ``online``, ``async`` or ``batch`` (stored in the ledger).
    :param output: parses and validates structured output.
    :param pricer: prices answers and bounds possibly billed attempts.
    :param max_tokens: the requests' ``max_tokens`` (bounds an answer that never came back).
    :param fail_on_truncation: a truncated answer fails its row instead of warning.
    """

    scope: RunScope
    try_number: int
    model: str
    api: str
    output: OutputSpec
    pricer: Pricer
    max_tokens: int | None = None
    fail_on_truncation: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one row came to.

    :param status: ``ok``, ``failed``, ``filtered`` or ``skipped``.
    :param result: the results-table record (``None`` for a row already ``ok`` in this run: resumed).
    :param usage: the ledger entry, when the row's call was (or may have been) billed.
    :param value: what XCom carries for an ``ok`` row.
    :param error: why the row failed, as the error object (a :class:`GLMError` or an input error).
    :param reused: answered by an earlier run's identical request, at no cost.
    :param resumed: already ``ok`` in this run (an earlier try).
    :param truncated: the answer was cut short (``finish_reason`` length or context window).
    """

    row_key: str
    status: RowStatus
    result: ResultRecord | None
    usage: UsageRecord | None = None
    value: Any = None
    error: BaseException | None = None
    reused: bool = False
    resumed: bool = False
    truncated: bool = False

    @property
    def fatal(self) -> bool:
        """Whether the failure concerns the account: no further row can succeed."""
        return isinstance(self.error, FATAL_ERRORS)


def tool_calls_of(completion: ChatCompletion) -> list[dict[str, Any]] | None:
    """The answer's tool calls as plain values: ``{id, type, name, arguments}`` (arguments parsed when
    they are JSON, kept as text otherwise); MCP and other entries are kept whole."""
    message = completion.choices[0].message if completion.choices else None
    if message is None or not message.tool_calls:
        return None
    out: list[dict[str, Any]] = []
    for call in message.tool_calls:
        if call.function is None:
            out.append(call.model_dump(mode="json", exclude_none=True))
            continue
        arguments: Any = call.function.arguments
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                pass
        out.append({"id": call.id, "type": call.type or "function", "name": call.function.name,
                    "arguments": arguments})
    return out


def answered(rules: OutcomeRules, request: PreparedRequest, completion: ChatCompletion) -> Outcome:
    """A billed answer: its ledger entry, then the row's status and value."""
    usage = _ledger_entry(rules, request, completion)
    reason = completion.finish_reason
    message = completion.choices[0].message if completion.choices else None
    tool_calls = tool_calls_of(completion)
    status: RowStatus = "ok"
    output: Any = None
    error: BaseException | None = None
    if reason == "sensitive":
        status, error = "filtered", GLMContentFilterError(
            "the answer was blocked by content review (finish_reason=sensitive)")
    elif reason == "network_error":
        status, error = "failed", GLMInvalidOutputError("inference failed on the server (finish_reason=network_error)")
    elif reason in TRUNCATED and rules.fail_on_truncation:
        status, error = "failed", GLMInvalidOutputError(f"the answer was truncated (finish_reason={reason})")
    else:
        try:
            output = rules.output.parse(completion)
        except GLMInvalidOutputError as exc:
            status, error = "failed", exc
    result = ResultRecord(
        rules.scope, request.key, status,
        content=completion.content,
        reasoning_content=message.reasoning_content if message else None,
        finish_reason=reason,
        output=output,
        tool_calls=tool_calls,
        web_search=completion.web_search,
        content_filter=completion.content_filter,
        error=_error_text(error),
        model=completion.model or rules.model,
        # an answer without usage was billed all the same: its tokens are unknown (NULL), not 0
        prompt_tokens=usage.prompt_tokens if completion.usage is not None else None,
        completion_tokens=usage.completion_tokens if completion.usage is not None else None,
        total_tokens=usage.total_tokens if completion.usage is not None else None,
        fingerprint=request.fingerprint,
        try_number=rules.try_number,
    )
    value = None
    if status == "ok":
        value = output if rules.output.structured else completion.content
        if value is None and tool_calls:
            value = tool_calls
    return Outcome(request.key, status, result, usage, value, error, truncated=reason in TRUNCATED)


def call_failed(rules: OutcomeRules, request: PreparedRequest, error: GLMError) -> Outcome:
    """A call that ended without an answer; attempts that may have been billed get a ``billing='unknown'`` entry."""
    status: RowStatus = "filtered" if isinstance(error, GLMContentFilterError) else "failed"
    info = error.call_info
    usage = None
    if info is not None and info.unknown_billing_attempts:
        tokens, cost = rules.pricer.bound(request.prompt_bound, rules.max_tokens, info.unknown_billing_attempts)
        usage = UsageRecord(
            scope=rules.scope, response_id=f"unknown-{uuid.uuid4().hex}", request_id=error.request_id,
            try_number=rules.try_number, row_key=request.key, model=rules.model,
            prompt_tokens=0, completion_tokens=0, total_tokens=0, cost=None, currency=rules.pricer.currency,
            latency_ms=info.latency_ms, api=rules.api, billing="unknown", attempts=info.attempts,
            unknown_billing_attempts=info.unknown_billing_attempts, unknown_tokens_max=tokens, unknown_cost_max=cost,
        )
    result = ResultRecord(rules.scope, request.key, status, error=_error_text(error), model=rules.model,
                          fingerprint=request.fingerprint, try_number=rules.try_number)
    return Outcome(request.key, status, result, usage, error=error)


def unaccounted(rules: OutcomeRules, response_id: str, attempts: int, prompt_bound: int) -> UsageRecord:
    """A ledger entry for requests the server says it answered (billed) whose answers never arrived."""
    tokens, cost = rules.pricer.bound(prompt_bound, rules.max_tokens, attempts)
    return UsageRecord(scope=rules.scope, response_id=response_id, request_id=None, try_number=rules.try_number,
                       row_key=None, model=rules.model, prompt_tokens=0, completion_tokens=0, total_tokens=0,
                       currency=rules.pricer.currency, api=rules.api, billing="unknown", attempts=attempts,
                       unknown_billing_attempts=attempts, unknown_tokens_max=tokens, unknown_cost_max=cost)


def not_answered(rules: OutcomeRules, key: str, error: BaseException, *, filtered: bool = False,
                 fingerprint: str | None = None) -> Outcome:
    """A row that came back without an answer and without a call of its own (a batch error line, an
    async task that failed, a row that could not be sent)."""
    status: RowStatus = "filtered" if filtered else "failed"
    result = ResultRecord(rules.scope, key, status, error=_error_text(error), model=rules.model,
                          fingerprint=fingerprint, try_number=rules.try_number)
    return Outcome(key, status, result, error=error)


def skipped(rules: OutcomeRules, key: str, reason: str) -> Outcome:
    """A row that was not sent (a budget, a deadline, an account error, an unreachable endpoint)."""
    return Outcome(key, "skipped", ResultRecord(rules.scope, key, "skipped", error=reason,
                                                try_number=rules.try_number))


def reused(rules: OutcomeRules, request: PreparedRequest, earlier: Mapping[str, Any]) -> Outcome:
    """An earlier run's ``ok`` answer to the identical request: copied into this run, nothing billed."""
    result = ResultRecord(rules.scope, request.key, "ok", fingerprint=request.fingerprint,
                          reused_from_run_id=earlier.get("reused_from_run_id") or earlier["run_id"],
                          try_number=rules.try_number)
    for name in _ANSWER_FIELDS:
        setattr(result, name, earlier.get(name))
    return Outcome(request.key, "ok", result, value=_stored_value(rules, earlier), reused=True)


def resumed(rules: OutcomeRules, key: str, stored: Mapping[str, Any]) -> Outcome:
    """A row an earlier try of this run already answered: counted, not written again."""
    return Outcome(key, "ok", None, value=_stored_value(rules, stored), resumed=True)


_ANSWER_FIELDS = ("content", "reasoning_content", "finish_reason", "output", "tool_calls", "web_search",
                  "content_filter", "model", "prompt_tokens", "completion_tokens", "total_tokens")


def _stored_value(rules: OutcomeRules, row: Mapping[str, Any]) -> Any:
    value = row.get("output") if rules.output.structured else row.get("content")
    return row.get("tool_calls") if value is None else value


def _ledger_entry(rules: OutcomeRules, request: PreparedRequest, completion: ChatCompletion) -> UsageRecord:
    usage = completion.usage
    info = completion.call_info
    prompt = usage.prompt_tokens if usage else 0
    completion_tokens = usage.completion_tokens if usage else 0
    cached = usage.cached_tokens if usage else 0
    cost: Decimal | None = None
    currency: str | None = None
    if usage is not None:
        cost, currency = rules.pricer.cost(completion.model, prompt, completion_tokens, cached)
    unknown = info.unknown_billing_attempts if info else 0
    unknown_tokens, unknown_cost = rules.pricer.bound(request.prompt_bound, rules.max_tokens, unknown)
    if usage is None:
        # billed, but its tokens never came back: bound them like a lost attempt
        extra_tokens, extra_cost = rules.pricer.bound(request.prompt_bound, rules.max_tokens, 1)
        unknown_tokens += extra_tokens
        unknown_cost = _add(unknown_cost, extra_cost)
    return UsageRecord(
        scope=rules.scope,
        response_id=completion.id or completion.request_id or f"unidentified-{uuid.uuid4().hex}",
        request_id=completion.request_id,
        try_number=rules.try_number,
        row_key=request.key,
        model=completion.model or rules.model,
        prompt_tokens=prompt,
        completion_tokens=completion_tokens,
        total_tokens=usage.total_tokens if usage else 0,
        cached_tokens=cached,
        reasoning_tokens=usage.reasoning_tokens if usage else 0,
        cost=cost,
        currency=currency or (rules.pricer.currency if unknown_cost is not None else None),
        latency_ms=info.latency_ms if info else None,
        api=rules.api,
        billing="known" if usage is not None else "unknown",
        attempts=info.attempts if info else 1,
        unknown_billing_attempts=unknown + (usage is None),
        unknown_tokens_max=unknown_tokens,
        unknown_cost_max=unknown_cost,
    )


def _add(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    return b if a is None else a if b is None else a + b


def _error_text(error: BaseException | None) -> str | None:
    if error is None:
        return None
    return f"{type(error).__name__}: {error}" if isinstance(error, GLMError) else str(error)
