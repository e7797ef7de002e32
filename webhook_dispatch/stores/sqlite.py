"""The SQLite store: the durable embedded default (``store="sqlite:///webhooks.db"``).

One file, WAL mode, forward-only migrations; writers serialize on ``BEGIN IMMEDIATE`` so
several threads and several processes can share a file without double-leasing.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sqlite3
import sys
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from webhook_dispatch._redact import redact_store_url
from webhook_dispatch.errors import (
    ConfigurationError,
    InvalidStoreURL,
    NotFound,
    SchemaError,
    StoreError,
    StoreUnavailable,
)
from webhook_dispatch.health import AutoDisable, settle_health
from webhook_dispatch.models import DeliveryStatus, Message, Subscription, new_id
from webhook_dispatch.stores._core import (
    ATTEMPT_COLUMNS,
    DELIVERY_COLUMNS,
    MESSAGE_COLUMNS,
    SCHEMA_VERSION,
    SUBSCRIPTION_COLUMNS,
    UNFINISHED,
    DueRow,
    SQLStore,
    TextCodec,
    Walk,
    attempt_row,
    delivery,
    dumps,
    fetched_ahead,
    from_us,
    idempotency_keys,
    message,
    message_row,
    plan_publish,
    prefixed,
    subscription,
    tenant_key,
    to_us,
    walk_subscription,
)
from webhook_dispatch.stores.base import (
    RING_WINDOW,
    AttemptRecord,
    Claim,
    ClaimPlan,
    PublishResult,
    RecordResult,
    SubscriptionTurns,
    TenantGate,
    due_ring,
    share_round_robin,
)

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

_META = "webhook_dispatch_meta"
"""Named after us so a foreign database's own ``meta`` table is never mistaken for ours."""


# Each step moves the schema one version forward and runs inside the migration
# transaction. Never edit a released step: append a new one.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        f"CREATE TABLE {_META} (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
        f"INSERT INTO {_META} (key, value) VALUES ('schema_version', 0)",
        f"INSERT INTO {_META} (key, value) VALUES ('subscriptions_version', 0)",
        # seq columns alias the rowid: insertion order that VACUUM keeps.
        """CREATE TABLE subscriptions (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            url TEXT NOT NULL,
            event_types TEXT NOT NULL,
            secret TEXT NOT NULL,
            previous_secrets TEXT NOT NULL,
            headers TEXT NOT NULL,
            metadata TEXT NOT NULL,
            enabled INTEGER NOT NULL,
            disabled_reason TEXT,
            timeout REAL NOT NULL,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            -- Later per-subscription settings (signature scheme, auth, TLS, flow
            -- control) live in this JSON document, so adding one needs no migration.
            options TEXT NOT NULL DEFAULT '{}'
        )""",
        """CREATE TABLE messages (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            event_type TEXT NOT NULL,
            payload BLOB NOT NULL,
            content_type TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            idempotency_key TEXT UNIQUE
        )""",
        "CREATE INDEX messages_event_type ON messages (event_type)",
        "CREATE INDEX messages_created_at ON messages (created_at)",
        # No foreign key to subscriptions: a removed subscription's deliveries stay,
        # cancelled, as history.
        """CREATE TABLE deliveries (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
            subscription_id TEXT NOT NULL,
            status TEXT NOT NULL,
            attempt_count INTEGER NOT NULL,
            next_attempt_at INTEGER,
            next_trigger TEXT NOT NULL,
            lease_owner TEXT,
            lease_expires_at INTEGER,
            last_status_code INTEGER,
            last_error TEXT,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        )""",
        """CREATE INDEX deliveries_due ON deliveries (next_attempt_at)
            WHERE status = 'pending'""",
        """CREATE INDEX deliveries_lease ON deliveries (lease_expires_at)
            WHERE status = 'delivering'""",
        "CREATE INDEX deliveries_message ON deliveries (message_id)",
        "CREATE INDEX deliveries_subscription ON deliveries (subscription_id)",
        """CREATE TABLE attempts (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            delivery_id TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
            message_id TEXT NOT NULL,
            subscription_id TEXT NOT NULL,
            number INTEGER NOT NULL,
            trigger TEXT NOT NULL,
            started_at INTEGER NOT NULL,
            duration REAL NOT NULL,
            url TEXT NOT NULL,
            status_code INTEGER,
            response_body BLOB NOT NULL,
            response_headers TEXT NOT NULL,
            error_kind TEXT,
            error TEXT,
            webhook_timestamp INTEGER NOT NULL
        )""",
        "CREATE INDEX attempts_message ON attempts (message_id, started_at, number)",
        "CREATE INDEX attempts_delivery ON attempts (delivery_id, started_at, number)",
    ),
    (
        # Subscription health, written with every recorded attempt: real columns, so
        # recording never rewrites the options document.
        "ALTER TABLE subscriptions ADD COLUMN failing_since INTEGER",
        "ALTER TABLE subscriptions ADD COLUMN consecutive_failures INTEGER NOT NULL DEFAULT 0",
        # Claiming counts a subscription's attempts in flight and finds an ordered
        # subscription's oldest unfinished delivery: both from this small index.
        """CREATE INDEX deliveries_unfinished ON deliveries (subscription_id, seq)
            WHERE status IN ('pending', 'delivering')""",
    ),
    (
        # Only ordered subscriptions need their oldest unfinished delivery, so only
        # their deliveries are indexed for it, on columns a lease leaves alone: an
        # index over every subscription's open deliveries, keyed by subscription, had
        # a scattered page rewritten per subscription per commit (two thirds of the
        # pages a busy commit wrote). ``next_attempt_at`` is set exactly while a
        # delivery is unfinished (pending or delivering) and NULL once it is final;
        # ``ordered`` copies the subscription's setting while the delivery is open.
        "DROP INDEX deliveries_unfinished",
        "ALTER TABLE deliveries ADD COLUMN ordered INTEGER NOT NULL DEFAULT 0",
        f"UPDATE deliveries SET next_attempt_at = NULL "
        f"WHERE status NOT IN {UNFINISHED} AND next_attempt_at IS NOT NULL",
        f"UPDATE deliveries SET next_attempt_at = updated_at "
        f"WHERE status IN {UNFINISHED} AND next_attempt_at IS NULL",
        "UPDATE deliveries SET ordered = 1 WHERE next_attempt_at IS NOT NULL AND "
        "subscription_id IN (SELECT id FROM subscriptions "
        "WHERE json_extract(options, '$.ordered'))",
        """CREATE INDEX deliveries_ordered ON deliveries (subscription_id, seq)
            WHERE next_attempt_at IS NOT NULL AND ordered""",
        # A message's attempts are found through its deliveries (deliveries_message,
        # then attempts_delivery): one index fewer to write with every attempt.
        "DROP INDEX attempts_message",
    ),
    (
        # Headers as [[name, value], ...], as PostgreSQL has always kept them: one row
        # codec for both stores (and JSON objects keep no order in every database).
        "UPDATE subscriptions SET headers = COALESCE((SELECT json_group_array("
        "json_array(key, value)) FROM json_each(subscriptions.headers)), '[]') "
        "WHERE json_type(headers) = 'object'",
    ),
    (
        # Tenants. '' is "no tenant": NOT NULL columns keep the unique index on
        # (tenant, idempotency_key) whole, so a key is unique within each tenant.
        "ALTER TABLE subscriptions ADD COLUMN tenant TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX subscriptions_tenant ON subscriptions (tenant, seq)",
        # The key's UNIQUE column constraint cannot be dropped: the table is rebuilt
        # (foreign keys are off during migrations, so deliveries keep pointing at it).
        """CREATE TABLE messages_v5 (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            event_type TEXT NOT NULL,
            payload BLOB NOT NULL,
            content_type TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            idempotency_key TEXT,
            tenant TEXT NOT NULL DEFAULT ''
        )""",
        "INSERT INTO messages_v5 (seq, id, event_type, payload, content_type, created_at, "
        "idempotency_key) SELECT seq, id, event_type, payload, content_type, created_at, "
        "idempotency_key FROM messages",
        "DROP TABLE messages",
        "ALTER TABLE messages_v5 RENAME TO messages",
        "CREATE INDEX messages_event_type ON messages (event_type)",
        "CREATE INDEX messages_created_at ON messages (created_at)",
        "CREATE INDEX messages_tenant ON messages (tenant, seq)",
        "CREATE UNIQUE INDEX messages_idempotency ON messages (tenant, idempotency_key)",
        "ALTER TABLE deliveries ADD COLUMN tenant TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX deliveries_tenant ON deliveries (tenant, seq)",
        # Fair claiming walks each tenant's due deliveries in turn.
        """CREATE INDEX deliveries_tenant_due ON deliveries (tenant, next_attempt_at, seq)
            WHERE status = 'pending'""",
        """CREATE TABLE tenants (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            rate_limit REAL,
            max_in_flight INTEGER,
            max_subscriptions INTEGER,
            metadata TEXT NOT NULL DEFAULT '{}',
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            -- The tenant-wide rate limit's state: a GCRA theoretical arrival time (µs).
            rate_tat INTEGER NOT NULL DEFAULT 0,
            deleting INTEGER NOT NULL DEFAULT 0
        )""",
        # Which tenants each subscriptions_version touched: publishers reload only those.
        """CREATE TABLE subscription_changes (
            version INTEGER NOT NULL,
            tenant TEXT NOT NULL,
            PRIMARY KEY (version, tenant)
        ) WITHOUT ROWID""",
    ),
    (
        # Within a tenant, subscriptions take turns: each one's due deliveries in order,
        # and a skip through the tenant's subscriptions with unfinished deliveries.
        # Unfinished deliveries are those with a due time (pending and delivering
        # alike), so a claim, which changes only the status, writes nothing here; a walk
        # steps over the few in flight.
        """CREATE INDEX deliveries_subscription_due
            ON deliveries (tenant, subscription_id, next_attempt_at, seq)
            WHERE next_attempt_at IS NOT NULL""",
    ),
    (
        # Routing: a subscription's payload filter (JSON), a message's own headers
        # (JSON pairs), the request headers each attempt sent, and the event catalog.
        "ALTER TABLE subscriptions ADD COLUMN filter TEXT",
        # subscribe(key=): the application's own stable name of an endpoint, per tenant.
        "ALTER TABLE subscriptions ADD COLUMN key TEXT",
        "CREATE UNIQUE INDEX subscriptions_key ON subscriptions (tenant, key) "
        "WHERE key IS NOT NULL",
        "ALTER TABLE messages ADD COLUMN headers TEXT",
        # A test event (send_example): never replayed to other endpoints.
        "ALTER TABLE messages ADD COLUMN test INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE attempts ADD COLUMN request_headers TEXT",
        """CREATE TABLE event_types (
            seq INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            description TEXT NOT NULL DEFAULT '',
            schema TEXT,
            examples TEXT NOT NULL DEFAULT '[]',
            deprecated INTEGER NOT NULL DEFAULT 0,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        )""",
        # What publishers run with (delivery_settings), which a worker compares with its own.
        """CREATE TABLE settings (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at INTEGER NOT NULL
        ) WITHOUT ROWID""",
    ),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION

