"""Fault descriptions for :class:`~airflow_provider_glm.testing.GLMTestServer`.

A :class:`Fault` is an immutable value saying how the server should misbehave for one request.
Build one with the classmethod constructors, then queue it with ``GLMTestServer.script`` or attach
it to a body pattern with ``GLMTestServer.add_rule``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_glm.testing.answers import ScriptedAnswer

if TYPE_CHECKING:
    from collections.abc import Mapping

ERROR_MESSAGES: dict[str, str] = {
    "500": "Internal server error",
    "1000": "Authentication failed",
    "1001": "Authentication parameter not received in header, unable to authenticate",
    "1002": "Invalid authentication token, please confirm the correct token",
    "1003": "Authentication token expired, please regenerate or obtain a new one",
    "1004": "Authentication failed via the provided token",
    "1113": "Your account is in arrears, please recharge and try again",
    "1211": "Model does not exist, please check the model code",
    "1214": "Invalid parameter",
    "1222": "The API you requested does not exist",
    "1234": "Network error, please contact customer service",
    "1261": "Prompt exceeds max length",
    "1301": "The system detected potentially unsafe or sensitive content in input or generation",
    "1302": "High concurrency usage of this API, please reduce concurrency or contact customer service",
    "1303": "High frequency usage of this API, please reduce frequency or contact customer service",
    "1305": "The service may be temporarily overloaded, please try again later",
    "1312": "The model is currently overloaded, please try again later",
}

STREAM_FAULTS = frozenset({"truncated_stream", "stream_error"})
NON_GENERATING_FAULTS = frozenset({"error", "hang", "malformed_json", "html_200", "redirect", "stream_error",
                                   "echo_key"})
GARBLING_FAULTS = frozenset({"malformed_json", "html_200"})


def default_message(code: str | int) -> str:
    """Return the stock GLM message for a business code.

    :param code: business code, as a string or an int.
    :return: the message, or a generic one for unknown codes.
    """
    return ERROR_MESSAGES.get(str(code), f"Error {code}")


def error_body(code: str | int, message: str | None = None, *, top_level: bool = False) -> dict[str, Any]:
    """Build a GLM error body.

    :param code: business code, kept as given (str or int).
    :param message: message text; the stock message for ``code`` when None.
    :param top_level: give the legacy ``{"code", "msg", "message"}`` shape instead of ``{"error": {...}}``.
    :return: the JSON-ready body.
    """
    msg = message if message is not None else default_message(code)
    if top_level:
        return {"code": code, "msg": msg, "message": msg, "success": False}
    return {"error": {"code": code, "message": msg}}


@dataclass(frozen=True)
class Fault:
    """One misbehaviour of the test server, applied to one request.

    Use the classmethod constructors rather than the raw fields.

    :param kind: fault name, one of the constructor names.
    """

    kind: str
    status: int | None = None
    code: str | int | None = None
    message: str | None = None
    retry_after: float | None = None
    top_level: bool = False
    seconds: float = 0.0
    interval: float = 0.0
    chunk: int = 1
    field: str | None = None
    location: str | None = None
    nbytes: int = 0
    reason: str | None = None
    text: str | None = None
    billed: bool = False
    html: bool = False
    scripted: ScriptedAnswer | None = None

    @property
    def generates(self) -> bool:
        """Whether the request still gets (and is billed for) a generated completion."""
        return self.kind not in NON_GENERATING_FAULTS or (self.billed and self.kind in GARBLING_FAULTS)

    @classmethod
    def error(
        cls,
        status: int,
        code: str | int,
        message: str | None = None,
        retry_after: float | None = None,
        top_level: bool = False,
    ) -> Fault:
        """Answer an error; not billed.

        :param status: HTTP status.
        :param code: GLM business code, sent as given (str or int).
        :param message: error message; the stock message for ``code`` when None.
        :param retry_after: send a ``Retry-After`` header with this many seconds.
        :param top_level: send ``{"code", "msg", "message"}`` instead of ``{"error": {...}}``.
        """
        return cls("error", status=status, code=code, message=message, retry_after=retry_after,
                   top_level=top_level)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Sleep this much longer before a normal answer.

        :param seconds: extra delay on top of the server latency.
        """
        return cls("delay", seconds=float(seconds))

    @classmethod
    def hang(cls, seconds: float = 60.0) -> Fault:
        """Read the request, send nothing for ``seconds`` (or until the server stops), then close.

        :param seconds: how long to stay silent.
        """
        return cls("hang", seconds=float(seconds))

    @classmethod
    def trickle(cls, interval: float, chunk: int = 1) -> Fault:
        """Send a normal billed answer slowly: headers at once, then ``chunk`` body bytes per ``interval``.

        :param interval: seconds between body pieces.
        :param chunk: bytes per piece.
        """
        return cls("trickle", interval=float(interval), chunk=max(1, int(chunk)))

    @classmethod
    def drop_after_billing(cls) -> Fault:
        """Generate and bill the completion, then close the socket without answering."""
        return cls("drop_after_billing")

    @classmethod
    def reset_mid_body(cls) -> Fault:
        """Bill, send the headers (full Content-Length) and half the body, then close."""
        return cls("reset_mid_body")

    @classmethod
    def malformed_json(cls, billed: bool = False) -> Fault:
        """Answer 200 ``application/json`` with a cut-off JSON body; not billed by default.

        :param billed: generate and bill the completion first, then send the first half of its JSON
            body (a gateway that garbles an answer the model produced). An async submit creates
            its task (billed when it finishes) before the garbled answer.
        """
        return cls("malformed_json", billed=billed)

    @classmethod
    def html_200(cls, billed: bool = False) -> Fault:
        """Answer 200 ``text/html`` with an HTML page (a proxy or captive portal); not billed by default.

        :param billed: generate and bill the completion first, then send the HTML page instead.
            An async submit creates its task (billed when it finishes) before the page.
        """
        return cls("html_200", billed=billed)

    @classmethod
    def echo_key(cls, status: int = 401, code: str | int = "1000", html: bool = False) -> Fault:
        """Answer an error whose message echoes the request's whole ``Authorization`` header; not billed.

        The message reads ``invalid request from key <header value>`` (e.g. ``Bearer sk-...``), as
        some gateways write it.

        :param status: HTTP status.
        :param code: GLM business code of the JSON error body.
        :param html: send a ``text/html`` page carrying the message instead of a JSON body.
        """
        return cls("echo_key", status=status, code=code, html=html)

    @classmethod
    def answer(cls, *, content: str | None = None, json: Any = None,
               tool_call: Mapping[str, Any] | list[Mapping[str, Any]] | None = None,
               web_search: list[Mapping[str, Any]] | None = None,
               content_filter: list[Mapping[str, Any]] | None = None,
               finish_reason: str | None = None) -> Fault:
        """Answer normally (billed) with scripted parts; parts left out are generated as usual.

        :param content: exact assistant content.
        :param json: a JSON value (not None) answered as the content's JSON text; not with ``content``.
        :param tool_call: ``{"name", "arguments", "id"?}`` or a list of them; ``arguments`` is an
            object (sent as its JSON text) or a string (sent as is). Content stays None unless given.
        :param web_search: the ``web_search`` list to answer.
        :param content_filter: the ``content_filter`` list, e.g. ``[{"role": "assistant", "level": 1}]``.
        :param finish_reason: the finish reason; by default ``tool_calls`` with tool calls, else ``stop``.
        :raises ValueError: nothing given, or both ``content`` and ``json``.
        :raises TypeError: a part of the wrong type.
        """
        return cls("answer", scripted=ScriptedAnswer.build(
            content=content, json_value=json, tool_call=tool_call, web_search=web_search,
            content_filter=content_filter, finish_reason=finish_reason))

    @classmethod
    def missing(cls, field: str) -> Fault:
        """Answer a normal billed 200 whose JSON lacks a top-level field.

        :param field: ``"usage"`` or ``"choices"`` (any top-level key works).
        """
        return cls("missing", field=field)

    @classmethod
    def truncated_stream(cls) -> Fault:
        """Answer SSE (even without ``stream: true``): some chunks, a clean end, no ``[DONE]``; billed."""
        return cls("truncated_stream")

    @classmethod
    def stream_error(cls, code: str | int = "1234", message: str | None = None) -> Fault:
        """Answer 200 SSE: one chunk, then ``data: {"error": {...}}``, then end; not billed.

        :param code: business code in the error event.
        :param message: error message; the stock message for ``code`` when None.
        """
        return cls("stream_error", code=code, message=message)

    @classmethod
    def redirect(cls, location: str, status: int = 307) -> Fault:
        """Answer a redirect; not billed.

        :param location: value of the ``Location`` header.
        :param status: redirect status (301, 302, 303, 307, 308).
        """
        return cls("redirect", location=location, status=status)

    @classmethod
    def huge(cls, nbytes: int) -> Fault:
        """Answer a billed 200 whose content pads the body to about ``nbytes`` bytes.

        :param nbytes: target body size.
        """
        return cls("huge", nbytes=int(nbytes))

    @classmethod
    def finish(cls, reason: str) -> Fault:
        """Answer normally but with this ``finish_reason``.

        :param reason: e.g. ``"length"``, ``"sensitive"``, ``"network_error"``.
        """
        return cls("finish", reason=reason)

    @classmethod
    def content(cls, text: str) -> Fault:
        """Answer normally with exactly this content; usage is computed from it.

        :param text: the assistant content.
        """
        return cls("content", text=text)
