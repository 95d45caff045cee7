"""The records a run produces: one result per input row, one ledger entry per billed (or possibly billed) call.

These are plain values. :mod:`airflow_provider_glm.rows._outcomes` builds them from answers and failures,
:mod:`airflow_provider_glm.rows._state` counts them, and the sinks store them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

__all__ = ["Billing", "ResultRecord", "RowStatus", "RunScope", "UsageRecord", "utcnow"]

RowStatus = Literal["ok", "failed", "filtered", "skipped"]
Billing = Literal["known", "unknown"]


def utcnow() -> dt.datetime:
    """The current time, timezone-aware in UTC (what every timestamp column stores)."""
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class RunScope:
    """Identifies one task instance's slice of the tables: resume and budgets are computed per scope.

    :param map_index: -1 for an unmapped task, as in Airflow.
    :param logical_date: the run's logical date (``None`` for runs without one); stored, not compared.
    """

    dag_id: str
    task_id: str
    run_id: str
    map_index: int = -1
    logical_date: dt.datetime | None = field(default=None, compare=False)


@dataclass
class ResultRecord:
    """The outcome of one input row; upserted on (dag_id, task_id, run_id, map_index, row_key)."""

    scope: RunScope
    row_key: str
    status: RowStatus
    content: str | None = None
    reasoning_content: str | None = None
    finish_reason: str | None = None
    output: Any = None
    """Parsed structured output (plain JSON values) when the operator asked for JSON or a tool call."""
    tool_calls: list[dict[str, Any]] | None = None
    """``[{id, type, name, arguments}]``; ``arguments`` parsed when it is JSON; MCP entries kept whole."""
    web_search: list[dict[str, Any]] | None = None
    content_filter: list[dict[str, Any]] | None = None
    error: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    fingerprint: str | None = None
    """SHA-256 over model, request parameters and rendered messages (see ``docs/operator.md``)."""
    reused_from_run_id: str | None = None
    """The earlier run whose ``ok`` answer this row reuses (nothing was requested or billed for it)."""
    try_number: int | None = None
    updated_at: dt.datetime = field(default_factory=utcnow)


@dataclass
class UsageRecord:
    """One billed or possibly billed call in the ledger, keyed by ``response_id`` so a rewrite never duplicates it.

    ``billing="known"``: the answer and its usage came back. ``billing="unknown"``: the call ended
    without a usable answer after attempts that may have been billed (token columns 0; the
    ``unknown_*`` columns bound what those attempts can have cost).
    """

    scope: RunScope
    response_id: str
    request_id: str | None
    try_number: int
    row_key: str | None
    model: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost: Decimal | None = None
    """``None`` when the model's price is unknown: never a made-up zero."""
    currency: str | None = None
    latency_ms: int | None = None
    api: str = "online"
    """``online``, ``async`` or ``batch``."""
    billing: Billing = "known"
    attempts: int = 1
    """HTTP attempts the call took, the last one included."""
    unknown_billing_attempts: int = 0
    """Failed attempts that broke after the request was sent (a dropped connection, a read timeout, an
    unreadable answer): GLM may have billed them, though no answer and no usage ever arrived."""
    unknown_tokens_max: int = 0
    """Upper bound of the tokens those attempts can have been billed (0 when there were none)."""
    unknown_cost_max: Decimal | None = None
    """Upper bound of their cost (``None``: none, or the price is unknown)."""
    created_at: dt.datetime = field(default_factory=utcnow)
