"""The business-code table (``error_codes.CODE_TABLE``) and the error tree built from it.

The rows below restate the table of ``glm-api.md``; a rule added to ``CODE_TABLE`` without a row
here fails :func:`test_every_rule_has_a_row`.
"""

from __future__ import annotations

import json
import pickle

import pytest

from airflow_provider_glm import exceptions as exc_mod
from airflow_provider_glm.client._error_codes import CODE_TABLE, RETRYABLE_STATUS, rule_for_code, rule_for_status
from airflow_provider_glm.exceptions import (
    GLMAuthenticationError,
    GLMBadRequestError,
    GLMContentFilterError,
    GLMError,
    GLMInsufficientBalanceError,
    GLMPermissionError,
    GLMQuotaExceededError,
    GLMRateLimitError,
    GLMServerError,
    GLMTimeoutError,
    error_from_body,
    error_from_response,
)

# (business code, usual HTTP status, error class, retryable, attempts cap from the rule)
CODE_ROWS = [
    ("500", 500, GLMServerError, True, None),
    ("1234", 500, GLMServerError, True, None),
    ("1302", 429, GLMRateLimitError, True, None),
    ("1303", 429, GLMRateLimitError, True, None),
    ("1305", 429, GLMRateLimitError, True, None),
    ("1312", 429, GLMRateLimitError, True, None),
    ("1120", 500, GLMServerError, True, 2),
    ("1230", 500, GLMServerError, True, 2),
    ("1000", 401, GLMAuthenticationError, False, None),
    ("1001", 401, GLMAuthenticationError, False, None),
    ("1002", 401, GLMAuthenticationError, False, None),
    ("1003", 401, GLMAuthenticationError, False, None),
    ("1004", 401, GLMAuthenticationError, False, None),
    ("1110", 401, GLMPermissionError, False, None),
    ("1111", 401, GLMPermissionError, False, None),
    ("1112", 429, GLMPermissionError, False, None),
    ("1121", 401, GLMPermissionError, False, None),
    ("1113", 429, GLMInsufficientBalanceError, False, None),
    ("1200", 400, GLMBadRequestError, False, None),
    ("1210", 400, GLMBadRequestError, False, None),
    ("1211", 400, GLMBadRequestError, False, None),
    ("1212", 400, GLMBadRequestError, False, None),
    ("1213", 400, GLMBadRequestError, False, None),
    ("1214", 400, GLMBadRequestError, False, None),
    ("1215", 400, GLMBadRequestError, False, None),
    ("1220", 403, GLMPermissionError, False, None),
    ("1221", 403, GLMPermissionError, False, None),
    ("1222", 404, GLMPermissionError, False, None),
    ("1231", 400, GLMBadRequestError, False, None),
    ("1261", 400, GLMBadRequestError, False, None),
    ("1300", 400, GLMContentFilterError, False, None),
    ("1301", 400, GLMContentFilterError, False, None),
    ("1304", 429, GLMQuotaExceededError, False, None),
    ("1308", 429, GLMQuotaExceededError, False, None),
    ("1309", 429, GLMQuotaExceededError, False, None),
    ("1310", 429, GLMQuotaExceededError, False, None),
    ("1311", 429, GLMQuotaExceededError, False, None),
    ("1313", 429, GLMQuotaExceededError, False, None),
]

# HTTP status without a business code -> (error class, retryable)
STATUS_ROWS = [
    (400, GLMBadRequestError, False),
    (401, GLMAuthenticationError, False),
    (403, GLMPermissionError, False),
    (404, GLMBadRequestError, False),
    (408, GLMTimeoutError, True),
    (409, GLMServerError, True),
    (413, GLMBadRequestError, False),
    (418, GLMBadRequestError, False),
    (422, GLMBadRequestError, False),
    (429, GLMRateLimitError, True),
    (500, GLMServerError, True),
    (502, GLMServerError, True),
    (503, GLMServerError, True),
    (504, GLMServerError, True),
    (520, GLMServerError, True),
    (599, GLMServerError, True),
]


def body(code: object, message: str = "boom") -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


@pytest.mark.parametrize(("code", "status", "cls", "retryable", "cap"), CODE_ROWS)
def test_code_row(code: str, status: int, cls: type[GLMError], retryable: bool, cap: int | None) -> None:
    error = error_from_response(status, body(code), request_id="req-1")
    assert type(error) is cls
    assert error.retryable is retryable
    assert error.max_attempts == cap
    assert (error.status_code, error.code, error.request_id, error.message) == (status, code, "req-1", "boom")


