"""The HTTP/1.1 client under the default transport, against scripted raw servers on
127.0.0.1: response framing, the body cap, keep-alive reuse and its limits, bad answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest

from webhook_dispatch._http11 import ResponseHead, _parse_head, serialize_head
from webhook_dispatch.netguard import NetworkPolicy
from webhook_dispatch.transport import HTTPTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request's head and body (Content-Length framed, as the client sends)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


class Server:
    """A loopback server answering each request with the next scripted bytes."""

    def __init__(self, answers: list[bytes], *, close_after: bool = False) -> None:
        self.answers = answers
        self.close_after = close_after
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook?x=1"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                try:
                    self.requests.append(await _read_request(reader))
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                writer.write(self.answers.pop(0))
                await writer.drain()
                if self.close_after:
                    break
        finally:
            writer.close()


def _transport() -> HTTPTransport:
    return HTTPTransport(network_policy=NetworkPolicy(allow_private_networks=True))


async def _post(
    transport: HTTPTransport, url: str, body: bytes = b"{}", limit: int = 1024
) -> tuple[ResponseHead, bytes]:
    endpoint = transport.endpoint(url)
    request = endpoint.prefix + b"content-length: %d\r\n\r\n" % len(body) + body
    return await transport.post(endpoint, request, limit)


def run(coroutine: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 10))  # type: ignore[arg-type]


def test_content_length_response_and_keep_alive_reuse() -> None:
    async def scenario() -> None:
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nRetry-After: 3\r\n\r\nhello"
        async with Server([ok, ok, ok]) as server:
            transport = _transport()
            for _ in range(3):
                head, body = await _post(transport, server.url, b'{"a":1}')
                assert (head.status, body, head.header(b"retry-after")) == (200, b"hello", b"3")
            await transport.aclose()
        assert server.connections == 1
        request_head, request_body = server.requests[0]
        assert request_head.startswith(b"POST /hook?x=1 HTTP/1.1\r\nHost: 127.0.0.1:")
        assert request_body == b'{"a":1}'

    run(scenario())


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", b"hello"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n",
            b"abcde",
        ),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", b""),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            b"ok",
        ),
        (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", b"ok"),  # bare LF, tolerated
    ],
    ids=["chunked", "chunked-ext-trailer", "204", "100-continue", "bare-lf"],
)
def test_framings_are_read_and_the_connection_reused(answer: bytes, body: bytes) -> None:
    async def scenario() -> None:
        async with Server([answer, answer]) as server:
            transport = _transport()
            for _ in range(2):
                _, got = await _post(transport, server.url)
                assert got == body
            await transport.aclose()
        assert server.connections == 1

    run(scenario())


def test_close_delimited_body_and_connection_close_are_not_reused() -> None:
    async def scenario() -> None:
        until_close = b"HTTP/1.1 200 OK\r\n\r\nall of it"
        closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        async with Server([until_close], close_after=True) as server:
            transport = _transport()
            head, body = await _post(transport, server.url)
            assert (head.status, body) == (200, b"all of it")
            await transport.aclose()
        async with Server([closing, closing]) as server:
            transport = _transport()
            assert (await _post(transport, server.url))[1] == b"ok"
            assert (await _post(transport, server.url))[1] == b"ok"
            await transport.aclose()
        assert server.connections == 2

    run(scenario())


def test_body_past_the_limit_is_cut_and_the_connection_dropped() -> None:
    async def scenario() -> None:
        big = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000
        chunked = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"4000\r\n"
            + b"y" * 0x4000
            + b"\r\n0\r\n\r\n"
        )
        async with Server([big, chunked, big]) as server:
            transport = _transport()
            assert (await _post(transport, server.url, limit=10))[1] == b"x" * 10
            assert (await _post(transport, server.url, limit=10))[1] == b"y" * 10
            assert (await _post(transport, server.url, limit=10))[1] == b"x" * 10
            await transport.aclose()
        assert server.connections == 3  # never reused with unread bytes on it

    run(scenario())


def test_a_kept_alive_connection_the_server_closed_is_replaced() -> None:
    async def scenario() -> None:
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        async with Server([ok, ok], close_after=True) as server:
            transport = _transport()
            assert (await _post(transport, server.url))[1] == b"ok"
            await asyncio.sleep(0.05)  # the server's close reaches the idle connection
            assert (await _post(transport, server.url))[1] == b"ok"
            await transport.aclose()
        assert server.connections == 2
        assert len(server.requests) == 2

    run(scenario())


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (b"HTTP/2 200 OK\r\n\r\n", "invalid status line"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "invalid status line"),
        (b"HTTP/1.1 abc OK\r\n\r\n", "invalid status line"),
        (b"garbage\r\n\r\n", "invalid status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "invalid header line"),
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n", "invalid header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "conflicting"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "invalid chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n", "chunk size"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + b"T: 1\r\n" * 300,
            "trailer fields",
        ),
        (b"HTTP/1.1 103 Early Hints\r\n\r\n" * 12, "1xx"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n", "larger than"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "in the middle"),
        (b"", "before a response"),
    ],
)
def test_bad_answers_are_protocol_errors(answer: bytes, match: str) -> None:
    async def scenario() -> None:
        async with Server([answer], close_after=True) as server:
            transport = _transport()
            with pytest.raises(httpx.RemoteProtocolError, match=match):
                await _post(transport, server.url)
            await transport.aclose()

    run(scenario())


def test_refused_connection_is_a_connect_error() -> None:
    async def scenario() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        transport = _transport()
        with pytest.raises(httpx.ConnectError, match="cannot connect"):
            await _post(transport, f"http://127.0.0.1:{port}/")

    run(scenario())


def test_requests_in_flight_never_exceed_max_connections() -> None:
    async def scenario() -> None:
        open_now = 0
        most = 0

        async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal open_now, most
            try:
                while True:
                    try:
                        await _read_request(reader)
                    except (asyncio.IncompleteReadError, ConnectionError):
                        return
                    open_now += 1
                    most = max(most, open_now)
                    await asyncio.sleep(0.01)
                    open_now -= 1
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
            finally:
                writer.close()

        server = await asyncio.start_server(slow, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        transport = HTTPTransport(
            max_connections=3, network_policy=NetworkPolicy(allow_private_networks=True)
        )
        results = await asyncio.gather(*(_post(transport, url) for _ in range(20)))
        assert [head.status for head, _ in results] == [200] * 20
        assert most <= 3
        await transport.aclose()
        server.close()

    run(scenario())


def test_the_httpx_interface_streams_the_whole_body() -> None:
    async def scenario() -> None:
        body = b"z" * 200_000
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Y: 1\r\n\r\n" % len(body) + body
        async with Server([answer, answer]) as server:
            transport = _transport()
            async with httpx.AsyncClient(transport=transport) as client:
                for _ in range(2):
                    response = await client.post(server.url, json={"a": 1})
                    assert response.status_code == 200
                    assert response.headers["x-y"] == "1"
                    assert response.content == body
        assert server.connections == 1
        assert server.requests[0][1] == b'{"a":1}'

    run(scenario())


def test_a_request_header_that_would_split_the_request_is_refused() -> None:
    with pytest.raises(httpx.LocalProtocolError):
        serialize_head("POST", b"/", b"h", [(b"x-a", b"1\r\nX-Injected: 1")], 0)
    with pytest.raises(httpx.LocalProtocolError):
        serialize_head("POST", b"/", b"h", [(b"x-a:b", b"1")], 0)


def test_parse_head_lowercases_names_and_reads_framing() -> None:
    head = _parse_head(b"HTTP/1.0 503 Busy\r\nRetry-After: 120\r\nContent-Length: 0")
    assert head.status == 503
    assert head.headers == [(b"retry-after", b"120"), (b"content-length", b"0")]
    assert not head.keep_alive  # HTTP/1.0 without keep-alive
    both = _parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 4")
    assert both.chunked and not both.keep_alive


def test_a_request_the_server_dropped_is_not_sent_again() -> None:
    """A webhook that may have arrived is the schedule's to retry, never resent unseen."""

    async def scenario() -> None:
        async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await _read_request(reader))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            seen.append(await _read_request(reader))
            writer.close()  # the second request read, then dropped unanswered

        seen: list[tuple[bytes, bytes]] = []
        server = await asyncio.start_server(answer_once, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        transport = _transport()
        assert (await _post(transport, url))[0].status == 200
        with pytest.raises(httpx.RemoteProtocolError, match="before a response"):
            await _post(transport, url)
        await asyncio.sleep(0.05)
        assert len(seen) == 2
        await transport.aclose()
        server.close()

    run(scenario())


def test_an_international_host_name_is_resolved_and_sent_in_its_ascii_form() -> None:
    async def scenario() -> None:
        asked: list[str] = []

        def resolve(host: str, port: int) -> list[str]:
            asked.append(host)
            return ["127.0.0.1"]

        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        async with Server([ok]) as server:
            transport = HTTPTransport(
                network_policy=NetworkPolicy(allow_private_networks=True), resolve=resolve
            )
            head, _ = await _post(transport, f"http://bücher.example:{server.port}/h")
            assert head.status == 200
            await transport.aclose()
        assert asked == ["xn--bcher-kva.example"]
        assert f"Host: xn--bcher-kva.example:{server.port}\r\n".encode() in server.requests[0][0]

    run(scenario())


def test_the_first_blank_line_ends_the_head_whatever_its_line_ending() -> None:
    async def scenario() -> None:
        answer = b"HTTP/1.1 200 OK\nContent-Length: 0\n\nX-Injected: 1\r\n\r\n"
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        async with Server([answer, ok]) as server:
            transport = _transport()
            head, _ = await _post(transport, server.url)
            assert head.header(b"x-injected") is None
            await _post(transport, server.url)  # on a fresh connection: bytes were left over
            await transport.aclose()
        assert server.connections == 2

    run(scenario())


def test_a_timed_out_request_to_a_server_that_never_reads_is_aborted() -> None:
    async def scenario() -> None:
        done = asyncio.Event()
        got = 0

        async def reads_late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal got
            writer.transport.pause_reading()  # type: ignore[attr-defined]
            await asyncio.sleep(0.5)
            writer.transport.resume_reading()  # type: ignore[attr-defined]
            try:
                while chunk := await reader.read(1 << 20):
                    got += len(chunk)
            except ConnectionError:
                pass
            done.set()

        server = await asyncio.start_server(reads_late, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        transport = _transport()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await _post(transport, url, body=b"x" * (16 << 20))
        await asyncio.wait_for(done.wait(), 5)
        # Aborted, not left to flush 16 MiB nobody was reading: the rest never came.
        assert got < 16 << 20
        server.close()

    run(scenario())


def test_waiting_for_a_connection_slot_honours_the_pool_timeout() -> None:
    async def scenario() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(5)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        transport = HTTPTransport(
            max_connections=1, network_policy=NetworkPolicy(allow_private_networks=True)
        )
        first = asyncio.ensure_future(_post(transport, url))
        await asyncio.sleep(0.05)
        request = httpx.Request("POST", url, content=b"{}", extensions={"timeout": {"pool": 0.1}})
        with pytest.raises(httpx.PoolTimeout):
            await transport.handle_async_request(request)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        server.close()

    run(scenario())


def test_an_auth_flow_that_fails_gives_its_connection_slot_back() -> None:
    """A flow that raises (a token service down) or runs out of time still releases the
    response's connection: otherwise every slot of the shared pool leaks away."""
    from datetime import datetime, timezone

    from webhook_dispatch.clock import SystemClock
    from webhook_dispatch.engine import Engine
    from webhook_dispatch.models import Delivery, DeliveryStatus, Message, Subscription
    from webhook_dispatch.stores.base import Claim

    class FailsAfterTheFirstAnswer(httpx.Auth):
        async def async_auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def,override]
            yield request
            raise RuntimeError("token service unavailable")

    async def scenario() -> None:
        ok = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"
        async with Server([ok] * 3) as server:
            transport = HTTPTransport(
                max_connections=1, network_policy=NetworkPolicy(allow_private_networks=True)
            )
            engine = Engine(transport, SystemClock())
            now = datetime.now(timezone.utc)
            subscription = Subscription(
                id="sub_1",
                url=server.url,
                secret="whsec_" + "A" * 32,
                created_at=now,
                updated_at=now,
                auth=FailsAfterTheFirstAnswer(),
                timeout=2.0,
            )
            message = Message(
                id="msg_1",
                event_type="a.b",
                payload=b"{}",
                content_type="application/json",
                created_at=now,
            )
            for _ in range(3):  # with one slot, a leak would time the next attempts out
                delivery = Delivery(
                    id="dlv_1",
                    message_id="msg_1",
                    subscription_id="sub_1",
                    status=DeliveryStatus.DELIVERING,
                    attempt_count=0,
                    next_attempt_at=None,
                    created_at=now,
                    updated_at=now,
                )
                attempt, _ = await engine.attempt(Claim(delivery, message, subscription))
                assert "token service unavailable" in (attempt.error or "")
            await transport.aclose()
        assert len(server.requests) == 3

    run(scenario())


def test_a_deadline_covers_the_slot_wait_and_nothing_is_sent_after_it() -> None:
    """One deadline for the whole exchange: an attempt that waited for a connection slot
    until its time was up fails as a timeout without its request reaching the server
    (which would count it as sent while the sender retries it)."""

    async def scenario() -> None:
        seen: list[bytes] = []

        async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                try:
                    head, _ = await _read_request(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                seen.append(head)
                await asyncio.sleep(0.3)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()

        server = await asyncio.start_server(slow, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        transport = HTTPTransport(
            max_connections=1, network_policy=NetworkPolicy(allow_private_networks=True)
        )
        endpoint = transport.endpoint(url)
        request = endpoint.prefix + b"content-length: 2\r\n\r\n{}"
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(transport.post(endpoint, request, 1024))
        await asyncio.sleep(0.05)
        started = loop.time()
        with pytest.raises(httpx.TimeoutException):
            await transport.post(endpoint, request, 1024, deadline=time.monotonic() + 0.15)
        assert loop.time() - started < 0.3  # not the slot wait plus a whole connect
        head, _ = await first
        assert head.status == 200
        await asyncio.sleep(0.05)
        assert len(seen) == 1  # the timed-out request was never written
        # The slot and the connection came back: the next request goes through.
        head, _ = await transport.post(endpoint, request, 1024, deadline=time.monotonic() + 2)
        assert head.status == 200
        server.close()

    run(scenario())


def test_a_response_still_streaming_at_the_deadline_is_cut_off() -> None:
    async def scenario() -> None:
        async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            for _ in range(100):
                writer.write(b"x" * 10)
                await writer.drain()
                await asyncio.sleep(0.01)

        server = await asyncio.start_server(drip, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        transport = _transport()
        endpoint = transport.endpoint(url)
        request = endpoint.prefix + b"content-length: 2\r\n\r\n{}"
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await transport.post(endpoint, request, 1 << 20, deadline=started + 0.2)
        assert time.monotonic() - started < 0.6
        server.close()

    run(scenario())
