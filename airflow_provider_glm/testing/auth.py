"""GLM authentication as the test server checks it: a plain Bearer key, or an HS256 JWT.

Keys shaped ``id.secret`` may also be sent as a JWT signed with ``secret`` whose JOSE header
carries ``"sign_type": "SIGN"`` and whose payload is ``{"api_key": id, "exp": ms, "timestamp": ms}``
(milliseconds). Verification uses only :mod:`hmac`, :mod:`hashlib` and :mod:`base64`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AuthFailure:
    """Why a request was refused.

    :param code: GLM business code (``"1000"``..``"1003"``).
    :param message: error message.
    """

    code: str
    message: str
    status: int = 401


def _b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_jwt(api_key: str, ttl_seconds: float = 210.0, now_ms: int | None = None) -> str:
    """Build a GLM JWT for an ``id.secret`` key, as the official SDKs do.

    :param api_key: key shaped ``id.secret``.
    :param ttl_seconds: lifetime; negative gives an already expired token.
    :param now_ms: issue time in milliseconds; the current time when None.
    :return: the compact JWT.
    """
    key_id, _, secret = api_key.partition(".")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    header = {"alg": "HS256", "sign_type": "SIGN"}
    payload = {"api_key": key_id, "exp": now + int(ttl_seconds * 1000), "timestamp": now}
    signing_input = ".".join(
        _b64url_encode(json.dumps(part, separators=(",", ":")).encode()) for part in (header, payload)
    )
    signature = hmac.new(secret.encode(), signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url_encode(signature)}"


def _verify_jwt(token: str, api_key: str) -> AuthFailure | None:
    key_id, _, secret = api_key.partition(".")
    header_b64, payload_b64, signature_b64 = token.split(".")
    try:
        header: Any = json.loads(_b64url_decode(header_b64))
        payload: Any = json.loads(_b64url_decode(payload_b64))
        signature = _b64url_decode(signature_b64)
    except (ValueError, UnicodeDecodeError):
        return AuthFailure("1002", "Invalid authentication token: undecodable JWT")
    if not isinstance(header, dict) or not isinstance(payload, dict):
        return AuthFailure("1002", "Invalid authentication token: JWT parts must be objects")
    if header.get("alg") != "HS256" or header.get("sign_type") != "SIGN":
        return AuthFailure("1002", "Invalid authentication token: JOSE header needs HS256 and sign_type SIGN")
    signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
    expected = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        return AuthFailure("1002", "Invalid authentication token: bad signature")
    if payload.get("api_key") != key_id:
        return AuthFailure("1000", "Authentication failed: JWT api_key does not match")
    exp = payload.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        return AuthFailure("1002", "Invalid authentication token: exp missing")
    if exp <= time.time() * 1000:
        return AuthFailure("1003", "Authentication token expired (exp is in milliseconds)")
    return None


def check_authorization(header: str | None, api_key: str) -> AuthFailure | None:
    """Check an ``Authorization`` header against the server key.

    :param header: the header value, or None when absent.
    :param api_key: the key the server accepts.
    :return: None when accepted, else the failure to answer.
    """
    if header is None or not header.strip():
        return AuthFailure("1001", "Authentication parameter not received in header, unable to authenticate")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return AuthFailure("1001", "Authorization header must be 'Bearer <api key or JWT>'")
    if hmac.compare_digest(token.encode(), api_key.encode()):
        return None
    key_is_pair = api_key.count(".") == 1 and all(api_key.split("."))
    if key_is_pair and token.count(".") == 2:
        return _verify_jwt(token, api_key)
    return AuthFailure("1000", "Authentication failed: unknown API key")
