"""The exception tree: every error the library raises on purpose descends from one root.

```
WebhookDispatchError
├── ConfigurationError (ValueError)        bad option passed to a constructor or call
│   ├── InvalidURL                         endpoint URL not http(s), malformed, with credentials
│   │   └── BlockedEndpoint                its host is, or resolves only to, addresses the
│   │                                      network guard refuses        .host .refused
│   ├── InvalidHeader                      CR/LF, bad name, reserved name
│   ├── InvalidSecret                      not a usable signing secret
│   ├── InvalidEventType                   not dotted [A-Za-z0-9_] segments / bad pattern
│   ├── InvalidFilter                      bad payload filter                 .path
│   ├── InvalidTenant                      tenant id not 1-255 of [A-Za-z0-9_.:-], bad limits
│   ├── TenantLimitExceeded                the tenant's max_subscriptions reached .tenant .limit
│   ├── InvalidPayload                     not JSON-serializable, bytes without content type,
│   │   │                                  or fails its event type's schema   .path
│   │   └── PayloadTooLarge                over the size cap                  .size .limit
│   ├── InvalidSchema                      an event type's JSON Schema or description unusable
│   ├── InvalidAuth                        unusable endpoint authentication settings
│   └── InvalidStoreURL                    unknown scheme or unusable path    .path
├── InvalidSignature (ValueError)          `verify()` refused a request
├── AuthError                              endpoint credentials could not be obtained (token
│                                          endpoint failed): recorded as a retried attempt
├── BlockedAddress (ConnectionError)       the network guard refused to connect: recorded as
│                                          a `blocked` attempt, never retried .host .refused
├── NotFound (LookupError)                 no subscription / delivery / message with that id
├── StoreError                             the store could not do what was asked  .path .cause
│   ├── StoreUnavailable                   locked, disk full, connection lost: try again later
│   └── SchemaError                        foreign, corrupt or newer-than-known database
│                                          .schema .found_version .supported_version
├── DrainIncomplete (RuntimeError)         `testing.drain()` gave up with work still pending
├── StopTimeout (TimeoutError)             `Dispatcher.stop(timeout=)` waited in vain  .timeout
└── UnsentDeliveriesWarning (UserWarning)  a warning, not raised: a `Dispatcher()` given no
                                           store closed with deliveries not yet sent
```

Every error has ``.subscription`` and ``.message`` (None unless the library knows which
subscription or message it concerns); the others above belong to their class and are
None when unknown. Messages never contain secrets.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

# For annotations only: this module imports nothing from the package at run time, so
# every other module can import it first.
if TYPE_CHECKING:
    from .models import Message, Subscription

__all__ = [
    "AuthError",
    "BlockedAddress",
    "BlockedEndpoint",
    "ConfigurationError",
    "DrainIncomplete",
    "InvalidAuth",
    "InvalidEventType",
    "InvalidFilter",
    "InvalidHeader",
    "InvalidPayload",
    "InvalidSchema",
    "InvalidSecret",
    "InvalidSignature",
    "InvalidStoreURL",
    "InvalidTenant",
    "InvalidURL",
    "NotFound",
    "PayloadTooLarge",
    "SchemaError",
    "StopTimeout",
    "StoreError",
    "StoreUnavailable",
    "TenantLimitExceeded",
    "UnsentDeliveriesWarning",
    "WebhookDispatchError",
]


class WebhookDispatchError(Exception):
    """Root of every error this library raises on purpose.

    ``text`` is the message (``str(error)``); ``subscription`` and ``message`` name what
    the error concerns when the library knows it. Subclasses add their own keyword-only
    context; every argument but ``text`` has a default, so errors survive pickling.
    """

    subscription: Subscription | None
    """The subscription the error concerns, or None."""
    message: Message | None
    """The message the error concerns, or None."""

    def __init__(
        self,
        text: str,
        *,
        subscription: Subscription | None = None,
        message: Message | None = None,
    ) -> None:
        super().__init__(text)
        self.subscription = subscription
        self.message = message


class ConfigurationError(WebhookDispatchError, ValueError):
    """A value passed to the library is unusable; nothing was stored or sent."""


class InvalidURL(ConfigurationError):
    """An endpoint URL is malformed, not http(s), or carries credentials."""


class BlockedEndpoint(InvalidURL):
    """`subscribe` or `update` refused an endpoint URL because the network guard would
    refuse every delivery to it: its host is an IP literal the guard refuses, or a name
    that resolves only to such addresses. Nothing was stored.

    The message names the guard's reason and the options that would allow the address
    (``allow_private_networks=True``, ``allowed_networks=``), or, for a name that
    resolves differently where the worker runs, ``resolve_host=False``.
    """

    host: str | None
    """The host of the refused URL (an IP literal or a name)."""
    refused: tuple[tuple[str, str], ...]
    """``(address, why)`` for each address the host is or resolved to, as the guard
    judged it (``("127.0.0.1", "Loopback")``)."""

    def __init__(
        self,
        text: str,
        *,
        host: str | None = None,
        refused: Sequence[tuple[str, str]] = (),
        subscription: Subscription | None = None,
        message: Message | None = None,
    ) -> None:
        super().__init__(text, subscription=subscription, message=message)
        self.host = host
        self.refused = tuple(refused)


class InvalidHeader(ConfigurationError):
    """A header name or value is malformed (CR/LF, bad token) or reserved."""


class InvalidSecret(ConfigurationError):
    """A signing secret is malformed or too short to be safe."""


class InvalidEventType(ConfigurationError):
    """An event type or event-type pattern does not follow the dotted syntax."""


class InvalidFilter(ConfigurationError):
    """A payload filter is malformed: an unknown operator, a wrong operand, a regular
    expression that is too long or could backtrack for ever."""

    path: str | None
    """Where in the filter the problem is (``data.amount.$gte``; "" for the whole)."""

    def __init__(
        self,
        text: str,
        *,
        path: str | None = None,
        subscription: Subscription | None = None,
        message: Message | None = None,
    ) -> None:
        if path:
            text = f"{text} (at {path})"
        super().__init__(text, subscription=subscription, message=message)
        self.path = path


class InvalidTenant(ConfigurationError):
    """A tenant id is not 1 to 255 characters of ``[A-Za-z0-9_.:-]``, or a tenant's
    limits are unusable."""


class TenantLimitExceeded(ConfigurationError):
    """A tenant already has as many subscriptions as its ``max_subscriptions`` allows."""

    tenant: str | None
    """The tenant whose limit was reached."""
    limit: int | None
    """Its ``max_subscriptions``."""

    def __init__(
        self,
        text: str,
        *,
        tenant: str | None = None,
        limit: int | None = None,
        subscription: Subscription | None = None,
        message: Message | None = None,
    ) -> None:
        super().__init__(text, subscription=subscription, message=message)
        self.tenant = tenant
        self.limit = limit


class InvalidPayload(ConfigurationError):
    """A payload cannot be serialized, raw bytes came without a content type, or the
    payload does not satisfy its event type's schema in the catalog."""

    path: str | None
    """Where in the body the schema check failed (``data.amount``), or None."""

    def __init__(
        self,
        text: str,
        *,
        path: str | None = None,
        subscription: Subscription | None = None,
        message: Message | None = None,
    ) -> None:
        super().__init__(text, subscription=subscription, message=message)
        self.path = path


