"""The default HTTP transport: httpx's transport interface over an aiohttp connection pool.

httpx's own pool slows down as concurrency rises; aiohttp's holds up. Keeping the
`httpx.AsyncBaseTransport` interface means `transport=` still takes respx,
`httpx.MockTransport` or any httpx transport a user prefers. The SSRF guard lives here:
a transport passed as ``transport=`` sees connections the guard cannot.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
import threading
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import attrs
import httpx
import yarl

from .errors import ConfigurationError
from .netguard import BlockedAddress, GuardedResolver, NetworkPolicy, ResolveFunction
from .netguard import check_literal_host as _check_literal_host

__all__ = ["TLS_EXTENSION", "AiohttpTransport", "TLSSettings", "load_ssl_context"]

TLS_EXTENSION = "webhook_dispatch.tls"
"""The `httpx.Request.extensions` key carrying a subscription's `TLSSettings`; transports
that do not know it ignore it."""


@attrs.frozen
class TLSSettings:
    """Per-subscription TLS: a CA bundle to trust instead of the system's, and a client
    certificate (with its key, unless the certificate file holds both) for mutual TLS."""

    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    @property
    def is_default(self) -> bool:
        """True when nothing differs from the system defaults."""
        return self.ca_bundle is None and self.client_cert is None and self.client_key is None


def load_ssl_context(settings: TLSSettings) -> ssl.SSLContext:
    """Build the `ssl.SSLContext` for ``settings`` (certificate and hostname checks on).

    Raises `ConfigurationError` when a file is missing or does not load; the message
    names the option, never file contents.
    """
    for option in ("ca_bundle", "client_cert", "client_key"):
        path = getattr(settings, option)
        if path is None:
            continue
        if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
            raise ConfigurationError(f"{option} must be the path of an existing PEM file")
    if settings.client_key is not None and settings.client_cert is None:
        raise ConfigurationError("client_key needs client_cert")
    try:
        context = ssl.create_default_context(cafile=settings.ca_bundle)
    except (ssl.SSLError, OSError, ValueError):
        raise ConfigurationError("ca_bundle does not hold usable PEM CA certificates") from None
    if settings.client_cert is not None:
        try:
            context.load_cert_chain(
                settings.client_cert, settings.client_key, password=_no_password
            )
        except (ssl.SSLError, OSError, ValueError):
            raise ConfigurationError(
                "client_cert/client_key do not load as a PEM certificate and its unencrypted "
                "private key (or they do not match)"
            ) from None
    return context


def _no_password() -> str:
    # Called only for an encrypted key: refuse it instead of prompting on a terminal.
    raise ValueError("encrypted private keys are not supported")


# Headers aiohttp computes itself from the URL and body; passing httpx's copies would
# duplicate them.
_COMPUTED_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})
_CHUNK = 16 * 1024


class _AiohttpStream(httpx.AsyncByteStream):
    """A response body streamed from aiohttp; closing early drops the connection."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _translate_errors():
            async for chunk in self._response.content.iter_chunked(_CHUNK):
                yield chunk

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()  # fully read: the connection goes back to the pool
        else:
            self._response.close()  # unread bytes remain: this connection cannot be reused


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An `httpx.AsyncBaseTransport` that sends requests through one aiohttp session.

    Redirects are never followed and cookies are never kept. The pool opens at most
    ``max_connections`` connections in all. ``ssl_context`` replaces the default
    certificate checks (for example, to trust a private CA); a request whose
    extensions carry `TLSSettings` under `TLS_EXTENSION` uses a context built from them.

    ``network_policy`` is the SSRF guard (default: `NetworkPolicy()`, every private,
    loopback, link-local... address refused): IP-literal hosts are checked before any
    connection, names are resolved once by a `GuardedResolver` (through ``resolve`` when
    given, for tests) and the connection goes to an allowed address it returned.
    """

    def __init__(
        self,
        *,
        max_connections: int = 256,
        keepalive_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        network_policy: NetworkPolicy | None = None,
        resolve: ResolveFunction | None = None,
    ) -> None:
        self._max_connections = max_connections
        self._keepalive_timeout = keepalive_timeout
        self._ssl_context = ssl_context
        self._policy = network_policy if network_policy is not None else NetworkPolicy()
        self._resolve = resolve
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._contexts: dict[TLSSettings, ssl.SSLContext] = {}
        self._contexts_lock = threading.Lock()

    @property
    def network_policy(self) -> NetworkPolicy:
        """The SSRF guard's policy for every connection this transport opens."""
        return self._policy

    def __repr__(self) -> str:
        return f"AiohttpTransport(max_connections={self._max_connections})"

    def _session_for_loop(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            resolver = (
                GuardedResolver(self._policy, self._resolve)
                if self._policy.checks_addresses or self._resolve is not None
                else None
            )
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=0,
                keepalive_timeout=self._keepalive_timeout,
                ssl=self._ssl_context if self._ssl_context is not None else True,
                resolver=resolver,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            )
            self._loop = loop
        return self._session

    def _ssl_for(self, settings: object) -> dict[str, ssl.SSLContext]:
        if not isinstance(settings, TLSSettings) or settings.is_default:
            return {}  # the connector's own setting
        with self._contexts_lock:
            context = self._contexts.get(settings)
        if context is None:
            context = load_ssl_context(settings)  # files checked at subscribe; read once here
            with self._contexts_lock:
                self._contexts[settings] = context
        return {"ssl": context}

    def _guard(self, url: httpx.URL) -> None:
        # aiohttp never asks the resolver about IP-literal hosts, so they are judged here,
        # in every spelling, before anything connects.
        reason = self._policy.check_scheme(url.scheme)
        if reason is not None:
            raise BlockedAddress(url.host, (), reason=reason)
        if self._policy.checks_addresses:
            _check_literal_host(url.host, self._policy)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return a response whose body streams from the socket.

        Raises `BlockedAddress` (an `httpx.ConnectError`) when the network guard refuses it.
        """
        self._guard(request.url)
        ssl_option = self._ssl_for(request.extensions.get(TLS_EXTENSION))
        session = self._session_for_loop()
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers.raw
            if name.lower().decode("latin-1") not in _COMPUTED_HEADERS
        ]
        timeout = request.extensions.get("timeout", {})
        client_timeout = _client_timeout(timeout.get("connect"), timeout.get("read"))
        body = (
            request.content
            if isinstance(request.stream, httpx.ByteStream)
            else await request.aread()
        )
        with _translate_errors():
            response = await session.request(
                request.method,
                _yarl_url(str(request.url)),
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=client_timeout,
                compress=None,
                **ssl_option,
            )
        return httpx.Response(
            status_code=response.status,
            headers=[
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in response.raw_headers
            ],
            stream=_AiohttpStream(response),
            extensions={"http_version": b"HTTP/1.1"},
            request=request,
        )

    async def aclose(self) -> None:
        """Close every pooled connection."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


