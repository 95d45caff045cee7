"""Benchmarks of airflow-provider-glm: ``python -m benchmarks`` (``make bench``) writes docs/benchmarks.md.

Every measurement talks over loopback to the local GLM test server running as a separate process
(:mod:`benchmarks._server`), and every client under test runs in a fresh worker process
(:mod:`benchmarks._worker`), so neither shares a GIL or warm caches with the other or with the harness.

Sections, one module each:

1. :mod:`benchmarks.throughput` -- rows/s of row mode against the ideal ``C/L``, side by side with
   the official ``zai-sdk`` and with ``airflow dags test`` of a mapped DAG (``benchmarks/dags``).
2. :mod:`benchmarks.client_overhead` -- client CPU per call: ours (sync, async), ``zai-sdk``, ``openai``.
3. :mod:`benchmarks.parse_cost` -- import time of the operator module on top of ``airflow.sdk``.
4. :mod:`benchmarks.memory` -- peak RSS of the operator with the SQL sink at 10k and 100k rows, and of the
   nightly ``source_sql`` job at 5k, 50k and 500k rows of 1 KB.
5. :mod:`benchmarks.sink_write` -- ``SQLSink.write`` rows/s into SQLite, PostgreSQL and MariaDB.
6. :mod:`benchmarks.celery_scaling` -- 8 mapped tasks on the CeleryExecutor with two workers vs one
   task at the same total concurrency (the Celery test's harness; skipped in ``--quick`` mode).
7. :mod:`benchmarks.spend_page` -- the spend page's JSON endpoints and page on a 1M-row ledger in PostgreSQL.
"""

from __future__ import annotations

SECTIONS: dict[str, str] = {
    "throughput": "benchmarks.throughput",
    "client": "benchmarks.client_overhead",
    "parse": "benchmarks.parse_cost",
    "memory": "benchmarks.memory",
    "sink": "benchmarks.sink_write",
    "celery": "benchmarks.celery_scaling",
    "spend": "benchmarks.spend_page",
}
"""Section key -> module, in report order (``--sections`` also accepts 1..7)."""
