"""A misbehaving HTTP receiver on 127.0.0.1 for the chaos suite: raw asyncio sockets, so
it can answer, stall, reset, hang up or talk garbage at the byte level.

What to do with each request comes from a ``decide(path, webhook_id, body, index)``
callable (``index``: how many requests this path already got for this webhook-id), and
every request is written to `ChaosReceiver.log` before the receiver acts: that log is the
truth the store's attempt history is checked against.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import webhook_dispatch as wd


class Behaviour(str, enum.Enum):
    """One way of answering a request."""

    OK = "200"
    ERROR_500 = "500"
    RETRY_AFTER_503 = "503+Retry-After"
    TOO_MANY_429 = "429"
    SLOW_HEADERS = "slow headers"
    SLOW_BODY = "slow body"
    HUGE_BODY = "huge body"
    RESET = "reset"
    CLOSE = "close, no response"
    GARBAGE = "garbage bytes"
    HANG = "never answers"


SUCCESSES = (Behaviour.OK, Behaviour.SLOW_HEADERS, Behaviour.SLOW_BODY, Behaviour.HUGE_BODY)
FAILURES = (
    Behaviour.ERROR_500,
    Behaviour.RETRY_AFTER_503,
    Behaviour.TOO_MANY_429,
    Behaviour.RESET,
    Behaviour.CLOSE,
    Behaviour.GARBAGE,
    Behaviour.HANG,
)

# What the store must record for an attempt the receiver answered this way: a status
# code, or the error kinds an attempt without a response may carry.
EXPECTED_STATUS: dict[Behaviour, int] = {
    Behaviour.OK: 200,
    Behaviour.SLOW_HEADERS: 200,
    Behaviour.SLOW_BODY: 200,
    Behaviour.HUGE_BODY: 200,
    Behaviour.ERROR_500: 500,
    Behaviour.RETRY_AFTER_503: 503,
    Behaviour.TOO_MANY_429: 429,
}
EXPECTED_ERRORS: dict[Behaviour, frozenset[wd.ErrorKind]] = {
    # A reset read as a dropped connection or as a reset socket: both are "no response".
    Behaviour.RESET: frozenset({wd.ErrorKind.CONNECT, wd.ErrorKind.PROTOCOL}),
    Behaviour.CLOSE: frozenset({wd.ErrorKind.PROTOCOL, wd.ErrorKind.CONNECT}),
    Behaviour.GARBAGE: frozenset({wd.ErrorKind.PROTOCOL}),
    Behaviour.HANG: frozenset({wd.ErrorKind.TIMEOUT}),
}

RETRY_AFTER_SECONDS = 1
SLOW_SECONDS = 0.3
HUGE_BODY_SIZE = 8 * 1024 * 1024


class Request(NamedTuple):
    """One request as the receiver read it, and how it chose to answer."""

    path: str
    webhook_id: str
    index: int
    behaviour: Behaviour
    timestamp: int
    verified: bool | None
    arrived: float
    """`time.monotonic()` when the whole request had been read."""


Decide = Callable[[str, str, bytes, int], Behaviour]


class ChaosReceiver:
    """An HTTP/1.1 server on 127.0.0.1 (random port) in its own thread and event loop."""

    def __init__(self, decide: Decide, *, secrets: dict[str, str] | None = None) -> None:
        self._decide = decide
        self._secrets = dict(secrets or {})
        self._seen: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self.log: list[Request] = []
        self.answered_at: dict[tuple[str, str, int], float] = {}
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    # -- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> ChaosReceiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", 0, backlog=1024, limit=2**20
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add_secret(self, path: str, secret: str) -> None:
        with self._lock:
            self._secrets[path] = secret

    def snapshot(self) -> list[Request]:
        with self._lock:
            return list(self.log)

    def __len__(self) -> int:
        return len(self.log)

    # -- one connection -------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Read and answer one request; False when the connection is to end."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        webhook_id = headers.get("webhook-id", "")
        with self._lock:
            index = self._seen.get((path, webhook_id), 0)
            self._seen[(path, webhook_id)] = index + 1
            secret = self._secrets.get(path)
        behaviour = self._decide(path, webhook_id, body, index)
        verified: bool | None = None
        if secret is not None:
            try:
                wd.verify(body, headers, secret)
                verified = True
            except wd.InvalidSignature:
                verified = False
        request = Request(
            path,
            webhook_id,
            index,
            behaviour,
            int(headers.get("webhook-timestamp", "0")),
            verified,
            time.monotonic(),
        )
        with self._lock:
            self.log.append(request)
        keep_open = await self._act(behaviour, reader, writer)
        self.answered_at[(path, webhook_id, index)] = time.monotonic()
        return keep_open

    async def _act(
        self, behaviour: Behaviour, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if behaviour in (Behaviour.OK, Behaviour.ERROR_500, Behaviour.TOO_MANY_429):
            writer.write(_response(EXPECTED_STATUS[behaviour]))
        elif behaviour is Behaviour.RETRY_AFTER_503:
            writer.write(_response(503, f"retry-after: {RETRY_AFTER_SECONDS}\r\n"))
        elif behaviour is Behaviour.SLOW_HEADERS:
            await asyncio.sleep(SLOW_SECONDS)
            writer.write(_response(200))
        elif behaviour is Behaviour.SLOW_BODY:
            body = b"x" * 4000
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4000\r\n\r\n")
            for start in range(0, len(body), 1000):
                await writer.drain()
                await asyncio.sleep(SLOW_SECONDS / 4)
                writer.write(body[start : start + 1000])
        elif behaviour is Behaviour.HUGE_BODY:
            writer.write(f"HTTP/1.1 200 OK\r\ncontent-length: {HUGE_BODY_SIZE}\r\n\r\n".encode())
            chunk = b"y" * 65536
            for _ in range(HUGE_BODY_SIZE // len(chunk)):
                writer.write(chunk)
                await writer.drain()  # the client reads its cap and hangs up: this raises
            return False
        elif behaviour is Behaviour.RESET:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False  # abort() with linger 0 sends RST
        elif behaviour is Behaviour.CLOSE:
            writer.close()
            return False
        elif behaviour is Behaviour.GARBAGE:
            writer.write(b"\x00\xff\xfeNOT HTTP AT ALL \x1b[31m\r\n\r\n\x00\x00")
            await writer.drain()
            return False
        elif behaviour is Behaviour.HANG:
            await reader.read()  # until the client gives up and closes
            return False
        await writer.drain()
        return True


def _response(status: int, extra: str = "") -> bytes:
    body = b"ok" if status < 300 else b"not now"
    return f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body
