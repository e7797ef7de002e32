"""The PostgreSQL store: any number of workers on any number of machines (``postgresql://``).

Claims lease rows with ``FOR UPDATE SKIP LOCKED``; publishes ``NOTIFY`` so idle workers
elsewhere wake at once; ``publish(connection=...)`` joins the caller's transaction.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Collection, Generator, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

try:
    import psycopg
    import psycopg_pool
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    from psycopg.pq import TransactionStatus
    from psycopg.types.json import Jsonb
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the PostgreSQL store needs psycopg 3 and psycopg-pool: "
        "pip install 'webhook-dispatch[postgres]'"
    ) from exc

from webhook_dispatch._redact import find_secrets, redact_in, redact_store_url
from webhook_dispatch.errors import (
    ConfigurationError,
    InvalidStoreURL,
    NotFound,
    SchemaError,
    StoreError,
    StoreUnavailable,
)
from webhook_dispatch.health import AutoDisable, settle_health
from webhook_dispatch.models import Message, new_id
from webhook_dispatch.stores._core import (
    ATTEMPT_COLUMNS,
    DELIVERY_COLUMNS,
    MESSAGE_COLUMNS,
    SCHEMA_VERSION,
    SUBSCRIPTION_COLUMNS,
    UNFINISHED,
    Connection,
    DueRow,
    SQLStore,
    Walk,
    attempt_row,
    delivery,
    fetched_ahead,
    idempotency_keys,
    message,
    message_row,
    open_due,
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

__all__ = ["DEFAULT_SCHEMA", "SCHEMA_VERSION", "PostgresStore"]

DEFAULT_SCHEMA = "webhook_dispatch"
"""The PostgreSQL schema (namespace) the tables live in unless another is named."""

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,47}")
_META = "webhook_dispatch_meta"
"""Named after us so a foreign ``meta`` table in a shared schema is never taken for ours."""

# Every statement names its tables as "{schema}.table"; `_qualify` puts the validated,
# quoted schema name in. Each step moves the schema one version forward inside the
# migration transaction. Never edit a released step: append a new one.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        f"CREATE TABLE {{schema}}.{_META} (key text PRIMARY KEY, value bigint NOT NULL)",
        f"INSERT INTO {{schema}}.{_META} (key, value) VALUES "
        "('schema_version', 0), ('subscriptions_version', 0)",
        """CREATE TABLE {schema}.subscriptions (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id text NOT NULL UNIQUE,
            url text NOT NULL,
            event_types text[] NOT NULL,
            secret text NOT NULL,
            previous_secrets jsonb NOT NULL,
            -- [[name, value], ...]: a list keeps the order headers were given in
            headers jsonb NOT NULL,
            metadata jsonb NOT NULL,
            enabled boolean NOT NULL,
            disabled_reason text,
            timeout double precision NOT NULL,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL,
            -- Later per-subscription settings (signature scheme, auth, TLS, flow
            -- control) live in this document, so adding one needs no migration.
            options jsonb NOT NULL DEFAULT '{}'
        )""",
        """CREATE TABLE {schema}.messages (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id text NOT NULL UNIQUE,
            event_type text NOT NULL,
            payload bytea NOT NULL,
            content_type text NOT NULL,
            created_at timestamptz NOT NULL,
            idempotency_key text UNIQUE
        )""",
        "CREATE INDEX messages_event_type ON {schema}.messages (event_type, seq)",
        "CREATE INDEX messages_created_at ON {schema}.messages (created_at)",
        # No foreign key to subscriptions: a removed subscription's deliveries stay,
        # cancelled, as history.
        """CREATE TABLE {schema}.deliveries (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id text NOT NULL UNIQUE,
            message_id text NOT NULL REFERENCES {schema}.messages (id) ON DELETE CASCADE,
            subscription_id text NOT NULL,
            status text NOT NULL,
            attempt_count integer NOT NULL,
            next_attempt_at timestamptz,
            next_trigger text NOT NULL,
            lease_owner text,
            lease_expires_at timestamptz,
            last_status_code integer,
            last_error text,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL
        )""",
        """CREATE INDEX deliveries_due ON {schema}.deliveries (next_attempt_at, seq)
            WHERE status = 'pending'""",
        """CREATE INDEX deliveries_lease ON {schema}.deliveries (lease_expires_at)
            WHERE status = 'delivering'""",
        "CREATE INDEX deliveries_message ON {schema}.deliveries (message_id)",
        "CREATE INDEX deliveries_subscription ON {schema}.deliveries (subscription_id)",
        """CREATE TABLE {schema}.attempts (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id text NOT NULL UNIQUE,
            delivery_id text NOT NULL REFERENCES {schema}.deliveries (id) ON DELETE CASCADE,
            message_id text NOT NULL,
            subscription_id text NOT NULL,
            number integer NOT NULL,
            trigger text NOT NULL,
            started_at timestamptz NOT NULL,
            duration double precision NOT NULL,
            url text NOT NULL,
            status_code integer,
            response_body bytea NOT NULL,
            response_headers jsonb NOT NULL,
            error_kind text,
            error text,
            webhook_timestamp bigint NOT NULL
        )""",
        "CREATE INDEX attempts_message ON {schema}.attempts (message_id, started_at, number)",
        "CREATE INDEX attempts_delivery ON {schema}.attempts (delivery_id, started_at, number)",
    ),
    (
        # Subscription health, written with every recorded attempt.
        "ALTER TABLE {schema}.subscriptions ADD COLUMN failing_since timestamptz",
        "ALTER TABLE {schema}.subscriptions "
        "ADD COLUMN consecutive_failures integer NOT NULL DEFAULT 0",
        # Claiming counts a subscription's attempts in flight and finds an ordered
        # subscription's oldest unfinished delivery: both from this small index.
        """CREATE INDEX deliveries_unfinished ON {schema}.deliveries (subscription_id, seq)
            WHERE status IN ('pending', 'delivering')""",
    ),
    (
        # As SQLite's version 3: only ordered subscriptions need their oldest unfinished
        # delivery, so only their open deliveries are indexed for it, on columns a lease
        # leaves alone. ``next_attempt_at`` is set exactly while a delivery is unfinished;
        # ``ordered`` copies the subscription's setting while the delivery is open.
        "DROP INDEX {schema}.deliveries_unfinished",
        "ALTER TABLE {schema}.deliveries ADD COLUMN ordered boolean NOT NULL DEFAULT false",
        "UPDATE {schema}.deliveries SET next_attempt_at = NULL "
        "WHERE status NOT IN ('pending', 'delivering') AND next_attempt_at IS NOT NULL",
        "UPDATE {schema}.deliveries SET next_attempt_at = updated_at "
        "WHERE status IN ('pending', 'delivering') AND next_attempt_at IS NULL",
        "UPDATE {schema}.deliveries AS d SET ordered = true FROM {schema}.subscriptions AS s "
        "WHERE s.id = d.subscription_id AND d.next_attempt_at IS NOT NULL "
        "AND coalesce((s.options->>'ordered')::boolean, false)",
        """CREATE INDEX deliveries_ordered ON {schema}.deliveries (subscription_id, seq)
            WHERE next_attempt_at IS NOT NULL AND ordered""",
        # A message's attempts are found through its deliveries.
        "DROP INDEX {schema}.attempts_message",
    ),
    # Version 4 stored SQLite's headers as [name, value] pairs, as here already.
    (),
    (
        # Tenants, as SQLite's version 5: '' is "no tenant", so the unique index on
        # (tenant, idempotency_key) makes a key unique within each tenant.
        "ALTER TABLE {schema}.subscriptions ADD COLUMN tenant text NOT NULL DEFAULT ''",
        "CREATE INDEX subscriptions_tenant ON {schema}.subscriptions (tenant, seq)",
        "ALTER TABLE {schema}.messages ADD COLUMN tenant text NOT NULL DEFAULT ''",
        "ALTER TABLE {schema}.messages DROP CONSTRAINT IF EXISTS messages_idempotency_key_key",
        "CREATE UNIQUE INDEX messages_idempotency ON {schema}.messages (tenant, idempotency_key)",
        "CREATE INDEX messages_tenant ON {schema}.messages (tenant, seq)",
        "ALTER TABLE {schema}.deliveries ADD COLUMN tenant text NOT NULL DEFAULT ''",
        "CREATE INDEX deliveries_tenant ON {schema}.deliveries (tenant, seq)",
        """CREATE INDEX deliveries_tenant_due ON {schema}.deliveries (tenant, next_attempt_at, seq)
            WHERE status = 'pending'""",
        """CREATE TABLE {schema}.tenants (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id text NOT NULL UNIQUE,
            rate_limit double precision,
            max_in_flight integer,
            max_subscriptions integer,
            metadata jsonb NOT NULL DEFAULT '{}',
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL,
            rate_tat bigint NOT NULL DEFAULT 0,
            deleting boolean NOT NULL DEFAULT false
        )""",
        """CREATE TABLE {schema}.subscription_changes (
            version bigint NOT NULL,
            tenant text NOT NULL,
            PRIMARY KEY (version, tenant)
        )""",
    ),
    (
        # Within a tenant, subscriptions take turns (see the SQLite store).
        """CREATE INDEX deliveries_subscription_due
            ON {schema}.deliveries (tenant, subscription_id, next_attempt_at, seq)
            WHERE next_attempt_at IS NOT NULL""",
    ),
    (
        # Routing (see the SQLite store).
        "ALTER TABLE {schema}.subscriptions ADD COLUMN filter jsonb",
        "ALTER TABLE {schema}.subscriptions ADD COLUMN key text",
        "CREATE UNIQUE INDEX subscriptions_key ON {schema}.subscriptions (tenant, key) "
        "WHERE key IS NOT NULL",
        "ALTER TABLE {schema}.messages ADD COLUMN headers jsonb",
        "ALTER TABLE {schema}.messages ADD COLUMN test boolean NOT NULL DEFAULT false",
        "ALTER TABLE {schema}.attempts ADD COLUMN request_headers jsonb",
        """CREATE TABLE {schema}.event_types (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name text NOT NULL UNIQUE,
            description text NOT NULL DEFAULT '',
            schema jsonb,
            examples jsonb NOT NULL DEFAULT '[]',
            deprecated boolean NOT NULL DEFAULT false,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL
        )""",
        """CREATE TABLE {schema}.settings (
            name text PRIMARY KEY,
            value text NOT NULL,
            updated_at timestamptz NOT NULL
        )""",
    ),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION

_ATTEMPT_TYPES = (
    "text[], text[], text[], text[], int[], text[], timestamptz[], float8[], "
    "text[], int[], bytea[], jsonb[], text[], text[], int8[], jsonb[]"
)

# SQLSTATE classes meaning "try again later": connection exception, insufficient
# resources, operator intervention (shutdown, restart), transaction rollback
# (serialization failure, deadlock), system error.
_UNAVAILABLE_CLASSES = ("08", "40", "53", "57", "58")
_INSUFFICIENT_PRIVILEGE = "42501"
_MISSING_OBJECT = ("3F000", "42P01")  # invalid_schema_name, undefined_table


# Claiming runs in one transaction: expired leases first, then due pending deliveries
# on enabled subscriptions, page by page, within each subscription's flow control
# (`ClaimPlan`). Rows are locked with SKIP LOCKED; a transaction-scoped advisory lock
# per subscription (tried, never waited for) makes the in-flight count that caps it
# exact across workers. The last statement leases the chosen rows and returns them
# joined to their messages and subscriptions.
_CLAIM_EXPIRED = """
SELECT seq, subscription_id FROM {schema}.deliveries AS d
WHERE status = 'delivering' AND lease_expires_at <= %(now)s
    AND EXISTS (SELECT 1 FROM {schema}.subscriptions AS s WHERE s.id = d.subscription_id)
