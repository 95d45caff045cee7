"""Assembling a streamed answer in tests (the package's StreamAssembler over the client's chunks)."""

from __future__ import annotations

from collections.abc import Iterable

from airflow_provider_glm.models import ChatCompletion, ChatCompletionChunk
from airflow_provider_glm.streaming import StreamAssembler


def assemble(chunks: Iterable[ChatCompletionChunk], request_id: str | None = None) -> ChatCompletion:
    """One completion from a stream of chunks."""
    assembler = StreamAssembler()
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.completion(request_id)
