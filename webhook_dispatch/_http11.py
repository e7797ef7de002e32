"""A small HTTP/1.1 client on asyncio protocols: pooled keep-alive connections, one
write per request, a response parser that reads no more of a body than it is asked to.

It does the one job a webhook sender needs (POST, read the status, a few headers and the
start of the body) at a fraction of a general client's cost per request. Errors are
raised as httpx's exception types, so outcomes are classified in one place. Connections
go only to addresses the SSRF guard in `netguard` allowed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence

import httpx

__all__ = ["Connection", "ConnectionPool", "Origin", "ResponseHead", "serialize_head"]

MAX_HEAD = 64 * 1024
"""Largest response status line plus headers accepted."""
MAX_HEADERS = 200
_PAUSE_AT = 256 * 1024  # stop reading the socket while this much is buffered and unread
_READ_SIZE = 32 * 1024  # bytes read from the socket at a time
_MAX_INFORMATIONAL = 10  # 1xx responses accepted before the final one
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_NO_BODY_STATUSES = frozenset({204, 304})
_FORBIDDEN_IN_HEADERS = (b"\r", b"\n", b"\0")

Origin = tuple[str, str, int, object]
"""(scheme, host, port, TLS context or None): connections are pooled per origin."""


class ResponseHead:
    """A parsed status line and header block, with how the body is framed."""

    __slots__ = ("chunked", "content_length", "headers", "keep_alive", "status", "until_close")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], version: int) -> None:
        self.status = status
        self.headers = headers  # names lower-cased
        self.content_length: int | None = None
        self.chunked = False
        self.until_close = False
        connection = b""
        transfer_encoding = b""
        lengths: set[bytes] = set()
        for name, value in headers:
            if name == b"content-length":
                lengths.add(value.strip())
            elif name == b"transfer-encoding":
                transfer_encoding = transfer_encoding + b"," + value if transfer_encoding else value
            elif name == b"connection":
                connection = connection + b"," + value if connection else value
        tokens = {token.strip().lower() for token in connection.split(b",")}
        self.keep_alive = (b"close" not in tokens) if version == 1 else (b"keep-alive" in tokens)
        if status in _NO_BODY_STATUSES or 100 <= status < 200:
            self.content_length = 0
        elif transfer_encoding:
            codings = [c.strip().lower() for c in transfer_encoding.split(b",") if c.strip()]
            if codings and codings[-1] == b"chunked":
                self.chunked = True
            else:
                self.until_close = True
            if lengths:
                self.keep_alive = False  # both framings given: never trust this connection again
        elif lengths:
            if len(lengths) > 1:
                raise httpx.RemoteProtocolError("conflicting Content-Length headers")
            (length,) = lengths
            if not length.isdigit() or len(length) > 18:
                raise httpx.RemoteProtocolError("invalid Content-Length header")
            self.content_length = int(length)
        else:
            self.until_close = True
        if self.until_close:
            self.keep_alive = False

    def no_body(self) -> None:
        """The answer to a HEAD request: headers only, whatever they say of a body."""
        self.content_length = 0
        self.chunked = self.until_close = False

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


def _parse_head(block: bytes) -> ResponseHead:
    lines = block.split(b"\n")
    status_line = lines[0].rstrip(b"\r")
    parts = status_line.split(b" ", 2)
    if (
        len(parts) < 2
        or len(parts[0]) != 8
        or not parts[0].startswith(b"HTTP/1.")
        or parts[0][7:8] not in (b"0", b"1")
        or len(parts[1]) != 3
        or not parts[1].isdigit()
    ):
        raise httpx.RemoteProtocolError(f"invalid status line: {status_line[:80]!r}")
    status = int(parts[1])
    if status < 100:
        raise httpx.RemoteProtocolError(f"invalid status code {status}")
    if len(lines) > MAX_HEADERS + 1:
        raise httpx.RemoteProtocolError(f"more than {MAX_HEADERS} response headers")
    headers: list[tuple[bytes, bytes]] = []
    for raw in lines[1:]:
        line = raw.rstrip(b"\r")
        if not line:
            raise httpx.RemoteProtocolError("blank line inside the response head")
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
            raise httpx.RemoteProtocolError(f"invalid header line: {line[:80]!r}")
        headers.append((name.lower(), value.strip(b" \t")))
    return ResponseHead(status, headers, 1 if parts[0][7:8] == b"1" else 0)


def serialize_head(
    method: str, target: bytes, host: bytes, headers: Sequence[tuple[bytes, bytes]], length: int
) -> bytes:
    """The request line and headers (``Host`` and ``Content-Length`` written here).

    Raises `httpx.LocalProtocolError` for a header name or value that would split the
    request (CR, LF or NUL)."""
    for name, value in headers:
        for forbidden in _FORBIDDEN_IN_HEADERS:
            if forbidden in name or forbidden in value or b":" in name:
                raise httpx.LocalProtocolError(f"invalid request header {name[:40]!r}")
    lines = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
    lines += (b"Content-Length: ", str(length).encode("ascii"), b"\r\n\r\n")
    return b"".join(lines)


def _expire(waiter: asyncio.Future[None], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout(f"no response data within {timeout:g}s"))


def _sooner(timeout: float | None, left: float) -> float:
    """The smaller of a timeout (None: none) and the time ``left`` (at least 0)."""
    left = max(left, 0.0)
    return left if timeout is None else min(timeout, left)


def _deadline_passed(waiter: asyncio.Future[None], _: float) -> None:
    if not waiter.done():
        waiter.set_exception(
            httpx.ReadTimeout("the attempt's timeout passed before the response was complete")
        )


def _pool_expired(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.PoolTimeout("no free connection slot in time"))


class Connection(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection: a receive buffer the reading coroutine pulls from.

    A buffered protocol: the event loop reads into a small per-connection buffer
    (``recv_into``) instead of allocating a fresh 256 KiB ``bytes`` for every read.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._landing = memoryview(bytearray(_READ_SIZE))
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self.closed = False  # lost, closed by the peer, or closed by us
        self.error: BaseException | None = None
        self.idle_since = 0.0
        self.requests = 0  # requests sent on this connection
        self.received = 0  # bytes of the current response seen so far
        self.deadline: float | None = None
        """``time.monotonic()`` by which the current response must be complete, if any:
        one deadline for the whole exchange, on top of any per-read timeout."""
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- asyncio.BufferedProtocol ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._landing

    def buffer_updated(self, nbytes: int) -> None:
        self._buffer += self._landing[:nbytes]
        self.received += nbytes
        if len(self._buffer) > _PAUSE_AT and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- used by the pool ---------------------------------------------------------
    @property
    def reusable(self) -> bool:
        """Open, and nothing arrived since the last response ended."""
        return not self.closed and not self._buffer

    def close(self, *, abort: bool = False) -> None:
        """Drop the connection (unread bytes and all). ``abort``: at once, without
        waiting to flush a request the server may never read (after an error, a
        timeout or a body left unread)."""
        self.closed = True
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def resume(self) -> None:
        """Read again (an idle connection must notice the server closing it)."""
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def send(self, data: bytes) -> None:
        """Write one request (head and body)."""
        assert self.transport is not None
        self.received = 0
        self.transport.write(data)

    async def _more(self, timeout: float | None) -> None:
        """Wait until more bytes (or the end of the connection) arrive."""
        if self.closed:
            raise self._disconnected()
        self.resume()
        loop = self._loop
        if loop is None:  # looked up once: each lookup is a getpid() system call
            loop = self._loop = asyncio.get_running_loop()
        expire: Callable[..., None] = _expire
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:  # even with bytes still arriving, the attempt is over
                raise httpx.ReadTimeout(
                    "the attempt's timeout passed before the response was complete"
                )
            if timeout is None or left < timeout:
                timeout, expire = left, _deadline_passed
        waiter = self._waiter = loop.create_future()
        if timeout is None:
            await waiter
            return
        # A timer that fails the waiter, not asyncio.wait_for: wait_for on Python 3.11
        # can swallow a cancellation (the attempt's deadline) that lands as data arrives.
        timer = loop.call_later(timeout, expire, waiter, timeout)
        try:
            await waiter
        finally:
            timer.cancel()

    def _disconnected(self) -> httpx.RemoteProtocolError:
        what = "before a response" if self.received == 0 else "in the middle of the response"
        detail = f" ({self.error})" if self.error is not None else ""
        return httpx.RemoteProtocolError(f"server disconnected {what}{detail}")

    async def read_head(self, timeout: float | None = None) -> ResponseHead:
        """Read and parse the next final (non-1xx) response head."""
        informational = 0
        while True:
            # The first blank line ends the head, whichever line ending it uses.
            end, size = self._buffer.find(b"\r\n\r\n"), 4
            bare = self._buffer.find(b"\n\n")
            if bare >= 0 and (end < 0 or bare < end):
                end, size = bare, 2
            if end > MAX_HEAD or (end < 0 and len(self._buffer) > MAX_HEAD):
                raise httpx.RemoteProtocolError(f"response head larger than {MAX_HEAD} bytes")
            if end < 0:
                await self._more(timeout)
                continue
            block = bytes(self._buffer[:end])
            del self._buffer[: end + size]
            head = _parse_head(block)
            if head.status == 101:
                raise httpx.RemoteProtocolError("unexpected 101 Switching Protocols")
            if head.status >= 200:
                return head
            # 1xx informational (100 Continue, 103 Early Hints): the real answer follows.
            informational += 1
            if informational > _MAX_INFORMATIONAL:
                raise httpx.RemoteProtocolError("too many 1xx informational responses")

    async def read_body(
        self, head: ResponseHead, limit: int, timeout: float | None = None
    ) -> tuple[bytes, bool]:
        """At most ``limit`` bytes of the body, and whether the whole body was read (so
        the connection may carry another request). Bytes past ``limit`` are never read."""
        length = head.content_length
        if length is not None:
            wanted = min(length, limit)
            while len(self._buffer) < wanted:
                await self._more(timeout)
            body = bytes(self._buffer[:wanted])
            if length > limit:
                return body, False
            del self._buffer[:length]
            return body, True
        chunks: list[bytes] = []
        size = 0
        parts = self.iter_body(head, timeout)
        try:
            async for chunk in parts:
                chunks.append(chunk[: limit - size])
                size += len(chunks[-1])
                if size >= limit:
                    return b"".join(chunks), False
        finally:
            await parts.aclose()
        return b"".join(chunks), True

    async def iter_body(
        self, head: ResponseHead, timeout: float | None
    ) -> AsyncGenerator[bytes, None]:
        """Yield the body as it arrives, ending where it ends."""
        if head.chunked:
            async for chunk in self._iter_chunked(timeout):
                yield chunk
        elif head.until_close:
            while True:
                if self._buffer:
                    data = bytes(self._buffer)
                    self._buffer.clear()
                    yield data
                if self.closed:
                    return
                await self._more_or_end(timeout)
        else:
            remaining = head.content_length or 0
            while remaining > 0:
                if not self._buffer:
                    await self._more(timeout)
                    continue
                data = bytes(self._buffer[:remaining])
                del self._buffer[: len(data)]
                remaining -= len(data)
                yield data

    async def _more_or_end(self, timeout: float | None) -> None:
        if not self.closed:
            with contextlib.suppress(httpx.RemoteProtocolError):
                await self._more(timeout)

    async def _line(self, timeout: float | None) -> bytes:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end]).rstrip(b"\r")
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) > 8192:
                raise httpx.RemoteProtocolError("chunk header too long")
            await self._more(timeout)

    async def _iter_chunked(self, timeout: float | None) -> AsyncIterator[bytes]:
        while True:
            line = await self._line(timeout)
            size_text = line.split(b";", 1)[0].strip(b" \t")
            if not size_text or len(size_text) > 16 or size_text.translate(None, _HEX_DIGITS):
                raise httpx.RemoteProtocolError(f"invalid chunk size {line[:40]!r}")
            size = int(size_text, 16)
            if size == 0:
                for _ in range(MAX_HEADERS + 1):
                    if not await self._line(timeout):  # trailer fields, up to the empty line
                        return
                raise httpx.RemoteProtocolError(f"more than {MAX_HEADERS} trailer fields")
            while size > 0:
                if not self._buffer:
                    await self._more(timeout)
                    continue
                data = bytes(self._buffer[:size])
                del self._buffer[: len(data)]
                size -= len(data)
                yield data
            if await self._line(timeout):
                raise httpx.RemoteProtocolError("chunk not followed by CRLF")


Connector = Callable[[str, int, "ssl.SSLContext | None", float | None], Awaitable[Connection]]
"""Opens a connection: ``connect(host, port, ssl_context, timeout)``."""


class ConnectionPool:
    """Idle keep-alive connections per origin, newest first, for one event loop.

    At most ``max_connections`` requests are in flight at once (more wait for a slot),
    and at most that many idle connections are kept; one idle for ``keepalive_timeout``
    seconds is closed instead of reused.
    """

    def __init__(
        self,
        connect: Connector,
        *,
        max_connections: int,
        keepalive_timeout: float,
    ) -> None:
        self._connect = connect
        self._max_connections = max_connections
        self._keepalive_timeout = keepalive_timeout
        self._idle: dict[Origin, list[Connection]] = {}
        self._idle_count = 0
        self._in_use = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.closed = False

    async def acquire(
        self,
        origin: Origin,
        connect_timeout: float | None,
        pool_timeout: float | None = None,
        *,
        deadline: float | None = None,
    ) -> Connection:
        """A connection to ``origin``: an idle one when there is one, else a new one.
        Raises `httpx.PoolTimeout` after waiting ``pool_timeout`` seconds for a slot.
        ``deadline`` (`time.monotonic`) bounds the slot wait and the connect together."""
        if deadline is not None:
            pool_timeout = _sooner(pool_timeout, deadline - time.monotonic())
        await self._take_slot(pool_timeout)
        try:
            connection = self._idle_connection(origin)
            if connection is None:
                if deadline is not None:  # what the slot wait left
                    connect_timeout = _sooner(connect_timeout, deadline - time.monotonic())
                _, host, port, context = origin
                connection = await self._connect(
                    host,
                    port,
                    context if isinstance(context, ssl.SSLContext) else None,
                    connect_timeout,
                )
        except BaseException:
            self._give_slot()
            raise
        connection.requests += 1
        return connection

    async def _take_slot(self, timeout: float | None) -> None:
        if self._in_use < self._max_connections and not self._waiters:
            self._in_use += 1
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        timer = None if timeout is None else loop.call_later(timeout, _pool_expired, waiter)
        try:
            await waiter  # the releasing request hands its slot over: _in_use is unchanged
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give_slot()  # handed over, then cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):  # already skipped by _give_slot
                    self._waiters.remove(waiter)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _give_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._in_use -= 1

    def _idle_connection(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            self._idle_count -= 1
            if connection.reusable and now - connection.idle_since < self._keepalive_timeout:
                return connection
            connection.close()
        return None

    def release(
        self, origin: Origin, connection: Connection, *, reuse: bool, abort: bool = False
    ) -> None:
        """Give a connection back after its response: kept when ``reuse`` and still
        open, closed otherwise (``abort``: at once, see `Connection.close`)."""
        if reuse and connection.reusable and not self.closed:
            connection.resume()
            connection.idle_since = time.monotonic()
            self._idle.setdefault(origin, []).append(connection)
            self._idle_count += 1
            if self._idle_count > self._max_connections:
                self._evict_oldest()
        else:
            connection.close(abort=abort)
        self._give_slot()

    def _evict_oldest(self) -> None:
        oldest: tuple[float, Origin] | None = None
        for origin, idle in self._idle.items():
            if idle and (oldest is None or idle[0].idle_since < oldest[0]):
                oldest = (idle[0].idle_since, origin)
        if oldest is not None:
            self._idle[oldest[1]].pop(0).close()
            self._idle_count -= 1

    def close(self) -> None:
        """Close every idle connection; connections in use close when released."""
        self.closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        self._idle_count = 0
