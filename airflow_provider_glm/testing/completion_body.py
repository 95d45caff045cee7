"""The value of one generated chat completion and its wire forms: the JSON body and the SSE stream.

Stream shape: a first chunk with ``delta.role`` (and ``web_search`` when present), reasoning pieces,
content pieces of 8 characters, tool-call argument fragments per ``index`` (the first carrying
``id``, ``type`` and ``function.name``), one ``: keep-alive`` comment in the middle, a last chunk with
``finish_reason`` and ``usage`` (and ``content_filter`` when present), then ``data: [DONE]``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

PIECE_CHARS = 8


def _pieces(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def sse_event(payload: Any) -> bytes:
    """Frame one SSE ``data:`` event.

    :param payload: a JSON-ready object, or a raw string such as ``"[DONE]"``.
    """
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


KEEP_ALIVE_EVENT = b": keep-alive\n\n"
DONE_EVENT = sse_event("[DONE]")


@dataclass(frozen=True)
class Completion:
    """One generated chat completion.

    :param response_id: completion ``id``.
    :param request_id: completion ``request_id``.
    :param created: unix seconds.
    :param model: model from the request.
    :param content: assistant content (None for a tool call).
    :param reasoning: reasoning content, or None.
    :param tool_calls: tool calls, or None.
    :param finish_reason: finish reason.
    :param prompt_tokens: prompt tokens.
    :param completion_tokens: completion tokens.
    :param cached_tokens: cached prompt tokens.
    :param reasoning_tokens: reasoning tokens.
    :param web_search: the top-level ``web_search`` list, or None.
    :param content_filter: the top-level ``content_filter`` list, or None.
    """

    response_id: str
    request_id: str
    created: int
    model: str
    content: str | None
    reasoning: str | None
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    web_search: list[dict[str, Any]] | None = None
    content_filter: list[dict[str, Any]] | None = None

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def usage(self) -> dict[str, Any]:
        """Return the ``usage`` object."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }

    def message(self) -> dict[str, Any]:
        """Return the assistant ``message`` object."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning is not None:
            message["reasoning_content"] = self.reasoning
        if self.tool_calls is not None:
            message["tool_calls"] = self.tool_calls
        return message

    def to_dict(self, omit: str | None = None) -> dict[str, Any]:
        """Return the non-streaming response body.

        :param omit: a top-level key to leave out (``"usage"``, ``"choices"``...).
        """
        body: dict[str, Any] = {
            "id": self.response_id,
            "request_id": self.request_id,
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": self.message(), "finish_reason": self.finish_reason}],
            "usage": self.usage(),
        }
        if self.web_search is not None:
            body["web_search"] = self.web_search
        if self.content_filter is not None:
            body["content_filter"] = self.content_filter
        body.pop(omit or "", None)
        return body

    def _chunk(self, delta: dict[str, Any], **extra: Any) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "delta": delta}
        if "finish_reason" in extra:
            choice["finish_reason"] = extra.pop("finish_reason")
        return {"id": self.response_id, "created": self.created, "model": self.model,
                "choices": [choice], **extra}

    def delta_events(self) -> list[bytes]:
        """Return the events before the final chunk: role, reasoning, content, tool calls, a keep-alive."""
        first = {"web_search": self.web_search} if self.web_search is not None else {}
        events = [sse_event(self._chunk({"role": "assistant"}, **first))]
        for piece in _pieces(self.reasoning or "", PIECE_CHARS):
            events.append(sse_event(self._chunk({"reasoning_content": piece})))
        for piece in _pieces(self.content or "", PIECE_CHARS):
            events.append(sse_event(self._chunk({"content": piece})))
        for call in self.tool_calls or []:
            arguments = call["function"]["arguments"]
            fragments = _pieces(arguments, max(1, math.ceil(len(arguments) / 3))) or [""]
            for number, fragment in enumerate(fragments):
                delta_call: dict[str, Any] = {"index": call["index"]}
                if number == 0:
                    delta_call.update(id=call["id"], type=call["type"],
                                      function={"name": call["function"]["name"], "arguments": fragment})
                else:
                    delta_call["function"] = {"arguments": fragment}
                events.append(sse_event(self._chunk({"tool_calls": [delta_call]})))
        events.insert(max(1, len(events) // 2), KEEP_ALIVE_EVENT)
        return events

    def final_event(self, omit: str | None = None) -> bytes:
        """Return the last chunk, carrying ``finish_reason`` and ``usage``.

        :param omit: ``"usage"`` to leave usage out.
        """
        extra: dict[str, Any] = {"finish_reason": self.finish_reason}
        if omit != "usage":
            extra["usage"] = self.usage()
        if self.content_filter is not None:
            extra["content_filter"] = self.content_filter
        return sse_event(self._chunk({}, **extra))

    def sse_events(self, omit: str | None = None) -> list[bytes]:
        """Return the whole stream: deltas, the final chunk and ``data: [DONE]``.

        :param omit: ``"usage"`` to leave usage out of the final chunk.
        """
        return [*self.delta_events(), self.final_event(omit), DONE_EVENT]


