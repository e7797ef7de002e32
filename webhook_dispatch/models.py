"""The nouns of the library as small frozen attrs classes: subscriptions, messages,
deliveries and attempts, their status enums, and the id scheme they share.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import attrs

from .errors import ConfigurationError
from .filters import Filter, compile_filter

if TYPE_CHECKING:
    from .auth import EndpointAuth

__all__ = [
    "ALL_TENANTS",
    "AllTenants",
    "Attempt",
    "AttemptTrigger",
    "Delivery",
    "DeliveryStatus",
    "ErrorKind",
    "EventType",
    "Message",
    "RetiredSecret",
    "RetrySchedule",
    "Subscription",
    "Tenant",
    "TenantFilter",
    "new_id",
    "options_document",
    "options_fields",
]

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id(prefix: str) -> str:
    """Return ``prefix_`` followed by a 26-character, time-sortable random id (ULID layout).

    The first 10 characters encode the millisecond clock, the last 16 carry 80 random
    bits, so ids sort by creation time and never collide in practice.
    """
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    # 130 bits as 13 pairs of characters, ten bits each, the most significant first.
    return f"{prefix}_{''.join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])}"


_PAIRS = [high + low for high in _CROCKFORD for low in _CROCKFORD]
_SHIFTS = range(120, -1, -10)


def _optional_filter(value: Any) -> Filter | None:
    return None if value is None else compile_filter(value)


def _frozen_mapping(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(value or {}))


class AllTenants(enum.Enum):
    """The type of `ALL_TENANTS`."""

    ALL = "all"


ALL_TENANTS = AllTenants.ALL
"""A listing's default ``tenant=``: every tenant's rows and the untenanted ones
(``tenant=None`` means only the rows that belong to no tenant)."""

TenantFilter = str | None | AllTenants
"""What a listing's ``tenant=`` takes: a tenant id, None (no tenant) or `ALL_TENANTS`."""


class DeliveryStatus(str, enum.Enum):
    """Where one message stands with one subscription."""

    PENDING = "pending"
    """Waiting for its next attempt (the first, or a retry)."""
    DELIVERING = "delivering"
    """Claimed by a worker under a lease; an attempt is in flight."""
    SUCCEEDED = "succeeded"
    """The endpoint answered 2xx."""
    FAILED = "failed"
    """Given up without using the whole schedule (3xx, most 4xx, blocked address)."""
    EXHAUSTED = "exhausted"
    """Every attempt the retry policy allowed was made, and none succeeded."""
    CANCELLED = "cancelled"
    """The subscription was removed before the delivery finished."""

    @property
    def is_final(self) -> bool:
        """True for the states no scheduled attempt leaves (only a manual retry does)."""
        return self not in (DeliveryStatus.PENDING, DeliveryStatus.DELIVERING)


class AttemptTrigger(str, enum.Enum):
    """Why an attempt happened."""

    SCHEDULED = "scheduled"
    """The first attempt or a retry on the policy's schedule."""
    MANUAL = "manual"
    """An operator asked for it (`retry()`, `recover()`, `replay()`, `resend()`)."""
    TEST = "test"
    """A test event sent by `send_example()`; it belongs to no real delivery."""


class ErrorKind(str, enum.Enum):
    """What went wrong when an attempt got no HTTP response."""

    TIMEOUT = "timeout"
    CONNECT = "connect"
    TLS = "tls"
    PROTOCOL = "protocol"
    BLOCKED = "blocked"
    """The endpoint resolved to an address the network guard refuses."""
    AUTH = "auth"
    """The endpoint's credentials could not be obtained (the token endpoint failed)."""
    INTERRUPTED = "interrupted"
    """The worker stopped (its grace period ended) before the endpoint answered; the
    delivery is due again at once. Not counted against the endpoint's health."""
    OTHER = "other"


@attrs.frozen
class RetiredSecret:
    """A previous signing secret still used, beside the current one, until ``expires_at``."""

    secret: str = attrs.field(repr=False)
    expires_at: datetime


def _float_tuple(values: Any) -> tuple[float, ...]:
    return tuple(float(value) for value in values)


@attrs.frozen
class RetrySchedule:
    """A retry schedule a subscription keeps with it: ``delays[n]`` seconds after attempt
    ``n`` failed (``delays[0]`` is the first attempt, usually 0), each times a uniform
    factor in ``[1 - jitter, 1 + jitter]``; ``len(delays)`` attempts in all.

    Stored as plain numbers (a tenacity strategy object cannot be persisted); build one
    with ``RetryPolicy.fixed([...])`` or pass the delays to ``subscribe(retry=...)``.
    """

    delays: tuple[float, ...] = attrs.field(converter=_float_tuple)
    jitter: float = 0.0


_KIND_NAMES = {float: "number", int: "whole number"}


def _optional_positive(kind: type, what: str) -> Callable[[Any, Any, Any], None]:
    def check(instance: Any, attribute: Any, value: Any) -> None:
        if value is None:
            return
        # Messages show the type, never the value: a wrong field could hold a secret.
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            raise ConfigurationError(
                f"{what} must be a {_KIND_NAMES[kind]} or None, got {type(value).__name__}"
            )
        if not value > 0:
            raise ConfigurationError(f"{what} must be greater than 0, got {value!r}")

    return check


