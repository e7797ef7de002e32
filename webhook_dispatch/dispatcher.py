"""The public faces: `Dispatcher` (sync) and `AsyncDispatcher`, thin layers over one core.

The core validates input, serializes payloads once, matches subscriptions and talks to
the store; the worker delivers. The sync face runs the worker on a private event loop
thread; the async face runs it on the caller's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import os
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any, TypeVar

import attrs
import httpx

from ._validation import validate_headers, validate_timeout, validate_url
from .auth import EndpointAuth
from .clock import Clock, SystemClock, utc
from .engine import Engine
from .errors import (
    ConfigurationError,
    InvalidAuth,
    InvalidHeader,
    InvalidPayload,
    InvalidURL,
    PayloadTooLarge,
)
from .events import OPERATIONAL_PREFIX, Callback, Hooks, OperationalEvent
from .health import AutoDisable
from .models import (
    Attempt,
    Delivery,
    DeliveryStatus,
    Message,
    RetiredSecret,
    RetrySchedule,
    Subscription,
    new_id,
)
from .netguard import NetworkPolicy, parse_host_literal, parse_networks
from .paging import DEFAULT_PAGE_SIZE, Page, check_limit
from .registry import Registry, normalize_patterns, validate_event_type, validate_pattern
from .retry import RetryPolicy, ScheduleWait
from .signing import DEFAULT_SIGNATURE, get_signer
from .stores import Stats, Store, open_store
from .transport import HTTPTransport, TLSSettings, load_ssl_context
from .worker import Worker

__all__ = [
    "DEFAULT_MAX_PAYLOAD_SIZE",
    "DEFAULT_RETENTION",
    "PURGE_BATCH",
    "AsyncDispatcher",
    "Dispatcher",
]

T = TypeVar("T")

DEFAULT_MAX_PAYLOAD_SIZE = 1024 * 1024
"""Largest serialized payload `publish` accepts (1 MiB)."""
PURGE_BATCH = 1000
"""Messages deleted per store transaction by `Dispatcher.purge` and the worker."""
DEFAULT_RETENTION = timedelta(days=30)
"""How old finished messages get before `purge` removes them by default."""

EventSpec = tuple[str, Any] | tuple[str, Any, str | None]

RetrySpec = RetryPolicy | RetrySchedule | Sequence[float]
"""A subscription's own retry schedule: ``RetryPolicy.fixed([...])``, a `RetrySchedule`,
or the delays in seconds (``[0, 10, 60]``: three attempts)."""


class _Auto:
    def __repr__(self) -> str:
        return "AUTO"


AUTO: Any = _Auto()
"""The default of ``default_max_in_flight``: a quarter of ``concurrency`` (at least 1)."""


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _check_content_type(content_type: object) -> str:
    if (
        not isinstance(content_type, str)
        or not 3 <= len(content_type) <= 255
        or "/" not in content_type
        or any(ord(c) < 0x20 or ord(c) > 0x7E for c in content_type)
    ):
        raise InvalidHeader(
            "content_type must be a media type such as 'application/xml' "
            "(printable ASCII, no line breaks)"
        )
    return content_type


def _check_idempotency_key(key: object) -> str | None:
    if key is None:
        return None
    if (
        not isinstance(key, str)
        or not 1 <= len(key) <= 255
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in key)
    ):
        raise ConfigurationError(
            "idempotency_key must be a string of 1 to 255 characters without control characters"
        )
    return key


def _check_positive_int(value: object, name: str, *, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ConfigurationError(f"{name} must be a whole number from 1 to {maximum}")
    return value


class _Core:
    """Everything both faces share: configuration, validation, matching, store calls."""

    def __init__(
        self,
        store: str | Store,
        *,
        clock: Clock | None,
        retry: RetryPolicy | None,
        transport: httpx.AsyncBaseTransport | None,
        concurrency: int,
        max_payload_size: int,
        envelope: bool,
        lease: timedelta,
        poll_interval: float,
        retention: timedelta | None,
        allow_private_networks: bool = False,
        allowed_networks: Iterable[str] = (),
        https_only: bool = False,
        default_max_in_flight: int | None = AUTO,
        auto_disable: AutoDisable | None = None,
        retry_by_event_type: Mapping[str, RetryPolicy] | None = None,
        hooks: Hooks | None = None,
        operational_events: bool = False,
        metrics: Any = None,
        tracing: Any = False,
    ) -> None:
        for name, flag in (
            ("allow_private_networks", allow_private_networks),
            ("https_only", https_only),
        ):
            if not isinstance(flag, bool):
                raise ConfigurationError(f"{name} must be True or False")
        self.network_policy = NetworkPolicy(
            allow_private_networks=allow_private_networks,
            allowed_networks=parse_networks(allowed_networks),
            https_only=https_only,
        )
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError("retry must be a webhook_dispatch.RetryPolicy")
        if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
            raise ConfigurationError(
                "transport must be an httpx.AsyncBaseTransport (httpx.MockTransport, "
                "respx.MockTransport, webhook_dispatch.testing.MockReceiver, ...)"
            )
        if clock is not None and not isinstance(clock, Clock):
            raise ConfigurationError("clock must have a now() method returning a datetime")
        self.concurrency = _check_positive_int(concurrency, "concurrency", maximum=10_000)
        self.max_payload_size = _check_positive_int(
            max_payload_size, "max_payload_size", maximum=64 * 1024 * 1024
        )
        if not isinstance(lease, timedelta) or lease <= timedelta(0):
            raise ConfigurationError("lease must be a positive timedelta")
        if retention is not None and (
            not isinstance(retention, timedelta) or retention <= timedelta(0)
        ):
            raise ConfigurationError("retention must be a positive timedelta, or None")
        self.poll_interval = validate_timeout(poll_interval)
        self.envelope = bool(envelope)
        self.retention = retention
        self.owns_store = isinstance(store, str)
        self.store = open_store(store)
        self.clock: Clock = clock or SystemClock()
        self.retry = retry or RetryPolicy()
        # The SSRF guard is part of the default transport: one passed as transport=
        # decides for itself where it connects (subscribe-time checks still apply).
        self.engine = Engine(
            transport
            or HTTPTransport(
                max_connections=max(concurrency, 16), network_policy=self.network_policy
            ),
            self.clock,
        )
        if default_max_in_flight is AUTO:
            default_max_in_flight = max(1, self.concurrency // 4)
        elif default_max_in_flight is not None:
            default_max_in_flight = _check_positive_int(
                default_max_in_flight, "default_max_in_flight", maximum=10_000
            )
        if auto_disable is not None and not isinstance(auto_disable, AutoDisable):
            raise ConfigurationError("auto_disable must be a webhook_dispatch.AutoDisable or None")
        overrides: list[tuple[str, RetryPolicy]] = []
        for pattern, policy in (retry_by_event_type or {}).items():
            if not isinstance(policy, RetryPolicy):
                raise ConfigurationError("retry_by_event_type maps patterns to RetryPolicy")
            overrides.append((validate_pattern(pattern), policy))
        if not isinstance(operational_events, bool):
            raise ConfigurationError("operational_events must be True or False")
        observer = None
        if metrics is not None:
            from .metrics import PrometheusMetrics

            if not isinstance(metrics, PrometheusMetrics):
                raise ConfigurationError("metrics must be a webhook_dispatch.PrometheusMetrics")
            metrics.bind(self.stats_with_age)
            observer = metrics
        spans = None
        if tracing is not False and tracing is not None:
            from .tracing import AttemptTracer

            spans = AttemptTracer(None if tracing is True else tracing)
        self.worker = Worker(
            self.store,
            self.engine,
            self.clock,
            retry=self.retry,
            concurrency=self.concurrency,
            lease=lease,
            poll_interval=self.poll_interval,
            retention=retention,
            default_max_in_flight=default_max_in_flight,
            retry_overrides=overrides,
            auto_disable=auto_disable,
            hooks=hooks,
            publish_operational=self.publish_operational if operational_events else None,
            observer=observer,
            spans=spans,
        )
        self._registry = Registry()
        self._registry_version: int | None = None
        self._registry_lock = threading.Lock()

    # -- building values (pure, before any I/O) ----------------------------------
    def new_subscription(
        self,
        url: str,
        *,
        event_types: Iterable[str] | None,
        secret: str | None,
        headers: Mapping[str, str] | None,
        metadata: Mapping[str, str] | None,
        timeout: float,
        signature: str = DEFAULT_SIGNATURE,
        auth: EndpointAuth | None = None,
        ca_bundle: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        rate_limit: float | None = None,
        max_in_flight: int | None = None,
        ordered: bool = False,
        retry: RetrySpec | None = None,
    ) -> Subscription:
        url = self.check_url(url)
        flow = _check_flow(rate_limit, max_in_flight, ordered, retry)
        patterns = normalize_patterns(event_types)
        signer = get_signer(signature)
        if secret is None:
            secret = signer.generate_secret()
        else:
            signer.check_secret(secret)
        checked_headers = validate_headers(headers)
        if auth is not None:
            if not isinstance(auth, EndpointAuth):
                raise InvalidAuth(
                    "auth must be a webhook_dispatch auth object (ApiKeyHeader, BearerToken, "
                    "BasicAuth, OAuth2ClientCredentials, JWTAuth) or a registered EndpointAuth"
                )
            token_url = getattr(auth, "token_url", None)
            if isinstance(token_url, str):
                self.check_url(token_url, what="token_url")
        taken = {name.lower() for name in signer.header_names}
        if auth is not None:
            taken.update(auth.header_names())
        for name in checked_headers:
            if name.lower() in taken:
                raise InvalidHeader(
                    f"header {name!r} is set by the signature scheme or auth= of this subscription"
                )
        tls = TLSSettings(
            _pem_path("ca_bundle", ca_bundle),
            _pem_path("client_cert", client_cert),
            _pem_path("client_key", client_key),
        )
        if not tls.is_default:
            load_ssl_context(tls)
        now = self.clock.now()
        return Subscription(
            id=new_id("sub"),
            url=url,
            event_types=patterns,
            secret=secret,
            headers=checked_headers,
            metadata=_check_metadata(metadata),
            timeout=validate_timeout(timeout),
            created_at=now,
            updated_at=now,
            signature=signer.name,
            auth=auth,
            ca_bundle=tls.ca_bundle,
            client_cert=tls.client_cert,
            client_key=tls.client_key,
            **flow,
        )

    def check_url(self, url: object, *, what: str = "endpoint URL") -> str:
        """`validate_url` plus the network policy: https_only, and IP-literal hosts (in
        any spelling) the guard refuses. Names are checked when resolved, at delivery."""
        checked = validate_url(url, https_only=self.network_policy.https_only)
        host = httpx.URL(checked).host
        literal = parse_host_literal(host)
        if literal is not None:
            reason = self.network_policy.check_address(literal)
            if reason is not None:
                raise InvalidURL(
                    f"{what} host {host!r} is a {reason} address, refused by the network "
                    "guard (allow_private_networks=True or allowed_networks= open it)"
                )
        return checked

    def new_message(
        self,
        event_type: str,
        payload: Any,
        *,
        idempotency_key: str | None,
        content_type: str | None,
    ) -> Message:
        event_type = validate_event_type(event_type)
        idempotency_key = _check_idempotency_key(idempotency_key)
        now = self.clock.now()
        if isinstance(payload, (bytes, bytearray, memoryview)) or content_type is not None:
            if content_type is None:
                raise InvalidPayload(
                    "a bytes payload is sent as-is and needs content_type= "
                    "(for example 'application/xml')"
                )
            content_type = _check_content_type(content_type)
            if isinstance(payload, str):
                body = payload.encode("utf-8")
            elif isinstance(payload, (bytes, bytearray, memoryview)):
                body = bytes(payload)
            else:
                raise InvalidPayload("with content_type=, the payload must be bytes or str")
        else:
            content_type = "application/json"
            document = (
                {"type": event_type, "timestamp": _iso(now), "data": payload}
                if self.envelope
                else payload
            )
            try:
                body = _json_bytes(document)
            except (TypeError, ValueError, RecursionError) as exc:
                raise InvalidPayload(f"payload is not JSON-serializable: {exc}") from None
        if len(body) > self.max_payload_size:
            raise PayloadTooLarge(
                f"payload is {len(body)} bytes serialized; the limit is "
                f"{self.max_payload_size} bytes (max_payload_size=)",
                size=len(body),
                limit=self.max_payload_size,
            )
        return Message(
            id=new_id("msg"),
            event_type=event_type,
            payload=body,
            content_type=content_type,
            created_at=now,
            idempotency_key=idempotency_key,
        )

    def match(self, event_type: str) -> list[str]:
        """Ids of the enabled subscriptions matching ``event_type`` (index rebuilt when
        any subscription changed, in this process or another)."""
        version = self.store.subscriptions_version()
        if version != self._registry_version:
            with self._registry_lock:
                if version != self._registry_version:
                    registry = Registry()
                    for subscription in self.store.list_subscriptions():
                        if subscription.enabled:
                            registry.add(subscription.id, subscription.event_types)
                    self._registry = registry
                    self._registry_version = version
        return self._registry.match(event_type)

    # -- store operations (sync; the async face runs them off its loop) ----------
    def subscribe(self, subscription: Subscription) -> Subscription:
        self.store.add_subscription(subscription)
        return subscription

    def publish(self, message: Message, connection: Any = None) -> Message:
        result = self.store.publish(
            message,
            self.match(message.event_type),
            self.clock.now(),
            **self._outbox(connection),
        )
        if result.deliveries:
            self.worker.wake()
        return result.message

    def publish_many(self, messages: Sequence[Message], connection: Any = None) -> list[Message]:
        items = [(message, self.match(message.event_type)) for message in messages]
        results = self.store.publish_many(items, self.clock.now(), **self._outbox(connection))
        if any(result.deliveries for result in results):
            self.worker.wake()
        return [result.message for result in results]

    # -- the transactional outbox: publish inside the caller's own transaction ------
    def _outbox(self, connection: Any) -> dict[str, Any]:
        """The ``connection=`` keyword for the store, refused by stores that cannot join
        the caller's transaction (they say so with ``transactional_outbox = True``)."""
        if connection is None:
            return {}
        if not self.store.transactional_outbox:
            raise ConfigurationError(
                f"connection= (publishing inside your transaction) needs the PostgreSQL "
                f"store; {self.store!r} cannot join a database transaction"
            )
        return {"connection": connection}

    async def publish_many_async(
        self, messages: Sequence[Message], connection: Any
    ) -> list[Message]:
        """`publish_many` inside an async psycopg connection's open transaction."""
        self._outbox(connection)
        items = await asyncio.to_thread(
            lambda: [(message, self.match(message.event_type)) for message in messages]
        )
        results = await self.store.publish_many_async(
            items, self.clock.now(), connection=connection
        )
        return [result.message for result in results]

    def publish_operational(self, events: list[OperationalEvent]) -> None:
        """Publish operational events to the subscriptions that asked for them by name
        (a pattern starting ``webhook_dispatch.``): never to catch-all subscriptions,
        which belong to customers who must not see each other's troubles."""
        items: list[tuple[Message, Sequence[str]]] = []
        for event in events:
            matched = self.match(event.type)
            wanted = [
                subscription_id
                for subscription_id in matched
                if any(
                    pattern.startswith(OPERATIONAL_PREFIX)
                    for pattern in self._registry.patterns(subscription_id)
                )
            ]
            if wanted:
                message = self.new_message(
                    event.type, event.payload(), idempotency_key=None, content_type=None
                )
                items.append((message, wanted))
        if items:
            results = self.store.publish_many(items, self.clock.now())
            if any(result.deliveries for result in results):
                self.worker.wake()

    def stats_with_age(self) -> tuple[Stats, float | None]:
        now = self.clock.now()
        stats = self.store.stats(now)
        return stats, stats.oldest_pending_age(now)

    def update(self, subscription_id: str, **changes: Any) -> Subscription:
        current = self.store.get_subscription(subscription_id)
        updated = attrs.evolve(current, updated_at=self.clock.now(), **changes)
        self.store.save_subscription(updated)
        if updated.enabled and not current.enabled:
            self.worker.wake()
        return updated

    def rotate_secret(
        self, subscription_id: str, grace: timedelta, secret: str | None
    ) -> tuple[Subscription, str]:
        if not isinstance(grace, timedelta) or grace < timedelta(0):
            raise ConfigurationError("grace must be a timedelta of zero or more")
        current = self.store.get_subscription(subscription_id)
        signer = get_signer(current.signature)
        new_secret = signer.generate_secret() if secret is None else secret
        signer.check_secret(new_secret)
        now = self.clock.now()
        kept = tuple(r for r in current.previous_secrets if r.expires_at > now)
        retired = (RetiredSecret(current.secret, now + grace),) if grace else ()
        updated = attrs.evolve(
            current, secret=new_secret, previous_secrets=retired + kept, updated_at=now
        )
        self.store.save_subscription(updated)
        return updated, new_secret

    def retry_delivery(self, delivery_id: str) -> Delivery:
        updated = self.store.schedule_manual([delivery_id], self.clock.now())
        self.worker.wake()
        return updated[0] if updated else self.store.get_delivery(delivery_id)

    def recover(
        self, subscription_id: str, since: datetime, until: datetime | None
    ) -> list[Delivery]:
        now = self.clock.now()
        deliveries = self.store.recover(
            subscription_id,
            since=utc(since),
            until=utc(until) if until else datetime.max.replace(tzinfo=timezone.utc),
            now=now,
        )
        if deliveries:
            self.worker.wake()
        return deliveries

    def purge(
        self,
        older_than: timedelta | datetime | None,
        on_progress: Callable[[int], object] | None = None,
    ) -> int:
        if older_than is None:
            older_than = self.retention or DEFAULT_RETENTION
        cutoff = self.clock.now() - older_than if isinstance(older_than, timedelta) else older_than
        total = 0
        # Small transactions: a long purge never holds the store's write lock for long.
        while removed := self.store.purge(utc(cutoff), limit=PURGE_BATCH):
            total += removed
            if on_progress is not None:
                on_progress(total)
        return total

    def next_due_at(self) -> datetime | None:
        return self.store.next_due_at()

    def close_store(self) -> None:
        self.worker.close()
        if self.owns_store:
            self.store.close()