ORDER BY lease_expires_at LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""
_DUE_COLUMNS = """
SELECT d.seq, d.subscription_id, d.next_attempt_at, (s.options->>'max_in_flight')::int,
    coalesce((s.options->>'ordered')::boolean, false), s.consecutive_failures > 0
"""
# One subscription's due deliveries after a (due time, seq), oldest due first.
_CLAIM_PAGE = (
    _DUE_COLUMNS
    + """FROM {schema}.deliveries AS d
JOIN {schema}.subscriptions AS s ON s.id = d.subscription_id
WHERE d.tenant = %(tenant)s AND d.subscription_id = %(subscription)s
    AND d.next_attempt_at <= %(now)s AND d.status = 'pending' AND s.enabled
    AND (%(after_at)s::timestamptz IS NULL
         OR (d.next_attempt_at, d.seq) > (%(after_at)s::timestamptz, %(after_seq)s::bigint))
ORDER BY d.next_attempt_at, d.seq LIMIT %(limit)s
FOR UPDATE OF d SKIP LOCKED
"""
)
# The first rows of each subscription in a tenant's turn order, in one statement.
_CLAIM_AHEAD = (
    _DUE_COLUMNS
    + """FROM unnest(%(subscriptions)s::text[]) AS r (subscription_id)
CROSS JOIN LATERAL (
    SELECT x.seq, x.subscription_id, x.next_attempt_at FROM {schema}.deliveries AS x
    WHERE x.tenant = %(tenant)s AND x.subscription_id = r.subscription_id
        AND x.next_attempt_at <= %(now)s AND x.status = 'pending'
    ORDER BY x.next_attempt_at, x.seq LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) AS d
JOIN {schema}.subscriptions AS s ON s.id = d.subscription_id
WHERE s.enabled
"""
)
_CLAIM_LOCK = """
SELECT subscription_id FROM unnest(%s::text[], %s::bigint[]) AS k (subscription_id, key)
WHERE NOT pg_try_advisory_xact_lock(key)
"""
# The first page's subscriptions are waited for, in sorted order (a claim elsewhere takes
# milliseconds); later pages only try, so two claimers can never wait on each other.
_CLAIM_LOCK_WAIT = """
SELECT count(pg_advisory_xact_lock(key))
FROM (SELECT key FROM unnest(%s::bigint[]) AS k (key) ORDER BY key) AS ordered_keys
"""
_CLAIM_IN_FLIGHT = """
SELECT subscription_id, count(*) FROM {schema}.deliveries
WHERE status = 'delivering' AND lease_expires_at > %s AND subscription_id = ANY(%s)
GROUP BY subscription_id
"""
# One step per tenant with pending deliveries (each MIN is one index probe), each asked
# whether it has any due now: the round-robin ring of a claim.
_RING_SCAN = """
WITH RECURSIVE ring (tenant) AS (
    SELECT (SELECT min(tenant) FROM {schema}.deliveries
            WHERE status = 'pending' AND tenant {operator} %s)
    UNION ALL
    SELECT (SELECT min(d.tenant) FROM {schema}.deliveries AS d
            WHERE d.status = 'pending' AND d.tenant > ring.tenant)
    FROM ring WHERE ring.tenant IS NOT NULL
)
SELECT tenant, EXISTS (SELECT 1 FROM {schema}.deliveries AS d
    WHERE d.status = 'pending' AND d.tenant = ring.tenant AND d.next_attempt_at <= %s)
FROM (SELECT tenant FROM ring LIMIT %s) AS ring WHERE tenant IS NOT NULL
"""
# The same within one tenant, over its subscriptions with unfinished deliveries (those
# with a due time: a claim writes nothing to that index), each asked whether it is
# enabled and has any pending and due now.
_SUBSCRIPTION_RING_SCAN = """
WITH RECURSIVE ring (subscription_id) AS (
    SELECT (SELECT min(subscription_id) FROM {schema}.deliveries
            WHERE next_attempt_at IS NOT NULL AND tenant = %(tenant)s
                AND subscription_id {operator} %(bound)s)
    UNION ALL
    SELECT (SELECT min(d.subscription_id) FROM {schema}.deliveries AS d
            WHERE d.next_attempt_at IS NOT NULL AND d.tenant = %(tenant)s
                AND d.subscription_id > ring.subscription_id)
    FROM ring WHERE ring.subscription_id IS NOT NULL
)
SELECT subscription_id,
    EXISTS (SELECT 1 FROM {schema}.deliveries AS d
            WHERE d.tenant = %(tenant)s AND d.subscription_id = ring.subscription_id
                AND d.next_attempt_at <= %(now)s AND d.status = 'pending')
    AND EXISTS (SELECT 1 FROM {schema}.subscriptions AS s
                WHERE s.id = ring.subscription_id AND s.enabled)
FROM (SELECT subscription_id FROM ring LIMIT %(window)s) AS ring
WHERE subscription_id IS NOT NULL
"""
_TENANT_LIMITS = """
SELECT id, max_in_flight, rate_limit, rate_tat FROM {schema}.tenants
WHERE id = ANY(%s) AND (max_in_flight IS NOT NULL OR rate_limit IS NOT NULL)
"""
_TENANT_IN_FLIGHT = """
SELECT tenant, count(*) FROM {schema}.deliveries
WHERE status = 'delivering' AND (lease_expires_at > %s OR seq = ANY(%s)) AND tenant = ANY(%s)
GROUP BY tenant
"""
_CLAIM_HEADS = """
SELECT DISTINCT ON (subscription_id) subscription_id, seq,
    status = 'pending' AND next_attempt_at <= %s
FROM {schema}.deliveries
WHERE next_attempt_at IS NOT NULL AND ordered AND status IN ('pending', 'delivering')
    AND subscription_id = ANY(%s)
ORDER BY subscription_id, seq
"""
_CLAIM_LEASE = f"""
WITH claimed AS (
    UPDATE {{schema}}.deliveries AS d
    SET status = 'delivering', lease_owner = %(worker)s, lease_expires_at = %(until)s,
        updated_at = %(now)s
    FROM unnest(%(seqs)s::bigint[], %(order)s::int[]) AS due (seq, position)
    WHERE d.seq = due.seq
    RETURNING {prefixed("d", DELIVERY_COLUMNS)}, due.position
)
SELECT {prefixed("c", DELIVERY_COLUMNS)}, {prefixed("m", MESSAGE_COLUMNS)},
    {prefixed("s", SUBSCRIPTION_COLUMNS)}
FROM claimed AS c
JOIN {{schema}}.messages AS m ON m.id = c.message_id
JOIN {{schema}}.subscriptions AS s ON s.id = c.subscription_id
ORDER BY c.position
"""

