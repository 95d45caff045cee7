"""Server-sent events for streamed answers: decoding ``data:`` lines and assembling the chunks.

:class:`SSEDecoder` is fed raw bytes by either client and returns complete events; it knows
comments, ``[DONE]`` and error events. :class:`StreamAssembler` folds typed chunks into one
:class:`~airflow_provider_glm.client.models.ChatCompletion`, joining tool-call argument fragments by index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from airflow_provider_glm.client.models import ChatCompletion, ChatCompletionChunk, Usage
from airflow_provider_glm.exceptions import GLMInvalidResponseError, error_from_body

__all__ = ["SSEDecoder", "StreamAssembler"]

DONE = object()
"""Returned by :meth:`SSEDecoder.feed` in place of a chunk when ``data: [DONE]`` arrives."""


class SSEDecoder:
    """Turns a byte stream into parsed chunks; raises the matching ``GLMError`` on an error event.

    :param request_id: the request id to attach to errors raised from the stream.
    """

    def __init__(self, request_id: str | None = None) -> None:
        self._buffer = bytearray()
        self._scanned = 0
        self._data: list[str] = []
        self.request_id = request_id
        self.done = False

    def feed(self, data: bytes) -> list[Any]:
        """Consume bytes; return the chunks (and :data:`DONE`) whose events completed.

        Only the unfinished last line stays buffered, so a long event costs linear time.
        """
        self._buffer += data
        out: list[Any] = []
        start = 0
        while (newline := self._buffer.find(b"\n", max(start, self._scanned))) >= 0:
            raw = bytes(self._buffer[start:newline]).rstrip(b"\r")
            start = newline + 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise GLMInvalidResponseError(
                    "a stream line was not valid UTF-8", status_code=200, request_id=self.request_id
                ) from None
            if not line:
                if self._data:
                    out.append(self._event("\n".join(self._data)))
                    self._data = []
            elif line.startswith(":"):
                continue
            elif line.startswith("data:"):
                self._data.append(line[5:].removeprefix(" "))
        del self._buffer[:start]
        self._scanned = len(self._buffer)  # no newline in what is left: the next search starts after it
        return out

    def close(self) -> list[Any]:
        """Flush a final event that lacked its blank line; raise if the stream never said ``[DONE]``."""
        out = self.feed(b"\n\n") if self._buffer or self._data else []
        if not self.done:
            raise GLMInvalidResponseError(
                "the stream ended before [DONE]: the answer is incomplete",
                status_code=200,
                request_id=self.request_id,
                retryable=False,
            )
        return out

    def _event(self, payload: str) -> Any:
        if payload.strip() == "[DONE]":
            self.done = True
            return DONE
        try:
            body = json.loads(payload)
        except ValueError:
            raise GLMInvalidResponseError(
                "a stream event was not valid JSON", status_code=200, request_id=self.request_id
            ) from None
        if isinstance(body, dict) and "error" in body:
            raise error_from_body(200, body, request_id=self.request_id)
        try:
            return ChatCompletionChunk.model_validate(body)
        except ValidationError:
            raise GLMInvalidResponseError(
                "a stream event was not a chat completion chunk", status_code=200, request_id=self.request_id
            ) from None


@dataclass
class _ToolCallParts:
    id: str | None = None
    type: str | None = None
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class StreamAssembler:
    """Accumulates chunks into one completion: content, reasoning, tool calls, usage, finish reason."""

    def __init__(self) -> None:
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._tools: dict[int, _ToolCallParts] = {}
        self.id: str | None = None
        self.model: str | None = None
        self.created: int | None = None
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    def add(self, chunk: ChatCompletionChunk) -> None:
        """Fold one chunk in."""
        self.id = self.id or chunk.id
        self.model = self.model or chunk.model
        self.created = self.created or chunk.created
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            if delta.content:
                self._content.append(delta.content)
            if delta.reasoning_content:
                self._reasoning.append(delta.reasoning_content)
            for call in delta.tool_calls or ():
                parts = self._tools.setdefault(call.index, _ToolCallParts())
                parts.id = parts.id or call.id
                parts.type = parts.type or call.type
                if call.function is not None:
                    parts.name += call.function.name or ""
                    args = call.function.arguments
                    if args:
                        parts.arguments.append(args if isinstance(args, str) else json.dumps(args))
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason

    def completion(self, request_id: str | None = None) -> ChatCompletion:
        """The assembled answer, shaped like a non-streamed one."""
        tool_calls = [
            {
                "id": parts.id,
                "type": parts.type or "function",
                "index": index,
                "function": {"name": parts.name, "arguments": "".join(parts.arguments)},
            }
            for index, parts in sorted(self._tools.items())
        ]
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(self._content) if self._content or not tool_calls else None,
            "reasoning_content": "".join(self._reasoning) or None,
            "tool_calls": tool_calls or None,
        }
        return ChatCompletion.model_validate(
            {
                "id": self.id,
                "request_id": request_id,
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
                "usage": self.usage.model_dump() if self.usage else None,
            }
        )
