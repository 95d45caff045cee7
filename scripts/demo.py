"""The main job, offline: nightly summaries of warehouse rows, then the token-spend report.

``make demo`` runs this. It prepares a private Airflow home under ``.airflow/``, seeds an embedded
SQLite warehouse with product reviews, starts the local GLM-compatible server (no key needed),
runs the ``glm_nightly_summary`` and ``glm_spend_report`` DAGs with ``airflow dags test``, and
prints the summaries and the spend table. With ``AIRFLOW_CONN_GLM_DEFAULT`` already set to a real
connection, the same DAGs call the real API instead (and bill it).
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
        print("Running glm_nightly_summary ...", flush=True)
        run([AIRFLOW, "dags", "test", "glm_nightly_summary"], env, logs / "glm_nightly_summary.log")
        print("Running glm_spend_report ...", flush=True)
        run([AIRFLOW, "dags", "test", "glm_spend_report"], env, logs / "glm_spend_report.log")
    finally:
        if server is not None:
            server.stop()
    report(warehouse, server)


def report(warehouse: Path, server: object | None) -> None:
    from airflow_provider_glm.sinks.sql import SQLSink

    sink = SQLSink.from_url(f"sqlite:///{warehouse}", results_table="review_summaries")
    results = sink.results()
    by_status: dict[str, int] = {}
    for row in results:
        by_status[row["status"]] = by_status.get(row["status"], 0) + 1
    print(f"\nSummaries in review_summaries: {len(results)} rows {by_status}")
    for row in sorted(results, key=lambda r: int(r["row_key"]))[:5]:
        print(f"  review {row['row_key']:>4}: {' '.join(row['content'].split())[:110]}")
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
