"""One attempt of one delivery: build the signed request, send it, read a capped answer.

Building the request and turning an httpx response or exception into an `Outcome` are
plain functions; `Engine.attempt` only adds the I/O between them.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import attrs
import httpx

from ._redact import MASK
from ._validation import RESERVED_HEADERS
from ._version import __version__
from .clock import Clock
from .errors import AuthError, BlockedAddress
from .formats import render
from .models import Attempt, ErrorKind, Message, Subscription, new_id
from .retry import Outcome
from .signing import Signer, get_signer
from .stores.base import Claim
from .transport import TLS_EXTENSION, HTTPTransport, TLSSettings

__all__ = [
    "RESPONSE_BODY_CAP",
    "USER_AGENT",
    "Engine",
    "build_request",
    "outcome_from_exception",
    "reserved_header_names",
]

USER_AGENT = f"webhook-dispatch/{__version__}"
RESPONSE_BODY_CAP = 16 * 1024
"""Bytes of a response body read and kept; the rest is never read."""

T = TypeVar("T")

_KEPT_RESPONSE_HEADERS = ("content-type", "location", "retry-after")
# A custom auth that asks to read responses (requires_response_body) gets at most this.
_AUTH_RESPONSE_LIMIT = 1024 * 1024


def reserved_header_names(subscription: Subscription) -> frozenset[str]:
    """The lowercase names an attempt never takes from the subscription's or the
    message's own headers: `RESERVED_HEADERS` (what the library sets, ``user-agent``,
    ``content-type`` and ``webhook-*``, and the transport's framing, ``host``,
    ``content-length``, ``transfer-encoding``, ``connection``, ...), the headers of the
    subscription's signature scheme, and those its auth= sets.

    `subscribe` and `publish` refuse these names; a store written by other means may
    still hold them, and every path of an attempt drops them here (`signed_headers`).
    """
    taken = RESERVED_HEADERS.union(
        name.lower() for name in get_signer(subscription.signature).header_names
    )
    if subscription.auth is not None:
        taken = taken.union(name.lower() for name in _auth_header_names(subscription.auth))
    return taken


def signed_headers(
    message: Message, subscription: Subscription, *, timestamp: int, signing_secrets: list[str]
) -> list[tuple[str, str]]:
    """The headers of one attempt after the fixed four (content type, user agent,
    ``webhook-id``, ``webhook-timestamp``): the scheme's signature(s) and event headers,
    then the subscription's own headers with the message's own over them (same name,
    any case). Own headers with a `reserved_header_names` name are dropped, so a message
    header never replaces one that auth= sets. Every path of an attempt (the bytes fast
    path, the auth flow, a transport of the user's own) sends exactly these."""
    signer = get_signer(subscription.signature)
    headers = signer.sign(signing_secrets, message.id, timestamp, message.payload)
    event_headers = _event_headers(signer)
    if event_headers is not None:
        headers += event_headers(message.id, message.event_type)
    if not subscription.headers and not message.headers:
        return headers  # the common case: nothing of their own to screen
    reserved = reserved_header_names(subscription)
    own = {name.lower() for name in message.headers} - reserved
    headers += [
        (n, v)
        for n, v in subscription.headers.items()
        if n.lower() not in own and n.lower() not in reserved
    ]
    headers += [(n, v) for n, v in message.headers.items() if n.lower() in own]
    return headers


def as_sent(message: Message, subscription: Subscription) -> Message:
    """The message as the subscription's body format writes it (`formats.render`): its
    content type, body and any headers of the format (``ce-*``) before its own."""
    content_type, body, extra = render(message, subscription.body_format, subscription.event_source)
    if extra:
        headers = dict(extra)
        headers.update(message.headers)
    else:
        headers = dict(message.headers)
    return attrs.evolve(message, content_type=content_type, payload=body, headers=headers)


def _event_headers(signer: Signer) -> Callable[[str, str], list[tuple[str, str]]] | None:
    # An attribute read: isinstance() with a runtime-checkable protocol costs microseconds
    # per attempt.
    method: Callable[[str, str], list[tuple[str, str]]] | None = getattr(
        signer, "event_headers", None
    )
    return method


def recorded_headers(
    message: Message, subscription: Subscription, timestamp: int, sent: list[tuple[str, str]]
) -> dict[str, str]:
    """What `Attempt.request_headers` keeps of a request: every header sent, with ``***``
    for the values of signatures, of auth= headers and of the subscription's own
    headers (they may hold credentials, as the CLI assumes too). A message's own
    headers are event data and are kept as sent."""
    event_headers = _event_headers(get_signer(subscription.signature))
    shown = {name.lower() for name in message.headers} if message.headers else set()
    if event_headers is not None:
        shown.update(name.lower() for name, _ in event_headers("", ""))
    recorded = {
        "content-type": message.content_type,
        "user-agent": USER_AGENT,
        "webhook-id": message.id,
        "webhook-timestamp": str(timestamp),
    }
    for name, value in sent:
        recorded[name] = value if name.lower() in shown else MASK
    if subscription.auth is not None:
        for name in _auth_header_names(subscription.auth):
            recorded[name] = MASK
    return recorded


def _auth_header_names(auth: object) -> tuple[str, ...]:
    """The headers an auth sets; an httpx.Auth that is no `EndpointAuth` is taken to set
    ``authorization``."""
    names = getattr(auth, "header_names", None)
    return tuple(names()) if callable(names) else ("authorization",)


def build_request(
    message: Message,
    subscription: Subscription,
    *,
    timestamp: int,
    signing_secrets: list[str],
    signed: list[tuple[str, str]] | None = None,
) -> httpx.Request:
    """The POST for one attempt: exact stored body, fresh timestamp and signature(s) in
    the subscription's scheme (``signed``: `signed_headers`, when already made). Its own
    TLS settings travel in the request's extensions (`TLS_EXTENSION`); authentication
    is applied when it is sent."""
    if signed is None:
        signed = signed_headers(
            message, subscription, timestamp=timestamp, signing_secrets=signing_secrets
        )
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", message.content_type.encode("latin-1")),
        (b"user-agent", USER_AGENT.encode("ascii")),
        (b"webhook-id", message.id.encode("ascii")),
        (b"webhook-timestamp", str(timestamp).encode("ascii")),
    ]
    headers.extend((name.encode("latin-1"), value.encode("latin-1")) for name, value in signed)
    timeout = subscription.timeout
    extensions: dict[str, object] = {
        "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
    }
    tls = TLSSettings(subscription.ca_bundle, subscription.client_cert, subscription.client_key)
    if not tls.is_default:
        extensions[TLS_EXTENSION] = tls
    return httpx.Request(
        "POST",
        _parsed_url(subscription.url),
        headers=headers,
        content=message.payload,
        extensions=extensions,
    )


