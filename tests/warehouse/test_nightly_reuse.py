"""The nightly job at real size, on SQLite, PostgreSQL and MariaDB: 2,000 rows streamed from SQL, a
second night that asks nothing, a third that asks only what changed.

Counts come from the test server (``stats``: every request it read, every completion it billed) and
from the tables, never from the operator's own report alone.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import Any

import pytest
from _databases import BACKENDS
from _nightly import Nightly

from airflow_provider_glm.rows._rendering import RequestBuilder

NIGHT_1 = ("scheduled__2026-11-28T00:00:00+00:00", dt.datetime(2026, 11, 28, tzinfo=dt.UTC))
NIGHT_2 = ("scheduled__2026-11-29T00:00:00+00:00", dt.datetime(2026, 11, 29, tzinfo=dt.UTC))
NIGHT_3 = ("manual__2026-11-30T09:12:00+00:00", dt.datetime(2026, 11, 30, 9, 12, tzinfo=dt.UTC))
ROWS = 2000
CHUNK = 300
EDITED = sorted({(i * 79) % ROWS for i in range(25)})


@pytest.mark.parametrize("backend", BACKENDS)
def test_2000_rows_streamed_then_reused_then_only_the_changed_ones_asked(
    glm_conn: Any, nightly: Nightly, monkeypatch: pytest.MonkeyPatch
) -> None:
    nightly.seed(ROWS)
    # When the last row is rendered, how many requests has the server already read? With a streamed source
    # the answer is "most of them": the producer reads a chunk only once the bounded queue has room.
    seen_at_last_row: list[int] = []
    build = RequestBuilder.build

    def spy(self: RequestBuilder, row: Any) -> Any:
        if row.key == str(ROWS - 1):
            seen_at_last_row.append(glm_conn.stats.requests)
        return build(self, row)

    monkeypatch.setattr(RequestBuilder, "build", spy)

    # Night 1: every row asked once, every answer stored with the night's logical date.
    first = nightly.night(*NIGHT_1, source_chunk_size=CHUNK, max_concurrency=16)
    assert glm_conn.stats.requests == glm_conn.stats.billed_responses == ROWS
    assert len(seen_at_last_row) == 1
    assert seen_at_last_row[0] >= ROWS - CHUNK - 64 - 16, "rows were read ahead of sending: not streamed"
    results = nightly.results(NIGHT_1[0])
    assert len(results) == ROWS
    assert {r["status"] for r in results.values()} == {"ok"}
    for key, row in results.items():
        assert row["content"] == nightly.content_of(key), f"row {key} holds another row's answer"
        assert row["reused_from_run_id"] is None
        assert row["logical_date"] == NIGHT_1[1]
    # the fingerprint is of the body as built: without the request_id stamped on each attempt
    sent = {hashlib.sha256(re.sub(rb'^\{"request_id":"glm-[0-9a-f]{32}",', b"{", r.raw_body)).hexdigest()
            for r in glm_conn.requests}
    assert {r["fingerprint"] for r in results.values()} == sent, "fingerprint = SHA-256 of the body sent"
    ledger = nightly.ledger()
    assert len(ledger) == ROWS
    assert sum(u["total_tokens"] for u in ledger) == glm_conn.stats.billed_total_tokens
    assert {u["logical_date"] for u in ledger} == {NIGHT_1[1]}
    summary = first["ti"].xcom["usage"]
    assert (summary["rows"], summary["ok"], summary["reused"]) == (ROWS, ROWS, 0)
    assert first["ti"].return_value["rows"] == ROWS, "2,000 values exceed max_xcom_rows: a summary is returned"

    # Night 2, nothing changed: no request, no ledger row, and every row of the new run holds its answer.
    second = nightly.night(*NIGHT_2, source_chunk_size=CHUNK, max_concurrency=16)
    assert glm_conn.stats.requests == ROWS, "the second night asked again"
    assert len(nightly.ledger()) == ROWS, "the second night added ledger rows"
    reused = nightly.results(NIGHT_2[0])
    assert len(reused) == ROWS
    for key, row in reused.items():
        assert (row["status"], row["reused_from_run_id"]) == ("ok", NIGHT_1[0])
        assert row["content"] == results[key]["content"]
        assert row["fingerprint"] == results[key]["fingerprint"]
        assert row["logical_date"] == NIGHT_2[1]
    summary = second["ti"].xcom["usage"]
    assert (summary["ok"], summary["reused"], summary["total_tokens"], summary["cost"]) == (ROWS, ROWS, 0, 0.0)
    (run,) = nightly.runs(NIGHT_2[0])
    assert (run["reused"], run["total_tokens"], run["cost"], run["logical_date"]) == (ROWS, 0, 0, NIGHT_2[1])

    # Night 3: 25 reviews edited, so exactly 25 requests; the others still come from night 1's answers.
    nightly.edit(EDITED)
    nightly.night(*NIGHT_3, source_chunk_size=CHUNK, max_concurrency=16)
    assert glm_conn.stats.requests == ROWS + 25
    asked = [re.search(r"Review (\d+):", r.body["messages"][-1]["content"]) for r in glm_conn.requests[ROWS:]]
    assert sorted(int(m.group(1)) for m in asked if m) == EDITED
    assert len(nightly.ledger()) == ROWS + 25
    third = nightly.results(NIGHT_3[0])
    edited = {str(i) for i in EDITED}
    assert {k for k, r in third.items() if r["reused_from_run_id"] is None} == edited
    assert {r["reused_from_run_id"] for k, r in third.items() if k not in edited} == {NIGHT_1[0]}, \
        "a reused answer names the run that paid for it, not the run it was copied from"
    for key in edited:
        assert third[key]["content"] == nightly.content_of(key)
        assert third[key]["content"].endswith("(edited)")
        assert third[key]["fingerprint"] != results[key]["fingerprint"]
