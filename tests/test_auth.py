"""Authentication: the bearer header, GLM JWTs (claims in milliseconds, HS256, sign_type SIGN), caching."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest

from airflow_provider_glm.client import AsyncGLMClient, GLMClient
from airflow_provider_glm.client._auth import APIKey, Credentials, make_jwt
from airflow_provider_glm.constants import JWT_CACHE_SECONDS, JWT_TTL_SECONDS
from airflow_provider_glm.exceptions import GLMAuthenticationError
from airflow_provider_glm.testing import Fault, GLMTestServer

KEY_ID = "a1b2c3d4e5"
SECRET = "s3cr3t-Pa55word-0123456789"
PAIR_KEY = f"{KEY_ID}.{SECRET}"
MESSAGES = [{"role": "user", "content": "hello"}]


def b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def decode(authorization: str, secret: str = SECRET) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a ``Bearer <jwt>`` header, check its HS256 signature, return (header, payload)."""
    scheme, _, token = authorization.partition(" ")
    assert scheme == "Bearer"
    header_b64, payload_b64, signature_b64 = token.split(".")
    expected = hmac.new(secret.encode(), f"{header_b64}.{payload_b64}".encode(), hashlib.sha256).digest()
    assert hmac.compare_digest(expected, b64decode(signature_b64)), "bad signature"
    assert "=" not in token
    return json.loads(b64decode(header_b64)), json.loads(b64decode(payload_b64))


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- APIKey and Credentials, unit -------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "   ", None, 123])
def test_empty_or_odd_key_rejected(value: Any) -> None:
    with pytest.raises(ValueError, match="password field"):
        APIKey(value)


def test_key_is_stripped() -> None:
    assert APIKey("  sk-abc \n").reveal() == "sk-abc"


def test_bearer_header_exact() -> None:
    credentials = Credentials(APIKey("sk-plain-key"))
    assert credentials.authorization() == "Bearer sk-plain-key"
    assert credentials.invalidate() is False
    assert credentials.authorization() == "Bearer sk-plain-key"


@pytest.mark.parametrize("mode", ["Bearer", "basic", ""])
def test_unknown_mode_rejected(mode: str) -> None:
    with pytest.raises(ValueError, match="auth must be 'bearer' or 'jwt'"):
        Credentials(APIKey("k"), mode)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["no-dot-key", ".secret-only", "id-only.", "."])
def test_jwt_mode_needs_id_dot_secret(key: str) -> None:
    with pytest.raises(ValueError, match="id.secret") as info:
        Credentials(APIKey(key), "jwt")
    assert "secret-only" not in str(info.value)


def test_make_jwt_claims_in_milliseconds() -> None:
    token = make_jwt(PAIR_KEY, now=1_700_000_000.25, ttl_seconds=210)
    header, payload = decode(f"Bearer {token}")
    assert header == {"alg": "HS256", "sign_type": "SIGN", "typ": "JWT"}
    assert payload == {"api_key": KEY_ID, "timestamp": 1_700_000_000_250, "exp": 1_700_000_210_250}


def test_secret_with_dots_signs_with_everything_after_first_dot() -> None:
    token = make_jwt("kid.part1.part2", now=10.0)
    _, payload = decode(f"Bearer {token}", secret="part1.part2")
    assert payload["api_key"] == "kid"


def test_jwt_cached_then_refreshed_after_cache_period() -> None:
    clock = FakeClock()
    credentials = Credentials(APIKey(PAIR_KEY), "jwt", clock=clock)
    first = credentials.authorization()
    _, payload = decode(first)
    assert payload["timestamp"] == int(clock.now * 1000)
    assert payload["exp"] - payload["timestamp"] == JWT_TTL_SECONDS * 1000
    clock.now += JWT_CACHE_SECONDS - 0.001
    assert credentials.authorization() == first
    clock.now += 0.001
    refreshed = credentials.authorization()
    assert refreshed != first
    assert decode(refreshed)[1]["timestamp"] == int(clock.now * 1000)
    clock.now += 1
    assert credentials.authorization() == refreshed


def test_invalidate_forces_a_new_token() -> None:
    clock = FakeClock()
    credentials = Credentials(APIKey(PAIR_KEY), "jwt", clock=clock)
    first = credentials.authorization()
    clock.now += 1
    assert credentials.authorization() == first
    assert credentials.invalidate() is True
    assert credentials.authorization() != first


# --- against the server ------------------------------------------------------------------------------


def test_bearer_header_sent(glm_server: GLMTestServer) -> None:
    with GLMClient(glm_server.api_key, base_url=glm_server.base_url) as client:
        client.chat_completion("glm-4.5", MESSAGES)
    headers = glm_server.requests[0].headers
    assert headers["authorization"] == "Bearer test-key"
    assert headers["content-type"] == "application/json"