def _check_flow(
    rate_limit: object, max_in_flight: object, ordered: object, retry: object
) -> dict[str, Any]:
    """The flow-control and retry fields of a new subscription, validated."""
    if rate_limit is not None and (
        isinstance(rate_limit, bool)
        or not isinstance(rate_limit, (int, float))
        or not 0 < rate_limit <= 100_000
    ):
        raise ConfigurationError("rate_limit must be requests per second, above 0, or None")
    if max_in_flight is not None:
        _check_positive_int(max_in_flight, "max_in_flight", maximum=10_000)
    if not isinstance(ordered, bool):
        raise ConfigurationError("ordered must be True or False")
    schedule: RetrySchedule | None
    if retry is None or isinstance(retry, RetrySchedule):
        schedule = retry
    elif isinstance(retry, RetryPolicy):
        schedule = retry.schedule
        if schedule is None:
            raise ConfigurationError(
                "a subscription keeps its retry schedule in the store, so it must be a "
                "fixed one: RetryPolicy.fixed([0, 5, 300, ...]) or a list of delays "
                "(tenacity strategies cannot be stored; use retry_by_event_type= for those)"
            )
    elif isinstance(retry, Sequence) and not isinstance(retry, (str, bytes)):
        schedule = RetrySchedule(tuple(retry))
    else:
        raise ConfigurationError("retry must be RetryPolicy.fixed([...]) or a list of delays")
    if schedule is not None:
        ScheduleWait(schedule.delays, schedule.jitter)  # validates the numbers
    return {
        "rate_limit": None if rate_limit is None else float(rate_limit),
        "max_in_flight": max_in_flight,
        "ordered": ordered,
        "retry_schedule": schedule,
    }


def _pem_path(option: str, value: object) -> str | None:
    """An absolute path (workers may run elsewhere), or None."""
    if value is None:
        return None
    path = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(path, str) or not path:
        raise ConfigurationError(f"{option} must be the path of a PEM file, as a str")
    return os.path.abspath(path)


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ConfigurationError("metadata must be a mapping of str to str")
    if len(metadata) > 50 or any(len(k) > 255 or len(v) > 4096 for k, v in metadata.items()):
        raise ConfigurationError("metadata takes at most 50 keys of 255 characters, values of 4096")
    return dict(metadata)


def _status(status: DeliveryStatus | str | None) -> DeliveryStatus | None:
    """A listing's ``status=`` filter; an unknown name is a `ConfigurationError`."""
    if status is None:
        return None
    try:
        return DeliveryStatus(status)
    except ValueError:
        known = ", ".join(s.value for s in DeliveryStatus)
        raise ConfigurationError(f"status must be one of {known}, not {status!r}") from None


def _is_async_connection(connection: Any) -> bool:
    """True for an asyncio database connection (``psycopg.AsyncConnection``)."""
    return connection is not None and inspect.iscoroutinefunction(
        getattr(connection, "execute", None)
    )


class _LoopThread:
    """A private event loop on a daemon thread, so sync callers can drive async work."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="webhook-dispatch-loop", daemon=True
        )
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.submit(coroutine).result()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


_DEFAULT_TIMEOUT = 15.0
_DEFAULT_AUTO_DISABLE = AutoDisable()


class Dispatcher:
    """Publish events and deliver them, from ordinary (synchronous) code.

    ``store`` is a URL (``"memory://"``, ``"sqlite:///webhooks.db"``) or a `Store`.
    ``retry`` is a `RetryPolicy`; ``transport`` any `httpx.AsyncBaseTransport` (tests pass a
    `webhook_dispatch.testing.MockReceiver` or ``httpx.MockTransport``); ``clock`` a
    `Clock` (tests pass a `FakeClock`). Use it as a context manager, or call `close`.

    ``concurrency`` bounds attempts in flight per worker; ``lease`` is how long a claimed
    delivery stays reserved (a crashed worker's deliveries are retried after it);
    ``poll_interval`` is how often an idle worker looks for work published by other
    processes. While running, the worker purges finished messages older than
    ``retention`` (30 days; ``None`` keeps everything) about once an hour.

    The network guard refuses endpoints on loopback, private, link-local (cloud
    metadata), CGNAT, multicast and reserved addresses, checked after DNS on the address
    actually connected to. ``allow_private_networks=True`` turns it off (tests on
    127.0.0.1), ``allowed_networks=["10.1.0.0/16"]`` opens chosen networks,
    ``https_only=True`` refuses plain-http endpoints. The guard is part of the default
    transport: with your own ``transport=`` only the subscribe-time checks apply.

    Operating it (see "Operating in production" in the docs): ``default_max_in_flight``
    caps concurrent attempts per subscription without its own ``max_in_flight``
    (default: a quarter of ``concurrency``; None: no cap), so one dead endpoint never
    holds every slot. ``auto_disable`` (`AutoDisable`: 5 days and 10 failed attempts
    in a row by default; None: never) disables endpoints that keep failing.
    ``retry_by_event_type`` maps event-type patterns to a `RetryPolicy` (first match;
    a subscription's own ``retry`` wins). ``on_attempt``, ``on_delivery_succeeded``,
    ``on_delivery_failed`` (given up), ``on_subscription_disabled`` and ``on_recovered``
    are called with an `OperationalEvent`; ``operational_events=True`` also publishes
    ``webhook_dispatch.delivery.failed``/``.exhausted`` and
    ``webhook_dispatch.subscription.disabled``/``.recovered`` to subscriptions that name
    them. ``metrics`` takes a `webhook_dispatch.metrics.PrometheusMetrics`; ``tracing=True``
    (or a ``TracerProvider``) wraps each attempt in an OpenTelemetry span.
    """

    def __init__(
        self,
        store: str | Store = "memory://",
        *,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        concurrency: int = 64,
        max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE,
        envelope: bool = True,
        lease: timedelta = timedelta(seconds=60),
        poll_interval: float = 1.0,
        retention: timedelta | None = DEFAULT_RETENTION,
        allow_private_networks: bool = False,
        allowed_networks: Iterable[str] = (),
        https_only: bool = False,
        default_max_in_flight: int | None = AUTO,
        auto_disable: AutoDisable | None = _DEFAULT_AUTO_DISABLE,
        retry_by_event_type: Mapping[str, RetryPolicy] | None = None,
        on_attempt: Callback | None = None,
        on_delivery_succeeded: Callback | None = None,
        on_delivery_failed: Callback | None = None,
        on_subscription_disabled: Callback | None = None,
        on_recovered: Callback | None = None,
        operational_events: bool = False,
        metrics: Any = None,
        tracing: Any = False,
    ) -> None:
        self._core = _Core(
            store,
            clock=clock,
            retry=retry,
            transport=transport,
            concurrency=concurrency,
            max_payload_size=max_payload_size,
            envelope=envelope,
            lease=lease,
            poll_interval=poll_interval,
            retention=retention,
            allow_private_networks=allow_private_networks,
            allowed_networks=allowed_networks,
            https_only=https_only,
            default_max_in_flight=default_max_in_flight,
            auto_disable=auto_disable,
            retry_by_event_type=retry_by_event_type,
            hooks=Hooks(
                on_attempt=on_attempt,
                on_delivery_succeeded=on_delivery_succeeded,
                on_delivery_failed=on_delivery_failed,
                on_subscription_disabled=on_subscription_disabled,
                on_recovered=on_recovered,
            ),
            operational_events=operational_events,
            metrics=metrics,
            tracing=tracing,
        )
        self._loop_thread: _LoopThread | None = None
        self._running: concurrent.futures.Future[int] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"Dispatcher(store={self._core.store!r})"

    @property
    def store(self) -> Store:
        """The store this dispatcher reads and writes."""
        return self._core.store

    @property
    def clock(self) -> Clock:
        """The clock deciding when attempts are due."""
        return self._core.clock

    # -- subscriptions -------------------------------------------------------------
    def subscribe(
        self,
        url: str,
        *,
        event_types: Iterable[str] | None = None,
        secret: str | None = None,
        headers: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout: float = _DEFAULT_TIMEOUT,
        signature: str = DEFAULT_SIGNATURE,
        auth: EndpointAuth | None = None,
        ca_bundle: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        rate_limit: float | None = None,
        max_in_flight: int | None = None,
        ordered: bool = False,
        retry: RetrySpec | None = None,
    ) -> Subscription:
        """Register an endpoint for the event types matching ``event_types``.

        ``event_types`` takes exact names, ``*`` for one segment (``order.*``) and a final
        ``**`` for any depth; ``None`` or ``["*"]`` means every event. Without ``secret`` a
        ``whsec_`` secret is generated (read it from ``.secret``). ``headers`` are sent
        with every request (reserved names are refused); ``timeout`` is per attempt.

        ``signature`` picks the scheme: ``"standard"`` (Standard Webhooks v1, HMAC),
        ``"standard-ed25519"`` (v1a; the secret is a ``whsk_`` key), ``"github"``,
        ``"stripe"`` or a name given to `webhook_dispatch.signing.register_signer`.
        ``auth`` authenticates each request (`BearerToken`, `OAuth2ClientCredentials`,
        ...). ``ca_bundle`` (PEM CA file to trust), ``client_cert`` and ``client_key``
        (mutual TLS) set TLS for this endpoint. Bad input raises a `ConfigurationError`
        subclass and stores nothing.

        Flow control: ``rate_limit`` caps requests per second (a token bucket in each
        worker process), ``max_in_flight`` caps concurrent attempts (across every worker
        sharing the store; default: the dispatcher's ``default_max_in_flight``), and
        ``ordered=True`` delivers strictly in publish order, one at a time. ``retry``
        gives this endpoint its own schedule (``RetryPolicy.fixed([0, 10, 60])`` or the
        delays), stored with it.
        """
        subscription = self._core.new_subscription(
            url,
            event_types=event_types,
            secret=secret,
            headers=headers,
            metadata=metadata,
            timeout=timeout,
            signature=signature,
            auth=auth,
            ca_bundle=ca_bundle,
            client_cert=client_cert,
            client_key=client_key,
            rate_limit=rate_limit,
            max_in_flight=max_in_flight,
            ordered=ordered,
            retry=retry,
        )
        return self._core.subscribe(subscription)

    def unsubscribe(self, subscription_id: str) -> None:
        """Remove a subscription; its unfinished deliveries are cancelled."""
        self._core.store.remove_subscription(subscription_id, self._core.clock.now())

    def enable(self, subscription_id: str) -> Subscription:
        """Resume deliveries to a subscription, including those held while it was disabled."""
        return self._core.update(
            subscription_id,
            enabled=True,
            disabled_reason=None,
            failing_since=None,
            consecutive_failures=0,
        )

    def disable(self, subscription_id: str, reason: str = "disabled by operator") -> Subscription:
        """Stop deliveries to a subscription; pending ones are held until `enable`."""
        return self._core.update(subscription_id, enabled=False, disabled_reason=reason)

    def rotate_secret(
        self,
        subscription_id: str,
        *,
        grace: timedelta = timedelta(hours=24),
        secret: str | None = None,
    ) -> str:
        """Give a subscription a new secret and return it. For ``grace``, requests carry a
        signature with the old secret too, so receivers can switch without losing any.

        The new secret follows the subscription's signature scheme (a ``whsk_`` key for
        ``standard-ed25519``). ``stripe`` sends one ``v1=`` per secret during the grace
        period; ``github`` has room for one signature, so it signs with the new secret
        only, at once."""
        return self._core.rotate_secret(subscription_id, grace, secret)[1]

    def subscriptions(
        self, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
    ) -> Page[Subscription]:
        """Subscriptions, oldest first, a `Page` of at most ``limit``; pass its
        ``next_cursor`` as ``cursor=`` for the next page."""
        return self._core.store.list_subscriptions(limit=check_limit(limit), cursor=cursor)

    def get_subscription(self, subscription_id: str) -> Subscription:
        """One subscription by id (`NotFound` otherwise)."""
        return self._core.store.get_subscription(subscription_id)

    # -- publishing ----------------------------------------------------------------
    def publish(
        self,
        event_type: str,
        payload: Any,
        *,
        idempotency_key: str | None = None,
        content_type: str | None = None,
        connection: Any = None,
    ) -> Message:
        """Store an event for every matching subscription and return the `Message`.

        The payload is wrapped in the Standard Webhooks envelope ``{"type", "timestamp",
        "data"}`` and serialized once. Bytes (or str) with ``content_type=`` are sent
        as-is. With a durable store the message is safe once this returns. The same
        ``idempotency_key`` returns the first message and sends nothing again.

        ``connection=`` (PostgreSQL store only) takes a psycopg 3 connection with an open
        transaction: the event is written in that transaction and not committed, so it
        is delivered if and only if the caller commits (the transactional outbox).
        """
        message = self._core.new_message(
            event_type, payload, idempotency_key=idempotency_key, content_type=content_type
        )
        return self._core.publish(message, connection)

    def publish_many(self, events: Iterable[EventSpec], *, connection: Any = None) -> list[Message]:
        """Publish ``(event_type, payload)`` or ``(event_type, payload, idempotency_key)``
        tuples in one store transaction; all are validated before any is stored.
        ``connection=`` joins the caller's transaction, as in `publish`."""
        messages = [
            self._core.new_message(
                event[0],
                event[1],
                idempotency_key=event[2] if len(event) > 2 else None,
                content_type=None,
            )
            for event in events
        ]
        return self._core.publish_many(messages, connection)

    # -- delivering ----------------------------------------------------------------
    def _loop(self) -> _LoopThread:
        if self._closed:
            raise ConfigurationError("this Dispatcher is closed")
        if self._loop_thread is None:
            self._loop_thread = _LoopThread()
        return self._loop_thread

    def run_until_idle(self) -> int:
        """Attempt every delivery due now (and retries that fall due meanwhile), then
        return the number of attempts made. For scripts and tests."""
        if self._running is not None and not self._running.done():
            raise ConfigurationError("the worker is already running (start()); stop() it first")
        return self._loop().call(self._core.worker.run_until_idle())

    def start(self) -> None:
        """Run the worker on a background thread until `stop` or `close`."""
        if self._running is not None and not self._running.done():
            return
        self._core.worker.prepare_run()
        self._running = self._loop().submit(self._core.worker.run())

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the background worker; attempts in flight finish and are recorded."""
        running, self._running = self._running, None
        if running is None:
            return
        self._core.worker.request_stop()
        running.result(timeout=timeout)

    def run(self) -> None:
        """Run the worker in this thread until interrupted (Ctrl-C) or `stop`."""
        self.start()
        running = self._running
        assert running is not None
        try:
            while not running.done():
                try:
                    running.result(timeout=0.5)
                except concurrent.futures.TimeoutError:
                    continue
        except KeyboardInterrupt:
            self.stop()

    # -- inspection and repair -----------------------------------------------------
    def attempts(self, message_id: str) -> list[Attempt]:
        """Every attempt made for a message, oldest first."""
        return self._core.store.list_attempts(message_id=message_id)

    def deliveries(
        self,
        message_id: str | None = None,
        subscription_id: str | None = None,
        status: DeliveryStatus | str | None = None,
        *,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[Delivery]:
        """Deliveries matching every given filter, oldest first, a `Page` of at most
        ``limit``; pass its ``next_cursor`` as ``cursor=`` for the next page."""
        return self._core.store.list_deliveries(
            message_id=message_id,
            subscription_id=subscription_id,
            status=_status(status),
            limit=limit,
            cursor=cursor,
        )

    def get_message(self, message_id: str) -> Message:
        """One message by id (`NotFound` otherwise)."""
        return self._core.store.get_message(message_id)

    def messages(
        self,
        *,
        event_type: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[Message]:
        """The newest messages first, a `Page` of at most ``limit``; pass its
        ``next_cursor`` as ``cursor=`` for the next page."""
        return self._core.store.list_messages(event_type=event_type, limit=limit, cursor=cursor)

    def retry(self, delivery_id: str) -> Delivery:
        """Make one manual attempt of a delivery as soon as the worker runs (whatever its
        status); the attempt is recorded with ``trigger=manual``."""
        return self._core.retry_delivery(delivery_id)

    def recover(
        self, subscription_id: str, since: datetime, until: datetime | None = None
    ) -> list[Delivery]:
        """Re-send every failed or exhausted delivery of a subscription whose message was
        published in ``[since, until)`` (no upper bound by default)."""
        return self._core.recover(subscription_id, since, until)

    def purge(
        self,
        older_than: timedelta | datetime | None = None,
        *,
        on_progress: Callable[[int], object] | None = None,
    ) -> int:
        """Delete finished messages older than ``older_than`` (default: the retention,
        30 days) with their deliveries and attempts; return how many messages went.

        Works in batches of `PURGE_BATCH`; ``on_progress`` gets the running total."""
        return self._core.purge(older_than, on_progress)

    def next_due_at(self) -> datetime | None:
        """When the next pending attempt is due, or None if nothing is pending."""
        return self._core.next_due_at()

    def stats(self) -> Stats:
        """Pending and in-flight deliveries, the oldest pending one's creation time
        (``.oldest_pending_age(now)``), and subscriptions by state (`Stats`)."""
        return self._core.stats_with_age()[0]

    # -- lifecycle -----------------------------------------------------------------
    def close(self) -> None:
        """Stop the worker, close connections and the store. Idempotent."""
        if self._closed:
            return
        self.stop()
        if self._loop_thread is not None:
            self._loop_thread.call(self._core.engine.aclose())
            self._loop_thread.close()
            self._loop_thread = None
        self._core.close_store()
        self._closed = True

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncDispatcher:
    """The same surface as `Dispatcher`, awaitable, running on the caller's event loop.

    Use ``async with AsyncDispatcher(...) as dispatcher:``; `start` runs the worker as a
    task of the current loop. Store calls that block (SQLite) run in a thread.
    """

    def __init__(
        self,
        store: str | Store = "memory://",
        *,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        concurrency: int = 64,
        max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE,
        envelope: bool = True,
        lease: timedelta = timedelta(seconds=60),
        poll_interval: float = 1.0,
        retention: timedelta | None = DEFAULT_RETENTION,
        allow_private_networks: bool = False,
        allowed_networks: Iterable[str] = (),
        https_only: bool = False,
        default_max_in_flight: int | None = AUTO,
        auto_disable: AutoDisable | None = _DEFAULT_AUTO_DISABLE,
        retry_by_event_type: Mapping[str, RetryPolicy] | None = None,
        on_attempt: Callback | None = None,
        on_delivery_succeeded: Callback | None = None,
        on_delivery_failed: Callback | None = None,
        on_subscription_disabled: Callback | None = None,
        on_recovered: Callback | None = None,
        operational_events: bool = False,
        metrics: Any = None,
        tracing: Any = False,
    ) -> None:
        self._core = _Core(
            store,
            clock=clock,
            retry=retry,
            transport=transport,
            concurrency=concurrency,
            max_payload_size=max_payload_size,
            envelope=envelope,
            lease=lease,
            poll_interval=poll_interval,
            retention=retention,
            allow_private_networks=allow_private_networks,
            allowed_networks=allowed_networks,
            https_only=https_only,
            default_max_in_flight=default_max_in_flight,
            auto_disable=auto_disable,
            retry_by_event_type=retry_by_event_type,
            hooks=Hooks(
                on_attempt=on_attempt,
                on_delivery_succeeded=on_delivery_succeeded,
                on_delivery_failed=on_delivery_failed,
                on_subscription_disabled=on_subscription_disabled,
                on_recovered=on_recovered,
            ),
            operational_events=operational_events,
            metrics=metrics,
            tracing=tracing,
        )
        self._task: asyncio.Task[int] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"AsyncDispatcher(store={self._core.store!r})"

    @property
    def store(self) -> Store:
        """The store this dispatcher reads and writes."""
        return self._core.store

    @property
    def clock(self) -> Clock:
        """The clock deciding when attempts are due."""
        return self._core.clock

    async def _io(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        if self._core.store.blocking:
            return await asyncio.to_thread(function, *args, **kwargs)
        return function(*args, **kwargs)

    async def subscribe(
        self,
        url: str,
        *,
        event_types: Iterable[str] | None = None,
        secret: str | None = None,
        headers: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout: float = _DEFAULT_TIMEOUT,
        signature: str = DEFAULT_SIGNATURE,
        auth: EndpointAuth | None = None,
        ca_bundle: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        rate_limit: float | None = None,
        max_in_flight: int | None = None,
        ordered: bool = False,
        retry: RetrySpec | None = None,
    ) -> Subscription:
        """See `Dispatcher.subscribe`."""
        subscription = self._core.new_subscription(
            url,
            event_types=event_types,
            secret=secret,
            headers=headers,
            metadata=metadata,
            timeout=timeout,
            signature=signature,
            auth=auth,
            ca_bundle=ca_bundle,
            client_cert=client_cert,
            client_key=client_key,
            rate_limit=rate_limit,
            max_in_flight=max_in_flight,
            ordered=ordered,
            retry=retry,
        )
        result: Subscription = await self._io(self._core.subscribe, subscription)
        return result

    async def unsubscribe(self, subscription_id: str) -> None:
        """See `Dispatcher.unsubscribe`."""
        await self._io(self._core.store.remove_subscription, subscription_id, self.clock.now())

    async def enable(self, subscription_id: str) -> Subscription:
        """See `Dispatcher.enable`."""
        result: Subscription = await self._io(
            self._core.update,
            subscription_id,
            enabled=True,
            disabled_reason=None,
            failing_since=None,
            consecutive_failures=0,
        )
        return result

    async def disable(
        self, subscription_id: str, reason: str = "disabled by operator"
    ) -> Subscription:
        """See `Dispatcher.disable`."""
        result: Subscription = await self._io(
            self._core.update, subscription_id, enabled=False, disabled_reason=reason
        )
        return result

    async def rotate_secret(
        self,
        subscription_id: str,
        *,
        grace: timedelta = timedelta(hours=24),
        secret: str | None = None,
    ) -> str:
        """See `Dispatcher.rotate_secret`."""
        result: tuple[Subscription, str] = await self._io(
            self._core.rotate_secret, subscription_id, grace, secret
        )
        return result[1]

    async def subscriptions(
        self, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
    ) -> Page[Subscription]:
        """See `Dispatcher.subscriptions`."""
        result: Page[Subscription] = await self._io(
            self._core.store.list_subscriptions, limit=check_limit(limit), cursor=cursor
        )
        return result

    async def get_subscription(self, subscription_id: str) -> Subscription:
        """See `Dispatcher.get_subscription`."""
        result: Subscription = await self._io(self._core.store.get_subscription, subscription_id)
        return result

    async def publish(
        self,
        event_type: str,
        payload: Any,
        *,
        idempotency_key: str | None = None,
        content_type: str | None = None,
        connection: Any = None,
    ) -> Message:
        """See `Dispatcher.publish`. ``connection=`` takes a ``psycopg.AsyncConnection``
        (awaited on this loop) or a sync ``psycopg.Connection`` (used from a thread)."""
        message = self._core.new_message(
            event_type, payload, idempotency_key=idempotency_key, content_type=content_type
        )
        if _is_async_connection(connection):
            return (await self._core.publish_many_async([message], connection))[0]
        result: Message = await self._io(self._core.publish, message, connection)
        return result

    async def publish_many(
        self, events: Iterable[EventSpec], *, connection: Any = None
    ) -> list[Message]:
        """See `Dispatcher.publish_many` and `publish` for ``connection=``."""
        messages = [
            self._core.new_message(
                event[0],
                event[1],
                idempotency_key=event[2] if len(event) > 2 else None,
                content_type=None,
            )
            for event in events
        ]
        if _is_async_connection(connection):
            return await self._core.publish_many_async(messages, connection)
        result: list[Message] = await self._io(self._core.publish_many, messages, connection)
        return result

    async def run_until_idle(self) -> int:
        """See `Dispatcher.run_until_idle`."""
        if self._task is not None and not self._task.done():
            raise ConfigurationError("the worker is already running (start()); stop() it first")
        return await self._core.worker.run_until_idle()

    def start(self) -> None:
        """Run the worker as a task of the running event loop until `stop`."""
        if self._task is None or self._task.done():
            self._core.worker.prepare_run()
            self._task = asyncio.ensure_future(self._core.worker.run())

    async def stop(self) -> None:
        """Stop the worker task; attempts in flight finish and are recorded."""
        task, self._task = self._task, None
        if task is None:
            return
        self._core.worker.request_stop()
        await task

    async def run(self) -> None:
        """Run the worker until `stop` is called or the task is cancelled."""
        self.start()
        assert self._task is not None
        await asyncio.shield(self._task)

    async def attempts(self, message_id: str) -> list[Attempt]:
        """See `Dispatcher.attempts`."""
        result: list[Attempt] = await self._io(
            self._core.store.list_attempts, message_id=message_id
        )
        return result

    async def deliveries(
        self,
        message_id: str | None = None,
        subscription_id: str | None = None,
        status: DeliveryStatus | str | None = None,
        *,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[Delivery]:
        """See `Dispatcher.deliveries`."""
        result: Page[Delivery] = await self._io(
            self._core.store.list_deliveries,
            message_id=message_id,
            subscription_id=subscription_id,
            status=_status(status),
            limit=limit,
            cursor=cursor,
        )
        return result

    async def get_message(self, message_id: str) -> Message:
        """See `Dispatcher.get_message`."""
        result: Message = await self._io(self._core.store.get_message, message_id)
        return result

    async def messages(
        self,
        *,
        event_type: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[Message]:
        """See `Dispatcher.messages`."""
        result: Page[Message] = await self._io(
            self._core.store.list_messages, event_type=event_type, limit=limit, cursor=cursor
        )
        return result

    async def retry(self, delivery_id: str) -> Delivery:
        """See `Dispatcher.retry`."""
        result: Delivery = await self._io(self._core.retry_delivery, delivery_id)
        return result

    async def recover(
        self, subscription_id: str, since: datetime, until: datetime | None = None
    ) -> list[Delivery]:
        """See `Dispatcher.recover`."""
        result: list[Delivery] = await self._io(self._core.recover, subscription_id, since, until)
        return result

    async def purge(
        self,
        older_than: timedelta | datetime | None = None,
        *,
        on_progress: Callable[[int], object] | None = None,
    ) -> int:
        """See `Dispatcher.purge`."""
        result: int = await self._io(self._core.purge, older_than, on_progress)
        return result

    async def next_due_at(self) -> datetime | None:
        """See `Dispatcher.next_due_at`."""
        result: datetime | None = await self._io(self._core.next_due_at)
        return result

    async def stats(self) -> Stats:
        """See `Dispatcher.stats`."""
        result: tuple[Stats, float | None] = await self._io(self._core.stats_with_age)
        return result[0]

    async def aclose(self) -> None:
        """Stop the worker, close connections and the store. Idempotent."""
        if self._closed:
            return
        await self.stop()
        await self._core.engine.aclose()
        await self._io(self._core.close_store)
        self._closed = True

    async def __aenter__(self) -> AsyncDispatcher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
