"""The attempt gate: asked before every attempt of a chat call (first sends, retries, resends), told how each
ended; a refusal sends nothing and carries the call's earlier attempts, which may have been billed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from _scripted import Scripted, answer, completion, run, write

from airflow_provider_glm.client import AsyncGLMClient
from airflow_provider_glm.exceptions import GLMBudgetExceededError, GLMError

BODY = json.dumps({"model": "glm-4.5", "messages": [{"role": "user", "content": "hi"}]}).encode()


class Gate:
    """Admits until ``refuse_at`` (an attempt number), and records what it was told."""

    def __init__(self, refuse_at: int | None = None) -> None:
        self.refuse_at = refuse_at
        self.admitted: list[int] = []
        self.settled: list[tuple[str, bool | None]] = []

    async def admit(self, attempt: int) -> None:
        if attempt == self.refuse_at:
            raise GLMBudgetExceededError(f"not sent: attempt {attempt} is over the budget")
        self.admitted.append(attempt)

    async def settle(self, answer: Any, error: GLMError | None) -> None:
        if error is None:
            self.settled.append(("answer", None))
        else:
            self.settled.append((type(error).__name__, error.may_have_been_billed))


def script_of(kinds: list[str]) -> Any:
    """Answers in turn: ``429`` (a rate limit, not billed), ``drop`` (billed, then the connection closes), ``ok``."""

    async def script(n: int, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        kind = kinds[n - 1]
        if kind == "429":
            body = b'{"error": {"code": "1302", "message": "busy"}}'
            await write(writer, answer(body, status="429 Too Many Requests"))
        elif kind == "drop":
            writer.close()
        else:
            await write(writer, answer(completion(request)))

    return script


async def ask(kinds: list[str], gate: Gate) -> tuple[Any, int]:
    async with Scripted(script_of(kinds)) as server:
        async with AsyncGLMClient("sk-gate-key", base_url=server.base_url, max_retries=3, max_billed_retries=1,
                                  sleep=lambda seconds: None) as glm:
            try:
                result: Any = await glm.send_chat(BODY, gate=gate)
            except (GLMBudgetExceededError, GLMError) as exc:
                result = exc
        return result, len(server.requests)


def test_every_attempt_is_admitted_and_settled() -> None:
    gate = Gate()
    answered, requests = run(ask(["429", "drop", "ok"], gate))
    assert answered.content == "ok"
    assert requests == 3
    assert gate.admitted == [1, 2, 3]
    assert gate.settled == [("GLMRateLimitError", False), ("GLMConnectionError", True), ("answer", None)]


@pytest.mark.parametrize("kinds", [["drop", "ok"], ["429", "ok"]])
def test_a_refused_attempt_sends_nothing_and_keeps_the_earlier_ones(kinds: list[str]) -> None:
    gate = Gate(refuse_at=2)
    refused, requests = run(ask(kinds, gate))
    assert isinstance(refused, GLMBudgetExceededError)
    assert requests == 1, "the refused resend never left"
    assert (refused.call_info.attempts, refused.call_info.unknown_billing_attempts) == (
        1, 1 if kinds[0] == "drop" else 0)