def test_wrong_bearer_key_refused(glm_server: GLMTestServer) -> None:
    with GLMClient("not-the-key", base_url=glm_server.base_url, sleep=lambda s: None) as client, \
            pytest.raises(GLMAuthenticationError, match="HTTP 401, code 1000"):
        client.chat_completion("glm-4.5", MESSAGES)
    assert glm_server.stats.requests == 1


@pytest.mark.glm_server(api_key=PAIR_KEY)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_jwt_sent_and_accepted(glm_server: GLMTestServer, mode: str) -> None:
    before = time.time() * 1000
    if mode == "sync":
        with GLMClient(PAIR_KEY, base_url=glm_server.base_url, auth="jwt") as client:
            client.chat_completion("glm-4.5", MESSAGES)
            client.chat_completion("glm-4.5", MESSAGES)
    else:
        async def run() -> None:
            async with AsyncGLMClient(PAIR_KEY, base_url=glm_server.base_url, auth="jwt") as client:
                await client.chat_completion("glm-4.5", MESSAGES)
                await client.chat_completion("glm-4.5", MESSAGES)

        asyncio.run(run())
    after = time.time() * 1000
    sent = [r.headers["authorization"] for r in glm_server.requests]
    assert [r.status for r in glm_server.requests] == [200, 200]
    assert sent[0] == sent[1], "the token is cached between calls"
    header, payload = decode(sent[0])
    assert header == {"alg": "HS256", "sign_type": "SIGN", "typ": "JWT"}
    assert set(payload) == {"api_key", "exp", "timestamp"}
    assert payload["api_key"] == KEY_ID
    assert before - 1 <= payload["timestamp"] <= after + 1
    assert payload["exp"] == payload["timestamp"] + JWT_TTL_SECONDS * 1000
    assert SECRET not in sent[0]


@pytest.mark.glm_server(api_key=PAIR_KEY)
def test_bearer_mode_with_pair_key_sends_the_key(glm_server: GLMTestServer) -> None:
    with GLMClient(PAIR_KEY, base_url=glm_server.base_url) as client:
        client.chat_completion("glm-4.5", MESSAGES)
    assert glm_server.requests[0].headers["authorization"] == f"Bearer {PAIR_KEY}"


def jwt_client(srv: GLMTestServer, clock: FakeClock, sleeps: list[float]) -> GLMClient:
    client = GLMClient(PAIR_KEY, base_url=srv.base_url, auth="jwt", sleep=sleeps.append)
    client.core.credentials = Credentials(APIKey(PAIR_KEY), "jwt", clock=clock)
    return client


@pytest.mark.glm_server(api_key=PAIR_KEY)
def test_1003_re_signs_once(glm_server: GLMTestServer) -> None:
    clock = FakeClock(time.time())
    sleeps: list[float] = []
    glm_server.script(Fault.error(401, "1003"))
    with jwt_client(glm_server, clock, sleeps) as client:
        first_token = client.core.credentials.authorization()
        clock.now += 1
        answer = client.chat_completion("glm-4.5", MESSAGES)
    sent = [r.headers["authorization"] for r in glm_server.requests]
    assert [r.status for r in glm_server.requests] == [401, 200]
    assert sent[0] == first_token
    assert sent[1] != sent[0]
    assert abs(decode(sent[1])[1]["timestamp"] - decode(sent[0])[1]["timestamp"] - 1000) <= 1
    assert answer.call_info.attempts == 2
    assert sleeps == [0.0]


@pytest.mark.glm_server(api_key=PAIR_KEY)
def test_second_1003_is_final(glm_server: GLMTestServer) -> None:
    glm_server.script(Fault.error(401, "1003"), Fault.error(401, "1003"), Fault.error(401, "1003"))
    with jwt_client(glm_server, FakeClock(time.time()), []) as client, \
            pytest.raises(GLMAuthenticationError, match="code 1003"):
        client.chat_completion("glm-4.5", MESSAGES)
    assert glm_server.stats.requests == 2


def test_1003_in_bearer_mode_is_final(glm_server: GLMTestServer) -> None:
    glm_server.script(Fault.error(401, "1003"))
    with GLMClient(glm_server.api_key, base_url=glm_server.base_url, sleep=lambda s: None) as client, \
            pytest.raises(GLMAuthenticationError, match="code 1003"):
        client.chat_completion("glm-4.5", MESSAGES)
    assert glm_server.stats.requests == 1


@pytest.mark.glm_server(api_key=PAIR_KEY)
def test_expired_cached_token_is_refreshed(glm_server: GLMTestServer) -> None:
    clock = FakeClock(time.time() - JWT_CACHE_SECONDS - 10)
    with jwt_client(glm_server, clock, []) as client:
        client.chat_completion("glm-4.5", MESSAGES)
        clock.now = time.time()
        client.chat_completion("glm-4.5", MESSAGES)
    first, second = (decode(r.headers["authorization"])[1] for r in glm_server.requests)
    assert second["timestamp"] - first["timestamp"] >= (JWT_CACHE_SECONDS + 10) * 1000 - 1
    assert [r.status for r in glm_server.requests] == [200, 200]
