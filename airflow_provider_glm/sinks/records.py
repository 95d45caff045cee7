"""The records every sink writes: one result per input row, one usage entry per billed response."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

__all__ = ["ResultRecord", "RowStatus", "RunScope", "UsageRecord", "utcnow"]

RowStatus = Literal["ok", "failed", "filtered", "skipped"]


def utcnow() -> dt.datetime:
    """The current time, timezone-aware in UTC (what every timestamp column stores)."""
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class RunScope:
    """Identifies one task try's slice of the tables: resume and budgets are computed per scope.

    :param map_index: -1 for an unmapped task, as in Airflow.
    """

    dag_id: str
    task_id: str
    run_id: str
    map_index: int = -1


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
    """Parsed structured output (plain JSON values) when the operator asked for JSON."""
    error: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    updated_at: dt.datetime = field(default_factory=utcnow)



@dataclass
class UsageRecord:
    """One billed response in the ledger, keyed by ``response_id`` so a rewrite never duplicates it."""

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
    attempts: int = 1
    """HTTP attempts the call took, the successful one included."""
    unknown_billing_attempts: int = 0
    """Failed attempts that broke after the request was sent (a dropped connection, a read timeout):
    GLM may have billed them, though no answer and no response id ever arrived."""
    created_at: dt.datetime = field(default_factory=utcnow)

