"""Structured output: parse a JSON answer and validate it against a pydantic model or JSON schema.

The result is always plain JSON values (dicts, lists, strings, numbers), so it can go to XCom and
to the ``output`` column without pickling.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from airflow_provider_glm.exceptions import GLMInvalidOutputError

__all__ = ["OutputSpec"]


class OutputSpec:
    """What the operator expects back from the model.

    :param response_format: the request's ``response_format``; ``{"type": "json_object"}`` means
        content must parse as JSON.
    :param output_schema: a pydantic model class or a JSON schema mapping the parsed content must
        satisfy; giving one implies JSON output.
    """

    def __init__(self, response_format: Mapping[str, Any] | None, output_schema: Any = None) -> None:
        self.output_schema = output_schema
        self.expects_json = bool(
            (response_format and response_format.get("type") == "json_object") or output_schema is not None
        )
        self._validator: Any = None
        if output_schema is None:
            return
        if isinstance(output_schema, Mapping):
            import jsonschema  # type: ignore[import-untyped]

            validator_class = jsonschema.validators.validator_for(output_schema)
            try:
                validator_class.check_schema(output_schema)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"output_schema is not a valid JSON schema: {exc.message}") from None
            self._validator = validator_class(output_schema)
        elif not (isinstance(output_schema, type) and hasattr(output_schema, "model_validate")):
            raise TypeError("output_schema must be a pydantic model class or a JSON schema mapping")

    def parse(self, content: str | None) -> Any:
        """The validated output for ``content``, or ``None`` when no JSON is expected.

        :raises GLMInvalidOutputError: the content is not JSON or does not validate.
        """
        if not self.expects_json:
            return None
        try:
            value = json.loads(_strip_fence(content or ""))
        except ValueError as exc:
            raise GLMInvalidOutputError(f"the answer is not valid JSON: {exc}") from None
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


def _strip_fence(text: str) -> str:
    """Drop a Markdown code fence some models wrap JSON in."""
    stripped = text.strip()
    if stripped.startswith("```") and stripped.endswith("```"):
        stripped = stripped[3:-3]
        return stripped.split("\n", 1)[1] if stripped.startswith("json") else stripped
    return stripped