@functools.lru_cache(maxsize=4096)
def _parsed_url(url: str) -> httpx.URL:
    # Parsing a URL is the largest cost of building a request; endpoints repeat, and
    # httpx.URL is immutable, so each subscription's URL is parsed once.
    return httpx.URL(url)


async def _within(delay: float, work: Awaitable[T]) -> T:
    """Await ``work`` or raise TimeoutError after ``delay`` seconds."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(delay):  # no extra task, unlike wait_for on 3.11
            return await work
    return await asyncio.wait_for(work, delay)  # pragma: no cover - Python 3.10


def outcome_from_exception(exc: BaseException) -> Outcome:
    """Classify why an attempt got no usable HTTP response. The one place that knows
    the exception types of httpx, of transports and of the event loop."""
    if _caused_by(exc, BlockedAddress):
        return Outcome(error_kind=ErrorKind.BLOCKED, error=_describe(exc, "blocked address"))
    if _caused_by(exc, AuthError):
        return Outcome(error_kind=ErrorKind.AUTH, error=_describe(exc, "credentials unavailable"))
    if isinstance(exc, (httpx.TimeoutException, asyncio.TimeoutError, TimeoutError)):
        return Outcome(error_kind=ErrorKind.TIMEOUT, error=_describe(exc, "timed out"))
    if _caused_by(exc, ssl.SSLError) or (
        isinstance(exc, httpx.ConnectError) and str(exc).startswith("TLS error")
    ):
        return Outcome(error_kind=ErrorKind.TLS, error=_describe(exc, "TLS error"))
    if isinstance(exc, httpx.ConnectError):
        return Outcome(error_kind=ErrorKind.CONNECT, error=_describe(exc, "connection failed"))
    if isinstance(exc, (httpx.ProtocolError, httpx.DecodingError)):
        return Outcome(error_kind=ErrorKind.PROTOCOL, error=_describe(exc, "protocol error"))
    if isinstance(exc, (httpx.NetworkError, httpx.TransportError, OSError)):
        return Outcome(error_kind=ErrorKind.CONNECT, error=_describe(exc, "network error"))
    return Outcome(error_kind=ErrorKind.OTHER, error=_describe(exc, "unexpected error"))


def _describe(exc: BaseException, fallback: str) -> str:
    text = str(exc).strip() or fallback
    return f"{type(exc).__name__}: {text}"[:500]


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


async def _buffered(response: httpx.Response, request: httpx.Request, limit: int) -> httpx.Response:
    """A copy of ``response`` with its body read (at most ``limit`` bytes), for auth flows
    that look at bodies."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > limit:
                raise httpx.RemoteProtocolError(
                    f"a response read for authentication is larger than {limit} bytes"
                )
            chunks.append(chunk)
    finally:
        await response.aclose()
    return httpx.Response(
        response.status_code,
        headers=response.headers,
        content=b"".join(chunks),
        request=request,
        extensions=response.extensions,
    )