class InvalidSchema(ConfigurationError):
    """An event type's JSON Schema does not compile, or its catalog entry is unusable."""


class PayloadTooLarge(InvalidPayload):
    """A serialized payload is larger than the configured cap."""

    size: int | None
    """Bytes of the serialized payload."""
    limit: int | None
    """The cap it exceeded (``max_payload_size``), in bytes."""

    def __init__(
        self,
        text: str,
        *,
        size: int | None = None,
        limit: int | None = None,
        subscription: Subscription | None = None,
        message: Message | None = None,
    ) -> None:
        super().__init__(text, subscription=subscription, message=message)
        self.size = size
        self.limit = limit


class InvalidAuth(ConfigurationError):
    """Endpoint authentication settings are unusable (empty token, bad key, bad URL...)."""


class AuthError(WebhookDispatchError):
    """Credentials for an endpoint could not be obtained or applied during an attempt (the
    OAuth 2 token endpoint failed, an auth type is not registered in this process).

    The engine records the attempt with error kind ``auth`` and retries it on schedule.
    """


class BlockedAddress(WebhookDispatchError, ConnectionError):
    """A connection the network guard refused: the host resolved only to refused addresses
    (or to any, under ``refuse_mixed_answers``; or its URL broke ``https_only``). Recorded
    as a ``blocked`` attempt, never retried.

    Raised by `webhook_dispatch.transport.HTTPTransport` (also when a user's own
    ``httpx.AsyncClient`` sends through it) and `webhook_dispatch.netguard.GuardedResolver`.
    """

    host: str
    """The host name or IP literal that was refused."""
    refused: tuple[tuple[str, str], ...]
    """``(address, why)`` for each refused address (empty when the URL itself was refused)."""
    reason: str
    """Why the URL itself was refused (``https_only``), or why a name with allowed
    addresses too was refused as a whole (``refuse_mixed_answers``), or ``""``."""

    def __init__(
        self,
        host: str,
        refused: Sequence[tuple[str, str]] = (),
        *,
        reason: str = "",
        subscription: Subscription | None = None,
        message: Message | None = None,
    ) -> None:
        self.host = host
        self.refused = tuple(refused)
        self.reason = reason
        if reason:
            text = f"blocked: {host}: {reason}"
        else:
            shown = ", ".join(f"{address} ({why})" for address, why in self.refused[:4])
            more = f" and {len(self.refused) - 4} more" if len(self.refused) > 4 else ""
            text = (
                f"blocked address: {host} resolves to {shown}{more}, refused by the network guard"
            )
        super().__init__(text, subscription=subscription, message=message)

    def __reduce__(self) -> tuple[object, ...]:
        # The default would call BlockedAddress(text): rebuild from the fields instead.
        rebuild = functools.partial(type(self), reason=self.reason)
        return (rebuild, (self.host, self.refused), dict(self.__dict__))


