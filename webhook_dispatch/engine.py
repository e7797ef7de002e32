"""One attempt of one delivery: build the signed request, send it, read a capped answer.

Building the request and turning an httpx response or exception into an `Outcome` are
plain functions; `Engine.attempt` only adds the I/O between them.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping

import httpx

from ._version import __version__
from .clock import Clock
from .models import Attempt, ErrorKind, Message, Subscription, new_id
from .retry import Outcome
from .signing import sign_all
from .stores.base import Claim

__all__ = [
    "RESPONSE_BODY_CAP",
    "USER_AGENT",
    "Engine",
    "build_request",
    "outcome_from_exception",
]

USER_AGENT = f"webhook-dispatch/{__version__}"
RESPONSE_BODY_CAP = 16 * 1024
"""Bytes of a response body read and kept; the rest is never read."""

_KEPT_RESPONSE_HEADERS = ("content-type", "location", "retry-after")


def build_request(
    message: Message, subscription: Subscription, *, timestamp: int, signing_secrets: list[str]
) -> httpx.Request:
    """The POST for one attempt: exact stored body, fresh timestamp and signature(s)."""
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", message.content_type.encode("latin-1")),
        (b"user-agent", USER_AGENT.encode("ascii")),
        (b"webhook-id", message.id.encode("ascii")),
        (b"webhook-timestamp", str(timestamp).encode("ascii")),
        (
            b"webhook-signature",
            sign_all(signing_secrets, message.id, timestamp, message.payload).encode("ascii"),
        ),
    ]
    headers.extend(
        (name.encode("latin-1"), value.encode("latin-1"))
        for name, value in subscription.headers.items()
    )
    timeout = subscription.timeout
    return httpx.Request(
        "POST",
        subscription.url,
        headers=headers,
        content=message.payload,
        extensions={
            "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        },
    )


def outcome_from_exception(exc: BaseException) -> Outcome:
    """Classify why an attempt got no usable HTTP response. The one place that knows
    the exception types of httpx, of transports and of the event loop."""
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

    async def attempt(self, claim: Claim) -> tuple[Attempt, Outcome]:
        """Send one attempt of ``claim`` and describe what happened. Never raises
        (cancellation excepted): every failure becomes an `Outcome`."""
        message, subscription, delivery = claim.message, claim.subscription, claim.delivery
        started_at = self.clock.now()
        timestamp = int(started_at.timestamp())
        started = time.perf_counter()
        status_code: int | None = None
        body = b""
        kept: Mapping[str, str] = {}
        try:
            request = build_request(
                message,
                subscription,
                timestamp=timestamp,
                signing_secrets=subscription.signing_secrets(started_at),
            )
            status_code, kept, body = await asyncio.wait_for(
                self._send(request), timeout=subscription.timeout
            )
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
        )
        return attempt, outcome

    async def _send(self, request: httpx.Request) -> tuple[int, Mapping[str, str], bytes]:
        response = await self.transport.handle_async_request(request)
        try:
            body = await self._read_capped(response)
        finally:
            await response.aclose()
        return response.status_code, _kept_headers(response.headers), body

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
