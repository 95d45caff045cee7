"""Defaults in one place: base URLs, timeouts, retry budget, connection pool and size limits.

The hook, the clients, the docs and the tests read these names; change a default here only.
"""

from __future__ import annotations

__all__ = [
    "BIGMODEL_BASE_URL",
    "BIGMODEL_CODING_BASE_URL",
    "DEFAULT_BASE_URL",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_BILLED_RETRIES",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MODEL",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "JWT_CACHE_SECONDS",
    "JWT_TTL_SECONDS",
    "MAX_DOWNLOAD_BYTES",
    "ZAI_BASE_URL",
    "ZAI_CODING_BASE_URL",
]

BIGMODEL_BASE_URL = "https://open.bigmodel.cn/api/paas/v4"
BIGMODEL_CODING_BASE_URL = "https://open.bigmodel.cn/api/coding/paas/v4"
ZAI_BASE_URL = "https://api.z.ai/api/paas/v4"
ZAI_CODING_BASE_URL = "https://api.z.ai/api/coding/paas/v4"
DEFAULT_BASE_URL = BIGMODEL_BASE_URL

DEFAULT_MODEL = "glm-4.5"

DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds to open a TCP+TLS connection."""
DEFAULT_READ_TIMEOUT = 300.0
"""Seconds to wait for the next byte of an answer (thinking models can be silent for minutes)."""
DEFAULT_TIMEOUT = 600.0
"""Total seconds for one attempt, headers to last byte: a trickling server cannot stretch it."""

DEFAULT_MAX_RETRIES = 3
DEFAULT_MAX_BILLED_RETRIES = 1
"""Resends of a request that was sent and then lost (a timeout, a dropped connection, an unreadable
answer): the server may have billed it, so it is bought again at most this often."""
DEFAULT_MAX_CONNECTIONS = 64
"""Pool size: above any sensible ``max_concurrency`` so rows never queue on the pool."""
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
"""An answer larger than this is aborted while reading, so memory stays bounded."""
MAX_DOWNLOAD_BYTES = 1024 * 1024 * 1024
"""Cap for file downloads (batch output and error files), which are read whole."""

JWT_TTL_SECONDS = 210
JWT_CACHE_SECONDS = 180
