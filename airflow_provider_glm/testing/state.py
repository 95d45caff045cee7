"""Thread-safe bookkeeping of the GLM test server: fault queue, rules, records and counters.

The event-loop thread writes, the test thread reads; every access holds one lock and readers
get copies.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from airflow_provider_glm.testing.records import BilledResponse, RecordedRequest, ServerStats

if TYPE_CHECKING:
    from airflow_provider_glm.testing.faults import Fault
    from airflow_provider_glm.testing.generation import Completion


@dataclass
class Rule:
    """A fault applied to every request whose raw body text, or its messages' text, contains ``match``.

    :param match: substring searched in the raw request body and in the messages' text joined with
        newlines ("" matches every request).
    :param fault: fault to apply.
    :param remaining: how many more requests it applies to (None: unlimited).
    :param hits: how many requests it has applied to.
    """

    match: str
    fault: Fault
    remaining: int | None = None
    hits: int = 0


class ServerState:
    """Counters and records shared between the loop thread and the test thread.

    :param seed: seed of the random generator used for rate limiting and latency jitter.
    """

    def __init__(self, seed: int | None = 0) -> None:
        self.lock = threading.RLock()
        self.rng = random.Random(seed)
        self.script: deque[Fault] = deque()
        self.rules: list[Rule] = []
        self.records: list[RecordedRequest] = []
        self.billed: list[BilledResponse] = []
        self.status_counts: dict[int, int] = {}
        self.seen_system_texts: set[str] = set()
        self.requests = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.admitted = 0
        self.peak_admitted = 0
        self.call_counter = 0
        self.counters: dict[str, int] = {}

    def reseed(self, seed: int | None) -> None:
        """Restart the random generator.

        :param seed: new seed.
        """
        with self.lock:
            self.rng = random.Random(seed)

    def random(self) -> float:
        """Draw a float in [0, 1) from the seeded generator."""
        with self.lock:
            return self.rng.random()

    def begin(self, record: RecordedRequest) -> None:
        """Register a request that has just been read.

        :param record: its record.
        """
        with self.lock:
            self.records.append(record)
            self.requests += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def finish(self, record: RecordedRequest, admitted: bool) -> None:
        """Register the end of a request's answer.

        :param record: its record.
        :param admitted: whether it held a concurrency slot.
        """
        with self.lock:
            record.ended_at = time.monotonic()
            self.in_flight -= 1
            if admitted:
                self.admitted -= 1

    def set_status(self, record: RecordedRequest, status: int) -> None:
        """Record the status line sent for a request.

        :param record: its record.
        :param status: HTTP status sent.
        """
        with self.lock:
            record.status = status
            self.status_counts[status] = self.status_counts.get(status, 0) + 1

    def try_admit(self, limit: int | None) -> bool:
        """Take a concurrency slot unless ``limit`` slots are taken.

        :param limit: slot count, None for unlimited.
        """
        with self.lock:
            if limit is not None and self.admitted >= limit:
                return False
            self.admitted += 1
            self.peak_admitted = max(self.peak_admitted, self.admitted)
            return True

    def next_call_id(self) -> str:
        """Return a fresh tool-call id ``call_<n>``."""
        with self.lock:
            self.call_counter += 1
            return f"call_{self.call_counter}"

    def take_fault(self, raw_text: str, prompt: str = "") -> Fault | None:
        """Pop the next scripted fault, else the first matching rule's fault.

        :param raw_text: the raw request body as text.
        :param prompt: the messages' text joined with newlines.
        """
        with self.lock:
            return self.take_scripted() or self.take_rule(raw_text, prompt)

    def take_scripted(self) -> Fault | None:
        """Pop the next scripted fault, if any."""
        with self.lock:
            return self.script.popleft() if self.script else None

    def take_rule(self, raw_text: str, prompt: str = "") -> Fault | None:
        """Return the first matching rule's fault (counting the hit), ignoring the script.

        :param raw_text: the raw body text the rules' ``match`` is searched in.
        :param prompt: the messages' text joined with newlines, searched too.
        """
        with self.lock:
            for rule in self.rules:
                if rule.remaining != 0 and (rule.match in raw_text or rule.match in prompt):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    rule.hits += 1
                    return rule.fault
            return None

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to a named counter reported by :meth:`stats` (``files_uploaded``...).

        :param name: a :class:`ServerStats` field name.
        :param n: increment.
        """
        with self.lock:
            self.counters[name] = self.counters.get(name, 0) + n

    def bill(self, record: RecordedRequest | None, completion: Completion, source: str = "chat") -> None:
        """Record a generated completion as billed.

        :param record: the request that got it; None when no single request did (batch lines,
            async results).
        :param completion: the completion.
        :param source: ``"chat"``, ``"batch"`` or ``"async"``.
        """
        with self.lock:
            if record is not None:
                record.billed = True
                record.response_id = completion.response_id
            self.billed.append(BilledResponse(
                response_id=completion.response_id,
                request_id=completion.request_id,
                model=completion.model,
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                total_tokens=completion.total_tokens,
                cached_tokens=completion.cached_tokens,
                reasoning_tokens=completion.reasoning_tokens,
                source=source,
            ))

    def stats(self) -> ServerStats:
        """Return a snapshot of the counters."""
        with self.lock:
            return ServerStats(
                requests=self.requests,
                billed_responses=len(self.billed),
                billed_prompt_tokens=sum(b.prompt_tokens for b in self.billed),
                billed_completion_tokens=sum(b.completion_tokens for b in self.billed),
                billed_total_tokens=sum(b.total_tokens for b in self.billed),
                peak_in_flight=self.peak_in_flight,
                in_flight=self.in_flight,
                peak_chat_in_flight=self.peak_admitted,
                chat_in_flight=self.admitted,
                status_counts=dict(self.status_counts),
                files_uploaded=self.counters.get("files_uploaded", 0),
                batches_created=self.counters.get("batches_created", 0),
                cancels=self.counters.get("cancels", 0),
                async_submitted=self.counters.get("async_submitted", 0),
            )

    def recorded(self) -> list[RecordedRequest]:
        """Return copies of the request records."""
        with self.lock:
            return [r.copy() for r in self.records]

    def billed_list(self) -> list[BilledResponse]:
        """Return the billed completions."""
        with self.lock:
            return list(self.billed)

    def reset(self) -> None:
        """Forget faults, rules, records and counters (requests in flight stay counted)."""
        with self.lock:
            self.script.clear()
            self.rules.clear()
            self.seen_system_texts.clear()
            self.call_counter = 0
            self.reset_counters()

    def reset_counters(self) -> None:
        """Forget records, the billing tally and counters; keep faults, rules and the prompt cache.

        Requests in flight stay counted, and the peaks restart from them.
        """
        with self.lock:
            self.records.clear()
            self.billed.clear()
            self.status_counts.clear()
            self.requests = 0
            self.peak_in_flight = self.in_flight
            self.peak_admitted = self.admitted
            self.counters.clear()
