"""Credentials for the ``Authorization`` header: the API key as a bearer token, or a signed JWT.

The key is held in :class:`APIKey`, whose ``repr`` and ``str`` never show it. JWT mode (keys shaped
``id.secret``) signs ``{"api_key": id, "exp": ms, "timestamp": ms}`` with HS256 and the GLM header
``{"alg": "HS256", "sign_type": "SIGN"}``; a token is cached and replaced before it expires.
Every key, key half and token is registered for :func:`redact`, which scrubs server-sent text.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Literal

from airflow_provider_glm.constants import JWT_CACHE_SECONDS, JWT_TTL_SECONDS

__all__ = ["APIKey", "AuthMode", "Credentials", "make_jwt", "redact", "register_secret"]

AuthMode = Literal["bearer", "jwt"]


class APIKey:
    """An API key that does not print itself.

    :param value: the key as issued by the console.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value.strip():
            raise ValueError("the GLM API key is empty: put it in the connection's password field")
        self._value = value.strip()
        register_secret(self._value)
        for half in self._value.split(".", 1):
            register_secret(half)

    def reveal(self) -> str:
        """The key itself, for building the header and nothing else."""
        return self._value

    def __repr__(self) -> str:
        return "APIKey('***')"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("APIKey is not picklable: it must not travel in XCom or trigger kwargs")


def make_jwt(key: str, *, ttl_seconds: float = JWT_TTL_SECONDS, now: float | None = None) -> str:
    """Sign a GLM JWT for an ``id.secret`` key (timestamps in milliseconds, as the API expects).

    Signed with PyJWT, as the official SDKs do: header ``{"alg": "HS256", "sign_type": "SIGN", "typ": "JWT"}``.

    :param key: the ``id.secret`` API key.
    :param ttl_seconds: lifetime of the token.
    :param now: the current time in seconds (inject for tests).
    """
    key_id, sep, secret = key.partition(".")
    if not sep or not key_id or not secret:
        raise ValueError("JWT auth needs an API key shaped 'id.secret'")
    import warnings

    import jwt

    now_ms = int((time.time() if now is None else now) * 1000)
    payload = {"api_key": key_id, "exp": now_ms + int(ttl_seconds * 1000), "timestamp": now_ms}
    with warnings.catch_warnings():
        # the secret's length is the console's choice, not ours: PyJWT's advice about it is noise here
        warnings.simplefilter("ignore")
        return jwt.encode(payload, secret, algorithm="HS256", headers={"sign_type": "SIGN"})


_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]{6,}", re.IGNORECASE)
_MIN_SECRET = 6


def register_secret(value: str) -> None:
    """Remember a secret so :func:`redact` removes it from any text (API keys, their halves, tokens).

    :param value: the secret; values shorter than 6 characters are ignored (they would mangle text).
    """
    if isinstance(value, str) and len(value) >= _MIN_SECRET:
        with _SECRETS_LOCK:
            _SECRETS.add(value)


def redact(text: str) -> str:
    """``text`` with every registered secret, and any ``Bearer <token>``, replaced by ``***``.

    Applied to every string a server sends back (error messages, batch error lines, async task
    failures) before it is stored, logged or raised: a gateway that echoes the Authorization header
    must not put the key into the results table, XCom, exports or logs.
    """
    if not text:
        return text
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    return _BEARER.sub(r"\1***", text) if "earer" in text else text


class Credentials:
    """Produces the ``Authorization`` header value, caching JWTs across threads.

    :param api_key: the key.
    :param mode: ``bearer`` (default) sends the key; ``jwt`` sends a signed token.
    :param clock: wall clock in seconds (inject for tests).
    """

    def __init__(self, api_key: APIKey, mode: AuthMode = "bearer", clock: Callable[[], float] = time.time) -> None:
        if mode not in ("bearer", "jwt"):
            raise ValueError(f"auth must be 'bearer' or 'jwt', got {mode!r}")
        if mode == "jwt":
            make_jwt(api_key.reveal(), now=0)
        self._key = api_key
        self.mode: AuthMode = mode
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._issued = 0.0

    def __repr__(self) -> str:
        return f"Credentials(mode={self.mode!r}, api_key=***)"

    def authorization(self) -> str:
        """The header value, refreshing a cached JWT once it is older than the cache period."""
        if self.mode == "bearer":
            return f"Bearer {self._key.reveal()}"
        with self._lock:
            now = self._clock()
            if self._token is None or now - self._issued >= JWT_CACHE_SECONDS:
                self._token = make_jwt(self._key.reveal(), now=now)
                self._issued = now
                register_secret(self._token)
            return f"Bearer {self._token}"

    def invalidate(self) -> bool:
        """Drop a cached JWT (after code 1003); ``True`` when a fresh token can help."""
        if self.mode != "jwt":
            return False
        with self._lock:
            self._token = None
        return True
