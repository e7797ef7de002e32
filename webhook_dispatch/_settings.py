"""What publishers run with, kept in the store so a worker can tell when it differs.

A retry policy, auto-disable, the network guard, hooks and metrics are Python objects
of the application's dispatcher, not data in the store.
A worker started without the application's configuration (``webhook-dispatch worker``
without ``--app``) would deliver with its own defaults. So each publishing dispatcher
writes a plain description of its delivery settings into the store on its first
publish (only when it differs from what is there), and the worker compares its own
with it before it starts.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import os
import random
import socket
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import attrs

from ._version import __version__
from .options import DispatcherOptions
from .retry import RetryPolicy
from .stores.base import Store

__all__ = ["PUBLISHER_SETTINGS", "PublisherSettings", "delivery_settings", "differences"]

PUBLISHER_SETTINGS = "publisher"
"""The store setting publishers keep their `delivery_settings` under."""


def delivery_settings(options: DispatcherOptions) -> dict[str, Any]:
    """The settings that decide how deliveries go, as plain JSON values that compare
    equal across processes (functions by their qualified name, not their address)."""
    return {
        "retry": _plain(options.retry or RetryPolicy()),
        "retry_by_event_type": {
            pattern: _plain(policy) for pattern, policy in options.retry_by_event_type.items()
        },
        "auto_disable": _plain(options.auto_disable),
        "network": {
            "allow_private_networks": options.allow_private_networks,
            "allowed_networks": [str(network) for network in options.allowed_networks],
            "https_only": options.https_only,
            "refuse_mixed_answers": options.refuse_mixed_answers,
        },
        "transport": None if options.transport is None else _name(type(options.transport)),
        "hooks": {
            field.name: _name(getattr(options, field.name))
            for field in attrs.fields(type(options.hooks))
            if getattr(options, field.name) is not None
        },
        "operational_events": options.operational_events,
        "metrics": options.metrics is not None,
        "tracing": options.tracing not in (False, None),
    }


@attrs.frozen
class PublisherSettings:
    """What the store says publishers run with, and who wrote it when."""

    settings: dict[str, Any]
    written_at: datetime
    written_by: str


def record(store: Store, options: DispatcherOptions, now: datetime) -> None:
    """Keep this dispatcher's settings as the publishers' (a read, and a write only
    when they changed)."""
    settings = delivery_settings(options)
    current = read(store)
    if current is not None and current.settings == settings:
        return
    document = {
        "settings": settings,
        "written_by": f"{socket.gethostname()} pid {os.getpid()}, webhook_dispatch {__version__}",
    }
    store.write_setting(PUBLISHER_SETTINGS, json.dumps(document, sort_keys=True), now)


def read(store: Store) -> PublisherSettings | None:
    """The publishers' settings the store keeps, or None (none published yet, a store
    that keeps no settings, or a value this version cannot read)."""
    found = store.read_setting(PUBLISHER_SETTINGS)
    if found is None:
        return None
    text, written_at = found
    try:
        document = json.loads(text)
        return PublisherSettings(document["settings"], written_at, str(document["written_by"]))
    except (ValueError, KeyError, TypeError):
        return None


def differences(publishers: Mapping[str, Any], worker: Mapping[str, Any]) -> list[str]:
    """One line per setting in which the worker differs from publishers, saying both."""
    lines = []
    for name in sorted(set(publishers) | set(worker)):
        theirs, ours = publishers.get(name), worker.get(name)
        if theirs != ours:
            lines.append(f"{name}: publishers use {_show(theirs)}; this worker {_show(ours)}")
    return lines


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _name(value: object) -> str:
    module = getattr(value, "__module__", None) or type(value).__module__
    qualname = getattr(value, "__qualname__", None) or type(value).__qualname__
    return f"{module}.{qualname}"


def _plain(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON values: attrs instances and plain objects by their fields,
    callables and other objects by name."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return _plain(value.value, depth)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value)
    if depth > 4:
        return _name(value)
    if isinstance(value, Mapping):
        return {str(key): _plain(item, depth + 1) for key, item in sorted(value.items())}
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(item, depth + 1) for item in value), key=_show)
    if isinstance(value, (list, tuple)):
        return [_plain(item, depth + 1) for item in value]
    if attrs.has(type(value)):
        fields = {
            f.name: _plain(getattr(value, f.name), depth + 1) for f in attrs.fields(type(value))
        }
        return {"type": _name(type(value)), **fields}
    if callable(value) and hasattr(value, "__qualname__"):
        return _name(value)  # a function, method or class
    state = getattr(value, "__dict__", None)
    if isinstance(state, dict):
        fields = {
            key: _plain(item, depth + 1)
            for key, item in sorted(state.items())
            if not key.startswith("_") and not isinstance(item, random.Random)  # jitter's source
        }
        return {"type": _name(type(value)), **fields}
    return _name(type(value))
