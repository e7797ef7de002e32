"""Body formats: how one stored message is written for one subscription.

A message is serialized once, at publish; a subscription may ask for another shape of
it: the payload alone, or CloudEvents 1.0 over HTTP (structured or binary mode). Pure
functions; the engine signs whatever bytes they return.
"""

from __future__ import annotations

import base64
import json
from datetime import timezone
from typing import Any, Final

from .errors import ConfigurationError
from .models import Message

__all__ = [
    "BODY_FORMATS",
    "CLOUDEVENTS_SPECVERSION",
    "DEFAULT_EVENT_SOURCE",
    "Rendered",
    "check_body_format",
    "check_event_source",
    "render",
]

BODY_FORMATS: Final = ("standard", "raw", "cloudevents", "cloudevents-binary")
"""``standard``: the body as published (the Standard Webhooks envelope, or the bare
payload with ``envelope=False``); ``raw``: the payload alone; ``cloudevents``: a
CloudEvents 1.0 JSON event (structured mode, ``application/cloudevents+json``);
``cloudevents-binary``: the payload as the body, the attributes in ``ce-*`` headers."""

CLOUDEVENTS_SPECVERSION: Final = "1.0"
DEFAULT_EVENT_SOURCE: Final = "/webhook-dispatch"
"""The CloudEvents ``source`` of a subscription that names none."""

Rendered = tuple[str, bytes, list[tuple[str, str]]]
"""A body as sent: its content type, its bytes, and headers that go with it."""


def check_body_format(value: object) -> str:
    """``value`` if it names a body format; `ConfigurationError` otherwise."""
    if value not in BODY_FORMATS:
        raise ConfigurationError(f"body_format must be one of {', '.join(BODY_FORMATS)}")
    assert isinstance(value, str)
    return value


def check_event_source(value: object) -> str | None:
    """A CloudEvents ``source`` (a non-empty URI reference without spaces), or None."""
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 2048 or not value.isprintable():
        raise ConfigurationError("event_source must be a printable URI reference of 1-2048 chars")
    if any(character.isspace() for character in value):
        raise ConfigurationError("event_source must not contain whitespace")
    return value


def render(message: Message, body_format: str, event_source: str | None) -> Rendered:
    """The body ``message`` is sent with in ``body_format``."""
    if body_format == "standard":
        return message.content_type, message.payload, []
    data, is_json = _payload(message)
    if body_format == "raw":
        if not is_json:
            return message.content_type, message.payload, []
        return "application/json", _dumps(data), []
    attributes = {
        "specversion": CLOUDEVENTS_SPECVERSION,
        "id": message.id,
        "source": event_source or DEFAULT_EVENT_SOURCE,
        "type": message.event_type,
        "time": message.created_at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
    }
    if body_format == "cloudevents-binary":
        headers = [(f"ce-{name}", value) for name, value in attributes.items()]
        if not is_json:
            return message.content_type, message.payload, headers
        return "application/json", _dumps(data), headers
    event: dict[str, Any] = dict(attributes)
    if is_json:
        event["datacontenttype"] = "application/json"
        event["data"] = data
    else:
        event["datacontenttype"] = message.content_type
        event["data_base64"] = base64.b64encode(message.payload).decode("ascii")
    return "application/cloudevents+json", _dumps(event), []


def _payload(message: Message) -> tuple[Any, bool]:
    """The payload of a message (unwrapped from the envelope this library writes), and
    whether it is JSON."""
    content_type = message.content_type.split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        return None, False
    try:
        body = json.loads(message.payload)
    except ValueError:
        return None, False
    if (
        isinstance(body, dict)
        and body.keys() == {"type", "timestamp", "data"}
        and body["type"] == message.event_type
    ):
        return body["data"], True
    return body, True


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
