"""Build the sdist and wheel, check them, install the wheel into fresh virtualenvs and smoke-test it.

``python scripts/check_package.py`` (``make package-check``; ``.ci/run`` runs it after the tests):

1. builds the sdist and the wheel (``python -m build``) and checks their metadata (``twine check``);
2. installs the wheel alone into a fresh virtualenv with the newest supported Airflow and checks the
   installed package, not the source tree: the provider is listed by ``airflow providers list``, the
   example DAGs import, the price table and the spend page's templates are packaged, and the local
   GLM test server starts and answers its stats endpoint;
3. installs the wheel with its ``postgres`` and ``mysql`` extras into another fresh virtualenv and runs
   a ``sql_conn_id`` job on each database through an Airflow connection of that type (the extras
   bring the Airflow providers those connection types need); the PostgreSQL and MariaDB servers on
   127.0.0.1 must be up (``GLM_TEST_POSTGRES_CONN`` / ``GLM_TEST_MYSQL_CONN`` change the URLs);
4. with ``--oldest``, installs the wheel with its ``test`` extra and the oldest supported Airflow
   (``OLDEST_AIRFLOW``) into another fresh virtualenv and runs a smoke subset of the test suite
   against it (``pytest`` from that virtualenv, so the installed wheel is what is imported).

Everything is built under a temporary directory; nothing is left in the checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NEWEST_AIRFLOW = "3.3.2"
OLDEST_AIRFLOW = "3.1.8"
SMOKE_TESTS = [
    "tests/test_hook.py", "tests/test_client.py", "tests/test_provider_info.py", "tests/operators",
    "tests/sinks/test_sql_sink.py", "tests/dags/test_example_dags.py::test_enrichment_dag",
]
"""The oldest Airflow's subset: the hook, the client, both operators, the SQL sink on every database, one real
``airflow dags test``."""


def run(*command: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
        capture: bool = False) -> str:
    printable = " ".join(str(c) for c in command)
    print(f"$ {printable}", flush=True)
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, text=True,
                          capture_output=capture, check=False)
    if done.returncode != 0:
        if capture:
            print(done.stdout[-4000:], done.stderr[-4000:], sep="\n")
        sys.exit(f"failed ({done.returncode}): {printable}")
    return done.stdout if capture else ""


def venv(path: Path, *requirements: str | Path) -> Path:
    """A fresh virtualenv at ``path`` with ``requirements`` installed (uv, resolving from PyPI)."""
    run(sys.executable, "-m", "venv", path)
    python = path / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", "uv")
    run(path / "bin" / "uv", "pip", "install", "--quiet", "--python", python, *requirements)
    return python


def isolated_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GLM_", "PYTHON"))}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__UNIT_TEST_MODE="True")
    return env


def build(out: Path) -> tuple[Path, Path]:
    run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", out, REPO)
    wheel, sdist = next(out.glob("*.whl")), next(out.glob("*.tar.gz"))
    run(sys.executable, "-m", "twine", "check", "--strict", wheel, sdist)
    return wheel, sdist


def smoke_installed(python: Path, work: Path) -> None:
    """The wheel alone, installed: what a user gets from ``pip install``."""
    env = isolated_env(work / "home")
    listing = run(python.parent / "airflow", "providers", "list", env=env, capture=True, cwd=work)
    assert "airflow-provider-glm" in listing, f"the provider is not listed:\n{listing[-3000:]}"
    check = (
        "import runpy, sys, pathlib\n"
        "import airflow_provider_glm as p\n"
        "assert 'site-packages' in p.__file__, p.__file__\n"
        "from airflow_provider_glm.rows._pricing import PriceTable\n"
        "assert len(PriceTable.default()) > 10\n"
        "root = pathlib.Path(p.__file__).parent / 'plugins'\n"
        "assert any(root.glob('templates/*.html')), 'spend page templates missing'\n"
        f"sys.path.insert(0, {str(REPO / 'dags')!r})\n"
        f"for dag in sorted(pathlib.Path({str(REPO / 'dags')!r}).glob('glm_*.py')):\n"
        "    runpy.run_path(str(dag)); print('parsed', dag.name)\n"
    )
    run(python, "-c", check, env=env, cwd=work)
    server = subprocess.Popen([str(python), "-m", "airflow_provider_glm.testing", "--port", "0"], env=env, cwd=work,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().strip()
        root = base_url.split("/api/")[0]
        with urllib.request.urlopen(f"{root}/_stats", timeout=60) as answer:  # noqa: S310 - loopback only
            stats = json.load(answer)
        assert stats["requests"] == 0, stats
        print(f"local GLM server answered at {root}/_stats")
    finally:
        server.terminate()
        server.wait(60)


OLDEST_PINS = ["cryptography<51"]
"""What the oldest Airflow needs held back (its constraints file holds them too): Airflow 3.1.8 sets an attribute
on ``MultiFernet`` that cryptography 51 no longer allows, so every connection lookup fails."""


EXTRAS_JOB = """
import json, os, sys, uuid
import sqlalchemy as sa
from airflow_provider_glm.operators.chat import GLMChatOperator
from airflow_provider_glm.testing import GLMTestServer