# The statement that records: attempts (idempotent, so a retried record after a lost
# COMMIT acknowledgement is harmless) and next states where the lease still holds;
# returns the subscriptions those states ask to disable (410). Subscription health and
# disabling follow in the same transaction.
_RECORD = f"""
WITH inserted AS (
    INSERT INTO {{schema}}.attempts ({ATTEMPT_COLUMNS})
    SELECT * FROM unnest({", ".join(f"%s::{kind}" for kind in _ATTEMPT_TYPES.split(", "))})
        AS a ({ATTEMPT_COLUMNS})
    -- A deleted tenant's delivery is gone: its late attempt is dropped with it.
    WHERE EXISTS (SELECT 1 FROM {{schema}}.deliveries AS d WHERE d.id = a.delivery_id)
    ON CONFLICT (id) DO NOTHING
), next_state (id, status, attempt_count, next_attempt_at, next_trigger, last_status_code,
               last_error, updated_at, disable_reason) AS (
    SELECT * FROM unnest(%s::text[], %s::text[], %s::int[], %s::timestamptz[], %s::text[],
                         %s::int[], %s::text[], %s::timestamptz[], %s::text[])
), applied AS (
    UPDATE {{schema}}.deliveries AS d
    SET status = n.status, attempt_count = n.attempt_count,
        next_attempt_at = n.next_attempt_at, next_trigger = n.next_trigger,
        last_status_code = n.last_status_code, last_error = n.last_error,
        updated_at = n.updated_at, lease_owner = NULL, lease_expires_at = NULL
    FROM next_state AS n
    WHERE d.id = n.id AND d.status = 'delivering' AND d.lease_owner = %s
    RETURNING d.subscription_id, n.disable_reason
)
SELECT subscription_id, disable_reason FROM applied WHERE disable_reason IS NOT NULL
"""

# Messages (skipping keys another transaction committed meanwhile) and the deliveries
# of the messages actually inserted, in one statement; returns the inserted ids.
_INSERT_MESSAGES = f"""
WITH inserted AS (
    INSERT INTO {{schema}}.messages ({MESSAGE_COLUMNS})
    SELECT * FROM unnest(%s::text[], %s::text[], %s::bytea[], %s::text[],
                         %s::timestamptz[], %s::text[], %s::text[], %s::jsonb[],
                         %s::boolean[])
    ON CONFLICT (tenant, idempotency_key) DO NOTHING
    RETURNING id
), deliveries AS (
    INSERT INTO {{schema}}.deliveries (id, message_id, subscription_id, status,
        attempt_count, next_attempt_at, next_trigger, created_at, updated_at, ordered, tenant)
    SELECT n.id, n.message_id, n.subscription_id, 'pending', 0, %s, 'scheduled', %s, %s,
        n.ordered, n.tenant
    FROM unnest(%s::text[], %s::text[], %s::text[], %s::boolean[], %s::text[])
        AS n (id, message_id, subscription_id, ordered, tenant)
    JOIN inserted ON inserted.id = n.message_id
    RETURNING 1
), notified AS (
    -- Wakes listening workers at commit, when there is anything to deliver.
    SELECT pg_notify(%s, '') FROM (SELECT 1 FROM deliveries LIMIT 1) AS any_delivery
)
SELECT id FROM inserted WHERE (SELECT count(*) FROM notified) >= 0
"""


class _PostgresCodec:
    """PostgreSQL: ``timestamptz``, ``jsonb`` and ``text[]`` columns, decoded by psycopg."""

    @staticmethod
    def time(moment: datetime) -> datetime:
        """The moment in UTC."""
        return _utc(moment)

    @staticmethod
    def from_time(value: Any) -> datetime:
        """The moment in UTC."""
        return _utc(value)

    @staticmethod
    def document(value: Any) -> Jsonb:
        """A ``jsonb`` parameter."""
        return Jsonb(value)

    @staticmethod
    def from_document(value: Any) -> Any:
        """psycopg has decoded it."""
        return value

    @staticmethod
    def texts(values: Sequence[str]) -> list[str]:
        """A ``text[]`` parameter."""
        return list(values)

    @staticmethod
    def from_texts(value: Any) -> tuple[str, ...]:
        """From a ``text[]``."""
        return tuple(value)


_CODEC = _PostgresCodec()


