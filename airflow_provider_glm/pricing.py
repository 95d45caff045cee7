"""Token prices per model (dated, overridable data) and the cost of one response.

The packaged table ``prices.json`` holds list prices per 1M tokens as decimal strings. Costs are
computed in :class:`~decimal.Decimal`; an unknown model has an unknown cost (``None``), never 0.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from importlib.resources import files
from types import MappingProxyType
from typing import Any

__all__ = ["BATCH_DISCOUNT", "Price", "PriceTable", "compute_cost"]

BATCH_DISCOUNT = Decimal("0.5")
"""Multiplier for batch requests (50% of the online price)."""

_PRICES_RESOURCE = "prices.json"
_TOKENS_PER_UNIT = Decimal(1_000_000)
_COST_QUANTUM = Decimal("1e-10")
_PRICE_FIELDS = ("input", "cached_input", "output")
_ALLOWED_FIELDS = frozenset((*_PRICE_FIELDS, "currency", "as_of"))

_default_lock = threading.Lock()
_default_table: PriceTable | None = None


@dataclass(frozen=True)
class Price:
    """The price of one model, per 1M tokens.

    :param input: price of an uncached prompt token, per 1M tokens.
    :param cached_input: price of a prompt token served from the context cache, per 1M tokens.
    :param output: price of a completion token (reasoning included), per 1M tokens.
    :param currency: ISO currency code, e.g. ``USD`` or ``CNY``.
    :param as_of: ISO date the price was captured, or ``None`` for an undated override.
    """

    input: Decimal
    cached_input: Decimal
    output: Decimal
    currency: str
    as_of: str | None


def _normalize_model(model: str) -> str:
    return model.strip().lower()


def _to_decimal(model: str, field: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise ValueError(f"price of model {model!r}: field {field!r} must be a decimal number, got {value!r}")
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(
            f"price of model {model!r}: field {field!r} must be a decimal number, got {value!r}"
        ) from None
    if not number.is_finite() or number < 0:
        raise ValueError(
            f"price of model {model!r}: field {field!r} must be a finite number >= 0, got {value!r}"
        )
    return number


def _to_text(model: str, field: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"price of model {model!r}: field {field!r} must be a non-empty string, got {value!r}"
        )
    return value.strip()


def _merge_price(model: str, base: Price | None, spec: Any, default_as_of: str | None) -> Price:
    """Build a price from a (full or partial) mapping, on top of ``base`` when the model is known."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"price of model {model!r} must be a mapping of fields, got {spec!r}")
    unknown = sorted(str(key) for key in spec if key not in _ALLOWED_FIELDS)
    if unknown:
        raise ValueError(
            f"price of model {model!r}: unknown field(s) {unknown}; allowed: {sorted(_ALLOWED_FIELDS)}"
        )
    amounts = {name: _to_decimal(model, name, spec[name]) for name in _PRICE_FIELDS if name in spec}
    currency = _to_text(model, "currency", spec["currency"]) if "currency" in spec else None
    as_of = _to_text(model, "as_of", spec["as_of"]) if "as_of" in spec else default_as_of
    if base is not None:
        return replace(base, **amounts, currency=currency or base.currency, as_of=as_of)
    missing = [name for name in ("input", "output") if name not in amounts]
    if missing:
        raise ValueError(
            f"price of new model {model!r}: missing field(s) {missing} (input and output are required)"
        )
    return Price(
        input=amounts["input"],
        cached_input=amounts.get("cached_input", amounts["input"]),
        output=amounts["output"],
        currency=(currency or "USD").upper(),
        as_of=as_of,
    )


