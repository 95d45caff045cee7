"""The spend page's answer cache and query gate, on their own: an injected clock, threads waiting for states."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from airflow_provider_glm.plugins._spend_cache import CACHE_SECONDS, AnswerCache, QueryGate, SpendBusy

LIMIT_S = 120.0


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_an_answer_is_kept_for_the_ttl_and_then_computed_again() -> None:
    clock = Clock()
    cache = AnswerCache(30, clock=clock)
    calls: list[int] = []

    def compute() -> int:
        calls.append(1)
        return len(calls)

    assert cache.get("k", compute) == 1
    clock.now += 29.99
    assert cache.get("k", compute) == 1
    clock.now += 0.01
    assert cache.get("k", compute) == 2
    assert cache.get("other", compute) == 3
    assert cache.computed == 3
    assert CACHE_SECONDS == 60.0, "docs/dashboard.md states this TTL"


def test_errors_are_not_kept() -> None:
    cache = AnswerCache(30, clock=Clock())
    with pytest.raises(ZeroDivisionError):
        cache.get("k", lambda: 1 // 0)
    assert cache.get("k", lambda: 7) == 7


def test_ttl_zero_keeps_nothing() -> None:
    cache = AnswerCache(0, clock=Clock())
    assert [cache.get("k", lambda n=n: n) for n in range(3)] == [0, 1, 2]


def test_least_recently_used_answers_go_first() -> None:
    cache = AnswerCache(30, entries=2, clock=Clock())
    cache.get("a", lambda: "a1")
    cache.get("b", lambda: "b1")
    cache.get("a", lambda: "a2")  # a is used again, so b is the oldest
    cache.get("c", lambda: "c1")
    assert cache.get("a", lambda: "a3") == "a1"
    assert cache.get("b", lambda: "b2") == "b2"


def test_concurrent_askers_share_one_computation() -> None:
    cache = AnswerCache(30, clock=Clock())
    started, go = threading.Event(), threading.Event()
    got: list[Any] = []

    def slow() -> str:
        started.set()
        assert go.wait(LIMIT_S)
        return "answer"

    leader = threading.Thread(target=lambda: got.append(cache.get("k", slow)))
    leader.start()
    assert started.wait(LIMIT_S)
    follower = threading.Thread(target=lambda: got.append(cache.get("k", lambda: "second computation")))
    follower.start()
    assert cache.wait_for(lambda c: c.shared == 1, LIMIT_S)
    go.set()
    leader.join(LIMIT_S)
    follower.join(LIMIT_S)
    assert got == ["answer", "answer"]
    assert cache.computed == 1


def test_a_follower_gets_the_leaders_error() -> None:
    cache = AnswerCache(30, clock=Clock())
    started, go = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def failing() -> str:
        started.set()
        assert go.wait(LIMIT_S)
        raise LookupError("boom")

    def ask(compute: Any) -> None:
        try:
            cache.get("k", compute)
        except LookupError as exc:
            errors.append(exc)

    leader = threading.Thread(target=ask, args=(failing,))
    leader.start()
    assert started.wait(LIMIT_S)
    follower = threading.Thread(target=ask, args=(lambda: "never",))
    follower.start()
    assert cache.wait_for(lambda c: c.shared == 1, LIMIT_S)
    go.set()
    leader.join(LIMIT_S)
    follower.join(LIMIT_S)
    assert [str(e) for e in errors] == ["boom", "boom"]


def test_gate_refuses_when_full_and_frees_on_exit() -> None:
    gate = QueryGate(1, wait=0)
    with gate.slot():
        assert gate.running == 1
        with pytest.raises(SpendBusy, match="all 1 query slots stayed taken for 0 s"), gate.slot():
            pass
    with gate.slot():
        assert gate.running == 1
    assert gate.running == 0
    assert gate.most_running == 1


@pytest.mark.parametrize("bad", [{"ttl": -1}, {"ttl": 1, "entries": 0}])
def test_cache_refuses_bad_settings(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="ttl must be"):
        AnswerCache(**bad)


def test_gate_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="slots must be"):
        QueryGate(0)
