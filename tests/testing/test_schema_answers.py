"""The test server's schema-conforming answers: every value validates against its schema (jsonschema)."""

from __future__ import annotations

import datetime
import enum
import json
import re
import uuid
from typing import Annotated, Any, Literal

import jsonschema
import pytest
from pydantic import AnyUrl, BaseModel, Field

from airflow_provider_glm.testing.pattern_samples import sample_for_pattern
from airflow_provider_glm.testing.schema_answers import (
    is_schema,
    schema_in_response_format,
    schema_in_texts,
    value_for_schema,
)

TEXTS = ["Extract the fields from: ACME Corp bought 3 widgets on 2024-05-01 for 19.99 EUR", "", "x" * 700,
         "多语言文本 with ünïcode"]


class Priority(str, enum.Enum):
    """An enum reached through ``$ref``."""

    low = "low"
    medium = "medium"
    high = "high"


class Address(BaseModel):
    street: str
    city: str = Field(min_length=2, max_length=5)
    zip: str = Field(pattern=r"^\d{5}(-\d{4})?$")
    country: Literal["DE", "FR", "CN"] = "DE"


class LineItem(BaseModel):
    sku: str = Field(pattern=r"^[A-Z]{3}-[0-9]{4}$")
    quantity: int = Field(ge=1, le=999)
    unit_price: float = Field(gt=0, lt=10_000)
    discount: float | None = Field(default=None, ge=0, le=1, multiple_of=0.05)


class Invoice(BaseModel):
    invoice_id: uuid.UUID
    kind: Literal["invoice", "credit_note"]
    schema_version: Literal[2]
    priority: Priority
    flags: set[Priority] = Field(min_length=2, max_length=3)
    issued: datetime.date
    received_at: datetime.datetime
    customer_email: str = Field(json_schema_extra={"format": "email"})
    portal: AnyUrl
    billing: Address
    shipping: Address | None = None
    items: list[LineItem] = Field(min_length=1, max_length=4)
    totals: dict[str, float]
    paid: bool
    note: Annotated[str, Field(max_length=10)] | None = None
    position: tuple[int, str]


class Node(BaseModel):
    """A recursive model: the generator must stop."""

    label: str
    children: list[Node] = []
    parent: Node | None = None


class Sentiment(BaseModel):
    sentiment: Literal["positive", "neutral", "negative"]
    confidence: float = Field(ge=0, le=1)
    topics: list[str] = Field(default_factory=list, max_length=3)
    score: int = Field(gt=-5, lt=5)


class Strict(BaseModel):
    """``extra="forbid"``: ``additionalProperties: false``."""

    model_config = {"extra": "forbid"}
    code: Annotated[str, Field(min_length=30)]
    count: Annotated[int, Field(multiple_of=7, gt=100)]
    ratio: Annotated[float, Field(gt=0.1, lt=0.2)]


MODELS = [Invoice, Node, Sentiment, Strict, Address, LineItem]


def check(schema: dict[str, Any], value: Any) -> None:
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("text", TEXTS, ids=["sentence", "empty", "long", "unicode"])
def test_pydantic_models_validate(model: type[BaseModel], text: str) -> None:
    schema = model.model_json_schema()
    value = value_for_schema(schema, text)
    check(schema, value)
    model.model_validate(value)
    assert value_for_schema(schema, text) == value


def test_values_derive_from_the_text() -> None:
    schema = Invoice.model_json_schema()
    text = TEXTS[0]
    value = value_for_schema(schema, text)
    assert value["billing"]["street"] == text[:60]
    assert value["items"][0]["quantity"] == min(999, len(text))
    assert value["schema_version"] == 2 and value["kind"] in ("invoice", "credit_note")
    assert value["shipping"] is not None and value["note"] is not None
    assert len(set(value["flags"])) == len(value["flags"]) >= 2
    assert re.fullmatch(r"[A-Z]{3}-[0-9]{4}", value["items"][0]["sku"])
    other = value_for_schema(schema, "a different request")
    assert other != value and other["billing"]["street"] == "a different request"


def test_recursive_model_terminates_small() -> None:
    value = value_for_schema(Node.model_json_schema(), "tree")
    assert len(json.dumps(value)) < 10_000 and value["label"] == "tree"


HAND_WRITTEN: list[dict[str, Any]] = [
    {"type": "object", "properties": {"a": {"type": ["string", "null"]}, "b": {"type": "integer", "minimum": 10,
                                                                              "maximum": 10}},
     "required": ["a", "b"], "additionalProperties": False},
    {"type": "array", "items": {"enum": [1, 2, 3]}, "minItems": 3, "uniqueItems": True},
    {"type": "array", "items": {"type": "boolean"}, "maxItems": 0},
    {"type": "object", "minProperties": 3, "additionalProperties": {"type": "number", "exclusiveMaximum": 0}},
    {"type": "object", "required": ["x"], "properties": {"y": {"const": None}}},
    {"allOf": [{"type": "object", "properties": {"p": {"type": "string", "format": "uri"}}, "required": ["p"]},
               {"properties": {"q": {"type": "string", "format": "date"}}, "required": ["q"]}]},
    {"$ref": "#/definitions/thing", "definitions": {"thing": {"type": "object", "properties": {
        "n": {"type": "number", "multipleOf": 0.1, "minimum": 0.25}, "t": {"type": "string", "format": "time"},
        "u": {"type": "string", "format": "uuid"}, "h": {"type": "string", "format": "hostname"},
        "ip": {"type": "string", "format": "ipv4"}, "ip6": {"type": "string", "format": "ipv6"},
        "d": {"type": "string", "format": "duration"}}}}},
    {"oneOf": [{"type": "object", "properties": {"kind": {"const": "a"}}, "required": ["kind"]},
               {"type": "object", "properties": {"kind": {"const": "b"}}, "required": ["kind"]}]},
    {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string", "pattern": "^v[0-9]+$"}],
     "items": False},
    {"type": "string", "minLength": 200},
    {"type": "integer", "exclusiveMinimum": 3, "exclusiveMaximum": 5},
    {"type": "number", "minimum": 1, "exclusiveMinimum": True, "maximum": 2},
    {"properties": {"free": {}}, "required": ["free"]},
    {"type": "object", "properties": {"email": {"type": "string", "format": "email"},
                                      "when": {"type": "string", "format": "date-time"}}},
]


@pytest.mark.parametrize("schema", HAND_WRITTEN, ids=range(len(HAND_WRITTEN)))
def test_hand_written_schemas_validate(schema: dict[str, Any]) -> None:
    for text in TEXTS:
        value = value_for_schema(schema, text)
        if schema.get("exclusiveMinimum") is True:
            assert 1 < value <= 2
            continue
        check(schema, value)


@pytest.mark.parametrize(("pattern", "preferred", "expected"), [
    (r"^\d{5}$", "hello", "00000"),
    (r"hello", "say hello", "say hello"),
    (r"^(?:foo|bar)-[a-f0-9]{2,4}\.json$", "x", "foo-aa.json"),
    (r"^[^@\s]+@[^@\s]+$", "x", "a@a"),
    (r"^\p{L}+$", "x", None),
    (r"^(a)\1$", "x", None),
    (r"[", "x", None),
])
def test_pattern_samples(pattern: str, preferred: str, expected: str | None) -> None:
    assert sample_for_pattern(pattern, preferred) == expected


def test_unsatisfiable_pattern_falls_back_to_a_plain_string() -> None:
    value = value_for_schema({"type": "string", "pattern": r"^(a)\1$"}, "some text")
    assert value == "some text"


def test_schema_detection_in_messages_and_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    texts = ["no block here", "Example:\n```json\n{\"a\": 1}\n```",
             f"Answer as JSON for this schema:\n```json\n{json.dumps(schema)}\n```", "```json\n{broken\n```"]
    assert schema_in_texts(texts) == schema
    assert schema_in_texts(["```JSON {\"type\": \"array\"}```"]) == {"type": "array"}
    assert schema_in_texts(["```json\n{\"type\": \"invoice\"}\n```"]) is None
    assert is_schema({"type": ["string", "null"]}) and not is_schema([1])
    wrapped = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert schema_in_response_format(wrapped) == schema
    assert schema_in_response_format({"type": "json_schema", "json_schema": schema}) == schema
    assert schema_in_response_format({"type": "json_schema", "schema": schema}) == schema
    assert schema_in_response_format({"type": "json_object"}) is None
