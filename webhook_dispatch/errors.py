"""The exception tree: every error the library raises on purpose descends from one root.

```
WebhookDispatchError
├── ConfigurationError (ValueError)        bad option passed to a constructor or call
│   ├── InvalidURL                         endpoint URL not http(s), malformed, with credentials
│   ├── InvalidHeader                      CR/LF, bad name, reserved name
│   ├── InvalidSecret                      not a usable signing secret
│   ├── InvalidEventType                   not dotted [A-Za-z0-9_] segments / bad pattern
│   ├── InvalidPayload                     not JSON-serializable, or bytes without content type
│   │   └── PayloadTooLarge                over the size cap
│   ├── InvalidAuth                        unusable endpoint authentication settings
│   └── InvalidStoreURL                    unknown scheme or unusable path
├── InvalidSignature (ValueError)          `verify()` refused a request
├── AuthError                              endpoint credentials could not be obtained (token
│                                          endpoint failed): recorded as a retried attempt
├── NotFound (LookupError)                 no subscription / delivery / message with that id
├── StoreError                             the store could not do what was asked
│   ├── StoreUnavailable                   locked, disk full, connection lost: try again later
│   └── SchemaError                        foreign, corrupt or newer-than-known database
└── StopTimeout (TimeoutError)             `Dispatcher.stop(timeout=)` waited in vain
```

Errors carry context where it exists: `.subscription`, `.message`, `.path`.
Messages never contain secrets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import Message, Subscription

__all__ = [
    "AuthError",
    "ConfigurationError",
    "InvalidAuth",
    "InvalidEventType",
    "InvalidHeader",
    "InvalidPayload",
    "InvalidSecret",
    "InvalidSignature",
    "InvalidStoreURL",
    "InvalidURL",
    "NotFound",
    "PayloadTooLarge",
    "SchemaError",
    "StopTimeout",
    "StoreError",
    "StoreUnavailable",
    "WebhookDispatchError",
]


class WebhookDispatchError(Exception):
    """Root of every error this library raises on purpose.

    Optional context is attached as attributes (``None`` when it does not apply).
    """

    subscription: Subscription | None
    message: Message | None

    def __init__(
        self,
        text: str,
        *,
        subscription: Subscription | None = None,
        message: Message | None = None,
        **context: Any,
    ) -> None:
        super().__init__(text)
        self.subscription = subscription
        self.message = message
        for key, value in context.items():
            setattr(self, key, value)


class ConfigurationError(WebhookDispatchError, ValueError):
    """A value passed to the library is unusable; nothing was stored or sent."""


class InvalidURL(ConfigurationError):
    """An endpoint URL is malformed, not http(s), or carries credentials."""


class InvalidHeader(ConfigurationError):
    """A header name or value is malformed (CR/LF, bad token) or reserved."""


class InvalidSecret(ConfigurationError):
    """A signing secret is malformed or too short to be safe."""


class InvalidEventType(ConfigurationError):
    """An event type or event-type pattern does not follow the dotted syntax."""


class InvalidPayload(ConfigurationError):
    """A payload cannot be serialized, or raw bytes came without a content type."""


class PayloadTooLarge(InvalidPayload):
    """A serialized payload is larger than the configured cap."""


class InvalidAuth(ConfigurationError):
    """Endpoint authentication settings are unusable (empty token, bad key, bad URL...)."""


class AuthError(WebhookDispatchError):
    """Credentials for an endpoint could not be obtained or applied during an attempt (the
    OAuth 2 token endpoint failed, an auth type is not registered in this process).

    The engine records the attempt with error kind ``auth`` and retries it on schedule.
    """


class InvalidStoreURL(ConfigurationError):
    """A store URL has an unknown scheme or names an unusable path."""


class InvalidSignature(WebhookDispatchError, ValueError):
    """`verify()` could not confirm a request came from the holder of the secret."""


class NotFound(WebhookDispatchError, LookupError):
    """No subscription, delivery or message exists with the given id."""


class StoreError(WebhookDispatchError):
    """The store failed to carry out an operation."""


class StoreUnavailable(StoreError):
    """The store is temporarily unusable (locked, full, disconnected); retry later."""


class SchemaError(StoreError):
    """The database is not ours, is corrupt, or was written by a newer version."""


class StopTimeout(WebhookDispatchError, TimeoutError):
    """The worker did not stop within ``stop(timeout=...)`` seconds (``.timeout``); its
    attempts in flight go on and are recorded when they end. Call ``stop()`` again to wait."""

    timeout: float | None
