"""The engine against real sockets on 127.0.0.1: default transport, signatures checked by
the receiver, capped reads, no redirects, timeouts and broken servers."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator

import attrs
import pytest

import webhook_dispatch as wd
from webhook_dispatch._receiver import LoopbackReceiver
from webhook_dispatch.engine import USER_AGENT, build_request, signed_headers
from webhook_dispatch.testing import MockReceiver


def test_delivers_to_a_real_http_server_which_verifies_the_signature(
    loopback: LoopbackReceiver,
) -> None:
    secret = wd.generate_secret()
    url = loopback.route("/hooks", [200], secret=secret)
    with wd.Dispatcher(allow_private_networks=True) as dispatcher:
        dispatcher.subscribe(url, secret=secret, headers={"X-Tenant": "42"})
        message = dispatcher.publish("order.created", {"id": "ord_1"})
        assert dispatcher.run_until_idle() == 1
        (attempt,) = dispatcher.attempts(message.id)
    (received,) = loopback.requests_to("/hooks")
    assert received.verified is True
    assert received.webhook_id == message.id
    assert received.body == message.payload
    assert received.headers["content-type"] == "application/json"
    assert received.headers["user-agent"] == USER_AGENT
    assert received.headers["x-tenant"] == "42"
    assert attempt.status_code == 200
    assert attempt.response_body == b"ok"
    assert attempt.duration > 0


def test_real_server_retries_then_succeeds(loopback: LoopbackReceiver) -> None:
    secret = wd.generate_secret()
    url = loopback.route("/flaky", [503, 503, 200], secret=secret)
    with wd.Dispatcher(
        retry=wd.RetryPolicy.fixed([0, 0, 0]), allow_private_networks=True
    ) as dispatcher:
        dispatcher.subscribe(url, secret=secret)
        message = dispatcher.publish("order.created", {"id": "ord_1"})
        dispatcher.run_until_idle()
        statuses = [a.status_code for a in dispatcher.attempts(message.id)]
    assert statuses == [503, 503, 200]
    assert all(r.verified for r in loopback.received)


class RawServer:
    """A TCP server on 127.0.0.1 whose connection handler is a plain function."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._handle = handle
        self.connections = 0
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/hook"

    def _serve(self) -> None:
        while not self._stop:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._run, args=(connection,), daemon=True).start()

    def _run(self, connection: socket.socket) -> None:
        try:
            self._handle(connection)
        except OSError:
            pass
        finally:
            connection.close()

    def close(self) -> None:
        self._stop = True
        self._listener.close()


def read_request(connection: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(body) < length:
        body += connection.recv(65536)
    return head


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket], None]], RawServer]]:
    servers: list[RawServer] = []

    def start(handle: Callable[[socket.socket], None]) -> RawServer:
        servers.append(RawServer(handle))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def deliver_once(url: str, *, timeout: float = 15.0) -> wd.Attempt:
    with wd.Dispatcher(retry=wd.RetryPolicy.fixed([0]), allow_private_networks=True) as dispatcher:
        dispatcher.subscribe(url, timeout=timeout)
        message = dispatcher.publish("order.created", {"id": "ord_1"})
        dispatcher.run_until_idle()
        (attempt,) = dispatcher.attempts(message.id)
        return attempt