class _Query:
    """One statement a sans-I/O step wants run; ``rows`` says whether it returns any."""

    __slots__ = ("params", "rows", "text")

    def __init__(self, text: str, params: Sequence[Any] | dict[str, Any], rows: bool) -> None:
        self.text = text
        self.params = params
        self.rows = rows


_Steps = Generator[_Query, list[tuple[Any, ...]], list[PublishResult]]


class PostgresStore(SQLStore):
    """A `Store` in a PostgreSQL database, shared by any number of worker processes.

    ``dsn`` is a libpq URL or ``key=value`` string; ``schema`` the PostgreSQL schema
    holding the tables (created and migrated on first use). ``min_size``/``max_size``
    bound the connection pool; ``timeout`` is how many seconds a call waits for a pooled
    connection (`StoreUnavailable` after it); ``connect_timeout`` bounds each connection
    attempt. Idle workers hear new work through ``LISTEN`` on one extra connection.
    """

    blocking = True
    atomic_round = True
    lock_rows = " FOR UPDATE"
    codec = _CODEC
    transactional_outbox = True
    """`publish` and `publish_many` accept ``connection=`` (see `publish`)."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 10.0,
        connect_timeout: float = 10.0,
    ) -> None:
        if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema):
            raise InvalidStoreURL(
                f"PostgreSQL schema name {schema!r} is not usable: use 1 to 48 lowercase "
                "letters, digits and underscores, not starting with a digit"
            )
        if schema.startswith("pg_"):
            raise InvalidStoreURL(f"PostgreSQL schema names starting 'pg_' are reserved: {schema}")
        if not 1 <= min_size <= max_size:
            raise ConfigurationError("pool sizes must satisfy 1 <= min_size <= max_size")
        params = _parse_dsn(dsn)
        self._password = params.get("password") or None
        params.setdefault("connect_timeout", str(max(2, int(connect_timeout))))
        params.setdefault("application_name", "webhook_dispatch")
        self._conninfo = make_conninfo(**params)
        self._schema = schema
        self._quoted_schema = f'"{schema}"'
        self._channel = f"{schema}.work"
        self._where = (
            f"PostgreSQL {params.get('host') or 'localhost'}:{params.get('port') or 5432}"
            f"/{params.get('dbname') or params.get('user') or ''} (schema {schema})"
        )
        self._timeout = timeout
        self._statements: dict[str, str] = {}
        self._closed = False
        self._listener: _Listener | None = None
        self._listener_lock = threading.Lock()
        # The last tenant the previous claim served first-pass: the next starts after it.
        self._ring_cursor: str | None = None
        # Where each tenant's subscription ring starts in the next claim.
        self._turns = SubscriptionTurns()
        self._recency = _Recency()
        with self._translate():
            with psycopg.connect(self._conninfo, autocommit=True) as connection:
                self._migrate(connection)
            self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[tuple[Any, ...]]] = (
                psycopg_pool.ConnectionPool(
                    self._conninfo,
                    min_size=min_size,
                    max_size=max_size,
                    timeout=timeout,
                    kwargs={"autocommit": True},
                    configure=_configure,
                    check=self._recency.check,
                    reset=self._recency.returned,
                    name=f"webhook_dispatch:{schema}",
                    open=False,
                )
            )
            self._pool.open(wait=False)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresStore:
        """Open the store a ``postgresql://user@host:port/dbname`` URL names.

        ``postgres://`` works too. The query string may name the schema
        (``?schema=webhooks``) beside any libpq parameter (``sslmode=require``, ...).
        """
        scheme, sep, _ = url.partition("://")
        if not sep or scheme.lower() not in ("postgres", "postgresql"):
            raise InvalidStoreURL(
                "not a PostgreSQL store URL; use 'postgresql://user@host:5432/dbname'"
            )
        try:
            parts = urllib.parse.urlsplit(url)
            query = urllib.parse.parse_qsl(
                parts.query, keep_blank_values=True, strict_parsing=False
            )
        except ValueError as exc:
            raise InvalidStoreURL(
                f"malformed PostgreSQL store URL {redact_store_url(url)!r}: "
                f"{redact_in(str(exc), url)}"
            ) from None
        schemas = [value for key, value in query if key == "schema"]
        if len(schemas) > 1:
            raise InvalidStoreURL("the PostgreSQL store URL names 'schema' more than once")
        if schemas:
            options.setdefault("schema", schemas[0])
        rest = urllib.parse.urlencode([(key, value) for key, value in query if key != "schema"])
        dsn = urllib.parse.urlunsplit(
            ("postgresql", parts.netloc, parts.path, rest, parts.fragment)
        )
        return cls(dsn, **options)

    @property
    def schema(self) -> str:
        """The PostgreSQL schema holding the tables."""
        return self._schema

    def __repr__(self) -> str:
        return f"PostgresStore({self._where!r})"

    # -- opening and migrating -----------------------------------------------------
    def _sql(self, text: str) -> str:
        """``text`` with ``{schema}`` replaced by the quoted schema name (cached)."""
        statement = self._statements.get(text)
        if statement is None:
            statement = text.replace("{schema}", self._quoted_schema).replace("?", "%s")
            self._statements[text] = statement
        return statement

    def _in(self, column: str, values: Sequence[Any]) -> tuple[str, Any]:
        return f"{column} = ANY(?)", list(values)

    def _ordered_of(self, alias: str) -> str:
        return f"coalesce(({alias}.options->>'ordered')::boolean, false)"

    def _migrate(self, connection: psycopg.Connection[tuple[Any, ...]]) -> None:
        with connection.transaction():
            # One migrator at a time per schema, across every process; released at COMMIT.
            digest = hashlib.sha256(f"webhook_dispatch:{self._schema}".encode()).digest()
            connection.execute(
                "SELECT pg_advisory_xact_lock(%s)",
                (int.from_bytes(digest[:8], "big", signed=True),),
            )
            version = self._schema_version(connection)
            if version == SCHEMA_VERSION:
                return
            connection.execute(self._sql("CREATE SCHEMA IF NOT EXISTS {schema}"))
            for steps in _MIGRATIONS[version:]:
                for statement in steps:
                    connection.execute(self._sql(statement))
            connection.execute(
                self._sql(f"UPDATE {{schema}}.{_META} SET value = %s WHERE key = 'schema_version'"),
                (SCHEMA_VERSION,),
            )

    def _schema_version(self, connection: psycopg.Connection[tuple[Any, ...]]) -> int:
        tables = [
            row[0]
            for row in connection.execute(
                "SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n "
                "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v')",
                (self._schema,),
            )
        ]
        if _META not in tables:
            if tables:
                raise SchemaError(
                    f"{self._where}: schema {self._schema!r} is not webhook_dispatch's (it "
                    f"holds other tables: {', '.join(sorted(tables)[:5])}); name another "
                    "with ?schema=",
                    schema=self._schema,
                )
            return 0
        row = connection.execute(
            self._sql(f"SELECT value FROM {{schema}}.{_META} WHERE key = 'schema_version'")
        ).fetchone()
        if row is None:
            raise SchemaError(f"{self._where}: schema version missing", schema=self._schema)
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"{self._where}: database schema version {version} is newer than this "
                f"webhook_dispatch supports ({SCHEMA_VERSION}); upgrade webhook_dispatch",
                schema=self._schema,
                found_version=version,
                supported_version=SCHEMA_VERSION,
            )
        return version

    # -- the one place psycopg errors are translated ----------------------------------
    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            raise _translate_error(exc, self._where, self._password, self._timeout) from None

    @contextlib.contextmanager
    def _reading(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """A pooled autocommit connection: each statement is its own transaction."""
        if self._closed:
            raise StoreError(f"{self._where}: the store is closed")
        with self._translate(), self._pool.connection() as connection:
            yield connection

    @contextlib.contextmanager
    def _writing(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """A pooled connection inside BEGIN ... COMMIT (ROLLBACK on any exception)."""
        with self._reading() as connection, connection.transaction():
            yield connection

    def _notify(self, db: Connection) -> None:
        """Wake listening workers when this transaction commits (never before)."""
        db.execute("SELECT pg_notify(%s, '')", (self._channel,))

    # -- messages ----------------------------------------------------------------
    def publish(
        self,
        message: Message,
        subscription_ids: Sequence[str],
        now: datetime,
        *,
        connection: psycopg.Connection[Any] | None = None,
    ) -> PublishResult:
        """Store a message and one pending delivery per subscription, in one transaction.

        With ``connection=`` (a psycopg connection inside an open transaction) the rows
        are written in that transaction and nothing is committed: they exist, and the
        workers hear of them, only once the caller commits.
        """
        return self.publish_many([(message, subscription_ids)], now, connection=connection)[0]

    def publish_many(
        self,
        items: Sequence[tuple[Message, Sequence[str]]],
        now: datetime,
        *,
        connection: psycopg.Connection[Any] | None = None,
    ) -> list[PublishResult]:
        """`publish` for a batch, in one transaction, results in input order.

        A key already stored, or committed by a concurrent publisher meanwhile (the
        unique index decides), returns the stored message with ``created=False``.
        """
        if not items:
            return []
        if connection is not None:
            _check_outbox_connection(connection, self._where, asynchronous=False)
            with self._translate():
                return _drive(connection, self._publish_steps(items, now))
        with self._writing() as db:
            return _drive(db, self._publish_steps(items, now))

    async def publish_many_async(
        self,
        items: Sequence[tuple[Message, Sequence[str]]],
        now: datetime,
        *,
        connection: psycopg.AsyncConnection[Any],
    ) -> list[PublishResult]:
        """`publish_many` inside the open transaction of an async psycopg connection.

        The same statements as the sync path, awaited on the caller's event loop;
        nothing is committed.
        """
        if not items:
            return []
        _check_outbox_connection(connection, self._where, asynchronous=True)
        try:
            steps = self._publish_steps(items, now)
            query = next(steps)
            while True:
                cursor = await connection.execute(query.text, query.params)
                rows = await cursor.fetchall() if query.rows else []
                query = steps.send(rows)
        except StopIteration as done:
            result: list[PublishResult] = done.value
            return result
        except psycopg.Error as exc:
            raise _translate_error(exc, self._where, self._password, self._timeout) from None

    def _publish_steps(
        self, items: Sequence[tuple[Message, Sequence[str]]], now: datetime
    ) -> _Steps:
        """The publish transaction as a sans-I/O generator: it yields the statements to
        run and receives their rows, so sync and async connections share one logic."""
        keys = idempotency_keys(items)
        stored: dict[tuple[str, str], Message] = {}
        if keys:
            rows = yield _Query(
                self._sql(
                    f"SELECT {prefixed('m', MESSAGE_COLUMNS)} FROM unnest(%s::text[], %s::text[]) "
                    "AS k (tenant, key) JOIN {schema}.messages AS m "
                    "ON m.tenant = k.tenant AND m.idempotency_key = k.key"
                ),
                ([k[0] for k in keys], [k[1] for k in keys]),
                True,
            )
            stored.update(((row[6], row[5]), message(self.codec, row)) for row in rows)
        results, new_messages = plan_publish(items, stored)
        if not new_messages:
            return results
        by_id = {m.id: ids for m, ids in items}
        owners = {s: tenant_key(m.tenant) for m in new_messages for s in by_id[m.id]}
        wanted = sorted(owners)
        ordered: set[str] = set()
        if wanted:
            # FOR SHARE: a concurrent removal waits for this commit, then cancels these.
            rows = yield _Query(
                self._sql(
                    f"SELECT id, {self._ordered_of('s')}, tenant FROM {{schema}}.subscriptions "
                    "AS s WHERE id = ANY(%s) FOR SHARE"
                ),
                (wanted,),
                True,
            )
            missing = sorted(set(wanted) - {row[0] for row in rows})
            if missing:
                raise NotFound(f"no subscription with id {missing[0]!r}")
            for row in rows:
                if row[2] != owners[row[0]]:
                    # Never to another tenant's endpoint, even from a stale match.
                    raise NotFound(
                        f"no subscription with id {row[0]!r} belongs to tenant "
                        f"{owners[row[0]] or None!r}"
                    )
            ordered = {row[0] for row in rows if row[1]}
        deliveries = [
            (new_id("dlv"), m.id, subscription_id, tenant_key(m.tenant))
            for m in new_messages
            for subscription_id in by_id[m.id]
        ]
        moment = _utc(now)
        rows = yield _Query(
            self._sql(_INSERT_MESSAGES),
            (
                [m.id for m in new_messages],
                [m.event_type for m in new_messages],
                [m.payload for m in new_messages],
                [m.content_type for m in new_messages],
                [_utc(m.created_at) for m in new_messages],
                [m.idempotency_key for m in new_messages],
                [tenant_key(m.tenant) for m in new_messages],
                [message_row(self.codec, m)[7] for m in new_messages],
                [m.test for m in new_messages],
                moment,
                moment,
                moment,
                [d[0] for d in deliveries],
                [d[1] for d in deliveries],
                [d[2] for d in deliveries],
                [d[2] in ordered for d in deliveries],
                [d[3] for d in deliveries],
                self._channel,
            ),
            True,
        )
        inserted = {row[0] for row in rows}
        lost = idempotency_keys([(m, ()) for m in new_messages if m.id not in inserted])
        if lost:
            # Another transaction committed these keys after our first look.
            rows = yield _Query(
                self._sql(
                    f"SELECT {prefixed('m', MESSAGE_COLUMNS)} FROM unnest(%s::text[], %s::text[]) "
                    "AS k (tenant, key) JOIN {schema}.messages AS m "
                    "ON m.tenant = k.tenant AND m.idempotency_key = k.key"
                ),
                ([k[0] for k in lost], [k[1] for k in lost]),
                True,
            )
            winners = {(row[6], row[5]): message(self.codec, row) for row in rows}
            results = [
                PublishResult(
                    winners[(tenant_key(r.message.tenant), r.message.idempotency_key)], False, 0
                )
                if r.created and r.message.id not in inserted and r.message.idempotency_key
                else r
                for r in results
            ]
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

        One transaction: rows are locked with ``FOR UPDATE SKIP LOCKED`` (rows another
        worker is claiming are skipped, not waited for); claims touching one
        subscription take turns on an advisory lock, so in-flight caps hold across the
        cluster.
        """
        if limit <= 0:
            return []
        with self._writing() as db:
            rows = self._claim_rows(
                db, now, limit, lease_until, worker_id, default_max_in_flight, allowance, proven
            )
        return _claims(rows)

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
        """`record`, then `claim_due`, in one transaction (one commit per worker round).

        Recording locks its subscriptions' rows until the commit; the claim that follows
        never waits on a row lock (``SKIP LOCKED``), so a fused round cannot deadlock
        with another worker's."""
        with self._writing() as db:
            result = self._record(db, records, worker_id, auto_disable)
            if limit <= 0:
                return result, []
            rows = self._claim_rows(
                db, now, limit, lease_until, worker_id, default_max_in_flight, allowance, proven
            )
        return result, _claims(rows)

    def _claim_rows(
        self,
        db: psycopg.Connection[tuple[Any, ...]],
        now: datetime,
        limit: int,
        lease_until: datetime,
        worker_id: str,
        default_max_in_flight: int | None,
        allowance: Mapping[str, int] | None,
        proven: Collection[str] | None,
    ) -> list[tuple[Any, ...]]:
        """Select and lease inside the caller's transaction: the leased delivery rows,
        each joined to its message and subscription."""
        moment = _utc(now)
        expired = db.execute(self._sql(_CLAIM_EXPIRED), {"now": moment, "limit": limit}).fetchall()
        chosen = [row[0] for row in expired]
        if len(chosen) < limit:
            chosen += self._plan_claim(
                db, moment, limit, expired, default_max_in_flight, allowance, proven
            )
        if not chosen:
            return []
        return db.execute(
            self._sql(_CLAIM_LEASE),
            {
                "now": moment,
                "until": _utc(lease_until),
                "worker": worker_id,
                "seqs": chosen,
                "order": list(range(len(chosen))),
            },
        ).fetchall()

    def _plan_claim(
        self,
        db: psycopg.Connection[tuple[Any, ...]],
        now: datetime,
        limit: int,
        expired: list[tuple[Any, ...]],
        default_max_in_flight: int | None,
        allowance: Mapping[str, int] | None,
        proven: Collection[str] | None = None,
    ) -> list[int]:
        """Due pending deliveries this claim may take: tenants take turns (round robin,
        `share_round_robin`), and within each tenant its subscriptions with due
        deliveries (`SubscriptionTurns`), each walked oldest due first: its first rows
        fetched for the whole turn order in one statement, then page by page."""
        plan = ClaimPlan(
            limit=limit - len(expired),
            default_max_in_flight=default_max_in_flight,
            allowance=allowance,
            in_flight={},
            proven=proven,
        )
        order = self._ring(db, now, plan.limit)
        if not order:
            return []
        gate = self._tenant_gate(db, order, now, expired)
        state = _ClaimState(plan, {row[1]: 0 for row in expired})
        for _, subscription_id in expired:
            state.reclaimed[subscription_id] += 1
        walks: dict[str, Walk] = {}  # by subscription

        def ring(tenant: str, cursor: str | None, count: int) -> list[str]:
            return self._subscription_ring(db, tenant, cursor, count, now)

        def ahead(tenant: str, order: Sequence[str], quota: int) -> None:
            mine = self._lock_subscriptions(db, state, order, now)
            if not mine:
                return
            asked = fetched_ahead(mine, quota)
            rows: dict[str, list[DueRow]] = {subscription_id: [] for subscription_id in mine}
            parameters = {"subscriptions": mine, "tenant": tenant, "now": now, "limit": asked}
            for row in db.execute(self._sql(_CLAIM_AHEAD), parameters):
                rows[row[1]].append(_due_row(row))
            for subscription_id, found in rows.items():
                found.sort(key=lambda row: (row.due, row.seq))
                walks.setdefault(subscription_id, Walk()).fill(found, asked)
            # The ordered ones' heads in one statement, not one per subscription.
            ordered = sorted(s for s, found in rows.items() if found and found[0].ordered)
            if ordered:
                heads = db.execute(self._sql(_CLAIM_HEADS), (now, ordered))
                state.heads.update((row[0], (row[1], bool(row[2]))) for row in heads)

        def walk(tenant: str, subscription_id: str, quota: int) -> int:
            if subscription_id not in state.locked:
                return 0  # another worker is claiming it right now

            def fetch(after: tuple[Any, int] | None, size: int) -> list[DueRow]:
                after_at, after_seq = after if after is not None else (None, 0)
                parameters = {
                    "tenant": tenant,
                    "subscription": subscription_id,
                    "now": now,
                    "after_at": after_at,
                    "after_seq": after_seq,
                    "limit": size,
                }
                return [_due_row(row) for row in db.execute(self._sql(_CLAIM_PAGE), parameters)]

            def head() -> tuple[int, bool]:
                if subscription_id not in state.heads:
                    found = db.execute(self._sql(_CLAIM_HEADS), (now, [subscription_id]))
                    state.heads.update((row[0], (row[1], bool(row[2]))) for row in found)
                return state.heads.get(subscription_id, (-1, False))

            got = walk_subscription(
                plan, subscription_id, walks.setdefault(subscription_id, Walk()), quota, fetch, head
            )
            state.taken.extend(got)
            return len(got)

        take = self._turns.take(ring, walk, gate, ahead, plan.closed)
        self._ring_cursor = share_round_robin(order, plan.limit, take)
        if gate is not None and (tats := gate.tats()):
            db.execute(
                self._sql(
                    "UPDATE {schema}.tenants AS t SET rate_tat = u.tat "
                    "FROM unnest(%s::text[], %s::bigint[]) AS u (id, tat) WHERE t.id = u.id"
                ),
                (list(tats), list(tats.values())),
            )
        return state.taken

    def _ring(
        self, db: psycopg.Connection[tuple[Any, ...]], now: datetime, count: int
    ) -> list[str]:
        """Up to ``count`` tenants with due deliveries in round-robin order (`due_ring`),
        found by skipping through the due index (a probe per tenant)."""

        def scan(bound: str, inclusive: bool) -> list[tuple[str, bool]]:
            text = _RING_SCAN.replace("{operator}", ">=" if inclusive else ">")
            return [
                (tenant, bool(is_due))
                for tenant, is_due in db.execute(self._sql(text), (bound, now, RING_WINDOW))
            ]

        return due_ring(scan, self._ring_cursor, count)

    def _tenant_gate(
        self,
        db: psycopg.Connection[tuple[Any, ...]],
        order: list[str],
        now: datetime,
        expired: list[tuple[Any, ...]],
    ) -> TenantGate | None:
        """The tenant-wide limits of this claim's tenants, or None when none has any. A
        limited tenant is claimed by one worker at a time (an advisory lock, tried and
        never waited for, so the in-flight count and rate state are exact); one another
        worker is claiming right now gets nothing from this claim."""
        named = [tenant for tenant in order if tenant]
        if not named:
            return None
        rows = db.execute(self._sql(_TENANT_LIMITS), (named,)).fetchall()
        if not rows:
            return None
        limited = sorted(row[0] for row in rows)
        busy = {
            row[0]
            for row in db.execute(
                _CLAIM_LOCK, (limited, [self._lock_key(f"tenant:{t}") for t in limited])
            )
        }
        settings: dict[str, tuple[int | None, float | None, int]] = {
            row[0]: (0, None, 0) if row[0] in busy else (row[1], row[2], row[3]) for row in rows
        }
        in_flight: dict[str, int] = {}
        if any(found[0] for found in settings.values()):
            in_flight = dict(
                db.execute(
                    self._sql(_TENANT_IN_FLIGHT),
                    (now, [row[0] for row in expired], limited),
                ).fetchall()
            )
        return TenantGate(settings, in_flight, to_us(now))

    def _subscription_ring(
        self,
        db: psycopg.Connection[tuple[Any, ...]],
        tenant: str,
        cursor: str | None,
        count: int,
        now: datetime,
    ) -> list[str]:
        """`SubscriptionTurns`' ring: `due_ring` over this dialect's scan."""

        def scan(bound: str, inclusive: bool) -> list[tuple[str, bool]]:
            text = _SUBSCRIPTION_RING_SCAN.replace("{operator}", ">=" if inclusive else ">")
            parameters = {"tenant": tenant, "bound": bound, "now": now, "window": RING_WINDOW}
            return [
                (subscription_id, bool(is_due))
                for subscription_id, is_due in db.execute(self._sql(text), parameters)
            ]

        return due_ring(scan, cursor, count)

    def _lock_subscriptions(
        self,
        db: psycopg.Connection[tuple[Any, ...]],
        state: _ClaimState,
        order: Sequence[str],
        now: datetime,
    ) -> list[str]:
        """Lock the subscriptions of a tenant's turn order for this claim, and count
        their attempts in flight into the plan: the claim's first ones are waited for,
        in sorted order (a claim elsewhere takes milliseconds); later ones only tried,
        so two claimers never wait on each other. One held elsewhere is closed. Returns
        the ones this claim holds, in ``order``."""
        plan = state.plan
        fresh = sorted(set(order) - state.locked - plan.closed)
        if fresh:
            keys = [self._lock_key(s) for s in fresh]
            busy: set[str] = set()
            if not state.locked:
                db.execute(_CLAIM_LOCK_WAIT, (keys,))
            else:
                busy = {row[0] for row in db.execute(_CLAIM_LOCK, (fresh, keys))}
            for subscription_id in busy:
                plan.close(subscription_id)  # another worker is claiming it right now
            mine = [s for s in fresh if s not in busy]
            state.locked.update(mine)
            counts = dict(
                db.execute(self._sql(_CLAIM_IN_FLIGHT), (now, mine)).fetchall() if mine else []
            )
            for subscription_id in mine:
                plan.in_flight[subscription_id] = counts.get(
                    subscription_id, 0
                ) + state.reclaimed.get(subscription_id, 0)
        return [s for s in order if s in state.locked and s not in plan.closed]

    def _lock_key(self, subscription_id: str) -> int:
        digest = hashlib.sha256(f"{self._schema}:{subscription_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def record(
        self,
        records: Sequence[AttemptRecord],
        worker_id: str,
        *,
        auto_disable: AutoDisable | None = None,
    ) -> RecordResult:
        """Write finished attempts and, where ``worker_id`` still holds the lease, the
        deliveries' next states, then the subscriptions' failure runs and disabling, in
        one transaction."""
        if not records:
            return RecordResult()
        with self._writing() as db:
            return self._record(db, records, worker_id, auto_disable)

    def _record(
        self,
        db: psycopg.Connection[tuple[Any, ...]],
        records: Sequence[AttemptRecord],
        worker_id: str,
        auto_disable: AutoDisable | None,
    ) -> RecordResult:
        """`record` inside the caller's transaction."""
        if not records:
            return RecordResult()
        attempts = [attempt_row(self.codec, record.attempt) for record in records]
        states = [record.delivery for record in records]
        params: list[Any] = [[row[i] for row in attempts] for i in range(len(attempts[0]))]
        params += [
            [d.id for d in states],
            [d.status.value for d in states],
            [d.attempt_count for d in states],
            [None if (due := open_due(d)) is None else _utc(due) for d in states],
            [d.next_trigger.value for d in states],
            [d.last_status_code for d in states],
            [d.last_error for d in states],
            [_utc(d.updated_at) for d in states],
            [r.disable_subscription for r in records],
            worker_id,
        ]
        gone = db.execute(self._sql(_RECORD), params).fetchall()
        # Sorted and locked: concurrent recorders of one subscription take turns.
        health = {
            row[0]: (row[1], None if row[2] is None else _utc(row[2]), row[3])
            for row in db.execute(
                self._sql(
                    "SELECT id, enabled, failing_since, consecutive_failures "
                    "FROM {schema}.subscriptions WHERE id = ANY(%s) ORDER BY id "
                    "FOR NO KEY UPDATE"
                ),
                (sorted({r.attempt.subscription_id for r in records}),),
            )
        }
        changes = settle_health((record.attempt for record in records), health, auto_disable, gone)
        if changes.updates:
            db.execute(
                self._sql(
                    "UPDATE {schema}.subscriptions AS s SET failing_since = u.since, "
                    "consecutive_failures = u.failures "
                    "FROM unnest(%s::text[], %s::timestamptz[], %s::int[]) "
                    "AS u (id, since, failures) WHERE s.id = u.id"
                ),
                (
                    [u.subscription_id for u in changes.updates],
                    [
                        None if u.failing_since is None else _utc(u.failing_since)
                        for u in changes.updates
                    ],
                    [u.consecutive_failures for u in changes.updates],
                ),
            )
        if changes.disabled:
            db.execute(
                self._sql(
                    "UPDATE {schema}.subscriptions AS s SET enabled = false, "
                    "disabled_reason = u.reason, updated_at = u.at "
                    "FROM unnest(%s::text[], %s::text[], %s::timestamptz[]) "
                    "AS u (id, reason, at) WHERE s.id = u.id AND s.enabled"
                ),
                tuple(list(column) for column in zip(*changes.disabled, strict=True)),
            )
            tenants = db.execute(
                self._sql("SELECT DISTINCT tenant FROM {schema}.subscriptions WHERE id = ANY(%s)"),
                ([key for key, _, _ in changes.disabled],),
            ).fetchall()
            self._bump_subscriptions_version(db, {row[0] or None for row in tenants})
        return RecordResult(
            tuple((key, reason) for key, reason, _ in changes.disabled), changes.recovered
        )

    def next_due_at(self) -> datetime | None:
        """The earliest time a claim could take something: the due time of a pending
        delivery on an enabled subscription (for an ordered one, only its oldest
        unfinished delivery counts), or the earliest lease expiry; None if neither."""
        [(lease, due, head)] = self._rows(
            "SELECT (SELECT min(lease_expires_at) FROM {schema}.deliveries "
            "WHERE status = 'delivering'), "
            "(SELECT d.next_attempt_at FROM {schema}.deliveries AS d "
            "JOIN {schema}.subscriptions AS s ON s.id = d.subscription_id "
            "WHERE d.status = 'pending' AND d.next_attempt_at IS NOT NULL AND s.enabled "
            "AND NOT d.ordered ORDER BY d.next_attempt_at LIMIT 1), "
            # An ordered subscription's later deliveries wait for its head.
            "(SELECT min(CASE WHEN h.status = 'pending' THEN h.next_attempt_at END) FROM ("
            "SELECT DISTINCT ON (d.subscription_id) d.status, d.next_attempt_at "
            "FROM {schema}.deliveries AS d JOIN {schema}.subscriptions AS s "
            "ON s.id = d.subscription_id WHERE d.next_attempt_at IS NOT NULL AND d.ordered "
            f"AND d.status IN {UNFINISHED} AND s.enabled "
            "ORDER BY d.subscription_id, d.seq) AS h)"
        )
        found = [_utc(value) for value in (lease, due, head) if value is not None]
        return min(found) if found else None

    # -- waking idle workers ---------------------------------------------------------
    def listen_for_work(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (from a background thread) whenever another process may have
        made work due: a publish, a manual retry, an enabled subscription, a release.

        One dedicated connection per store ``LISTEN``s; it reconnects after the server
        restarts and then calls every callback once, since notifications sent while it
        was away are lost. Returns a function that stops these calls.
        """
        with self._listener_lock:
            if self._closed:
                raise StoreError(f"{self._where}: the store is closed")
            if self._listener is None:
                self._listener = _Listener(self._conninfo, self._channel)
            return self._listener.add(callback)

    def close(self) -> None:
        """Stop listening and close the pool's connections. Idempotent."""
        with self._listener_lock:
            if self._closed:
                return
            self._closed = True
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
        self._pool.close()


class _Listener:
    """A thread that keeps one connection ``LISTEN``ing and calls callbacks on notifies."""

    def __init__(self, conninfo: str, channel: str) -> None:
        self._conninfo = conninfo
        self._channel = channel
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._next_key = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="webhook-dispatch-listen", daemon=True
        )
        self._thread.start()

    def add(self, callback: Callable[[], None]) -> Callable[[], None]:
        with self._lock:
            key = self._next_key
            self._next_key += 1
            self._callbacks[key] = callback

        def remove() -> None:
            with self._lock:
                self._callbacks.pop(key, None)

        callback()  # work may have been published before LISTEN took effect
        return remove

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)

    def _fire(self) -> None:
        with self._lock:
            callbacks = list(self._callbacks.values())
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a broken callback must not end the listening
                continue

    def _run(self) -> None:
        delay = 0.1
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as connection:
                    connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    delay = 0.1
                    self._fire()  # notifications sent while we were away are lost
                    while not self._stopping.is_set():
                        # A short timeout bounds how long `stop` waits for this thread.
                        for _ in connection.notifies(timeout=0.25, stop_after=1):
                            self._fire()
            except psycopg.Error:
                self._stopping.wait(delay)
                delay = min(delay * 2, 5.0)


