"""Operational events: what the worker tells the application about deliveries and
subscriptions (callbacks), and optionally publishes as webhooks to an operator's own
subscription. A failing callback is logged; it never stops delivery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import attrs

from .models import Attempt, Delivery

__all__ = [
    "ATTEMPT_MADE",
    "DELIVERY_EXHAUSTED",
    "DELIVERY_FAILED",
    "DELIVERY_SUCCEEDED",
    "OPERATIONAL_PREFIX",
    "PUBLISHED_EVENTS",
    "SUBSCRIPTION_DISABLED",
    "SUBSCRIPTION_RECOVERED",
    "Callback",
    "Hooks",
    "OperationalEvent",
]

logger = logging.getLogger("webhook_dispatch")

OPERATIONAL_PREFIX = "webhook_dispatch."
"""Event types of operational events start with this; deliveries of such events never
cause operational events themselves, so an operator subscription cannot loop."""
ATTEMPT_MADE = "webhook_dispatch.attempt.made"
DELIVERY_SUCCEEDED = "webhook_dispatch.delivery.succeeded"
DELIVERY_FAILED = "webhook_dispatch.delivery.failed"
DELIVERY_EXHAUSTED = "webhook_dispatch.delivery.exhausted"
SUBSCRIPTION_DISABLED = "webhook_dispatch.subscription.disabled"
SUBSCRIPTION_RECOVERED = "webhook_dispatch.subscription.recovered"
PUBLISHED_EVENTS = frozenset(
    {DELIVERY_FAILED, DELIVERY_EXHAUSTED, SUBSCRIPTION_DISABLED, SUBSCRIPTION_RECOVERED}
)
"""The event types ``operational_events=True`` publishes (attempts and successes are
too frequent to send as webhooks; use the callbacks or metrics for those)."""


@attrs.frozen(kw_only=True)
class OperationalEvent:
    """Something an operator may want to act on.

    ``type`` is one of the ``webhook_dispatch.*`` constants of this module. ``delivery``
    and ``attempt`` are set for attempt and delivery events, ``reason`` for disabling.
    """

    type: str
    subscription_id: str
    at: datetime
    delivery: Delivery | None = None
    attempt: Attempt | None = None
    reason: str | None = None
    event_type: str | None = None
    """The event type of the message concerned, when there is one."""
    tenant: str | None = None
    """The tenant of the subscription concerned (its published webhook goes only to that
    tenant's subscriptions that ask for it, and to untenanted ones), or None."""

    def payload(self) -> dict[str, Any]:
        """The JSON-ready ``data`` of the webhook published for this event."""
        data: dict[str, Any] = {"subscription_id": self.subscription_id}
        if self.delivery is not None:
            data.update(
                delivery_id=self.delivery.id,
                message_id=self.delivery.message_id,
                status=self.delivery.status.value,
                attempts=self.delivery.attempt_count,
                last_status_code=self.delivery.last_status_code,
                last_error=self.delivery.last_error,
            )
        if self.event_type is not None:
            data["event_type"] = self.event_type
        if self.reason is not None:
            data["reason"] = self.reason
        return data


Callback = Callable[[OperationalEvent], object]


def _check(name: str, value: object) -> Callback | None:
    if value is not None and not callable(value):
        from .errors import ConfigurationError

        raise ConfigurationError(f"{name} must be a callable taking an OperationalEvent")
    return value


@attrs.frozen
class Hooks:
    """The application's callbacks, each called with an `OperationalEvent` on the
    worker's event loop after the store recorded what it reports (keep them quick)."""

    on_attempt: Callback | None = None
    on_delivery_succeeded: Callback | None = None
    on_delivery_failed: Callback | None = None
    """A delivery was given up: failed or exhausted."""
    on_subscription_disabled: Callback | None = None
    on_recovered: Callback | None = None
    """A subscription succeeded after failing."""

    def __attrs_post_init__(self) -> None:
        for field in attrs.fields(Hooks):
            _check(field.name, getattr(self, field.name))

    def callback_for(self, event_type: str) -> Callback | None:
        """The callback that hears events of this type, or None."""
        return {
            ATTEMPT_MADE: self.on_attempt,
            DELIVERY_SUCCEEDED: self.on_delivery_succeeded,
            DELIVERY_FAILED: self.on_delivery_failed,
            DELIVERY_EXHAUSTED: self.on_delivery_failed,
            SUBSCRIPTION_DISABLED: self.on_subscription_disabled,
            SUBSCRIPTION_RECOVERED: self.on_recovered,
        }.get(event_type)

    @property
    def empty(self) -> bool:
        """True when no callback is set."""
        return all(getattr(self, field.name) is None for field in attrs.fields(Hooks))

    def emit(self, event: OperationalEvent) -> None:
        """Call the event's callback; an exception is logged and swallowed."""
        callback = self.callback_for(event.type)
        if callback is None:
            return
        try:
            callback(event)
        except Exception:
            logger.exception(
                "operational event callback for %s raised; delivery goes on",
                event.type,
                extra={"event": event.type, "subscription_id": event.subscription_id},
            )