def test_huge_response_body_is_not_read_past_the_cap(raw_server) -> None:  # type: ignore[no-untyped-def]
    sent = {"bytes": 0}

    def handle(connection: socket.socket) -> None:
        read_request(connection)
        size = 100 * 1024 * 1024
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        chunk = b"x" * 65536
        try:
            for _ in range(size // len(chunk)):
                connection.sendall(chunk)
                sent["bytes"] += len(chunk)
        except OSError:
            pass  # the client hung up: exactly what we want

    server = raw_server(handle)
    started = time.monotonic()
    attempt = deliver_once(server.url)
    assert attempt.status_code == 200
    assert len(attempt.response_body) == 16 * 1024
    assert time.monotonic() - started < 10
    time.sleep(0.2)
    assert sent["bytes"] < 20 * 1024 * 1024  # the rest of the 100 MB never crossed


def test_redirect_is_not_followed(raw_server) -> None:  # type: ignore[no-untyped-def]
    def handle(connection: socket.socket) -> None:
        read_request(connection)
        connection.sendall(
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:1/elsewhere\r\n"
            b"Content-Length: 0\r\n\r\n"
        )

    server = raw_server(handle)
    attempt = deliver_once(server.url)
    assert attempt.status_code == 307
    assert attempt.response_headers["location"] == "http://127.0.0.1:1/elsewhere"
    assert server.connections == 1


def test_silent_server_times_out(raw_server) -> None:  # type: ignore[no-untyped-def]
    def handle(connection: socket.socket) -> None:
        read_request(connection)
        time.sleep(3)

    server = raw_server(handle)
    started = time.monotonic()
    attempt = deliver_once(server.url, timeout=0.5)
    assert attempt.error_kind is wd.ErrorKind.TIMEOUT
    assert time.monotonic() - started < 2.5


def test_a_trickling_response_is_cut_off_at_the_attempts_timeout(raw_server) -> None:  # type: ignore[no-untyped-def]
    """The timeout bounds the whole attempt: a server sending a byte every 50 ms never
    leaves the client waiting long for the next read, yet the attempt ends on time."""

    def handle(connection: socket.socket) -> None:
        read_request(connection)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n")
        for _ in range(200):
            connection.sendall(b"x")
            time.sleep(0.05)

    server = raw_server(handle)
    started = time.monotonic()
    attempt = deliver_once(server.url, timeout=0.6)
    elapsed = time.monotonic() - started
    assert attempt.error_kind is wd.ErrorKind.TIMEOUT
    assert attempt.error is not None and "timeout" in attempt.error
    assert 0.5 < attempt.duration < 2.0
    assert elapsed < 5


def test_garbage_response_is_a_protocol_error(raw_server) -> None:  # type: ignore[no-untyped-def]
    def handle(connection: socket.socket) -> None:
        read_request(connection)
        connection.sendall(b"\x00\x01garbage that is not HTTP\r\n\r\n")

    attempt = deliver_once(raw_server(handle).url)
    assert attempt.status_code is None
    assert attempt.error_kind in (wd.ErrorKind.PROTOCOL, wd.ErrorKind.CONNECT)


def test_closed_without_response_is_retryable(raw_server) -> None:  # type: ignore[no-untyped-def]
    def handle(connection: socket.socket) -> None:
        read_request(connection)

    attempt = deliver_once(raw_server(handle).url)
    assert attempt.status_code is None
    assert attempt.error_kind in (wd.ErrorKind.PROTOCOL, wd.ErrorKind.CONNECT)


def test_connection_refused_is_a_connect_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    attempt = deliver_once(f"http://127.0.0.1:{port}/hook")
    assert attempt.error_kind is wd.ErrorKind.CONNECT


def test_build_request_signs_with_every_current_secret() -> None:
    clock_now = 1_900_000_000
    old, new = wd.generate_secret(), wd.generate_secret()
    subscription = wd.Subscription(
        id="sub_1",
        url="https://example.com/h",
        secret=new,
        created_at=wd.testing.FakeClock().now(),
        updated_at=wd.testing.FakeClock().now(),
    )
    message = wd.Message(
        id="msg_1", event_type="a.b", payload=b"{}", created_at=subscription.created_at
    )
    request = build_request(message, subscription, timestamp=clock_now, signing_secrets=[new, old])
    signatures = request.headers["webhook-signature"].split(" ")
    assert signatures == [
        wd.sign(new, "msg_1", clock_now, b"{}"),
        wd.sign(old, "msg_1", clock_now, b"{}"),
    ]
    for secret in (old, new):
        wd.verify(b"{}", request.headers, secret, now=clock_now)


def test_async_dispatcher_delivers_on_the_callers_loop(loopback: LoopbackReceiver) -> None:
    secret = wd.generate_secret()
    url = loopback.route("/async", [200], secret=secret)

    async def scenario() -> list[wd.Attempt]:
        async with wd.AsyncDispatcher(allow_private_networks=True) as dispatcher:
            await dispatcher.subscribe(url, secret=secret)
            message = await dispatcher.publish("order.created", {"n": 1})
            await dispatcher.run_until_idle()
            return await dispatcher.attempts(message.id)

    (attempt,) = asyncio.run(scenario())
    assert attempt.status_code == 200
    assert loopback.received[0].verified is True


# -- reserved headers never leave a stored subscription or message ---------------------
# A store written by other means (an older version, a migration, a hand edit) may hold
# headers `subscribe` and `publish` refuse: the library's own, the transport's framing,
# the scheme's signature, the auth's credential. No path may send them.
SMUGGLED = {
    "Host": "evil.example",
    "Content-Length": "0",
    "Transfer-Encoding": "chunked",
    "Connection": "close",
    "Expect": "100-continue",
    "User-Agent": "spoofed/1.0",
    "Content-Type": "text/evil",
    "webhook-id": "msg_forged",
    "webhook-timestamp": "1",
    "webhook-signature": "v1,forged",
    "Authorization": "Bearer stored",  # reserved only when auth= sets it
    "X-Kept": "yes",
}
# Sent exactly once, by the library, the transport, auth= or (x-kept) as stored; the
# rest of SMUGGLED never.
SENT_ONCE = {"host", "content-length", "user-agent", "content-type", "authorization"} | {
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-kept",
}


def _smuggle(dispatcher: wd.Dispatcher, subscription: wd.Subscription) -> None:
    """Write the headers straight into the store, past `subscribe`'s validation."""
    dispatcher.store.save_subscription(attrs.evolve(subscription, headers=SMUGGLED))


def _head_lines(head: bytes) -> list[tuple[str, str]]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return [
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(":") for line in lines)
    ]