@functools.lru_cache(maxsize=64)
def _client_timeout(connect: float | None, read: float | None) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, connect=connect, sock_read=read)


@functools.lru_cache(maxsize=4096)
def _yarl_url(url: str) -> yarl.URL:
    # httpx has already normalized and percent-encoded the URL: parse it once per
    # endpoint, not once per request.
    return yarl.URL(url, encoded=True)


class _translate_errors:
    """Turn aiohttp's exceptions into httpx's, so outcomes are classified in one place."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None or isinstance(exc, (httpx.HTTPError, asyncio.CancelledError)):
            return
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            raise httpx.ConnectTimeout(str(exc) or "connect timeout") from exc
        if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
            raise httpx.ReadTimeout(str(exc) or "read timeout") from exc
        if isinstance(exc, (aiohttp.ClientSSLError, ssl.SSLError)):
            raise httpx.ConnectError(f"TLS error: {exc}") from exc
        if isinstance(exc, aiohttp.ClientConnectorError):
            raise httpx.ConnectError(str(exc)) from exc
        if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
            raise httpx.RemoteProtocolError(str(exc) or type(exc).__name__) from exc
        if isinstance(exc, aiohttp.ClientResponseError):
            raise httpx.RemoteProtocolError(f"invalid response: {exc.message}") from exc
        if isinstance(exc, (aiohttp.ClientOSError, OSError)):
            raise httpx.NetworkError(str(exc) or type(exc).__name__) from exc
        if isinstance(exc, aiohttp.ClientError):
            raise httpx.TransportError(str(exc) or type(exc).__name__) from exc
