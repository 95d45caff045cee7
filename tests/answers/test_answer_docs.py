"""The docs of the whole answer show what runs: the cookbook's code is the example DAG's, the anchors resolve."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OPERATOR_MD = (REPO / "docs" / "operator.md").read_text(encoding="utf-8")
ENTRY = "### Extract fields with function calling (dags/glm_extract_fields.py)"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip("# ").lower())
    return text.replace(" ", "-")


def test_the_cookbook_entry_shows_the_dag_as_it_runs() -> None:
    entry = OPERATOR_MD.split(ENTRY, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    code = entry.split("```python\n", 1)[1].split("```", 1)[0]
    dag = {line.strip() for line in (REPO / "dags" / "glm_extract_fields.py").read_text().splitlines()}
    missing = [line for line in code.splitlines() if line.strip() and line.strip() not in dag]
    assert missing == [], "docs/operator.md shows lines the example DAG does not have"


def _anchors(markdown: str) -> set[str]:
    """Every heading's anchor; a repeated one gets ``-1``, ``-2``, ... as on GitHub."""
    seen: dict[str, int] = {}
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        in_code ^= line.lstrip().startswith("```")
        if in_code or not line.startswith("#"):
            continue
        anchor = _anchor(line)
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        anchors.add(f"{anchor}-{count}" if count else anchor)
    return anchors


def test_links_to_the_whole_answer_resolve() -> None:
    anchors = _anchors(OPERATOR_MD)
    assert "the-whole-answer-tool-calls-web-search-content-filter-images" in anchors
    for target in re.findall(r"\]\(#([^)]+)\)", OPERATOR_MD):
        assert target in anchors, f"docs/operator.md links #{target}, which no heading makes"
    batch = (REPO / "docs" / "batch.md").read_text(encoding="utf-8")
    assert "operator.md#the-whole-answer-tool-calls-web-search-content-filter-images" in batch


def test_the_export_key_order_is_the_documented_one() -> None:
    from airflow_provider_glm.sinks._objectstorage import FIELDS

    batch = (REPO / "docs" / "batch.md").read_text(encoding="utf-8")
    listed = batch.split("with these keys in this order:\n\n```\n", 1)[1].split("```", 1)[0]
    assert [name.strip() for name in listed.replace("\n", " ").split(",")] == list(FIELDS)
