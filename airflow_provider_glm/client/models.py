"""Wire models for ``POST /chat/completions``: the request (validated before sending) and the answer.

Responses parse leniently: unknown fields are kept (``model_extra``), ``function.arguments`` may be a
JSON string or an object, and nothing the API sometimes omits is required. Requests are strict on
the documented ranges, so a bad request fails with a :class:`ValueError` naming the field and costs
no HTTP call.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

__all__ = [
    "AssistantMessage",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessage",
    "Choice",
    "FunctionCall",
    "ToolCall",
    "Usage",
    "build_chat_request",
    "encode_body",
]

_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ChatMessage(_Lenient):
    """One message of the conversation sent to the model."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    """A string, or for ``user`` a list of parts (``text``, ``image_url``, ``video_url``, ``file``, ...)."""
    tool_call_id: str | None = None
    """Required on ``tool`` messages: the id of the call this message answers."""
    tool_calls: list[dict[str, Any]] | None = None
    reasoning_content: str | None = None

    @model_validator(mode="after")
    def _check_role_fields(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        if self.role in ("system", "user") and self.content in (None, "", []):
            raise ValueError(f"a {self.role} message needs non-empty content")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        return self


class ChatCompletionRequest(_Lenient):
    """The body of a chat completion call, checked against the documented ranges.

    Unknown keys pass through unchanged so new API options work before this model knows them.
    """

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    request_id: str | None = Field(default=None, min_length=6, max_length=64)
    do_sample: bool | None = None
    stream: bool | None = None
    thinking: dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.01, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: list[str] | None = Field(default=None, min_length=1, max_length=1)
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    tool_choice: Literal["auto"] | None = None
    tool_stream: bool | None = None
    response_format: dict[str, Any] | None = None
    user_id: str | None = Field(default=None, min_length=6, max_length=128)

    @field_validator("temperature", "top_p", "max_tokens", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"must be a number, not a boolean ({value})")
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("thinking")
    @classmethod
    def _check_thinking(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type") not in ("enabled", "disabled"):
            raise ValueError("thinking.type must be 'enabled' or 'disabled'")
        return value

    @field_validator("response_format")
    @classmethod
    def _check_response_format(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type") not in ("text", "json_object"):
            raise ValueError("response_format.type must be 'text' or 'json_object'")
        return value

    @field_validator("tools")
    @classmethod
    def _check_tools(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for i, tool in enumerate(value or ()):
            kind = tool.get("type")
            if kind not in ("function", "retrieval", "web_search", "mcp"):
                raise ValueError(f"tools[{i}].type must be function, retrieval, web_search or mcp")
            if kind == "function":
                name = (tool.get("function") or {}).get("name", "")
                if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
                    raise ValueError(f"tools[{i}].function.name must match {_FUNCTION_NAME.pattern}")
        return value

    @model_validator(mode="after")
    def _check_conversation(self) -> ChatCompletionRequest:
        roles = {m.role for m in self.messages}
        if roles <= {"system"} or roles <= {"assistant"}:
            raise ValueError("messages: need at least one user (or tool) message, not only system/assistant")
        if self.tool_stream and not self.stream:
            raise ValueError("tool_stream needs stream=True")
        return self

    def to_body(self) -> dict[str, Any]:
        """The JSON body to send: unset options left out."""
        return self.model_dump(mode="json", exclude_none=True)


def encode_body(body: Any) -> bytes:
    """The JSON bytes a request body is sent as: compact, keys sorted, UTF-8.

    Sorted keys make the bytes (and so a row's fingerprint) independent of the order options were
    given in. A lone surrogate cannot be encoded and raises :class:`UnicodeEncodeError`.
    """
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")


def build_chat_request(model: str, messages: Any, /, **params: Any) -> ChatCompletionRequest:
    """Validate a chat request, turning pydantic's report into a ``ValueError`` that names the field.

    :param model: the model name, e.g. ``glm-4.5``.
    :param messages: a list of ``{"role", "content", ...}`` mappings.
    :param params: any other request option (temperature, max_tokens, thinking, tools, ...).
    """
    clashing = sorted(set(params) & {"model", "messages"})
    if clashing:
        raise ValueError(f"invalid chat request: {clashing} cannot be request options; "
                         "pass the model and the messages (or prompt) as their own parameters")
    try:
        return ChatCompletionRequest(model=model, messages=messages, **params)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'request'}: {err['msg']}" for err in exc.errors()
        )
        raise ValueError(f"invalid chat request: {problems}") from None


class PromptTokensDetails(_Lenient):
    cached_tokens: int | None = 0


class CompletionTokensDetails(_Lenient):
    reasoning_tokens: int | None = 0


class Usage(_Lenient):
    """Token counts billed for one response."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens served from the context cache (billed at the cached price)."""
        return (self.prompt_tokens_details.cached_tokens or 0) if self.prompt_tokens_details else 0

    @property
    def reasoning_tokens(self) -> int:
        """Completion tokens spent on reasoning (already part of ``completion_tokens``)."""
        details = self.completion_tokens_details
        return (details.reasoning_tokens or 0) if details else 0


class FunctionCall(_Lenient):
    """A function the model asks to call; ``arguments`` is kept as sent (JSON text or an object)."""

    name: str | None = None
    arguments: str | dict[str, Any] | None = None

    def parsed_arguments(self) -> Any:
        """The arguments as Python values (a JSON string is decoded)."""
        if isinstance(self.arguments, str):
            return json.loads(self.arguments) if self.arguments.strip() else {}
        return self.arguments or {}


class ToolCall(_Lenient):
    """A tool call of type ``function`` or ``mcp``."""

    id: str | None = None
    type: str | None = None
    index: int | None = None
    function: FunctionCall | None = None
    mcp: dict[str, Any] | None = None


class Audio(_Lenient):
    id: str | None = None
    data: str | None = None
    expires_at: str | None = None


class AssistantMessage(_Lenient):
    """The model's message; ``content`` may be null when it calls tools."""

    role: str = "assistant"
    content: str | None = None
    reasoning_content: str | None = None
    audio: Audio | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(_Lenient):
    index: int = 0
    message: AssistantMessage = Field(default_factory=AssistantMessage)
    finish_reason: str | None = None
    """``stop``, ``tool_calls``, ``length``, ``sensitive``, ``network_error`` or ``model_context_window_exceeded``."""


class ChatCompletion(_Lenient):
    """A complete chat answer, as in the API reference (there is no ``object`` field)."""

    id: str | None = None
    request_id: str | None = None
    created: int | None = None
    model: str | None = None
    choices: list[Choice] = Field(default_factory=list)
    usage: Usage | None = None
    video_result: list[dict[str, Any]] | None = None
    web_search: list[dict[str, Any]] | None = None
    content_filter: list[dict[str, Any]] | None = None
    _call_info: Any = PrivateAttr(default=None)

    @property
    def call_info(self) -> Any:
        """How the call went (:class:`~airflow_provider_glm.client.CallInfo`), set by the client."""
        return self._call_info

    @property
    def content(self) -> str | None:
        """The first choice's content, the common case."""
        return self.choices[0].message.content if self.choices else None

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason if self.choices else None


class FunctionDelta(_Lenient):
    name: str | None = None
    arguments: str | dict[str, Any] | None = None


class ToolCallDelta(_Lenient):
    index: int = 0
    id: str | None = None
    type: str | None = None
    function: FunctionDelta | None = None


class Delta(_Lenient):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(_Lenient):
    index: int = 0
    delta: Delta = Field(default_factory=Delta)
    finish_reason: str | None = None


class ChatCompletionChunk(_Lenient):
    """One server-sent event of a streamed answer; ``usage`` comes only in the last one."""

    id: str | None = None
    created: int | None = None
    model: str | None = None
    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: Usage | None = None
