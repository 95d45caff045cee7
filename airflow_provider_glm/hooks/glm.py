"""``GLMHook``: the ``glm`` connection turned into GLM clients.

The connection's password is the API key, its host the base URL; extras tune the model, timeouts,
retries and auth mode (see ``docs/connections.md``). Nothing here touches the network until a
method that calls the API runs.

Blocking methods are thin wrappers over the async client (one implementation of every call); the
``a``-prefixed methods are their async forms. Besides chat, the hook exposes the Batch API's file
and batch operations (``upload_file``, ``create_batch``, ``get_batch``, ``cancel_batch``,
``list_batches``, ``download_file``).

Example::

    hook = GLMHook(glm_conn_id="glm_default")
    answer = hook.chat_completion([{"role": "user", "content": "Say hi"}])
    print(answer.content)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.sdk import BaseHook

from airflow_provider_glm.client import _calls as calls
from airflow_provider_glm.client._urls import endpoint_of
from airflow_provider_glm.hooks._connection import ConnectionSettings

if TYPE_CHECKING:
    from airflow_provider_glm.client._calls import Batch, BatchList, Call, FileObject
    from airflow_provider_glm.client._client import AsyncGLMClient, GLMClient
    from airflow_provider_glm.client.models import ChatCompletion, ChatCompletionChunk

__all__ = ["GLMHook"]

T = TypeVar("T")

class GLMHook(BaseHook):
    """Talk to GLM through an Airflow ``glm`` connection.

    :param glm_conn_id: the connection id (default ``glm_default``).
    :param client_options: overrides for the client (``timeout``, ``max_retries``, ...), applied on top
        of the connection's extras.
    """

    conn_name_attr = "glm_conn_id"
    default_conn_name = "glm_default"
    conn_type = "glm"
    hook_name = "GLM (Zhipu AI)"

    def __init__(self, glm_conn_id: str = default_conn_name, *, client_options: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.glm_conn_id = glm_conn_id
        self.client_options = dict(client_options or {})

    def __repr__(self) -> str:
        return f"GLMHook(glm_conn_id={self.glm_conn_id!r})"

    @cached_property
    def settings(self) -> ConnectionSettings:
        """The parsed connection (fetched once per hook); the key is registered with the masker."""
        from airflow.sdk.log import mask_secret

        conn = self.get_connection(self.glm_conn_id)
        if conn.password:
            mask_secret(conn.password)
        settings = ConnectionSettings.from_connection(conn)
        for secret in settings.secrets:
            mask_secret(secret)
        return settings

    async def aget_settings(self) -> ConnectionSettings:
        """:attr:`settings` without blocking the event loop (for triggers)."""
        if "settings" not in self.__dict__:
            from airflow.sdk.log import mask_secret

            conn = await self.aget_connection(self.glm_conn_id)
            if conn.password:
                mask_secret(conn.password)
            settings = self.__dict__["settings"] = ConnectionSettings.from_connection(conn)
            for secret in settings.secrets:
                mask_secret(secret)
        return self.settings

    def _options(self) -> dict[str, Any]:
        settings = self.settings
        options = {"base_url": settings.base_url, "auth": settings.auth, **settings.client_options}
        options.update(self.client_options)
        return options

    @cached_property
    def client(self) -> GLMClient:
        """The blocking client, built once on first use (an async client run on a private loop thread)."""
        from airflow_provider_glm.client._client import GLMClient  # lazy: httpx loads when a client is built

        return GLMClient(self.settings.api_key, **self._options())

    def get_conn(self) -> GLMClient:
        """The blocking client (Airflow's hook protocol)."""
        return self.client

    def close(self) -> None:
        """Release the blocking client's connections (it is built again on next use)."""
        client = self.__dict__.pop("client", None)
        if client is not None:
            client.close()

    @property
    def endpoint(self) -> str:
        """``host:port`` of the connection's base URL."""
        return endpoint_of(self.settings.base_url)

    def get_async_client(self, **overrides: Any) -> AsyncGLMClient:
        """A new async client; the caller owns it and closes it (``async with``)."""
        from airflow_provider_glm.client._client import AsyncGLMClient  # lazy: as in client

        return AsyncGLMClient(self.settings.api_key, **{**self._options(), **overrides})

    # --- chat ------------------------------------------------------------------------------------------

    def chat_completion(self, messages: Any, model: str | None = None, **params: Any) -> ChatCompletion:
        """Create one chat completion.

        :param messages: ``[{"role": "user", "content": "..."}]``.
        :param model: the model; default the connection's ``model`` extra.
        :param params: other request options (temperature, max_tokens, thinking, tools, ...).
        """
        return self.client.chat_completion(model or self.settings.model, messages, **params)

    def stream_chat_completion(self, messages: Any, model: str | None = None,
                               **params: Any) -> Iterator[ChatCompletionChunk]:
        """Stream one chat completion as typed chunks."""
        return self.client.stream_chat_completion(model or self.settings.model, messages, **params)

    async def achat_completion(self, messages: Any, model: str | None = None, **params: Any) -> ChatCompletion:
        """Create one chat completion without blocking the event loop (uses a short-lived async client)."""
        settings = await self.aget_settings()
        async with self.get_async_client() as client:
            return await client.chat_completion(model or settings.model, messages, **params)

    # --- files and batches (blocking; the ``a``-prefixed forms are async) ------------------------------

    def upload_file(self, content: bytes, filename: str = "batch.jsonl") -> FileObject:
        """Upload a JSONL file for a batch (``purpose=batch``)."""
        return self._call(calls.upload_file(content, filename))

    def download_file(self, file_id: str) -> bytes:
        """A file's bytes (batch output and error files), read whole under a 1 GiB cap."""
        return self._call(calls.file_content(file_id))

    def create_batch(self, input_file_id: str, *, metadata: Mapping[str, str] | None = None,
                     completion_window: str = "24h") -> Batch:
        """Create a batch over an uploaded file. A lost answer is not resent (a second batch would bill twice)."""
        return self._call(calls.create_batch(input_file_id, metadata=metadata, completion_window=completion_window))

    def get_batch(self, batch_id: str) -> Batch:
        return self._call(calls.retrieve_batch(batch_id))

    def cancel_batch(self, batch_id: str) -> Batch:
        return self._call(calls.cancel_batch(batch_id))

    def list_batches(self, after: str | None = None, limit: int = 100) -> BatchList:
        """One page of batches, newest first."""
        return self._call(calls.list_batches(after=after, limit=limit))

    def _call(self, call: Call[T]) -> T:
        return self.client.call(call)

    async def aupload_file(self, content: bytes, filename: str = "batch.jsonl") -> FileObject:
        return await self._acall(calls.upload_file(content, filename))

    async def adownload_file(self, file_id: str) -> bytes:
        return await self._acall(calls.file_content(file_id))

    async def acreate_batch(self, input_file_id: str, *, metadata: Mapping[str, str] | None = None,
                            completion_window: str = "24h") -> Batch:
        return await self._acall(calls.create_batch(input_file_id, metadata=metadata,
                                                    completion_window=completion_window))

    async def aget_batch(self, batch_id: str) -> Batch:
        return await self._acall(calls.retrieve_batch(batch_id))

    async def acancel_batch(self, batch_id: str) -> Batch:
        return await self._acall(calls.cancel_batch(batch_id))

    async def alist_batches(self, after: str | None = None, limit: int = 100) -> BatchList:
        return await self._acall(calls.list_batches(after=after, limit=limit))

    async def _acall(self, call: Call[T]) -> T:
        await self.aget_settings()
        async with self.get_async_client() as client:
            return await client.call(call)

    def test_connection(self) -> tuple[bool, str]:
        """Make one ``max_tokens=1`` call on the connection's model and say what it cost."""
        from airflow_provider_glm.client._client import GLMClient  # lazy: as in client

        try:
            model = self.settings.model
            options = {**self._options(), "max_retries": 0}
            options.pop("retry_policy", None)
            with GLMClient(self.settings.api_key, **options) as client:
                answer = client.chat_completion(model, [{"role": "user", "content": "ping"}], max_tokens=1)
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        usage = answer.usage
        spent = f"{usage.total_tokens} tokens" if usage else "an unknown number of tokens"
        return True, (
            f"Connected to {self.settings.base_url} as model {answer.model or model}; "
            f"the check spent {spent} (one max_tokens=1 call)."
        )
