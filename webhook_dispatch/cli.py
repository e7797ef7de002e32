"""The ``webhook-dispatch`` command: a self-contained demo, a long-running worker, and
commands to inspect and repair any store (subscriptions, messages, deliveries, attempts).

Every command is a thin layer over `Dispatcher`; output is plain aligned text, or JSON
with ``--json``. Secrets are printed once, when ``subscriptions add`` generates one.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import importlib
import inspect
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import FrameType
from typing import Any

import attrs

from . import _settings
from ._receiver import LoopbackReceiver
from ._redact import redact_store_url
from ._version import __version__
from .auth import auth_to_document
from .dispatcher import AsyncDispatcher, Dispatcher, ReplayProgress
from .errors import BlockedAddress, ConfigurationError, InvalidStoreURL, WebhookDispatchError
from .formats import BODY_FORMATS
from .models import Attempt, Delivery, DeliveryStatus, Message, Subscription, Tenant, thawed
from .netguard import NetworkPolicy, judge_addresses, lookup_within, parse_host_literal
from .paging import DEFAULT_PAGE_SIZE, Page, every
from .retry import RetryPolicy
from .signing import generate_secret, public_key, signer_names
from .stores._core import SCHEMA_VERSION
from .stores.memory import MemoryStore
from .stores.sqlite import SQLiteStore

logger = logging.getLogger("webhook_dispatch.cli")

__all__ = [
    "APP_ENV",
    "DEFAULT_STORE",
    "STORE_ENV",
    "format_table",
    "load_app",
    "main",
    "parse_moment",
]

DEFAULT_STORE = "sqlite:///webhooks.db"
"""The store commands use when neither ``--store`` nor ``WEBHOOK_DISPATCH_STORE`` is set."""
STORE_ENV = "WEBHOOK_DISPATCH_STORE"
"""The environment variable naming the default store URL."""
APP_ENV = "WEBHOOK_DISPATCH_APP"
"""The environment variable naming the application's dispatcher (as ``--app`` does)."""

_DEMO_RETRY = (0.0, 0.5, 1.0, 2.0)
_DEMO_DEADLINE = 15.0
_URL_WIDTH = 40
_EVENTS_WIDTH = 20

Handler = Callable[[argparse.Namespace], int]


# -- small formatting helpers --------------------------------------------------------
def format_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    right: Collection[int] = (),
    indent: str = "",
) -> list[str]:
    """Lay out ``rows`` under ``headers`` in columns two spaces apart; return the lines.

    Columns whose index is in ``right`` are right-aligned (numbers). The last column is
    not padded, so no line ends in spaces.
    """
    text_rows = [[str(cell) for cell in row] for row in rows]
    table = [list(headers), *text_rows]
    widths = [max(len(row[index]) for row in table) for index in range(len(headers))]
    lines = []
    for row in table:
        cells = [
            cell.rjust(widths[index]) if index in right else cell.ljust(widths[index])
            for index, cell in enumerate(row)
        ]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _when(moment: datetime | None, *, milliseconds: bool = False) -> str:
    if moment is None:
        return "-"
    moment = moment.astimezone(timezone.utc)
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}.{moment.microsecond // 1000:03d}" if milliseconds else text


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _relative(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    seconds = (moment - now).total_seconds()
    if seconds <= 0:
        return "due"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"in {int(seconds // size)}{unit}"
    return f"in {int(seconds) or 1}s"


def _text(body: bytes) -> str:
    return body.decode("utf-8", errors="replace")


def _result(status_code: int | None, error_kind: object, error: str | None) -> str:
    if status_code is not None:
        return str(status_code)
    if error_kind is not None:
        return str(getattr(error_kind, "value", error_kind))
    return (error or "error").partition(":")[0]


def _plural(count: int, word: str, words: str | None = None) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {words or word + 's'}"


def _print_json(items: Sequence[dict[str, Any]]) -> None:
    print(json.dumps(list(items), indent=2))


# -- JSON views (never a secret) -------------------------------------------------------
def _subscription_json(subscription: Subscription) -> dict[str, Any]:
    # Header values may be credentials (Authorization, API keys): names only.
    return {
        "id": subscription.id,
        "url": subscription.url,
        "event_types": list(subscription.event_types),
        "enabled": subscription.enabled,
        "disabled_reason": subscription.disabled_reason,
        "header_names": sorted(subscription.headers),
        "signature": subscription.signature,
        "auth": _auth_type(subscription),
        "metadata": dict(subscription.metadata),
        "timeout": subscription.timeout,
        "rate_limit": subscription.rate_limit,
        "max_in_flight": subscription.max_in_flight,
        "ordered": subscription.ordered,
        "filter": None if subscription.filter is None else subscription.filter.document,
        "body_format": subscription.body_format,
        "retry_schedule": (
            None
            if subscription.retry_schedule is None
            else list(subscription.retry_schedule.delays)
        ),
        "failing_since": (
            None if subscription.failing_since is None else _iso(subscription.failing_since)
        ),
        "consecutive_failures": subscription.consecutive_failures,
        "created_at": _iso(subscription.created_at),
        "updated_at": _iso(subscription.updated_at),
    }


def _auth_type(subscription: Subscription) -> str | None:
    # The kind of auth only: its settings hold credentials.
    if subscription.auth is None:
        return None
    return str(auth_to_document(subscription.auth).get("type") or "unknown")


def _message_json(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "event_type": message.event_type,
        "content_type": message.content_type,
        "created_at": _iso(message.created_at),
        "idempotency_key": message.idempotency_key,
        "size": len(message.payload),
        "payload": _text(message.payload),
    }


def _delivery_json(delivery: Delivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "message_id": delivery.message_id,
        "subscription_id": delivery.subscription_id,
        "status": delivery.status.value,
        "attempt_count": delivery.attempt_count,
        "next_attempt_at": _iso(delivery.next_attempt_at),
        "next_trigger": delivery.next_trigger.value,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "created_at": _iso(delivery.created_at),
        "updated_at": _iso(delivery.updated_at),
    }


def _attempt_json(attempt: Attempt) -> dict[str, Any]:
    return {
        "id": attempt.id,
        "delivery_id": attempt.delivery_id,
        "message_id": attempt.message_id,
        "subscription_id": attempt.subscription_id,
        "number": attempt.number,
        "trigger": attempt.trigger.value,
        "started_at": _iso(attempt.started_at),
        "duration_ms": round(attempt.duration * 1000, 3),
        "url": attempt.url,
        "status_code": attempt.status_code,
        "error_kind": attempt.error_kind.value if attempt.error_kind else None,
        "error": attempt.error,
        "response_headers": dict(attempt.response_headers),
        "response_body": _text(attempt.response_body),
        "webhook_timestamp": attempt.webhook_timestamp,
    }


# -- argument types ----------------------------------------------------------------------
_DURATION = re.compile(r"(?:\d+[smhdw])+")
_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _duration(text: str) -> timedelta:
    """``30m``, ``2h``, ``7d``, ``1h30m`` -> a timedelta (argparse type)."""
    compact = text.strip().lower()
    if not _DURATION.fullmatch(compact):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration such as 90s, 30m, 2h, 7d or 1h30m"
        )
    seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(compact))
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{text!r} is too long a duration") from None


def _moment(text: str) -> timedelta | datetime:
    """A duration ago (``2h``) or an ISO 8601 time (naive = UTC) (argparse type)."""
    if _DURATION.fullmatch(text.strip().lower()):
        return _duration(text)
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (30m, 2h, 7d) nor an ISO 8601 time "
            "(2024-05-01T12:00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def parse_moment(text: str, now: datetime) -> datetime:
    """Turn ``--since``-style text into an aware UTC datetime.

    A duration (``90s``, ``30m``, ``2h``, ``7d``, ``1w``, ``1h30m``) means that long before
    ``now``; anything else is read as ISO 8601, a time without offset being UTC.
    Raises `argparse.ArgumentTypeError` for anything else.
    """
    value = _moment(text)
    return now - value if isinstance(value, timedelta) else value.astimezone(timezone.utc)


def _resolve(value: timedelta | datetime | None, now: datetime) -> datetime | None:
    if value is None:
        return None
    return now - value if isinstance(value, timedelta) else value.astimezone(timezone.utc)


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not a header; write 'Name: value'")
    return name.strip(), value.strip()


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return number


