"""Render the generated parts of ``docs/errors.md`` from the code that holds the policy.

Two blocks are generated, each between its markers:

* ``<!-- codes:start -->`` ... ``<!-- codes:end -->``: the business-code table
  (:data:`airflow_provider_glm.client._error_codes.CODE_TABLE`) and the HTTP-status rules used when a body
  carries no known code (:func:`~airflow_provider_glm.client._error_codes.rule_for_status`), each with what
  ``GLMChatOperator`` does with the resulting error (:data:`airflow_provider_glm.rows._outcomes.FATAL_ERRORS`).
* ``<!-- retry:start -->`` ... ``<!-- retry:end -->``: the defaults of
  :class:`~airflow_provider_glm.client.retry.RetryPolicy`.

Usage::

    python scripts/gen_error_docs.py          # rewrite docs/errors.md
    python scripts/gen_error_docs.py --check  # exit 1 when docs/errors.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from airflow_provider_glm import exceptions
from airflow_provider_glm.client import _error_codes as error_codes
from airflow_provider_glm.client._error_codes import CODE_TABLE, RETRYABLE_STATUS, CodeRule, rule_for_status
from airflow_provider_glm.client.retry import RetryPolicy

__all__ = ["DOC_PATH", "check", "render", "render_codes", "render_retry", "update"]

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "errors.md"
BLOCKS = ("codes", "retry")


def _operator_action(class_name: str) -> str:
    """What ``GLMChatOperator`` does with a row whose call ended in this error class."""
    from airflow_provider_glm.rows._outcomes import FATAL_ERRORS

    cls = getattr(exceptions, class_name)
    if issubclass(cls, FATAL_ERRORS):
        return "row `failed`; stop dispatching; task fails, no Airflow retry"
    if issubclass(cls, exceptions.GLMContentFilterError):
        return "row `filtered`"
    return "row `failed`"


def _codes(rule: CodeRule) -> str:
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in rule.codes)


def _attempts(max_attempts: int | None, retryable: bool) -> str:
    if not retryable:
        return "1"
    if max_attempts is None:
        return "`max_retries` + 1"
    return f"min(`max_retries` + 1, {max_attempts})"


def render_codes() -> str:
    """The business-code table and the status-only table, as Markdown."""
    lines = [
        "| business code | error class | retried | attempts at most | meaning | in `GLMChatOperator` row mode |",
        "|---|---|---|---|---|---|",
    ]
    for rule in sorted(CODE_TABLE, key=lambda r: min(lo for lo, _ in r.codes)):
        lines.append(
            f"| {_codes(rule)} | `{rule.error}` | {'yes' if rule.retryable else 'no'} "
            f"| {_attempts(rule.max_attempts, rule.retryable)} | {rule.meaning} "
            f"| {_operator_action(rule.error)} |"
        )
    known = sorted(set(getattr(error_codes, "_STATUS_ERRORS", {})) | set(RETRYABLE_STATUS))
    other_4xx = next(s for s in range(400, 500) if s not in known)
    other_5xx = next(s for s in range(500, 600) if s not in known)
    statuses: list[tuple[str, int]] = [(str(s), s) for s in known if s < 500]
    statuses.append(("any other 4xx", other_4xx))
    statuses += [(str(s), s) for s in known if s >= 500]
    statuses.append(("any other 5xx", other_5xx))
    lines += [
        "",
        "When the body has no business code, or a code the table above does not list, the HTTP status decides:",
        "",
        "| HTTP status | error class | retried | in `GLMChatOperator` row mode |",
        "|---|---|---|---|",
    ]
    for label, status in statuses:
        name, retryable = rule_for_status(status)
        lines.append(f"| {label} | `{name}` | {'yes' if retryable else 'no'} | {_operator_action(name)} |")
    return "\n".join(lines)


def render_retry() -> str:
    """The retry policy's defaults, as a Markdown table."""
    policy = RetryPolicy()
    rows = [
        ("`max_retries`", f"{policy.max_retries}", "retries after the first attempt (connection extra `max_retries`)"),
        ("`backoff_base`", f"{policy.backoff_base:g} s", "ceiling of the first backoff; doubles per attempt"),
        ("`backoff_cap`", f"{policy.backoff_cap:g} s", "largest backoff ceiling"),
        ("`retry_after_cap`", f"{policy.retry_after_cap:g} s", "longest `Retry-After` honoured"),
    ]
    lines = ["| setting | default | meaning |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {meaning} |" for name, value, meaning in rows]
    return "\n".join(lines)


def render() -> dict[str, str]:
    """Every generated block by name."""
    return {"codes": render_codes(), "retry": render_retry()}


def update(text: str) -> str:
    """``text`` with every generated block replaced by its current rendering.

    :raises ValueError: a block's markers are missing or out of order.
    """
    for name, body in render().items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        head, sep, rest = text.partition(start)
        if not sep:
            raise ValueError(f"marker {start} not found")
        _, sep, tail = rest.partition(end)
        if not sep:
            raise ValueError(f"marker {end} not found after {start}")
        text = f"{head}{start}\n{body}\n{end}{tail}"
    return text


def check(path: Path = DOC_PATH) -> bool:
    """Whether ``path`` already holds the current rendering of every block."""
    text = path.read_text(encoding="utf-8")
    return update(text) == text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    parser.add_argument("--path", type=Path, default=DOC_PATH, help="the Markdown file (default docs/errors.md)")
    args = parser.parse_args(argv)
    if args.check:
        if check(args.path):
            return 0
        print(f"{args.path} is out of date: run python scripts/gen_error_docs.py", file=sys.stderr)
        return 1
    text = args.path.read_text(encoding="utf-8")
    new = update(text)
    if new != text:
        args.path.write_text(new, encoding="utf-8")
        print(f"updated {args.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
