"""The dispatcher's and an endpoint's options as frozen values, validated when built.

`DispatcherOptions` and `EndpointOptions` are the one place each option is declared,
typed, defaulted and checked; the keyword-argument dictionaries mirror them for ``**``.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

import attrs
import httpx

from ._validation import validate_headers, validate_timeout
from .auth import EndpointAuth
from .clock import Clock
from .errors import ConfigurationError, InvalidAuth, InvalidHeader
from .events import Callback, Hooks
from .filters import Filter, compile_filter
from .formats import check_body_format, check_event_source
from .health import AutoDisable
from .models import RetrySchedule
from .netguard import IPNetwork, NetworkPolicy, ResolveFunction, parse_networks
from .registry import normalize_patterns, validate_pattern
from .retry import RetryPolicy, ScheduleWait
from .signing import DEFAULT_SIGNATURE, get_signer

if TYPE_CHECKING:
    from .metrics import PrometheusMetrics

__all__ = [
    "AUTO",
    "DEFAULT_MAX_PAYLOAD_SIZE",
    "DEFAULT_RETENTION",
    "DEFAULT_TIMEOUT",
    "DispatcherKwargs",
    "DispatcherOptions",
    "EndpointKwargs",
    "EndpointOptions",
    "PageKwargs",
    "PublishKwargs",
    "RetrySpec",
    "spelled_out",
    "with_overrides",
]

DEFAULT_MAX_PAYLOAD_SIZE = 1024 * 1024
"""Largest serialized payload `publish` accepts (1 MiB)."""
DEFAULT_RETENTION = timedelta(days=30)
"""How old finished messages get before `purge` removes them by default."""
DEFAULT_TIMEOUT = 15.0
"""Seconds one attempt may take, unless a subscription says otherwise."""

RetrySpec = RetryPolicy | RetrySchedule | Sequence[float]
"""A subscription's own retry schedule: ``RetryPolicy.fixed([...])``, a `RetrySchedule`,
or the delays in seconds (``[0, 10, 60]``: three attempts)."""


class _Auto:
    def __repr__(self) -> str:
        return "AUTO"


AUTO: Any = _Auto()
"""The default of ``default_max_in_flight``: a quarter of ``concurrency`` (at least 1)."""


# -- validators (each raises a ConfigurationError subclass naming the option) -----------
def _flag(instance: object, attribute: attrs.Attribute[bool], value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{attribute.name} must be True or False")


def _whole(maximum: int) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and attribute.default is None:
            return
        _check_positive_int(value, attribute.name, maximum=maximum)

    return check


def _check_positive_int(value: object, name: str, *, maximum: int) -> int:
    """``value`` if it is a whole number from 1 to ``maximum``; `ConfigurationError` else."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ConfigurationError(f"{name} must be a whole number from 1 to {maximum}")
    return value


