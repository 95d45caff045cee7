"""Assembling a streamed answer in tests (the package's StreamAssembler over the client's chunks)."""

from __future__ import annotations

from collections.abc import Iterable

from airflow_provider_glm.client._streaming import StreamAssembler
from airflow_provider_glm.client.models import ChatCompletion, ChatCompletionChunk


def assemble(chunks: Iterable[ChatCompletionChunk], request_id: str | None = None) -> ChatCompletion:
    """One completion from a stream of chunks."""
    assembler = StreamAssembler()
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.completion(request_id)
