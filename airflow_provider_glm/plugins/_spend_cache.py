"""How much database work the spend page may cause: a short answer cache and a gate on queries at once.

Both live for the life of the API server process (one per app). :class:`AnswerCache` keeps each
aggregated answer for :data:`CACHE_SECONDS`, keyed by everything the SQL depends on (the tables, the
period, the DAG and model filters, the DAGs the user may read, the list length), and lets
concurrent requests for the same key share one computation. :class:`QueryGate` lets at most
:data:`QUERIES_AT_ONCE` spend queries run at once in the process, whoever asks; a request that
cannot get a slot within :data:`GATE_WAIT_SECONDS` is refused with :class:`SpendBusy`.

Example::

    cache, gate = AnswerCache(), QueryGate()
    with gate.slot():
        rows = cache.get(("ledger", period), lambda: run_the_query(period))
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["CACHE_ENTRIES", "CACHE_SECONDS", "GATE_WAIT_SECONDS", "QUERIES_AT_ONCE", "AnswerCache", "QueryGate",
           "SpendBusy"]

T = TypeVar("T")

CACHE_SECONDS = 60.0
"""How long an aggregated answer is served from memory: the page may be up to this much behind the ledger."""
CACHE_ENTRIES = 64
"""At most this many answers are kept (least recently used dropped first)."""
QUERIES_AT_ONCE = 2
"""Spend queries running at once in one API server process, over every user and request."""
GATE_WAIT_SECONDS = 30.0
"""How long a request waits for a query slot before it is refused as busy (HTTP 503)."""


class SpendBusy(Exception):
    """Every query slot stayed taken for :data:`GATE_WAIT_SECONDS`."""


@dataclass
class _Flight:
    """One computation in progress; the requests asking for the same key wait for it."""

    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None


class AnswerCache:
    """Answers by key for ``ttl`` seconds; one computation per key at a time.

    :param ttl: seconds an answer is served; ``0`` turns caching off (concurrent askers still share).
    :param entries: how many answers are kept at most.
    :param clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, ttl: float = CACHE_SECONDS, *, entries: int = CACHE_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ttl < 0 or entries < 1:
            raise ValueError(f"ttl must be >= 0 and entries >= 1, got {ttl!r} and {entries!r}")
        self.ttl = ttl
        self._entries_max = entries
        self._clock = clock
        self._lock = threading.Condition()
        self._answers: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._flights: dict[Hashable, _Flight] = {}
        self.computed = 0
        """How many answers were computed (not served from memory)."""
        self.shared = 0
        """How many requests waited for another request's computation instead of starting their own."""

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The answer for ``key``: from memory while fresh, else computed once (errors are not kept)."""
        with self._lock:
            hit = self._answers.get(key)
            if hit is not None and hit[0] > self._clock():
                self._answers.move_to_end(key)
                return hit[1]  # type: ignore[no-any-return]
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
            else:
                self.shared += 1
                self._lock.notify_all()
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value  # type: ignore[no-any-return]
        try:
            flight.value = compute()
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                self.computed += 1
                del self._flights[key]
                if flight.error is None and self.ttl > 0:
                    self._answers[key] = (self._clock() + self.ttl, flight.value)
                    self._answers.move_to_end(key)
                    while len(self._answers) > self._entries_max:
                        self._answers.popitem(last=False)
            flight.done.set()
        return flight.value  # type: ignore[no-any-return]

    def wait_for(self, predicate: Callable[[AnswerCache], bool], timeout: float) -> bool:
        """Wait until ``predicate(self)`` holds (re-checked when a request joins a computation)."""
        with self._lock:
            return self._lock.wait_for(lambda: predicate(self), timeout)


class QueryGate:
    """At most ``slots`` queries at once; :meth:`slot` waits up to ``wait`` seconds for one.

    :param slots: queries allowed at once.
    :param wait: seconds to wait for a slot before :class:`SpendBusy`.
    """

    def __init__(self, slots: int = QUERIES_AT_ONCE, *, wait: float = GATE_WAIT_SECONDS) -> None:
        if slots < 1 or wait < 0:
            raise ValueError(f"slots must be >= 1 and wait >= 0, got {slots!r} and {wait!r}")
        self.slots = slots
        self._wait = wait
        self._changed = threading.Condition()
        self.running = 0
        """Queries holding a slot now."""
        self.waiting = 0
        """Queries waiting for a slot now."""
        self.most_running = 0
        """The most queries that ever held a slot at the same time."""

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot for the duration of the ``with`` block."""
        with self._changed:
            self.waiting += 1
            self._changed.notify_all()
            try:
                if not self._changed.wait_for(lambda: self.running < self.slots, self._wait):
                    raise SpendBusy(f"all {self.slots} query slots stayed taken for {self._wait:g} s")
            finally:
                self.waiting -= 1
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self.running -= 1
                self._changed.notify_all()

    def wait_for(self, predicate: Callable[[QueryGate], bool], timeout: float) -> bool:
        """Wait until ``predicate(self)`` holds (re-checked whenever a query waits, starts or ends)."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)
