"""The ``glm`` connection read and checked: :class:`ConnectionSettings` and the base URL rules.

Errors name the field at fault and how to fix it, never a secret value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_glm import constants, get_provider_info
from airflow_provider_glm.client._auth import APIKey
from airflow_provider_glm.client._urls import check_base_url

if TYPE_CHECKING:
    from airflow.sdk import Connection


__all__ = ["ConnectionSettings", "base_url_of"]

_KEY_EXTRAS = ("api_key", "apikey", "key", "token", "secret", "password")
_KNOWN_EXTRAS = frozenset(
    {"model", "timeout", "connect_timeout", "read_timeout", "max_retries", "auth", "prices", "headers",
     "max_connections", "max_response_bytes", "max_billed_retries", "allow_insecure_http"}
)
_RESERVED_HEADERS = frozenset({"authorization", "content-type", "host", "content-length"})


@dataclass(frozen=True)
class ConnectionSettings:
    """What a ``glm`` connection says, validated; the key stays wrapped in :class:`APIKey`."""

    api_key: APIKey = field(repr=False)
    base_url: str
    model: str
    auth: str
    client_options: dict[str, Any]
    prices: dict[str, Any] | None

    @classmethod
    def from_connection(cls, conn: Connection) -> ConnectionSettings:
        """Read and check a connection; errors name the field at fault, never its secret value.

        :param conn: an Airflow connection of type ``glm``.
        """
        extra = conn.extra_dejson or {}
        leaked = sorted(k for k in extra if k.lower() in _KEY_EXTRAS)
        if leaked:
            raise ValueError(
                f"connection {conn.conn_id!r}: the API key belongs in the password field, not in extra "
                f"{leaked}; extras are shown in the UI and logs. Move the key to the password (API Key) field "
                "and delete that extra"
            )
        unknown = sorted(set(extra) - _KNOWN_EXTRAS)
        if unknown:
            raise ValueError(
                f"connection {conn.conn_id!r}: unknown extra field(s) {unknown}; remove them from the extra JSON "
                f"(known extras: {', '.join(sorted(_KNOWN_EXTRAS))})"
            )
        if not conn.password:
            raise ValueError(
                f"connection {conn.conn_id!r} has no API key: set its password field (API Key in the Airflow UI)"
            )
        options: dict[str, Any] = {}
        for name in ("timeout", "connect_timeout", "read_timeout"):
            if extra.get(name) not in (None, ""):
                options[name] = _number(conn.conn_id, name, extra[name], float)
        for name in ("max_retries", "max_billed_retries", "max_connections", "max_response_bytes"):
            if extra.get(name) not in (None, ""):
                options[name] = _number(conn.conn_id, name, extra[name], int)
        if extra.get("headers"):
            if not isinstance(extra["headers"], Mapping):
                raise ValueError(
                    f"connection {conn.conn_id!r}: extra 'headers' must be an object; write it in the extra JSON "
                    'as {"Header-Name": "value"}'
                )
            reserved = sorted(k for k in extra["headers"] if str(k).lower() in _RESERVED_HEADERS)
            if reserved:
                raise ValueError(
                    f"connection {conn.conn_id!r}: extra 'headers' may not set {reserved}; the client sets them "
                    "(the API key belongs in the password field)"
                )
            options["headers"] = {str(k): str(v) for k, v in extra["headers"].items()}
        auth = str(extra.get("auth") or "bearer").lower()
        if auth not in ("bearer", "jwt"):
            raise ValueError(
                f"connection {conn.conn_id!r}: extra 'auth' must be 'bearer' or 'jwt', got {auth!r}; "
                f"{_fix('auth')}"
            )
        insecure = extra.get("allow_insecure_http")
        if insecure not in (None, "", True, False):
            raise ValueError(f"connection {conn.conn_id!r}: extra 'allow_insecure_http' must be true or false, "
                             f"got {insecure!r}; {_fix('allow_insecure_http')}")
        if insecure:
            options["allow_insecure_http"] = True
        base_url = base_url_of(conn)
        try:
            check_base_url(base_url, allow_insecure_http=bool(insecure))
        except ValueError as exc:
            raise ValueError(f"connection {conn.conn_id!r}: {exc}") from None
        prices = extra.get("prices")
        if prices is not None and not isinstance(prices, Mapping):
            raise ValueError(
                f"connection {conn.conn_id!r}: extra 'prices' must be an object of model -> price; write it in the "
                'extra JSON as {"<model>": {"input": "1.00", "output": "2.00"}}'
            )
        return cls(
            api_key=APIKey(conn.password),
            base_url=base_url,
            model=str(extra.get("model") or constants.DEFAULT_MODEL),
            auth=auth,
            client_options=options,
            prices=dict(prices) if prices else None,
        )


def _number(conn_id: str | None, name: str, value: Any, kind: type[int] | type[float]) -> Any:
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or (kind is int and not number.is_integer()):
        what = "a whole number" if kind is int else "a finite number"
        raise ValueError(f"connection {conn_id!r}: extra {name!r} must be {what}, got {value!r}; {_fix(name)}")
    number = kind(number)
    zero_allowed = name in ("max_retries", "max_billed_retries")
    if number < 0 or (number == 0 and not zero_allowed):
        bound = "positive or 0" if zero_allowed else "positive"
        raise ValueError(f"connection {conn_id!r}: extra {name!r} must be {bound}, got {value!r}; {_fix(name)}")
    return number


_EXPECTED = {
    "timeout": ("a number of seconds above 0", constants.DEFAULT_TIMEOUT),
    "connect_timeout": ("a number of seconds above 0", constants.DEFAULT_CONNECT_TIMEOUT),
    "read_timeout": ("a number of seconds above 0", constants.DEFAULT_READ_TIMEOUT),
    "max_retries": ("a whole number, 0 or more", constants.DEFAULT_MAX_RETRIES),
    "max_billed_retries": ("a whole number, 0 or more", constants.DEFAULT_MAX_BILLED_RETRIES),
    "allow_insecure_http": ("true or false", "false"),
    "max_connections": ("a whole number, 1 or more", constants.DEFAULT_MAX_CONNECTIONS),
    "max_response_bytes": ("a whole number of bytes, 1 or more", constants.DEFAULT_MAX_RESPONSE_BYTES),
    "auth": ("bearer or jwt", "bearer"),
}


def _fix(name: str) -> str:
    """How to fix extra ``name``: the form field that sets it, what it takes, and its default.

    The message must make sense without the connection id: a test from the Airflow UI runs on a
    temporary copy of the connection with a random id.
    """
    expected, default = _EXPECTED[name]
    fields = get_provider_info()["connection-types"][0]["conn-fields"]
    shown = f"{default:g}" if isinstance(default, float) else str(default)
    return (
        f"set the {fields[name]['label']!r} field (extra {name!r}) to {expected}, "
        f"or leave it empty for the default {shown}"
    )


def base_url_of(conn: Connection) -> str:
    """The API root from the connection host: a full URL, or a bare host (https and /api/paas/v4 assumed
    unless the schema field gives the path), or the default."""
    host = (conn.host or "").strip()
    if not host:
        return constants.DEFAULT_BASE_URL
    if "://" in host:
        return host.rstrip("/")
    host, _, host_path = host.partition("/")
    port = f":{conn.port}" if conn.port else ""
    default_path = f"/{host_path}" if host_path else "/api/paas/v4"
    path = f"/{conn.schema.strip('/')}" if conn.schema else default_path
    return f"https://{host}{port}{path}".rstrip("/")
