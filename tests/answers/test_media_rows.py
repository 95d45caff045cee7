"""Per-row images: each row's URL or base64 data goes into its own ``image_url`` part, and what cannot be
sent is refused before the first call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_glm.operators.chat import GLMChatOperator
from airflow_provider_glm.rows._rendering import MAX_INLINE_MEDIA_BYTES, MAX_MEDIA_URL_LENGTH
from airflow_provider_glm.sinks.sql import SQLSink

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
"""A 1x1 PNG, base64."""
PRODUCTS = [
    {"sku": "SKU-1", "image": "https://cdn.example.com/products/sku-1.jpg?size=large&v=2"},
    {"sku": "SKU-2", "image": f"data:image/png;base64,{PNG}"},
    {"sku": "SKU-3", "image": PNG},
]
DESCRIBE = [{"role": "user", "content": [
    {"type": "text", "text": "Describe {{ row.sku }} for the catalogue."},
    {"type": "image_url", "image_url": {"url": "{{ row.image }}"}},
]}]


def describe_operator(rows: list[dict[str, Any]], messages: list[dict[str, Any]] = DESCRIBE,
                      **kwargs: Any) -> GLMChatOperator:
    return GLMChatOperator(task_id="glm", model="glm-4.5v", rows=rows, row_key="sku", messages=messages, **kwargs)


def test_each_row_sends_its_own_image_part(glm_conn: Any, context: dict[str, Any]) -> None:
    values = describe_operator(PRODUCTS).execute(context)

    sent = {request.body["messages"][0]["content"][0]["text"]: request.body for request in glm_conn.requests}
    assert len(sent) == 3
    for product in PRODUCTS:
        body = sent[f"Describe {product['sku']} for the catalogue."]
        assert body["model"] == "glm-4.5v"
        assert body["messages"] == [{"role": "user", "content": [
            {"type": "text", "text": f"Describe {product['sku']} for the catalogue."},
            {"type": "image_url", "image_url": {"url": product["image"]}},
        ]}], "the URL or data is the row's value, unchanged"
    assert values == [f"Summary: Describe {p['sku']} for the catalogue." for p in PRODUCTS]
    assert DESCRIBE[0]["content"][1]["image_url"]["url"] == "{{ row.image }}", "the template is left as it was"


def test_a_row_value_that_looks_like_a_template_is_sent_literally(glm_conn: Any, context: dict[str, Any]) -> None:
    describe_operator([{"sku": "{{ 7*7 }}", "image": "https://cdn.example.com/{{ 7*7 }}.jpg"}]).execute(context)
    (part_text, part_image) = glm_conn.requests[0].body["messages"][0]["content"]
    assert part_text["text"] == "Describe {{ 7*7 }} for the catalogue."
    assert part_image["image_url"]["url"] == "https://cdn.example.com/{{ 7*7 }}.jpg"


OVERSIZED = "data:image/png;base64," + "A" * (MAX_INLINE_MEDIA_BYTES * 4 // 3 + 8)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        ("file:///etc/passwd", "URL scheme 'file' is not allowed"),
        ("  FILE:///etc/passwd", "URL scheme 'file' is not allowed"),
        ("ftp://files.example.com/sku.png", "URL scheme 'ftp' is not allowed"),
        ("javascript:alert(document.cookie)", "URL scheme 'javascript' is not allowed"),
        ("", "is empty"),
        ("   ", "is empty"),
        (None, "is empty"),
        ("data:image/png;base64,", "is empty"),
        ("https:///sku.png", "has no host"),
        ("data:image/png,rawbytes", "a data URL must be base64"),
        ("not a picture at all!", "not a URL and not valid base64 data"),
        ("https://cdn.example.com/" + "a" * MAX_MEDIA_URL_LENGTH, f"URL longer than {MAX_MEDIA_URL_LENGTH}"),
        (OVERSIZED, f"inline data larger than {MAX_INLINE_MEDIA_BYTES} bytes"),
    ],
    ids=["file", "file-upper-spaced", "ftp", "javascript", "empty", "blank", "none", "empty-data-url",
         "no-host", "data-not-base64", "neither", "url-too-long", "data-too-large"],
)
def test_what_cannot_be_sent_is_refused_before_any_call(glm_conn: Any, context: dict[str, Any],
                                                        image: Any, match: str) -> None:
    rows = [*PRODUCTS[:2], {"sku": "SKU-bad", "image": image}]
    with pytest.raises(ValueError, match=match) as refused:
        describe_operator(rows).execute(context)
    assert "row 'SKU-bad': messages[0].content[1].image_url.url" in str(refused.value), "names the row and place"
    assert glm_conn.stats.requests == 0, "the good rows before it were not sent either"


def test_audio_takes_base64_only_and_single_mode_is_checked_too(glm_conn: Any, context: dict[str, Any]) -> None:
    speak = [{"role": "user", "content": [
        {"type": "text", "text": "Transcribe {{ row.sku }}."},
        {"type": "input_audio", "input_audio": {"data": "{{ row.image }}", "format": "wav"}},
    ]}]
    with pytest.raises(ValueError, match="input_audio.data: URL scheme 'https' is not allowed"):
        describe_operator(PRODUCTS[:1], messages=speak).execute(context)
    single = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                           {"type": "video_url", "video_url": {"url": "file:///srv/media/clip.mp4"}}]}]
    with pytest.raises(ValueError, match="video_url.url: URL scheme 'file' is not allowed"):
        GLMChatOperator(task_id="glm", model="glm-4.5v", messages=single).execute(context)
    assert glm_conn.stats.requests == 0


def test_rows_from_a_query_stop_at_the_first_bad_value(glm_conn: Any, context: dict[str, Any], tmp_path: Path) -> None:
    """``source_sql`` renders rows as they stream: rows before a bad value may have been sent (the others
    are recorded skipped with the reason), none at or after it."""
    url = f"sqlite:///{tmp_path / 'w.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE products (sku TEXT, image TEXT)"))
        conn.execute(sa.text("INSERT INTO products VALUES (:sku, :image)"),
                     [{"sku": f"S{i}", "image": "file:///srv/s3.png" if i == 3 else PNG} for i in range(6)])
    engine.dispose()
    op = GLMChatOperator(task_id="glm", model="glm-4.5v", source_sql="SELECT sku, image FROM products ORDER BY sku",
                         row_key="sku", messages=DESCRIBE, sqlalchemy_url=url, source_chunk_size=2,
                         max_concurrency=1)
    with pytest.raises(ValueError, match="row 'S3': messages.0..content.1..image_url.url: URL scheme 'file'"):
        op.execute(context)
    sent = {r.body["messages"][0]["content"][0]["text"] for r in glm_conn.requests}
    sink = SQLSink.from_url(url)
    try:
        results = {row["row_key"]: row for row in sink.results()}
    finally:
        sink.dispose()
    assert set(results) <= {"S0", "S1", "S2"}, "no row at or after the bad one was rendered into a request"
    assert sent == {f"Describe {key} for the catalogue." for key, row in results.items() if row["status"] == "ok"}
    for row in results.values():
        if row["status"] != "ok":
            assert row["status"] == "skipped"
            assert row["error"].startswith("not sent: source_sql row 4: row 'S3'"), "read ahead, not sent"
