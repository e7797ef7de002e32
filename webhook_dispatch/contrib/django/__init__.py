"""Django integration: a dispatcher configured from ``settings.WEBHOOK_DISPATCH`` whose
``publish()`` follows Django's transactions, plus the ``webhook_dispatch_worker`` command.

```python
# settings.py
INSTALLED_APPS = [..., "webhook_dispatch.contrib.django"]   # for the management commands
WEBHOOK_DISPATCH = {"STORE": "sqlite:///webhooks.db"}       # omit STORE on PostgreSQL

# views.py
from webhook_dispatch.contrib.django import dispatcher

with transaction.atomic():
    order = Order.objects.create(total=42)
    dispatcher.publish("order.created", {"id": order.pk})   # sent only if this commits
```

Inside ``atomic()`` an event takes effect only when the transaction commits: written in
the same transaction (the outbox) when the store lives in the Django database (its
PostgreSQL database, or its SQLite file), handed to ``transaction.on_commit`` otherwise.
A rolled-back view never sends anything.
"""

from __future__ import annotations

import atexit
import os
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any, cast

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from ...cli import DEFAULT_STORE
from ...dispatcher import Dispatcher, EventSpec
from ...errors import ConfigurationError, InvalidStoreURL
from ...models import Message
from ...stores.sqlite import SQLiteStore

__all__ = [
    "DjangoDispatcher",
    "build_dispatcher",
    "dispatcher",
    "get_dispatcher",
    "publish",
    "publish_many",
    "reset_dispatcher",
    "store_url",
]

_SETTINGS_KEYS = frozenset({"STORE", "DATABASE", "SCHEMA", "OUTBOX", "OPTIONS"})
# Connection parameters Django adds for its own use, meaningless to libpq.
_DJANGO_ONLY_PARAMS = frozenset(
    {"context", "cursor_factory", "prepare_threshold", "client_encoding", "pool"}
)


def _config() -> dict[str, Any]:
    config = getattr(django_settings, "WEBHOOK_DISPATCH", None) or {}
    if not isinstance(config, Mapping):
        raise ImproperlyConfigured("settings.WEBHOOK_DISPATCH must be a dict")
    unknown = sorted(set(config) - _SETTINGS_KEYS)
    if unknown:
        raise ImproperlyConfigured(
            f"settings.WEBHOOK_DISPATCH has unknown keys {unknown}; "
            f"it takes {sorted(_SETTINGS_KEYS)}"
        )
    options = config.get("OPTIONS") or {}
    if not isinstance(options, Mapping):
        raise ImproperlyConfigured(
            "settings.WEBHOOK_DISPATCH['OPTIONS'] must be a dict of Dispatcher keyword "
            "arguments, such as {'allow_private_networks': True}"
        )
    return {**config, "OPTIONS": dict(options)}


def _database_alias(config: Mapping[str, Any]) -> str:
    alias = config.get("DATABASE") or DEFAULT_DB_ALIAS
    if alias not in django_settings.DATABASES:
        raise ImproperlyConfigured(
            f"settings.WEBHOOK_DISPATCH['DATABASE'] is {alias!r}, not a key of settings.DATABASES"
        )
    return str(alias)


def _is_postgresql(alias: str) -> bool:
    return bool(connections[alias].vendor == "postgresql")


def _postgres_url(alias: str, schema: str) -> str:
    """A ``postgresql://`` store URL for the same database as Django's ``alias``."""
    params: dict[str, Any] = dict(connections[alias].get_connection_params())
    user = str(params.pop("user", "") or "")
    password = str(params.pop("password", "") or "")
    host = str(params.pop("host", "") or "")
    port = str(params.pop("port", "") or "")
    dbname = str(params.pop("dbname", "") or "")
    query = {
        key: str(value)
        for key, value in params.items()
        if key not in _DJANGO_ONLY_PARAMS and isinstance(value, (str, int))
    }
    netloc = ""
    if user:
        netloc = urllib.parse.quote(user, safe="")
        if password:
            netloc += ":" + urllib.parse.quote(password, safe="")
        netloc += "@"
    if host.startswith("/"):  # a Unix socket directory travels as a parameter
        query["host"] = host
    elif host:
        netloc += f"[{host}]" if ":" in host else host
    if port:
        if host.startswith("/") or not host:
            query["port"] = port
        else:
            netloc += f":{port}"
    query["schema"] = schema
    return urllib.parse.urlunsplit(
        ("postgresql", netloc, "/" + urllib.parse.quote(dbname), urllib.parse.urlencode(query), "")
    )


