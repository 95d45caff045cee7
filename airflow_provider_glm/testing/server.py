"""A GLM-compatible HTTP server on loopback, for tests, demos and benchmarks.

The server runs ``asyncio.start_server`` on its own event loop in a daemon thread and speaks
hand-parsed HTTP/1.1, so faults (hangs, drops, half bodies, trickles) are byte-exact. Endpoints
live in separate modules that expose ``register(server)``; see :mod:`.routing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from airflow_provider_glm.testing._http import MAX_HEAD_BYTES
from airflow_provider_glm.testing.answers import AnswerEntry, load_answers
from airflow_provider_glm.testing.faults import Fault
from airflow_provider_glm.testing.records import BilledResponse, RecordedRequest, ServerStats
from airflow_provider_glm.testing.routing import Handler, Router
from airflow_provider_glm.testing.serving import Gate, serve_connection
from airflow_provider_glm.testing.state import Rule, ServerState

if TYPE_CHECKING:
    from airflow_provider_glm.testing.batch_model import BatchOutcome

ROUTE_MODULES: tuple[str, ...] = (
    "airflow_provider_glm.testing.completions",
    "airflow_provider_glm.testing.files",
    "airflow_provider_glm.testing.batches",
    "airflow_provider_glm.testing.async_chat",
    "airflow_provider_glm.testing.control",
)
MAX_FILE_BYTES = 100 * 1024 * 1024
MAX_FILE_LINES = 50_000


class GLMTestServer:
    """GLM API on ``http://host:port/api/paas/v4`` (and ``/api/coding/paas/v4``).

    Use as a context manager, or call :meth:`start` and :meth:`stop`. Settings (``latency``,
    ``latency_jitter``, ``concurrency_limit``, ``rate_limit_fraction``, ``seed``,
    ``timestamps_in_seconds``, ``uppercase_models``, ``batch_step_seconds``, ``async_delay``,
    ``echo_key``, ``max_file_bytes``, ``max_file_lines``) may change at any time; a batch keeps the
    ``batch_step_seconds`` it was created with and an async task the ``async_delay`` it was submitted with.

    Besides chat completions it serves files, batches (:mod:`.files`, :mod:`.batches`), async chat
    (:mod:`.async_chat`) and, outside the API path, ``GET /_stats`` and ``POST /_reset``
    (:mod:`.control`). docs/test-server.md describes all of it.

    :param api_key: the key accepted as ``Bearer <key>``; an ``id.secret`` key also accepts GLM JWTs.
    :param latency: seconds to wait before each chat answer.
    :param host: interface to bind.
    :param port: port to bind, 0 for a free one.
    :param latency_jitter: add a uniform random ``[0, latency_jitter)`` seconds to the latency.
    :param concurrency_limit: chat requests served at once; more get 429/1302 at once. None: unlimited.
    :param rate_limit_fraction: probability of a random 429/1302 answer.
    :param seed: seed of the random generator behind jitter and random rate limiting.
    :param route_modules: modules whose ``register(server)`` adds endpoints.
    :param timestamps_in_seconds: emit file and batch timestamps (``created_at``...) in unix seconds
        instead of the milliseconds the real API sends.
    :param uppercase_models: answer ``model`` upper-cased in completion, batch-line and async bodies
        (and bill it so), as the real API sometimes does.
    :param batch_step_seconds: length of one batch status step (see :mod:`.batches`).
    :param async_delay: seconds an async chat task stays ``PROCESSING``.
    :param echo_key: append ``(invalid request from key <Authorization header>)`` to the message of
        every JSON error answer, as some gateways do (see also :meth:`Fault.echo_key`).
    :param answers: scripted answers to load at once: an answers file, or its entries (see
        :meth:`load_answers`); :meth:`reset` forgets them.
    """

    def __init__(
        self,
        api_key: str = "test-key",
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency_jitter: float = 0.0,
        concurrency_limit: int | None = None,
        rate_limit_fraction: float = 0.0,
        seed: int | None = 0,
        route_modules: tuple[str, ...] = ROUTE_MODULES,
        timestamps_in_seconds: bool = False,
        uppercase_models: bool = False,
        batch_step_seconds: float = 0.05,
        async_delay: float = 0.05,
        echo_key: bool = False,
        answers: str | Path | Iterable[Mapping[str, Any]] | None = None,
    ) -> None:
        self.api_key = api_key
        self.latency = latency
        self.latency_jitter = latency_jitter
        self.concurrency_limit = concurrency_limit
        self.rate_limit_fraction = rate_limit_fraction
        self.host = host
        self.timestamps_in_seconds = timestamps_in_seconds
        self.uppercase_models = uppercase_models
        self.batch_step_seconds = batch_step_seconds
        self.async_delay = async_delay
        self.echo_key = echo_key
        self.max_file_bytes = MAX_FILE_BYTES
        self.max_file_lines = MAX_FILE_LINES
        self.state = ServerState(seed)
        self.router = Router()
        self.extensions: dict[str, Any] = {}
        self._seed = seed
        self._requested_port = port
        self._port: int | None = None
        self._reset_hooks: list[Callable[[], None]] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._gate = Gate()
        for name in route_modules:
            importlib.import_module(name).register(self)
        if answers is not None:
            self.load_answers(answers)

    def route(self, method: str, pattern: str, handler: Handler, *, auth: bool = True, root: bool = False,
              tracked: bool = True) -> None:
        """Add an endpoint.

        :param method: HTTP method.
        :param pattern: path relative to the API base; ``{name}`` segments capture into ``ctx.params``.
        :param handler: ``async def handler(ctx: RequestContext) -> None``.
        :param auth: check the Authorization header first.
        :param root: ``pattern`` is a whole path outside the API base (``"/_stats"``).
        :param tracked: record and count its requests.
        """
        self.router.add(method, pattern, handler, auth=auth, root=root, tracked=tracked)

    def on_reset(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` on every :meth:`reset` (for endpoint modules keeping their own state).

        :param hook: callable without arguments.
        """
        self._reset_hooks.append(hook)

    @property
    def seed(self) -> int | None:
        """Seed of the random generator; setting it restarts the generator."""
        return self._seed

    @seed.setter
    def seed(self, value: int | None) -> None:
        self._seed = value
        self.state.reseed(value)

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("GLMTestServer is not started")
        return self._port

    @property
    def root_url(self) -> str:
        """``http://host:port`` without the API path."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://host:port/api/paas/v4``."""
        return f"{self.root_url}/api/paas/v4"

    @property
    def coding_base_url(self) -> str:
        """``http://host:port/api/coding/paas/v4``."""
        return f"{self.root_url}/api/coding/paas/v4"

    def script(self, *faults: Fault) -> None:
        """Queue faults; each applies to the next chat request that passes auth and admission.

        :param faults: faults in order.
        """
        with self.state.lock:
            self.state.script.extend(faults)

    def add_rule(self, match: str, fault: Fault, times: int | None = None) -> Rule:
        """Apply ``fault`` to requests whose raw JSON body text, or their messages' text, contains ``match``.

        Scripted faults go first; among rules (and answers, :meth:`answer`) the first added that
        matches wins. Batch lines and async submits are matched too (see their modules).

        :param match: substring of the raw body or of the messages' text ("" matches every request).
        :param fault: fault to apply.
        :param times: how many requests it applies to; None for all.
        :return: the rule (its ``hits`` and ``remaining`` update live).
        """
        rule = Rule(match=match, fault=fault, remaining=times)
        with self.state.lock:
            self.state.rules.append(rule)
        return rule

    def answer(self, match: str = "", *, content: str | None = None, json: Any = None,
               tool_call: Mapping[str, Any] | list[Mapping[str, Any]] | None = None,
               web_search: list[Mapping[str, Any]] | None = None,
               content_filter: list[Mapping[str, Any]] | None = None,
               finish_reason: str | None = None, times: int | None = None) -> Rule:
        """Script the answer to requests whose body or messages' text contains ``match``.

        A rule with :meth:`Fault.answer` (which describes the parts); billed like a generated answer,
        it reaches chat completions, async results and batch output lines alike. Example::

            srv.answer("invoice 42", json={"total": 42})
            srv.answer("weather", tool_call={"name": "lookup", "arguments": {"city": "Beijing"}})

        :param match: substring of the raw body or of the messages' text ("" matches every request).
        :param content: see :meth:`Fault.answer`, like ``json``, ``tool_call``, ``web_search``,
            ``content_filter`` and ``finish_reason``.
        :param times: how many requests it answers; None for all.
        :return: the rule (its ``hits`` and ``remaining`` update live).
        """
        fault = Fault.answer(content=content, json=json, tool_call=tool_call, web_search=web_search,
                             content_filter=content_filter, finish_reason=finish_reason)
        return self.add_rule(match, fault, times)

    def load_answers(self, source: str | Path | Iterable[Mapping[str, Any]]) -> list[Rule]:
        """Add scripted answers in order, from a file (the command line's ``--answers``) or entries.

        :param source: a path to a JSON array of entries, one JSON entry, or JSONL; or the entries.
            An entry is ``{"match", "times", "content" | "json" | "tool_call" | "web_search" |
            "content_filter" | "finish_reason"}``.
        :raises ValueError: a bad file or entry (the message names it).
        """
        if isinstance(source, str | Path):
            entries = load_answers(source)
        else:
            entries = [AnswerEntry.from_mapping(item, f"answer {n}") for n, item in enumerate(source)]
        return [self.add_rule(entry.match, Fault("answer", scripted=entry.answer), entry.times)
                for entry in entries]

    def hold(self) -> None:
        """Make admitted chat completion requests wait (after admission, before their fault and
        latency) until :meth:`release`; lets a test reach an exact number of requests in flight.
        """
        self._gate.set(False)

    def release(self) -> None:
        """Let held and later chat completion requests proceed."""
        self._gate.set(True)

    async def wait_until_released(self) -> None:
        """Wait while the server is held (see :meth:`hold`); called by the chat endpoint."""
        await self._gate.wait()

    def timestamp(self, when: float | None = None) -> int:
        """Render a wall-clock time as the API does: unix milliseconds, or seconds with
        ``timestamps_in_seconds``.

        :param when: ``time.time()`` value; now when None.
        """
        value = time.time() if when is None else when
        return int(value) if self.timestamps_in_seconds else int(value * 1000)

    def reported_model(self, model: str) -> str:
        """The model name as answered: upper-cased with ``uppercase_models``.

        :param model: the model asked for.
        """
        return model.upper() if self.uppercase_models else model

    def _extension(self, name: str) -> Any:
        try:
            return self.extensions[name]
        except KeyError:
            raise RuntimeError(f"GLMTestServer was built without the {name!r} endpoints") from None

    def batch_script(self, *outcomes: BatchOutcome) -> None:
        """Queue batch outcomes; each applies to the next batch created (FIFO), others complete normally.

        :param outcomes: :class:`~airflow_provider_glm.testing.batches.BatchOutcome` values in order.
        """
        self._extension("batches").script(outcomes)

    def pause_batches(self) -> None:
        """Freeze every batch's status (new ones stay ``validating``) until :meth:`resume_batches`, so a test
        can act while a batch is surely not done, whatever the machine's speed."""
        self._extension("batches").pause()

    def resume_batches(self) -> None:
        """Let batches progress again (each one's current phase restarts now)."""
        self._extension("batches").resume()

    @property
    def batches(self) -> list[dict[str, Any]]:
        """The batch objects as ``GET /batches/{id}`` would answer them now, oldest first."""
        result: list[dict[str, Any]] = self._extension("batches").snapshot()
        return result

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        """File id -> file object, for every file not deleted (uploads and batch results)."""
        result: dict[str, dict[str, Any]] = self._extension("files").snapshot()
        return result

    def file_content(self, file_id: str) -> bytes:
        """The bytes of a stored file.

        :param file_id: a file id.
        :raises KeyError: unknown or deleted file.
        """
        content: bytes = self._extension("files").content(file_id)
        return content

    @property
    def async_tasks(self) -> list[dict[str, Any]]:
        """Async chat tasks as ``GET /async-result/{id}`` would answer them now, oldest first."""
        result: list[dict[str, Any]] = self._extension("async_chat").snapshot()
        return result

    @property
    def stats(self) -> ServerStats:
        """A snapshot of the counters."""
        return self.state.stats()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Copies of the recorded requests, in arrival order."""
        return self.state.recorded()

    @property
    def billed(self) -> list[BilledResponse]:
        """The billed completions, in generation order."""
        return self.state.billed_list()

    def reset(self) -> None:
        """Clear the fault queue, rules, answers, records and counters (settings stay)."""
        self.state.reset()
        for hook in self._reset_hooks:
            hook()

    def reset_stats(self) -> None:
        """Zero the counters and forget records and the billing tally (what ``POST /_reset`` does);
        faults, rules, answers, files, batches and async tasks stay."""
        self.state.reset_counters()

    def start(self) -> GLMTestServer:
        """Bind and serve in a background thread; return once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("GLMTestServer is already started")
        self._ready.clear()
        self._startup_error = None
        self._thread = threading.Thread(target=self._run, name="glm-test-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise RuntimeError("GLMTestServer did not start within 30 s")
        if self._startup_error is not None:
            self._thread.join(timeout=5)
            self._thread = None
            raise self._startup_error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection and stop the server thread.

        :param timeout: seconds to wait for the thread.
        """
        thread, loop, event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)
        thread.join(timeout=timeout)
        self._thread = None

    def __enter__(self) -> GLMTestServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.base_url if self._port is not None else "not started"
        return f"GLMTestServer({where})"

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:
            self._startup_error = self._startup_error or exc
            self._ready.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop_event = asyncio.Event()
        self._gate.bind(asyncio.get_running_loop())
        try:
            server = await asyncio.start_server(self._serve_connection, self.host, self._requested_port,
                                                limit=MAX_HEAD_BYTES, backlog=1024, reuse_address=True)
        except OSError as exc:
            self._startup_error = exc
            self._ready.set()
            return
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop_event.wait()
        server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await serve_connection(self, reader, writer)
        finally:
            if task is not None:
                self._connections.discard(task)