@attrs.frozen(kw_only=True)
class Subscription:
    """An endpoint that receives the events matching its patterns.

    ``secret`` is the current signing secret (``whsec_...``, or what ``signature``'s
    scheme takes); it never appears in ``repr``, nor does ``auth``. ``ca_bundle``,
    ``client_cert`` and ``client_key`` are paths of PEM files for TLS to this endpoint.
    """

    id: str
    url: str
    event_types: tuple[str, ...] = ("*",)
    secret: str = attrs.field(repr=False)
    previous_secrets: tuple[RetiredSecret, ...] = attrs.field(default=(), repr=False)
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping, repr=False)
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)
    enabled: bool = True
    disabled_reason: str | None = None
    timeout: float = 15.0
    created_at: datetime
    updated_at: datetime
    signature: str = "standard"
    """The signature scheme's name (see `webhook_dispatch.signing.get_signer`)."""
    auth: EndpointAuth | None = attrs.field(default=None, repr=False)
    """Authentication applied to every request, or None."""
    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    rate_limit: float | None = attrs.field(
        default=None, validator=_optional_positive(float, "rate_limit")
    )
    """Most requests per second to this endpoint (token bucket per worker process), or None."""
    max_in_flight: int | None = attrs.field(
        default=None, validator=_optional_positive(int, "max_in_flight")
    )
    """Most attempts in flight at once to this endpoint, or None for the dispatcher's default."""
    ordered: bool = False
    """Deliver strictly in publish order, one at a time (a later message waits until the
    earlier one succeeded or was given up)."""
    retry_schedule: RetrySchedule | None = None
    """This subscription's own retry schedule, or None for the dispatcher's policy."""
    failing_since: datetime | None = None
    """When the current run of failed attempts began; None after a success."""
    consecutive_failures: int = 0
    """Failed attempts since the last success (auto-disable counts these)."""
    tenant: str | None = None
    """The customer this endpoint belongs to, or None for the application's own."""
    key: str | None = None
    """The application's own stable name for this endpoint, unique per tenant
    (``subscribe(key=)`` updates the endpoint that has it instead of adding one)."""
    body_format: str = "standard"
    """How the body is written: ``standard`` (as published), ``raw`` (the payload
    alone), ``cloudevents`` or ``cloudevents-binary`` (`webhook_dispatch.formats`)."""
    event_source: str | None = None
    """The CloudEvents ``source`` attribute, or None for ``/webhook-dispatch``."""
    filter: Filter | None = attrs.field(default=None, converter=_optional_filter)
    """The payload filter a message's body must match (``.document`` is the filter as
    given), or None: every message of a matching event type."""

    def signing_secrets(self, now: datetime) -> list[str]:
        """The secrets that sign a request sent at ``now``: current first, then unexpired old."""
        if not self.previous_secrets:
            return [self.secret]
        return [self.secret] + [
            retired.secret for retired in self.previous_secrets if retired.expires_at > now
        ]


@attrs.frozen(kw_only=True)
class Message:
    """One published event. ``id`` is the ``webhook-id`` header on every attempt.

    ``payload`` holds the exact bytes sent as the request body.
    """

    id: str
    event_type: str
    payload: bytes = attrs.field(repr=False)
    content_type: str = "application/json"
    created_at: datetime
    idempotency_key: str | None = None
    tenant: str | None = None
    """The tenant it was published to (only that tenant's endpoints get it), or None."""
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping, repr=False)
    """Headers of its own (``publish(..., headers=)``), sent on every attempt over the
    subscription's headers of the same name."""
    test: bool = False
    """A test event (`Dispatcher.send_example`): sent to one endpoint, never replayed."""

    def json(self) -> Any:
        """The payload decoded as JSON (the Standard Webhooks envelope by default)."""
        import json

        return json.loads(self.payload)


@attrs.frozen(kw_only=True)
class Delivery:
    """One message on its way to one subscription."""

    id: str
    message_id: str
    subscription_id: str
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempt_count: int = 0
    next_attempt_at: datetime | None
    """When the next attempt is due; ``None`` once the delivery is final."""
    next_trigger: AttemptTrigger = AttemptTrigger.SCHEDULED
    created_at: datetime
    updated_at: datetime
    last_status_code: int | None = None
    last_error: str | None = None


