"""Where the bytes go: the proxy for the base URL and the TLS context, from the connection and the environment.

Proxies follow the convention httpx and requests users expect: with ``trust_env`` (the default),
``HTTPS_PROXY`` (for an ``https://`` base URL), ``HTTP_PROXY`` (for ``http://``) and ``ALL_PROXY``
name the proxy and ``NO_PROXY`` lists hosts reached directly; an explicit ``proxy`` wins over them.
Only HTTP(S) proxies are supported (a ``CONNECT`` tunnel for ``https://`` targets). A proxy's
credentials are kept out of every log line and error: :attr:`ProxyChoice.display` has none.

TLS trusts, in order: ``ca_bundle`` when given; else, with ``trust_env``, the file or directory in
``SSL_CERT_FILE`` / ``SSL_CERT_DIR``; else the certifi bundle httpx ships with. ``client_cert`` (and
``client_key``) present a client certificate. A context is built once per distinct setting in a
process (loading a bundle costs ~50 ms).
"""

from __future__ import annotations

import functools
import os
import ssl
import urllib.request
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import certifi

from airflow_provider_glm.client._auth import register_secret

__all__ = ["NetworkOptions", "ProxyChoice", "proxy_for", "tls_context"]

_PROXY_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class NetworkOptions:
    """How a client reaches the API (the connection extras of the same names).

    :param proxy: the proxy URL (``http://[user:password@]host:port``); wins over the environment.
    :param trust_env: honour the proxy variables and ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``.
    :param ca_bundle: a PEM file of the certificate authorities to trust instead of the default ones.
    :param client_cert: a PEM file with the client certificate (and its key, unless ``client_key``).
    :param client_key: a PEM file with the client certificate's key.
    """

    proxy: str | None = None
    trust_env: bool = True
    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    def __repr__(self) -> str:
        proxy = _without_credentials(self.proxy) if self.proxy else None
        return (f"NetworkOptions(proxy={proxy!r}, trust_env={self.trust_env!r}, ca_bundle={self.ca_bundle!r}, "
                f"client_cert={self.client_cert!r}, client_key={self.client_key!r})")

    def __post_init__(self) -> None:
        if self.client_key and not self.client_cert:
            raise ValueError("client_key needs client_cert (the certificate it belongs to)")
        for name in ("ca_bundle", "client_cert", "client_key"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{name} {path!r} is not a readable file")


@dataclass(frozen=True)
class ProxyChoice:
    """The proxy a client sends through.

    :param url: the proxy URL without credentials.
    :param login: the user name of its basic auth, or ``None``.
    :param password: its password (kept out of logs and errors), or ``None``.
    :param source: ``proxy`` (the connection extra) or the environment variable that named it.
    """

    url: str
    login: str | None = None
    password: str | None = None
    source: str = "proxy"

    def __repr__(self) -> str:
        return f"ProxyChoice(url={self.url!r}, source={self.source!r})"

    @property
    def display(self) -> str:
        """What messages may say: the URL without credentials, and where it came from."""
        return f"{self.url} (from {self.source})"


def proxy_for(base_url: str, options: NetworkOptions) -> ProxyChoice | None:
    """The proxy for ``base_url``, or ``None`` to connect directly.

    :raises ValueError: the proxy URL is not an ``http://`` or ``https://`` URL with a host (a SOCKS
        proxy, for one); the message names where it came from, never its credentials.
    """
    if options.proxy:
        return _choice(options.proxy, "the connection's proxy extra")
    if not options.trust_env:
        return None
    target = urlsplit(base_url)
    environment = urllib.request.getproxies_environment()
    host = target.hostname or ""
    if urllib.request.proxy_bypass_environment(host, environment):  # type: ignore[attr-defined]
        return None
    for key in (target.scheme, "all"):
        url = environment.get(key)
        if url:
            return _choice(url, f"{key.upper()}_PROXY")
    return None


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _choice(url: str, source: str) -> ProxyChoice:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in _PROXY_SCHEMES or not parts.hostname:
        raise ValueError(f"the proxy from {source} must be an http:// or https:// URL with a host (got scheme "
                         f"{parts.scheme!r}); SOCKS proxies are not supported")
    login = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if password:
        register_secret(password)
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if parts.port:
        netloc += f":{parts.port}"
    return ProxyChoice(f"{parts.scheme}://{netloc}", login, password, source)


def tls_context(options: NetworkOptions | None = None) -> ssl.SSLContext:
    """The TLS context for ``options`` (shared by every client of the process with the same settings)."""
    options = options or NetworkOptions()
    environment = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")) if options.trust_env else None
    return _context(options.ca_bundle, options.client_cert, options.client_key, environment)


@functools.lru_cache(maxsize=16)
def _context(ca_bundle: str | None, client_cert: str | None, client_key: str | None,
             environment: tuple[str | None, str | None] | None) -> ssl.SSLContext:
    if ca_bundle:
        context = ssl.create_default_context(cafile=ca_bundle)
    elif environment is not None and any(environment):
        cafile, capath = environment
        context = ssl.create_default_context(cafile=cafile if cafile and os.path.isfile(cafile) else None,
                                             capath=capath if capath and os.path.isdir(capath) else None)
    else:
        context = ssl.create_default_context(cafile=certifi.where())
    if client_cert:
        context.load_cert_chain(client_cert, client_key)
    return context
