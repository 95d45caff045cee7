"""The base URL: checked once, before any key can travel to it.

Kept apart from the HTTP stack so the connection form and the hook can check a URL without loading it.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import quote, urlsplit, urlunsplit

__all__ = ["check_base_url", "endpoint_of"]


def check_base_url(base_url: str, *, allow_insecure_http: bool = False) -> str:
    """The base URL without a trailing slash, refused when it would send the key in plaintext off loopback.

    :param allow_insecure_http: accept ``http://`` to a host other than loopback (a trusted in-cluster gateway).
    :raises ValueError: not an http(s) URL, or plaintext to a non-loopback host without the opt-in.
    """
    url = base_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url must be an http(s) URL, got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("base_url must not hold credentials (user:password@): the API key goes in the password "
                         "field, a proxy's credentials in the proxy extra")
    if parts.query or parts.fragment:
        raise ValueError(f"base_url must not have a query or fragment, got {url!r}")
    host = _ascii_host(parts.hostname)
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(host):
        raise ValueError(
            f"base_url {url!r} would send the API key unencrypted to {host}: use https://, or, for a "
            "trusted in-cluster gateway, set the connection extra allow_insecure_http: true"
        )
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, quote(parts.path, safe=_PATH_SAFE), "", ""))


_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
"""Characters a URL path keeps as they are (RFC 3986 pchar and "/"); ``%`` keeps escapes already made."""


def _ascii_host(host: str) -> str:
    """The host as it goes on the wire: an internationalized name in its IDNA (punycode) form."""
    if host.isascii():
        return host
    import idna  # lazy: only non-ASCII hosts need it

    try:
        return str(idna.encode(host, uts46=True).decode("ascii"))
    except idna.IDNAError as exc:
        raise ValueError(f"base_url host {host!r} is not a valid internationalized domain name ({exc})") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def endpoint_of(base_url: str) -> str:
    """``host:port`` of a base URL, for messages about reaching it."""
    parts = urlsplit(base_url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
