"""The spend-truth invariants every fault test checks against the GLM test server's own tally.

The ledger holds ``billing='known'`` rows (an answer and its usage came back) and possibly billed
attempts (``unknown_billing_attempts``, bounded by ``unknown_tokens_max``). Whatever the fault:

* every known row is a response the server billed, with exactly its tokens, and none is there twice;
* known rows plus possibly billed attempts cover every response the server billed, except answers
  lost by design where no client can know (a SIGKILL, an answer arriving after the task ended):
  at most ``lost_allowed`` of those;
* known tokens <= billed tokens <= known tokens + the bound of the possibly billed ones (+ the
  tokens of those lost by design).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_provider_glm.testing import GLMTestServer


def check_ledger(usage: Sequence[dict[str, Any]], srv: GLMTestServer, *, lost_allowed: int = 0) -> set[str]:
    """Assert the invariants; return the billed response ids that are not in the ledger as known rows."""
    billed = {b.response_id: b for b in srv.billed}
    known = [u for u in usage if u["billing"] == "known"]
    ids = [u["response_id"] for u in known]
    assert len(ids) == len(set(ids)), "a billed answer is in the ledger twice"
    assert set(ids) <= set(billed), "the ledger holds an answer the server never billed"
    for u in known:
        b = billed[u["response_id"]]
        assert (u["prompt_tokens"], u["completion_tokens"], u["total_tokens"]) == (
            b.prompt_tokens, b.completion_tokens, b.total_tokens)
    missing = set(billed) - set(ids)
    possibly = sum(u["unknown_billing_attempts"] for u in usage)
    assert len(missing) <= possibly + lost_allowed, (
        f"{len(missing)} billed answers are not in the ledger, which shows only {possibly} possibly billed attempts")
    known_tokens = sum(u["total_tokens"] for u in known)
    bound = sum(u["unknown_tokens_max"] for u in usage)
    by_design = sorted((billed[i].total_tokens for i in missing), reverse=True)[:lost_allowed]
    stats = srv.stats
    assert known_tokens <= stats.billed_total_tokens <= known_tokens + bound + sum(by_design)
    if not missing:
        assert known_tokens == stats.billed_total_tokens
        assert sum(u["prompt_tokens"] for u in known) == stats.billed_prompt_tokens
        assert sum(u["completion_tokens"] for u in known) == stats.billed_completion_tokens
    return missing
