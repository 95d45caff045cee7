"""The server's own endpoints outside the API path: ``GET /_stats`` and ``POST /_reset``.

Neither needs authentication and neither is recorded or counted, so reading the stats does not
change them. They let a user of the command-line server check "was a call made" with curl::

    curl -s http://127.0.0.1:40123/_stats
    curl -s -X POST http://127.0.0.1:40123/_reset

``GET /_stats`` answers :meth:`ServerStats.to_dict` of ``server.stats``: ``requests``,
``billed_responses``, ``billed_prompt_tokens``, ``billed_completion_tokens``, ``billed_total_tokens``,
``peak_in_flight``, ``in_flight``, ``peak_chat_in_flight``, ``chat_in_flight``, ``status_counts``
(status as a string -> count), ``files_uploaded``, ``batches_created``, ``cancels`` and
``async_submitted``. ``POST /_reset`` zeroes them (``GLMTestServer.reset_stats``: records and
the billing tally are forgotten; scripted faults, answers, files, batches and async tasks stay)
and answers the zeroed stats.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_provider_glm.testing.routing import RequestContext
    from airflow_provider_glm.testing.server import GLMTestServer

STATS_PATH = "/_stats"
RESET_PATH = "/_reset"


def register(server: GLMTestServer) -> None:
    """Add ``GET /_stats`` and ``POST /_reset`` to a server.

    :param server: the server.
    """
    server.route("GET", STATS_PATH, stats, auth=False, root=True, tracked=False)
    server.route("POST", RESET_PATH, reset, auth=False, root=True, tracked=False)


async def stats(ctx: RequestContext) -> None:
    """``GET /_stats``: the counters as JSON.

    :param ctx: the request context.
    """
    await ctx.send_json(200, ctx.server.stats.to_dict())


async def reset(ctx: RequestContext) -> None:
    """``POST /_reset``: zero the counters and answer them.

    :param ctx: the request context.
    """
    ctx.server.reset_stats()
    await ctx.send_json(200, ctx.server.stats.to_dict())
