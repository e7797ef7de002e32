"""Helpers for testing code that sends webhooks: a clock you move by hand, a scriptable
receiver that records and verifies requests, and `drain` to play out retries instantly.

The pytest fixtures built on these live in `webhook_dispatch.pytest_plugin` and load
automatically once the package is installed.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Union

import attrs
import httpx

from .clock import utc
from .errors import ConfigurationError, DrainIncomplete, InvalidSignature
from .signing import verify

if TYPE_CHECKING:
    from .dispatcher import AsyncDispatcher, Dispatcher

__all__ = ["FakeClock", "MockReceiver", "ReceivedRequest", "Reply", "drain", "drain_async"]


class FakeClock:
    """A clock that only moves when told to: ``advance()`` makes retries due instantly.

    Starts at ``start`` (default 2030-01-01T00:00:00Z; naive datetimes are taken as
    UTC). Anything but a datetime, and a negative or non-finite step, raises
    `ConfigurationError`.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = (
            _moment(start, "FakeClock(start=)")
            if start is not None
            else datetime(2030, 1, 1, tzinfo=timezone.utc)
        )
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """The clock's current time."""
        with self._lock:
            return self._now

    def advance(self, by: float | timedelta) -> datetime:
        """Move forward by seconds or a timedelta; return the new time."""
        if isinstance(by, bool) or not isinstance(by, (int, float, timedelta)):
            raise ConfigurationError(
                f"FakeClock.advance() takes seconds or a timedelta, got {type(by).__name__}"
            )
        if not isinstance(by, timedelta) and not math.isfinite(by):
            raise ConfigurationError(f"FakeClock.advance() takes a finite step, got {by!r}")
        try:
            step = by if isinstance(by, timedelta) else timedelta(seconds=by)
            if step < timedelta(0):
                raise ConfigurationError("FakeClock.advance() takes a non-negative step; use set()")
            with self._lock:
                self._now += step
                return self._now
        except OverflowError:
            raise ConfigurationError(
                f"FakeClock.advance({by!r}) goes past the last date Python can hold"
            ) from None

    def set(self, moment: datetime) -> None:
        """Jump to ``moment`` (backwards too, to test clock jumps)."""
        checked = _moment(moment, "FakeClock.set()")
        with self._lock:
            self._now = checked

    def __repr__(self) -> str:
        return f"FakeClock({self.now().isoformat()})"


def _moment(value: object, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise ConfigurationError(f"{what} takes a datetime, got {type(value).__name__}")
    return utc(value)


Reply = Union[int, tuple[int, Mapping[str, str]], httpx.Response, Exception]  # noqa: UP007
"""One scripted answer: a status code, ``(status, headers)``, a whole `httpx.Response`, or
an exception to raise (``httpx.ConnectError("refused")``, ``httpx.ReadTimeout("slow")``)."""


@attrs.frozen
class ReceivedRequest:
    """One request the `MockReceiver` got, and what it answered."""

    method: str
    url: str
    headers: httpx.Headers
    body: bytes
    at: datetime
    reply: str
    """What was answered: ``"200"``, ``"503"``, ``"ConnectError"``, ..."""
    verified: bool | None
    """Signature check against the receiver's secret; None when it has no secret."""

    @property
    def webhook_id(self) -> str:
        """The ``webhook-id`` header (the message id)."""
        return str(self.headers.get("webhook-id", ""))

    @property
    def timestamp(self) -> int:
        """The ``webhook-timestamp`` header as an int."""
        return int(self.headers.get("webhook-timestamp", "0"))

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


class MockReceiver(httpx.AsyncBaseTransport, httpx.BaseTransport):
    """An httpx transport standing in for your customers' endpoints.

    It answers from a script, ``MockReceiver([503, 503, 200])``, then ``default`` once the
    script runs out; ``routes={"https://a.example/hook": [410]}`` gives one URL its own
    script. Every request is kept in `requests`; with ``secret=`` each one's signature is
    checked (against ``clock`` when given, so `FakeClock` timestamps pass).
    Pass it as ``transport=`` to a `Dispatcher`.
    """

    def __init__(
        self,
        script: Iterable[Reply] = (),
        *,
        default: Reply = 200,
        routes: Mapping[str, Iterable[Reply]] | None = None,
        secret: str | Sequence[str] | None = None,
        clock: Any = None,
        tolerance: int = 300,
    ) -> None:
        self._script = list(script)
        self._default = default
        self._routes = {
            str(httpx.URL(url)): list(replies) for url, replies in (routes or {}).items()
        }
        self._secret = secret
        self._clock = clock
        self._tolerance = tolerance
        self._lock = threading.Lock()
        self.requests: list[ReceivedRequest] = []

    def __repr__(self) -> str:
        return f"MockReceiver(received={len(self.requests)})"

    def _next_reply(self, url: str) -> Reply:
        with self._lock:
            queue = self._routes.get(url, self._script)
            return queue.pop(0) if queue else self._default

    def _verified(self, request: httpx.Request, body: bytes, at: datetime) -> bool | None:
        if self._secret is None:
            return None
        try:
            verify(body, request.headers, self._secret, self._tolerance, now=at)
        except InvalidSignature:
            return False
        return True

    def _handle(self, request: httpx.Request, body: bytes) -> httpx.Response:
        at = self._clock.now() if self._clock is not None else datetime.now(timezone.utc)
        url = str(request.url)
        reply = self._next_reply(url)
        label = type(reply).__name__ if isinstance(reply, Exception) else _status_label(reply)
        with self._lock:
            self.requests.append(
                ReceivedRequest(
                    method=request.method,
                    url=url,
                    headers=request.headers,
                    body=body,
                    at=at,
                    reply=label,
                    verified=self._verified(request, body, at),
                )
            )
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, httpx.Response):
            return reply
        if isinstance(reply, tuple):
            return httpx.Response(reply[0], headers=dict(reply[1]))
        return httpx.Response(reply)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Answer ``request`` from the script (async transports)."""
        return self._handle(request, await request.aread())

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Answer ``request`` from the script (sync transports)."""
        return self._handle(request, request.read())

    # -- views for assertions --------------------------------------------------------
    def for_message(self, message_id: str) -> list[ReceivedRequest]:
        """Requests that carried ``webhook-id: message_id``, in arrival order."""
        return [r for r in self.requests if r.webhook_id == message_id]

    def for_url(self, url: str) -> list[ReceivedRequest]:
        """Requests sent to ``url``."""
        wanted = str(httpx.URL(url))
        return [r for r in self.requests if r.url == wanted]

    def assert_all_verified(self) -> None:
        """Fail (`AssertionError`) unless every request carried a signature valid for the
        receiver's secret; a receiver built without ``secret=`` raises `ConfigurationError`."""
        if self._secret is None:
            raise ConfigurationError("MockReceiver(secret=...) is needed to verify signatures")
        bad = [r for r in self.requests if not r.verified]
        if bad:
            raise AssertionError(f"{len(bad)} of {len(self.requests)} requests failed verification")


def _status_label(reply: int | tuple[int, Mapping[str, str]] | httpx.Response) -> str:
    if isinstance(reply, httpx.Response):
        return str(reply.status_code)
    if isinstance(reply, tuple):
        return str(reply[0])
    return str(reply)


def drain(
    dispatcher: Dispatcher,
    clock: FakeClock,
    *,
    max_steps: int = 1000,
    until: Callable[[], bool] | None = None,
) -> int:
    """Deliver until nothing is pending, jumping ``clock`` to each next due time.

    Hours of retries play out at once. Returns the number of attempts made; stops early
    when ``until()`` turns true. Raises `DrainIncomplete` (a `RuntimeError`) if work
    remains after ``max_steps``. For an `AsyncDispatcher`, await `drain_async`.
    """
    from .dispatcher import Dispatcher

    if not isinstance(dispatcher, Dispatcher):
        raise ConfigurationError(
            "drain() drives a Dispatcher; for an AsyncDispatcher use "
            "'await drain_async(dispatcher, clock)'"
        )
    steps = _drain_steps(clock, max_steps, until)
    answer: Any = None
    try:
        while True:
            wanted = steps.send(answer)
            answer = dispatcher.run_until_idle() if wanted == "run" else dispatcher.next_due_at()
    except StopIteration as done:
        attempts: int = done.value
        return attempts


async def drain_async(
    dispatcher: AsyncDispatcher,
    clock: FakeClock,
    *,
    max_steps: int = 1000,
    until: Callable[[], bool] | None = None,
) -> int:
    """`drain` for an `AsyncDispatcher`, on the running event loop: deliver until nothing
    is pending, jumping ``clock`` to each next due time, and return the attempts made."""
    from .dispatcher import AsyncDispatcher

    if not isinstance(dispatcher, AsyncDispatcher):
        raise ConfigurationError(
            "drain_async() drives an AsyncDispatcher; for a Dispatcher use "
            "'drain(dispatcher, clock)'"
        )
    steps = _drain_steps(clock, max_steps, until)
    answer: Any = None
    try:
        while True:
            wanted = steps.send(answer)
            answer = await (
                dispatcher.run_until_idle() if wanted == "run" else dispatcher.next_due_at()
            )
    except StopIteration as done:
        attempts: int = done.value
        return attempts


def _drain_steps(
    clock: FakeClock, max_steps: int, until: Callable[[], bool] | None
) -> Generator[str, Any, int]:
    """The drain loop once for both faces, sans I/O: it yields ``"run"`` (send back the
    attempts `run_until_idle` made) or ``"due"`` (send back `next_due_at`)."""
    attempts = 0
    for _ in range(max_steps):
        made: int = yield "run"
        attempts += made
        if until is not None and until():
            return attempts
        due = yield "due"
        if due is None:
            return attempts
        if due > clock.now():
            clock.set(due)
    raise DrainIncomplete(
        f"deliveries still pending after {max_steps} steps ({attempts} attempts made)",
        max_steps=max_steps,
        attempts=attempts,
    )
