"""Test session setup: a private AIRFLOW_HOME, the example DAGs folder, and shared fixtures.

The environment is set at import time, before anything imports Airflow, so no test reads or writes
the user's ``~/airflow``.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _fakes import FakeTaskInstance, FakeTaskStateStore

pytest_plugins = ["airflow_provider_glm.testing.pytest_plugin"]
"""The GLM test server's ``glm_server`` fixture: opt-in, as it is for users (the package registers no
pytest entry point)."""

REPO = Path(__file__).resolve().parent.parent
_HOME = tempfile.mkdtemp(prefix="glm-airflow-home-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ["AIRFLOW_HOME"] = _HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ.pop("AIRFLOW_CONN_GLM_DEFAULT", None)
# The clients honour proxy variables (trust_env): a developer's proxy must not carry the tests' loopback
# calls anywhere. The proxy tests set their own.
for _name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR"):
    os.environ.pop(_name, None)
    os.environ.pop(_name.lower(), None)


@pytest.fixture
def glm_conn(glm_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``glm_default`` pointing at the local GLM server; returns the server."""
    conn = {"conn_type": "glm", "password": glm_server.api_key, "host": glm_server.base_url,
            "extra": {"model": "glm-4.5", "max_retries": 3}}
    monkeypatch.setenv("AIRFLOW_CONN_GLM_DEFAULT", json.dumps(conn))
    return glm_server


@pytest.fixture
def ti() -> FakeTaskInstance:
    return FakeTaskInstance()


@pytest.fixture
def context(ti: FakeTaskInstance) -> Iterator[dict[str, Any]]:
    yield {"ti": ti, "ds": "2026-11-26", "params": {}, "task_state_store": FakeTaskStateStore()}


# S3 for the object-storage sink: moto in server mode on loopback, never a real AWS endpoint.


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    """A fresh bucket on the loopback moto server and the ``aws_moto`` connection; nothing else reachable."""
    import boto3
    from airflow.sdk.io import store

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    conn = {"conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"endpoint_url": moto_endpoint, "region_name": "us-east-1"}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_MOTO", json.dumps(conn))
    store._STORE_CACHE.pop("s3-aws_moto", None)
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.bucket = f"glm-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=client.bucket)
    yield client
    store._STORE_CACHE.pop("s3-aws_moto", None)
