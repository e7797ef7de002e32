"""The default HTTP transport: httpx's transport interface over an aiohttp connection pool.

httpx's own pool slows down as concurrency rises; aiohttp's holds up. Keeping the
`httpx.AsyncBaseTransport` interface means `transport=` still takes respx,
`httpx.MockTransport` or any httpx transport a user prefers.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx

__all__ = ["AiohttpTransport"]

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
    certificate checks (for example, to trust a private CA).
    """

    def __init__(
        self,
        *,
        max_connections: int = 256,
        keepalive_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._max_connections = max_connections
        self._keepalive_timeout = keepalive_timeout
        self._ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"AiohttpTransport(max_connections={self._max_connections})"

    def _session_for_loop(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=0,
                keepalive_timeout=self._keepalive_timeout,
                ssl=self._ssl_context if self._ssl_context is not None else True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            )
            self._loop = loop
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return a response whose body streams from the socket."""
        session = self._session_for_loop()
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers.raw
            if name.lower().decode("latin-1") not in _COMPUTED_HEADERS
        ]
        timeout = request.extensions.get("timeout", {})
        client_timeout = aiohttp.ClientTimeout(
            total=None,
            connect=timeout.get("connect"),
            sock_read=timeout.get("read"),
        )
        body = (
            request.content
            if isinstance(request.stream, httpx.ByteStream)
            else await request.aread()
        )
        with _translate_errors():
            response = await session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=client_timeout,
                compress=None,
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
