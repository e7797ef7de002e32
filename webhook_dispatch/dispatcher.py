"""The public faces: `Dispatcher` (sync) and `AsyncDispatcher`, thin layers over one core.

`_Core` validates, serializes, matches and talks to the store; each face only calls it
(the sync face drives the worker on a private loop thread, the async one on the caller's).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import logging
import sys
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Generic, ParamSpec, Protocol, TypeVar

import attrs
import httpx

from . import _settings
from ._validation import (
    validate_headers,
    validate_subscription_key,
    validate_tenant,
    validate_url,
)
from .catalog import Catalog, asyncapi_document, new_event_type, openapi_document
from .clock import Clock, SystemClock, utc
from .engine import Engine
from .errors import (
    BlockedAddress,
    BlockedEndpoint,
    ConfigurationError,
    InvalidHeader,
    InvalidPayload,
    InvalidTenant,
    NotFound,
    PayloadTooLarge,
    StopTimeout,
    StoreError,
    UnsentDeliveriesWarning,
)
from .events import OPERATIONAL_PREFIX, OperationalEvent
from .filters import FilterIndex, compile_filter
from .models import (
    ALL_TENANTS,
    AllTenants,
    Attempt,
    AttemptTrigger,
    Delivery,
    DeliveryStatus,
    EventType,
    Message,
    RetiredSecret,
    Subscription,
    Tenant,
    TenantFilter,
    new_id,
)
from .netguard import check_resolved_host, check_resolved_host_async, parse_host_literal
from .options import (
    AUTO,
    DEFAULT_MAX_PAYLOAD_SIZE,
    DEFAULT_RETENTION,
    DispatcherKwargs,
    DispatcherOptions,
    EndpointKwargs,
    EndpointOptions,
    PageKwargs,
    PublishKwargs,
    RetrySpec,
    spelled_out,
    with_overrides,
)
from .paging import DEFAULT_PAGE_SIZE, Page, check_limit
from .registry import Registry, validate_event_type
from .retry import RetryPolicy
from .signing import get_signer, signature_header_names
from .stores import Stats, Store, open_store
from .stores.base import CATALOG_CHANGE, Claim, Route
from .transport import HTTPTransport, TLSSettings, load_ssl_context
from .worker import Worker

if sys.version_info >= (3, 11):
    from typing import Unpack
else:
    from typing_extensions import Unpack

logger = logging.getLogger("webhook_dispatch.dispatcher")

__all__ = [
    "AUTO",
    "DEFAULT_MAX_PAYLOAD_SIZE",
    "DEFAULT_RETENTION",
    "MISSING",
    "PURGE_BATCH",
    "REPLAY_BATCH",
    "ReplayProgress",
    "AsyncDispatcher",
    "Dispatcher",
    "EventSpec",
    "RetrySpec",
]

T = TypeVar("T")
P = ParamSpec("P")

PURGE_BATCH = 1000
"""Messages deleted per store transaction by `Dispatcher.purge` and the worker."""

EventSpec = tuple[str, Any] | tuple[str, Any, str | None] | tuple[str, Any, str | None, str | None]
"""What `Dispatcher.publish_many` takes: ``(event_type, payload)``,
``(event_type, payload, idempotency_key)`` or
``(event_type, payload, idempotency_key, tenant)``."""

REPLAY_BATCH = 500
"""Messages `Dispatcher.replay` reads and re-queues per store round."""


@attrs.frozen
class ReplayProgress:
    """What `Dispatcher.replay` has done so far, given to its ``on_progress`` after each
    batch."""

    read: int
    """Messages of the window looked at so far."""
    queued: int
    """Deliveries queued for a manual attempt so far."""
    total: int
    """Messages in the window (counted when the replay began)."""


MISSING = "missing"
"""A `Dispatcher.replay` status: messages the subscription has no delivery of (published
while it was disabled, or before it existed)."""

TENANT_CACHE_SIZE = 10_000
"""Tenants whose matching index a publishing process keeps (least recently used go)."""

TENANT_DELETE_BATCH = 1000
"""Messages deleted per store transaction by `Dispatcher.delete_tenant`."""

_PUBLISH_KEYS = frozenset(PublishKwargs.__annotations__)
_PAGE_KEYS = frozenset(PageKwargs.__annotations__)
_PAGE_DEFAULTS = {"limit": DEFAULT_PAGE_SIZE}


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


class _ImplicitStore(str):
    """The default store URL, told apart from ``"memory://"`` passed on purpose: only a
    dispatcher that was given no store warns that closing it loses deliveries."""

    __slots__ = ()


_DEFAULT_STORE = _ImplicitStore("memory://")

_SUBSCRIPTION_FIELD = {"retry": "retry_schedule"}
"""`EndpointOptions` fields whose `Subscription` field has another name."""


def _endpoint_options(subscription: Subscription) -> EndpointOptions:
    """The `EndpointOptions` a subscription stands for (its secret included)."""
    fields = {
        name: getattr(subscription, _SUBSCRIPTION_FIELD.get(name, name))
        for name in attrs.fields_dict(EndpointOptions)
    }
    return EndpointOptions(**fields)


def _replay_statuses(statuses: Iterable[DeliveryStatus | str] | None) -> frozenset[str]:
    """`replay`'s ``statuses=`` as values; None is every final status and `MISSING`."""
    known = {status.value for status in DeliveryStatus if status.is_final} | {MISSING}
    if statuses is None:
        return frozenset(known)
    if isinstance(statuses, (str, DeliveryStatus)):
        statuses = [statuses]
    chosen = set()
    for status in statuses:
        value = status.value if isinstance(status, DeliveryStatus) else status
        if value not in known:
            raise ConfigurationError(
                f"replay statuses are {', '.join(sorted(known))}; got {str(status)[:40]!r}"
            )
        chosen.add(value)
    return frozenset(chosen)


def _message_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """`publish`'s ``headers=``: checked like a subscription's, and never one that a
    signature scheme or auth= sets (a message goes to endpoints of every kind)."""
    if headers is None:
        return {}
    checked = validate_headers(headers)
    taken = signature_header_names() | {"authorization"}
    for name in checked:
        if name.lower() in taken:
            raise InvalidHeader(
                f"header {name!r} is set by a signature scheme or auth=; a message cannot set it"
            )
    return checked


def _blocked_endpoint(blocked: BlockedAddress) -> BlockedEndpoint:
    """The guard's refusal of a resolved name, as `subscribe` and `update` report it."""
    shown = ", ".join(f"{address} ({why})" for address, why in blocked.refused[:4])
    more = f" and {len(blocked.refused) - 4} more" if len(blocked.refused) > 4 else ""
    mixed = (
        " (it also resolves to allowed addresses; refuse_mixed_answers refuses such a name)"
        if blocked.reason
        else ""
    )
    return BlockedEndpoint(
        f"endpoint URL host {blocked.host!r} resolves to {shown}{more}{mixed}, refused by "
        "the network guard, so every delivery would be blocked: allow_private_networks=True "
        "(--allow-private-networks) or allowed_networks= opens it; resolve_host=False "
        "(--no-resolve-host) skips this check for a name that resolves otherwise where "
        "the worker runs",
        host=blocked.host,
        refused=blocked.refused,
    )


def _unexpected(call: str, given: Iterable[str], known: frozenset[str]) -> TypeError:
    unknown = sorted(set(given) - known)
    return TypeError(f"{call}() got an unexpected keyword argument {unknown[0]!r}")


def _page(call: str, page: PageKwargs) -> PageKwargs:
    """A listing's ``limit=``/``cursor=``, checked, with the default limit."""
    if not page.keys() <= _PAGE_KEYS:
        raise _unexpected(call, page, _PAGE_KEYS)
    return {
        "limit": check_limit(page.get("limit", DEFAULT_PAGE_SIZE)),
        "cursor": page.get("cursor"),
    }


class _Routes:
    """A tenant's matching index: the event-type trie, and the compiled payload filters
    of its subscriptions that have one (a body is decoded only when one of those is a
    candidate)."""

    __slots__ = ("filters", "registry")

    def __init__(self, routes: Iterable[Route]) -> None:
        self.registry = Registry()
        self.filters = FilterIndex()
        for route in routes:
            self.registry.add(route.id, route.event_types)
            if route.filter is not None:
                self.filters.add(route.id, compile_filter(route.filter))

    def match(self, message: Message) -> list[str]:
        """The subscriptions the message goes to."""
        candidates = self.registry.match(message.event_type)
        filters = self.filters
        if not filters or not any(candidate in filters for candidate in candidates):
            return candidates
        body = _json_body(message)
        passed = set() if body is _NOT_JSON else filters.matching(body)
        return [
            candidate for candidate in candidates if candidate in passed or candidate not in filters
        ]