class InvalidStoreURL(ConfigurationError):
    """A store URL has an unknown scheme or names an unusable path."""

    path: str | None
    """The file path the URL named (SQLite), or None."""

    def __init__(
        self,
        text: str,
        *,
        path: str | None = None,
        subscription: Subscription | None = None,
        message: Message | None = None,
    ) -> None:
        super().__init__(text, subscription=subscription, message=message)
        self.path = path


class InvalidSignature(WebhookDispatchError, ValueError):
    """`verify()` could not confirm a request came from the holder of the secret."""


class NotFound(WebhookDispatchError, LookupError):
    """No subscription, delivery or message exists with the given id."""


class StoreError(WebhookDispatchError):
    """The store failed to carry out an operation."""

    path: str | None
    """The database file (SQLite), or None."""
    cause: str | None
    """A short machine-readable cause when one is known (``"privilege"``: the database
    role lacks a privilege), or None."""

    def __init__(
        self,
        text: str,
        *,
        path: str | None = None,
        cause: str | None = None,
        subscription: Subscription | None = None,
        message: Message | None = None,
    ) -> None:
        super().__init__(text, subscription=subscription, message=message)
        self.path = path
        self.cause = cause


class StoreUnavailable(StoreError):
    """The store is temporarily unusable (locked, full, disconnected); retry later."""


class SchemaError(StoreError):
    """The database is not ours, is corrupt, or was written by a newer version."""

    schema: str | None
    """The PostgreSQL schema the store uses, or None."""
    found_version: int | None
    """The schema version found in the database, when that is the problem."""
    supported_version: int | None
    """The newest schema version this release knows, when ``found_version`` is set."""

    def __init__(
        self,
        text: str,
        *,
        path: str | None = None,
        cause: str | None = None,
        schema: str | None = None,
        found_version: int | None = None,
        supported_version: int | None = None,
        subscription: Subscription | None = None,
        message: Message | None = None,
    ) -> None:
        super().__init__(text, path=path, cause=cause, subscription=subscription, message=message)
        self.schema = schema
        self.found_version = found_version
        self.supported_version = supported_version


class DrainIncomplete(WebhookDispatchError, RuntimeError):
    """`webhook_dispatch.testing.drain` made ``max_steps`` rounds and deliveries were still
    pending (an endpoint that never stops asking for retries, or a schedule too long)."""

    max_steps: int | None
    """The rounds ``drain`` was allowed."""
    attempts: int | None
    """Attempts it made before giving up."""

    def __init__(
        self,
        text: str,
        *,
        max_steps: int | None = None,
        attempts: int | None = None,
        subscription: Subscription | None = None,
        message: Message | None = None,
    ) -> None:
        super().__init__(text, subscription=subscription, message=message)
        self.max_steps = max_steps
        self.attempts = attempts


class StopTimeout(WebhookDispatchError, TimeoutError):
    """The worker did not stop within ``stop(timeout=...)`` seconds (``.timeout``); its
    attempts in flight go on and are recorded when they end. Call ``stop()`` again to wait."""

    timeout: float | None
    """The seconds `stop` waited."""

    def __init__(
        self,
        text: str,
        *,
        timeout: float | None = None,
        subscription: Subscription | None = None,
        message: Message | None = None,
    ) -> None:
        super().__init__(text, subscription=subscription, message=message)
        self.timeout = timeout


class UnsentDeliveriesWarning(WebhookDispatchError, UserWarning):
    """Issued (with `warnings.warn`, never raised) when a `Dispatcher` that was given no
    store, so keeps everything in memory, closes with deliveries not yet sent: they are
    lost."""