@pytest.mark.parametrize("auth", [None, wd.BearerToken("t" * 24)], ids=["default", "auth"])
def test_reserved_headers_in_a_stored_subscription_are_never_sent(
    raw_server,
    auth: wd.BearerToken | None,  # type: ignore[no-untyped-def]
) -> None:
    heads: list[bytes] = []

    def handle(connection: socket.socket) -> None:
        heads.append(read_request(connection))
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    server = raw_server(handle)
    with wd.Dispatcher(allow_private_networks=True, retry=wd.RetryPolicy.fixed([0])) as d:
        subscription = d.subscribe(server.url, auth=auth, headers={"X-Kept": "yes"})
        _smuggle(d, subscription)
        message = d.publish("order.created", {"id": "ord_1"})
        d.run_until_idle()
        [attempt] = d.attempts(message.id)
    assert attempt.status_code == 200, attempt.error
    [head] = heads
    lines = _head_lines(head)
    names = [name for name, _ in lines]
    for name in {name.lower() for name in SMUGGLED}:
        assert names.count(name) == (1 if name in SENT_ONCE else 0), (name, head)
    sent = dict(lines)
    assert sent["host"] == server.url.split("/")[2]
    assert sent["user-agent"] == USER_AGENT
    assert sent["content-type"] == "application/json"
    assert sent["webhook-id"] == message.id
    assert sent["x-kept"] == "yes"
    assert sent["authorization"] == ("Bearer " + "t" * 24 if auth else "Bearer stored")
    assert "forged" not in head.decode("latin-1") and "evil" not in head.decode("latin-1")
    assert attempt.request_headers.keys().isdisjoint({"Host", "Transfer-Encoding", "Connection"})


def test_reserved_headers_never_reach_a_transport_of_ones_own() -> None:
    receiver = MockReceiver()
    with wd.Dispatcher(transport=receiver) as dispatcher:
        subscription = dispatcher.subscribe("https://example.com/hooks", headers={"X-Kept": "1"})
        _smuggle(dispatcher, subscription)
        message = dispatcher.publish("order.created", {"id": "ord_1"})
        dispatcher.run_until_idle()
    [request] = receiver.requests
    assert request.headers["x-kept"] == "yes"
    assert request.headers.get_list("webhook-signature") == [request.headers["webhook-signature"]]
    assert "forged" not in request.headers["webhook-signature"]
    assert request.headers["webhook-id"] == message.id
    assert request.headers.get_list("user-agent") == [USER_AGENT]
    assert request.headers.get_list("content-type") == ["application/json"]
    for name in ("transfer-encoding", "connection", "expect"):
        assert name not in request.headers, name
    assert request.headers.get_list("authorization") == ["Bearer stored"]  # no auth= here
    assert request.headers.get("host", "example.com") == "example.com"


def test_signed_headers_drop_reserved_names_of_the_subscription_and_the_message() -> None:
    now = wd.testing.FakeClock().now()
    secret = wd.generate_secret()
    subscription = wd.Subscription(
        id="sub_1", url="https://example.com/h", secret=secret, created_at=now, updated_at=now
    )
    subscription = attrs.evolve(subscription, headers=SMUGGLED)
    message = wd.Message(
        id="msg_1",
        event_type="a.b",
        payload=b"{}",
        created_at=now,
        headers={"content-length": "99", "X-Trace": "t1", "HOST": "evil.example"},
    )
    sent = signed_headers(message, subscription, timestamp=1_900_000_000, signing_secrets=[secret])
    assert [name for name, _ in sent] == ["webhook-signature", "Authorization", "X-Kept", "X-Trace"]
    with_auth = attrs.evolve(subscription, auth=wd.BearerToken("t" * 24))
    sent_with_auth = signed_headers(
        message, with_auth, timestamp=1_900_000_000, signing_secrets=[secret]
    )
    assert [name for name, _ in sent_with_auth] == ["webhook-signature", "X-Kept", "X-Trace"]
    request = build_request(
        message, subscription, timestamp=1_900_000_000, signing_secrets=[secret]
    )
    wd.verify(b"{}", request.headers, secret, now=1_900_000_000)
    assert request.headers.get_list("host") == ["example.com"]
    assert "content-length" not in dict(sent)