def _instance(kind: type, text: str) -> Callable[[object, attrs.Attribute[Any], object], None]:
    """None or an instance of ``kind``; ``text`` says what is expected."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None and not isinstance(value, kind):
            raise ConfigurationError(f"{attribute.name} must be {text}")

    return check


def _positive_timedelta(optional: bool) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and optional:
            return
        if not isinstance(value, timedelta) or value <= timedelta(0):
            tail = ", or None" if optional else ""
            raise ConfigurationError(f"{attribute.name} must be a positive timedelta{tail}")

    return check


def _resolve(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not callable(value):
        raise ConfigurationError(
            "resolve must be None or a callable resolve(host, port) returning a list of "
            "IP address strings (or an awaitable of one)"
        )


def _optional_seconds(value: object) -> float | None:
    """``grace``: None, or seconds from 0 to an hour."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"grace must be None or seconds, got {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not 0 <= seconds <= 3600:
        raise ConfigurationError(f"grace must be from 0 to 3600 seconds, got {value!r}")
    return seconds


def _callback(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not callable(value):
        raise ConfigurationError(f"{attribute.name} must be a callable taking an OperationalEvent")


def _default_max_in_flight(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    if value is not AUTO and value is not None:
        _check_positive_int(value, "default_max_in_flight", maximum=10_000)


def _retry_by_event_type(value: Mapping[str, RetryPolicy] | None) -> dict[str, RetryPolicy]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError("retry_by_event_type maps patterns to RetryPolicy")
    overrides: dict[str, RetryPolicy] = {}
    for pattern, policy in value.items():
        if not isinstance(policy, RetryPolicy):
            raise ConfigurationError("retry_by_event_type maps patterns to RetryPolicy")
        overrides[validate_pattern(pattern)] = policy
    return overrides


def _metrics(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    from .metrics import PrometheusMetrics

    if not isinstance(value, PrometheusMetrics):
        raise ConfigurationError("metrics must be a webhook_dispatch.PrometheusMetrics")


def _tracing(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None or isinstance(value, bool) or callable(getattr(value, "get_tracer", None)):
        return
    raise ConfigurationError(
        "tracing must be True, False or an OpenTelemetry TracerProvider (with get_tracer())"
    )


@attrs.frozen(kw_only=True)
class DispatcherOptions:
    """Everything a `Dispatcher` or `AsyncDispatcher` is configured with, checked as a whole
    when built (every bad value raises a `ConfigurationError` before any store is opened).

    ``Dispatcher(store, concurrency=8)`` builds one from its keyword arguments; build it
    yourself to share or keep a configuration: ``Dispatcher(store, options)``, where further
    keyword arguments override fields (``attrs.evolve`` does the same).
    """

    clock: Clock | None = attrs.field(
        default=None,
        validator=_instance(Clock, "a Clock: an object whose now() returns a datetime"),
    )
    """Where time comes from (`SystemClock` when None; tests pass a ``FakeClock``)."""
    retry: RetryPolicy | None = attrs.field(
        default=None, validator=_instance(RetryPolicy, "a webhook_dispatch.RetryPolicy")
    )
    """The retry policy of every delivery without a more specific one (default `RetryPolicy()`)."""
    transport: httpx.AsyncBaseTransport | None = attrs.field(
        default=None,
        validator=_instance(
            httpx.AsyncBaseTransport,
            "an httpx.AsyncBaseTransport (httpx.MockTransport, respx.MockTransport, "
            "webhook_dispatch.testing.MockReceiver, ...)",
        ),
    )
    """Sends the requests (default: `HTTPTransport` with the network guard)."""
    concurrency: int = attrs.field(default=64, validator=_whole(10_000))
    """Attempts in flight at once per worker."""
    max_payload_size: int = attrs.field(
        default=DEFAULT_MAX_PAYLOAD_SIZE, validator=_whole(64 * 1024 * 1024)
    )
    """Largest serialized payload `publish` accepts, in bytes."""
    envelope: bool = attrs.field(default=True, validator=_flag)
    """Wrap JSON payloads in the Standard Webhooks envelope ``{"type", "timestamp", "data"}``."""
    strict_event_types: bool = attrs.field(default=False, validator=_flag)
    """Refuse to publish event types, or subscribe to patterns, that the event catalog
    (`Dispatcher.define_event_type`) does not have."""
    lease: timedelta = attrs.field(
        default=timedelta(seconds=60), validator=_positive_timedelta(False)
    )
    """How long a claimed delivery stays reserved (a crashed worker's are retried after it)."""
    poll_interval: float = attrs.field(default=1.0, converter=validate_timeout)
    """Seconds between an idle worker's looks for work published by other processes."""
    grace: float | None = attrs.field(default=None, converter=_optional_seconds)
    """Seconds a stopping worker lets its attempts in flight run. Those still running
    then are cancelled, recorded as interrupted and due again at once, so another worker
    takes them without waiting for the lease. None: each runs until it ends (within its
    subscription's ``timeout``)."""
    retention: timedelta | None = attrs.field(
        default=DEFAULT_RETENTION, validator=_positive_timedelta(True)
    )
    """Finished messages older than this are purged by the running worker (None: never)."""
    allow_private_networks: bool = attrs.field(default=False, validator=_flag)
    """Turn the network guard off (for tests on 127.0.0.1)."""
    allowed_networks: tuple[IPNetwork, ...] = attrs.field(default=(), converter=parse_networks)
    """CIDR networks the guard lets through (``["10.1.0.0/16"]``)."""
    https_only: bool = attrs.field(default=False, validator=_flag)
    """Refuse plain-http endpoints."""
    refuse_mixed_answers: bool = attrs.field(default=False, validator=_flag)
    """Refuse a host name that resolves to any address the guard refuses, even when it
    also resolves to allowed ones (by default only the refused addresses are dropped and
    the connection goes to an allowed one). Applies at delivery and at subscribe."""
    resolve: ResolveFunction | None = attrs.field(default=None, validator=_resolve)
    """The name lookup the network guard uses instead of the system resolver:
    ``resolve(host, port) -> ["192.0.2.1", ...]``, or an awaitable of it (tests inject
    one). The default transport resolves through it, and so does the host check of
    `Dispatcher.subscribe` and `Dispatcher.update`."""
    default_max_in_flight: int | None = attrs.field(default=AUTO, validator=_default_max_in_flight)
    """Concurrent attempts per subscription without its own ``max_in_flight`` (`AUTO`: a
    quarter of ``concurrency``; None: no cap)."""
    auto_disable: AutoDisable | None = attrs.field(
        default=AutoDisable(),
        validator=_instance(AutoDisable, "a webhook_dispatch.AutoDisable or None"),
    )
    """When endpoints that keep failing are disabled (None: never)."""
    retry_by_event_type: Mapping[str, RetryPolicy] = attrs.field(
        default=None, converter=_retry_by_event_type
    )
    """Event-type patterns mapped to a `RetryPolicy` (first match; a subscription's own
    ``retry`` wins)."""
    on_attempt: Callback | None = attrs.field(default=None, validator=_callback)
    """Called with an `OperationalEvent` after every attempt."""
    on_delivery_succeeded: Callback | None = attrs.field(default=None, validator=_callback)
    """Called when a delivery succeeded."""
    on_delivery_failed: Callback | None = attrs.field(default=None, validator=_callback)
    """Called when a delivery was given up (failed or exhausted)."""
    on_subscription_disabled: Callback | None = attrs.field(default=None, validator=_callback)
    """Called when a subscription was disabled automatically."""
    on_recovered: Callback | None = attrs.field(default=None, validator=_callback)
    """Called when a subscription succeeded after failing."""
    operational_events: bool = attrs.field(default=False, validator=_flag)
    """Also publish ``webhook_dispatch.*`` events to subscriptions that name them."""
    metrics: PrometheusMetrics | None = attrs.field(default=None, validator=_metrics)
    """A `webhook_dispatch.PrometheusMetrics` to report to."""
    tracing: Any = attrs.field(default=False, validator=_tracing)
    """True (the global ``TracerProvider``) or a ``TracerProvider``: an OpenTelemetry span
    per attempt."""

    @property
    def hooks(self) -> Hooks:
        """The ``on_*`` callbacks as one `Hooks`."""
        return Hooks(**{field.name: getattr(self, field.name) for field in attrs.fields(Hooks)})

    @property
    def network_policy(self) -> NetworkPolicy:
        """The network guard these options describe."""
        return NetworkPolicy(
            allow_private_networks=self.allow_private_networks,
            allowed_networks=self.allowed_networks,
            https_only=self.https_only,
            refuse_mixed_answers=self.refuse_mixed_answers,
        )

    @property
    def max_in_flight_per_subscription(self) -> int | None:
        """``default_max_in_flight`` with `AUTO` worked out."""
        if self.default_max_in_flight is AUTO:
            return max(1, self.concurrency // 4)
        return self.default_max_in_flight


class DispatcherKwargs(TypedDict, total=False):
    """The keyword arguments of `Dispatcher` and `AsyncDispatcher`: one per field of
    `DispatcherOptions`, which documents them."""

    clock: Clock | None
    retry: RetryPolicy | None
    transport: httpx.AsyncBaseTransport | None
    concurrency: int
    max_payload_size: int
    envelope: bool
    strict_event_types: bool
    lease: timedelta
    poll_interval: float
    grace: float | None
    retention: timedelta | None
    allow_private_networks: bool
    allowed_networks: Iterable[str]
    https_only: bool
    refuse_mixed_answers: bool
    resolve: ResolveFunction | None
    default_max_in_flight: int | None
    auto_disable: AutoDisable | None
    retry_by_event_type: Mapping[str, RetryPolicy] | None
    on_attempt: Callback | None
    on_delivery_succeeded: Callback | None
    on_delivery_failed: Callback | None
    on_subscription_disabled: Callback | None
    on_recovered: Callback | None
    operational_events: bool
    metrics: PrometheusMetrics | None
    tracing: Any


# -- an endpoint's options --------------------------------------------------------------
def _pem_path(option: str, value: object) -> str | None:
    """An absolute path (workers may run elsewhere), or None."""
    if value is None:
        return None
    path = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(path, str) or not path:
        raise ConfigurationError(f"{option} must be the path of a PEM file, as a str")
    return os.path.abspath(path)


# Named functions, not a factory: mypy's attrs plugin reads a converter's argument type.
def _ca_bundle(value: str | os.PathLike[str] | None) -> str | None:
    return _pem_path("ca_bundle", value)


def _client_cert(value: str | os.PathLike[str] | None) -> str | None:
    return _pem_path("client_cert", value)


def _client_key(value: str | os.PathLike[str] | None) -> str | None:
    return _pem_path("client_key", value)


def _metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ConfigurationError("metadata must be a mapping of str to str")
    if len(metadata) > 50 or any(len(k) > 255 or len(v) > 4096 for k, v in metadata.items()):
        raise ConfigurationError("metadata takes at most 50 keys of 255 characters, values of 4096")
    return dict(metadata)


def _rate_limit(value: float | None) -> float | None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 100_000
    ):
        raise ConfigurationError("rate_limit must be requests per second, above 0, or None")
    return None if value is None else float(value)


def _retry_schedule(retry: RetrySpec | None) -> RetrySchedule | None:
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
    return schedule


def _filter(value: object) -> Filter | None:
    return None if value is None else compile_filter(value)


def _auth(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, EndpointAuth):
        raise InvalidAuth(
            "auth must be a webhook_dispatch auth object (ApiKeyHeader, BearerToken, "
            "BasicAuth, OAuth2ClientCredentials, JWTAuth) or a registered EndpointAuth"
        )


@attrs.frozen(kw_only=True)
class EndpointOptions:
    """How one endpoint is delivered to: what `Dispatcher.subscribe` takes besides the URL,
    checked when built (bad values raise a `ConfigurationError` subclass).

    ``subscribe(url, event_types=["order.*"])`` builds one from its keyword arguments;
    build it yourself to give several endpoints the same settings:
    ``subscribe(url, options)``, where further keyword arguments override fields.
    """

    event_types: tuple[str, ...] = attrs.field(default=None, converter=normalize_patterns)
    """Exact names, ``*`` for one segment (``order.*``), a final ``**`` for any depth;
    None or ``["*"]``: every event."""
    secret: str | None = attrs.field(default=None, repr=False)
    """The signing secret; None generates one per subscription (read ``.secret``)."""
    headers: Mapping[str, str] = attrs.field(default=None, converter=validate_headers)
    """Sent with every request (names the signature scheme or auth set are refused)."""
    metadata: Mapping[str, str] = attrs.field(default=None, converter=_metadata)
    """Your own labels, stored with the subscription (at most 50 keys)."""
    timeout: float = attrs.field(default=DEFAULT_TIMEOUT, converter=validate_timeout)
    """Seconds one attempt may take."""
    signature: str = attrs.field(default=DEFAULT_SIGNATURE)
    """``"standard"`` (Standard Webhooks v1, HMAC), ``"standard-ed25519"`` (the secret is a
    ``whsk_`` key), ``"github"``, ``"stripe"``, or a name given to `register_signer`."""
    auth: EndpointAuth | None = attrs.field(default=None, validator=_auth)
    """Authenticates each request (`BearerToken`, `OAuth2ClientCredentials`, ...)."""
    ca_bundle: str | None = attrs.field(default=None, converter=_ca_bundle)
    """A PEM file of CA certificates to trust for this endpoint."""
    client_cert: str | None = attrs.field(default=None, converter=_client_cert)
    """A PEM client certificate (mutual TLS)."""
    client_key: str | None = attrs.field(default=None, converter=_client_key)
    """The PEM key of ``client_cert``."""
    rate_limit: float | None = attrs.field(default=None, converter=_rate_limit)
    """Requests per second at most (a token bucket in each worker process)."""
    max_in_flight: int | None = attrs.field(default=None, validator=_whole(10_000))
    """Concurrent attempts at most, across every worker sharing the store (default: the
    dispatcher's ``default_max_in_flight``)."""
    ordered: bool = attrs.field(default=False, validator=_flag)
    """Deliver strictly in publish order, one at a time."""
    retry: RetrySchedule | None = attrs.field(default=None, converter=_retry_schedule)
    """This endpoint's own retry schedule (``RetryPolicy.fixed([0, 10, 60])`` or the
    delays in seconds), stored with it."""
    body_format: str = attrs.field(default="standard", converter=check_body_format)
    """``standard`` (the body as published: the Standard Webhooks envelope by default),
    ``raw`` (the payload alone), ``cloudevents`` (CloudEvents 1.0 structured mode,
    ``application/cloudevents+json``) or ``cloudevents-binary`` (the payload as the body,
    ``ce-*`` headers). Signatures cover the bytes sent, in every format."""
    event_source: str | None = attrs.field(default=None, converter=check_event_source)
    """The CloudEvents ``source`` (a URI reference; default ``/webhook-dispatch``)."""
    filter: Filter | None = attrs.field(default=None, converter=_filter)
    """A payload filter (Convoy's JSON syntax, see docs/filters.md): only messages whose
    body matches it are delivered here, for example
    ``{"data": {"amount": {"$gte": 100}}}``."""

    def __attrs_post_init__(self) -> None:
        signer = get_signer(self.signature)
        if self.secret is not None:
            signer.check_secret(self.secret)
        taken = {name.lower() for name in signer.header_names}
        if self.auth is not None:
            taken.update(self.auth.header_names())
        for name in self.headers:
            if name.lower() in taken:
                raise InvalidHeader(
                    f"header {name!r} is set by the signature scheme or auth= of this subscription"
                )


class EndpointKwargs(TypedDict, total=False):
    """The keyword arguments of `Dispatcher.subscribe`: one per field of
    `EndpointOptions`, which documents them."""

    event_types: Iterable[str] | None
    secret: str | None
    headers: Mapping[str, str] | None
    metadata: Mapping[str, str] | None
    timeout: float
    signature: str
    auth: EndpointAuth | None
    ca_bundle: str | None
    client_cert: str | None
    client_key: str | None
    rate_limit: float | None
    max_in_flight: int | None
    ordered: bool
    retry: RetrySpec | None
    body_format: str
    event_source: str | None
    filter: Mapping[str, Any] | None


class PublishKwargs(TypedDict, total=False):
    """The keyword arguments of `Dispatcher.publish` (see there)."""

    idempotency_key: str | None
    content_type: str | None
    connection: Any
    tenant: str | None
    headers: Mapping[str, str] | None


class PageKwargs(TypedDict, total=False):
    """A listing's page: ``limit`` (1 to 1,000, default 100) and the ``cursor`` of the
    previous page's ``next_cursor``."""

    limit: int
    cursor: str | None


F = TypeVar("F", bound=Callable[..., Any])
OptionsT = TypeVar("OptionsT", DispatcherOptions, EndpointOptions)


def with_overrides(
    kind: type[OptionsT], options: OptionsT | None, overrides: Mapping[str, Any]
) -> OptionsT:
    """``options`` (or the defaults of ``kind``) with ``overrides`` applied, validated."""
    if options is None:
        return kind(**overrides)
    if not isinstance(options, kind):
        raise ConfigurationError(f"options must be a webhook_dispatch.{kind.__name__}")
    return attrs.evolve(options, **overrides) if overrides else options


def spelled_out(keywords: type, defaults: type | Mapping[str, object]) -> Callable[[F], F]:
    """Give a function taking ``**kwargs: Unpack[keywords]`` the signature it stands for,
    so `help`, `inspect.signature` and editors list each keyword with its default.

    ``defaults`` is an attrs class (its fields' defaults) or a mapping; absent means None."""
    if isinstance(defaults, type):
        defaults = {field.name: field.default for field in attrs.fields(defaults)}

    def apply(function: F) -> F:
        signature = inspect.signature(function)
        parameters = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        for name, annotation in keywords.__annotations__.items():
            parameters.append(
                inspect.Parameter(
                    name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=defaults.get(name),
                    annotation=getattr(annotation, "__forward_arg__", annotation),
                )
            )
        function.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        return function

    return apply