# -- helpers ---------------------------------------------------------------------------
def _parse_dsn(dsn: str) -> dict[str, str]:
    if not isinstance(dsn, str) or not dsn.strip():
        raise InvalidStoreURL("the PostgreSQL store needs a DSN such as 'postgresql://host/db'")
    try:
        params = {key: str(value) for key, value in conninfo_to_dict(dsn).items()}
    except psycopg.Error as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidStoreURL(
            f"malformed PostgreSQL store URL or DSN {redact_store_url(dsn)!r}: "
            f"{redact_in(text, dsn)}"
        ) from None
    if not _password_unambiguous(dsn, params):
        # libpq read part of the password as host, port or database: they would be shown.
        raise InvalidStoreURL(
            f"the password in PostgreSQL store URL {redact_store_url(dsn)!r} is ambiguous: "
            "percent-encode '@', '/', ':', '?', '#' and '%' in it "
            "(urllib.parse.quote(password, safe=''))"
        )
    port = params.get("port")
    if port is not None and not all(part.isdigit() for part in port.split(",")):
        raise InvalidStoreURL(f"PostgreSQL port must be a number, not {redact_in(repr(port), dsn)}")
    return params


def _password_unambiguous(dsn: str, params: Mapping[str, str]) -> bool:
    """Whether libpq read the userinfo password in ``dsn`` as the password (or a
    ``password=`` parameter overrides it), not as pieces of the host or database."""
    secrets = find_secrets(dsn)
    if any(secret.place != "userinfo" for secret in secrets):
        return True
    read = params.get("password")
    return all(read in secret.values for secret in secrets)