def test_every_rule_has_a_row() -> None:
    rows = {int(code) for code, *_ in CODE_ROWS}
    for rule in CODE_TABLE:
        for lo, hi in rule.codes:
            assert set(range(lo, hi + 1)) <= rows, f"{rule.meaning}: codes {lo}-{hi} lack a test row"


def test_rules_do_not_overlap_and_name_real_classes() -> None:
    seen: dict[int, str] = {}
    for rule in CODE_TABLE:
        assert issubclass(getattr(exc_mod, rule.error), GLMError)
        for lo, hi in rule.codes:
            for code in range(lo, hi + 1):
                assert code not in seen, f"code {code} in two rules: {seen[code]!r} and {rule.meaning!r}"
                seen[code] = rule.meaning
                assert rule_for_code(code) is rule


def test_1113_beats_its_429_status() -> None:
    error = error_from_response(429, body("1113"))
    assert isinstance(error, GLMInsufficientBalanceError)
    assert not error.retryable


def test_business_code_beats_a_retryable_status() -> None:
    error = error_from_response(503, body("1214"))
    assert isinstance(error, GLMBadRequestError)
    assert not error.retryable


@pytest.mark.parametrize(("status", "cls", "retryable"), STATUS_ROWS)
@pytest.mark.parametrize("content", [b"", b"<html>Bad Gateway</html>", b'{"error": {"message": "no code"}}',
                                     b'{"error": {"code": "", "message": "empty"}}', body("99999")],
                         ids=["empty", "html", "no-code", "empty-code", "unknown-code"])
def test_status_without_known_code(status: int, cls: type[GLMError], retryable: bool, content: bytes) -> None:
    error = error_from_response(status, content)
    assert type(error) is cls
    assert error.retryable is retryable
    assert error.max_attempts is None
    assert rule_for_status(status) == (cls.__name__, retryable)


def test_retryable_status_set_matches_the_doc() -> None:
    assert {408, 409, 429} <= RETRYABLE_STATUS
    assert all(s >= 500 or s in (408, 409, 429) for s in RETRYABLE_STATUS)
    assert rule_for_code(9999) is None


@pytest.mark.parametrize(
    ("payload", "code", "message"),
    [
        ({"error": {"code": "1302", "message": "busy"}}, "1302", "busy"),
        ({"error": {"code": 1302, "message": "busy"}}, "1302", "busy"),
        ({"error": {"code": " 1302 ", "message": "busy"}}, "1302", "busy"),
        ({"code": 1302, "msg": "busy", "success": False}, "1302", "busy"),
        ({"code": "1302", "message": "busy"}, "1302", "busy"),
        ({"error": {"code": "1302"}}, "1302", "concurrency too high"),
    ],
    ids=["str", "int", "padded", "top-level-int-msg", "top-level-str", "no-message"],
)
def test_lenient_error_bodies(payload: dict[str, object], code: str, message: str) -> None:
    error = error_from_body(429, payload)
    assert isinstance(error, GLMRateLimitError)
    assert (error.code, error.message) == (code, message)


def test_request_id_from_body_and_retry_after_kept() -> None:
    payload = json.dumps({"error": {"code": "1305", "message": "x"}, "request_id": "rid-9"}).encode()
    error = error_from_response(429, payload, retry_after=2.5)
    assert (error.request_id, error.retry_after) == ("rid-9", 2.5)


def test_error_text_names_status_code_and_request_id() -> None:
    error = error_from_response(429, body("1302", "slow down"), request_id="rid-1")
    assert str(error) == "slow down (HTTP 429, code 1302, request_id rid-1)"
    assert repr(error) == "GLMRateLimitError('slow down', status_code=429, code='1302')"
    assert str(GLMServerError("plain")) == "plain"


@pytest.mark.parametrize(("code", "status", "cls", "retryable", "cap"), CODE_ROWS[:8])
def test_errors_pickle_round_trip(code: str, status: int, cls: type[GLMError], retryable: bool,
                                  cap: int | None) -> None:
    error = error_from_response(status, body(code), request_id="rid", retry_after=1.0)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert (copy.message, copy.status_code, copy.code, copy.request_id, copy.retryable, copy.retry_after,
            copy.max_attempts) == ("boom", status, code, "rid", retryable, 1.0, cap)
