"""The run's spend as the summary, the runs table and the log line show it: a night that asked nothing
cost 0 (not "unknown"), and a sum that leaves out unpriced calls says so instead of passing for the whole."""

from __future__ import annotations

from decimal import Decimal

from airflow_provider_glm.rows._records import RunScope, UsageRecord
from airflow_provider_glm.rows._state import Spend

SCOPE = RunScope(dag_id="d", task_id="t", run_id="r", map_index=-1)


def _usage(model: str, tokens: int, cost: str | None) -> UsageRecord:
    return UsageRecord(scope=SCOPE, response_id=f"{model}-{tokens}", request_id=None, try_number=1, row_key=None,
                       model=model, prompt_tokens=tokens, completion_tokens=0, total_tokens=tokens,
                       cost=None if cost is None else Decimal(cost), currency=None if cost is None else "USD")


def test_nothing_spent_costs_zero_not_unknown() -> None:
    spend = Spend()
    assert spend.as_dict()["cost"] == 0.0
    assert spend.cost_text() == "0"


def test_only_unpriced_calls_cost_unknown() -> None:
    spend = Spend()
    spend.add(_usage("glm-new", 10, None))
    assert spend.as_dict()["cost"] is None
    assert spend.as_dict()["unpriced_calls"] == 1
    assert spend.cost_text() == "unknown"


def test_a_partial_sum_names_the_calls_it_leaves_out() -> None:
    spend = Spend()
    spend.add(_usage("glm-4.5", 10, "0.5"))
    spend.add(_usage("glm-new", 20, None))
    spend.add(_usage("glm-new", 30, None))
    assert spend.as_dict()["cost"] == 0.5
    assert spend.cost_text() == "0.500000 USD (+2 calls without a price)"
    both = spend.plus(spend)
    assert both.unpriced_calls == 4
    assert both.cost == Decimal("1.0")
