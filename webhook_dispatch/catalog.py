"""The event catalog: the event types an application sends, their JSON Schemas and
examples, payload validation at publish, and OpenAPI 3.1 / AsyncAPI 3.0 exports.

Pure logic, no I/O: the store keeps the entries, the dispatcher caches a `Catalog`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import fastjsonschema

from .errors import InvalidEventType, InvalidPayload, InvalidSchema
from .events import OPERATIONAL_PREFIX
from .models import EventType, thawed
from .registry import pattern_matches, validate_event_type

__all__ = [
    "MAX_DESCRIPTION_LENGTH",
    "MAX_EXAMPLES",
    "Catalog",
    "asyncapi_document",
    "new_event_type",
    "openapi_document",
]

MAX_DESCRIPTION_LENGTH = 4096
"""Longest event type description accepted, in characters."""
MAX_EXAMPLES = 20
"""Most examples one event type keeps."""
_MAX_SCHEMA_SIZE = 256 * 1024

_Validator = Callable[[Any], Any]


def compile_schema(schema: Mapping[str, Any], where: str) -> _Validator:
    """A validator for ``schema`` (draft 7, the newest fastjsonschema knows), or
    `InvalidSchema`. fastjsonschema turns a schema into Python code once: about twenty
    times cheaper per publish than jsonschema's interpreter (docs/performance.md, B8)."""
    try:
        return fastjsonschema.compile(thawed(schema))
    except (fastjsonschema.JsonSchemaDefinitionException, TypeError, ValueError) as exc:
        raise InvalidSchema(f"{where} is not a usable JSON Schema: {exc}") from None


def _payload_error(
    event_type: str, error: fastjsonschema.JsonSchemaValueException
) -> InvalidPayload:
    # fastjsonschema calls the checked value "data": exactly where the payload sits in
    # the Standard Webhooks envelope, so its paths read as paths in the body sent.
    path = error.name or "data"
    return InvalidPayload(
        f"payload does not match the schema of {event_type!r}: {error.message}", path=path
    )


def new_event_type(
    name: str,
    *,
    description: str,
    schema: Mapping[str, Any] | None,
    examples: Sequence[Any],
    deprecated: bool,
    now: datetime,
    existing: EventType | None,
) -> EventType:
    """A checked catalog entry: a valid name, a schema that compiles, examples that are
    JSON and satisfy it. Raises a `ConfigurationError` subclass otherwise."""
    name = validate_event_type(name)
    if name.startswith(OPERATIONAL_PREFIX):
        raise InvalidEventType(
            f"event types starting {OPERATIONAL_PREFIX!r} are the library's own operational events"
        )
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_LENGTH:
        raise InvalidSchema(
            f"description must be a str of at most {MAX_DESCRIPTION_LENGTH} characters"
        )
    if not isinstance(deprecated, bool):
        raise InvalidSchema("deprecated must be True or False")
    if isinstance(examples, (str, bytes)) or not isinstance(examples, Sequence):
        raise InvalidPayload("examples must be a list of payloads")
    if len(examples) > MAX_EXAMPLES:
        raise InvalidPayload(f"at most {MAX_EXAMPLES} examples per event type")
    validate = None
    if schema is not None:
        if not isinstance(schema, Mapping):
            raise InvalidSchema(f"the schema of {name!r} must be a JSON Schema object (a dict)")
        size = len(_json(schema, f"the schema of {name!r}", InvalidSchema))
        if size > _MAX_SCHEMA_SIZE:
            raise InvalidSchema(
                f"the schema of {name!r} is {size} bytes; the limit is {_MAX_SCHEMA_SIZE}"
            )
        validate = compile_schema(schema, f"the schema of {name!r}")
    for index, example in enumerate(examples):
        _json(example, f"example {index} of {name!r}", InvalidPayload)
        if validate is not None:
            try:
                validate(example)
            except fastjsonschema.JsonSchemaValueException as exc:
                raise InvalidPayload(
                    f"example {index} of {name!r} does not match its schema: {exc.message}",
                    path=exc.name,
                ) from None
    return EventType(
        name=name,
        description=description,
        schema=None if schema is None else json.loads(json.dumps(schema)),
        examples=json.loads(json.dumps(list(examples))),
        deprecated=deprecated,
        created_at=now if existing is None else existing.created_at,
        updated_at=now,
    )


