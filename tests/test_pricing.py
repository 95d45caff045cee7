"""Tests for the packaged price table and cost arithmetic."""

from __future__ import annotations

import json
from decimal import Decimal
from importlib.resources import files

import pytest

from airflow_provider_glm.rows._pricing import BATCH_DISCOUNT, Price, PriceTable, compute_cost

ZAI_USD = {
    "glm-4.5": ("0.60", "0.11", "2.20"),
    "glm-4.6": ("0.60", "0.11", "2.20"),
    "glm-4.7": ("0.60", "0.11", "2.20"),
    "glm-4.5-air": ("0.20", "0.03", "1.10"),
    "glm-4.5-x": ("2.20", "0.45", "8.90"),
    "glm-4.5-airx": ("1.10", "0.22", "4.50"),
    "glm-4.7-flashx": ("0.07", "0.01", "0.40"),
    "glm-5": ("1.00", "0.20", "3.20"),
    "glm-4.5v": ("0.60", "0.11", "1.80"),
    "glm-4.6v": ("0.30", "0.05", "0.90"),
    "glm-4-32b-0414-128k": ("0.10", "0.10", "0.10"),
    "glm-4.5-flash": ("0", "0", "0"),
    "glm-4.7-flash": ("0", "0", "0"),
    "glm-4.6v-flash": ("0", "0", "0"),
}
ZAI_USD_2026_11 = {
    "glm-5.1": ("1.40", "0.26", "4.40"),
    "glm-5.2": ("1.40", "0.26", "4.40"),
    "glm-5.3": ("1.40", "0.26", "4.40"),
    "glm-5-turbo": ("1.20", "0.24", "4.00"),
    "glm-5v-turbo": ("1.20", "0.24", "4.00"),
    "glm-5-code": ("1.20", "0.24", "5.00"),
}
"""Captured 2026-11-30 (the table's date); the rest of the table is dated 2026-07-31, per model."""
BIGMODEL_CNY = {
    "glm-4-plus": ("5", "5", "5"),
    "glm-4-air-250414": ("0.5", "0.5", "0.5"),
    "glm-4-long": ("1", "1", "1"),
    "glm-4-flash": ("0", "0", "0"),
}


def test_packaged_json_is_dated_and_uses_decimal_strings() -> None:
    document = json.loads(files("airflow_provider_glm.rows").joinpath("prices.json").read_text("utf-8"))
    assert document["as_of"] == "2026-11-30"
    assert document["source"]
    assert document["output_limits"]["default"] == 131_072
    for spec in document["models"].values():
        for field in ("input", "cached_input", "output"):
            assert isinstance(spec[field], str)


@pytest.mark.parametrize(
    ("table", "currency", "as_of"),
    [(ZAI_USD, "USD", "2026-07-31"), (ZAI_USD_2026_11, "USD", "2026-11-30"), (BIGMODEL_CNY, "CNY", "2026-07-31")],
    ids=["zai-usd", "zai-usd-2026-11", "bigmodel-cny"],
)
def test_default_table_has_every_documented_price(
    table: dict[str, tuple[str, str, str]], currency: str, as_of: str
) -> None:
    prices = PriceTable.default()
    for model, (inp, cached, out) in table.items():
        price = prices.lookup(model)
        assert price is not None, model
        assert (price.input, price.cached_input, price.output, price.currency, price.as_of) == (
            Decimal(inp), Decimal(cached), Decimal(out), currency, as_of), model


def test_output_limits_bound_answers_without_max_tokens() -> None:
    prices = PriceTable.default()
    assert prices.output_limit("glm-4.5") == 131_072
    assert prices.output_limit("GLM-5.2") == 1_048_576
    assert prices.output_limit("not-a-model") == 131_072
    custom = prices.with_overrides({"mini": {"input": "1", "output": "2", "max_output_tokens": 512}})
    assert custom.output_limit("mini") == 512


def test_default_is_loaded_once() -> None:
    assert PriceTable.default() is PriceTable.default()
    assert len(PriceTable.default()) == len(ZAI_USD) + len(ZAI_USD_2026_11) + len(BIGMODEL_CNY)


@pytest.mark.parametrize("name", ["GLM-4.5", " glm-4.5 ", "Glm-4.5\n"])
def test_lookup_is_case_insensitive_and_strips(name: str) -> None:
    assert PriceTable.default().lookup(name) == PriceTable.default().lookup("glm-4.5")
    assert name in PriceTable.default()


@pytest.mark.parametrize("name", ["glm-9", "", "gpt-4o", None])
def test_unknown_model_has_no_price_and_null_cost(name: str | None) -> None:
    price = PriceTable.default().lookup(name)
    assert price is None
    assert compute_cost(price, 1000, 1000) is None


def test_free_model_costs_zero_not_null() -> None:
    assert compute_cost(PriceTable.default().lookup("glm-4.5-flash"), 10_000, 5_000) == Decimal(0)


def test_cost_arithmetic_with_cached_tokens() -> None:
    price = PriceTable.default().lookup("glm-4.5")
    cost = compute_cost(price, prompt_tokens=1_000_000, completion_tokens=500_000, cached_tokens=400_000)
    assert cost == Decimal("0.60") * Decimal("0.6") + Decimal("0.11") * Decimal("0.4") + Decimal("1.10")
    assert compute_cost(price, 1, 1) == Decimal("0.0000028000")
    assert compute_cost(price, 1, 1).as_tuple().exponent == -10  # type: ignore[union-attr]


def test_cached_tokens_beyond_prompt_are_clamped() -> None:
    price = PriceTable.default().lookup("glm-4.5")
    assert compute_cost(price, 100, 0, cached_tokens=500) == compute_cost(price, 100, 0, cached_tokens=100)
    assert compute_cost(price, 100, 0, cached_tokens=100) == Decimal("0.0000110000")


def test_discount_halves_batch_price() -> None:
    price = PriceTable.default().lookup("glm-4-plus")
    full = compute_cost(price, 2_000, 1_000)
    assert full == Decimal("0.0150000000")
    assert compute_cost(price, 2_000, 1_000, discount=BATCH_DISCOUNT) == Decimal("0.0075000000")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prompt_tokens": -1, "completion_tokens": 0},
        {"prompt_tokens": 0, "completion_tokens": -5},
        {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": -1},
        {"prompt_tokens": 1.5, "completion_tokens": 0},
        {"prompt_tokens": 0, "completion_tokens": 0, "discount": Decimal(-1)},
        {"prompt_tokens": 0, "completion_tokens": 0, "discount": Decimal("NaN")},
    ],
)
def test_compute_cost_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be"):
        compute_cost(PriceTable.default().lookup("glm-4.5"), **kwargs)  # type: ignore[arg-type]


def test_partial_override_keeps_other_fields() -> None:
    base = PriceTable.default()
    table = base.with_overrides({"GLM-4.5": {"input": "0.5"}})
    price = table.lookup("glm-4.5")
    assert price is not None
    assert price.input == Decimal("0.5")
    assert price.cached_input == Decimal("0.11")
    assert price.output == Decimal("2.20")
    assert price.currency == "USD"
    assert base.lookup("glm-4.5").input == Decimal("0.60")  # type: ignore[union-attr]
    assert table.lookup("glm-4.6") == base.lookup("glm-4.6")


def test_override_adds_new_model() -> None:
    table = PriceTable.default().with_overrides(
        {"my-finetune": {"input": 1, "output": "2.5", "currency": "cny", "as_of": "2026-08-01"}}
    )
    assert table.lookup("My-Finetune") == Price(Decimal(1), Decimal(1), Decimal("2.5"), "CNY", "2026-08-01")
    assert PriceTable.default().lookup("my-finetune") is None
    assert PriceTable.default().with_overrides(None) is PriceTable.default()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"glm-4.5": {"input": "abc"}}, "'glm-4.5'.*'input'"),
        ({"glm-4.5": {"output": "-1"}}, "'glm-4.5'.*'output'"),
        ({"glm-4.5": {"cached_input": True}}, "'glm-4.5'.*'cached_input'"),
        ({"glm-4.5": {"input": "inf"}}, "'glm-4.5'.*'input'"),
        ({"glm-4.5": {"currency": ""}}, "'glm-4.5'.*'currency'"),
        ({"glm-4.5": {"inptu": "1"}}, "'glm-4.5'.*inptu"),
        ({"glm-4.5": "0.5"}, "'glm-4.5'"),
        ({"new-model": {"input": "1"}}, "'new-model'.*output"),
        ({"  ": {"input": "1", "output": "1"}}, "model name"),
    ],
)
def test_invalid_override_names_model_and_field(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PriceTable.default().with_overrides(overrides)  # type: ignore[arg-type]