class PriceTable:
    """An immutable mapping of model name (lower-cased) to :class:`Price`.

    :param prices: prices keyed by model name; names are stripped and lower-cased.
    :param as_of: ISO date of the table as a whole, when known.
    :param source: where the prices were taken from.
    """

    def __init__(
        self, prices: Mapping[str, Price], as_of: str | None = None, source: str | None = None
    ) -> None:
        normalized: dict[str, Price] = {}
        for model, price in prices.items():
            key = _normalize_model(model) if isinstance(model, str) else ""
            if not key:
                raise ValueError(f"model name must be a non-empty string, got {model!r}")
            if not isinstance(price, Price):
                raise ValueError(f"price of model {model!r} must be a Price, got {price!r}")
            normalized[key] = price
        self._prices: Mapping[str, Price] = MappingProxyType(normalized)
        self.as_of = as_of
        self.source = source

    @classmethod
    def from_json(cls, text: str) -> PriceTable:
        """Parse a table in the format of the packaged ``prices.json``.

        :param text: JSON with ``as_of``, ``source`` and ``models`` (model -> full price mapping).
        """
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"price table is not valid JSON: {exc}") from None
        if not isinstance(document, dict) or not isinstance(document.get("models"), dict):
            raise ValueError("price table must be a JSON object with a 'models' object")
        as_of = document.get("as_of")
        source = document.get("source")
        prices: dict[str, Price] = {}
        for model, spec in document["models"].items():
            if isinstance(spec, Mapping) and "currency" not in spec:
                raise ValueError(f"price of model {model!r}: field 'currency' is required in a price table")
            prices[model] = _merge_price(model, None, spec, as_of if isinstance(as_of, str) else None)
        return cls(prices, as_of=as_of if isinstance(as_of, str) else None, source=source)

    @classmethod
    def default(cls) -> PriceTable:
        """The packaged price table, loaded on first use and shared afterwards."""
        global _default_table
        table = _default_table
        if table is None:
            with _default_lock:
                if _default_table is None:
                    package = __name__.rpartition(".")[0]
                    text = files(package).joinpath(_PRICES_RESOURCE).read_text(encoding="utf-8")
                    _default_table = cls.from_json(text)
                table = _default_table
        return table

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]] | None) -> PriceTable:
        """A new table with some prices replaced or added; this table is unchanged.

        An entry for a known model may be partial (``{"glm-4.5": {"input": "0.5"}}`` keeps the other
        fields); a new model needs ``input`` and ``output`` (``cached_input`` defaults to ``input``,
        ``currency`` to ``USD``). Overridden entries are undated unless they give ``as_of``.

        :param overrides: model name -> fields among input, cached_input, output, currency, as_of.
        """
        if not overrides:
            return self
        if not isinstance(overrides, Mapping):
            raise ValueError(f"price overrides must be a mapping of model -> fields, got {overrides!r}")
        prices = dict(self._prices)
        for model, spec in overrides.items():
            key = _normalize_model(model) if isinstance(model, str) else ""
            if not key:
                raise ValueError(f"price overrides: model name must be a non-empty string, got {model!r}")
            prices[key] = _merge_price(key, prices.get(key), spec, None)
        return PriceTable(prices, as_of=self.as_of, source=self.source)

    def lookup(self, model: str | None) -> Price | None:
        """The price of ``model`` (case-insensitive, surrounding whitespace ignored), or ``None``.

        :param model: the model name as sent or as answered by the API.
        """
        if not isinstance(model, str):
            return None
        return self._prices.get(_normalize_model(model))

    def models(self) -> tuple[str, ...]:
        """The (lower-cased) model names in the table, sorted."""
        return tuple(sorted(self._prices))

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and _normalize_model(model) in self._prices

    def __iter__(self) -> Iterator[str]:
        return iter(self.models())

    def __len__(self) -> int:
        return len(self._prices)

    def __repr__(self) -> str:
        return f"PriceTable(models={len(self._prices)}, as_of={self.as_of!r})"


def _check_tokens(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def compute_cost(
    price: Price | None,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    discount: Decimal = Decimal(1),
) -> Decimal | None:
    """The cost of one response in the price's currency, quantized to 10 decimal places.

    ``((prompt - cached) * input + cached * cached_input + completion * output) / 1M * discount``;
    cached tokens beyond the prompt are clamped to the prompt.

    :param price: the model's price, or ``None`` when unknown (the cost is then ``None``, never 0).
    :param prompt_tokens: prompt tokens billed, cached ones included.
    :param completion_tokens: completion tokens billed, reasoning included.
    :param cached_tokens: prompt tokens served from the context cache.
    :param discount: multiplier on the list price, e.g. :data:`BATCH_DISCOUNT` for batch requests.
    """
    prompt = _check_tokens("prompt_tokens", prompt_tokens)
    completion = _check_tokens("completion_tokens", completion_tokens)
    cached = min(_check_tokens("cached_tokens", cached_tokens), prompt)
    if isinstance(discount, bool) or not isinstance(discount, Decimal | int | float | str):
        raise ValueError(f"discount must be a decimal number >= 0, got {discount!r}")
    try:
        factor = discount if isinstance(discount, Decimal) else Decimal(str(discount))
    except InvalidOperation:
        raise ValueError(f"discount must be a decimal number >= 0, got {discount!r}") from None
    if not factor.is_finite() or factor < 0:
        raise ValueError(f"discount must be a decimal number >= 0, got {discount!r}")
    if price is None:
        return None
    total = (prompt - cached) * price.input + cached * price.cached_input + completion * price.output
    return (total / _TOKENS_PER_UNIT * factor).quantize(_COST_QUANTUM, rounding=ROUND_HALF_EVEN)
