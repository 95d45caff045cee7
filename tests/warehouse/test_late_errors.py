"""A row that cannot be rendered, deep inside a streamed ``source_sql``: found only when its chunk is read,
it stops the run there. Nothing after it is sent, and everything sent before it is recorded; the same rows
given as ``rows=`` are refused before the first call."""

from __future__ import annotations

import re
from typing import Any

import pytest
from _databases import BACKENDS
from _nightly import Nightly

from airflow_provider_glm.operators.chat import GLMChatOperator

ROWS = 60
BAD = 37
PRICED = "Product: {{ row.product }}\nReview: {{ row.body }}\nPrice: {{ '%.2f' | format(row.price) }}"


def review_ids(server: Any) -> list[int]:
    found = (re.search(r"Review (\d+):", r.body["messages"][-1]["content"]) for r in server.requests)
    return sorted(int(m.group(1)) for m in found if m)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("prompt", "error"), [
    (PRICED, r"row '37': messages\[0\]: TypeError: must be real number, not NoneType"),
    ("{{ row.body }}{{ '' if row.price else row.price.cents }}", r"row '37': messages\[0\]: 'None' has no attribute"),
], ids=["filter-fails-on-null", "undefined-on-null"])
def test_a_template_error_in_a_late_chunk_costs_nothing_after_it(glm_conn: Any, nightly: Nightly, prompt: str,
                                                                 error: str) -> None:
    """Row 37's price is NULL: ``format`` fails on it, or the template reads an attribute it lacks."""
    nightly.seed(ROWS)
    nightly.set_price(BAD, None)
    with pytest.raises(ValueError, match=error):
        nightly.night("n1", prompt=prompt, source_chunk_size=10, max_concurrency=2)

    sent = review_ids(glm_conn)
    assert sent, "the rows of the earlier chunks were sent"
    assert max(sent) < BAD, "no row at or after the bad one was sent"
    results = nightly.results("n1")
    assert max(int(k) for k in results) < 40, "nothing past the bad row's chunk was read"
    ok = sorted(int(k) for k, r in results.items() if r["status"] == "ok")
    assert ok == sent, "every answer paid for is recorded"
    assert len(nightly.ledger()) == glm_conn.stats.billed_responses == len(sent)
    for row in results.values():
        if row["status"] != "ok":
            assert row["status"] == "skipped"
            assert row["error"].startswith(f"not sent: source_sql row {BAD + 1}: row '37'")

    # Fixed at the source, the next try goes on from where it stopped: nothing already answered is paid again.
    nightly.set_price(BAD, 2.0)
    before = glm_conn.stats.requests
    nightly.night("n1", prompt=prompt, source_chunk_size=10, max_concurrency=2)
    assert glm_conn.stats.requests - before == ROWS - len(sent)
    assert {r["status"] for r in nightly.results("n1").values()} == {"ok"}


def test_the_same_rows_as_a_list_are_refused_before_any_call(glm_conn: Any, context: dict[str, Any],
                                                            tmp_path: Any) -> None:
    rows = [{"id": i, "product": "P", "body": f"Review {i}", "price": None if i == BAD else 1.0} for i in range(ROWS)]
    op = GLMChatOperator(task_id="glm", rows=rows, row_key="id", prompt=PRICED,
                         sqlalchemy_url=f"sqlite:///{tmp_path / 'w.db'}")
    with pytest.raises(ValueError, match="row '37'.*TypeError: must be real number"):
        op.execute(context)
    assert glm_conn.stats.requests == 0
