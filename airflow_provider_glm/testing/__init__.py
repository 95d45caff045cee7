"""A GLM-compatible HTTP server on loopback for tests, demos and benchmarks.

Example::

    from airflow_provider_glm.testing import BatchOutcome, Fault, GLMTestServer

    with GLMTestServer(api_key="test-key") as srv:
        srv.script(Fault.error(429, "1302"))
        srv.batch_script(BatchOutcome.expired(after_lines=2))
        ...  # point a client at srv.base_url

Everything here is standard library only; names load lazily so importing the package is cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_glm.testing.batch_model import BatchOutcome
    from airflow_provider_glm.testing.faults import Fault
    from airflow_provider_glm.testing.records import BilledResponse, RecordedRequest, ServerStats
    from airflow_provider_glm.testing.routing import RequestContext
    from airflow_provider_glm.testing.server import GLMTestServer
    from airflow_provider_glm.testing.state import Rule

__all__ = [
    "BatchOutcome",
    "BilledResponse",
    "Fault",
    "GLMTestServer",
    "RecordedRequest",
    "RequestContext",
    "Rule",
    "ServerStats",
]

_LOCATIONS = {
    "BatchOutcome": "batch_model",
    "BilledResponse": "records",
    "Fault": "faults",
    "GLMTestServer": "server",
    "RecordedRequest": "records",
    "RequestContext": "routing",
    "Rule": "state",
    "ServerStats": "records",
}


def __getattr__(name: str) -> Any:
    if name in _LOCATIONS:
        module = importlib.import_module(f"{__name__}.{_LOCATIONS[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