backend, url = sys.argv[1], sys.argv[2]
table = f"extras_{uuid.uuid4().hex[:10]}"

class TI:
    dag_id, task_id, run_id, map_index, try_number = "extras", "job", "run-1", -1, 1
    def xcom_push(self, key, value):
        pass

with GLMTestServer() as server:
    os.environ["AIRFLOW_CONN_GLM_DEFAULT"] = json.dumps(
        {"conn_type": "glm", "password": server.api_key, "host": server.base_url})
    os.environ["AIRFLOW_CONN_WAREHOUSE"] = url
    op = GLMChatOperator(task_id="job", rows=[{"id": i, "text": f"row {i}"} for i in range(3)], row_key="id",
                         prompt="Summarize: {{ row.text }}", sql_conn_id="warehouse", results_table=table,
                         usage_table=table + "_usage", runs_table=table + "_runs")
    op.execute({"ti": TI(), "params": {}})
engine = sa.create_engine(url.replace("postgres://", "postgresql+psycopg2://").replace("mysql://", "mysql+pymysql://"))
with engine.begin() as conn:
    ok = conn.execute(sa.text(f"SELECT COUNT(*) FROM {table} WHERE status = 'ok'")).scalar()
    for name in (table, table + "_usage", table + "_runs"):
        conn.execute(sa.text(f"DROP TABLE {name}"))
assert ok == 3, ok
print(f"sql_conn_id job on {backend} through the installed extra: 3 rows ok")
"""
"""A ``sql_conn_id`` job as a user runs it after ``pip install 'airflow-provider-glm[postgres]'`` (or
``[mysql]``): an Airflow connection of type ``postgres`` / ``mysql``, read by its provider's hook."""
EXTRAS_URLS = {
    "postgres": os.environ.get("GLM_TEST_POSTGRES_CONN", "postgres://postgres@127.0.0.1:5432/test"),
    "mysql": os.environ.get("GLM_TEST_MYSQL_CONN", "mysql://root@127.0.0.1:3306/test"),
}


def smoke_extras(wheel: Path, work: Path) -> None:
    """The ``postgres`` and ``mysql`` extras bring what ``sql_conn_id`` needs: a job runs on each database."""
    python = venv(work / "venv-extras", f"{wheel}[postgres,mysql]", f"apache-airflow=={NEWEST_AIRFLOW}")
    env = isolated_env(work / "home-extras")
    for backend, url in EXTRAS_URLS.items():
        run(python, "-c", EXTRAS_JOB, backend, url, env=env, cwd=work)


def smoke_oldest(wheel: Path, work: Path) -> None:
    python = venv(work / "venv-oldest", f"{wheel}[test]", f"apache-airflow=={OLDEST_AIRFLOW}", *OLDEST_PINS)
    version = run(python, "-c", "import airflow; print(airflow.__version__)", capture=True,
                  env=isolated_env(work / "home-oldest")).strip().splitlines()[-1]
    assert version == OLDEST_AIRFLOW, version
    env = isolated_env(work / "home-oldest")
    env.update({k: v for k, v in os.environ.items() if k.startswith("GLM_")})
    run(python.parent / "pytest", "-q", "-p", "no:cacheprovider", *SMOKE_TESTS, cwd=REPO, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--oldest", action="store_true", help=f"also test the wheel on Airflow {OLDEST_AIRFLOW}")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="glm-package-"))
    try:
        wheel, _ = build(work / "dist")
        python = venv(work / "venv-newest", wheel, f"apache-airflow=={NEWEST_AIRFLOW}")
        smoke_installed(python, work)
        smoke_extras(wheel, work)
        if args.oldest:
            smoke_oldest(wheel, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("package check passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
