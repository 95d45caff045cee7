"""Files, batches and GLM's async chat API: the wire models and one :class:`Call` per operation.

Each operation is described once as a :class:`Call` (method, path, request arguments and the
parser of its answer) and sent by ``AsyncGLMClient.call`` (or ``GLMClient.call``), so it gets the
same retry policy, deadlines and error mapping as chat completions. ``GLMHook`` exposes them as
methods (``upload_file``, ``create_batch``, ``get_batch``, ...).

The API's quirks are absorbed here: timestamps arrive in seconds or milliseconds (values above
1e12 are divided by 1000), file ids may be empty strings (read as ``None``), and the returned
model name may differ in case from the one asked for.

Example::

    file = await client.call(upload_file(jsonl_bytes, "rows.jsonl"))
    batch = await client.call(create_batch(file.id, metadata={"dag_id": "nightly"}))
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from airflow_provider_glm.client._auth import redact
from airflow_provider_glm.client.models import ChatCompletion
from airflow_provider_glm.exceptions import GLMError, error_from_body

__all__ = [
    "AsyncTask", "Batch", "BatchList", "BatchResultLine", "Call", "FileObject", "TERMINAL_BATCH_STATUSES",
    "cancel_batch", "create_batch", "file_content", "get_async_result", "list_batches", "parse_result_lines",
    "retrieve_batch", "submit_async_chat", "upload_file",
]

BATCH_ENDPOINT = "/v4/chat/completions"
TERMINAL_BATCH_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})


def _seconds(value: Any) -> float | None:
    """A timestamp in seconds from seconds or milliseconds (or ``None``)."""
    if value in (None, ""):
        return None
    number = float(value)
    return number / 1000 if number > 1e12 else number


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class FileObject(_Wire):
    """An uploaded file."""

    id: str
    bytes: int | None = None
    created_at: float | None = None
    filename: str | None = None
    purpose: str | None = None

    @field_validator("created_at", mode="before")
    @classmethod
    def _timestamp(cls, value: Any) -> float | None:
        return _seconds(value)


class RequestCounts(_Wire):
    total: int = 0
    completed: int = 0
    failed: int = 0


class Batch(_Wire):
    """A batch job; ``output_file_id`` and ``error_file_id`` are ``None`` until there is a file."""

    id: str
    status: str
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    errors: Any = None
    metadata: dict[str, Any] | None = None
    created_at: float | None = None
    in_progress_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    expired_at: float | None = None
    cancelled_at: float | None = None

    @field_validator("output_file_id", "error_file_id", "input_file_id", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return value or None

    @field_validator("created_at", "in_progress_at", "completed_at", "failed_at", "expired_at", "cancelled_at",
                     mode="before")
    @classmethod
    def _timestamp(cls, value: Any) -> float | None:
        return _seconds(value)

    @property
    def terminal(self) -> bool:
        """Whether the batch will not change any more."""
        return self.status in TERMINAL_BATCH_STATUSES


class BatchList(_Wire):
    data: list[Batch] = Field(default_factory=list)
    has_more: bool = False
    last_id: str | None = None


class AsyncTask(_Wire):
    """An async chat task; once ``SUCCESS`` it carries the completion fields."""

    id: str
    request_id: str | None = None
    model: str | None = None
    task_status: str = "PROCESSING"

    def completion(self) -> ChatCompletion:
        """The answer of a ``SUCCESS`` task, as a chat completion."""
        return ChatCompletion.model_validate(self.model_dump())

    def failure(self) -> GLMError:
        """The error of a task that ended other than ``SUCCESS`` (anything but PROCESSING/SUCCESS fails)."""
        body = self.model_dump()
        error = error_from_body(200, body if isinstance(body.get("error"), dict) else {}, request_id=self.request_id)
        error.message = f"async task {self.id} ended {self.task_status}: {error.message}"
        error.retryable = False
        return error


T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API operation: what to send and how to read the answer.

    :param billable: the operation starts billed work (an async chat task, a batch): a request lost
        after it was sent may have been billed, and is counted so.
    :param resend_lost: whether such a lost request may be sent again (``False`` for creating a batch:
        a second batch would bill the rows twice; the caller looks for the first one instead).
    """

    method: str
    path: str
    parse: Callable[[Any], T]
    kwargs: dict[str, Any] = field(default_factory=dict)
    raw: bool = False
    billable: bool = False
    resend_lost: bool = True


def upload_file(content: bytes, filename: str = "batch.jsonl") -> Call[FileObject]:
    """Upload a JSONL file for batch use (``purpose=batch``)."""
    return Call("POST", "files", FileObject.model_validate,
                {"files": {"file": (filename, content, "application/jsonl")}, "data": {"purpose": "batch"}})


def file_content(file_id: str) -> Call[bytes]:
    """Download a file's bytes (batch output and error files)."""
    return Call("GET", f"files/{file_id}/content", bytes, raw=True)


def create_batch(input_file_id: str, *, metadata: Mapping[str, str] | None = None,
                 auto_delete_input_file: bool = True, completion_window: str = "24h") -> Call[Batch]:
    """Create a batch over an uploaded file for the chat completions endpoint."""
    body = {"input_file_id": input_file_id, "endpoint": BATCH_ENDPOINT, "completion_window": completion_window,
            "auto_delete_input_file": auto_delete_input_file, "metadata": dict(metadata or {})}
    return Call("POST", "batches", Batch.model_validate, {"json": body}, billable=True, resend_lost=False)


def retrieve_batch(batch_id: str) -> Call[Batch]:
    return Call("GET", f"batches/{batch_id}", Batch.model_validate)


def cancel_batch(batch_id: str) -> Call[Batch]:
    return Call("POST", f"batches/{batch_id}/cancel", Batch.model_validate)


def list_batches(after: str | None = None, limit: int = 100) -> Call[BatchList]:
    """One page of batches, newest first; pass the last id as ``after`` for the next page."""
    params: dict[str, Any] = {"limit": limit}
    if after:
        params["after"] = after
    return Call("GET", "batches", BatchList.model_validate, {"params": params})


def submit_async_chat(body: Mapping[str, Any] | bytes) -> Call[AsyncTask]:
    """Submit a validated chat body (without ``stream``; a mapping or its JSON bytes) to the async API."""
    kwargs: dict[str, Any] = (
        {"content": body} if isinstance(body, bytes)
        else {"json": dict(body)}
    )
    return Call("POST", "async/chat/completions", AsyncTask.model_validate, kwargs, billable=True)


def get_async_result(task_id: str) -> Call[AsyncTask]:
    return Call("GET", f"async-result/{task_id}", AsyncTask.model_validate)


@dataclass(frozen=True)
class BatchResultLine:
    """One line of a batch output or error file."""

    custom_id: str
    completion: ChatCompletion | None
    error_code: str | None = None
    error_message: str | None = None


def parse_result_lines(content: bytes) -> Iterator[BatchResultLine]:
    """Lines of an output or error file: a completion, or the error that replaced it."""
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise ValueError(f"batch result line {number} is not JSON") from None
        response = record.get("response") or {}
        body = response.get("body") or {}
        custom_id = str(record.get("custom_id"))
        if response.get("status_code") == 200 and isinstance(body, dict) and body.get("choices"):
            yield BatchResultLine(custom_id, ChatCompletion.model_validate(body))
            continue
        error = (body.get("error") if isinstance(body, dict) else None) or record.get("error") or {}
        yield BatchResultLine(custom_id, None, str(error.get("code")) if error.get("code") is not None else None,
                              redact(str(error.get("message") or f"HTTP {response.get('status_code')}")))