_KEPT_RESPONSE_HEADERS_BYTES = frozenset(name.encode("ascii") for name in _KEPT_RESPONSE_HEADERS)
_USER_AGENT_LINE = b"user-agent: " + USER_AGENT.encode("ascii") + b"\r\n"


@functools.lru_cache(maxsize=64)
def _content_type_line(content_type: str) -> bytes:
    return b"content-type: " + content_type.encode("latin-1") + b"\r\n"


def _header_lines(headers: tuple[tuple[str, str], ...]) -> bytes:
    """Signature and custom headers as request lines (validated when subscribed or
    published; checked again here)."""
    block = "".join([f"{name}: {value}\r\n" for name, value in headers]).encode("latin-1")
    # One CR and one LF per line, no NUL, and a colon in no name: nothing was injected.
    lines = len(headers)
    if (
        block.count(b"\r") != lines
        or block.count(b"\n") != lines
        or b"\0" in block
        or any(":" in name for name, _ in headers)
    ):
        raise httpx.LocalProtocolError("invalid request header")
    return block


def _kept_headers(headers: httpx.Headers) -> Mapping[str, str]:
    return {name: headers[name][:1024] for name in _KEPT_RESPONSE_HEADERS if name in headers}


class Engine:
    """Makes attempts: request, send through a transport, capped read, `Attempt` record."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        clock: Clock,
        *,
        response_body_cap: int = RESPONSE_BODY_CAP,
    ) -> None:
        self.transport = transport
        self.clock = clock
        self.response_body_cap = response_body_cap
        # Our own transport takes requests as bytes: no httpx objects per attempt.
        self._fast = transport if isinstance(transport, HTTPTransport) else None

    async def attempt(self, claim: Claim) -> tuple[Attempt, Outcome]:
        """Send one attempt of ``claim`` and describe what happened. Never raises
        (cancellation excepted): every failure becomes an `Outcome`."""
        message, subscription, delivery = claim.message, claim.subscription, claim.delivery
        if subscription.body_format != "standard":
            message = as_sent(message, subscription)
        started_at = self.clock.now()
        timestamp = int(started_at.timestamp())
        started = time.perf_counter()
        status_code: int | None = None
        body = b""
        kept: Mapping[str, str] = {}
        sent: list[tuple[str, str]] = []
        try:
            secrets = subscription.signing_secrets(started_at)
            sent = signed_headers(
                message, subscription, timestamp=timestamp, signing_secrets=secrets
            )
            if self._fast is not None and subscription.auth is None:
                # The transport keeps the attempt's deadline itself (slot, connect, read).
                deadline = time.monotonic() + subscription.timeout
                status_code, kept, body = await self._post(
                    message, subscription, timestamp, sent, deadline
                )
            else:
                request = build_request(
                    message, subscription, timestamp=timestamp, signing_secrets=secrets, signed=sent
                )
                exchange = self._send(request, subscription.auth)
                # One deadline for the whole attempt, auth flow and capped read included.
                status_code, kept, body = await _within(subscription.timeout, exchange)
            outcome = Outcome(status_code=status_code, headers=kept)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outcome = outcome_from_exception(exc)
        duration = time.perf_counter() - started
        attempt = Attempt(
            id=new_id("atm"),
            delivery_id=delivery.id,
            message_id=message.id,
            subscription_id=subscription.id,
            number=delivery.attempt_count + 1,
            trigger=delivery.next_trigger,
            started_at=started_at,
            duration=duration,
            url=subscription.url,
            status_code=status_code,
            response_body=body,
            response_headers=kept,
            error_kind=outcome.error_kind,
            error=outcome.error,
            webhook_timestamp=timestamp,
            request_headers=recorded_headers(message, subscription, timestamp, sent),
        )
        return attempt, outcome

    async def _post(
        self,
        message: Message,
        subscription: Subscription,
        timestamp: int,
        headers: list[tuple[str, str]],
        deadline: float,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """The attempt over `HTTPTransport.post`: the same request `build_request` makes,
        written straight to bytes."""
        assert self._fast is not None
        tls = TLSSettings(subscription.ca_bundle, subscription.client_cert, subscription.client_key)
        endpoint = self._fast.endpoint(subscription.url, None if tls.is_default else tls)
        stamp = str(timestamp).encode("ascii")
        lines = [
            endpoint.prefix,
            _content_type_line(message.content_type),
            _USER_AGENT_LINE,
            b"webhook-id: ",
            message.id.encode("ascii"),
            b"\r\nwebhook-timestamp: ",
            stamp,
            b"\r\n",
        ]
        lines.append(_header_lines(tuple(headers)))
        payload = message.payload
        lines += (b"content-length: ", str(len(payload)).encode("ascii"), b"\r\n\r\n", payload)
        head, body = await self._fast.post(
            endpoint, b"".join(lines), self.response_body_cap, deadline
        )
        kept: dict[str, str] = {}
        for key, raw in head.headers:
            if key in _KEPT_RESPONSE_HEADERS_BYTES and key.decode("ascii") not in kept:
                kept[key.decode("ascii")] = raw[:1024].decode("latin-1")
        return head.status, kept, body

    async def _send(
        self, request: httpx.Request, auth: httpx.Auth | None
    ) -> tuple[int, Mapping[str, str], bytes]:
        if auth is None:
            response = await self.transport.handle_async_request(request)
        else:
            response = await self._send_with_auth(request, auth)
        try:
            body = await self._read_capped(response)
        finally:
            await response.aclose()
        return response.status_code, _kept_headers(response.headers), body

    async def _send_with_auth(self, request: httpx.Request, auth: httpx.Auth) -> httpx.Response:
        """Drive an httpx auth flow over the transport (what `httpx.AsyncClient` does,
        without the client): the flow yields requests (the webhook, a token fetch, a
        retry after 401) and receives each response; the last response is returned."""
        flow = auth.async_auth_flow(request)
        try:
            outgoing = await flow.__anext__()
            while True:
                response = await self.transport.handle_async_request(outgoing)
                try:
                    if auth.requires_response_body:
                        response = await _buffered(response, outgoing, _AUTH_RESPONSE_LIMIT)
                    following = await flow.asend(response)
                except StopAsyncIteration:
                    return response  # the caller reads and closes it
                except BaseException:
                    # The flow failed or the deadline hit: the response's connection (a
                    # pool slot) must still be given back.
                    await response.aclose()
                    raise
                await response.aclose()
                outgoing = following
        finally:
            await flow.aclose()

    async def _read_capped(self, response: httpx.Response) -> bytes:
        cap = self.response_body_cap
        try:
            return response.content[:cap]  # a transport that already read the body
        except httpx.ResponseNotRead:
            pass
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            chunks.append(chunk[: cap - size])
            size += len(chunks[-1])
            if size >= cap:
                break  # never read past the cap: a huge body costs nothing more
        return b"".join(chunks)

    async def aclose(self) -> None:
        """Close the transport's connections."""
        await self.transport.aclose()