CHECK_IDLE_AFTER = 1.0
"""Seconds back to the pool after which a connection is checked (a round trip) before
it is used again."""


class _Recency:
    """The pool's check of a connection before use, skipped for one returned within
    `CHECK_IDLE_AFTER`: a publish takes two connections, and checking each would add
    two round trips to every publish. A connection the server dropped since then fails
    its statement with `StoreUnavailable`, and the pool replaces it."""

    def __init__(self) -> None:
        self._returned: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def returned(self, connection: psycopg.Connection[Any]) -> None:
        """The pool's ``reset``: this connection came back now."""
        with self._lock:
            self._returned[connection] = time.monotonic()

    def check(self, connection: psycopg.Connection[Any]) -> None:
        """The pool's ``check``: raise if a connection idle for a while is broken."""
        with self._lock:
            back = self._returned.get(connection)
        if back is not None and time.monotonic() - back < CHECK_IDLE_AFTER:
            return
        psycopg_pool.ConnectionPool.check_connection(connection)


def _configure(connection: psycopg.Connection[Any]) -> None:
    """Run on each new pooled connection: times come back in UTC."""
    connection.execute("SET TIME ZONE 'UTC'")


class _ClaimState:
    """What one claim's walks share: the plan, the subscriptions locked and their
    ordered heads, the leases it takes back, and the rows it chose."""

    def __init__(self, plan: ClaimPlan, reclaimed: dict[str, int]) -> None:
        self.plan = plan
        self.reclaimed = reclaimed
        self.locked: set[str] = set()
        self.heads: dict[str, tuple[int, bool]] = {}
        self.taken: list[int] = []