def store_url() -> str:
    """The store URL ``settings.WEBHOOK_DISPATCH`` configures.

    ``STORE`` when given; otherwise, when the ``DATABASE`` alias (default ``"default"``)
    is PostgreSQL, that same database in the schema ``SCHEMA`` (default
    ``"webhook_dispatch"``); otherwise ``sqlite:///webhooks.db`` in the current directory.
    """
    config = _config()
    store = config.get("STORE")
    if store is not None:
        if not isinstance(store, str):
            raise ImproperlyConfigured("settings.WEBHOOK_DISPATCH['STORE'] must be a store URL")
        return store
    alias = _database_alias(config)
    if _is_postgresql(alias):
        return _postgres_url(alias, str(config.get("SCHEMA") or "webhook_dispatch"))
    return DEFAULT_STORE


def _sqlite_file(alias: str) -> str | None:
    """The file of Django's SQLite database ``alias`` (None: not SQLite, or in memory)."""
    wrapper = connections[alias]
    if wrapper.vendor != "sqlite" or wrapper.is_in_memory_db():
        return None
    name = os.fspath(wrapper.settings_dict["NAME"])
    return None if name.startswith("file:") else name


def _same_sqlite_file(store: str, alias: str) -> str | None:
    """The store's file when ``store`` is a SQLite URL naming Django's database
    ``alias`` itself, else None."""
    if not store.lower().startswith("sqlite:"):
        return None
    try:
        path = SQLiteStore.path_of(store)
    except InvalidStoreURL:
        return None
    database = _sqlite_file(alias)
    if database is None or path == ":memory:":
        return None
    if os.path.realpath(path) == os.path.realpath(database):
        return path
    try:
        return path if os.path.samefile(path, database) else None
    except OSError:  # one of them does not exist yet
        return None


def _open_shared_file() -> None:
    """Add our tables to the Django database's SQLite file when ``STORE`` names it, so
    that plain store URLs (the command line) open it: they refuse a file holding only
    other tables."""
    shared = _same_sqlite_file(store_url(), _database_alias(_config()))
    if shared is not None:
        SQLiteStore(shared, shared=True).close()


def _uses_outbox(config: Mapping[str, Any]) -> bool:
    """Whether the store lives in the Django database, so publishing can join its
    transactions: ``OUTBOX`` when set, else true for a store derived from DATABASES
    and for a SQLite store in the Django database's own file."""
    outbox = config.get("OUTBOX")
    if outbox is not None:
        if not isinstance(outbox, bool):
            raise ImproperlyConfigured("settings.WEBHOOK_DISPATCH['OUTBOX'] must be True or False")
        return outbox
    alias = _database_alias(config)
    store = config.get("STORE")
    if store is None:
        return _is_postgresql(alias)
    return isinstance(store, str) and _same_sqlite_file(store, alias) is not None


class DjangoDispatcher(Dispatcher):
    """A `Dispatcher` whose `publish` and `publish_many` follow Django transactions.

    Outside ``transaction.atomic()`` they publish at once. Inside, the event takes
    effect only if the transaction commits: it is written in the transaction itself
    when the store is in that Django database (``outbox=True``: PostgreSQL with
    psycopg 3, or a SQLite store in the database's own file), and published from
    ``transaction.on_commit`` otherwise. Either way the payload is validated and the
    `Message` (with its id) returned immediately.

    ``database`` is the alias of the Django database the store lives in, or whose
    transactions to follow; ``using=`` on each call picks another. A SQLite store URL
    naming that database's file opens it with ``shared=True`` (our tables next to
    Django's).
    """

    def __init__(
        self,
        store: str = DEFAULT_STORE,
        *,
        database: str = DEFAULT_DB_ALIAS,
        outbox: bool = False,
        **options: Any,
    ) -> None:
        shared = _same_sqlite_file(store, database) if isinstance(store, str) else None
        # The Dispatcher closes only the stores it opens from a URL: this one is ours.
        self._shared_store = None if shared is None else SQLiteStore(shared, shared=True)
        try:
            super().__init__(self._shared_store or store, **options)
        except BaseException:
            if self._shared_store is not None:
                self._shared_store.close()
            raise
        self.database = database
        self.outbox = outbox

    def close(self) -> None:
        """Stop the worker, close connections and the store. Idempotent."""
        super().close()
        if self._shared_store is not None:
            self._shared_store.close()

    def __repr__(self) -> str:
        return f"DjangoDispatcher(store={self.store!r}, database={self.database!r})"

    def _outbox_connection(self, alias: str) -> Any:
        """Django's own database connection to write into, or None to use ``on_commit``."""
        if not self.outbox or alias != self.database:
            return None
        wrapper = connections[alias]
        if wrapper.vendor == "sqlite" and isinstance(self.store, SQLiteStore):
            # The store checks that it is its own file (ConfigurationError if not).
            wrapper.ensure_connection()
            return wrapper.connection
        if wrapper.vendor != "postgresql":
            return None
        wrapper.ensure_connection()
        raw = wrapper.connection
        # psycopg 3 only: with psycopg2 the store cannot share the connection.
        if type(raw).__module__.split(".")[0] != "psycopg":
            return None
        return raw

    def publish(
        self,
        event_type: str,
        payload: Any,
        *,
        idempotency_key: str | None = None,
        content_type: str | None = None,
        connection: Any = None,
        tenant: str | None = None,
        headers: Mapping[str, str] | None = None,
        using: str | None = None,
    ) -> Message:
        """Publish an event, or, inside ``atomic()``, arrange for it to be published if
        and only if the transaction commits. See `Dispatcher.publish` for the arguments;
        ``connection=`` given explicitly is used as it is."""
        alias = using or self.database
        wrapper = connections[alias]
        if connection is not None or not wrapper.in_atomic_block:
            return super().publish(
                event_type,
                payload,
                idempotency_key=idempotency_key,
                content_type=content_type,
                connection=connection,
                tenant=tenant,
                headers=headers,
            )
        raw = self._outbox_connection(alias)
        if raw is not None:
            return super().publish(
                event_type,
                payload,
                idempotency_key=idempotency_key,
                content_type=content_type,
                connection=raw,
                tenant=tenant,
                headers=headers,
            )
        message = self._core.new_message(
            event_type,
            payload,
            idempotency_key=idempotency_key,
            content_type=content_type,
            tenant=tenant,
            headers=headers,
        )
        transaction.on_commit(lambda: self._core.publish(message), using=alias)
        return message

    def publish_many(
        self,
        events: Iterable[EventSpec],
        *,
        connection: Any = None,
        using: str | None = None,
    ) -> list[Message]:
        """`publish` for several events, all or none; see `Dispatcher.publish_many`."""
        alias = using or self.database
        wrapper = connections[alias]
        if connection is not None or not wrapper.in_atomic_block:
            return super().publish_many(events, connection=connection)
        raw = self._outbox_connection(alias)
        if raw is not None:
            return super().publish_many(events, connection=raw)
        messages = self._core.messages_for(events)
        transaction.on_commit(lambda: self._core.publish_many(messages), using=alias)
        return messages


