"""What the GLM test server records: requests, billed completions and counters."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RecordedRequest:
    """One request as the server saw it.

    :param method: HTTP method.
    :param path: request path (without query string).
    :param headers: request headers, names in lower case.
    :param body: the body parsed as JSON, or None when absent or not JSON.
    :param raw_body: the body bytes.
    :param status: status sent, or None when nothing was sent (dropped, hung, still running).
    :param response_id: id of the generated completion, if any.
    :param billed: whether a completion was generated and billed for it.
    :param started_at: ``time.monotonic()`` when the request was read.
    :param ended_at: ``time.monotonic()`` when the answer finished, or None while in flight.
    :param fault: the kind of fault applied, or None.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw_body: bytes
    status: int | None = None
    response_id: str | None = None
    billed: bool = False
    started_at: float = 0.0
    ended_at: float | None = None
    fault: str | None = None

    def copy(self) -> RecordedRequest:
        """Return a copy safe to hand to another thread."""
        return RecordedRequest(self.method, self.path, dict(self.headers), self.body, self.raw_body,
                               self.status, self.response_id, self.billed, self.started_at,
                               self.ended_at, self.fault)


@dataclass(frozen=True)
class BilledResponse:
    """One completion the server generated and billed.

    :param response_id: completion ``id``.
    :param request_id: completion ``request_id``.
    :param model: model named in the request.
    :param prompt_tokens: billed prompt tokens.
    :param completion_tokens: billed completion tokens.
    :param total_tokens: prompt plus completion tokens.
    :param cached_tokens: prompt tokens served from the cache.
    :param reasoning_tokens: completion tokens spent on reasoning.
    :param source: what produced it: ``"chat"``, ``"batch"`` (a batch input line) or ``"async"``.
    """

    response_id: str
    request_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    source: str = "chat"


@dataclass(frozen=True)
class ServerStats:
    """A snapshot of the server's counters.

    :param requests: requests read (any path, any outcome).
    :param billed_responses: completions generated and billed.
    :param billed_prompt_tokens: sum of billed prompt tokens.
    :param billed_completion_tokens: sum of billed completion tokens.
    :param billed_total_tokens: sum of billed total tokens.
    :param peak_in_flight: the most requests in flight at once (any API path, any outcome).
    :param in_flight: requests read whose answer has not finished.
    :param peak_chat_in_flight: the most requests holding a concurrency slot at once: admitted chat
        completions and async submits, the requests ``concurrency_limit`` counts.
    :param chat_in_flight: requests holding a concurrency slot now.
    :param status_counts: HTTP status sent -> count (requests that got no status are not counted).
    :param files_uploaded: files accepted by ``POST /files``.
    :param batches_created: batches accepted by ``POST /batches``.
    :param cancels: batches moved to ``cancelling`` by ``POST /batches/{id}/cancel``.
    :param async_submitted: tasks accepted by ``POST /async/chat/completions``.
    """

    requests: int = 0
    billed_responses: int = 0
    billed_prompt_tokens: int = 0
    billed_completion_tokens: int = 0
    billed_total_tokens: int = 0
    peak_in_flight: int = 0
    in_flight: int = 0
    status_counts: dict[int, int] = field(default_factory=dict)
    files_uploaded: int = 0
    batches_created: int = 0
    cancels: int = 0
    async_submitted: int = 0
    peak_chat_in_flight: int = 0
    chat_in_flight: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as JSON-ready data (``status_counts`` keys become strings)."""
        data = asdict(self)
        data["status_counts"] = {str(k): v for k, v in sorted(self.status_counts.items())}
        return data