# -- commands ---------------------------------------------------------------------------------
def load_app(spec: str) -> Dispatcher | AsyncDispatcher:
    """The application's dispatcher named by ``spec``, ``"package.module:attribute"``
    (the import-string convention of uvicorn, gunicorn and ``celery -A``).

    The attribute (``dispatcher`` when ``spec`` names only a module; dots reach into
    objects) is a `Dispatcher` or `AsyncDispatcher`, or a callable taking no arguments
    that returns one (a factory). The current directory is importable, as it is for
    ``python -m``. Raises `ConfigurationError` saying what could not be found.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigurationError("--app needs 'package.module:attribute'")
    module_name, _, attribute = spec.strip().partition(":")
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise ConfigurationError(f"--app {spec!r}: {module_name!r} is not a module name")
    path = attribute or "dispatcher"
    if not all(part.isidentifier() for part in path.split(".")):
        raise ConfigurationError(f"--app {spec!r}: {path!r} is not an attribute name")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name):
            raise  # the application's own import failed: its traceback says why
        raise ConfigurationError(
            f"--app {spec!r}: no module named {exc.name!r} (run from the project's folder, "
            "or install it)"
        ) from None
    for part in path.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigurationError(
                f"--app {spec!r}: {module_name} has no attribute {path!r}"
            ) from None
    if not isinstance(found, (Dispatcher, AsyncDispatcher)) and callable(found):
        found = found()
        if inspect.isawaitable(found):
            if inspect.iscoroutine(found):
                found.close()
            raise ConfigurationError(
                f"--app {spec!r} is an async function: make the factory a plain function "
                "that returns the AsyncDispatcher"
            )
    if not isinstance(found, (Dispatcher, AsyncDispatcher)):
        raise ConfigurationError(
            f"--app {spec!r} is a {type(found).__name__}, not a webhook_dispatch.Dispatcher, "
            "an AsyncDispatcher, or a function returning one"
        )
    return found


def _app_spec(args: argparse.Namespace) -> str | None:
    given: str | None = getattr(args, "app", None)
    return given or os.environ.get(APP_ENV) or None


@contextlib.contextmanager
def _open(
    args: argparse.Namespace, *, create: bool = False, **overrides: Any
) -> Iterator[Dispatcher]:
    """The application's dispatcher (``--app``), or one on ``--store``; closed after.

    Only commands that set a store up (``create``) may make a new SQLite file: inspecting
    a mistyped path must not leave an empty database behind it. ``overrides`` are options
    a command line may change (the worker's ``--concurrency``).
    """
    spec = _app_spec(args)
    if spec is not None:
        if getattr(args, "store", None):
            raise _UsageError(
                "--store and --app both name a store: the application's dispatcher brings "
                "its own (drop --store, or set it in the application)"
            )
        if getattr(args, "allow_private_networks", False) or getattr(
            args, "refuse_mixed_answers", False
        ):
            raise _UsageError(
                "--allow-private-networks or --refuse-mixed-answers with --app: the network "
                "guard is the application's setting (allow_private_networks=, "
                "refuse_mixed_answers= in its dispatcher)"
            )
        app = load_app(spec)
        try:
            if isinstance(app.store, MemoryStore):
                raise ConfigurationError(
                    f"--app {spec!r}: that dispatcher keeps its deliveries in memory, which "
                    "no other process can read; give it a store such as "
                    "'sqlite:///webhooks.db' or a PostgreSQL URL"
                )
            if isinstance(app, Dispatcher) and not overrides:
                yield app
            else:  # the sync face of the same configuration, on the same store
                with Dispatcher(app.store, app.options, **overrides) as dispatcher:
                    yield dispatcher
        finally:
            if isinstance(app, AsyncDispatcher):
                asyncio.run(app.aclose())
            else:
                app.close()
        return
    url = _store_url(args)
    if not create and url.partition("://")[0].lower() == "sqlite":
        path = SQLiteStore.path_of(url)
        if path != ":memory:" and not os.path.exists(path):
            raise InvalidStoreURL(
                f"no store at {path!r}: this command reads an existing store and creates "
                "none (check --store or WEBHOOK_DISPATCH_STORE; `subscriptions add` or a "
                "worker creates it)",
                path=path,
            )
    allow = bool(getattr(args, "allow_private_networks", False))
    strict = bool(getattr(args, "refuse_mixed_answers", False))
    with Dispatcher(
        url, allow_private_networks=allow, refuse_mixed_answers=strict, **overrides
    ) as dispatcher:
        yield dispatcher


class _UsageError(ConfigurationError):
    """Options that cannot go together on the command line (exit code 2, with usage)."""


def _cmd_subscriptions_list(args: argparse.Namespace) -> int:
    with _open(args) as dispatcher:
        subscriptions = dispatcher.subscriptions(
            limit=args.limit, cursor=args.cursor, **_tenant_filter(args)
        )
    _more(subscriptions)
    if args.json:
        _print_json([_subscription_json(s) for s in subscriptions])
        return 0
    if not subscriptions:
        print("no subscriptions")
        return 0
    rows = [
        (
            s.id,
            "enabled" if s.enabled else "disabled",
            _shorten(",".join(s.event_types), _EVENTS_WIDTH),
            _shorten(s.url, _URL_WIDTH),
        )
        for s in subscriptions
    ]
    for line in format_table(("ID", "STATE", "EVENTS", "URL"), rows):
        print(line)
    for s in subscriptions:
        if not s.enabled:
            print(f"{s.id} disabled: {s.disabled_reason or 'no reason given'}")
    return 0


def _tenant_filter(args: argparse.Namespace) -> dict[str, Any]:
    """``tenant=`` for a listing from ``--tenant`` (absent: every tenant)."""
    return {} if args.tenant is None else {"tenant": args.tenant}


def _tenant_option(parser: argparse.ArgumentParser, what: str = "only this tenant's") -> None:
    parser.add_argument("--tenant", metavar="ID", help=what)


def _more(page: Page[Any]) -> None:
    """Say on stderr how to get the next page (stdout stays the listing itself)."""
    if page.next_cursor is not None:
        print(f"more: repeat with --cursor {page.next_cursor}", file=sys.stderr)


def _page_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--limit", type=_positive, default=DEFAULT_PAGE_SIZE, metavar="N", help="page size"
    )
    parser.add_argument("--cursor", metavar="C", help="the next page, as printed by the last")


def _json_object(value: str) -> Any:
    """An argparse type: a JSON document (its shape is checked by the library)."""
    try:
        return json.loads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None


def _read_secret(value: str | None) -> str | None:
    if value == "-":
        return sys.stdin.readline().strip()
    return value


def _cmd_subscriptions_add(args: argparse.Namespace) -> int:
    given_secret = _read_secret(args.secret)
    headers = dict(args.header or [])
    with _open(args, create=True) as dispatcher:
        subscription = dispatcher.subscribe(
            args.url,
            event_types=args.event_type or None,
            secret=given_secret,
            headers=headers or None,
            signature=args.signature,
            rate_limit=args.rate_limit,
            max_in_flight=args.max_in_flight,
            ordered=args.ordered,
            filter=args.filter,
            body_format=args.body_format,
            event_source=args.event_source,
            tenant=args.tenant,
            resolve_host=args.resolve_host,
        )
    if args.json:
        document: dict[str, Any] = {"subscription": _subscription_json(subscription)}
        if subscription.signature == "standard-ed25519":
            document["public_key"] = public_key(subscription.secret)
        elif given_secret is None:
            document["secret"] = subscription.secret  # shown once, as in the text output
        print(json.dumps(document, indent=2))
        return 0
    print(f"created subscription {subscription.id}")
    if subscription.tenant is not None:
        print(f"  tenant:      {subscription.tenant}")
    print(f"  url:         {subscription.url}")
    print(f"  event types: {', '.join(subscription.event_types)}")
    if headers:
        print(f"  headers:     {', '.join(sorted(headers))}")
    if subscription.filter is not None:
        print(f"  filter:      {json.dumps(subscription.filter.document)}")
    if subscription.signature == "standard-ed25519":
        print(f"public key: {public_key(subscription.secret)} (receivers verify with it)")
    elif given_secret is None:
        print(f"secret: {subscription.secret}")
        print("This secret is shown once: give it to the receiver now, it cannot be read back.")
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    with _open(args) as dispatcher:
        stats = dispatcher.stats(**_tenant_filter(args))
        now = dispatcher.clock.now()
    age = stats.oldest_pending_age(now)
    summary = {
        "pending": stats.pending,
        "delivering": stats.delivering,
        "oldest_pending_at": (
            None if stats.oldest_pending_at is None else _iso(stats.oldest_pending_at)
        ),
        "oldest_pending_age_seconds": age,
        "subscriptions": stats.subscriptions,
        "disabled_subscriptions": stats.disabled_subscriptions,
        "failing_subscriptions": stats.failing_subscriptions,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    width = max(len(key) for key in summary)
    for key, value in summary.items():
        shown = "-" if value is None else f"{value:.1f}" if isinstance(value, float) else value
        print(f"{key.replace('_', ' '):<{width}}  {shown}")
    return 0


def _tenant_json(tenant: Tenant) -> dict[str, Any]:
    return {
        "id": tenant.id,
        "rate_limit": tenant.rate_limit,
        "max_in_flight": tenant.max_in_flight,
        "max_subscriptions": tenant.max_subscriptions,
        "metadata": dict(tenant.metadata),
        "created_at": _iso(tenant.created_at),
        "updated_at": _iso(tenant.updated_at),
        "subscriptions": tenant.subscriptions,
        "pending": tenant.pending,
    }


def _cmd_catalog_list(args: argparse.Namespace) -> int:
    with _open(args) as dispatcher:
        entries = dispatcher.event_types()
    if args.json:
        _print_json(
            [
                {
                    "name": e.name,
                    "description": e.description,
                    "schema": thawed(e.schema),
                    "examples": thawed(e.examples),
                    "deprecated": e.deprecated,
                    "created_at": _iso(e.created_at),
                    "updated_at": _iso(e.updated_at),
                }
                for e in entries
            ]
        )
        return 0
    if not entries:
        print("no event types in the catalog")
        return 0
    rows = [
        (
            e.name,
            "yes" if e.schema is not None else "-",
            len(e.examples),
            _shorten(e.description + (" (deprecated)" if e.deprecated else ""), 60),
        )
        for e in entries
    ]
    for line in format_table(("EVENT TYPE", "SCHEMA", "EXAMPLES", "DESCRIPTION"), rows, right={2}):
        print(line)
    return 0


def _cmd_catalog_export(args: argparse.Namespace) -> int:
    with _open(args) as dispatcher:
        export = (
            dispatcher.export_openapi if args.format == "openapi" else dispatcher.export_asyncapi
        )
        document = export(title=args.title, version=args.api_version)
    print(json.dumps(document, indent=2))
    return 0


def _cmd_tenants_list(args: argparse.Namespace) -> int:
    with _open(args) as dispatcher:
        tenants = dispatcher.tenants(limit=args.limit, cursor=args.cursor)
    _more(tenants)
    if args.json:
        _print_json([_tenant_json(t) for t in tenants])
        return 0
    if not tenants:
        print("no tenants")
        return 0
    rows = [
        (
            _shorten(t.id, 32),
            t.subscriptions,
            t.pending,
            "-" if t.rate_limit is None else f"{t.rate_limit:g}/s",
            "-" if t.max_in_flight is None else t.max_in_flight,
        )
        for t in tenants
    ]
    header = ("TENANT", "SUBSCRIPTIONS", "PENDING", "RATE", "IN FLIGHT")
    for line in format_table(header, rows, right={1, 2}):
        print(line)
    return 0


def _cmd_tenants_show(args: argparse.Namespace) -> int:
    with _open(args) as dispatcher:
        tenant = dispatcher.get_tenant(args.id)
    print(json.dumps(_tenant_json(tenant), indent=2))
    return 0


def _cmd_tenants_set(args: argparse.Namespace) -> int:
    settings: dict[str, Any] = {}
    for name in ("rate_limit", "max_in_flight", "max_subscriptions"):
        value = getattr(args, name)
        if value is not None:
            settings[name] = None if value == 0 else value
    if args.metadata:
        settings["metadata"] = dict(args.metadata)
    with _open(args, create=True) as dispatcher:
        tenant = dispatcher.set_tenant(args.id, **settings)
    print(json.dumps(_tenant_json(tenant), indent=2))
    return 0


def _cmd_tenants_delete(args: argparse.Namespace) -> int:
    with _open(args) as dispatcher:
        tenant = dispatcher.get_tenant(args.id)
        if not args.yes:
            print(
                f"refusing to delete tenant {tenant.id} ({tenant.subscriptions} subscriptions, "
                f"{tenant.pending} pending deliveries) without --yes",
                file=sys.stderr,
            )
            return 2
        progress = None if args.json else _Progress(f"deleting tenant {tenant.id}")
        removed = dispatcher.delete_tenant(
            args.id, on_progress=None if progress is None else progress.update
        )
        if progress is not None:
            progress.done()
    _report(
        args,
        f"deleted tenant {args.id}: {removed} messages with their deliveries and attempts",
        {"deleted": args.id, "messages": removed},
    )
    return 0


class _Progress:
    """A one-line progress count on stderr (redrawn in place on a terminal)."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._tty = sys.stderr.isatty()
        self._shown = False

    def update(self, total: int) -> None:
        end = "\r" if self._tty else "\n"
        print(f"{self._label}: {total} messages removed", end=end, file=sys.stderr, flush=True)
        self._shown = True

    def done(self) -> None:
        if self._shown and self._tty:
            print(file=sys.stderr)


def _metadata_item(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def _report(args: argparse.Namespace, text: str, document: Mapping[str, Any]) -> None:
    """Print what an action did: ``text`` for people, or ``document`` as one JSON object
    with ``--json``."""
    if getattr(args, "json", False):
        print(json.dumps(document, indent=2))
    else:
        print(text)


def _cmd_subscriptions_disable(args: argparse.Namespace) -> int:
    with _open(args) as dispatcher:
        subscription = dispatcher.disable(args.id, reason=args.reason)
    _report(
        args,
        f"disabled {subscription.id} ({subscription.disabled_reason}); pending deliveries held",
        _subscription_json(subscription),
    )
    return 0


def _cmd_subscriptions_enable(args: argparse.Namespace) -> int:
    with _open(args) as dispatcher:
        subscription = dispatcher.enable(args.id)
    _report(
        args,
        f"enabled {subscription.id}; held deliveries resume when a worker runs",
        _subscription_json(subscription),
    )
    return 0


def _cmd_subscriptions_remove(args: argparse.Namespace) -> int:
    with _open(args) as dispatcher:
        subscription = dispatcher.get_subscription(args.id)
        dispatcher.unsubscribe(args.id)
    _report(
        args,
        f"removed {subscription.id} ({subscription.url}); unfinished deliveries cancelled",
        {"removed": subscription.id, "url": subscription.url},
    )
    return 0


def _cmd_messages_list(args: argparse.Namespace) -> int:
    with _open(args) as dispatcher:
        messages = dispatcher.messages(
            event_type=args.event_type, limit=args.limit, cursor=args.cursor, **_tenant_filter(args)
        )
    _more(messages)
    if args.json:
        _print_json([_message_json(m) for m in messages])
        return 0
    if not messages:
        print("no messages")
        return 0
    rows = [
        (m.id, _shorten(m.event_type, 28), _when(m.created_at), len(m.payload)) for m in messages
    ]
    for line in format_table(("ID", "EVENT TYPE", "CREATED (UTC)", "BYTES"), rows, right={3}):
        print(line)
    return 0


def _cmd_deliveries_list(args: argparse.Namespace) -> int:
    with _open(args) as dispatcher:
        deliveries = dispatcher.deliveries(
            message_id=args.message,
            subscription_id=args.subscription,
            status=args.status,
            limit=args.limit,
            cursor=args.cursor,
            **_tenant_filter(args),
        )
        now = dispatcher.clock.now()
    _more(deliveries)
    if args.json:
        _print_json([_delivery_json(d) for d in deliveries])
        return 0
    if not deliveries:
        print("no deliveries")
        return 0
    # Three ids do not fit 100 columns: show the one not already fixed by a filter.
    by_message = args.message is not None
    rows = [
        (
            d.id,
            d.subscription_id if by_message else d.message_id,
            d.status.value,
            d.attempt_count,
            _shorten(_result(d.last_status_code, None, d.last_error), 14)
            if d.attempt_count
            else "-",
            _relative(d.next_attempt_at, now),
        )
        for d in deliveries
    ]
    other = "SUBSCRIPTION" if by_message else "MESSAGE"
    headers = ("ID", other, "STATUS", "TRIES", "LAST", "NEXT")
    for line in format_table(headers, rows, right={3}):
        print(line)
    return 0


def _cmd_attempts(args: argparse.Namespace) -> int:
    with _open(args) as dispatcher:
        message = dispatcher.get_message(args.message_id)
        attempts = dispatcher.attempts(message.id)
        deliveries = dispatcher.deliveries(message_id=message.id)
    if args.json:
        _print_json([_attempt_json(a) for a in attempts])
        return 0
    print(
        f"message {message.id}  {message.event_type}  created {_when(message.created_at)} UTC  "
        f"{_plural(len(attempts), 'attempt')}"
    )
    for delivery in deliveries:
        mine = [a for a in attempts if a.delivery_id == delivery.id]
        print()
        print(f"delivery {delivery.id}  {delivery.status.value}")
        url = mine[-1].url if mine else ""
        print(f"  to {delivery.subscription_id}  {_shorten(url, 56)}".rstrip())
        if not mine:
            print("  no attempts yet")
            continue
        rows = [
            (
                a.number,
                _when(a.started_at, milliseconds=True),
                a.trigger.value,
                _result(a.status_code, a.error_kind, a.error),
                round(a.duration * 1000),
                _shorten(a.error or "", 36),
            )
            for a in mine
        ]
        headers = ("TRY", "STARTED (UTC)", "TRIGGER", "RESULT", "MS", "DETAIL")
        for line in format_table(headers, rows, right={0, 4}, indent="  "):
            print(line)
    return 0


def _cmd_retry(args: argparse.Namespace) -> int:
    with _open(args) as dispatcher:
        delivery = dispatcher.retry(args.delivery_id)
    scheduled = delivery.status is not DeliveryStatus.DELIVERING
    _report(
        args,
        f"delivery {delivery.id} scheduled for one manual attempt; "
        "a running worker sends it (webhook-dispatch worker)"
        if scheduled
        else f"delivery {delivery.id} is being attempted right now; not rescheduled",
        {"scheduled": scheduled, "delivery": _delivery_json(delivery)},
    )
    return 0


def _cmd_recover(args: argparse.Namespace) -> int:
    with _open(args) as dispatcher:
        now = dispatcher.clock.now()
        since, until = _window(args, now)
        subscription = dispatcher.get_subscription(args.subscription_id)
        deliveries = dispatcher.recover(subscription.id, since, until)
    span = f"{_when(since)} to {_when(until or now)} UTC"
    lines = [
        f"scheduled {_plural(len(deliveries), 'delivery', 'deliveries')} of {subscription.id} "
        f"for a manual attempt (failed or exhausted, messages from {span})",
        *(f"  {delivery.id}  message {delivery.message_id}" for delivery in deliveries),
    ]
    if deliveries:
        lines.append("a running worker sends them (webhook-dispatch worker)")
    _report(
        args,
        "\n".join(lines),
        {
            "subscription_id": subscription.id,
            "since": _iso(since),
            "until": _iso(until or now),
            "deliveries": [_delivery_json(delivery) for delivery in deliveries],
        },
    )
    return 0


def _window(args: argparse.Namespace, now: datetime) -> tuple[datetime, datetime | None]:
    """``--since`` and ``--until`` as moments, checked."""
    since = _resolve(args.since, now)
    until = _resolve(args.until, now)
    assert since is not None
    if until is not None and until <= since:
        raise ConfigurationError("--until must be later than --since")
    return since, until


def _replay_bar(progress: ReplayProgress) -> None:
    width = 30
    done = width if not progress.total else width * progress.read // progress.total
    bar = "#" * done + "-" * (width - done)
    print(
        f"\rreplaying [{bar}] {progress.read:,}/{progress.total:,} messages, "
        f"{progress.queued:,} queued",
        end="",
        file=sys.stderr,
        flush=True,
    )


def _cmd_replay(args: argparse.Namespace) -> int:
    with _open(args) as dispatcher:
        now = dispatcher.clock.now()
        since, until = _window(args, now)
        queued = dispatcher.replay(
            args.subscription_id,
            since=since,
            until=until,
            statuses=args.status or None,
            on_progress=None if args.json else _replay_bar,
        )
    if not args.json:
        print(file=sys.stderr)  # end the progress line
    span = f"{_when(since)} to {_when(until or now)} UTC"
    text = (
        f"queued {_plural(queued, 'delivery', 'deliveries')} of {args.subscription_id} for a "
        f"manual attempt (messages from {span})"
    )
    if queued:
        text += "\na running worker sends them (webhook-dispatch worker)"
    _report(
        args,
        text,
        {
            "subscription_id": args.subscription_id,
            "since": _iso(since),
            "until": _iso(until or now),
            "queued": queued,
        },
    )
    return 0


def _cmd_resend(args: argparse.Namespace) -> int:
    with _open(args) as dispatcher:
        delivery = dispatcher.resend(args.message_id, args.subscription_id)
    _report(
        args,
        f"queued {delivery.id} (message {delivery.message_id} to {delivery.subscription_id})",
        _delivery_json(delivery),
    )
    return 0


def _purge_bar(done: int, total: int) -> None:
    width = 30
    filled = width if not total else min(width, width * done // total)
    print(
        f"\rpurging [{'#' * filled}{'-' * (width - filled)}] {done:,}/{total:,} messages",
        end="",
        file=sys.stderr,
        flush=True,
    )


def _cmd_purge(args: argparse.Namespace) -> int:
    with _open(args) as dispatcher:
        cutoff = dispatcher.clock.now() - args.older_than
        count = dispatcher.store.count_purgeable(cutoff)
        if args.dry_run:
            _report(
                args,
                f"would purge {_plural(count, 'finished message')} created before "
                f"{_when(cutoff)} UTC, with their deliveries and attempts (dry run)",
                {"dry_run": True, "messages": count, "before": _iso(cutoff)},
            )
            return 0
        if count and not args.yes and sys.stdin.isatty():
            answer = input(
                f"purge {_plural(count, 'finished message')} created before {_when(cutoff)} "
                "UTC, with their deliveries and attempts? [y/N] "
            )
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing purged")
                return 1
        bar = None if args.json else (lambda done: _purge_bar(done, count))
        removed = dispatcher.purge(cutoff, on_progress=bar)
    if count and bar is not None:
        print(file=sys.stderr)  # end the progress line
    _report(
        args,
        f"purged {_plural(removed, 'finished message')} created before {_when(cutoff)} UTC, "
        "with their deliveries and attempts",
        {"dry_run": False, "messages": removed, "before": _iso(cutoff)},
    )
    return 0


class JSONLogFormatter(logging.Formatter):
    """One JSON object per record, for log shippers: time, level, logger, message, and
    the structured fields the library attaches (``message_id``, ``subscription_id``,
    ``status_code``, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRIBUTES and not name.startswith("_"):
                document[name] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
}


@contextlib.contextmanager
def _logging_configured(level: str, form: str) -> Iterator[None]:
    """The worker's logging (one stderr handler on the root logger, the library's level)
    while it runs; the previous configuration is put back after, so calling `main`
    in-process leaves no handler on a stream that may be gone."""
    root, library = logging.getLogger(), logging.getLogger("webhook_dispatch")
    saved = (list(root.handlers), root.level, library.level)
    _configure_logging(level, form)
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        library.setLevel(saved[2])


def _configure_logging(level: str, form: str) -> None:
    handler = logging.StreamHandler()
    if form == "json":
        handler.setFormatter(JSONLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("webhook_dispatch").setLevel(level.upper())


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e9:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds, 0 or more")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def _span(seconds: float) -> str:
    """``seconds`` for people: 0.2s, 45s, 3m20s, 2h05m, 3d04h."""
    whole = int(seconds)
    if seconds < 10 and seconds != whole:
        return f"{seconds:.1f}s"
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _age(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _describe_retry(policy: RetryPolicy | None) -> str:
    schedule = (policy or RetryPolicy()).schedule
    if schedule is None:
        return "custom tenacity strategies"
    delays = ", ".join(_age(timedelta(seconds=d)) for d in schedule.delays)
    return f"{len(schedule.delays)} attempts ({delays})"


def _cmd_worker(args: argparse.Namespace) -> int:
    with _logging_configured(args.log_level, args.log_format):
        return _work(args)


def _work(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = (
        {} if args.concurrency is None else {"concurrency": args.concurrency}
    )
    if _app_spec(args) is None:
        overrides.setdefault("concurrency", 64)
    if args.lease is not None:
        overrides["lease"] = timedelta(seconds=args.lease)
    if args.poll_interval is not None:
        overrides["poll_interval"] = args.poll_interval
    if args.grace is not None:
        overrides["grace"] = args.grace
    with _open(args, create=True, **overrides) as dispatcher:
        refusal = _settings_refusal(dispatcher, args)
        if refusal is not None:
            print(refusal, file=sys.stderr)
            return 1
        with _stopped_by_signals(dispatcher):
            # Only the first signal raises: one arriving anywhere in here, before run()
            # or after it handled one, ends up in close(), which stops gracefully.
            try:
                print(_startup_line(dispatcher, args), flush=True)
                with _ProgressLog(dispatcher, args.progress_every):
                    dispatcher.run()
            except KeyboardInterrupt:
                pass
            finally:
                dispatcher.close()  # gracefully: attempts in flight finish
    print("webhook-dispatch worker stopped: attempts in flight finished and were recorded")
    return 0


def _settings_refusal(dispatcher: Dispatcher, args: argparse.Namespace) -> str | None:
    """Why this worker must not start: its delivery settings differ from those the
    publishers wrote into the store. With ``--app`` a difference is only logged: the
    application is the configuration, and during a deploy old publishers may still run."""
    publishers = _settings.read(dispatcher.store)
    if publishers is None:
        return None
    lines = _settings.differences(
        publishers.settings, _settings.delivery_settings(dispatcher.options)
    )
    if not lines:
        return None
    written = f"written {_iso(publishers.written_at)} by {publishers.written_by}"
    if _app_spec(args) is not None:
        logger.warning(
            "this worker's settings differ from the publishers' (%s): %s",
            written,
            "; ".join(lines),
        )
        return None
    shown = "\n".join(f"  - {line}" for line in lines)
    return (
        f"error: refusing to start: the publishers' dispatcher is configured differently "
        f"from this worker ({written}):\n{shown}\n"
        f"Run the worker with the application's own dispatcher: webhook-dispatch worker "
        f"--app package.module:dispatcher (or set ${APP_ENV})."
    )


def _startup_line(dispatcher: Dispatcher, args: argparse.Namespace) -> str:
    options = dispatcher.options
    retention = "off" if options.retention is None else _age(options.retention)
    guard = (
        "off (private networks allowed)"
        if options.allow_private_networks
        else "on"
        + (
            f", allowed {len(options.allowed_networks)} networks"
            if options.allowed_networks
            else ""
        )
    )
    spec = _app_spec(args)
    store = f"app {spec}, {dispatcher.store!r}" if spec else redact_store_url(_store_url(args))
    return (
        f"webhook-dispatch worker {__version__}: store {store}, "
        f"concurrency {options.concurrency}, lease {_age(options.lease)}, grace on stop "
        f"{'each attempt until its timeout' if options.grace is None else _span(options.grace)}, "
        f"retry {_describe_retry(options.retry)}, network guard {guard}, retention "
        f"{retention}, secrets kept unencrypted in the store, log level {args.log_level} "
        "(Ctrl-C or SIGTERM stops it)"
    )


class _ProgressLog:
    """While the worker runs, log every ``every`` seconds (at INFO) what it did since the
    last line, and where the store stands: attempts and their rate, delivered, retrying
    and given up; pending, in flight, and the oldest pending delivery's age."""

    def __init__(self, dispatcher: Dispatcher, every: float) -> None:
        self._dispatcher = dispatcher
        self._every = every
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-log", daemon=True)

    def __enter__(self) -> _ProgressLog:
        if self._every > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        last, since = self._dispatcher.attempt_counts(), time.monotonic()
        while not self._stopped.wait(self._every):
            counts, now = self._dispatcher.attempt_counts(), time.monotonic()
            try:
                self.report({s: counts[s] - last.get(s, 0) for s in counts}, now - since)
            except WebhookDispatchError as exc:  # the store is down: the worker says so too
                logger.warning("progress: cannot read the store's counts: %s", exc)
            last, since = counts, now

    def report(self, made: Mapping[DeliveryStatus, int], seconds: float) -> None:
        attempts = sum(made.values())
        delivered = made[DeliveryStatus.SUCCEEDED]
        retrying = made[DeliveryStatus.PENDING]
        given_up = made[DeliveryStatus.FAILED] + made[DeliveryStatus.EXHAUSTED]
        stats = self._dispatcher.stats()
        oldest = stats.oldest_pending_age(self._dispatcher.clock.now())
        rate = attempts / seconds if seconds > 0 else 0.0
        logger.info(
            "progress: %d attempts in the last %s (%.1f/s): %d delivered, %d to retry, "
            "%d given up; now %d pending, %d in flight, oldest pending %s",
            attempts,
            _span(seconds),
            rate,
            delivered,
            retrying,
            given_up,
            stats.pending,
            stats.delivering,
            "-" if oldest is None else _span(oldest),
            extra={
                "attempts": attempts,
                "attempts_per_second": round(rate, 2),
                "delivered": delivered,
                "retrying": retrying,
                "given_up": given_up,
                "pending": stats.pending,
                "in_flight": stats.delivering,
                "oldest_pending_seconds": None if oldest is None else round(oldest, 1),
            },
        )


@contextlib.contextmanager
def _stopped_by_signals(dispatcher: Dispatcher) -> Iterator[None]:
    """SIGTERM and SIGINT: the first acts as Ctrl-C (`Dispatcher.run` then stops the
    worker gracefully, attempts in flight within the grace period); any later one
    interrupts the attempts still running at once, without raising (so a quick second
    signal never lands mid-shutdown). The previous handlers are put back after. SIGINT
    is set explicitly because shells start background jobs with it ignored. Set before
    the startup line is printed, so a signal sent on seeing it is never the default
    kill."""
    received = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        received += 1
        if received == 1:
            raise KeyboardInterrupt
        dispatcher.interrupt()

    in_main_thread = threading.current_thread() is threading.main_thread()
    stop_signals = (signal.SIGTERM, signal.SIGINT)
    previous = (
        {signum: signal.signal(signum, on_signal) for signum in stop_signals}
        if in_main_thread
        else {}
    )
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is not None:  # None: set outside Python, cannot be restored
                signal.signal(signum, handler)


# -- doctor -------------------------------------------------------------------------------
_DOCTOR_LOOKUPS = 16
"""Endpoint names `doctor` resolves at once."""
_DOCTOR_LOOKUP_TIMEOUT = 3.0
"""Seconds `doctor` waits for one name; a slower one counts as not resolving."""


@attrs.frozen
class _Check:
    """One finding of `doctor`: ``ok``, ``warning`` (works, but look) or ``problem``."""

    name: str
    status: str
    detail: str
    fix: str | None = None


def _cmd_doctor(args: argparse.Namespace) -> int:
    checks: list[_Check] = []
    try:
        with _open(args) as dispatcher:
            checks.append(
                _Check(
                    "store",
                    "ok",
                    f"{dispatcher.store!r} opened, schema version {SCHEMA_VERSION} (current)",
                )
            )
            checks += _doctor_store_file(args)
            checks += _doctor_policy(dispatcher)
            checks += _doctor_settings(dispatcher, args)
            checks += _doctor_endpoints(dispatcher)
            checks += _doctor_backlog(dispatcher)
    except _UsageError:
        raise
    except WebhookDispatchError as exc:
        checks.append(
            _Check(
                "store",
                "problem",
                str(exc),
                "check --store, --app or $WEBHOOK_DISPATCH_STORE, and that the database "
                "server runs",
            )
        )
    problems = sum(check.status == "problem" for check in checks)
    warnings = sum(check.status == "warning" for check in checks)
    if args.json:
        document = {"ok": problems == 0, "checks": [attrs.asdict(c) for c in checks]}
        print(json.dumps(document, indent=2))
    else:
        width = max(len(check.name) for check in checks)
        for check in checks:
            print(f"{check.status:<8} {check.name:<{width}}  {check.detail}")
            if check.fix:
                print(f"{'':<8} {'':<{width}}  fix: {check.fix}")
        print(f"doctor: {_plural(problems, 'problem')}, {_plural(warnings, 'warning')}")
    return 1 if problems else 0


def _doctor_store_file(args: argparse.Namespace) -> list[_Check]:
    """A SQLite file others may read exposes every endpoint's secret."""
    if _app_spec(args) is not None:
        return []
    url = _store_url(args)
    if url.partition("://")[0].lower() != "sqlite":
        return []
    path = SQLiteStore.path_of(url)
    if path == ":memory:":
        return []
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        return [
            _Check(
                "store file",
                "problem",
                f"{path} is readable or writable by others (mode {mode:o}); it holds every "
                "endpoint's signing secret",
                f"chmod 600 {path}",
            )
        ]
    return [_Check("store file", "ok", f"{path} is its owner's only (mode {mode:o})")]


def _doctor_policy(dispatcher: Dispatcher) -> list[_Check]:
    options = dispatcher.options
    if options.allow_private_networks:
        guard = _Check(
            "network guard",
            "warning",
            "off: endpoints may reach loopback, private and cloud-metadata addresses",
            "allow private networks only for local testing; open chosen ranges with "
            "allowed_networks=[...] instead",
        )
    else:
        opened = ", ".join(str(network) for network in options.allowed_networks)
        guard = _Check(
            "network guard",
            "ok",
            "on: loopback, private, link-local, CGNAT and reserved addresses refused"
            + (f"; allowed: {opened}" if opened else ""),
        )
    secrets = _Check(
        "secrets",
        "warning",
        "signing secrets are kept unencrypted in the store (this version has no "
        "encryption at rest)",
        "let only the application and its workers read the store (file mode 600, a "
        "database role of its own)",
    )
    return [guard, secrets]


def _doctor_settings(dispatcher: Dispatcher, args: argparse.Namespace) -> list[_Check]:
    publishers = _settings.read(dispatcher.store)
    if publishers is None:
        return [_Check("settings", "ok", "no publisher has written its settings yet")]
    lines = _settings.differences(
        publishers.settings, _settings.delivery_settings(dispatcher.options)
    )
    if not lines:
        return [_Check("settings", "ok", "this configuration matches the publishers'")]
    written = f"written {_iso(publishers.written_at)} by {publishers.written_by}"
    with_app = _app_spec(args) is not None
    return [
        _Check(
            "settings",
            "warning" if with_app else "problem",
            f"differs from the publishers' ({written}): " + "; ".join(lines),
            "run the worker with the application's dispatcher (--app package.module:name)"
            if not with_app
            else "deploy the same version everywhere",
        )
    ]


def _doctor_endpoints(dispatcher: Dispatcher) -> list[_Check]:
    """Every enabled endpoint's host, resolved here and judged by the network guard."""
    policy = dispatcher.options.network_policy
    enabled = [s for s in every(dispatcher.subscriptions) if s.enabled]
    with concurrent.futures.ThreadPoolExecutor(_DOCTOR_LOOKUPS) as pool:
        verdicts = list(pool.map(lambda s: _judge_endpoint(s, policy), enabled))
    found = [check for check in verdicts if check is not None]
    if not found:
        return [_Check("endpoints", "ok", f"{_plural(len(enabled), 'enabled endpoint')} reachable")]
    return found


def _judge_endpoint(subscription: Subscription, policy: NetworkPolicy) -> _Check | None:
    """None when the guard lets ``subscription``'s URL through from here."""
    name = f"endpoint {subscription.id}"
    parts = urllib.parse.urlsplit(subscription.url)
    host = parts.hostname or ""
    allow = (
        "allow_private_networks=True (--allow-private-networks) or allowed_networks=[...] "
        "if it is yours, else update or disable the endpoint"
    )
    reason = policy.check_scheme(parts.scheme)
    if reason is not None:
        return _Check(name, "problem", f"{subscription.url}: {reason}", "use an https URL")
    literal = parse_host_literal(host)
    if literal is not None:
        addresses: Sequence[str] = [str(literal)]
    else:
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            addresses = lookup_within(host, port, timeout=_DOCTOR_LOOKUP_TIMEOUT)
        except OSError as exc:
            return _Check(
                name,
                "warning",
                f"{subscription.url}: {host} does not resolve from here ({exc})",
                "check the name, or run doctor where the worker runs",
            )
    try:
        judge_addresses(host, addresses, policy)  # the guard's own rule
    except BlockedAddress as blocked:
        shown = ", ".join(f"{address} ({why})" for address, why in blocked.refused[:4])
        return _Check(name, "problem", f"{subscription.url}: refused by the guard: {shown}", allow)
    return None


def _doctor_backlog(dispatcher: Dispatcher) -> list[_Check]:
    stats = dispatcher.stats()
    checks = []
    if stats.disabled_subscriptions:
        checks.append(
            _Check(
                "disabled",
                "warning",
                f"{_plural(stats.disabled_subscriptions, 'endpoint')} disabled; their "
                "deliveries are held",
                "webhook-dispatch subscriptions list, then subscriptions enable ID",
            )
        )
    age = stats.oldest_pending_age(dispatcher.clock.now())
    if age is not None and age > 3600:
        checks.append(
            _Check(
                "backlog",
                "warning",
                f"{_plural(stats.pending, 'delivery', 'deliveries')} pending, the oldest for "
                f"{_span(age)}",
                "check that a worker runs (webhook-dispatch worker --app ...)",
            )
        )
    else:
        checks.append(
            _Check("backlog", "ok", f"{_plural(stats.pending, 'delivery', 'deliveries')} pending")
        )
    return checks


# -- demo ------------------------------------------------------------------------------------
@attrs.frozen
class _Endpoint:
    name: str
    script: tuple[int, ...]
    event_types: tuple[str, ...]
    description: str


_DEMO_ENDPOINTS = (
    _Endpoint("healthy", (200,), ("*",), "always 200"),
    _Endpoint("flaky", (503, 503, 200), ("invoice.*",), "503, 503, then 200"),
    _Endpoint("gone", (410,), ("order.shipped",), "410 Gone"),
)
_DEMO_EVENTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("order.created", {"order_id": "ord_1001", "total": 4200}),
    ("order.created", {"order_id": "ord_1002", "total": 1300}),
    ("invoice.paid", {"invoice_id": "inv_2001", "order_id": "ord_1001"}),
    ("order.shipped", {"order_id": "ord_1001", "carrier": "ups"}),
)


def _attempt_outcome(attempt: Attempt, following: Attempt | None, delivery: Delivery) -> str:
    if attempt.succeeded:
        return "delivered"
    if following is not None:
        gap = (following.started_at - attempt.started_at).total_seconds()
        return f"retry in {gap:.1f}s"
    if delivery.status is DeliveryStatus.PENDING:
        return "retry pending"
    if attempt.status_code == 410:
        return "failed, subscription disabled"
    return str(delivery.status.value)


def _demo_log(
    attempts: Sequence[Attempt],
    deliveries: dict[str, Delivery],
    names: dict[str, str],
    event_types: dict[str, str],
    started: datetime,
) -> list[str]:
    by_delivery: dict[str, list[Attempt]] = {}
    for attempt in attempts:
        by_delivery.setdefault(attempt.delivery_id, []).append(attempt)
    rows = []
    for attempt in sorted(attempts, key=lambda a: (a.started_at, a.id)):
        chain = by_delivery[attempt.delivery_id]
        position = chain.index(attempt)
        following = chain[position + 1] if position + 1 < len(chain) else None
        offset = (attempt.started_at - started).total_seconds()
        rows.append(
            (
                f"+{offset:.2f}s",
                event_types.get(attempt.message_id, "?"),
                names.get(attempt.subscription_id, attempt.subscription_id),
                attempt.number,
                _result(attempt.status_code, attempt.error_kind, attempt.error),
                f"{attempt.duration * 1000:.1f}",
                _attempt_outcome(attempt, following, deliveries[attempt.delivery_id]),
            )
        )
    headers = ("TIME", "EVENT", "ENDPOINT", "TRY", "RESULT", "MS", "OUTCOME")
    return format_table(headers, rows, right={3, 5}, indent="  ")


def _wait_until_settled(dispatcher: Dispatcher, deadline: float) -> bool:
    """Poll until no delivery is due or in flight (True), or the deadline passes (False)."""
    while time.monotonic() < deadline:
        if dispatcher.next_due_at() is None:
            return True
        time.sleep(0.05)
    return dispatcher.next_due_at() is None


def _cmd_demo(args: argparse.Namespace) -> int:
    temporary = None
    store: str | None = getattr(args, "store", None)  # not $WEBHOOK_DISPATCH_STORE: a demo
    if store is None:  # must not send its events to a real store's subscribers
        temporary = tempfile.mkdtemp(prefix="webhook-dispatch-demo-")
        store = "sqlite:///" + (Path(temporary) / "demo.db").as_posix()
    try:
        with LoopbackReceiver() as receiver:
            return _run_demo(store, receiver, keep_hint=temporary is None)
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


def _run_demo(store: str, receiver: LoopbackReceiver, *, keep_hint: bool) -> int:
    retry = RetryPolicy.fixed(_DEMO_RETRY, jitter=0.0)
    # The demo's receiver is on 127.0.0.1, which the network guard refuses by default.
    with Dispatcher(store, retry=retry, allow_private_networks=True) as dispatcher:
        existing = dispatcher.stats().subscriptions
        if existing:
            raise ConfigurationError(
                f"the demo needs a store without subscriptions (it would send its events to "
                f"them); {redact_store_url(store)} has {existing}"
            )
        names: dict[str, str] = {}
        subscriptions: dict[str, Subscription] = {}
        for endpoint in _DEMO_ENDPOINTS:
            secret = generate_secret()
            url = receiver.route(f"/{endpoint.name}", endpoint.script, secret=secret)
            subscription = dispatcher.subscribe(
                url, event_types=endpoint.event_types, secret=secret
            )
            names[subscription.id] = endpoint.name
            subscriptions[endpoint.name] = subscription

        print(f"webhook-dispatch demo: store {redact_store_url(store)}")
        print(f"  receiver {receiver.url('')} (verifies every signature)")
        for endpoint in _DEMO_ENDPOINTS:
            print(
                f"  endpoint {endpoint.name:<8} {endpoint.description:<19} "
                f"events: {', '.join(endpoint.event_types)}"
            )
        print(f"  retry schedule: {', '.join(f'{d:g}s' for d in _DEMO_RETRY)} (no jitter)")

        started = dispatcher.clock.now()
        clock_start = time.monotonic()
        messages = [dispatcher.publish(kind, payload) for kind, payload in _DEMO_EVENTS]
        print(f"published {len(messages)} events: {', '.join(m.event_type for m in messages)}")
        dispatcher.start()
        settled = _wait_until_settled(dispatcher, clock_start + _DEMO_DEADLINE)
        dispatcher.stop()
        elapsed = time.monotonic() - clock_start

        attempts = [a for m in messages for a in dispatcher.attempts(m.id)]
        deliveries = {d.id: d for m in messages for d in dispatcher.deliveries(message_id=m.id)}
        gone = dispatcher.get_subscription(subscriptions["gone"].id)

    event_types = {m.id: m.event_type for m in messages}
    print()
    print("delivery log (time since publish)")
    for line in _demo_log(attempts, deliveries, names, event_types, started):
        print(line)

    print()
    print("summary")
    problems: list[str] = []
    for endpoint in _DEMO_ENDPOINTS:
        mine = [
            d for d in deliveries.values() if d.subscription_id == subscriptions[endpoint.name].id
        ]
        delivered = sum(d.status is DeliveryStatus.SUCCEEDED for d in mine)
        failed = sum(d.status in (DeliveryStatus.FAILED, DeliveryStatus.EXHAUSTED) for d in mine)
        tries = sum(d.attempt_count for d in mine)
        other = len(mine) - delivered - failed
        extra = f", {other} pending" if other else ""
        print(
            f"  {endpoint.name:<8} {delivered} delivered, {failed} failed{extra} "
            f"({_plural(tries, 'attempt')})"
        )
        if endpoint.name != "gone" and delivered != len(mine):
            problems.append(f"{endpoint.name}: {delivered} of {len(mine)} delivered")

    verified = sum(r.verified is True for r in receiver.received)
    received = len(receiver.received)
    print(f"signatures verified by receiver: {verified}/{received}")
    if verified != received or received != len(attempts) or not attempts:
        problems.append(
            f"receiver verified {verified} of {received} requests "
            f"({len(attempts)} attempts recorded)"
        )
    if gone.enabled:
        print("subscription 'gone' still enabled")
        problems.append("subscription 'gone' was not disabled after 410 Gone")
    else:
        print(f"subscription 'gone' disabled: {gone.disabled_reason}")
    if not settled:
        problems.append(f"deliveries still pending after {_DEMO_DEADLINE:g} s")

    if keep_hint:
        print(f"inspect: webhook-dispatch deliveries list --store {redact_store_url(store)}")
    if problems:
        print(f"demo FAILED: {'; '.join(problems)}", file=sys.stderr)
        return 1
    print(f"ok: every expected outcome happened in {elapsed:.1f} s")
    return 0


# -- parser ---------------------------------------------------------------------------------
def _store_option(parser: argparse.ArgumentParser, help_text: str | None = None) -> None:
    # SUPPRESS: given before or after the command, one value wins and no default hides it.
    parser.add_argument(
        "--store",
        default=argparse.SUPPRESS,
        metavar="URL",
        help=help_text or f"store URL (default: ${STORE_ENV}, else {DEFAULT_STORE})",
    )


def _app_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--app",
        default=argparse.SUPPRESS,
        metavar="MODULE:NAME",
        help=f"the application's Dispatcher (or a function returning one), loaded with its "
        f"store and every option, e.g. mypkg.webhooks:dispatcher (default: ${APP_ENV})",
    )