@attrs.frozen(kw_only=True)
class Attempt:
    """One HTTP try of a delivery, as recorded after it ended."""

    id: str
    delivery_id: str
    message_id: str
    subscription_id: str
    number: int
    """1 for the first attempt of the delivery, counting manual ones too."""
    trigger: AttemptTrigger
    started_at: datetime
    duration: float
    """Seconds from sending the request to the end of reading the (capped) response."""
    url: str
    status_code: int | None = None
    response_body: bytes = attrs.field(default=b"", repr=False)
    """At most the first 16 KiB of the response body."""
    response_headers: Mapping[str, str] = attrs.field(
        factory=dict, converter=_frozen_mapping, repr=False
    )
    """Only the headers that explain an outcome: location, retry-after, content-type."""
    error_kind: ErrorKind | None = None
    error: str | None = None
    """A human-readable reason when the attempt did not succeed."""
    webhook_timestamp: int
    """The ``webhook-timestamp`` sent (and signed) on this attempt."""
    request_headers: Mapping[str, str] = attrs.field(
        factory=dict, converter=_frozen_mapping, repr=False
    )
    """The request's headers as sent, in order, with the values of signatures, auth=
    headers and headers named like credentials replaced by ``***``."""

    @property
    def succeeded(self) -> bool:
        """True when the endpoint answered 2xx."""
        return self.status_code is not None and 200 <= self.status_code < 300


def thawed(value: Any) -> Any:
    """A JSON document with its mappings as dicts and its sequences as lists."""
    if isinstance(value, Mapping):
        return {key: thawed(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [thawed(item) for item in value]
    return value


@attrs.frozen(kw_only=True)
class EventType:
    """One entry of the event catalog (`Dispatcher.define_event_type`): what an event
    type means and, optionally, the JSON Schema its payloads must satisfy."""

    name: str
    description: str = ""
    schema: Mapping[str, Any] | None = None
    """JSON Schema (draft 7) of the payload, or None: payloads are not checked."""
    examples: tuple[Any, ...] = attrs.field(default=(), converter=tuple)
    """Example payloads, shown in exports and sent by `Dispatcher.send_example`."""
    deprecated: bool = False
    created_at: datetime
    updated_at: datetime


@attrs.frozen(kw_only=True)
class Tenant:
    """One customer of the application, with the limits that hold across all of its
    endpoints and every worker (`Dispatcher.set_tenant`).

    A tenant exists once it has a subscription or `Dispatcher.set_tenant` named it. The
    counts are read with the tenant (`Dispatcher.get_tenant`, `Dispatcher.tenants`).
    """

    id: str
    rate_limit: float | None = attrs.field(
        default=None, validator=_optional_positive(float, "rate_limit")
    )
    """Most requests per second to all of the tenant's endpoints together, or None."""
    max_in_flight: int | None = attrs.field(
        default=None, validator=_optional_positive(int, "max_in_flight")
    )
    """Most attempts in flight at once to all of its endpoints together, or None."""
    max_subscriptions: int | None = attrs.field(
        default=None, validator=_optional_positive(int, "max_subscriptions")
    )
    """Most subscriptions the tenant may have, or None."""
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)
    """Your own labels (a plan name, an account id)."""
    created_at: datetime
    updated_at: datetime
    subscriptions: int = 0
    """How many subscriptions it has (when read from a store)."""
    pending: int = 0
    """How many of its deliveries wait for an attempt (when read from a store)."""


# Subscription settings that stores keep in one JSON "options" document rather than
# in columns of their own, so adding a setting needs no schema migration. Each entry:
# field name -> (to JSON-safe value, from the stored value). Values equal to the field's
# default are left out of the document.
def _same(value: Any) -> Any:
    return value


def _encode_auth(auth: EndpointAuth) -> dict[str, Any]:
    from .auth import auth_to_document

    return auth_to_document(auth)


def _decode_auth(document: Any) -> EndpointAuth | None:
    from .auth import UnregisteredAuth, auth_from_document

    if not isinstance(document, dict):
        return UnregisteredAuth("", {})
    return auth_from_document(document)


def _encode_schedule(schedule: RetrySchedule) -> dict[str, Any]:
    return {"delays": list(schedule.delays), "jitter": schedule.jitter}


def _decode_schedule(document: Any) -> RetrySchedule | None:
    if not isinstance(document, dict):
        return None
    return RetrySchedule(
        tuple(float(d) for d in document.get("delays", ())), float(document.get("jitter", 0))
    )


_OPTION_CODECS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "signature": (_same, str),
    "auth": (_encode_auth, _decode_auth),
    "ca_bundle": (_same, _same),
    "client_cert": (_same, _same),
    "client_key": (_same, _same),
    "rate_limit": (_same, float),
    "max_in_flight": (_same, int),
    "ordered": (_same, bool),
    "retry_schedule": (_encode_schedule, _decode_schedule),
    "body_format": (_same, str),
    "event_source": (_same, _same),
}


def options_document(subscription: Subscription) -> dict[str, Any]:
    """The subscription's settings that a store keeps in its JSON options document."""
    document: dict[str, Any] = {}
    defaults = attrs.fields_dict(Subscription)
    for name, (encode, _) in _OPTION_CODECS.items():
        value = getattr(subscription, name)
        if value != defaults[name].default:
            document[name] = encode(value)
    return document


def options_fields(document: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for `Subscription` from a stored options document; unknown
    keys (written by a newer version) are ignored."""
    return {
        name: _OPTION_CODECS[name][1](value)
        for name, value in document.items()
        if name in _OPTION_CODECS
    }
