"""The docs cannot drift from the code: generated tables are current, README links resolve."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent

PLANNED: set[str] = {
    # Linked from README.md but written by other work in progress; remove an entry once its file lands.
}


def _load_generator() -> ModuleType:
    path = REPO / "scripts" / "gen_error_docs.py"
    spec = importlib.util.spec_from_file_location("gen_error_docs", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _readme_doc_links() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\((docs/[^)#\s]+\.md)(?:#[^)]*)?\)", text)
    return sorted(set(targets))


def test_errors_md_matches_code_table() -> None:
    gen = _load_generator()
    assert gen.check(REPO / "docs" / "errors.md"), (
        "docs/errors.md is out of date with error_codes.CODE_TABLE / RetryPolicy: "
        "run python scripts/gen_error_docs.py"
    )


def test_generator_check_flag_detects_drift(tmp_path: Path) -> None:
    gen = _load_generator()
    stale = tmp_path / "errors.md"
    stale.write_text(
        "x\n<!-- codes:start -->\nold\n<!-- codes:end -->\n<!-- retry:start -->\n<!-- retry:end -->\n",
        encoding="utf-8",
    )
    assert gen.main(["--check", "--path", str(stale)]) == 1
    assert gen.main(["--path", str(stale)]) == 0
    assert gen.main(["--check", "--path", str(stale)]) == 0


def test_generator_lists_every_code_rule() -> None:
    from airflow_provider_glm.client._error_codes import CODE_TABLE

    rendered = _load_generator().render_codes()
    for rule in CODE_TABLE:
        assert f"`{rule.error}`" in rendered
        assert rule.meaning in rendered


def test_readme_links_something_under_docs() -> None:
    assert "docs/errors.md" in _readme_doc_links()
    assert "docs/connections.md" in _readme_doc_links()


@pytest.mark.parametrize("target", _readme_doc_links())
def test_readme_doc_link_resolves(target: str) -> None:
    path = REPO / target
    if path.exists():
        assert path.read_text(encoding="utf-8").strip(), f"{target} is linked from README.md but empty"
    else:
        assert target in PLANNED, f"README.md links {target}, which does not exist and is not in PLANNED"


def test_connections_md_names_every_extra() -> None:
    from airflow_provider_glm.hooks import _connection as glm

    text = (REPO / "docs" / "connections.md").read_text(encoding="utf-8")
    for name in sorted(glm._KNOWN_EXTRAS | set(glm._KEY_EXTRAS)):
        assert f"`{name}`" in text, f"docs/connections.md does not mention the extra {name!r}"
