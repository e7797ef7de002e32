"""The default HTTP transport: httpx's transport interface over our own HTTP/1.1
connection pool (`_http11`), with a bytes-in, capped-bytes-out fast path for the engine.

Keeping the `httpx.AsyncBaseTransport` interface means `transport=` still takes respx,
`httpx.MockTransport` or any httpx transport a user prefers. The SSRF guard lives here:
a transport passed as ``transport=`` sees connections the guard cannot.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence

import attrs
import httpx

from ._http11 import Connection, ConnectionPool, Origin, ResponseHead, serialize_head
from .errors import BlockedAddress, ConfigurationError
from .netguard import GuardedResolver, NetworkPolicy, ResolveFunction
from .netguard import check_literal_host as _check_literal_host

__all__ = ["TLS_EXTENSION", "Endpoint", "HTTPTransport", "TLSSettings", "load_ssl_context"]

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


_COMPUTED_HEADERS = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


@attrs.frozen
class Endpoint:
    """Where one URL's requests go: the pool's origin and the request line with ``Host``
    (computed once per URL and TLS setting)."""

    origin: Origin
    prefix: bytes
    """``POST <target> HTTP/1.1`` and the ``Host`` header, CRLF-terminated."""


class HTTPTransport(httpx.AsyncBaseTransport):
    """The default transport: HTTP/1.1 over pooled keep-alive connections.

    Redirects are never followed and cookies are never kept. At most ``max_connections``
    requests are in flight at once. ``ssl_context`` replaces the default certificate
    checks (for example, to trust a private CA); a request whose extensions carry
    `TLSSettings` under `TLS_EXTENSION` uses a context built from them.

    ``network_policy`` is the SSRF guard (default: `NetworkPolicy()`, every private,
    loopback, link-local... address refused): IP-literal hosts are checked before any
    connection, names are resolved once by a `GuardedResolver` (through ``resolve`` when
    given, for tests) and the connection goes to an allowed address it returned.

    Besides the httpx interface, the engine calls `post`, which takes the request as
    bytes and reads at most a given number of body bytes: no request or response
    objects are built for a webhook attempt.
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
        self._resolver = (
            GuardedResolver(self._policy, resolve)
            if self._policy.checks_addresses or resolve is not None
            else None
        )
        self._pool: ConnectionPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._contexts: dict[TLSSettings, ssl.SSLContext] = {}
        self._contexts_lock = threading.Lock()
        self._endpoints: dict[tuple[str, TLSSettings | None], Endpoint] = {}

    @property
    def network_policy(self) -> NetworkPolicy:
        """The SSRF guard's policy for every connection this transport opens."""
        return self._policy

    def __repr__(self) -> str:
        return f"HTTPTransport(max_connections={self._max_connections})"

    # -- where requests go ----------------------------------------------------------
    def endpoint(self, url: str, tls: TLSSettings | None = None) -> Endpoint:
        """The `Endpoint` for ``url`` with ``tls``; raises `BlockedAddress` when the guard
        refuses the URL itself (its scheme, or an IP-literal host)."""
        key = (url, tls)
        found = self._endpoints.get(key)
        if found is None:
            found = self._endpoint_for(_parsed(url), tls)
            if len(self._endpoints) >= 4096:
                self._endpoints.clear()
            self._endpoints[key] = found
        return found

    def _endpoint_for(self, url: httpx.URL, tls: TLSSettings | None) -> Endpoint:
        scheme = url.scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        reason = self._policy.check_scheme(scheme)
        if reason is not None:
            raise BlockedAddress(url.host, (), reason=reason)
        if self._policy.checks_addresses:
            _check_literal_host(url.host, self._policy)
        context: ssl.SSLContext | None = None
        if scheme == "https":
            context = self._context_for(tls)
        port = url.port or _DEFAULT_PORTS[scheme]
        prefix = b"".join((b"POST ", url.raw_path, b" HTTP/1.1\r\nHost: ", url.netloc, b"\r\n"))
        # The ASCII (IDNA) form of the name: what DNS, TLS and the guard see.
        return Endpoint((scheme, url.raw_host.decode("ascii"), port, context), prefix)

    def _context_for(self, tls: TLSSettings | None) -> ssl.SSLContext:
        if tls is None or tls.is_default:
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            return self._ssl_context
        with self._contexts_lock:
            context = self._contexts.get(tls)
        if context is None:
            context = load_ssl_context(tls)  # files checked at subscribe; read once here
            with self._contexts_lock:
                self._contexts[tls] = context
        return context

    def _pool_for_loop(self) -> ConnectionPool:
        loop = asyncio.get_running_loop()
        pool = self._pool
        if pool is None or pool.closed or self._loop is not loop:
            pool = self._pool = ConnectionPool(
                self._open,
                max_connections=self._max_connections,
                keepalive_timeout=self._keepalive_timeout,
            )
            self._loop = loop
        return pool

    async def _open(
        self, host: str, port: int, context: ssl.SSLContext | None, timeout: float | None
    ) -> Connection:
        """Connect to an address of ``host`` the guard allows (TLS checked against the
        name, not the address)."""
        if timeout is None:
            return await self._connect(host, port, context)
        # Not asyncio.wait_for: on Python 3.11 it can swallow the attempt's own deadline
        # when the connection completes in the same pass.
        if sys.version_info >= (3, 11):
            try:
                async with asyncio.timeout(timeout):
                    return await self._connect(host, port, context)
            except TimeoutError:
                raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        try:  # pragma: no cover - Python 3.10
            return await asyncio.wait_for(self._connect(host, port, context), timeout)
        except asyncio.TimeoutError:  # pragma: no cover - Python 3.10
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None

    async def _connect(self, host: str, port: int, context: ssl.SSLContext | None) -> Connection:
        loop = asyncio.get_running_loop()
        if self._resolver is not None:
            addresses: Sequence[str] = await self._resolver.resolve(host, port)
        else:
            addresses = [host]
        failure: OSError | None = None
        for address in addresses:
            try:
                _, connection = await loop.create_connection(
                    Connection,
                    address,
                    port,
                    ssl=context,
                    server_hostname=host if context is not None else None,
                )
            except ssl.SSLError as exc:
                raise httpx.ConnectError(f"TLS error: {exc}") from exc
            except OSError as exc:
                failure = exc
                continue
            return connection
        raise httpx.ConnectError(f"cannot connect to {host}:{port}: {failure}") from failure

    # -- sending ----------------------------------------------------------------------
    async def post(
        self, endpoint: Endpoint, request: bytes, limit: int, deadline: float | None = None
    ) -> tuple[ResponseHead, bytes]:
        """Send ``request`` (head and body, as bytes) to ``endpoint``; return the response
        head and at most ``limit`` bytes of its body.

        ``deadline`` (a `time.monotonic` value) bounds the whole exchange: waiting for a
        connection slot, connecting and reading (`httpx.TimeoutException` subclasses
        when it passes). It costs a timer only while the response is awaited, not the
        task, the timer and the bookkeeping of ``asyncio.timeout``."""
        pool = self._pool_for_loop()
        origin = endpoint.origin
        connection = await pool.acquire(origin, None, deadline=deadline)
        if deadline is not None and time.monotonic() >= deadline:
            # Nothing sent yet: keep the connection, and do not send a request the
            # attempt would count as timed out (the endpoint would get it twice).
            pool.release(origin, connection, reuse=True)
            raise httpx.PoolTimeout("the attempt's timeout passed before the request was sent")
        connection.deadline = deadline
        try:
            connection.send(request)
            head = await connection.read_head()
            body, complete = await connection.read_body(head, limit)
        except BaseException:
            connection.deadline = None
            pool.release(origin, connection, reuse=False, abort=True)
            raise
        connection.deadline = None
        pool.release(origin, connection, reuse=complete and head.keep_alive, abort=not complete)
        return head, body

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return a response whose body streams from the socket.

        Raises `BlockedAddress` (a `WebhookDispatchError` and a `ConnectionError`, not an
        httpx exception) when the network guard refuses it.
        """
        url = request.url
        tls = request.extensions.get(TLS_EXTENSION)
        endpoint = self.endpoint(str(url), tls if isinstance(tls, TLSSettings) else None)
        timeout = request.extensions.get("timeout", {})
        body = (
            request.content
            if isinstance(request.stream, httpx.ByteStream)
            else await request.aread()
        )
        head_bytes = serialize_head(
            request.method,
            url.raw_path,
            url.netloc,
            [(n, v) for n, v in request.headers.raw if n.lower() not in _COMPUTED_HEADERS],
            len(body),
        )
        pool = self._pool_for_loop()
        origin = endpoint.origin
        read_timeout = timeout.get("read")
        connection = await pool.acquire(origin, timeout.get("connect"), timeout.get("pool"))
        try:
            connection.send(head_bytes + body)
            head = await connection.read_head(read_timeout)
        except BaseException:
            pool.release(origin, connection, reuse=False, abort=True)
            raise
        if request.method == "HEAD":
            head.no_body()
        return httpx.Response(
            status_code=head.status,
            headers=[(name, value) for name, value in head.headers],
            stream=_ResponseStream(pool, origin, connection, head, read_timeout),
            extensions={"http_version": b"HTTP/1.1"},
            request=request,
        )

    async def aclose(self) -> None:
        """Close every pooled connection."""
        if self._pool is not None:
            self._pool.close()
        self._pool = None


class _ResponseStream(httpx.AsyncByteStream):
    """A response body read from its connection as it is iterated; closing it gives the
    connection back to the pool when the body was read to its end, else drops it."""

    def __init__(
        self,
        pool: ConnectionPool,
        origin: Origin,
        connection: Connection,
        head: ResponseHead,
        timeout: float | None,
    ) -> None:
        self._pool = pool
        self._origin = origin
        self._connection = connection
        self._head = head
        self._timeout = timeout
        self._complete = head.content_length == 0
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._connection.iter_body(self._head, self._timeout):
            yield chunk
        self._complete = True

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            reuse = self._complete and self._head.keep_alive
            self._pool.release(
                self._origin, self._connection, reuse=reuse, abort=not self._complete
            )


@functools.lru_cache(maxsize=4096)
def _parsed(url: str) -> httpx.URL:
    return httpx.URL(url)