def _due_row(row: Sequence[Any]) -> DueRow:
    """A claim page's row (`_DUE_COLUMNS`) for the walk."""
    seq, _, due, max_in_flight, ordered, failing = row
    return DueRow(
        taken=seq,
        due=due,
        seq=seq,
        max_in_flight=max_in_flight,
        ordered=ordered,
        failing=failing,
    )


def _claims(rows: list[tuple[Any, ...]]) -> list[Claim]:
    """Claims from leased rows joined to their messages and subscriptions."""
    width_d, width_m = len(DELIVERY_COLUMNS.split(",")), len(MESSAGE_COLUMNS.split(","))
    return [
        Claim(
            delivery(_CODEC, row[:width_d]),
            message(_CODEC, row[width_d : width_d + width_m]),
            subscription(_CODEC, row[width_d + width_m :]),
        )
        for row in rows
    ]


def _check_outbox_connection(connection: Any, where: str, *, asynchronous: bool) -> None:
    kind = psycopg.AsyncConnection if asynchronous else psycopg.Connection
    if not isinstance(connection, kind):
        raise ConfigurationError(
            f"connection= takes a {kind.__module__}.{kind.__name__} here, not "
            f"{type(connection).__module__}.{type(connection).__name__} (async connections "
            "go to AsyncDispatcher; SQLAlchemy and Django hand out the psycopg one: see "
            "'Scaling out with PostgreSQL' in the docs)"
        )
    status = connection.info.transaction_status
    if status == TransactionStatus.INERROR:
        raise StoreError(
            f"{where}: the connection's transaction has already failed; roll it back first"
        )
    if status == TransactionStatus.IDLE and connection.autocommit:
        raise ConfigurationError(
            "connection= joins the caller's open transaction, but this autocommit "
            "connection has none: publish inside 'with connection.transaction():'"
        )


