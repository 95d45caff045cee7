"""Token prices per model (dated, overridable data) and the cost of one response.

The packaged table ``prices.json`` holds list prices per 1M tokens as decimal strings. Costs are
computed in :class:`~decimal.Decimal`; an unknown model has an unknown cost (``None``), never 0.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from importlib.resources import files
from types import MappingProxyType
from typing import Any

__all__ = ["BATCH_DISCOUNT", "DEFAULT_OUTPUT_LIMIT", "Price", "PriceTable", "Pricer", "compute_cost"]

BATCH_DISCOUNT = Decimal("0.5")
"""Multiplier for batch requests (50% of the online price)."""

_PRICES_RESOURCE = "prices.json"
_TOKENS_PER_UNIT = Decimal(1_000_000)
_COST_QUANTUM = Decimal("1e-10")
_PRICE_FIELDS = ("input", "cached_input", "output")
_ALLOWED_FIELDS = frozenset((*_PRICE_FIELDS, "currency", "as_of", "max_output_tokens"))
DEFAULT_OUTPUT_LIMIT = 131_072
"""The longest answer assumed for a model without a known ``max_output_tokens``."""

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
    :param max_output_tokens: the longest answer the model gives (``None``: the table's default).
    """

    input: Decimal
    cached_input: Decimal
    output: Decimal
    currency: str
    as_of: str | None
    max_output_tokens: int | None = None


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
    limit = _to_limit(model, spec["max_output_tokens"]) if "max_output_tokens" in spec else None
    if base is not None:
        return replace(base, **amounts, currency=currency or base.currency, as_of=as_of,
                       max_output_tokens=limit or base.max_output_tokens)
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
        max_output_tokens=limit,
    )


def _to_limit(model: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"price of model {model!r}: 'max_output_tokens' must be a positive integer, got {value!r}")
    return value


class PriceTable:
    """An immutable mapping of model name (lower-cased) to :class:`Price`.

    :param prices: prices keyed by model name; names are stripped and lower-cased.
    :param as_of: ISO date of the table as a whole, when known.
    :param source: where the prices were taken from.
    """

    def __init__(
        self, prices: Mapping[str, Price], as_of: str | None = None, source: str | None = None,
        default_output_limit: int = DEFAULT_OUTPUT_LIMIT,
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
        self.default_output_limit = default_output_limit

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
        limits = document.get("output_limits") or {}
        prices: dict[str, Price] = {}
        for model, spec in document["models"].items():
            if isinstance(spec, Mapping) and "currency" not in spec:
                raise ValueError(f"price of model {model!r}: field 'currency' is required in a price table")
            price = _merge_price(model, None, spec, as_of if isinstance(as_of, str) else None)
            if model in limits and price.max_output_tokens is None:
                price = replace(price, max_output_tokens=_to_limit(model, limits[model]))
            prices[model] = price
        default_limit = _to_limit("default", limits.get("default", DEFAULT_OUTPUT_LIMIT))
        return cls(prices, as_of=as_of if isinstance(as_of, str) else None, source=source,
                   default_output_limit=default_limit)

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
        return PriceTable(prices, as_of=self.as_of, source=self.source,
                          default_output_limit=self.default_output_limit)

    def lookup(self, model: str | None) -> Price | None:
        """The price of ``model`` (case-insensitive, surrounding whitespace ignored), or ``None``.

        :param model: the model name as sent or as answered by the API.
        """
        if not isinstance(model, str):
            return None
        return self._prices.get(_normalize_model(model))

    def output_limit(self, model: str | None) -> int:
        """The longest answer ``model`` can give: its ``max_output_tokens``, else the table's default."""
        price = self.lookup(model)
        return price.max_output_tokens if price and price.max_output_tokens else self.default_output_limit

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


class Pricer:
    """Prices one run's calls: answers whose usage came back, and the bound of attempts whose usage did not.

    :param table: the price table (packaged, then the connection's and the task's overrides).
    :param model: the model the run asks for; its price applies when an answer names an unpriced model.
    :param discount: multiplier on the list price (:data:`BATCH_DISCOUNT` for batch requests).
    :param log: receives one warning per model without a price, the first time it is needed.
    """

    def __init__(self, table: PriceTable, model: str, discount: Decimal = Decimal(1),
                 log: logging.Logger | Any = None) -> None:
        self.table = table
        self.model = model
        self.discount = discount
        self.log = log or logging.getLogger(__name__)
        self._warned: set[str] = set()

    def cost(self, answered_model: str | None, prompt: int, completion: int,
             cached: int = 0) -> tuple[Decimal | None, str | None]:
        """Cost and currency of one answer, priced by the model it names, else by the model asked for."""
        price = self.table.lookup(answered_model) or self.table.lookup(self.model)
        if price is None:
            self._warn(answered_model or self.model)
            return None, None
        return compute_cost(price, prompt, completion, cached, self.discount), price.currency

    def bound(self, prompt_bound: int, max_tokens: int | None, attempts: int = 1) -> tuple[int, Decimal | None]:
        """Upper bound of the tokens and cost of ``attempts`` attempts of one request whose usage never came back.

        :param prompt_bound: upper bound of the request's prompt tokens.
        :param max_tokens: the request's ``max_tokens``; ``None`` uses the model's output limit.
        :param attempts: how many attempts may have been billed.
        """
        if attempts <= 0:
            return 0, None
        output = max_tokens or self.table.output_limit(self.model)
        price = self.table.lookup(self.model)
        if price is None:
            self._warn(self.model)
            cost = None
        else:
            cost = compute_cost(price, attempts * prompt_bound, attempts * output, 0, self.discount)
        return attempts * (prompt_bound + output), cost

    @property
    def currency(self) -> str | None:
        """The currency of the asked model's price (``None`` when it has none)."""
        price = self.table.lookup(self.model)
        return price.currency if price else None

    def _warn(self, model: str) -> None:
        if model.lower() in self._warned:
            return
        self._warned.add(model.lower())
        self.log.warning(
            "Model %r has no price in the price table (as of %s): its cost is recorded as unknown (NULL). "
            "Add it with the task's `prices` or the connection's `prices` extra; see docs/connections.md#prices.",
            model, self.table.as_of,
        )