def _json(value: Any, what: str, error: type[InvalidPayload] | type[InvalidSchema]) -> str:
    try:
        return json.dumps(thawed(value), allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise error(f"{what} is not JSON: {exc}") from None


class Catalog:
    """The event types a publisher knows, with their payload validators compiled on
    first use."""

    __slots__ = ("_validators", "entries")

    def __init__(self, entries: Iterable[EventType]) -> None:
        self.entries: dict[str, EventType] = {entry.name: entry for entry in entries}
        self._validators: dict[str, _Validator | None] = {}

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def check_payload(self, event_type: str, payload: Any) -> None:
        """Raise `InvalidPayload` (naming the failing path) unless ``payload`` satisfies
        the schema of ``event_type``; types without a schema accept anything."""
        validate = self._validators.get(event_type, _UNKNOWN)
        if validate is _UNKNOWN:
            entry = self.entries.get(event_type)
            validate = None
            if entry is not None and entry.schema is not None:
                validate = compile_schema(entry.schema, f"the schema of {event_type!r}")
            self._validators[event_type] = validate
        if validate is not None:
            try:
                validate(payload)
            except fastjsonschema.JsonSchemaValueException as exc:
                raise _payload_error(event_type, exc) from None

    def check_published(self, event_type: str) -> None:
        """Strict mode: the event type must be in the catalog."""
        if event_type not in self.entries:
            raise InvalidEventType(
                f"event type {event_type!r} is not in the event catalog "
                "(strict_event_types=True; define it with define_event_type)"
            )

    def check_patterns(self, patterns: Iterable[str]) -> None:
        """Strict mode: every pattern must match some cataloged type (or name the
        library's operational events)."""
        for pattern in patterns:
            if pattern.startswith(OPERATIONAL_PREFIX) or pattern == "*":
                continue
            if not any(pattern_matches(pattern, name) for name in self.entries):
                raise InvalidEventType(
                    f"pattern {pattern!r} matches no event type in the catalog "
                    "(strict_event_types=True)"
                )


_UNKNOWN: Any = object()


# -- exports ---------------------------------------------------------------------------
_HEADERS: dict[str, dict[str, Any]] = {
    "webhook-id": {
        "description": "The message id: the same on every attempt, the key to deduplicate on.",
        "schema": {"type": "string", "examples": ["msg_01j0000000000000000000000"]},
    },
    "webhook-timestamp": {
        "description": "Unix seconds when this attempt was signed; refuse it when far from now.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "webhook-signature": {
        "description": (
            "Standard Webhooks signatures, space separated: v1,<base64 HMAC-SHA256 of "
            "'{webhook-id}.{webhook-timestamp}.{body}'> (or v1a, Ed25519)."
        ),
        "schema": {"type": "string"},
    },
}


def _body_schema(entry: EventType, envelope: bool) -> dict[str, Any]:
    payload = {} if entry.schema is None else thawed(entry.schema)
    if not envelope:
        return payload
    return {
        "type": "object",
        "required": ["type", "timestamp", "data"],
        "properties": {
            "type": {"const": entry.name},
            "timestamp": {"type": "string", "format": "date-time"},
            "data": payload,
        },
    }


def _body_example(entry: EventType, example: Any, envelope: bool) -> Any:
    if not envelope:
        return thawed(example)
    return {"type": entry.name, "timestamp": "2024-05-01T12:00:00Z", "data": thawed(example)}


def openapi_document(
    entries: Iterable[EventType], *, title: str, version: str, envelope: bool
) -> dict[str, Any]:
    """An OpenAPI 3.1 document with one ``webhooks`` entry per event type: the request
    body's schema (in the envelope when ``envelope``), examples, and the Standard
    Webhooks headers."""
    webhooks: dict[str, Any] = {}
    for entry in entries:
        content: dict[str, Any] = {"schema": _body_schema(entry, envelope)}
        if entry.examples:
            content["examples"] = {
                f"example{index + 1}": {"value": _body_example(entry, example, envelope)}
                for index, example in enumerate(entry.examples)
            }
        operation: dict[str, Any] = {
            "operationId": entry.name,
            "summary": entry.name,
            "parameters": [
                {"name": name, "in": "header", "required": True, **detail}
                for name, detail in _HEADERS.items()
            ],
            "requestBody": {"required": True, "content": {"application/json": content}},
            "responses": {
                "2XX": {"description": "Received. Any other answer is retried or given up."},
            },
        }
        if entry.description:
            operation["description"] = entry.description
        if entry.deprecated:
            operation["deprecated"] = True
        webhooks[entry.name] = {"post": operation}
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "webhooks": webhooks,
    }


def asyncapi_document(
    entries: Iterable[EventType], *, title: str, version: str, envelope: bool
) -> dict[str, Any]:
    """An AsyncAPI 3.0 document: one channel, message and ``send`` operation per event
    type, over HTTP POST to each subscriber's endpoint."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    headers = {
        "type": "object",
        "required": list(_HEADERS),
        "properties": {
            name: {**detail["schema"], "description": detail["description"]}
            for name, detail in _HEADERS.items()
        },
    }
    for entry in entries:
        key = entry.name
        message: dict[str, Any] = {
            "name": entry.name,
            "title": entry.name,
            "contentType": "application/json",
            "headers": headers,
            "payload": _body_schema(entry, envelope),
            "bindings": {"http": {"bindingVersion": "0.3.0"}},
        }
        if entry.description:
            message["description"] = entry.description
        if entry.examples:
            message["examples"] = [
                {"payload": _body_example(entry, example, envelope)} for example in entry.examples
            ]
        messages[key] = message
        channels[key] = {
            "address": None,
            "description": f"{entry.name} events, POSTed to each subscribed endpoint's URL.",
            "messages": {key: {"$ref": f"#/components/messages/{key}"}},
        }
        operation: dict[str, Any] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{key}"},
            "messages": [{"$ref": f"#/channels/{key}/messages/{key}"}],
            "bindings": {"http": {"method": "POST", "bindingVersion": "0.3.0"}},
        }
        if entry.deprecated:
            operation["description"] = "Deprecated."
        operations[f"send.{key}"] = operation
    return {
        "asyncapi": "3.0.0",
        "info": {"title": title, "version": version},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }
