"""``output_columns=True``: one typed column per top-level field of ``output_schema``, filled from the
validated answer, on SQLite, PostgreSQL and MariaDB; added when the schema grows, refused when a type changes."""

from __future__ import annotations

from typing import Any, Literal

import pytest
import sqlalchemy as sa
from _databases import BACKENDS
from _nightly import Nightly
from pydantic import BaseModel, Field
from sqlalchemy.dialects import mysql

from airflow_provider_glm.sinks.sql._tables import output_column_defs

ROWS = 6


class Aspect(BaseModel):
    name: str
    good: bool


class Review(BaseModel):
    stars: int = Field(ge=1, le=5)
    score: float
    recommend: bool
    summary: str
    sentiment: Literal["positive", "mixed", "negative"]
    tags: list[str]
    aspect: Aspect


class ReviewWithLanguage(Review):
    language: str | None = None


class ReviewStarsAsText(BaseModel):
    stars: str
    score: float
    recommend: bool
    summary: str
    sentiment: Literal["positive", "mixed", "negative"]
    tags: list[str]
    aspect: Aspect


EXACT = {"stars": 4, "score": 123456.789, "recommend": True, "summary": "Fits well, battery short.",
         "sentiment": "mixed", "tags": ["lid", "battery"], "aspect": {"name": "battery", "good": False}}
KINDS = {"stars": "integer", "score": "float", "recommend": "boolean", "summary": "text", "sentiment": "text",
         "tags": "json", "aspect": "json"}


def kind_of(column_type: Any, backend: str) -> str:
    """What the database says a column is, in the docs' words."""
    if isinstance(column_type, sa.Boolean) or (backend == "mysql" and isinstance(column_type, mysql.TINYINT)):
        return "boolean"  # MariaDB's BOOLEAN is TINYINT(1)
    if isinstance(column_type, sa.Integer):
        return "integer"
    if isinstance(column_type, sa.Float):
        return "float"
    if isinstance(column_type, sa.JSON):
        return "json"
    if isinstance(column_type, (sa.Text, sa.String)):
        return "text"
    return repr(column_type)


def typed(schema: type[BaseModel]) -> list[sa.Column[Any]]:
    return output_column_defs(schema.model_json_schema())


@pytest.mark.parametrize("backend", BACKENDS)
def test_typed_columns_are_created_and_filled_from_the_validated_output(glm_conn: Any, nightly: Nightly,
                                                                       backend: str) -> None:
    nightly.seed(ROWS)
    glm_conn.answer("Review 2:", json=EXACT)
    glm_conn.answer("Review 4:", json={**EXACT, "stars": 9})
    context = nightly.night("n1", output_schema=Review, output_columns=True, max_failed_rows=1)

    columns = nightly.columns(nightly.results_table)
    found = {name: kind_of(columns[name], backend) for name in KINDS}
    if backend == "mysql":  # MariaDB's JSON is an alias of LONGTEXT (with a JSON_VALID check)
        assert {name: found[name] for name in ("tags", "aspect")} == {"tags": "text", "aspect": "text"}
        found.update(tags="json", aspect="json")
    assert found == KINDS

    results = nightly.results("n1", output_columns=typed(Review))
    assert {k: r["status"] for k, r in results.items()} == {**{str(i): "ok" for i in range(ROWS)}, "4": "failed"}
    assert {name: results["2"][name] for name in KINDS} == EXACT
    for key, row in results.items():
        if key == "4":
            assert row["error"].startswith("GLMInvalidOutputError: output does not match output_schema at stars")
            assert all(row[name] is None for name in KINDS), "invalid output leaves every typed column NULL"
            continue
        assert {name: row[name] for name in KINDS} == row["output"], f"row {key}: columns differ from output"
        assert type(row["stars"]) is int
        assert type(row["recommend"]) is bool
        assert isinstance(row["score"], float)
        assert isinstance(row["tags"], list)
        assert isinstance(row["aspect"], dict)
    assert context["ti"].xcom["usage"]["failed"] == 1

    # Raw SQL sees real types too: integers compare as integers, booleans filter as booleans.
    with nightly.engine.connect() as conn:
        high = conn.execute(sa.text(f"SELECT row_key FROM {nightly.results_table} WHERE stars >= 4 AND "
                                    "recommend = :yes AND row_key = '2'"), {"yes": True}).scalars().all()
    assert high == ["2"]

    # The next night reuses the answers, typed columns included; the row that failed is asked again.
    before = glm_conn.stats.requests
    nightly.night("n2", output_schema=Review, output_columns=True, max_failed_rows=1)
    assert glm_conn.stats.requests - before == 1
    again = nightly.results("n2", output_columns=typed(Review))
    for key, row in again.items():
        if key != "4":
            assert row["reused_from_run_id"] == "n1"
            assert {name: row[name] for name in KINDS} == {name: results[key][name] for name in KINDS}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_new_field_adds_a_column_and_a_type_change_is_refused_before_any_call(glm_conn: Any,
                                                                               nightly: Nightly) -> None:
    nightly.seed(ROWS)
    nightly.night("n1", output_schema=Review, output_columns=True)
    assert "language" not in nightly.columns(nightly.results_table)

    glm_conn.answer("Review 1:", json={**EXACT, "language": "en"})
    nightly.night("n2", output_schema=ReviewWithLanguage, output_columns=True)
    assert "language" in nightly.columns(nightly.results_table), "the column was added"
    assert glm_conn.stats.requests == 2 * ROWS, "a new schema is a new instruction: every row asked again"
    grown = typed(ReviewWithLanguage)
    assert nightly.results("n2", output_columns=grown)["1"]["language"] == "en"
    assert {r["language"] for r in nightly.results("n1", output_columns=grown).values()} == {None}
    assert {r["stars"] for r in nightly.results("n1", output_columns=grown).values()} != {None}, "old rows kept"

    with pytest.raises(ValueError, match=r"column 'stars' is .* but output_schema now makes it .*never changes"):
        nightly.night("n3", output_schema=ReviewStarsAsText, output_columns=True)
    assert glm_conn.stats.requests == 2 * ROWS, "refused before any call"
    assert nightly.results("n3") == {}
