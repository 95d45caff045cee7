"""A deterministic synthetic ledger, results and runs tables for the spend page's tests.

Created with the schema's own ``*_table_def`` functions and SQLAlchemy Core inserts (not the sink's
writer). The data spreads over the last 45 UTC days, three DAGs, three models and two currencies,
with unpriced calls, possibly billed (``unknown``) entries, reused and failed results and budgets,
so every section of the page has something to show and the default 30-day period leaves some out.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from airflow_provider_glm.sinks.sql._tables import results_table_def, runs_table_def, usage_table_def

DAGS = {
    "glm_nightly_summary": ("summarize_reviews", "headline"),
    "glm_enrichment": ("classify_tickets",),
    "glm_secret_costs": ("expensive_task",),
}
MODELS = {"glm-4.5": ("USD", Decimal("0.0000004")), "glm-4.5-air": ("USD", Decimal("0.0000001")),
          "glm-4.6": ("CNY", Decimal("0.000002")), "my-finetune": (None, None)}


@dataclass(frozen=True)
class SeededTables:
    """The names of the three seeded tables."""

    usage: str
    results: str
    runs: str

    def drop(self, engine: sa.Engine) -> None:
        """Drop the three tables."""
        with engine.begin() as conn:
            for name in (self.usage, self.results, self.runs):
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))


def unique_names(prefix: str = "spend") -> SeededTables:
    """Fresh table names, so tests on a shared server never collide."""
    suffix = uuid.uuid4().hex[:10]
    return SeededTables(f"{prefix}_usage_{suffix}", f"{prefix}_results_{suffix}", f"{prefix}_runs_{suffix}")


def seed(engine: sa.Engine, names: SeededTables, *, now: dt.datetime, runs_per_day: int = 2,
         rows_per_run: int = 6, seed_value: int = 13) -> dict[str, int]:
    """Create the tables and fill them; return how many rows went into each.

    :param now: the "current" time; entries are spread over the 45 UTC days before it.
    """
    rng = random.Random(seed_value)
    metadata = sa.MetaData()
    usage = usage_table_def(metadata, None, names.usage)
    results = results_table_def(metadata, None, names.results)
    runs = runs_table_def(metadata, None, names.runs)
    metadata.create_all(engine)
    ledger: list[dict[str, Any]] = []
    outcomes: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    today = now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for back in range(45):
        day = today - dt.timedelta(days=back)
        for n in range(runs_per_day):
            for dag_id, tasks in DAGS.items():
                run_id = f"scheduled__{day:%Y-%m-%d}T{n:02d}:00:00+00:00"
                started = day + dt.timedelta(hours=n * 6 + 1, minutes=rng.randrange(50))
                if started >= now:
                    continue
                for task_id in tasks:
                    model = rng.choice(list(MODELS))
                    currency, price = MODELS[model]
                    run_cost = Decimal(0)
                    run_tokens = 0
                    counts = dict.fromkeys(("ok", "failed", "filtered", "reused"), 0)
                    for row in range(rows_per_run):
                        row_key = f"r{row}"
                        created = started + dt.timedelta(seconds=10 * row + rng.randrange(9))
                        status = rng.choices(("ok", "failed", "filtered"), weights=(8, 1, 1))[0]
                        reused = status == "ok" and rng.random() < 0.15
                        counts[status] += 1
                        counts["reused"] += reused
                        scope = [dag_id, task_id, run_id, -1, row_key]
                        outcomes.append({
                            "result_key": hashlib.sha256(repr(scope).encode()).hexdigest(),
                            "dag_id": dag_id, "task_id": task_id, "run_id": run_id, "map_index": -1,
                            "try_number": 1, "row_key": row_key, "status": status, "model": model,
                            "reused_from_run_id": "scheduled__earlier" if reused else None,
                            "updated_at": created,
                        })
                        if reused:
                            continue
                        unknown = status == "failed" and rng.random() < 0.5
                        prompt, completion = rng.randrange(50, 900), rng.randrange(5, 300)
                        cost = None if price is None or unknown else (prompt + 4 * completion) * price
                        if cost is not None:
                            run_cost += cost
                        run_tokens += 0 if unknown else prompt + completion
                        ledger.append({
                            "response_id": f"resp-{uuid.UUID(int=rng.getrandbits(128)).hex}",
                            "dag_id": dag_id, "task_id": task_id, "run_id": run_id, "map_index": -1,
                            "try_number": 1, "row_key": row_key, "model": model,
                            "billing": "unknown" if unknown else "known",
                            "prompt_tokens": 0 if unknown else prompt,
                            "completion_tokens": 0 if unknown else completion,
                            "total_tokens": 0 if unknown else prompt + completion,
                            "cached_tokens": 0, "reasoning_tokens": 0,
                            "cost": cost, "currency": currency, "latency_ms": rng.randrange(200, 4000),
                            "attempts": 2 if unknown else 1,
                            "unknown_billing_attempts": 2 if unknown else 0,
                            "unknown_tokens_max": 2 * (prompt + 1024) if unknown else 0,
                            "unknown_cost_max": (2 * (prompt + 4 * 1024) * price) if unknown and price else None,
                            "created_at": created,
                        })
                    budget = Decimal("0.002") if task_id in ("summarize_reviews", "expensive_task") else None
                    summaries.append({
                        "run_key": hashlib.sha256(f"{dag_id}/{task_id}/{run_id}".encode()).hexdigest(),
                        "dag_id": dag_id, "task_id": task_id, "run_id": run_id, "map_index": -1, "try_number": 1,
                        "operator": "GLMChatOperator", "api": "online", "model": model,
                        "rows": rows_per_run, "ok": counts["ok"], "failed": counts["failed"],
                        "filtered": counts["filtered"], "reused": counts["reused"], "total_tokens": run_tokens,
                        "cost": run_cost if price is not None else None, "currency": currency,
                        "max_cost": budget, "stop_kind": "budget" if budget and run_cost > budget else None,
                        "state": "success", "started_at": started,
                        "ended_at": started + dt.timedelta(minutes=2),
                    })
    with engine.begin() as conn:
        for table, rows in ((usage, ledger), (results, outcomes), (runs, summaries)):
            for start in range(0, len(rows), 500):
                conn.execute(sa.insert(table), rows[start:start + 500])
    return {"usage": len(ledger), "results": len(outcomes), "runs": len(summaries)}