def build_dispatcher(**overrides: Any) -> DjangoDispatcher:
    """A new `DjangoDispatcher` from ``settings.WEBHOOK_DISPATCH``; ``overrides`` replace
    entries of its ``OPTIONS`` (Dispatcher keyword arguments). The caller closes it."""
    config = _config()
    options = {**config["OPTIONS"], **overrides}
    for reserved in ("store", "database", "outbox"):
        if reserved in options:
            raise ImproperlyConfigured(
                f"settings.WEBHOOK_DISPATCH['OPTIONS'] cannot set {reserved!r}; use the "
                f"{reserved.upper()} key"
            )
    try:
        return DjangoDispatcher(
            store_url(),
            database=_database_alias(config),
            outbox=_uses_outbox(config),
            **options,
        )
    except (TypeError, ConfigurationError) as exc:
        raise ImproperlyConfigured(f"settings.WEBHOOK_DISPATCH: {exc}") from exc


_lock = threading.Lock()
_instance: DjangoDispatcher | None = None


def get_dispatcher() -> DjangoDispatcher:
    """The process-wide `DjangoDispatcher`, built from settings on first use."""
    global _instance
    with _lock:
        if _instance is None:
            _instance = build_dispatcher()
        return _instance


def reset_dispatcher() -> None:
    """Close the process-wide dispatcher; the next use builds a new one from settings.

    Runs by itself when ``WEBHOOK_DISPATCH`` or ``DATABASES`` change under
    ``override_settings``, and at interpreter exit."""
    global _instance
    with _lock:
        instance, _instance = _instance, None
    if instance is not None:
        instance.close()


def publish(
    event_type: str,
    payload: Any,
    *,
    idempotency_key: str | None = None,
    content_type: str | None = None,
    connection: Any = None,
    tenant: str | None = None,
    using: str | None = None,
) -> Message:
    """`DjangoDispatcher.publish` on the process-wide dispatcher."""
    return get_dispatcher().publish(
        event_type,
        payload,
        idempotency_key=idempotency_key,
        content_type=content_type,
        connection=connection,
        tenant=tenant,
        using=using,
    )


def publish_many(
    events: Iterable[EventSpec], *, connection: Any = None, using: str | None = None
) -> list[Message]:
    """`DjangoDispatcher.publish_many` on the process-wide dispatcher."""
    return get_dispatcher().publish_many(events, connection=connection, using=using)


class _LazyDispatcher:
    """Stands for the process-wide dispatcher, built on first attribute access."""

    def __getattr__(self, name: str) -> Any:
        return getattr(get_dispatcher(), name)

    def __repr__(self) -> str:
        return f"<lazy {_instance!r}>" if _instance is not None else "<lazy DjangoDispatcher>"


dispatcher = cast(DjangoDispatcher, _LazyDispatcher())
"""The process-wide `DjangoDispatcher`, built from settings the first time it is used."""


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in ("WEBHOOK_DISPATCH", "DATABASES"):
        reset_dispatcher()


setting_changed.connect(_on_setting_changed, dispatch_uid="webhook_dispatch.reset")
atexit.register(reset_dispatcher)
