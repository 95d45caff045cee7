"""The GLM API itself, usable without Airflow: clients, retry policy, auth, wire models, streaming, files and batches.

Public names: :class:`GLMClient` (blocking) and :class:`AsyncGLMClient`, :class:`CallInfo`,
:class:`~airflow_provider_glm.client.retry.RetryPolicy`, :class:`APIKey`, and the wire models of
files, batches and async tasks; the chat models are in :mod:`airflow_provider_glm.client.models`.
Everything in a module whose name starts with ``_`` is internal.

Example::

    from airflow_provider_glm.client._client import GLMClient

    with GLMClient(api_key="...") as client:
        print(client.chat_completion("glm-4.5", [{"role": "user", "content": "Hi"}]).content)

The names are loaded on first use, so that the error tree (:mod:`airflow_provider_glm.exceptions`)
and the wire models can be imported without the HTTP stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_glm.client._attempts import CallInfo
    from airflow_provider_glm.client._auth import APIKey
    from airflow_provider_glm.client._calls import AsyncTask, Batch, BatchList, FileObject
    from airflow_provider_glm.client._client import AsyncGLMClient, GLMClient
    from airflow_provider_glm.client.retry import RetryPolicy

__all__ = ["APIKey", "AsyncGLMClient", "AsyncTask", "Batch", "BatchList", "CallInfo", "FileObject", "GLMClient",
           "RetryPolicy"]

_HOMES = {
    "APIKey": "_auth", "AsyncTask": "_calls", "Batch": "_calls", "BatchList": "_calls", "FileObject": "_calls",
    "AsyncGLMClient": "_client", "CallInfo": "_attempts", "GLMClient": "_client", "RetryPolicy": "retry",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # loaded here, not at the top: importing the error tree must not import httpx
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