def _store_url(args: argparse.Namespace) -> str:
    given: str | None = getattr(args, "store", None)
    return given or os.environ.get(STORE_ENV) or DEFAULT_STORE


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON array instead of a table")


def _refuse_mixed_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--refuse-mixed-answers",
        action="store_true",
        help="refuse a host name if any of its addresses is refused (refuse_mixed_answers)",
    )


def _result_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print what was done as one JSON object"
    )


def _window_options(parser: argparse.ArgumentParser) -> None:
    """``--since`` (required) and ``--until``: the time window of messages to re-send."""
    parser.add_argument(
        "--since",
        type=_moment,
        required=True,
        metavar="WHEN",
        help="start of the window: 30m, 2h, 7d ago, or an ISO 8601 time (UTC if no offset)",
    )
    parser.add_argument(
        "--until", type=_moment, metavar="WHEN", help="end of the window (default: now)"
    )


def _command(
    subparsers: Any, name: str, handler: Handler, help_text: str, *, store: bool = True
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help_text, description=help_text
    )
    parser.set_defaults(handler=handler)
    if store:
        _store_option(parser)
        _app_option(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``webhook-dispatch`` argument parser, every subcommand included."""
    parser = argparse.ArgumentParser(
        prog="webhook-dispatch",
        description="Send webhooks: run the demo, a worker, or inspect and repair a store.",
    )
    parser.add_argument("--version", action="version", version=f"webhook-dispatch {__version__}")
    _store_option(parser)
    _app_option(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = _command(
        commands,
        "demo",
        _cmd_demo,
        "deliver a few events to a local receiver and print the delivery log",
        store=False,
    )
    _store_option(demo, "store URL (default: a SQLite file in a temporary folder)")

    worker = _command(commands, "worker", _cmd_worker, "deliver from a store until stopped")
    worker.add_argument(
        "--concurrency",
        type=_positive,
        metavar="N",
        help="attempts in flight (default: the application's setting with --app, else 64)",
    )
    worker.add_argument(
        "--allow-private-networks",
        action="store_true",
        help="let endpoints on loopback and private addresses be reached",
    )
    _refuse_mixed_option(worker)
    worker.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="info (default): retries and blocked endpoints; warning: given-up deliveries "
        "and disabled endpoints only; debug: every attempt",
    )
    worker.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="json: one JSON object per line, with the attempt's fields",
    )
    worker.add_argument(
        "--lease",
        type=_positive_seconds,
        metavar="SECONDS",
        help="how long a claimed delivery stays reserved for this worker (default 60)",
    )
    worker.add_argument(
        "--poll-interval",
        type=_positive_seconds,
        metavar="SECONDS",
        help="how often an idle worker looks for work from other processes (default 1)",
    )
    worker.add_argument(
        "--grace",
        type=_seconds,
        metavar="SECONDS",
        help="on SIGTERM, how long attempts in flight may run before they are interrupted "
        "and due again at once (default: each until its own timeout; a second signal "
        "interrupts them at once)",
    )
    worker.add_argument(
        "--progress-every",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="log a progress line this often, at info (default 60; 0: never)",
    )

    subscriptions = commands.add_parser(
        "subscriptions", help="list, add, disable, enable or remove endpoints"
    )
    actions = subscriptions.add_subparsers(dest="action", metavar="ACTION", required=True)
    list_subscriptions = _command(actions, "list", _cmd_subscriptions_list, "list subscriptions")
    _tenant_option(list_subscriptions)
    _page_options(list_subscriptions)
    _json_option(list_subscriptions)
    add = _command(actions, "add", _cmd_subscriptions_add, "subscribe an endpoint")
    add.add_argument("url", help="the endpoint URL (http or https)")
    _tenant_option(add, "the tenant (customer) the endpoint belongs to")
    add.add_argument(
        "--event-type",
        action="append",
        metavar="PATTERN",
        help="event type or pattern (order.created, order.*); repeatable; default: every event",
    )
    add.add_argument(
        "--header",
        action="append",
        type=_header,
        metavar="'NAME: VALUE'",
        help="a header sent with every request; repeatable",
    )
    add.add_argument(
        "--secret", help="signing secret (whsec_...); '-' reads it from stdin; default: generated"
    )
    add.add_argument(
        "--signature",
        choices=signer_names(),
        default="standard",
        help="signature scheme (default: standard, i.e. Standard Webhooks v1)",
    )
    add.add_argument(
        "--allow-private-networks",
        action="store_true",
        help="accept an endpoint on a loopback or private IP address",
    )
    _refuse_mixed_option(add)
    add.add_argument(
        "--no-resolve-host",
        dest="resolve_host",
        action="store_false",
        help="do not refuse a host name that resolves here to a loopback or private "
        "address (it resolves otherwise where the worker runs)",
    )
    add.add_argument(
        "--rate-limit",
        type=float,
        metavar="PER_SECOND",
        help="most requests per second to this endpoint (per worker process)",
    )
    add.add_argument(
        "--max-in-flight", type=_positive, metavar="N", help="most attempts at once to it"
    )
    add.add_argument(
        "--ordered",
        action="store_true",
        help="deliver strictly in publish order, one at a time",
    )
    add.add_argument(
        "--body-format",
        choices=list(BODY_FORMATS),
        default="standard",
        help="standard (as published), raw (the payload alone), cloudevents (structured), "
        "cloudevents-binary (ce-* headers)",
    )
    add.add_argument("--event-source", metavar="URI", help="the CloudEvents source attribute")
    add.add_argument(
        "--filter",
        type=_json_object,
        metavar="JSON",
        help='payload filter, e.g. \'{"data": {"amount": {"$gte": 100}}}\' (docs/filters.md)',
    )
    disable = _command(actions, "disable", _cmd_subscriptions_disable, "stop deliveries")
    disable.add_argument("id", help="subscription id")
    disable.add_argument("--reason", default="disabled by operator", help="why (shown in lists)")
    enable = _command(actions, "enable", _cmd_subscriptions_enable, "resume deliveries")
    enable.add_argument("id", help="subscription id")
    remove = _command(actions, "remove", _cmd_subscriptions_remove, "delete a subscription")
    remove.add_argument("id", help="subscription id")
    for action in (add, disable, enable, remove):
        _result_option(action)

    stats = _command(
        commands,
        "stats",
        _cmd_stats,
        "pending deliveries, age of the oldest, disabled and failing subscriptions",
    )
    stats.add_argument("--json", action="store_true", help="print a JSON object")
    _tenant_option(stats, "only this tenant's deliveries and subscriptions")

    catalog = commands.add_parser("catalog", help="the event catalog: list it, export it")
    catalog_actions = catalog.add_subparsers(dest="action", metavar="ACTION", required=True)
    list_catalog = _command(catalog_actions, "list", _cmd_catalog_list, "event types by name")
    _json_option(list_catalog)
    export_catalog = _command(
        catalog_actions, "export", _cmd_catalog_export, "print an OpenAPI or AsyncAPI document"
    )
    export_catalog.add_argument("--format", choices=["openapi", "asyncapi"], default="openapi")
    export_catalog.add_argument("--title", default="Webhooks", help="the document's title")
    export_catalog.add_argument(
        "--api-version", default="1.0.0", help="the document's info.version"
    )

    tenants = commands.add_parser("tenants", help="list, show, set or delete tenants")
    tenant_actions = tenants.add_subparsers(dest="action", metavar="ACTION", required=True)
    list_tenants = _command(tenant_actions, "list", _cmd_tenants_list, "tenants with counts")
    _page_options(list_tenants)
    _json_option(list_tenants)
    show_tenant = _command(tenant_actions, "show", _cmd_tenants_show, "one tenant as JSON")
    show_tenant.add_argument("id", help="tenant id")
    set_tenant = _command(
        tenant_actions, "set", _cmd_tenants_set, "create a tenant or change its limits"
    )
    set_tenant.add_argument("id", help="tenant id")
    set_tenant.add_argument(
        "--rate-limit",
        type=float,
        metavar="PER_SECOND",
        help="requests/s to all its endpoints (0: none)",
    )
    set_tenant.add_argument(
        "--max-in-flight",
        type=int,
        metavar="N",
        help="attempts at once to all its endpoints (0: none)",
    )
    set_tenant.add_argument(
        "--max-subscriptions", type=int, metavar="N", help="endpoints it may have (0: no limit)"
    )
    set_tenant.add_argument(
        "--metadata", action="append", type=_metadata_item, metavar="KEY=VALUE", help="repeatable"
    )
    delete_tenant = _command(
        tenant_actions,
        "delete",
        _cmd_tenants_delete,
        "remove a tenant with its subscriptions, messages, deliveries and attempts",
    )
    delete_tenant.add_argument("id", help="tenant id")
    delete_tenant.add_argument("--yes", action="store_true", help="really delete it")
    _result_option(delete_tenant)

    messages = commands.add_parser("messages", help="list published messages")
    message_actions = messages.add_subparsers(dest="action", metavar="ACTION", required=True)
    list_messages = _command(message_actions, "list", _cmd_messages_list, "newest messages first")
    list_messages.add_argument("--event-type", metavar="TYPE", help="only this event type")
    _tenant_option(list_messages)
    _page_options(list_messages)
    _json_option(list_messages)

    deliveries = commands.add_parser("deliveries", help="list deliveries")
    delivery_actions = deliveries.add_subparsers(dest="action", metavar="ACTION", required=True)
    list_deliveries = _command(
        delivery_actions, "list", _cmd_deliveries_list, "deliveries, oldest first"
    )
    list_deliveries.add_argument(
        "--status", choices=[status.value for status in DeliveryStatus], help="only this status"
    )
    list_deliveries.add_argument("--subscription", metavar="ID", help="only this subscription")
    list_deliveries.add_argument("--message", metavar="ID", help="only this message")
    _tenant_option(list_deliveries)
    _page_options(list_deliveries)
    _json_option(list_deliveries)

    attempts = _command(commands, "attempts", _cmd_attempts, "every attempt made for a message")
    attempts.add_argument("message_id", help="message id (msg_...)")
    _json_option(attempts)

    retry = _command(commands, "retry", _cmd_retry, "make one manual attempt of a delivery")
    retry.add_argument("delivery_id", help="delivery id (dlv_...)")

    replay = _command(
        commands,
        "replay",
        _cmd_replay,
        "re-send a time window of messages to a subscription (succeeded and missed too)",
    )
    replay.add_argument("subscription_id", help="subscription id (sub_...)")
    _window_options(replay)
    replay.add_argument(
        "--status",
        action="append",
        choices=["succeeded", "failed", "exhausted", "cancelled", "missing"],
        help="only deliveries in this state (repeatable; missing: never delivered)",
    )
    resend = _command(commands, "resend", _cmd_resend, "send one message to a subscription again")
    resend.add_argument("message_id", help="message id (msg_...)")
    resend.add_argument("subscription_id", help="subscription id (sub_...)")

    recover = _command(
        commands,
        "recover",
        _cmd_recover,
        "re-send a subscription's failed and exhausted deliveries from a time window",
    )
    recover.add_argument("subscription_id", help="subscription id (sub_...)")
    _window_options(recover)

    purge = _command(
        commands, "purge", _cmd_purge, "delete finished messages with their deliveries, attempts"
    )
    purge.add_argument(
        "--older-than",
        type=_duration,
        default=timedelta(days=30),
        metavar="AGE",
        help="age of messages to delete: 12h, 30d, 1w (default: 30d)",
    )
    purge.add_argument("--dry-run", action="store_true", help="only say how many messages would go")
    purge.add_argument(
        "--yes", action="store_true", help="do not ask for confirmation on a terminal"
    )
    for action in (retry, replay, resend, recover, purge):
        _result_option(action)

    doctor = _command(
        commands,
        "doctor",
        _cmd_doctor,
        "check the store, the network guard, the settings and every endpoint; say what to fix",
    )
    doctor.add_argument(
        "--allow-private-networks",
        action="store_true",
        help="judge endpoints as a worker with this flag would",
    )
    _refuse_mixed_option(doctor)
    _result_option(doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``webhook-dispatch`` with ``argv`` (default: the process arguments); return the
    exit code: 0 success; 1 the command ran and failed (nothing found, the store
    unreachable, the demo's expectations unmet, the worker refused to start); 2 the
    command line is wrong (an unknown option, a bad value)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except _UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ConfigurationError as exc:  # a bad value given: a store URL, a filter, a header
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except WebhookDispatchError as exc:  # the command ran and failed: not found, store down
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