_NOT_JSON: Any = object()


def _json_body(message: Message) -> Any:
    """The message's body decoded as JSON, or `_NOT_JSON` (which no filter matches)."""
    content_type = message.content_type.split(";", 1)[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        return _NOT_JSON
    try:
        return json.loads(message.payload)
    except ValueError:
        return _NOT_JSON


class _Core:
    """Everything both faces share: configuration, validation, matching, store calls.

    Its store operations are synchronous; the async face runs them through `call`."""

    def __init__(self, store: str | Store, options: DispatcherOptions) -> None:
        # Nothing here can refuse a setting after the store is opened: `options` was
        # validated as a whole, and the tracer (which needs OpenTelemetry) comes first.
        spans = None
        if options.tracing is not False and options.tracing is not None:
            from .tracing import AttemptTracer

            spans = AttemptTracer(None if options.tracing is True else options.tracing)
        self.options = options
        self.network_policy = options.network_policy
        self.max_payload_size = options.max_payload_size
        self.envelope = options.envelope
        self.clock: Clock = options.clock or SystemClock()
        self.owns_store = isinstance(store, str)
        self.implicit_memory = isinstance(store, _ImplicitStore)
        self.store = open_store(store)
        # The SSRF guard is part of the default transport: one passed as transport=
        # decides for itself where it connects (subscribe-time checks still apply).
        transport = options.transport or HTTPTransport(
            max_connections=max(options.concurrency, 16),
            network_policy=self.network_policy,
            resolve=options.resolve,
        )
        # Names are resolved at subscribe only when the guard delivers: through a mock or
        # a user's own transport nothing is refused after DNS, so nothing is refused before.
        self.resolves_names = options.transport is None or isinstance(
            options.transport, HTTPTransport
        )
        self.engine = Engine(transport, self.clock)
        self.worker = self._build_worker(spans)
        # One matching index per tenant, loaded on its first publish and dropped when the
        # store's change log says that tenant's subscriptions changed.
        self._registries: OrderedDict[str | None, _Routes] = OrderedDict()
        self._registry_version: int | None = None
        self._catalog: Catalog | None = None
        self._registry_lock = threading.Lock()
        self._settings_kept = False

    def _build_worker(self, spans: Any) -> Worker:
        """The one place a `Worker` is made from the options."""
        options = self.options
        if options.metrics is not None:
            options.metrics.bind(self.stats_with_age)
        return Worker(
            self.store,
            self.engine,
            self.clock,
            retry=options.retry or RetryPolicy(),
            concurrency=options.concurrency,
            lease=options.lease,
            poll_interval=options.poll_interval,
            retention=options.retention,
            purge_batch=PURGE_BATCH,
            default_max_in_flight=options.max_in_flight_per_subscription,
            retry_overrides=list(options.retry_by_event_type.items()),
            auto_disable=options.auto_disable,
            hooks=options.hooks,
            publish_operational=self.publish_operational if options.operational_events else None,
            observer=options.metrics,
            spans=spans,
            grace=options.grace,
        )

    async def call(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``function(*args, **kwargs)`` for the async face: in a thread when the store
        blocks (SQLite, PostgreSQL), directly otherwise."""
        if self.store.blocking:
            return await asyncio.to_thread(function, *args, **kwargs)
        return function(*args, **kwargs)

    # -- building values (pure, before any I/O) ----------------------------------
    def new_subscription(self, url: str, options: EndpointOptions) -> Subscription:
        url = self.check_url(url)
        token_url = getattr(options.auth, "token_url", None)
        if isinstance(token_url, str):
            self.check_url(token_url, what="token_url")
        tls = TLSSettings(options.ca_bundle, options.client_cert, options.client_key)
        if not tls.is_default:
            load_ssl_context(tls)
        signer = get_signer(options.signature)
        now = self.clock.now()
        return Subscription(
            id=new_id("sub"),
            url=url,
            event_types=options.event_types,
            secret=signer.generate_secret() if options.secret is None else options.secret,
            headers=dict(options.headers),
            metadata=dict(options.metadata),
            timeout=options.timeout,
            created_at=now,
            updated_at=now,
            signature=signer.name,
            auth=options.auth,
            ca_bundle=tls.ca_bundle,
            client_cert=tls.client_cert,
            client_key=tls.client_key,
            rate_limit=options.rate_limit,
            max_in_flight=options.max_in_flight,
            ordered=options.ordered,
            retry_schedule=options.retry,
            filter=options.filter,
            body_format=options.body_format,
            event_source=options.event_source,
        )

    def check_url(self, url: object, *, what: str = "endpoint URL") -> str:
        """`validate_url` plus the network policy: https_only, and IP-literal hosts (in
        any spelling) the guard refuses. Names are resolved by `check_host`."""
        checked = validate_url(url, https_only=self.network_policy.https_only)
        host = httpx.URL(checked).host
        literal = parse_host_literal(host)
        if literal is not None:
            reason = self.network_policy.check_address(literal)
            if reason is not None:
                raise BlockedEndpoint(
                    f"{what} host {host!r} is a {reason} address, refused by the network "
                    "guard (allow_private_networks=True or allowed_networks= open it)",
                    host=host,
                    refused=[(str(literal), reason)],
                )
        return checked

    # -- the host check: a name resolving only to refused addresses ---------------
    # Both faces run the same check; only the lookup differs (a bounded thread for the
    # sync face, loop.getaddrinfo for the async one), and netguard judges the answer.
    def host_to_resolve(self, url: str | None, resolve_host: bool) -> tuple[str, int] | None:
        """The name and port `check_host` looks up for ``url`` (already checked), or None
        when there is nothing to look up: no URL, ``resolve_host=False``, or deliveries
        going through a ``transport=`` of the user's own (no guard refuses them)."""
        if not isinstance(resolve_host, bool):
            raise ConfigurationError("resolve_host must be True or False")
        if url is None or not resolve_host or not self.resolves_names:
            return None
        parsed = httpx.URL(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        # The ASCII (IDNA) form of the name, as the transport resolves it.
        return parsed.raw_host.decode("ascii"), port

    def check_host(self, url: str | None, resolve_host: bool) -> None:
        """Refuse (`BlockedEndpoint`) a URL whose host name resolves only to addresses
        the network guard refuses; names that do not resolve in time pass."""
        target = self.host_to_resolve(url, resolve_host)
        if target is None:
            return
        try:
            check_resolved_host(
                target[0], self.network_policy, port=target[1], resolve=self.options.resolve
            )
        except BlockedAddress as blocked:
            raise _blocked_endpoint(blocked) from None

    async def check_host_async(self, url: str | None, resolve_host: bool) -> None:
        """`check_host` for the async face, on the running loop."""
        target = self.host_to_resolve(url, resolve_host)
        if target is None:
            return
        try:
            await check_resolved_host_async(
                target[0], self.network_policy, port=target[1], resolve=self.options.resolve
            )
        except BlockedAddress as blocked:
            raise _blocked_endpoint(blocked) from None

    def message_for(self, event_type: str, payload: Any, options: PublishKwargs) -> Message:
        """`new_message` from `publish`'s keyword arguments."""
        if options and not options.keys() <= _PUBLISH_KEYS:
            raise _unexpected("publish", options, _PUBLISH_KEYS)
        return self.new_message(
            event_type,
            payload,
            idempotency_key=options.get("idempotency_key"),
            content_type=options.get("content_type"),
            tenant=options.get("tenant"),
            headers=options.get("headers"),
        )

    def messages_for(self, events: Iterable[EventSpec]) -> list[Message]:
        """`new_message` for each of `publish_many`'s tuples (all before any is stored)."""
        messages = []
        for event in events:
            if not isinstance(event, tuple) or not 2 <= len(event) <= 4:
                raise InvalidPayload(
                    "publish_many takes (event_type, payload[, idempotency_key[, tenant]]) "
                    f"tuples, got {type(event).__name__}"
                )
            messages.append(
                self.new_message(
                    event[0],
                    event[1],
                    idempotency_key=event[2] if len(event) > 2 else None,
                    content_type=None,
                    tenant=event[3] if len(event) > 3 else None,
                )
            )
        return messages

    def new_message(
        self,
        event_type: str,
        payload: Any,
        *,
        idempotency_key: str | None,
        content_type: str | None,
        tenant: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Message:
        event_type = validate_event_type(event_type)
        idempotency_key = _check_idempotency_key(idempotency_key)
        tenant = validate_tenant(tenant)
        own_headers = _message_headers(headers)
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
            tenant=tenant,
            headers=own_headers,
        )

    def match(self, message: Message) -> list[str]:
        """Ids of the enabled subscriptions of the message's tenant matching its event
        type and, where they have one, whose payload filter its body matches; first
        the catalog's checks (schema, strict mode), which raise before anything is
        stored."""
        version = self._refresh()
        self.check_message(message, self._catalog_at(version))
        return self._routes_at(message.tenant, version).match(message)

    def _keep_settings_once(self, connection: Any) -> None:
        """On the first publish, keep this dispatcher's delivery settings in the store,
        for a worker to compare its own with (`webhook_dispatch._settings`).

        Inside the caller's transaction (``connection=``) this writes on a thread of its
        own: the caller may hold the database's write lock (SQLite) until it commits."""
        if self._settings_kept:
            return
        self._settings_kept = True
        if connection is None:
            self._keep_settings()
        else:
            threading.Thread(target=self._keep_settings, name="keep-settings", daemon=True).start()

    def _keep_settings(self) -> None:
        try:
            _settings.record(self.store, self.options, self.clock.now())
        except StoreError as exc:  # advisory: publishing goes on without it, tries again
            self._settings_kept = False
            logger.warning("could not keep the publishers' settings in the store: %s", exc)

    def routes(self, tenant: str | None) -> _Routes:
        """The tenant's matching index: cached, and reloaded (that tenant's subscriptions
        only) when the store says they changed, in this process or another."""
        return self._routes_at(tenant, self._refresh())

    def catalog(self) -> Catalog:
        """The event catalog, cached like the matching indexes."""
        return self._catalog_at(self._refresh())

    def _refresh(self) -> int:
        """Read the store's change counter (one query) and drop what changed since."""
        version = self.store.subscriptions_version()
        with self._registry_lock:
            if version != self._registry_version:
                changed = (
                    None
                    if self._registry_version is None
                    else self.store.changed_tenants(self._registry_version)
                )
                if changed is None:
                    self._registries.clear()
                    self._catalog = None
                else:
                    for name in changed:
                        self._registries.pop(name, None)
                    if CATALOG_CHANGE in changed:
                        self._catalog = None
                self._registry_version = version
        return version

    def _routes_at(self, tenant: str | None, version: int) -> _Routes:
        with self._registry_lock:
            routes = self._registries.get(tenant)
            if routes is not None:
                self._registries.move_to_end(tenant)
                return routes
        # Read after the version: a change committed meanwhile is in it, or bumps the
        # version again (and this index is not kept).
        routes = _Routes(self.store.subscription_patterns(tenant))
        with self._registry_lock:
            if self._registry_version == version:
                self._registries[tenant] = routes
                if len(self._registries) > TENANT_CACHE_SIZE:
                    self._registries.popitem(last=False)
        return routes

    def _catalog_at(self, version: int) -> Catalog:
        catalog = self._catalog
        if catalog is not None:
            return catalog
        catalog = Catalog(self.store.list_event_types())
        with self._registry_lock:
            if self._registry_version == version:
                self._catalog = catalog
        return catalog

    def check_message(self, message: Message, catalog: Catalog) -> None:
        """Strict mode and the payload's schema, from the body as it will be sent."""
        if self.options.strict_event_types:
            catalog.check_published(message.event_type)
        entry = catalog.entries.get(message.event_type)
        if entry is None or entry.schema is None:
            return
        body = _json_body(message)
        if body is _NOT_JSON:
            raise InvalidPayload(
                f"event type {message.event_type!r} has a JSON Schema in the catalog; "
                "its payloads must be JSON"
            )
        catalog.check_payload(message.event_type, body["data"] if self.envelope else body)

    # -- store operations (sync; the async face runs them through `call`) ---------
    def subscribe(
        self,
        url: str,
        options: EndpointOptions | None,
        overrides: EndpointKwargs,
        tenant: str | None = None,
        key: str | None = None,
        resolve_host: bool = True,
    ) -> Subscription:
        subscription, secret_given = self.new_endpoint(url, options, overrides, tenant, key)
        self.check_host(subscription.url, resolve_host)
        return self.add_endpoint(subscription, secret_given)

    def new_endpoint(
        self,
        url: str,
        options: EndpointOptions | None,
        overrides: EndpointKwargs,
        tenant: str | None,
        key: str | None,
    ) -> tuple[Subscription, bool]:
        """`subscribe`'s new subscription, every input checked (nothing is stored), and
        whether ``secret=`` was given."""
        tenant = validate_tenant(tenant)
        key = validate_subscription_key(key)
        endpoint = with_overrides(EndpointOptions, options, overrides)
        subscription = attrs.evolve(self.new_subscription(url, endpoint), tenant=tenant, key=key)
        if self.options.strict_event_types:
            self.catalog().check_patterns(subscription.event_types)
        return subscription, endpoint.secret is not None

    def add_endpoint(self, subscription: Subscription, secret_given: bool) -> Subscription:
        """Store a `new_endpoint` (or converge the one with its key)."""
        if subscription.key is None:
            self.store.add_subscription(subscription)
            return subscription
        stored = self.store.add_subscription_once(subscription)
        if stored.id == subscription.id:
            return subscription
        return self._converge(stored, subscription, secret_given=secret_given)

    def _converge(
        self, stored: Subscription, wanted: Subscription, *, secret_given: bool
    ) -> Subscription:
        """A keyed subscription that exists already, given the settings of this
        `subscribe` (its id, secret, health and state stay); written only if they differ,
        so an application's start-up does not touch the store's change log."""
        if wanted.signature != stored.signature and not secret_given:
            raise ConfigurationError(
                f"subscription key {stored.key!r} signs with {stored.signature!r}; changing "
                "the signature scheme needs a new secret= of that scheme"
            )
        kept = {"id", "created_at", "updated_at", "previous_secrets", "enabled"}
        kept |= {"disabled_reason", "failing_since", "consecutive_failures", "tenant", "key"}
        if not secret_given:
            kept.add("secret")
        changes = {
            field.name: getattr(wanted, field.name)
            for field in attrs.fields(Subscription)
            if field.name not in kept
        }
        converged = attrs.evolve(stored, **changes)
        if converged == stored:
            return stored
        converged = attrs.evolve(converged, updated_at=self.clock.now())
        self.store.save_subscription(converged)
        return converged

    # -- the event catalog ---------------------------------------------------------------
    def define_event_type(
        self,
        name: str,
        description: str,
        schema: Mapping[str, Any] | None,
        examples: Sequence[Any],
        deprecated: bool,
    ) -> EventType:
        existing = self.catalog().entries.get(name) if isinstance(name, str) else None
        entry = new_event_type(
            name,
            description=description,
            schema=schema,
            examples=examples,
            deprecated=deprecated,
            now=self.clock.now(),
            existing=existing,
        )
        self.store.put_event_type(entry)
        return entry

    def export(self, kind: str, title: str, version: str) -> dict[str, Any]:
        if not isinstance(title, str) or not isinstance(version, str):
            raise ConfigurationError("title and version must be strings")
        build = {"openapi": openapi_document, "asyncapi": asyncapi_document}[kind]
        return build(
            self.store.list_event_types(), title=title, version=version, envelope=self.envelope
        )

    def unsubscribe(self, subscription_id: str) -> None:
        self.store.remove_subscription(subscription_id, self.clock.now())

    def update_endpoint(
        self,
        subscription_id: str,
        url: str | None,
        overrides: EndpointKwargs,
        resolve_host: bool = True,
    ) -> Subscription:
        """`Dispatcher.update`: the endpoint's current settings with ``overrides``,
        validated as a whole before anything is written."""
        changes = self.endpoint_changes(subscription_id, url, overrides)
        self.check_host(changes.get("url"), resolve_host)
        return self.update(subscription_id, **changes)

    def endpoint_changes(
        self, subscription_id: str, url: str | None, overrides: EndpointKwargs
    ) -> dict[str, Any]:
        """The `Subscription` fields `update_endpoint` changes, every one checked."""
        for fixed, instead in (("secret", "rotate_secret()"), ("signature", "a new subscription")):
            if fixed in overrides:
                raise ConfigurationError(f"update() cannot change {fixed}; use {instead}")
        current = self.store.get_subscription(subscription_id)
        options = attrs.evolve(_endpoint_options(current), **overrides)
        changes: dict[str, Any] = {
            _SUBSCRIPTION_FIELD.get(name, name): getattr(options, name) for name in overrides
        }
        if url is not None:
            changes["url"] = self.check_url(url)
        if "event_types" in overrides and self.options.strict_event_types:
            self.catalog().check_patterns(options.event_types)
        if {"ca_bundle", "client_cert", "client_key"} & overrides.keys():
            tls = TLSSettings(options.ca_bundle, options.client_cert, options.client_key)
            if not tls.is_default:
                load_ssl_context(tls)
        return changes

    def enable(self, subscription_id: str) -> Subscription:
        return self.update(
            subscription_id,
            enabled=True,
            disabled_reason=None,
            failing_since=None,
            consecutive_failures=0,
        )

    def disable(self, subscription_id: str, reason: str) -> Subscription:
        return self.update(subscription_id, enabled=False, disabled_reason=reason)

    def subscriptions(self, tenant: TenantFilter, page: PageKwargs) -> Page[Subscription]:
        return self.store.list_subscriptions(
            tenant=_tenant_filter(tenant), **_page("subscriptions", page)
        )

    def publish_event(self, event_type: str, payload: Any, options: PublishKwargs) -> Message:
        message = self.message_for(event_type, payload, options)
        return self.publish(message, options.get("connection"))

    def publish(self, message: Message, connection: Any = None) -> Message:
        self._keep_settings_once(connection)
        result = self.store.publish(
            message,
            self.match(message),
            self.clock.now(),
            **self._outbox(connection),
        )
        if result.deliveries:
            self.worker.wake()
        return result.message

    def publish_events(self, events: Iterable[EventSpec], connection: Any) -> list[Message]:
        return self.publish_many(self.messages_for(events), connection)

    def publish_many(self, messages: Sequence[Message], connection: Any = None) -> list[Message]:
        items = [(message, self.match(message)) for message in messages]
        self._keep_settings_once(connection)
        results = self.store.publish_many(items, self.clock.now(), **self._outbox(connection))
        if any(result.deliveries for result in results):
            self.worker.wake()
        return [result.message for result in results]

    async def publish_event_async(
        self, event_type: str, payload: Any, options: PublishKwargs
    ) -> Message:
        """`publish` for the async face; an async psycopg connection is awaited here."""
        message = self.message_for(event_type, payload, options)
        connection = options.get("connection")
        if _is_async_connection(connection):
            return (await self._store_in_async_transaction([message], connection))[0]
        return await self.call(self.publish, message, connection)

    async def publish_events_async(
        self, events: Iterable[EventSpec], connection: Any
    ) -> list[Message]:
        """`publish_events` for the async face, as `publish_event_async`."""
        messages = self.messages_for(events)
        if _is_async_connection(connection):
            return await self._store_in_async_transaction(messages, connection)
        return await self.call(self.publish_many, messages, connection)

    # -- the transactional outbox: publish inside the caller's own transaction ------
    def _outbox(self, connection: Any) -> dict[str, Any]:
        """The ``connection=`` keyword for the store, refused by stores that cannot join
        the caller's transaction (they say so with ``transactional_outbox = True``)."""
        if connection is None:
            return {}
        if not self.store.transactional_outbox:
            raise ConfigurationError(
                f"connection= (publishing inside your transaction) needs the SQLite or "
                f"PostgreSQL store; {self.store!r} cannot join a database transaction"
            )
        return {"connection": connection}

    async def _store_in_async_transaction(
        self, messages: Sequence[Message], connection: Any
    ) -> list[Message]:
        """`publish_many` inside an async psycopg connection's open transaction."""
        self._outbox(connection)
        items = await asyncio.to_thread(
            lambda: [(message, self.match(message)) for message in messages]
        )
        self._keep_settings_once(connection)
        results = await self.store.publish_many_async(
            items, self.clock.now(), connection=connection
        )
        return [result.message for result in results]

    def publish_operational(self, events: list[OperationalEvent]) -> None:
        """Publish operational events to the subscriptions that asked for them by name
        (a pattern starting ``webhook_dispatch.``): the operator's untenanted ones, and
        the subscriptions of the tenant whose endpoint the event is about. Never to
        catch-all subscriptions, nor to any other tenant's: customers must not see each
        other's troubles."""
        items: list[tuple[Message, Sequence[str]]] = []
        for event in events:
            audiences = [None] if event.tenant is None else [None, event.tenant]
            for tenant in audiences:
                message = self.new_message(
                    event.type,
                    event.payload(),
                    idempotency_key=None,
                    content_type=None,
                    tenant=tenant,
                )
                routes = self.routes(tenant)
                wanted = [
                    subscription_id
                    for subscription_id in routes.match(message)
                    if any(
                        pattern.startswith(OPERATIONAL_PREFIX)
                        for pattern in routes.registry.patterns(subscription_id)
                    )
                ]
                if wanted:
                    items.append((message, wanted))
        if items:
            results = self.store.publish_many(items, self.clock.now())
            if any(result.deliveries for result in results):
                self.worker.wake()

    def stats(self, tenant: TenantFilter = ALL_TENANTS) -> Stats:
        if isinstance(tenant, AllTenants):
            return self.stats_with_age()[0]
        return self.store.stats(self.clock.now(), tenant=_tenant_filter(tenant))

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

    def rotate_secret(self, subscription_id: str, grace: timedelta, secret: str | None) -> str:
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
        return new_secret

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

    def replay(
        self,
        subscription_id: str,
        since: datetime,
        until: datetime | None,
        statuses: Iterable[DeliveryStatus | str] | None,
        on_progress: Callable[[ReplayProgress], object] | None,
    ) -> int:
        wanted = _replay_statuses(statuses)
        if not isinstance(since, datetime):
            raise ConfigurationError("since must be a datetime")
        subscription = self.store.get_subscription(subscription_id)
        routes = _Routes(
            [
                Route(
                    subscription.id,
                    subscription.event_types,
                    None if subscription.filter is None else subscription.filter.document,
                )
            ]
        )
        window = {
            "since": utc(since),
            "until": utc(until) if until else datetime.max.replace(tzinfo=timezone.utc),
        }
        count = self.store.count_messages_between(subscription.tenant, **window)
        total, read, after = 0, 0, None
        while True:
            batch, after = self.store.messages_between(
                subscription.tenant, **window, after=after, limit=REPLAY_BATCH
            )
            chosen = [m.id for m in batch if routes.match(m)]
            have = self.store.deliveries_for(subscription.id, chosen)
            again = [
                have[m].id
                for m in chosen
                if m in have and have[m].status.is_final and have[m].status.value in wanted
            ]
            missing = [m for m in chosen if m not in have and MISSING in wanted]
            now = self.clock.now()
            if again:
                total += len(self.store.schedule_manual(again, now))
            if missing:
                total += len(self.store.add_manual_deliveries(subscription.id, missing, now))
            if total:
                self.worker.wake()
            read += len(batch)
            if on_progress is not None:
                on_progress(ReplayProgress(read=read, queued=total, total=max(count, read)))
            if after is None:
                return total

    def example_claim(self, subscription_id: str, event_type: str, payload: Any) -> Claim:
        """What `send_example` sends: a test message (the catalog's first example, or
        ``payload``) and a delivery of it that is no real one, checked first."""
        subscription = self.store.get_subscription(subscription_id)
        if payload is None:
            entry = self.catalog().entries.get(validate_event_type(event_type))
            if entry is None or not entry.examples:
                raise ConfigurationError(
                    f"event type {event_type!r} has no example in the catalog: pass payload="
                )
            payload = entry.examples[0]
        message = attrs.evolve(
            self.new_message(
                event_type,
                payload,
                idempotency_key=None,
                content_type=None,
                tenant=subscription.tenant,
            ),
            test=True,
        )
        self.check_message(message, self.catalog())
        now = self.clock.now()
        delivery = Delivery(
            id=new_id("dlv"),
            message_id=message.id,
            subscription_id=subscription.id,
            status=DeliveryStatus.DELIVERING,
            next_attempt_at=None,
            next_trigger=AttemptTrigger.TEST,
            created_at=now,
            updated_at=now,
        )
        return Claim(delivery=delivery, message=message, subscription=subscription)

    async def send_example(self, claim: Claim) -> Attempt:
        """Make the test attempt now and keep it (message, final delivery, attempt)."""
        attempt, outcome = await self.engine.attempt(claim)
        final = attrs.evolve(
            claim.delivery,
            status=DeliveryStatus.SUCCEEDED if attempt.succeeded else DeliveryStatus.FAILED,
            attempt_count=1,
            updated_at=self.clock.now(),
            last_status_code=attempt.status_code,
            last_error=outcome.error,
        )
        await self.call(self.store.record_test, claim.message, final, attempt)
        return attempt

    def resend(self, message_id: str, subscription_id: str) -> Delivery:
        now = self.clock.now()
        have = self.store.deliveries_for(subscription_id, [message_id]).get(message_id)
        if have is None:
            subscription = self.store.get_subscription(subscription_id)
            if self.store.get_message(message_id).tenant != subscription.tenant:
                raise NotFound(
                    f"message {message_id!r} was not published to the tenant of {subscription_id!r}"
                )
            added = self.store.add_manual_deliveries(subscription_id, [message_id], now)
            delivery = (
                added[0]
                if added
                else self.store.deliveries_for(subscription_id, [message_id])[message_id]
            )
        else:
            scheduled = self.store.schedule_manual([have.id], now)
            delivery = scheduled[0] if scheduled else have
        self.worker.wake()
        return delivery

    def purge(
        self,
        older_than: timedelta | datetime | None,
        on_progress: Callable[[int], object] | None = None,
    ) -> int:
        if older_than is None:
            older_than = self.options.retention or DEFAULT_RETENTION
        cutoff = self.clock.now() - older_than if isinstance(older_than, timedelta) else older_than
        total = 0
        # Small transactions: a long purge never holds the store's write lock for long.
        while removed := self.store.purge(utc(cutoff), limit=PURGE_BATCH):
            total += removed
            if on_progress is not None:
                on_progress(total)
        return total

    def deliveries(
        self,
        message_id: str | None,
        subscription_id: str | None,
        status: DeliveryStatus | str | None,
        tenant: TenantFilter,
        page: PageKwargs,
    ) -> Page[Delivery]:
        return self.store.list_deliveries(
            message_id=message_id,
            subscription_id=subscription_id,
            status=_status(status),
            tenant=_tenant_filter(tenant),
            **_page("deliveries", page),
        )

    def messages(
        self, event_type: str | None, tenant: TenantFilter, page: PageKwargs
    ) -> Page[Message]:
        return self.store.list_messages(
            event_type=event_type, tenant=_tenant_filter(tenant), **_page("messages", page)
        )

    # -- tenants -------------------------------------------------------------------
    def set_tenant(self, tenant_id: str, changes: dict[str, Any]) -> Tenant:
        tenant_id = _required_tenant(tenant_id)
        now = self.clock.now()
        try:
            current = self.store.get_tenant(tenant_id)
        except NotFound:
            current = Tenant(id=tenant_id, created_at=now, updated_at=now)
        if "metadata" in changes:
            changes["metadata"] = _tenant_metadata(changes["metadata"])
        try:
            updated = attrs.evolve(current, updated_at=now, **changes)
        except ConfigurationError as exc:
            raise InvalidTenant(str(exc)) from None
        return self.store.save_tenant(updated)

    def get_tenant(self, tenant_id: str) -> Tenant:
        return self.store.get_tenant(_required_tenant(tenant_id))

    def tenants(self, page: PageKwargs) -> Page[Tenant]:
        return self.store.list_tenants(**_page("tenants", page))

    def delete_tenant(
        self, tenant_id: str, on_progress: Callable[[int], object] | None, wait: float
    ) -> int:
        """Close the tenant, then delete its rows in batches; attempts already claimed
        (by any worker) are waited for, up to the longest a lease lasts, so nothing of
        the tenant is sent once this returns."""
        tenant_id = _required_tenant(tenant_id)
        self.store.close_tenant(tenant_id, self.clock.now())
        total = 0
        deadline = time.monotonic() + wait
        while True:
            removed, held = self.store.purge_tenant(
                tenant_id, self.clock.now(), limit=TENANT_DELETE_BATCH
            )
            total += removed
            if removed and on_progress is not None:
                on_progress(total)
            if not removed and not held:
                return total
            if not removed:
                if time.monotonic() > deadline:
                    raise StopTimeout(
                        f"tenant {tenant_id!r}: {held} attempts still under a live lease after "
                        f"{wait:.0f} s; its subscriptions are gone, call delete_tenant again",
                        timeout=wait,
                    )
                time.sleep(0.05)  # attempts under way: their worker records them soon

    def next_due_at(self) -> datetime | None:
        return self.store.next_due_at()

    def close_store(self) -> None:
        self.worker.close()
        if self.implicit_memory:
            stats = self.store.stats(self.clock.now())
            unsent = stats.pending + stats.delivering
            if unsent:
                warnings.warn(
                    f"closing a Dispatcher that was given no store (memory://) drops "
                    f"{unsent} {'delivery' if unsent == 1 else 'deliveries'} not yet sent; "
                    "pass a store such as 'sqlite:///webhooks.db' to keep them",
                    UnsentDeliveriesWarning,
                    stacklevel=4,
                )
        if self.owns_store:
            self.store.close()


def _tenant_filter(tenant: object) -> TenantFilter:
    """A listing's ``tenant=``, validated: `ALL_TENANTS`, None or a tenant id."""
    if isinstance(tenant, AllTenants):
        return tenant
    return validate_tenant(tenant)


def _required_tenant(tenant: object) -> str:
    """A tenant id where None (no tenant) makes no sense."""
    checked = validate_tenant(tenant)
    if checked is None:
        raise InvalidTenant("a tenant id is needed here (None means no tenant)")
    return checked


def _tenant_metadata(value: object) -> dict[str, str]:
    """A tenant's metadata: at most 50 string keys and values."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or len(value) > 50:
        raise InvalidTenant("tenant metadata must be a mapping of at most 50 entries")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str) or not key:
            raise InvalidTenant("tenant metadata keys and values must be strings")
        if len(key) > 255 or len(item) > 2048:
            raise InvalidTenant("tenant metadata keys are at most 255, values 2048 characters")
    return dict(value)


_TENANT_SETTINGS = frozenset({"rate_limit", "max_in_flight", "max_subscriptions", "metadata"})


def _tenant_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """`set_tenant`'s keyword arguments, refused when unknown."""
    if not settings.keys() <= _TENANT_SETTINGS:
        raise _unexpected("set_tenant", settings, _TENANT_SETTINGS)
    return settings


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


class _Running(Protocol):
    def done(self) -> bool: ...


R = TypeVar("R", bound=_Running)


class _Face(Generic[R]):
    """What both faces hold: the core, built from validated options, and the worker's
    handle while it runs (a thread's future or a task)."""

    @spelled_out(DispatcherKwargs, DispatcherOptions)
    def __init__(
        self,
        store: str | Store = _DEFAULT_STORE,
        options: DispatcherOptions | None = None,
        **overrides: Unpack[DispatcherKwargs],
    ) -> None:
        """``store`` is a URL (``"memory://"``, ``"sqlite:///webhooks.db"``,
        ``"postgresql://..."``) or a `Store`. The options are `DispatcherOptions` fields,
        given as keyword arguments or as a ready ``options`` object (keyword arguments then
        override its fields); all are validated before the store is opened."""
        self._core = _Core(store, with_overrides(DispatcherOptions, options, overrides))
        self._running: R | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(store={self._core.store!r})"

    @property
    def store(self) -> Store:
        """The store this dispatcher reads and writes."""
        return self._core.store

    @property
    def clock(self) -> Clock:
        """The clock deciding when attempts are due."""
        return self._core.clock

    @property
    def options(self) -> DispatcherOptions:
        """The options this dispatcher was built with."""
        return self._core.options

    def attempt_counts(self) -> dict[DeliveryStatus, int]:
        """Attempts this dispatcher's worker made so far, by the status each left its
        delivery in (``SUCCEEDED``; ``PENDING``: a retry is due; ``FAILED`` or
        ``EXHAUSTED``: given up). A copy; safe to call from any thread."""
        return dict(self._core.worker.tally)

    def _delete_wait(self, wait: float | None) -> float:
        """`delete_tenant`'s ``wait``: by default as long as a lease lasts, plus 10 s."""
        if wait is None:
            return self.options.lease.total_seconds() + 10
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or wait < 0:
            raise ConfigurationError("wait must be a number of seconds, 0 or more")
        return float(wait)

    def _check_idle(self) -> None:
        if self._running is not None and not self._running.done():
            raise ConfigurationError("the worker is already running (start()); stop() it first")

    def _may_start(self) -> bool:
        """False while the worker runs; otherwise prepare it to run and say True."""
        if self._running is not None and not self._running.done():
            return False
        self._core.worker.prepare_run()
        return True

    def _stop_requested(self) -> R | None:
        """Ask a running worker to stop (attempts in flight finish); its handle."""
        if self._running is not None:
            self._core.worker.request_stop()
        return self._running


class Dispatcher(_Face["concurrent.futures.Future[int]"]):
    """Publish events and deliver them, from ordinary (synchronous) code.

    ``Dispatcher(store, **options)``: ``store`` is a URL (``"memory://"``,
    ``"sqlite:///webhooks.db"``) or a `Store`; the options are the fields of
    `DispatcherOptions` (which documents each), as keyword arguments or as one
    ``DispatcherOptions`` object. Every option is validated before the store is opened. Use
    it as a context manager, or call `close`.

    ``retry`` is a `RetryPolicy`; ``transport`` any `httpx.AsyncBaseTransport` (tests pass a
    `webhook_dispatch.testing.MockReceiver` or ``httpx.MockTransport``); ``clock`` a
    `Clock` (tests pass a `FakeClock`). ``concurrency`` bounds attempts in flight per
    worker; ``lease`` is how long a claimed delivery stays reserved (a crashed worker's
    deliveries are retried after it); ``poll_interval`` is how often an idle worker looks
    for work published by other processes. While running, the worker purges finished
    messages older than ``retention`` (30 days; ``None`` keeps everything) about once an
    hour.

    The network guard refuses endpoints on loopback, private, link-local (cloud
    metadata), CGNAT, multicast and reserved addresses, checked after DNS on the address
    actually connected to. ``allow_private_networks=True`` turns it off (tests on
    127.0.0.1), ``allowed_networks=["10.1.0.0/16"]`` opens chosen networks,
    ``https_only=True`` refuses plain-http endpoints. The guard is part of the default
    transport: with your own ``transport=`` only the subscribe-time checks apply.
    `subscribe` applies the guard ahead of time: an IP-literal host it refuses raises
    `BlockedEndpoint`, and so does a name resolving only to refused addresses when the
    guard delivers (the default transport or an `HTTPTransport`; ``resolve_host=False``
    skips the lookup). ``resolve`` replaces the system resolver for the guard (tests
    inject one).

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

    _loop_thread: _LoopThread | None = None

    # -- subscriptions -------------------------------------------------------------
    @spelled_out(EndpointKwargs, EndpointOptions)
    def subscribe(
        self,
        url: str,
        options: EndpointOptions | None = None,
        *,
        tenant: str | None = None,
        key: str | None = None,
        resolve_host: bool = True,
        **overrides: Unpack[EndpointKwargs],
    ) -> Subscription:
        """Register an endpoint for the event types matching ``event_types``.

        The options are the fields of `EndpointOptions` (which documents each), as keyword
        arguments or as one ``EndpointOptions`` object (keyword arguments then override
        its fields). ``event_types`` takes exact names, ``*`` for one segment
        (``order.*``) and a final ``**`` for any depth; ``None`` or ``["*"]`` means every
        event. Without ``secret`` a ``whsec_`` secret is generated (read it from
        ``.secret``). ``headers`` are sent with every request (reserved names are
        refused); ``timeout`` is per attempt.

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

        ``tenant`` names the customer the endpoint belongs to (1 to 255 characters of
        ``[A-Za-z0-9_.:-]``): it receives only events published with that ``tenant=``.
        None (the default) is the application's own endpoint, which gets only untenanted
        events. A tenant's ``max_subscriptions`` (`set_tenant`) is enforced here.

        ``key`` is your own stable name for the endpoint (1 to 255 characters of
        ``[A-Za-z0-9_.:-]``, unique per tenant): if the tenant has a subscription with
        that key, it is updated to these settings and returned (same id, same secret
        unless ``secret=`` is given, health and enabled state kept) instead of a second
        one being added, so start-up code can call ``subscribe`` on every run. Nothing is
        written when the settings are the same.

        The network guard is applied ahead of delivery: an IP-literal host it refuses,
        or a host name that resolves only to addresses it refuses (``localhost``, a name
        pointing at 10.0.0.5 or 169.254.169.254), raises `BlockedEndpoint` with the
        guard's reason, and nothing is stored. A name that does not resolve, or not
        within a couple of seconds, is accepted: it may resolve only where the worker
        runs. ``resolve_host=False`` skips the lookup (IP literals are still checked),
        for a name that resolves differently where the worker runs. Names are not
        looked up when deliveries go through your own ``transport=``.
        """
        return self._core.subscribe(url, options, overrides, tenant, key, resolve_host)

    def unsubscribe(self, subscription_id: str) -> None:
        """Remove a subscription; its unfinished deliveries are cancelled."""
        self._core.unsubscribe(subscription_id)

    def enable(self, subscription_id: str) -> Subscription:
        """Resume deliveries to a subscription, including those held while it was disabled."""
        return self._core.enable(subscription_id)

    def disable(self, subscription_id: str, reason: str = "disabled by operator") -> Subscription:
        """Stop deliveries to a subscription; pending ones are held until `enable`."""
        return self._core.disable(subscription_id, reason)

    @spelled_out(EndpointKwargs, {})
    def update(
        self,
        subscription_id: str,
        *,
        url: str | None = None,
        resolve_host: bool = True,
        **changes: Unpack[EndpointKwargs],
    ) -> Subscription:
        """Change a subscription's settings: ``url`` and any keyword `subscribe` takes
        (``filter=None`` removes a filter), checked together before anything is stored.
        A new ``url`` gets `subscribe`'s network-guard check (``resolve_host=False``
        skips the lookup of its host name). The secret changes with `rotate_secret`; the
        signature scheme does not change. Deliveries not yet sent go out with the new
        settings."""
        return self._core.update_endpoint(subscription_id, url, changes, resolve_host)

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
        return self._core.rotate_secret(subscription_id, grace, secret)

    @spelled_out(PageKwargs, _PAGE_DEFAULTS)
    def subscriptions(
        self, *, tenant: TenantFilter = ALL_TENANTS, **page: Unpack[PageKwargs]
    ) -> Page[Subscription]:
        """Subscriptions, oldest first, a `Page` of at most ``limit`` (default 100); pass
        its ``next_cursor`` as ``cursor=`` for the next page. ``tenant="acme"`` lists only
        acme's, ``tenant=None`` only the untenanted ones (default: all)."""
        return self._core.subscriptions(tenant, page)

    def get_subscription(self, subscription_id: str) -> Subscription:
        """One subscription by id (`NotFound` otherwise)."""
        return self._core.store.get_subscription(subscription_id)

    # -- the event catalog ---------------------------------------------------------
    def define_event_type(
        self,
        name: str,
        *,
        description: str = "",
        schema: Mapping[str, Any] | None = None,
        examples: Sequence[Any] = (),
        deprecated: bool = False,
    ) -> EventType:
        """Add an event type to the catalog, or replace its entry: what it means, the
        JSON Schema (draft 7) its payloads must satisfy, and example payloads (each
        checked against the schema). Shared by every process on the store.

        Publishing a type with a schema validates the payload first (`InvalidPayload`,
        with the failing ``.path``, and nothing is stored). With
        ``strict_event_types=True`` only cataloged types can be published or subscribed
        to. `export_openapi` and `export_asyncapi` describe the catalog."""
        return self._core.define_event_type(name, description, schema, examples, deprecated)

    def event_types(self) -> list[EventType]:
        """The event catalog, by name."""
        return self._core.store.list_event_types()

    def remove_event_type(self, name: str) -> None:
        """Take an event type out of the catalog (`NotFound` if absent)."""
        self._core.store.remove_event_type(name)

    def export_openapi(self, *, title: str = "Webhooks", version: str = "1.0.0") -> dict[str, Any]:
        """The catalog as an OpenAPI 3.1 document: a ``webhooks`` entry per event type,
        with the request body's schema and examples and the Standard Webhooks headers.
        Feed it to your API docs generator."""
        return self._core.export("openapi", title, version)

    def export_asyncapi(self, *, title: str = "Webhooks", version: str = "1.0.0") -> dict[str, Any]:
        """The catalog as an AsyncAPI 3.0 document: a channel, message and ``send``
        operation per event type."""
        return self._core.export("asyncapi", title, version)

    # -- publishing ----------------------------------------------------------------
    @spelled_out(PublishKwargs, {})
    def publish(self, event_type: str, payload: Any, **options: Unpack[PublishKwargs]) -> Message:
        """Store an event for every matching subscription and return the `Message`.

        The payload is wrapped in the Standard Webhooks envelope ``{"type", "timestamp",
        "data"}`` and serialized once. Bytes (or str) with ``content_type=`` are sent
        as-is. With a durable store the message is safe once this returns. The same
        ``idempotency_key=`` returns the first message and sends nothing again.

        ``connection=`` takes your own database connection with an open transaction: a
        psycopg 3 connection (PostgreSQL store) or a ``sqlite3.Connection`` to the store's
        own file (SQLite store). The event is written in that transaction and not
        committed, so it is delivered if and only if the caller commits (the
        transactional outbox).

        ``tenant="acme"`` sends the event only to acme's matching subscriptions (and
        scopes ``idempotency_key`` to acme); None, the default, only to untenanted ones.
        """
        return self._core.publish_event(event_type, payload, options)

    def publish_many(self, events: Iterable[EventSpec], *, connection: Any = None) -> list[Message]:
        """Publish ``(event_type, payload)``, ``(event_type, payload, idempotency_key)``
        or ``(event_type, payload, idempotency_key, tenant)`` tuples in one store
        transaction; all are validated before any is stored. ``connection=`` joins the
        caller's transaction, as in `publish`."""
        return self._core.publish_events(events, connection)

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
        self._check_idle()
        return self._loop().call(self._core.worker.run_until_idle())

    def start(self) -> None:
        """Run the worker on a background thread until `stop` or `close`."""
        if self._may_start():
            self._running = self._loop().submit(self._core.worker.run())

    def stop(self, timeout: float | None = None) -> None:
        """Stop the background worker; attempts in flight finish and are recorded.

        How long they may take is the ``grace`` option (by default each attempt's own
        timeout); after it, those still running are recorded as interrupted and due
        again at once. With ``timeout``, `StopTimeout` is raised if the worker has not
        stopped after that many seconds, and it goes on stopping: call `stop` again to
        wait more, or `interrupt` to end the grace period now."""
        running = self._stop_requested()
        if running is None:
            return
        finished, _ = concurrent.futures.wait([running], timeout=timeout)
        if not finished:
            raise StopTimeout(
                f"the worker did not stop within {timeout} seconds; its attempts in flight "
                "are still finishing (call stop() again to wait for them)",
                timeout=timeout,
            )
        self._running = None
        running.result()

    def run(self) -> None:
        """Run the worker in this thread until interrupted (Ctrl-C) or `stop`."""
        self.start()
        running = self._running
        assert running is not None
        try:
            while not running.done():
                concurrent.futures.wait([running], timeout=0.5)
            running.result()
        except KeyboardInterrupt:
            try:
                self.stop()  # attempts in flight finish, within the grace period
            except KeyboardInterrupt:  # a second Ctrl-C: interrupt them now
                self.interrupt()
                self.stop()

    def interrupt(self) -> None:
        """End a stopping worker's grace period now: attempts still in flight are
        cancelled, recorded as interrupted and due again at once (another worker takes
        them without waiting for their leases). Safe from any thread."""
        self._core.worker.interrupt()

    # -- inspection and repair -----------------------------------------------------
    def attempts(self, message_id: str) -> list[Attempt]:
        """Every attempt made for a message, oldest first."""
        return self._core.store.list_attempts(message_id=message_id)

    @spelled_out(PageKwargs, _PAGE_DEFAULTS)
    def deliveries(
        self,
        message_id: str | None = None,
        subscription_id: str | None = None,
        status: DeliveryStatus | str | None = None,
        *,
        tenant: TenantFilter = ALL_TENANTS,
        **page: Unpack[PageKwargs],
    ) -> Page[Delivery]:
        """Deliveries matching every given filter (``tenant`` as in `subscriptions`),
        oldest first, a `Page` of at most ``limit`` (default 100); pass its
        ``next_cursor`` as ``cursor=`` for the next page."""
        return self._core.deliveries(message_id, subscription_id, status, tenant, page)

    def get_message(self, message_id: str) -> Message:
        """One message by id (`NotFound` otherwise)."""
        return self._core.store.get_message(message_id)

    @spelled_out(PageKwargs, _PAGE_DEFAULTS)
    def messages(
        self,
        *,
        event_type: str | None = None,
        tenant: TenantFilter = ALL_TENANTS,
        **page: Unpack[PageKwargs],
    ) -> Page[Message]:
        """The newest messages first (of one event type, of one tenant as in
        `subscriptions`), a `Page` of at most ``limit`` (default 100); pass its
        ``next_cursor`` as ``cursor=`` for the next page."""
        return self._core.messages(event_type, tenant, page)

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

    def replay(
        self,
        subscription_id: str,
        *,
        since: datetime,
        until: datetime | None = None,
        statuses: Iterable[DeliveryStatus | str] | None = None,
        on_progress: Callable[[ReplayProgress], object] | None = None,
    ) -> int:
        """Send a subscription again every message of its tenant published in ``[since,
        until)`` that its event types and filter match, as manual attempts; return how
        many deliveries were queued.

        By default that includes succeeded deliveries and, with `MISSING`, messages the
        subscription never got a delivery of (published while it was disabled, even
        auto-disabled, or before it existed; messages are kept until purged whether or
        not anyone received them). ``statuses`` narrows it: ``["failed", "exhausted"]``,
        ``[MISSING]``, ... Deliveries still pending or in flight are left as they are.
        Works in batches of `REPLAY_BATCH`; ``on_progress`` gets a `ReplayProgress`
        after each. A disabled subscription's replayed deliveries wait until it is
        enabled."""
        return self._core.replay(subscription_id, since, until, statuses, on_progress)

    def resend(self, message_id: str, subscription_id: str) -> Delivery:
        """Send one message to one subscription of its tenant again, now, as a manual
        attempt: the existing delivery is re-queued, or one is created if the
        subscription never had it. Returns the delivery."""
        return self._core.resend(message_id, subscription_id)

    def send_example(self, subscription_id: str, event_type: str, payload: Any = None) -> Attempt:
        """Send a test event to one endpoint now and return its attempt: the catalog's
        first example of ``event_type``, or ``payload``, signed and sent like any
        event (validated against the schema, if any). It is kept as a test message
        (``Message.test``) with one final delivery and an attempt whose trigger is
        ``test``; it is never retried, never replayed and never sent elsewhere."""
        claim = self._core.example_claim(subscription_id, event_type, payload)
        return self._loop().call(self._core.send_example(claim))

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

    def stats(self, *, tenant: TenantFilter = ALL_TENANTS) -> Stats:
        """Pending and in-flight deliveries, the oldest pending one's creation time
        (``.oldest_pending_age(now)``), and subscriptions by state (`Stats`), of one
        tenant (``tenant=``, as in `subscriptions`) or of all."""
        return self._core.stats(tenant)

    # -- tenants -------------------------------------------------------------------
    def set_tenant(self, tenant: str, **settings: Any) -> Tenant:
        """Create a tenant, or change its settings, and return it (`Tenant`).

        ``rate_limit`` (requests per second), ``max_in_flight`` (attempts at once) and
        ``max_subscriptions`` hold across all of the tenant's endpoints and every worker
        sharing the store; None lifts a limit. ``metadata`` is your own labels (at most
        50 strings). Settings not given keep their value. A tenant also comes to exist
        with its first subscription, without limits."""
        return self._core.set_tenant(tenant, _tenant_settings(settings))

    def get_tenant(self, tenant: str) -> Tenant:
        """One tenant, with its limits and counts (`NotFound` otherwise)."""
        return self._core.get_tenant(tenant)

    @spelled_out(PageKwargs, _PAGE_DEFAULTS)
    def tenants(self, **page: Unpack[PageKwargs]) -> Page[Tenant]:
        """Tenants in the order they came to exist, with their counts, a `Page` of at
        most ``limit`` (default 100); pass its ``next_cursor`` as ``cursor=``."""
        return self._core.tenants(page)

    def delete_tenant(
        self,
        tenant: str,
        *,
        on_progress: Callable[[int], object] | None = None,
        wait: float | None = None,
    ) -> int:
        """Remove a tenant with its subscriptions, messages, deliveries and attempts
        (customer off-boarding, erasure requests); return how many messages went.

        First its subscriptions go, in one transaction, so nothing more is published or
        claimed for it; then its rows are deleted in batches of `TENANT_DELETE_BATCH`
        (``on_progress`` gets the running total). Attempts that workers had already
        claimed are waited for (at most ``wait`` seconds, default the lease plus 10),
        so once this returns nothing of the tenant is sent. `StopTimeout` if some are
        still under a live lease by then (call it again)."""
        return self._core.delete_tenant(tenant, on_progress, self._delete_wait(wait))

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

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncDispatcher(_Face["asyncio.Task[int]"]):
    """The same surface as `Dispatcher`, awaitable, running on the caller's event loop.

    Use ``async with AsyncDispatcher(...) as dispatcher:``; `start` runs the worker as a
    task of the current loop. Store calls that block (SQLite) run in a thread.
    """

    @spelled_out(EndpointKwargs, EndpointOptions)
    async def subscribe(
        self,
        url: str,
        options: EndpointOptions | None = None,
        *,
        tenant: str | None = None,
        key: str | None = None,
        resolve_host: bool = True,
        **overrides: Unpack[EndpointKwargs],
    ) -> Subscription:
        """See `Dispatcher.subscribe`."""
        core = self._core
        subscription, secret_given = await core.call(
            core.new_endpoint, url, options, overrides, tenant, key
        )
        await core.check_host_async(subscription.url, resolve_host)
        return await core.call(core.add_endpoint, subscription, secret_given)

    async def unsubscribe(self, subscription_id: str) -> None:
        """See `Dispatcher.unsubscribe`."""
        await self._core.call(self._core.unsubscribe, subscription_id)

    async def enable(self, subscription_id: str) -> Subscription:
        """See `Dispatcher.enable`."""
        return await self._core.call(self._core.enable, subscription_id)

    async def disable(
        self, subscription_id: str, reason: str = "disabled by operator"
    ) -> Subscription:
        """See `Dispatcher.disable`."""
        return await self._core.call(self._core.disable, subscription_id, reason)

    @spelled_out(EndpointKwargs, {})
    async def update(
        self,
        subscription_id: str,
        *,
        url: str | None = None,
        resolve_host: bool = True,
        **changes: Unpack[EndpointKwargs],
    ) -> Subscription:
        """See `Dispatcher.update`."""
        core = self._core
        fields = await core.call(core.endpoint_changes, subscription_id, url, changes)
        await core.check_host_async(fields.get("url"), resolve_host)
        return await core.call(core.update, subscription_id, **fields)

    async def rotate_secret(
        self,
        subscription_id: str,
        *,
        grace: timedelta = timedelta(hours=24),
        secret: str | None = None,
    ) -> str:
        """See `Dispatcher.rotate_secret`."""
        return await self._core.call(self._core.rotate_secret, subscription_id, grace, secret)

    @spelled_out(PageKwargs, _PAGE_DEFAULTS)
    async def subscriptions(
        self, *, tenant: TenantFilter = ALL_TENANTS, **page: Unpack[PageKwargs]
    ) -> Page[Subscription]:
        """See `Dispatcher.subscriptions`."""
        return await self._core.call(self._core.subscriptions, tenant, page)

    async def get_subscription(self, subscription_id: str) -> Subscription:
        """See `Dispatcher.get_subscription`."""
        return await self._core.call(self._core.store.get_subscription, subscription_id)

    async def define_event_type(
        self,
        name: str,
        *,
        description: str = "",
        schema: Mapping[str, Any] | None = None,
        examples: Sequence[Any] = (),
        deprecated: bool = False,
    ) -> EventType:
        """See `Dispatcher.define_event_type`."""
        return await self._core.call(
            self._core.define_event_type, name, description, schema, examples, deprecated
        )

    async def event_types(self) -> list[EventType]:
        """See `Dispatcher.event_types`."""
        return await self._core.call(self._core.store.list_event_types)

    async def remove_event_type(self, name: str) -> None:
        """See `Dispatcher.remove_event_type`."""
        await self._core.call(self._core.store.remove_event_type, name)

    async def export_openapi(
        self, *, title: str = "Webhooks", version: str = "1.0.0"
    ) -> dict[str, Any]:
        """See `Dispatcher.export_openapi`."""
        return await self._core.call(self._core.export, "openapi", title, version)

    async def export_asyncapi(
        self, *, title: str = "Webhooks", version: str = "1.0.0"
    ) -> dict[str, Any]:
        """See `Dispatcher.export_asyncapi`."""
        return await self._core.call(self._core.export, "asyncapi", title, version)

    @spelled_out(PublishKwargs, {})
    async def publish(
        self, event_type: str, payload: Any, **options: Unpack[PublishKwargs]
    ) -> Message:
        """See `Dispatcher.publish`. ``connection=`` takes a ``psycopg.AsyncConnection``
        (awaited on this loop) or a sync ``psycopg.Connection`` (used from a thread)."""
        return await self._core.publish_event_async(event_type, payload, options)

    async def publish_many(
        self, events: Iterable[EventSpec], *, connection: Any = None
    ) -> list[Message]:
        """See `Dispatcher.publish_many` and `publish` for ``connection=``."""
        return await self._core.publish_events_async(events, connection)

    async def run_until_idle(self) -> int:
        """See `Dispatcher.run_until_idle`."""
        self._check_idle()
        return await self._core.worker.run_until_idle()

    def start(self) -> None:
        """Run the worker as a task of the running event loop until `stop`."""
        if self._may_start():
            self._running = asyncio.ensure_future(self._core.worker.run())

    async def stop(self) -> None:
        """Stop the worker task; attempts in flight finish and are recorded."""
        running = self._stop_requested()
        self._running = None
        if running is not None:
            await running

    async def run(self) -> None:
        """Run the worker until `stop` is called or the task is cancelled."""
        self.start()
        assert self._running is not None
        await asyncio.shield(self._running)

    async def attempts(self, message_id: str) -> list[Attempt]:
        """See `Dispatcher.attempts`."""
        return await self._core.call(self._core.store.list_attempts, message_id=message_id)

    @spelled_out(PageKwargs, _PAGE_DEFAULTS)
    async def deliveries(
        self,
        message_id: str | None = None,
        subscription_id: str | None = None,
        status: DeliveryStatus | str | None = None,
        *,
        tenant: TenantFilter = ALL_TENANTS,
        **page: Unpack[PageKwargs],
    ) -> Page[Delivery]:
        """See `Dispatcher.deliveries`."""
        return await self._core.call(
            self._core.deliveries, message_id, subscription_id, status, tenant, page
        )

    async def get_message(self, message_id: str) -> Message:
        """See `Dispatcher.get_message`."""
        return await self._core.call(self._core.store.get_message, message_id)

    @spelled_out(PageKwargs, _PAGE_DEFAULTS)
    async def messages(
        self,
        *,
        event_type: str | None = None,
        tenant: TenantFilter = ALL_TENANTS,
        **page: Unpack[PageKwargs],
    ) -> Page[Message]:
        """See `Dispatcher.messages`."""
        return await self._core.call(self._core.messages, event_type, tenant, page)

    async def retry(self, delivery_id: str) -> Delivery:
        """See `Dispatcher.retry`."""
        return await self._core.call(self._core.retry_delivery, delivery_id)

    async def recover(
        self, subscription_id: str, since: datetime, until: datetime | None = None
    ) -> list[Delivery]:
        """See `Dispatcher.recover`."""
        return await self._core.call(self._core.recover, subscription_id, since, until)

    async def replay(
        self,
        subscription_id: str,
        *,
        since: datetime,
        until: datetime | None = None,
        statuses: Iterable[DeliveryStatus | str] | None = None,
        on_progress: Callable[[ReplayProgress], object] | None = None,
    ) -> int:
        """See `Dispatcher.replay`."""
        return await self._core.call(
            self._core.replay, subscription_id, since, until, statuses, on_progress
        )

    async def resend(self, message_id: str, subscription_id: str) -> Delivery:
        """See `Dispatcher.resend`."""
        return await self._core.call(self._core.resend, message_id, subscription_id)

    async def send_example(
        self, subscription_id: str, event_type: str, payload: Any = None
    ) -> Attempt:
        """See `Dispatcher.send_example`."""
        claim = await self._core.call(
            self._core.example_claim, subscription_id, event_type, payload
        )
        return await self._core.send_example(claim)

    async def purge(
        self,
        older_than: timedelta | datetime | None = None,
        *,
        on_progress: Callable[[int], object] | None = None,
    ) -> int:
        """See `Dispatcher.purge`."""
        return await self._core.call(self._core.purge, older_than, on_progress)

    async def next_due_at(self) -> datetime | None:
        """See `Dispatcher.next_due_at`."""
        return await self._core.call(self._core.next_due_at)

    async def stats(self, *, tenant: TenantFilter = ALL_TENANTS) -> Stats:
        """See `Dispatcher.stats`."""
        return await self._core.call(self._core.stats, tenant)

    async def set_tenant(self, tenant: str, **settings: Any) -> Tenant:
        """See `Dispatcher.set_tenant`."""
        return await self._core.call(self._core.set_tenant, tenant, _tenant_settings(settings))

    async def get_tenant(self, tenant: str) -> Tenant:
        """See `Dispatcher.get_tenant`."""
        return await self._core.call(self._core.get_tenant, tenant)

    @spelled_out(PageKwargs, _PAGE_DEFAULTS)
    async def tenants(self, **page: Unpack[PageKwargs]) -> Page[Tenant]:
        """See `Dispatcher.tenants`."""
        return await self._core.call(self._core.tenants, page)

    async def delete_tenant(
        self,
        tenant: str,
        *,
        on_progress: Callable[[int], object] | None = None,
        wait: float | None = None,
    ) -> int:
        """See `Dispatcher.delete_tenant` (runs in a thread: it waits for claimed
        attempts, which this process's worker may be making on this loop)."""
        return await asyncio.to_thread(
            self._core.delete_tenant, tenant, on_progress, self._delete_wait(wait)
        )

    async def aclose(self) -> None:
        """Stop the worker, close connections and the store. Idempotent."""
        if self._closed:
            return
        await self.stop()
        await self._core.engine.aclose()
        await self._core.call(self._core.close_store)
        self._closed = True

    async def __aenter__(self) -> AsyncDispatcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
