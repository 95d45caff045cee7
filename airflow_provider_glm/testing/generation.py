"""Deterministic chat completions: content, tool calls, usage, and their SSE form.

Pure functions of the request body (plus the set of system prompts seen before, for cached
tokens), so the chat, batch and async endpoints answer identically.

Rules, in order (the first that applies gives the answer):

* ``tokens(s) = max(1, ceil(len(s) / 4))``. The text of a message is its string content, or its
  ``text`` parts joined with ``"\\n"``; "the text" below is the last ``user`` message's text.
* A scripted answer (``GLMTestServer.answer``, ``Fault.answer``) gives its content and tool calls;
  a scripted ``content`` fault gives its content.
* Tool call: the request has ``function`` tools, the last message is not a ``tool`` result, and
  either a message's text names one of the tools in backticks (e.g. ```` `extract_fields` ````; the
  first such tool in ``tools`` order) or the text contains ``"call tool"`` (any case; the first
  function tool). Its ``arguments`` are a JSON string conforming to the tool's ``parameters``
  (see :mod:`.schema_answers`); when that would be an empty object that allows other keys (no
  ``parameters``, or no properties) they are ``{"query": text[:40]}``. Content None,
  finish_reason ``tool_calls``.
* ``response_format={"type": "json_schema", "json_schema": {"schema": S}}``, or ``json_object``
  with a fenced ````` ```json ````` block in any message that parses to a schema S (first in message
  order): the content is a JSON value conforming to S. ``json_object`` without such a block:
  ``{"summary": text[:200], "chars": len(text)}``.
* Otherwise ``"Summary: " + text[:200]``.
* ``thinking.type == "enabled"`` adds ``reasoning_content = "Thinking about: " + text[:80]``.
* A ``web_search`` tool with ``search_result: true`` adds a ``web_search`` list (see
  :func:`.answers.web_search_results`) unless one is scripted; a scripted ``content_filter`` list
  is added as is. Both are top-level fields; in a stream, ``web_search`` rides on the first chunk
  and ``content_filter`` on the last.
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
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from airflow_provider_glm.testing.answers import web_search_results
from airflow_provider_glm.testing.completion_body import DONE_EVENT, KEEP_ALIVE_EVENT, Completion, sse_event
from airflow_provider_glm.testing.schema_answers import (
    schema_in_response_format,
    schema_in_texts,
    value_for_schema,
)

if TYPE_CHECKING:
    from airflow_provider_glm.testing.answers import ScriptedAnswer

__all__ = ["DONE_EVENT", "KEEP_ALIVE_EVENT", "Completion", "generate", "pad_to_size", "sse_event",
           "tokens", "validate_chat_body"]

QUERY_CHARS = 40


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


def prompt_text(body: Any) -> str:
    """Return the texts of a chat body's messages joined with newlines ("" for anything else).

    :param body: a parsed request body, valid or not.
    """
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return ""
    return "\n".join(message_text(m) for m in messages)


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


def _function_tools(tools: Any) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for tool in tools if isinstance(tools, list) else []:
        if isinstance(tool, dict) and tool.get("type", "function") == "function":
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            if isinstance(function, dict) and isinstance(name, str):
                found.append((name, function.get("parameters")))
    return found


def tool_to_call(body: dict[str, Any], text: str) -> tuple[str, Any] | None:
    """Pick the function tool the answer calls, by the rules in the module docstring.

    :param body: a validated chat body.
    :param text: the last user message's text.
    :return: the tool's name and ``parameters`` (None when absent), or None for no call.
    """
    functions = _function_tools(body.get("tools"))
    messages = body["messages"]
    if not functions or (messages and messages[-1].get("role") == "tool"):
        return None
    everything = prompt_text(body)
    for name, parameters in functions:
        if f"`{name}`" in everything:
            return name, parameters
    return functions[0] if "call tool" in text.lower() else None


def tool_arguments(parameters: Any, text: str) -> str:
    """The JSON text of a tool call's arguments: conforming to ``parameters`` when that asks for
    anything, else ``{"query": text[:40]}``.

    :param parameters: the function's ``parameters`` schema, or None.
    :param text: the last user message's text.
    """
    if isinstance(parameters, dict | bool):
        value = value_for_schema(parameters, text)
        closed = isinstance(parameters, dict) and parameters.get("additionalProperties") is False
        if value != {} or closed:
            return json.dumps(value, ensure_ascii=False)
    return json.dumps({"query": text[:QUERY_CHARS]}, ensure_ascii=False)


def json_answer(body: dict[str, Any], text: str) -> str | None:
    """The JSON-mode content: conforming to the request's schema, or the fixed summary object.

    :param body: a validated chat body.
    :param text: the last user message's text.
    :return: the content, or None when the request is not in JSON mode.
    """
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind not in ("json_object", "json_schema"):
        return None
    schema = schema_in_response_format(response_format)
    if schema is None:
        schema = schema_in_texts(message_text(m) for m in body["messages"])
    if schema is not None:
        return json.dumps(value_for_schema(schema, text), ensure_ascii=False)
    return json.dumps({"summary": text[:200], "chars": len(text)}, ensure_ascii=False)


def generate(
    body: dict[str, Any],
    *,
    seen_system_texts: set[str],
    call_id: str = "call_0",
    content: str | None = None,
    finish_reason: str | None = None,
    respect_max_tokens: bool = True,
    scripted: ScriptedAnswer | None = None,
) -> Completion:
    """Generate the completion for a validated chat body.

    :param body: a chat request body that passed :func:`validate_chat_body`.
    :param seen_system_texts: system prompts seen earlier; updated with this request's.
    :param call_id: id for a tool call.
    :param content: exact content to answer instead of the derived one.
    :param finish_reason: finish reason to force.
    :param respect_max_tokens: apply the ``max_tokens`` cut.
    :param scripted: a scripted answer; its parts replace the generated ones.
    """
    messages: list[Any] = body["messages"]
    text = last_user_text(messages)
    thinking = body.get("thinking")
    reasoning = None
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        reasoning = f"Thinking about: {text[:80]}"
    tool_calls: list[dict[str, Any]] | None = None
    answer: str | None
    if scripted is not None and (scripted.tool_calls or scripted.content is not None):
        tool_calls = scripted.tool_call_objects(call_id)
        answer = scripted.content
    elif content is not None:
        answer = content
    elif (chosen := tool_to_call(body, text)) is not None:
        arguments = tool_arguments(chosen[1], text)
        tool_calls = [{"id": call_id, "type": "function", "index": 0,
                       "function": {"name": chosen[0], "arguments": arguments}}]
        answer = None
    else:
        answer = json_answer(body, text)
        if answer is None:
            answer = f"Summary: {text[:200]}"
    if tool_calls is not None:
        completion_tokens = sum(tokens(c["function"]["arguments"]) for c in tool_calls)
        completion_tokens += tokens(answer) if answer else 0
        reason = "tool_calls"
    else:
        completion_tokens = tokens(answer or "")
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
    web_search = scripted.web_search if scripted is not None else None
    return Completion(
        response_id=uuid.uuid4().hex,
        request_id=request_id if isinstance(request_id, str) and request_id else uuid.uuid4().hex,
        created=int(time.time()),
        model=body["model"],
        content=answer,
        reasoning=reasoning,
        tool_calls=tool_calls,
        finish_reason=finish_reason or (scripted.finish_reason if scripted is not None else None) or reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cached_tokens=cached,
        reasoning_tokens=reasoning_tokens,
        web_search=web_search if web_search is not None else web_search_results(body.get("tools"), text),
        content_filter=scripted.content_filter if scripted is not None else None,
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
