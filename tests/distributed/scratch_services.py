"""The outside services a Celery cluster needs, borrowed for one run and given back clean.

:func:`scratch_database` creates a PostgreSQL database with a unique name and drops it afterwards;
:func:`scratch_redis_db` claims an empty Redis database number and flushes only that one afterwards;
:func:`unreachable` says why a server does not answer (``None`` when it does). No network beyond the
configured servers (127.0.0.1 by default) is touched.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

POSTGRES_URL = os.environ.get("GLM_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
"""Any database on the PostgreSQL server to use; only the server part matters here."""
REDIS_URL = os.environ.get("GLM_TEST_REDIS_URL", "redis://127.0.0.1:6379")
"""The Redis server, without a database number."""
CLAIM_KEY = "glm-celery-harness:claimed-by"
CLAIM_TTL_SECONDS = 6 * 3600
"""A claim outlives any run, but not a crashed harness forever."""


def unreachable(postgres_url: str = POSTGRES_URL, redis_url: str = REDIS_URL) -> str | None:
    """Why the PostgreSQL or Redis server cannot be used, or None when both answer.

    :param postgres_url: SQLAlchemy URL of any database on the server.
    :param redis_url: the Redis server.
    """
    import redis

    probe = sa.create_engine(postgres_url, connect_args={"connect_timeout": 3}, poolclass=sa.pool.NullPool)
    try:
        with probe.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError as exc:
        first_line = f"{type(exc.orig).__name__}: {exc.orig}".splitlines()[0]
        return f"PostgreSQL not reachable at {_safe(postgres_url)}: {first_line}"
    finally:
        probe.dispose()
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return f"Redis not reachable at {redis_url}: {type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None


@contextlib.contextmanager
def scratch_database(prefix: str, postgres_url: str = POSTGRES_URL) -> Iterator[str]:
    """A fresh PostgreSQL database named ``<prefix>_<random>``; dropped on exit, connections and all.

    :param prefix: start of the database name (letters, digits, underscores).
    :param postgres_url: SQLAlchemy URL of any database on the server.
    :return: the new database's SQLAlchemy URL (psycopg2 driver).
    """
    server = sa.engine.make_url(postgres_url).set(drivername="postgresql+psycopg2")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT",
                             poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextlib.contextmanager
def scratch_redis_db(redis_url: str = REDIS_URL) -> Iterator[str]:
    """Claim an empty Redis database number (1 and up) for this run; flush only that one on exit.

    The claim is a key set with ``SET NX`` in an empty database, so two runs at once never share a
    broker database, and databases other runs use (non-empty) are never touched.

    :param redis_url: the Redis server, without a database number.
    :return: ``redis://host:port/<n>``.
    """
    import redis

    base = redis_url.rstrip("/")
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    with contextlib.closing(redis.Redis.from_url(base)) as admin:
        try:
            config: Any = admin.config_get("databases")
            count = int(config.get("databases", 16))
        except redis.ResponseError:  # CONFIG disabled on a managed server: Redis's default
            count = 16
    for number in range(count - 1, 0, -1):
        url = f"{base}/{number}"
        client = redis.Redis.from_url(url)
        try:
            if client.dbsize() != 0 or not client.set(CLAIM_KEY, owner, nx=True, ex=CLAIM_TTL_SECONDS):
                continue
            if client.dbsize() != 1:  # something else wrote here between the two looks
                client.delete(CLAIM_KEY)
                continue
            try:
                yield url
            finally:
                client.flushdb()
            return
        finally:
            client.close()
    raise RuntimeError(f"no empty Redis database among 1..{count - 1} at {base}: flush a stale one by hand")


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing listens on right now.

    :param count: how many.
    """
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _safe(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)
