"""Pytest plugin with a ``glm_server`` fixture: a started :class:`GLMTestServer`, stopped afterwards.

Load it with ``pytest_plugins = ["airflow_provider_glm.testing.pytest_plugin"]`` (or the
``pytest11`` entry point). Constructor options come from an overridable ``glm_server_kwargs``
fixture, or from a ``glm_server`` marker (usable where the plugin is loaded before test modules are
imported, i.e. from a conftest or the entry point; with ``--strict-markers`` a marker in a module that
itself lists the plugin in ``pytest_plugins`` is rejected)::

    @pytest.mark.glm_server(api_key="id.secret", latency=0.1)
    def test_x(glm_server): ...
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from airflow_provider_glm.testing.server import GLMTestServer


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``glm_server`` marker.

    :param config: pytest configuration.
    """
    config.addinivalue_line("markers", "glm_server(**kwargs): keyword arguments for the glm_server fixture")


@pytest.fixture
def glm_server_kwargs() -> dict[str, Any]:
    """Keyword arguments for :class:`GLMTestServer` in ``glm_server``; override to change them."""
    return {}


@pytest.fixture
def glm_server(request: pytest.FixtureRequest, glm_server_kwargs: dict[str, Any]) -> Iterator[GLMTestServer]:
    """A running GLM test server on loopback (``api_key="test-key"`` unless configured otherwise).

    :param request: pytest fixture request, used to read the ``glm_server`` marker.
    :param glm_server_kwargs: constructor arguments; the marker's keyword arguments override them.
    """
    from airflow_provider_glm.testing.server import GLMTestServer

    marker = request.node.get_closest_marker("glm_server")
    kwargs = {**glm_server_kwargs, **(marker.kwargs if marker is not None else {})}
    with GLMTestServer(**kwargs) as server:
        yield server
