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
from airflow_provider_glm.client._network import NetworkOptions, proxy_for
from airflow_provider_glm.client._urls import check_base_url

if TYPE_CHECKING:
    from airflow.sdk import Connection


__all__ = ["ConnectionSettings", "base_url_of"]

_KEY_EXTRAS = ("api_key", "apikey", "key", "token", "secret", "password")
_KNOWN_EXTRAS = frozenset(
    {"model", "timeout", "connect_timeout", "read_timeout", "max_retries", "auth", "prices", "headers",
     "max_connections", "max_response_bytes", "max_billed_retries", "allow_insecure_http", "proxy", "trust_env",
     "ca_bundle", "client_cert", "client_key"}
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
    secrets: tuple[str, ...] = field(default=(), repr=False)
    """Values besides the key that logs must mask (a proxy's password)."""

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
        insecure = _flag(conn.conn_id, "allow_insecure_http", extra.get("allow_insecure_http"), default=False)
        if insecure:
            options["allow_insecure_http"] = True
        try:
            base_url = check_base_url(base_url_of(conn), allow_insecure_http=insecure)
        except ValueError as exc:
            raise ValueError(f"connection {conn.conn_id!r}, field 'Base URL' (host): {exc}") from None
        network, secrets = _network(conn.conn_id, extra, base_url)
        if network != NetworkOptions():
            options["network"] = network
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
            secrets=secrets,
        )


def _flag(conn_id: str | None, name: str, value: Any, *, default: bool) -> bool:
    if value in (None, ""):
        return default
    if value not in (True, False):
        raise ValueError(f"connection {conn_id!r}: extra {name!r} must be true or false, got {value!r}; {_fix(name)}")
    return bool(value)


def _network(conn_id: str | None, extra: Mapping[str, Any], base_url: str) -> tuple[NetworkOptions, tuple[str, ...]]:
    """The proxy and TLS extras, checked (files exist, the proxy is an http(s) URL) with the field at fault named."""
    paths: dict[str, str | None] = {}
    for name in ("proxy", "ca_bundle", "client_cert", "client_key"):
        value = extra.get(name)
        if value not in (None, "") and not isinstance(value, str):
            raise ValueError(f"connection {conn_id!r}: extra {name!r} must be a string, got {type(value).__name__}; "
                             f"{_fix(name)}")
        paths[name] = value.strip() if isinstance(value, str) and value.strip() else None
    try:
        network = NetworkOptions(proxy=paths["proxy"], trust_env=_flag(conn_id, "trust_env", extra.get("trust_env"),
                                                                        default=True),
                                 ca_bundle=paths["ca_bundle"], client_cert=paths["client_cert"],
                                 client_key=paths["client_key"])
        proxy = proxy_for(base_url, network)
    except ValueError as exc:
        raise ValueError(f"connection {conn_id!r}: {exc}") from None
    return network, (proxy.password,) if proxy is not None and proxy.password else ()


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
    "proxy": ("an http:// or https:// proxy URL", "none (the environment's HTTPS_PROXY/HTTP_PROXY/ALL_PROXY)"),
    "trust_env": ("true or false", "true"),
    "ca_bundle": ("the path of a PEM file of trusted certificate authorities", "none (the default trust store)"),
    "client_cert": ("the path of a PEM client certificate", "none"),
    "client_key": ("the path of the client certificate's PEM key", "none (the key is in client_cert)"),
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
