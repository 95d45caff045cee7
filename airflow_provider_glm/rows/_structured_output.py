"""Structured output: what the request asks for, and how the answer is parsed and validated.

Three modes:

* ``text`` (no schema, no JSON asked): nothing is parsed.
* ``json``: ``response_format={"type": "json_object"}``; the answer's content must parse as JSON
  and, with ``output_schema``, validate against it. The schema is shown to the model in a system
  instruction (GLM's chat API takes no JSON schema in ``response_format``).
* ``tool``: the schema becomes one function's ``parameters``; the model is told to call it and the
  call's arguments are validated. GLM accepts only ``tool_choice="auto"``, so a model can still
  answer in text: such a row fails with the reason (it is not parsed from the text).

The output is always plain JSON values, so it can go to XCom and the ``output`` column.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_glm.exceptions import GLMInvalidOutputError

if TYPE_CHECKING:
    from airflow_provider_glm.client.models import ChatCompletion

__all__ = ["OUTPUT_MODES", "OutputSpec"]

OUTPUT_MODES = ("json", "tool")
DEFAULT_TOOL_NAME = "record_output"


class OutputSpec:
    """What the operator expects back from the model.

    :param response_format: the request's ``response_format``; ``{"type": "json_object"}`` means
        content must parse as JSON.
    :param output_schema: a pydantic model class or a JSON schema mapping the output must satisfy.
    :param mode: ``json`` (default) or ``tool`` (see the module docstring).
    :param tool_name: the function's name in tool mode (default: the pydantic model's name, snake_cased).
    """

    def __init__(self, response_format: Mapping[str, Any] | None, output_schema: Any = None, *,
                 mode: str = "json", tool_name: str | None = None) -> None:
        if mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {list(OUTPUT_MODES)}, got {mode!r}")
        if mode == "tool" and output_schema is None:
            raise ValueError("output_mode='tool' needs an output_schema (the function's parameters)")
        self.output_schema = output_schema
        self.mode = mode if output_schema is not None else "json"
        self.expects_json = bool(
            (response_format and response_format.get("type") == "json_object") or output_schema is not None
        )
        self._validator: Any = None
        self.json_schema: dict[str, Any] | None = None
        if output_schema is not None:
            self.json_schema = self._compile(output_schema)
        self.tool_name = tool_name or _default_tool_name(output_schema)

    @property
    def structured(self) -> bool:
        """Whether answers are parsed into an ``output`` (JSON mode or tool mode)."""
        return self.expects_json

    def _compile(self, output_schema: Any) -> dict[str, Any]:
        if isinstance(output_schema, Mapping):
            import jsonschema  # type: ignore[import-untyped]

            validator_class = jsonschema.validators.validator_for(output_schema)
            try:
                validator_class.check_schema(output_schema)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"output_schema is not a valid JSON schema: {exc.message}") from None
            self._validator = validator_class(output_schema)
            return dict(output_schema)
        if isinstance(output_schema, type) and hasattr(output_schema, "model_json_schema"):
            return dict(output_schema.model_json_schema())
        raise TypeError("output_schema must be a pydantic model class or a JSON schema mapping")

    def request_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` with what this mode asks of the request (``response_format`` or the tool)."""
        out = dict(params)
        if self.output_schema is None:
            return out
        if self.mode == "json":
            out.setdefault("response_format", {"type": "json_object"})
            return out
        if out.get("response_format", {}).get("type") == "json_object":
            raise ValueError("output_mode='tool' answers through a function call: drop response_format json_object")
        tool = {"type": "function", "function": {
            "name": self.tool_name, "description": "Record the extracted fields.", "parameters": self.json_schema}}
        out["tools"] = [*out.get("tools", []), tool]
        out.setdefault("tool_choice", "auto")
        return out

    def instruction(self) -> str | None:
        """The system instruction that tells the model the expected shape (``None`` without a schema)."""
        if self.json_schema is None:
            return None
        if self.mode == "tool":
            return f"Answer by calling the function `{self.tool_name}` with the fields it asks for."
        schema = json.dumps(self.json_schema, ensure_ascii=False, sort_keys=True)
        return f"Reply with one JSON object that validates against this JSON Schema:\n```json\n{schema}\n```"

    def parse(self, completion: ChatCompletion) -> Any:
        """The validated output of an answer, or ``None`` when nothing structured is expected.

        :raises GLMInvalidOutputError: no JSON / no call of the function, or the value fails the schema.
        """
        if not self.expects_json:
            return None
        if self.mode == "tool":
            return self.validate(self._call_arguments(completion))
        try:
            value = json.loads(_strip_fence(completion.content or ""))
        except ValueError as exc:
            raise GLMInvalidOutputError(f"the answer is not valid JSON: {exc}") from None
        return self.validate(value)

    def _call_arguments(self, completion: ChatCompletion) -> Any:
        message = completion.choices[0].message if completion.choices else None
        calls = (message.tool_calls if message else None) or []
        for call in calls:
            if call.function is not None and call.function.name == self.tool_name:
                try:
                    return call.function.parsed_arguments()
                except ValueError as exc:
                    raise GLMInvalidOutputError(f"the call of `{self.tool_name}` has arguments that are not "
                                                f"valid JSON: {exc}") from None
        others = [f"`{c.function.name}`" for c in calls if c.function is not None and c.function.name]
        if others:
            said = f"called {', '.join(others)}"
        else:
            said = "answered in text" if completion.content else "answered without content"
        raise GLMInvalidOutputError(f"the model {said} instead of calling the function `{self.tool_name}` "
                                    "(GLM accepts only tool_choice='auto', so a call cannot be forced)")

    def validate(self, value: Any) -> Any:
        """``value`` checked against the schema (a pydantic model's dump in JSON mode)."""
        if self._validator is not None:
            errors = sorted(self._validator.iter_errors(value), key=lambda e: list(e.path))
            if errors:
                where = "/".join(str(p) for p in errors[0].path) or "(root)"
                raise GLMInvalidOutputError(f"output does not match output_schema at {where}: {errors[0].message}")
            return value
        if self.output_schema is not None:
            from pydantic import ValidationError

            try:
                return self.output_schema.model_validate(value).model_dump(mode="json")
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "(root)"
                raise GLMInvalidOutputError(f"output does not match output_schema at {where}: {first['msg']}") from None
        return value


def _default_tool_name(output_schema: Any) -> str:
    name = getattr(output_schema, "__name__", None) if isinstance(output_schema, type) else None
    if not name and isinstance(output_schema, Mapping):
        name = output_schema.get("title")
    if not isinstance(name, str) or not name:
        return DEFAULT_TOOL_NAME
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in name).strip("_")
    cleaned = "".join(c if c.isalnum() or c in "_-" else "_" for c in snake)[:64]
    return cleaned or DEFAULT_TOOL_NAME


def _strip_fence(text: str) -> str:
    """Drop a Markdown code fence some models wrap JSON in."""
    stripped = text.strip()
    if stripped.startswith("```") and stripped.endswith("```"):
        stripped = stripped[3:-3]
        return stripped.split("\n", 1)[1] if stripped.startswith("json") else stripped
    return stripped