def _drive(connection: psycopg.Connection[Any], steps: _Steps) -> list[PublishResult]:
    """Run a sans-I/O step generator on a sync connection."""
    try:
        query = next(steps)
        while True:
            cursor = connection.execute(query.text, query.params)
            query = steps.send(cursor.fetchall() if query.rows else [])
    except StopIteration as done:
        result: list[PublishResult] = done.value
        return result


def _translate_error(
    exc: psycopg.Error, where: str, password: str | None, timeout: float
) -> StoreError:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if password:
        text = text.replace(password, "***")
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if isinstance(exc, psycopg_pool.PoolClosed):
        return StoreError(f"{where}: the store is closed")
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return StoreUnavailable(
            f"{where}: no connection within {timeout:g}s (server down or pool exhausted); "
            "try again later"
        )
    if sqlstate == _INSUFFICIENT_PRIVILEGE:
        return StoreError(
            f"{where}: missing privilege ({text}); grant the role USAGE and CREATE on the "
            "schema (CREATE on the database to create it)",
            cause="privilege",
        )
    if sqlstate in _MISSING_OBJECT:
        return SchemaError(f"{where}: the store's tables are missing ({text})")
    if isinstance(exc, psycopg.OperationalError) or sqlstate[:2] in _UNAVAILABLE_CLASSES:
        return StoreUnavailable(f"{where}: {text}; try again later")
    return StoreError(f"{where}: {text}")


def _utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC (as the SQLite store does)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)
