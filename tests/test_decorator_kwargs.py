"""``@task.glm`` passes the function the context entries it names, as TaskFlow does (our own helper:
Airflow 3.1's task SDK has none to import)."""

from __future__ import annotations

from typing import Any

from airflow_provider_glm.decorators.glm import _call_kwargs

CONTEXT = {"ds": "2026-11-30", "ti": object(), "params": {"n": 1}, "ticket": {"text": "hi"}}


def test_only_the_named_entries_after_the_positional_args() -> None:
    def prompt(ticket: dict[str, Any], ds: str, missing: str = "default") -> str:
        return ""

    assert _call_kwargs(prompt, [{"text": "given"}], CONTEXT) == {"ds": "2026-11-30"}
    assert _call_kwargs(prompt, [], CONTEXT) == {"ticket": {"text": "hi"}, "ds": "2026-11-30"}


def test_var_keyword_takes_the_whole_context() -> None:
    def prompt(ticket: dict[str, Any], **context: Any) -> str:
        return ""

    assert _call_kwargs(prompt, [{}], CONTEXT) == CONTEXT


def test_star_args_do_not_shift_the_names() -> None:
    def prompt(*tickets: Any, params: dict[str, Any]) -> str:
        return ""

    assert _call_kwargs(prompt, [1, 2], CONTEXT) == {"params": {"n": 1}}