SETTING_WAIT = 60.0
"""Seconds `SQLiteStore.write_setting` waits for the file's write lock."""

_CHUNK = 500
"""Ids per ``IN (...)`` list: far below SQLite's oldest variable limit (999)."""

# Primary result codes (sqlite3.h) that mean "try again later".
_UNAVAILABLE_CODES = {5, 6, 10, 13}  # BUSY, LOCKED, IOERR, FULL
_UNAVAILABLE_TEXT = ("database is locked", "disk i/o error", "database or disk is full")
_NOT_OURS_CODES = {11, 26}  # CORRUPT, NOTADB
_CANTOPEN = 14

_SUBSCRIPTION_CACHE_SIZE = 4096
"""Decoded subscriptions a store keeps for claims (cleared whole when full)."""


class SQLiteStore(SQLStore):
    """A `Store` in one SQLite file: durable, shareable by threads and processes.

    ``path`` is a file path (created, readable by its owner only, when missing) or
    ``":memory:"``. ``busy_timeout`` is how many seconds a write waits for another
    writer before `StoreUnavailable` is raised. A file holding tables other than ours is
    refused, unless ``shared=True``: the file is also the application's own database
    (for `publish` with ``connection=``), and our tables are added next to its tables.
    """

    blocking = True
    atomic_round = True
    codec = TextCodec()
    transactional_outbox = True
    """`publish` and `publish_many` accept ``connection=``, a `sqlite3.Connection` to this
    store's file (see `publish_many`)."""

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0, shared: bool = False
    ) -> None:
        self._path = os.fspath(path)
        if not isinstance(self._path, str) or not self._path:
            raise InvalidStoreURL("SQLite store needs a file path (or ':memory:')")
        if "\x00" in self._path:
            raise InvalidStoreURL("SQLite store path contains a NUL character")
        self._shared = shared
        self._file = os.path.abspath(self._path)  # as opened, whatever the cwd later
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        # subscription id -> (its row when decoded, the Subscription)
        self._subscription_cache: dict[str, tuple[tuple[Any, ...], Subscription]] = {}
        # The last tenant the previous claim served first-pass: the next starts after it.
        self._ring_cursor: str | None = None
        # Where each tenant's subscription ring starts in the next claim.
        self._turns = SubscriptionTurns()
        if self._path != ":memory:":
            _check_path(self._path)
        with self._translate(opening=True):
            connection = sqlite3.connect(
                _file_uri(self._path),
                uri=True,  # ours, so a path that starts with "file:" is just a path
                timeout=busy_timeout,
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
                cached_statements=256,  # multi-row statements come in several sizes
                check_same_thread=False,  # shared by threads, serialized by self._lock
            )
        try:
            with self._translate(opening=True):
                self._prepare(connection, busy_timeout)
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        self._checkpointer: _Checkpointer | None = None
        if self._path != ":memory:":
            self._checkpointer = _Checkpointer(os.path.abspath(self._path), busy_timeout)
            # SQLite's own checkpoint in the committing thread becomes the backstop, for
            # a WAL the background one never catches up with.
            connection.execute(f"PRAGMA wal_autocheckpoint = {_BACKSTOP_PAGES}")

    @classmethod
    def from_url(cls, url: str, *, busy_timeout: float = 5.0) -> SQLiteStore:
        """Open the store a ``sqlite:///relative.db`` or ``sqlite:////abs/path.db`` URL names.

        ``sqlite:///:memory:`` gives a private in-memory database. Query strings are
        refused: there are no options to pass that way.
        """
        return cls(cls.path_of(url), busy_timeout=busy_timeout)

    @staticmethod
    def path_of(url: str) -> str:
        """The file path a ``sqlite:///`` URL names (`InvalidStoreURL` if it names none)."""
        scheme, sep, rest = url.partition("://")
        shown = redact_store_url(url)
        if not sep or scheme.lower() != "sqlite":
            raise InvalidStoreURL(
                f"not a SQLite store URL: {shown!r}; use 'sqlite:///path/to/file.db'"
            )
        if "?" in rest or "#" in rest:
            raise InvalidStoreURL(
                f"SQLite store URL {shown!r} has a query or fragment; none is supported"
            )
        if not rest.startswith("/"):
            raise InvalidStoreURL(
                f"SQLite store URL {shown!r} names a host; use three slashes and a relative "
                "path ('sqlite:///file.db') or four and an absolute one ('sqlite:////abs/file.db')"
            )
        path = rest[1:]
        if not path:
            raise InvalidStoreURL(f"SQLite store URL {shown!r} has no file path")
        return path

    @property
    def path(self) -> str:
        """The database file's path as given (or ``":memory:"``)."""
        return self._path

    def __repr__(self) -> str:
        return f"SQLiteStore({self._path!r})"

    # -- opening and migrating -----------------------------------------------------
    def _prepare(self, connection: sqlite3.Connection, busy_timeout: float) -> None:
        connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        # Inspect before changing anything: a foreign or newer file must stay untouched.
        self._schema_version(connection)
        if self._path != ":memory:":
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self._path}: cannot switch to WAL mode (got {mode!r})")
            # Without a limit a WAL that grew under load keeps its size for good.
            connection.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        # In WAL mode, NORMAL loses no committed transaction when the process crashes
        # (only an OS crash or power cut can drop the last commits), and saves an fsync
        # per commit.
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: another process may have migrated meanwhile.
            version = self._schema_version(connection)
            for steps in _MIGRATIONS[version:]:
                for statement in steps:
                    connection.execute(statement)
            if version < SCHEMA_VERSION:
                connection.execute(
                    f"UPDATE {_META} SET value = ? WHERE key = 'schema_version'",
                    (SCHEMA_VERSION,),
                )
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        # After migrating: a step may rebuild a table other tables point at.
        connection.execute("PRAGMA foreign_keys = ON")

    def _schema_version(self, connection: sqlite3.Connection) -> int:
        tables = {
            row[0]
            for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        }
        if _META not in tables:
            if tables and not self._shared:
                raise SchemaError(
                    f"{self._path}: not a webhook_dispatch database (it holds other tables: "
                    f"{', '.join(sorted(tables)[:5])}); use another file, or shared=True to "
                    "keep ours next to the application's",
                    path=self._path,
                )
            return 0
        row = connection.execute(
            f"SELECT value FROM {_META} WHERE key = 'schema_version'"
        ).fetchone()
        if row is None or not isinstance(row[0], int):
            raise SchemaError(f"{self._path}: schema version missing", path=self._path)
        version: int = row[0]
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"{self._path}: database schema version {version} is newer than this "
                f"webhook_dispatch supports ({SCHEMA_VERSION}); upgrade webhook_dispatch",
                path=self._path,
                found_version=version,
                supported_version=SCHEMA_VERSION,
            )
        return version

    # -- the one place sqlite3 errors are translated ------------------------------------
    @contextlib.contextmanager
    def _translate(self, *, opening: bool = False) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise _translate_error(exc, self._path, opening=opening) from exc

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._translate():
            yield self._open_connection()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. IMMEDIATE takes the file's write lock up front, so the
        reads inside see the latest commit and no other process writes in between."""
        with self._lock, self._translate():
            connection = self._open_connection()
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        connection.execute("ROLLBACK")
                raise
            if self._checkpointer is not None:
                self._checkpointer.committed()

    def write_setting(self, name: str, value: str, now: datetime) -> None:
        """See `Store.write_setting`. On a connection of its own, waiting up to
        `SETTING_WAIT` seconds for the write lock without holding this store: an
        application transaction that holds the lock (``publish(connection=...)``) then
        delays only this write, not every other call."""
        if self._path == ":memory:":
            super().write_setting(name, value, now)
            return
        with self._translate():
            connection = sqlite3.connect(
                _file_uri(self._path), uri=True, timeout=SETTING_WAIT, isolation_level=None
            )
            try:
                connection.execute(
                    "INSERT INTO settings (name, value, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
                    "updated_at = excluded.updated_at",
                    (name, value, self.codec.time(now)),
                )
            finally:
                connection.close()

    def _open_connection(self) -> sqlite3.Connection:
        if self._connection is None:
            raise StoreError(f"{self._path}: the store is closed", path=self._path)
        return self._connection

    # -- the dialect ---------------------------------------------------------------------
    def _sql(self, text: str) -> str:
        return text.replace("{schema}.", "")

    def _in(self, column: str, values: Sequence[Any]) -> tuple[str, Any]:
        # One JSON parameter: no statement-size limit, however many values.
        return f"{column} IN (SELECT value FROM json_each(?))", dumps(list(values))

    def _ordered_of(self, alias: str) -> str:
        return f"COALESCE(json_extract({alias}.options, '$.ordered'), 0)"

    # -- messages ----------------------------------------------------------------
    def publish(
        self,
        message: Message,
        subscription_ids: Sequence[str],
        now: datetime,
        *,
        connection: sqlite3.Connection | None = None,
    ) -> PublishResult:
        """Store a message and one pending delivery per subscription, in one transaction
        (or in the caller's, with ``connection=``: see `publish_many`)."""
        return self.publish_many([(message, subscription_ids)], now, connection=connection)[0]

    def publish_many(
        self,
        items: Sequence[tuple[Message, Sequence[str]]],
        now: datetime,
        *,
        connection: sqlite3.Connection | None = None,
    ) -> list[PublishResult]:
        """`publish` for a batch, in one transaction, results in input order.

        The idempotency check reads and inserts under the file's write lock (``BEGIN
        IMMEDIATE``), so concurrent publishers in other threads or processes cannot both
        create a message for one key; the unique index on the key is the backstop.

        With ``connection=`` (the caller's `sqlite3.Connection` to this store's file,
        `ConfigurationError` for any other file or ``:memory:``) the rows are written in
        that connection's transaction and nothing is committed: a worker sees them once
        the caller commits, and never if it rolls back. A connection in no transaction:
        with sqlite3's implicit transactions (``isolation_level`` a string, the default)
        this begins one (``BEGIN IMMEDIATE``) and leaves it open for the caller's
        ``commit()``; an autocommit connection (``isolation_level=None``,
        ``autocommit=True``) is refused with `ConfigurationError`. Either way a refused
        or failed publish writes nothing.
        """
        if not items:
            return []
        now_us = to_us(now)
        if connection is not None:
            return self._publish_in(connection, items, now_us)
        with self._writing() as db:
            return self._publish_rows(db, items, now_us)

    def _publish_in(
        self,
        connection: sqlite3.Connection,
        items: Sequence[tuple[Message, Sequence[str]]],
        now_us: int,
    ) -> list[PublishResult]:
        """`publish_many` in the caller's transaction, inside a savepoint: SQLite keeps
        the statements before a failed one, so a half-written publish is undone here."""
        with self._translate():
            begin = self._outbox_needs_begin(connection)
            if begin:
                connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute("SAVEPOINT webhook_dispatch_publish")
                try:
                    # A write first takes the file's write lock (as BEGIN IMMEDIATE does
                    # for our own transactions): the idempotency read sees the last commit.
                    connection.execute(f"UPDATE {_META} SET value = value WHERE 0")
                    results = self._publish_rows(connection, items, now_us)
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        connection.execute("ROLLBACK TO webhook_dispatch_publish")
                    raise
                finally:
                    with contextlib.suppress(sqlite3.Error):
                        connection.execute("RELEASE webhook_dispatch_publish")
            except BaseException:
                if begin and connection.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        connection.execute("ROLLBACK")
                raise
        return results

    def _outbox_needs_begin(self, connection: Any) -> bool:
        """Refuse a ``connection=`` this store cannot write through; True when it is in
        no transaction and sqlite3 would begin one implicitly (so we begin it)."""
        if not isinstance(connection, sqlite3.Connection):
            raise ConfigurationError(
                f"connection= takes a sqlite3.Connection for {self!r}, not "
                f"{type(connection).__module__}.{type(connection).__name__}"
            )
        if not self.is_store_file(connection):
            raise ConfigurationError(
                f"connection= must be a connection whose main database is this store's "
                f"file {self._path!r}, not {_main_file(connection) or 'an in-memory one'!r}: "
                "nothing was written"
            )
        if connection.in_transaction:
            return False
        if _autocommits(connection):
            raise ConfigurationError(
                "connection= joins the caller's open transaction, but this autocommit "
                "connection has none: execute 'BEGIN' first (Django: publish inside "
                "transaction.atomic())"
            )
        return True

    def is_store_file(self, connection: sqlite3.Connection) -> bool:
        """Whether ``connection``'s main database is this store's file (by
        ``PRAGMA database_list``, the same file however its path is spelled)."""
        if self._path == ":memory:":
            return False
        with self._translate():
            main = _main_file(connection)
        if not main:
            return False
        try:
            return os.path.samefile(main, self._file)
        except OSError:
            return False

    def _publish_rows(
        self,
        db: sqlite3.Connection,
        items: Sequence[tuple[Message, Sequence[str]]],
        now_us: int,
    ) -> list[PublishResult]:
        """The publish statements, in whichever transaction ``db`` is in."""
        stored: dict[tuple[str, str], Message] = {}
        keys = idempotency_keys(items)
        if keys:
            # CROSS JOIN: the few keys are the outer loop, each looked up in the
            # (tenant, idempotency_key) index.
            rows = db.execute(
                f"SELECT {prefixed('m', MESSAGE_COLUMNS)} FROM json_each(?) AS k "
                "CROSS JOIN messages AS m ON m.tenant = json_extract(k.value, '$[0]') "
                "AND m.idempotency_key = json_extract(k.value, '$[1]')",
                (dumps(keys),),
            )
            stored.update(((row[6], row[5]), message(self.codec, row)) for row in rows)
        results, new_messages = plan_publish(items, stored)
        if not new_messages:
            return results
        by_id = {m.id: ids for m, ids in items}
        deliveries = [
            (
                new_id("dlv"),
                m.id,
                subscription_id,
                now_us,
                now_us,
                now_us,
                0,
                tenant_key(m.tenant),
            )
            for m in new_messages
            for subscription_id in by_id[m.id]
        ]
        ordered = _require_subscriptions(db, {(row[2], row[7]) for row in deliveries})
        if ordered:
            deliveries = [(*row[:6], 1, row[7]) if row[2] in ordered else row for row in deliveries]
        db.executemany(
            f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [message_row(self.codec, m) for m in new_messages],
        )
        db.executemany(
            "INSERT INTO deliveries (id, message_id, subscription_id, status, "
            "attempt_count, next_attempt_at, next_trigger, created_at, updated_at, ordered, "
            "tenant) VALUES (?, ?, ?, 'pending', 0, ?, 'scheduled', ?, ?, ?, ?)",
            deliveries,
        )
        return results

    # -- deliveries --------------------------------------------------------------
    def claim_due(
        self,
        now: datetime,
        *,
        limit: int,
        lease_until: datetime,
        worker_id: str,
        default_max_in_flight: int | None = None,
        allowance: Mapping[str, int] | None = None,
        proven: Collection[str] | None = None,
    ) -> list[Claim]:
        """Lease up to ``limit`` due deliveries to ``worker_id``: expired leases first,
        then pending ones on enabled subscriptions, oldest due first, within each
        subscription's flow control (see `ClaimPlan`).

        Selecting and leasing happen in one ``BEGIN IMMEDIATE`` transaction, so two
        processes on one file never lease the same delivery, nor exceed a cap together.
        """
        if limit <= 0:
            return []
        with self._writing() as db:
            rows, messages, subscriptions = self._claim_rows(
                db, now, limit, lease_until, worker_id, default_max_in_flight, allowance, proven
            )
        return self._claims(rows, messages, subscriptions, now)

    def record_and_claim(
        self,
        records: Sequence[AttemptRecord],
        worker_id: str,
        now: datetime,
        *,
        auto_disable: AutoDisable | None = None,
        limit: int,
        lease_until: datetime,
        default_max_in_flight: int | None = None,
        allowance: Mapping[str, int] | None = None,
        proven: Collection[str] | None = None,
    ) -> tuple[RecordResult, list[Claim]]:
        """`record`, then `claim_due`, in one transaction: what the worker does after
        each batch of attempts, for one commit instead of two."""
        with self._writing() as db:
            result = (
                self._record(db, records, worker_id, auto_disable) if records else RecordResult()
            )
            if limit <= 0:
                return result, []
            rows, messages, subscriptions = self._claim_rows(
                db, now, limit, lease_until, worker_id, default_max_in_flight, allowance, proven
            )
        return result, self._claims(rows, messages, subscriptions, now)

    def _claim_rows(
        self,
        db: sqlite3.Connection,
        now: datetime,
        limit: int,
        lease_until: datetime,
        worker_id: str,
        default_max_in_flight: int | None,
        allowance: Mapping[str, int] | None,
        proven: Collection[str] | None = None,
    ) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        """Select and lease, inside the caller's write transaction: the delivery rows, and
        the rows of their messages and subscriptions by id."""
        now_us = to_us(now)
        rows = db.execute(
            # INDEXED BY: with the subscription test below, the planner would rather walk
            # every delivery of every subscription than the few expired leases.
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries INDEXED BY deliveries_lease "
            "WHERE status = 'delivering' AND lease_expires_at <= ? "
            # A deleted tenant's expired leases stay until its purge cancels them.
            "AND subscription_id IN (SELECT id FROM subscriptions) "
            "ORDER BY lease_expires_at LIMIT ?",
            (now_us, limit),
        ).fetchall()
        if len(rows) < limit:
            rows += self._plan_claim(
                db, now_us, limit, rows, default_max_in_flight, allowance, proven
            )
        if not rows:
            return [], {}, {}
        ids = [row[0] for row in rows]
        for chunk, marks in _chunks(ids):
            db.execute(
                "UPDATE deliveries SET status = 'delivering', lease_owner = ?, "
                f"lease_expires_at = ?, updated_at = ? WHERE id IN ({marks})",
                (worker_id, to_us(lease_until), now_us, *chunk),
            )
        messages: dict[str, Any] = {}
        for chunk, marks in _chunks(sorted({row[1] for row in rows})):
            messages.update(
                (row[0], row)
                for row in db.execute(
                    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id IN ({marks})", chunk
                )
            )
        subscriptions = _subscription_rows(db, {row[2] for row in rows})
        return rows, messages, subscriptions

    def _claims(
        self,
        rows: list[Any],
        messages: dict[str, Any],
        subscriptions: dict[str, Any],
        now: datetime,
    ) -> list[Claim]:
        """Claims from leased rows (outside the transaction: pure conversion)."""
        message_objects = {key: message(self.codec, row) for key, row in messages.items()}
        subscription_objects = {key: self._subscription(row) for key, row in subscriptions.items()}
        delivering = DeliveryStatus.DELIVERING
        return [
            Claim(
                delivery(self.codec, row, status=delivering, updated_at=now),
                message_objects[row[1]],
                subscription_objects[row[2]],
            )
            for row in rows
        ]

    def _subscription(self, row: Any) -> Subscription:
        """The subscription of this row, reused while its row is unchanged in every column
        (health and enabled included): decoding its JSON is most of a claim's Python work."""
        cached = self._subscription_cache.get(row[0])
        if cached is not None and cached[0] == row:
            return cached[1]
        decoded = subscription(self.codec, row)
        if len(self._subscription_cache) >= _SUBSCRIPTION_CACHE_SIZE:
            self._subscription_cache.clear()
        self._subscription_cache[row[0]] = (tuple(row), decoded)
        return decoded

    def _plan_claim(
        self,
        db: sqlite3.Connection,
        now_us: int,
        limit: int,
        reclaimed: list[Any],
        default_max_in_flight: int | None,
        allowance: Mapping[str, int] | None,
        proven: Collection[str] | None = None,
    ) -> list[Any]:
        """Due pending deliveries this claim may take: tenants take turns (round robin,
        `share_round_robin`), and within each tenant its subscriptions with due
        deliveries (`SubscriptionTurns`), each walked oldest due first: its first rows
        fetched for the whole turn order in one statement, then page by page."""
        (counts,) = db.execute(
            # INDEXED BY: left to itself the planner walks the subscription index to
            # group, scanning every delivery ever made instead of the few in flight.
            # One JSON row rather than a row per subscription (see _MAX_VARIABLES).
            "SELECT json_group_object(subscription_id, n) FROM ("
            "SELECT subscription_id, COUNT(*) AS n FROM deliveries INDEXED BY deliveries_lease "
            "WHERE status = 'delivering' AND lease_expires_at > ? GROUP BY subscription_id)",
            (now_us,),
        ).fetchone()
        in_flight: dict[str, int] = json.loads(counts)
        for row in reclaimed:
            in_flight[row[2]] = in_flight.get(row[2], 0) + 1
        plan = ClaimPlan(
            limit=limit - len(reclaimed),
            default_max_in_flight=default_max_in_flight,
            allowance=allowance,
            in_flight=in_flight,
            proven=proven,
        )
        order = self._ring(db, now_us, plan.limit)
        if not order:
            return []
        gate = self._tenant_gate(db, order, now_us, reclaimed)
        heads: dict[str, tuple[int, bool]] = {}  # ordered subscription -> (seq, due)
        walks: dict[str, Walk] = {}  # by subscription
        taken: list[Any] = []

        def ring(tenant: str, cursor: str | None, count: int) -> list[str]:
            return self._subscription_ring(db, tenant, cursor, count, now_us)

        def ahead(tenant: str, order: Sequence[str], quota: int) -> None:
            asked = fetched_ahead(order, quota)
            rows: dict[str, list[DueRow]] = {subscription_id: [] for subscription_id in order}
            for row in _due_rows(db, _DUE_AHEAD, [dumps(list(order)), tenant, now_us, asked]):
                rows[row.taken[2]].append(row)
            for subscription_id, found in rows.items():
                walks.setdefault(subscription_id, Walk()).fill(found, asked)

        def walk(tenant: str, subscription_id: str, quota: int) -> int:
            def fetch(after: tuple[Any, int] | None, size: int) -> list[DueRow]:
                sql, parameters = _DUE_PAGE, [tenant, subscription_id, now_us]
                if after is not None:
                    sql += "AND d.next_attempt_at >= ? AND (d.next_attempt_at > ? OR d.seq > ?) "
                    parameters += [after[0], after[0], after[1]]
                sql += "ORDER BY d.next_attempt_at, d.seq LIMIT ?)"
                return _due_rows(db, sql, [*parameters, size])

            def head() -> tuple[int, bool]:
                if subscription_id not in heads:
                    heads[subscription_id] = _ordered_head(db, subscription_id, now_us)
                return heads[subscription_id]

            state = walks.setdefault(subscription_id, Walk())
            got = walk_subscription(plan, subscription_id, state, quota, fetch, head)
            taken.extend(got)
            return len(got)

        take = self._turns.take(ring, walk, gate, ahead, plan.closed)
        self._ring_cursor = share_round_robin(order, plan.limit, take)
        if gate is not None:
            for tenant, tat in gate.tats().items():
                db.execute("UPDATE tenants SET rate_tat = ? WHERE id = ?", (tat, tenant))
        return taken

    def _ring(self, db: sqlite3.Connection, now_us: int, count: int) -> list[str]:
        """Up to ``count`` tenants with due deliveries in round-robin order (`due_ring`),
        found by skipping through the due index: a probe per tenant with pending
        deliveries, however many deliveries each has."""

        def scan(bound: str, inclusive: bool) -> list[tuple[str, bool]]:
            operator = ">=" if inclusive else ">"
            return [
                (tenant, bool(is_due))
                for tenant, is_due in db.execute(
                    _RING_SCAN.format(operator=operator), (bound, RING_WINDOW, now_us)
                )
            ]

        return due_ring(scan, self._ring_cursor, count)

    def _subscription_ring(
        self,
        db: sqlite3.Connection,
        tenant: str,
        cursor: str | None,
        count: int,
        now_us: int,
    ) -> list[str]:
        """`SubscriptionTurns`' ring: `due_ring` over this dialect's scan."""

        def scan(bound: str, inclusive: bool) -> list[tuple[str, bool]]:
            operator = ">=" if inclusive else ">"
            return [
                (subscription_id, bool(is_due))
                for subscription_id, is_due in db.execute(
                    _SUBSCRIPTION_RING_SCAN.format(operator=operator),
                    (tenant, bound, RING_WINDOW, now_us),
                )
            ]

        return due_ring(scan, cursor, count)

    def _tenant_gate(
        self, db: sqlite3.Connection, order: list[str], now_us: int, reclaimed: list[Any]
    ) -> TenantGate | None:
        """The tenant-wide limits of the tenants in this claim, or None when none has any
        (the common case costs one indexed lookup)."""
        named = [tenant for tenant in order if tenant]
        if not named:
            return None
        settings = {
            tenant: (max_in_flight, rate_limit, tat)
            for tenant, max_in_flight, rate_limit, tat in db.execute(
                "SELECT id, max_in_flight, rate_limit, rate_tat FROM tenants "
                "WHERE id IN (SELECT value FROM json_each(?)) "
                "AND (max_in_flight IS NOT NULL OR rate_limit IS NOT NULL)",
                (dumps(named),),
            )
        }
        if not settings:
            return None
        in_flight: dict[str, int] = {}
        if any(found[0] is not None for found in settings.values()):
            ids = [row[0] for row in reclaimed]
            in_flight = dict(
                db.execute(
                    "SELECT tenant, COUNT(*) FROM deliveries INDEXED BY deliveries_lease "
                    "WHERE status = 'delivering' AND (lease_expires_at > ? "
                    "OR id IN (SELECT value FROM json_each(?))) GROUP BY tenant",
                    (now_us, dumps(ids)),
                ).fetchall()
            )
        return TenantGate(settings, in_flight, now_us)

    def record(
        self,
        records: Sequence[AttemptRecord],
        worker_id: str,
        *,
        auto_disable: AutoDisable | None = None,
    ) -> RecordResult:
        """Write finished attempts and, where ``worker_id`` still holds the lease, the
        deliveries' next states (and subscription disabling), with the subscriptions'
        failure runs, in one transaction."""
        if not records:
            return RecordResult()
        with self._writing() as db:
            return self._record(db, records, worker_id, auto_disable)

    def _record(
        self,
        db: sqlite3.Connection,
        records: Sequence[AttemptRecord],
        worker_id: str,
        auto_disable: AutoDisable | None,
    ) -> RecordResult:
        """`SQLiteStore.record` inside the caller's write transaction."""
        _insert_rows(
            db,
            "attempts",
            ATTEMPT_COLUMNS,
            [attempt_row(self.codec, r.attempt) for r in records],
            # A deleted tenant's delivery is gone: its late attempt is dropped with it.
            where="column2 IN (SELECT id FROM deliveries)",
        )
        # Only a record asking to disable its subscription needs to know, before the
        # update, whether this worker still held the lease; the update checks it itself.
        asking = [record for record in records if record.disable_subscription is not None]
        held: set[str] = set()
        for chunk, marks in _chunks([record.attempt.delivery_id for record in asking]):
            held.update(
                row[0]
                for row in db.execute(
                    f"SELECT id FROM deliveries WHERE id IN ({marks}) "
                    "AND status = 'delivering' AND lease_owner = ?",
                    (*chunk, worker_id),
                )
            )
        _update_deliveries(
            db,
            worker_id,
            [
                (
                    d.id,
                    d.status.value,
                    d.attempt_count,
                    # NULL once final, set while unfinished: the ordered-deliveries index
                    # relies on it (a pending record without a time is due at once).
                    None if d.status.is_final else to_us(d.next_attempt_at or d.updated_at),
                    d.next_trigger.value,
                    d.last_status_code,
                    d.last_error,
                    to_us(d.updated_at),
                )
                for d in (record.delivery for record in records)
            ],
        )
        health: dict[str, tuple[bool, datetime | None, int]] = {}
        for chunk, marks in _chunks(sorted({record.attempt.subscription_id for record in records})):
            (found,) = db.execute(
                "SELECT json_group_array(json_array(id, enabled, failing_since, "
                f"consecutive_failures)) FROM subscriptions WHERE id IN ({marks})",
                chunk,
            ).fetchone()
            for key, enabled, since, count in json.loads(found):
                health[key] = (bool(enabled), None if since is None else from_us(since), count)
        changes = settle_health(
            (record.attempt for record in records),
            health,
            auto_disable,
            gone=(
                (record.attempt.subscription_id, record.disable_subscription)
                for record in asking
                if record.attempt.delivery_id in held and record.disable_subscription is not None
            ),
        )
        db.executemany(
            "UPDATE subscriptions SET failing_since = ?, consecutive_failures = ? WHERE id = ?",
            [
                (
                    None if u.failing_since is None else to_us(u.failing_since),
                    u.consecutive_failures,
                    u.subscription_id,
                )
                for u in changes.updates
            ],
        )
        if changes.disabled:
            db.executemany(
                "UPDATE subscriptions SET enabled = 0, disabled_reason = ?, updated_at = ? "
                "WHERE id = ? AND enabled",
                [(reason, to_us(at), key) for key, reason, at in changes.disabled],
            )
            self._bump_subscriptions_version(
                db, _tenants_of(db, [key for key, _, _ in changes.disabled])
            )
        return RecordResult(
            tuple((key, reason) for key, reason, _ in changes.disabled), changes.recovered
        )

    def next_due_at(self) -> datetime | None:
        """The earliest time a claim could take something: the due time of a pending
        delivery on an enabled subscription (for an ordered one, only its oldest
        unfinished delivery counts), or the earliest lease expiry; None if neither."""
        with self._reading() as db:
            lease, due, head = db.execute(
                "SELECT (SELECT MIN(lease_expires_at) FROM deliveries "
                "WHERE status = 'delivering'), "
                "(SELECT d.next_attempt_at FROM deliveries AS d "
                "CROSS JOIN subscriptions AS s ON s.id = d.subscription_id "
                "WHERE d.status = 'pending' AND d.next_attempt_at IS NOT NULL AND s.enabled "
                "AND NOT d.ordered ORDER BY d.next_attempt_at LIMIT 1), "
                # An ordered subscription's later deliveries wait for its head.
                "(SELECT MIN((SELECT CASE WHEN d.status = 'pending' THEN d.next_attempt_at END "
                "FROM deliveries AS d INDEXED BY deliveries_ordered "
                "WHERE d.subscription_id = s.id AND d.next_attempt_at IS NOT NULL AND d.ordered "
                f"AND d.status IN {UNFINISHED} ORDER BY d.seq LIMIT 1)) "
                "FROM subscriptions AS s WHERE s.enabled AND json_extract(s.options, '$.ordered'))"
            ).fetchone()
        found = [value for value in (lease, due, head) if value is not None]
        return from_us(min(found)) if found else None

    def close(self) -> None:
        """Close the connection (checkpointing the WAL into the file). Idempotent."""
        if self._checkpointer is not None:
            self._checkpointer.stop()
        with self._lock:
            connection, self._connection = self._connection, None
            if connection is None:
                return
            with self._translate():
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("PRAGMA optimize")
                if self._path != ":memory:":
                    # Leave the WAL small for the processes still using the file (the
                    # last connection to close removes it anyway); never wait long.
                    with contextlib.suppress(sqlite3.Error):
                        connection.execute(f"PRAGMA busy_timeout = {_TRUNCATE_WAIT_MS}")
                        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                connection.close()


_CHECKPOINT_EVERY = 8
"""Commits between two background checkpoints."""

WAL_SIZE_LIMIT = 16 * 1024 * 1024
"""Bytes of WAL file kept after a checkpoint (``journal_size_limit``), and the size past
which the background checkpoint truncates the WAL instead of only copying it back."""

_BACKSTOP_PAGES = WAL_SIZE_LIMIT // 4096
"""WAL size (pages of 4 KiB) past which a commit checkpoints in its own thread."""

_TRUNCATE_WAIT_MS = 100
"""How long a truncating checkpoint waits for readers and writers (milliseconds): it
holds up other writers meanwhile, so it never waits for long."""


class _Checkpointer:
    """Copies committed pages from the WAL back into the database file on a thread and
    connection of its own.

    SQLite's automatic checkpoint runs inside the commit that fills the WAL to 1,000
    pages: copying them and syncing the file took 10 to 27 ms of that commit (on the
    2-core benchmark machine), during which a worker's attempts ran out of claims. A
    passive checkpoint here takes no lock a writer needs, so commits go on meanwhile, and
    the automatic checkpoint that still comes finds nearly every page already copied.
    Without it (a closed store, a forked child) SQLite's own checkpoints still run."""

    def __init__(self, path: str, busy_timeout: float) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._wanted = threading.Event()
        self._commits = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()
        self.runs = 0
        """Checkpoints completed (for tests and curious operators)."""
        self.truncations = 0
        """Checkpoints that truncated a WAL grown past `WAL_SIZE_LIMIT`."""

    def committed(self) -> None:
        """Count a commit; every few, ask for a checkpoint (starting the thread once)."""
        self._commits += 1
        if self._commits % _CHECKPOINT_EVERY:
            return
        with self._guard:
            if self._stopping:
                return
            if self._thread is None:
                thread = threading.Thread(
                    target=self._run, name="webhook-dispatch-checkpoint", daemon=True
                )
                try:
                    thread.start()
                except RuntimeError:  # no thread now: SQLite's own checkpoints carry on
                    return
                self._thread = thread
        self._wanted.set()

    def _run(self) -> None:
        try:
            # mode=rw: never create a file (the store's is there, by an absolute path).
            connection = sqlite3.connect(
                pathlib.Path(self._path).as_uri() + "?mode=rw",
                uri=True,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error:
            return  # SQLite's own checkpoints carry on
        try:
            with contextlib.suppress(sqlite3.Error):
                connection.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
                connection.execute(f"PRAGMA busy_timeout = {_TRUNCATE_WAIT_MS}")
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._stopping:
                    return
                with contextlib.suppress(sqlite3.Error):  # busy or failing: next time
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.runs += 1
                    if _wal_size(self._path) > WAL_SIZE_LIMIT:
                        # Readers kept the passive checkpoint from resetting the WAL, so
                        # it grew: wait briefly for them, then start it over, truncated.
                        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                        self.truncations += 1
        finally:
            connection.close()

    def stop(self) -> None:
        """End the thread (idempotent); a checkpoint under way finishes first."""
        with self._guard:
            self._stopping = True
            thread = self._thread
        self._wanted.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()


# -- helpers ---------------------------------------------------------------------------
def _wal_size(path: str) -> int:
    """The size of the database's WAL file in bytes (0 when there is none)."""
    try:
        return os.path.getsize(path + "-wal")
    except OSError:
        return 0


def _file_uri(path: str) -> str:
    """``path`` as a ``file:`` URI SQLite cannot misread: a path spelled like a URI
    (``file:x.db?mode=memory``) names a file of that name, and ``:memory:`` stays."""
    if path == ":memory:":
        return "file::memory:"
    return pathlib.Path(os.path.abspath(path)).as_uri()


def _check_path(path: str) -> None:
    """Refuse unusable paths with a clear error, and create a missing file owner-only."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise InvalidStoreURL(
            f"SQLite store path {path!r}: directory {directory!r} does not exist", path=path
        )
    if os.path.isdir(path):
        raise InvalidStoreURL(f"SQLite store path {path!r} is a directory", path=path)
    if os.path.exists(path):
        if not os.access(path, os.R_OK | os.W_OK):
            raise InvalidStoreURL(
                f"SQLite store path {path!r} is not readable and writable", path=path
            )
        return
    # The file holds signing secrets; SQLite gives its -wal and -shm files the same mode.
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass  # created meanwhile by another process
    except OSError as exc:
        raise InvalidStoreURL(
            f"SQLite store path {path!r} cannot be created: {exc.strerror}", path=path
        ) from exc


def _main_file(connection: sqlite3.Connection) -> str:
    """The file of a connection's main database ('' when in memory or temporary)."""
    for row in connection.execute("PRAGMA database_list").fetchall():
        if row[1] == "main":
            return str(row[2] or "")
    return ""


def _autocommits(connection: sqlite3.Connection) -> bool:
    """Whether a connection outside a transaction runs each statement as its own:
    sqlite3 begins no transaction before a write by itself."""
    if sys.version_info >= (3, 12) and connection.autocommit != sqlite3.LEGACY_TRANSACTION_CONTROL:
        return bool(connection.autocommit)
    return connection.isolation_level is None


def _translate_error(
    exc: sqlite3.Error, path: str, *, opening: bool
) -> StoreError | InvalidStoreURL:
    code: int | None = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    primary = None if code is None else code & 0xFF
    text = str(exc)
    lowered = text.lower()
    if primary in _UNAVAILABLE_CODES or any(t in lowered for t in _UNAVAILABLE_TEXT):
        return StoreUnavailable(f"{path}: {text}; try again later", path=path)
    if primary in _NOT_OURS_CODES or "not a database" in lowered or "malformed" in lowered:
        return SchemaError(f"{path}: not a usable SQLite database ({text})", path=path)
    if opening and (primary == _CANTOPEN or "unable to open" in lowered):
        return InvalidStoreURL(f"{path}: cannot open the database file ({text})", path=path)
    return StoreError(f"{path}: {text}", path=path)


# One step per tenant with pending deliveries (the MIN of an index range is one probe),
# each asked whether it has any due now.
_RING_SCAN = """
WITH RECURSIVE ring (tenant) AS (
    SELECT (SELECT MIN(tenant) FROM deliveries WHERE status = 'pending' AND tenant {operator} ?)
    UNION ALL
    SELECT (SELECT MIN(d.tenant) FROM deliveries AS d
            WHERE d.status = 'pending' AND d.tenant > ring.tenant)
    FROM ring WHERE ring.tenant IS NOT NULL
    LIMIT ?
)
SELECT tenant, EXISTS (SELECT 1 FROM deliveries AS d
    WHERE d.status = 'pending' AND d.tenant = ring.tenant AND d.next_attempt_at <= ?)
FROM ring WHERE tenant IS NOT NULL
"""


# One claim's rows of a subscription's due deliveries, as one JSON array (one step of
# the statement, see _MAX_VARIABLES), its rows re-sorted in Python (the order of an
# aggregate's input is not promised); CROSS JOIN keeps deliveries as the outer loop,
# walking the subscription's due index in order. A disabled subscription's are held.
_DUE_ROW = (
    "SELECT json_group_array(json(r)) FROM (SELECT json_array("
    f"{prefixed('d', DELIVERY_COLUMNS)}, d.seq, "
    "json_extract(s.options, '$.max_in_flight'), "
    "json_extract(s.options, '$.ordered'), s.consecutive_failures) AS r "
)
_DUE_PAGE = (
    _DUE_ROW + "FROM deliveries AS d INDEXED BY deliveries_subscription_due "
    "CROSS JOIN subscriptions AS s ON s.id = d.subscription_id "
    "WHERE d.tenant = ? AND d.subscription_id = ? AND d.next_attempt_at <= ? "
    "AND d.status = 'pending' AND s.enabled "
)
# The first rows of each subscription in a tenant's turn order (?1, a JSON array).
_DUE_AHEAD = (
    _DUE_ROW + "FROM json_each(?1) AS j "
    "CROSS JOIN deliveries AS d ON d.seq IN ("
    "SELECT x.seq FROM deliveries AS x INDEXED BY deliveries_subscription_due "
    "WHERE x.tenant = ?2 AND x.subscription_id = j.value "
    "AND x.next_attempt_at <= ?3 AND x.status = 'pending' "
    "ORDER BY x.next_attempt_at, x.seq LIMIT ?4) "
    "CROSS JOIN subscriptions AS s ON s.id = d.subscription_id WHERE s.enabled)"
)
_DUE_WIDTH = len(DELIVERY_COLUMNS.split(","))


def _due_rows(db: sqlite3.Connection, sql: str, parameters: Sequence[Any]) -> list[DueRow]:
    (found,) = db.execute(sql, parameters).fetchone()
    width = _DUE_WIDTH
    rows = [
        DueRow(
            taken=tuple(row[:width]),
            due=row[5],
            seq=row[width],
            max_in_flight=row[width + 1],
            ordered=bool(row[width + 2]),
            failing=row[width + 3] > 0,
        )
        for row in json.loads(found)
    ]
    rows.sort(key=lambda row: (row.due, row.seq))
    return rows


# The same within one tenant (?1), over its subscriptions with unfinished deliveries,
# each asked whether it is enabled and has any pending and due now (?4).
_SUBSCRIPTION_RING_SCAN = """
WITH RECURSIVE ring (subscription_id) AS (
    SELECT (SELECT MIN(subscription_id) FROM deliveries INDEXED BY deliveries_subscription_due
            WHERE next_attempt_at IS NOT NULL AND tenant = ?1
                AND subscription_id {operator} ?2)
    UNION ALL
    SELECT (SELECT MIN(d.subscription_id)
            FROM deliveries AS d INDEXED BY deliveries_subscription_due
            WHERE d.next_attempt_at IS NOT NULL AND d.tenant = ?1
                AND d.subscription_id > ring.subscription_id)
    FROM ring WHERE ring.subscription_id IS NOT NULL
    LIMIT ?3
)
SELECT subscription_id,
    EXISTS (SELECT 1 FROM deliveries AS d INDEXED BY deliveries_subscription_due
            WHERE d.tenant = ?1 AND d.subscription_id = ring.subscription_id
                AND d.next_attempt_at <= ?4 AND d.status = 'pending')
    AND EXISTS (SELECT 1 FROM subscriptions AS s WHERE s.id = ring.subscription_id AND s.enabled)
FROM ring WHERE subscription_id IS NOT NULL
"""


def _ordered_head(db: sqlite3.Connection, subscription_id: str, now_us: int) -> tuple[int, bool]:
    """An ordered subscription's oldest unfinished delivery: its seq, and whether it is
    pending and due."""
    head = db.execute(
        "SELECT seq, status = 'pending' AND next_attempt_at <= ? "
        "FROM deliveries INDEXED BY deliveries_ordered "
        "WHERE subscription_id = ? AND next_attempt_at IS NOT NULL AND ordered "
        f"AND status IN {UNFINISHED} ORDER BY seq LIMIT 1",
        (now_us, subscription_id),
    ).fetchone()
    if head is None:  # its flag disagrees with the index: ask without it
        head = db.execute(
            "SELECT seq, status = 'pending' AND next_attempt_at <= ? "
            "FROM deliveries WHERE subscription_id = ? "
            f"AND next_attempt_at IS NOT NULL AND status IN {UNFINISHED} "
            "ORDER BY seq LIMIT 1",
            (now_us, subscription_id),
        ).fetchone()
    return head[0], bool(head[1])


def _tenants_of(db: sqlite3.Connection, subscription_ids: Sequence[str]) -> set[str | None]:
    """The tenants of these subscriptions."""
    return {
        row[0] or None
        for row in db.execute(
            "SELECT DISTINCT tenant FROM subscriptions "
            "WHERE id IN (SELECT value FROM json_each(?))",
            (dumps(list(subscription_ids)),),
        )
    }


def _chunks(values: Sequence[Any]) -> Iterator[tuple[Sequence[Any], str]]:
    """Slices of ``values`` short enough for one ``IN (...)``, with their placeholders."""
    for start in range(0, len(values), _CHUNK):
        chunk = values[start : start + _CHUNK]
        yield chunk, ", ".join("?" * len(chunk))


def _subscription_rows(db: sqlite3.Connection, ids: Iterable[str]) -> dict[str, tuple[Any, ...]]:
    """The subscriptions' rows by id, each chunk read as one JSON value. ``timeout``
    travels as 17 significant digits (JSON's REAL text keeps 15) and comes back exact."""
    columns = SUBSCRIPTION_COLUMNS.replace("timeout", "printf('%!.17g', timeout)")
    found: dict[str, tuple[Any, ...]] = {}
    for chunk, marks in _chunks(sorted(ids)):
        (rows,) = db.execute(
            f"SELECT json_group_array(json_array({columns})) FROM subscriptions "
            f"WHERE id IN ({marks})",
            chunk,
        ).fetchone()
        for row in json.loads(rows):
            row[9] = float(row[9])
            found[row[0]] = tuple(row)
    return found


def _require_subscriptions(db: sqlite3.Connection, wanted: set[tuple[str, str]]) -> set[str]:
    """Raise `NotFound` unless every ``(subscription id, tenant)`` names a stored
    subscription of that tenant (a message never reaches another tenant's endpoint, even
    from a stale match); return the ordered ones."""
    tenants = dict(wanted)
    known: set[str] = set()
    ordered: set[str] = set()
    for chunk, marks in _chunks(sorted(tenants)):
        for key, tenant, is_ordered in db.execute(
            f"SELECT id, tenant, json_extract(options, '$.ordered') FROM subscriptions "
            f"WHERE id IN ({marks})",
            chunk,
        ):
            if tenants[key] != tenant:
                raise NotFound(
                    f"no subscription with id {key!r} belongs to tenant {tenants[key] or None!r}"
                )
            known.add(key)
            if is_ordered:
                ordered.add(key)
    missing = sorted(set(tenants) - known)
    if missing:
        raise NotFound(f"no subscription with id {missing[0]!r}")
    return ordered


# Python's sqlite3 lets go of the GIL around every step of a statement, that is for
# every row written by executemany and every row read. The store's thread then has to win
# the GIL back from the busy event loop, once per row. So the hot statements write many
# rows in one statement and read many rows as one JSON value.
_MAX_VARIABLES = 999
"""The oldest SQLite's limit on ``?`` per statement."""

_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)
"""``UPDATE ... FROM`` (one statement for a batch of rows) exists from SQLite 3.33."""

_DELIVERY_UPDATE_COLUMNS = (
    "status",
    "attempt_count",
    "next_attempt_at",
    "next_trigger",
    "last_status_code",
    "last_error",
    "updated_at",
)


def _rows_per_statement(width: int) -> int:
    return max(1, min(64, _MAX_VARIABLES // width))


def _batches(rows: Sequence[tuple[Any, ...]], width: int) -> Iterator[tuple[list[Any], str]]:
    """Slices of ``rows`` as flat parameters, with their ``(?, ...), (?, ...)`` list."""
    step = _rows_per_statement(width)
    one = "(" + ", ".join("?" * width) + ")"
    for start in range(0, len(rows), step):
        batch = rows[start : start + step]
        yield [value for row in batch for value in row], ", ".join([one] * len(batch))


def _insert_rows(
    db: sqlite3.Connection,
    table: str,
    columns: str,
    rows: Sequence[tuple[Any, ...]],
    *,
    where: str | None = None,
) -> None:
    """Insert ``rows`` several to a statement; with ``where`` (on the ``VALUES`` columns
    ``column1``, ``column2``, ...), only the rows it keeps."""
    if not rows:
        return
    for parameters, values in _batches(rows, len(rows[0])):
        if where is None:
            db.execute(f"INSERT INTO {table} ({columns}) VALUES {values}", parameters)
        else:
            db.execute(
                f"INSERT INTO {table} ({columns}) SELECT * FROM (VALUES {values}) WHERE {where}",
                parameters,
            )


def _update_deliveries(
    db: sqlite3.Connection, worker_id: str, rows: Sequence[tuple[Any, ...]]
) -> None:
    """Write each ``(id, *_DELIVERY_UPDATE_COLUMNS)`` row where ``worker_id`` still holds
    the delivery's lease, and end the lease."""
    if not rows:
        return
    if not _UPDATE_FROM:
        assignments = ", ".join(f"{column} = ?" for column in _DELIVERY_UPDATE_COLUMNS)
        db.executemany(
            f"UPDATE deliveries SET {assignments}, lease_owner = NULL, lease_expires_at = NULL "
            "WHERE id = ? AND status = 'delivering' AND lease_owner = ?",
            [(*row[1:], row[0], worker_id) for row in rows],
        )
        return
    # VALUES columns are named column1, column2, ...: column1 is the id.
    assignments = ", ".join(
        f"{column} = v.column{n}" for n, column in enumerate(_DELIVERY_UPDATE_COLUMNS, start=2)
    )
    for parameters, values in _batches(rows, len(rows[0])):
        db.execute(
            f"UPDATE deliveries SET {assignments}, lease_owner = NULL, lease_expires_at = NULL "
            f"FROM (VALUES {values}) AS v "
            "WHERE deliveries.id = v.column1 AND deliveries.status = 'delivering' "
            "AND deliveries.lease_owner = ?",
            [*parameters, worker_id],
        )
