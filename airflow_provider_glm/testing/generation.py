"""Deterministic chat completions: content, tool calls, usage, and their SSE form.

Pure functions of the request body (plus the set of system prompts seen before, for cached
tokens), so the chat endpoint, and later the batch and async endpoints, answer identically.

Rules:

* ``tokens(s) = max(1, ceil(len(s) / 4))``.
* The text of a message is its string content, or its ``text`` parts joined with ``"\\n"``.
* Content is ``"Summary: " + text[:200]`` of the last user message; with
  ``response_format={"type": "json_object"}`` it is ``{"summary": text[:200], "chars": len(text)}``.
* ``thinking.type == "enabled"`` adds ``reasoning_content = "Thinking about: " + text[:80]``.
* A function tool plus ``"call tool"`` in the user text gives one tool call with arguments
  ``{"query": text[:40]}`` (a JSON string), content None, finish_reason ``tool_calls``.
* ``prompt_tokens = sum(tokens(text of each message)) + 3``; ``completion_tokens = tokens(content or
  arguments) + tokens(reasoning)``; a smaller ``max_tokens`` cuts content to ``max_tokens * 4``
  characters, sets ``completion_tokens = max_tokens`` and finish_reason ``length`` (not for tool calls).
* ``cached_tokens`` sums ``tokens(system text)`` for system prompts seen in an earlier request.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

PIECE_CHARS = 8


def tokens(text: str) -> int:
    """Count tokens the test server's way.

    :param text: any text.
    :return: ``max(1, ceil(len(text) / 4))``.
    """
    return max(1, math.ceil(len(text) / 4))


def message_text(message: Any) -> str:
    """Return the text of one chat message.

    :param message: a message object; content a string or a list of parts.
    :return: the string content, or the ``text`` parts joined with newlines ("" otherwise).
    """
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", "")) for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def last_user_text(messages: list[Any]) -> str:
    """Return the text of the last ``user`` message ("" if there is none).

    :param messages: the request's messages.
    """
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message)
    return ""


def validate_chat_body(body: Any) -> str | None:
    """Check the fields the server needs.

    :param body: the parsed JSON body.
    :return: None when valid, else a message naming the offending field.
    """
    if not isinstance(body, dict):
        return "Request body must be a JSON object"
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "Missing or invalid required parameter: model"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "Missing or empty required parameter: messages"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return f"Invalid parameter: messages[{index}] must be an object with a role"
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        return "Invalid parameter: max_tokens must be an integer >= 1"
    return None


def _first_function_name(tools: Any) -> str | None:
    if not isinstance(tools, list):
        return None
    for tool in tools:
        if isinstance(tool, dict) and tool.get("type", "function") == "function":
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            if isinstance(name, str):
                return name
    return None


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
        events = [sse_event(self._chunk({"role": "assistant"}))]
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
        return sse_event(self._chunk({}, **extra))

    def sse_events(self, omit: str | None = None) -> list[bytes]:
        """Return the whole stream: deltas, the final chunk and ``data: [DONE]``.

        :param omit: ``"usage"`` to leave usage out of the final chunk.
        """
        return [*self.delta_events(), self.final_event(omit), DONE_EVENT]


def generate(
    body: dict[str, Any],
    *,
    seen_system_texts: set[str],
    call_id: str = "call_0",
    content: str | None = None,
    finish_reason: str | None = None,
    respect_max_tokens: bool = True,
) -> Completion:
    """Generate the completion for a validated chat body.

    :param body: a chat request body that passed :func:`validate_chat_body`.
    :param seen_system_texts: system prompts seen earlier; updated with this request's.
    :param call_id: id for a tool call.
    :param content: exact content to answer instead of the derived one.
    :param finish_reason: finish reason to force.
    :param respect_max_tokens: apply the ``max_tokens`` cut.
    """
    messages: list[Any] = body["messages"]
    text = last_user_text(messages)
    thinking = body.get("thinking")
    reasoning = None
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        reasoning = f"Thinking about: {text[:80]}"
    response_format = body.get("response_format")
    tool_name = _first_function_name(body.get("tools"))
    tool_calls = None
    answer: str | None
    if content is None and tool_name is not None and "call tool" in text.lower():
        arguments = json.dumps({"query": text[:40]}, ensure_ascii=False)
        tool_calls = [{"id": call_id, "type": "function", "index": 0,
                       "function": {"name": tool_name, "arguments": arguments}}]
        answer = None
        completion_tokens = tokens(arguments)
        reason = "tool_calls"
    else:
        if content is not None:
            answer = content
        elif isinstance(response_format, dict) and response_format.get("type") == "json_object":
            answer = json.dumps({"summary": text[:200], "chars": len(text)}, ensure_ascii=False)
        else:
            answer = f"Summary: {text[:200]}"
        completion_tokens = tokens(answer)
        reason = "stop"
    reasoning_tokens = tokens(reasoning) if reasoning is not None else 0
    completion_tokens += reasoning_tokens
    max_tokens = body.get("max_tokens")
    if (respect_max_tokens and tool_calls is None and isinstance(max_tokens, int)
            and max_tokens < completion_tokens):
        answer = (answer or "")[: max_tokens * 4]
        completion_tokens = max_tokens
        reason = "length"
    prompt_tokens = sum(tokens(message_text(m)) for m in messages) + 3
    system_texts = [message_text(m) for m in messages if m.get("role") == "system"]
    cached = sum(tokens(s) for s in system_texts if s in seen_system_texts)
    seen_system_texts.update(system_texts)
    request_id = body.get("request_id")
    return Completion(
        response_id=uuid.uuid4().hex,
        request_id=request_id if isinstance(request_id, str) and request_id else uuid.uuid4().hex,
        created=int(time.time()),
        model=body["model"],
        content=answer,
        reasoning=reasoning,
        tool_calls=tool_calls,
        finish_reason=finish_reason or reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cached_tokens=cached,
        reasoning_tokens=reasoning_tokens,
    )


def pad_to_size(completion: Completion, nbytes: int) -> Completion:
    """Replace the content with filler so the JSON body is about ``nbytes`` bytes.

    :param completion: the completion to pad.
    :param nbytes: target size of ``json.dumps(completion.to_dict())``.
    """
    base = replace(completion, content="", tool_calls=None, finish_reason="stop")
    overhead = len(json.dumps(base.to_dict()).encode())
    filler = ("lorem ipsum dolor sit amet " * (nbytes // 27 + 2))[: max(0, nbytes - overhead - 8)]
    reasoning_tokens = completion.reasoning_tokens
    return replace(base, content=filler, completion_tokens=tokens(filler) + reasoning_tokens)
