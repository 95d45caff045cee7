"""The batch values of the test server: a scripted :class:`BatchOutcome` and the :class:`Batch` state.

:mod:`.batches` drives them through their statuses and serves them; see its docstring for the flow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_glm.testing.files import BATCH_URL, BatchLine

if TYPE_CHECKING:
    from airflow_provider_glm.testing.server import GLMTestServer

FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
CANCELLABLE = frozenset({"validating", "in_progress", "finalizing"})
COMPLETION_WINDOW_SECONDS = 24 * 3600


@dataclass(frozen=True)
class BatchOutcome:
    """How one scripted batch ends. Build it with the classmethod constructors.

    :param kind: ``"completed"``, ``"failed"``, ``"expired"`` or ``"cancelled"``.
    :param steps: extra ``in_progress`` steps.
    :param after_lines: lines answered before expiry or cancellation.
    :param message: error message of a failed batch.
    :param code: error code of a failed batch.
    :param line: input line named in a failed batch's error.
    """

    kind: str = "completed"
    steps: int = 0
    after_lines: int = 0
    message: str | None = None
    code: str = "1214"
    line: int | None = None

    @classmethod
    def completed(cls) -> BatchOutcome:
        """The normal flow (the default for unscripted batches)."""
        return cls("completed")

    @classmethod
    def slow(cls, steps: int) -> BatchOutcome:
        """Complete normally, but stay ``in_progress`` for ``1 + steps`` steps.

        :param steps: extra steps.
        """
        return cls("completed", steps=max(0, int(steps)))

    @classmethod
    def failed(cls, message: str = "Batch validation failed", code: str = "1214",
               line: int | None = None) -> BatchOutcome:
        """Fail during validation: status ``failed``, ``errors`` populated, nothing answered or billed.

        :param message: the error message.
        :param code: the error code.
        :param line: the input line the error names, if any.
        """
        return cls("failed", message=message, code=code, line=line)

    @classmethod
    def expired(cls, after_lines: int = 0, steps: int = 0) -> BatchOutcome:
        """Expire after answering (and billing) the first ``after_lines`` lines.

        :param after_lines: lines answered; the rest become ``batch_expired`` error lines.
        :param steps: extra ``in_progress`` steps before expiring.
        """
        return cls("expired", steps=max(0, int(steps)), after_lines=max(0, int(after_lines)))

    @classmethod
    def cancelled(cls, after_lines: int = 0, steps: int = 0) -> BatchOutcome:
        """Get cancelled (as by the platform) after answering the first ``after_lines`` lines.

        :param after_lines: lines answered; the rest become ``batch_cancelled`` error lines.
        :param steps: extra ``in_progress`` steps before the cancellation.
        """
        return cls("cancelled", steps=max(0, int(steps)), after_lines=max(0, int(after_lines)))


@dataclass
class Batch:
    """A batch as the server holds it (times are ``time.monotonic()`` values).

    :param id: batch id.
    :param input_file_id: input file id.
    :param lines: the input lines, copied at creation.
    :param outcome: the scripted outcome.
    :param step: seconds per status step.
    :param metadata: metadata as sent.
    :param auto_delete: delete the input file at the end.
    """

    id: str
    input_file_id: str
    lines: list[BatchLine]
    outcome: BatchOutcome
    step: float
    metadata: Any = None
    auto_delete: bool = True
    completion_window: str = "24h"
    created_wall: float = field(default_factory=time.time)
    created: float = field(default_factory=time.monotonic)
    status: str = "validating"
    phase_start: float = 0.0
    stamps: dict[str, float] = field(default_factory=dict)
    processed: int = 0
    completed: int = 0
    failed: int = 0
    outputs: list[dict[str, Any]] = field(default_factory=list)
    error_lines: list[dict[str, Any]] = field(default_factory=list)
    output_file_id: str = ""
    error_file_id: str = ""
    errors: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.phase_start = self.created

    @property
    def final(self) -> bool:
        """Whether the status is final."""
        return self.status in FINAL

    def to_dict(self, server: GLMTestServer) -> dict[str, Any]:
        """Return the batch object as answered."""
        def stamp(name: str) -> int | None:
            at = self.stamps.get(name)
            return None if at is None else server.timestamp(self.created_wall + (at - self.created))

        return {
            "id": self.id,
            "object": "batch",
            "endpoint": BATCH_URL,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": server.timestamp(self.created_wall),
            "in_progress_at": stamp("in_progress"),
            "expires_at": server.timestamp(self.created_wall + COMPLETION_WINDOW_SECONDS),
            "finalizing_at": stamp("finalizing"),
            "completed_at": stamp("completed"),
            "failed_at": stamp("failed"),
            "expired_at": stamp("expired"),
            "cancelling_at": stamp("cancelling"),
            "cancelled_at": stamp("cancelled"),
            "request_counts": {"total": len(self.lines), "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
            "errors": self.errors,
        }
