"""The main job, offline: three nights of warehouse summaries, then the token-spend report.

``make demo`` runs this. It prepares a private Airflow home under ``.airflow/``, seeds an embedded
SQLite warehouse with product reviews, starts the local GLM-compatible server (no key needed) and
runs ``glm_nightly_summary`` with ``airflow dags test`` for three nights: the first asks every
review, the second reuses every answer (no request, no cost), and after a few reviews change, the
third asks only those. Then it runs ``glm_spend_report`` and prints the answers and the spend table.
With ``AIRFLOW_CONN_GLM_DEFAULT`` already set to a real connection, the same DAGs call the real API
instead (and bill it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOME = REPO / ".airflow"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
PRODUCTS = ["kettle", "headphones", "desk lamp", "backpack", "coffee grinder", "rain jacket"]
OPINIONS = [
    "Works exactly as described and arrived a day early.",
    "Stopped working after two weeks; support replaced it quickly.",
    "Good value, but the instructions were confusing.",
    "Too loud for an open-plan office, otherwise fine.",
    "Beautiful design. The cable is far too short.",
    "Would buy again. My partner ordered a second one.",
]


def airflow_env(warehouse: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(HOME),
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        GLM_WAREHOUSE_URL=f"sqlite:///{warehouse}",
    )
    return env


def seed_warehouse(warehouse: Path, rows: int) -> None:
    import sqlalchemy as sa

    warehouse.unlink(missing_ok=True)
    rng = random.Random(7)
    engine = sa.create_engine(f"sqlite:///{warehouse}")
    with engine.begin() as conn:
        conn.execute(
            sa.text("CREATE TABLE reviews (id INTEGER PRIMARY KEY, product TEXT NOT NULL, body TEXT NOT NULL)")
        )
        conn.execute(
            sa.text("INSERT INTO reviews (id, product, body) VALUES (:id, :product, :body)"),
            [{"id": i, "product": rng.choice(PRODUCTS), "body": " ".join(rng.sample(OPINIONS, 2))}
             for i in range(1, rows + 1)],
        )
    engine.dispose()


def run(cmd: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("w") as out:
        done = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd[1:])} failed; its log is {log.relative_to(REPO)}")


NIGHTS = ("2026-11-28", "2026-11-29", "2026-11-30")
CHANGED = 5


def change_reviews(warehouse: Path, count: int) -> list[int]:
    """Edit ``count`` reviews, as a day of customer edits would."""
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{warehouse}")
    ids = list(range(3, 3 + 7 * count, 7))
    with engine.begin() as conn:
        for review_id in ids:
            conn.execute(sa.text("UPDATE reviews SET body = body || ' Update: still works after a month.' "
                                 "WHERE id = :id"), {"id": review_id})
    engine.dispose()
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=300, help="reviews to seed (default 300)")
    parser.add_argument("--latency", type=float, default=0.05, help="local server latency in seconds")
    args = parser.parse_args()

    HOME.mkdir(exist_ok=True)
    warehouse = HOME / "warehouse.db"
    env = airflow_env(warehouse)
    logs = HOME / "demo-logs"
    logs.mkdir(exist_ok=True)
    print("Preparing Airflow's metadata database in .airflow/ ...", flush=True)
    run([AIRFLOW, "db", "migrate"], env, logs / "db-migrate.log")
    seed_warehouse(warehouse, args.rows)
    print(f"Seeded {args.rows} reviews into .airflow/warehouse.db (table reviews).", flush=True)

    server = None
    if "AIRFLOW_CONN_GLM_DEFAULT" in os.environ:
        print("AIRFLOW_CONN_GLM_DEFAULT is set: using that connection (the real API bills this run).")
    else:
        from airflow_provider_glm.testing import GLMTestServer

        server = GLMTestServer(latency=args.latency).start()
        env["AIRFLOW_CONN_GLM_DEFAULT"] = json.dumps(
            {"conn_type": "glm", "password": server.api_key, "host": server.base_url, "extra": {"model": "glm-4.5"}}
        )
        print(f"Local GLM server at {server.base_url} ({args.latency * 1000:.0f} ms per answer).", flush=True)
    try:
        for number, night in enumerate(NIGHTS, start=1):
            if number == 3:
                ids = change_reviews(warehouse, CHANGED)
                print(f"Edited {len(ids)} reviews in the warehouse (ids {', '.join(map(str, ids))}).", flush=True)
            asked = server.stats.requests if server is not None else None
            print(f"Night {number} ({night}): running glm_nightly_summary ...", flush=True)
            run([AIRFLOW, "dags", "test", "glm_nightly_summary", night], env, logs / f"glm_nightly_summary-{night}.log")
            night_line(warehouse, night, None if server is None or asked is None else server.stats.requests - asked)
        print("Running glm_spend_report ...", flush=True)
        run([AIRFLOW, "dags", "test", "glm_spend_report"], env, logs / "glm_spend_report.log")
    finally:
        if server is not None:
            server.stop()
    report(warehouse, server)


def night_line(warehouse: Path, night: str, requests: int | None) -> None:
    """One line per night from the runs table: what was asked, what was reused, what it cost."""
    from airflow_provider_glm.sinks.sql import SQLSink

    sink = SQLSink.from_url(f"sqlite:///{warehouse}", results_table="review_summaries")
    try:
        run = next(r for r in reversed(sink.runs()) if str(r["logical_date"])[:10] == night)
    finally:
        sink.dispose()
    cost = ("unknown" if run["cost"] is None else "0" if not run["currency"]
            else f"{run['cost']:.6f} {run['currency']}")
    asked = f"{requests} requests" if requests is not None else "requests: see the ledger"
    print(f"  {run['rows']} rows: {run['ok']} ok ({run['reused']} reused), {run['failed']} failed; {asked}; "
          f"{run['total_tokens']} tokens; cost {cost}", flush=True)


def report(warehouse: Path, server: object | None) -> None:
    from airflow_provider_glm.sinks.sql import SQLSink
    sink = SQLSink.from_url(f"sqlite:///{warehouse}", results_table="review_summaries")
    import sqlalchemy as sa

    with sink.engine.connect() as conn:
        latest = conn.execute(sa.text("SELECT row_key, sentiment, summary, run_id, reused_from_run_id "
                                      "FROM review_summaries_latest ORDER BY CAST(row_key AS INTEGER) LIMIT 5")).all()
    print("\nThe current answer per review (review_summaries_latest, typed columns sentiment and summary):")
    for row in latest:
        print(f"  review {row.row_key:>4}: {row.sentiment:<8} {' '.join(str(row.summary).split())[:90]}")
    print("\nToken spend per day, DAG and model (glm_usage):")
    print(f"  {'day':<10}  {'dag_id':<22}  {'model':<10}  {'calls':>6}  {'tokens':>8}  {'cost':>14}")
    for r in sink.spend_report():
        cost = "unknown" if r["cost"] is None else f"{r['cost']:.6f} {r['currency']}"
        print(f"  {r['day']:<10}  {r['dag_id']:<22}  {r['model']:<10}  {r['calls']:>6}  "
              f"{r['total_tokens']:>8}  {cost:>14}")
    usage = sink.usage()
    if server is not None:
        stats = server.stats  # type: ignore[attr-defined]
        print(f"\nThe server billed {stats.billed_responses} responses / {stats.billed_total_tokens} tokens; "
              f"the ledger holds {len(usage)} / {sum(u['total_tokens'] for u in usage)}.")
    sink.dispose()
    print("Logs: .airflow/demo-logs/. Query the tables: sqlite3 .airflow/warehouse.db")


if __name__ == "__main__":
    main()
