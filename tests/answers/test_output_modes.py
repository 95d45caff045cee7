"""Structured output through a function call (``output_mode="tool"``) and through JSON mode, offline.

The local server answers the schema the request carries (the function's ``parameters``, or the schema
fenced in the JSON-mode instruction), so a user's own pydantic model passes without a key; scripted
answers stand in for a model that answers in text or calls the function with bad arguments.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any, Literal

import pytest
from _databases import BACKENDS
from _warehouse import Warehouse
from pydantic import BaseModel, Field

from airflow_provider_glm.exceptions import GLMInvalidOutputError
from airflow_provider_glm.operators.chat import GLMChatOperator


class ContactFields(BaseModel):
    """What support wants from each customer message: flat, so every field gets a typed column."""

    customer: str
    order_id: str | None = None
    issue: Literal["damaged", "late", "wrong_item", "billing", "other"]
    urgency: int = Field(ge=1, le=5)
    refund_requested: bool
    amount: float | None = None
    items: list[str] = []


TOOL_NAME = "contact_fields"
MESSAGES = [
    {"id": "c1", "text": "Hi, Mei Chen here. Order A-2001 arrived with a cracked lid, I want a refund of 35.90."},
    {"id": "c2", "text": "Tom Berg: my order A-2002 is a week late, where is it?"},
    {"id": "c3", "text": "Ana Lima. You charged me twice for A-2003."},
]
PROMPT = "Extract the fields from this customer message.\nMessage: {{ row.text }}"
EXACT = {"customer": "Tom Berg", "order_id": "A-2002", "issue": "late", "urgency": 3, "refund_requested": False,
         "amount": None, "items": []}


def extract_operator(**kwargs: Any) -> GLMChatOperator:
    params: dict[str, Any] = {"task_id": "glm", "rows": MESSAGES, "row_key": "id", "prompt": PROMPT,
                              "output_schema": ContactFields, "output_mode": "tool"}
    params.update(kwargs)
    return GLMChatOperator(**params)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tool_mode_validates_the_calls_arguments_into_typed_columns(
    glm_conn: Any, context: dict[str, Any], warehouse: Warehouse
) -> None:
    glm_conn.answer("A-2002", tool_call={"name": TOOL_NAME, "arguments": EXACT})
    values = extract_operator(output_columns=True, **warehouse.operator_kwargs()).execute(context)

    for request in glm_conn.requests:
        body = request.body
        assert body["tools"] == [{"type": "function", "function": {
            "name": TOOL_NAME, "description": "Record the extracted fields.",
            "parameters": ContactFields.model_json_schema()}}]
        assert body["tool_choice"] == "auto"
        assert "response_format" not in body, "tool mode asks for no JSON mode"
        assert f"`{TOOL_NAME}`" in body["messages"][0]["content"], "the system instruction names the function"

    results = warehouse.results(ContactFields)
    assert [results[key]["status"] for key in ("c1", "c2", "c3")] == ["ok"] * 3
    for key, value in zip(("c1", "c2", "c3"), values, strict=True):
        row = results[key]
        assert row["output"] == value == ContactFields.model_validate(value).model_dump(mode="json")
        assert row["tool_calls"][0]["arguments"] == value
        typed = {name: row[name] for name in ContactFields.model_fields}
        assert typed == value, "each field has its own column, with the validated value"
        assert isinstance(row["urgency"], int)
        assert 1 <= row["urgency"] <= 5
        assert isinstance(row["refund_requested"], bool)
        assert isinstance(row["items"], list)
    assert values[1] == EXACT
    assert results["c2"]["amount"] is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_call_or_bad_arguments_fail_the_row_with_the_reason(
    glm_conn: Any, context: dict[str, Any], warehouse: Warehouse
) -> None:
    lookup = {"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}
    rows = [
        {"id": "ok", "text": "Mei Chen, order A-2001 is damaged."},
        {"id": "text", "text": "Tom Berg writes in prose."},
        {"id": "not-json", "text": "Ana Lima sends broken arguments."},
        {"id": "invalid", "text": "Bo Wu sends an issue the schema does not know."},
        {"id": "other-function", "text": "Li Na gets the wrong function called."},
    ]
    glm_conn.answer("writes in prose", content="The customer Tom Berg says his parcel is late.")
    glm_conn.answer("broken arguments", tool_call={"name": TOOL_NAME, "arguments": "customer=Ana Lima; issue=late"})
    glm_conn.answer("does not know", tool_call={"name": TOOL_NAME, "arguments": {**EXACT, "issue": "lost"}})
    glm_conn.answer("wrong function", tool_call={"name": "lookup_order", "arguments": {"order_id": "A-1"}})
    op = extract_operator(rows=rows, output_columns=True, max_failed_rows=4, request_params={"tools": [lookup]},
                          **warehouse.operator_kwargs())
    values = op.execute(context)

    assert values[0] is not None
    assert values[1:] == [None] * 4
    results = warehouse.results(ContactFields)
    assert {key: row["status"] for key, row in results.items()} == {
        "ok": "ok", "text": "failed", "not-json": "failed", "invalid": "failed", "other-function": "failed"}
    errors = {key: row["error"] for key, row in results.items()}
    assert errors["text"] == (
        "GLMInvalidOutputError: the model answered in text instead of calling the function `contact_fields` "
        "(GLM accepts only tool_choice='auto', so a call cannot be forced)")
    assert errors["not-json"].startswith(
        "GLMInvalidOutputError: the call of `contact_fields` has arguments that are not valid JSON")
    assert errors["invalid"].startswith("GLMInvalidOutputError: output does not match output_schema at issue")
    assert errors["other-function"].startswith(
        "GLMInvalidOutputError: the model called `lookup_order` instead of calling the function `contact_fields`")
    assert results["text"]["content"] == "The customer Tom Berg says his parcel is late.", "the text is kept"
    assert results["other-function"]["tool_calls"][0]["name"] == "lookup_order", "the call made is kept"
    for key in ("text", "not-json", "invalid", "other-function"):
        assert results[key]["output"] is None
        assert all(results[key][name] is None for name in ContactFields.model_fields), "no typed value"
    assert glm_conn.stats.billed_responses == 5, "each failed row was answered (and billed) once, not retried"


class Priority(enum.Enum):
    LOW = "low"
    NORMAL = "normal"
    URGENT = "urgent"


class Address(BaseModel):
    street: str = Field(min_length=1)
    city: str
    postcode: str | None = Field(default=None, pattern=r"^\d{5}$")
    country: Literal["DE", "FR", "CN", "US"]


class LineItem(BaseModel):
    sku: str = Field(pattern=r"^[A-Z]{3}-\d{4}$", description="Our stock keeping unit, e.g. ABC-1234.")
    quantity: int = Field(ge=1, le=99)
    unit_price: float = Field(gt=0)
    gift_wrap: bool = False


class PurchaseOrder(BaseModel):
    """A purchase order pulled out of a free-text email: nested models, enums, optional fields and lists."""

    customer: str = Field(min_length=2, max_length=80)
    email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+$")
    priority: Priority
    ship_to: Address
    bill_to: Address | None = None
    items: list[LineItem] = Field(min_length=1, max_length=20)
    tags: list[Literal["b2b", "repeat", "vip", "export"]] = []
    deliver_by: dt.date | None = None
    notes: str | None = None


EMAILS = [
    {"id": "po-1", "text": "Please send 3x ABC-1234 and 1x XYZ-0042 to Hauptstr. 5, 10115 Berlin. - Mei"},
    {"id": "po-2", "text": "Urgent: 12 units of QRS-7788 to 1 Rue de Rivoli, Paris, by Friday. Tom Berg"},
    {"id": "po-3", "text": ""},
]


@pytest.mark.parametrize("mode", ["json", "tool"])
def test_a_users_realistic_schema_passes_offline(glm_conn: Any, context: dict[str, Any], mode: str) -> None:
    op = GLMChatOperator(task_id="glm", rows=EMAILS, row_key="id", output_schema=PurchaseOrder, output_mode=mode,
                         system_prompt="You turn purchase emails into orders.",
                         prompt="Email {{ row.id }}:\n{{ row.text }}")
    values = op.execute(context)

    assert context["ti"].xcom["usage"]["failures"] == []
    assert len(values) == 3
    for value in values:
        assert PurchaseOrder.model_validate(value).model_dump(mode="json") == value
    body = glm_conn.requests[0].body
    system = body["messages"][0]["content"]
    assert system.startswith("You turn purchase emails into orders.\n\n"), "the instruction joins the system prompt"
    if mode == "json":
        assert body["response_format"] == {"type": "json_object"}
        assert "```json\n" in system, "JSON mode shows the schema in the system message"
        assert "tools" not in body
    else:
        assert body["tools"][0]["function"]["parameters"] == PurchaseOrder.model_json_schema()
        assert "response_format" not in body


def test_single_mode_returns_the_validated_arguments(glm_conn: Any, context: dict[str, Any]) -> None:
    glm_conn.answer("Tom Berg", tool_call={"name": TOOL_NAME, "arguments": EXACT})
    op = GLMChatOperator(task_id="glm", prompt=MESSAGES[1]["text"], output_schema=ContactFields, output_mode="tool")
    assert op.execute(context) == EXACT
    answer = context["ti"].xcom["answer"]
    assert answer["finish_reason"] == "tool_calls"
    assert answer["tool_calls"][0]["arguments"] == EXACT

    glm_conn.answer("Ana Lima", content="Ana was charged twice.")
    with pytest.raises(GLMInvalidOutputError, match="answered in text instead of calling the function `contact_"):
        GLMChatOperator(task_id="glm", prompt=MESSAGES[2]["text"], output_schema=ContactFields,
                        output_mode="tool").execute(context)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"output_mode": "tool", "request_params": {"response_format": {"type": "json_object"}}},
         "drop response_format json_object"),
        ({"output_mode": "tool", "output_schema": None}, "output_mode='tool' needs an output_schema"),
        ({"output_mode": "json", "request_params": {"response_format": {
            "type": "json_schema", "json_schema": {"schema": ContactFields.model_json_schema()}}}},
         "response_format.type must be 'text' or 'json_object'"),
        ({"request_params": {"tool_choice": "required"}}, "tool_choice"),
    ],
    ids=["tool-mode-with-json-mode", "tool-mode-without-schema", "json-schema-response-format",
         "forced-tool-choice"],
)
def test_what_glm_does_not_take_is_refused_before_any_call(glm_conn: Any, context: dict[str, Any],
                                                           kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        extract_operator(**kwargs).execute(context)
    assert glm_conn.stats.requests == 0


def test_an_unknown_output_mode_is_refused_when_the_dag_is_parsed() -> None:
    with pytest.raises(ValueError, match="output_mode must be 'json' or 'tool'"):
        extract_operator(output_mode="json_schema")
