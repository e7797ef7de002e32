"""The SQL stores' shared core: one logical schema, one set of row codecs, and every
store operation that is the same on SQLite and PostgreSQL, written once.

A backend (`SQLStore` subclass) supplies only what differs: its connection and
transaction handling (`SQLStore._reading`, `SQLStore._writing`), how a neutral statement
becomes its dialect (`SQLStore._sql`), how a list of values is matched
(`SQLStore._in`), its value codec (`Codec`), and its tuned statements for the hot
paths (publish, claim, record).

Neutral statements use ``?`` placeholders and name tables ``{schema}.table``; they use
no ``%`` and no ``?`` other than placeholders, so both dialects can take them.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, NamedTuple, Protocol

import attrs

from ..errors import ConfigurationError, InvalidTenant, NotFound, TenantLimitExceeded
from ..models import (
    ALL_TENANTS,
    AllTenants,
    Attempt,
    AttemptTrigger,
    Delivery,
    DeliveryStatus,
    ErrorKind,
    EventType,
    Message,
    RetiredSecret,
    Subscription,
    Tenant,
    TenantFilter,
    new_id,
    options_document,
    options_fields,
    thawed,
)
from ..paging import DEFAULT_PAGE_SIZE, Page, check_limit, decode_cursor, page_of
from .base import CATALOG_CHANGE, ClaimPlan, PublishResult, Route, Stats, Store

__all__: list[str] = []

SCHEMA_VERSION = 7
"""The logical schema version both SQL stores write; a newer one is refused."""

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)

UNFINISHED = "('pending', 'delivering')"

DELIVERY_COLUMNS = (
    "id, message_id, subscription_id, status, attempt_count, next_attempt_at, "
    "next_trigger, created_at, updated_at, last_status_code, last_error"
)
MESSAGE_COLUMNS = (
    "id, event_type, payload, content_type, created_at, idempotency_key, tenant, headers, test"
)
SUBSCRIPTION_COLUMNS = (
    "id, url, event_types, secret, previous_secrets, headers, metadata, enabled, "
    "disabled_reason, timeout, created_at, updated_at, options, failing_since, "
    "consecutive_failures, tenant, filter, key"
)
TENANT_COLUMNS = (
    "id, rate_limit, max_in_flight, max_subscriptions, metadata, created_at, updated_at"
)

EVENT_TYPE_COLUMNS = "name, description, schema, examples, deprecated, created_at, updated_at"

CHANGES_KEPT = 10_000
"""Subscription changes remembered for `SQLStore.changed_tenants` (older: reload all)."""
ATTEMPT_COLUMNS = (
    "id, delivery_id, message_id, subscription_id, number, trigger, started_at, duration, "
    "url, status_code, response_body, response_headers, error_kind, error, webhook_timestamp, "
    "request_headers"
)


# -- values ------------------------------------------------------------------------------
def to_us(moment: datetime) -> int:
    """Integer microseconds since the epoch; naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - EPOCH) // _MICROSECOND


def from_us(value: int) -> datetime:
    """The UTC datetime of integer microseconds since the epoch."""
    return EPOCH + timedelta(microseconds=value)


def utc(moment: datetime) -> datetime:
    """The same moment in UTC; naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def dumps(value: Any) -> str:
    """Compact JSON text."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class Codec(Protocol):
    """How a backend stores the column types that differ between dialects."""

    def time(self, moment: datetime) -> Any:
        """A timestamp column's value."""

    def from_time(self, value: Any) -> datetime:
        """A timestamp column's value, read back (UTC)."""

    def document(self, value: Any) -> Any:
        """A JSON document column's value."""

    def from_document(self, value: Any) -> Any:
        """A JSON document column's value, read back."""

    def texts(self, values: Sequence[str]) -> Any:
        """A list-of-text column's value."""

    def from_texts(self, value: Any) -> tuple[str, ...]:
        """A list-of-text column's value, read back."""


class TextCodec:
    """SQLite: times as integer microseconds since the epoch, JSON and lists as text."""

    @staticmethod
    def time(moment: datetime) -> int:
        """Microseconds since the epoch."""
        return to_us(moment)

    @staticmethod
    def from_time(value: Any) -> datetime:
        """From microseconds since the epoch."""
        return from_us(value)

    @staticmethod
    def document(value: Any) -> str:
        """JSON text."""
        return dumps(value)

    @staticmethod
    def from_document(value: Any) -> Any:
        """From JSON text."""
        return json.loads(value)

    @staticmethod
    def texts(values: Sequence[str]) -> str:
        """A JSON array."""
        return dumps(list(values))

    @staticmethod
    def from_texts(value: Any) -> tuple[str, ...]:
        """The strings of a JSON array."""
        return tuple(json.loads(value))


def tenant_key(tenant: str | None) -> str:
    """A tenant as stored: its id, or ``''`` for no tenant (a NOT NULL column keeps the
    per-tenant unique index on idempotency keys whole)."""
    return "" if tenant is None else tenant


def tenant_of(value: str) -> str | None:
    """A stored tenant column as the API gives it."""
    return value or None


def tenant_filter(tenant: TenantFilter, column: str = "tenant") -> tuple[str, Any]:
    """A listing's ``tenant=`` as a `where_clause` filter (no filter for every tenant)."""
    if isinstance(tenant, AllTenants):
        return (column, None)
    return (column, tenant_key(tenant))


# -- rows --------------------------------------------------------------------------------
def subscription_row(codec: Codec, s: Subscription) -> tuple[Any, ...]:
    """The `SUBSCRIPTION_COLUMNS` values of a subscription. Headers are a list of
    ``[name, value]`` pairs: JSON objects keep no order in every database."""
    return (
        s.id,
        s.url,
        codec.texts(s.event_types),
        s.secret,
        codec.document([[r.secret, to_us(r.expires_at)] for r in s.previous_secrets]),
        codec.document([[name, value] for name, value in s.headers.items()]),
        codec.document(dict(s.metadata)),
        s.enabled,
        s.disabled_reason,
        s.timeout,
        codec.time(s.created_at),
        codec.time(s.updated_at),
        codec.document(options_document(s)),
        None if s.failing_since is None else codec.time(s.failing_since),
        s.consecutive_failures,
        tenant_key(s.tenant),
        None if s.filter is None else codec.document(s.filter.document),
        s.key,
    )


def subscription(codec: Codec, row: Sequence[Any]) -> Subscription:
    """The subscription of a `SUBSCRIPTION_COLUMNS` row."""
    return Subscription(
        id=row[0],
        url=row[1],
        event_types=codec.from_texts(row[2]),
        secret=row[3],
        previous_secrets=tuple(
            RetiredSecret(secret, from_us(expires))
            for secret, expires in codec.from_document(row[4])
        ),
        headers=dict(codec.from_document(row[5])),
        metadata=codec.from_document(row[6]),
        enabled=bool(row[7]),
        disabled_reason=row[8],
        timeout=row[9],
        created_at=codec.from_time(row[10]),
        updated_at=codec.from_time(row[11]),
        failing_since=None if row[13] is None else codec.from_time(row[13]),
        consecutive_failures=row[14],
        tenant=row[15] or None,
        filter=None if row[16] is None else codec.from_document(row[16]),
        key=row[17],
        **options_fields(codec.from_document(row[12])),
    )


def message_row(codec: Codec, m: Message) -> tuple[Any, ...]:
    """The `MESSAGE_COLUMNS` values of a message."""
    return (
        m.id,
        m.event_type,
        m.payload,
        m.content_type,
        codec.time(m.created_at),
        m.idempotency_key,
        tenant_key(m.tenant),
        codec.document([[name, value] for name, value in m.headers.items()]) if m.headers else None,
        m.test,
    )


def message(codec: Codec, row: Sequence[Any]) -> Message:
    """The message of a `MESSAGE_COLUMNS` row."""
    return Message(
        id=row[0],
        event_type=row[1],
        payload=bytes(row[2]),
        content_type=row[3],
        created_at=codec.from_time(row[4]),
        idempotency_key=row[5],
        tenant=row[6] or None,
        headers={} if row[7] is None else dict(codec.from_document(row[7])),
        test=bool(row[8]),
    )


def delivery(
    codec: Codec,
    row: Sequence[Any],
    *,
    status: DeliveryStatus | None = None,
    updated_at: datetime | None = None,
) -> Delivery:
    """The delivery of a `DELIVERY_COLUMNS` row; a claim passes the state it just wrote."""
    return Delivery(
        id=row[0],
        message_id=row[1],
        subscription_id=row[2],
        status=DeliveryStatus(row[3]) if status is None else status,
        attempt_count=row[4],
        next_attempt_at=None if row[5] is None else codec.from_time(row[5]),
        next_trigger=AttemptTrigger(row[6]),
        created_at=codec.from_time(row[7]),
        updated_at=codec.from_time(row[8]) if updated_at is None else updated_at,
        last_status_code=row[9],
        last_error=row[10],
    )


def attempt_row(codec: Codec, a: Attempt) -> tuple[Any, ...]:
    """The `ATTEMPT_COLUMNS` values of an attempt."""
    return (
        a.id,
        a.delivery_id,
        a.message_id,
        a.subscription_id,
        a.number,
        a.trigger.value,
        codec.time(a.started_at),
        a.duration,
        a.url,
        a.status_code,
        a.response_body,
        dumps(dict(a.response_headers)) if a.response_headers else "{}",
        None if a.error_kind is None else a.error_kind.value,
        a.error,
        a.webhook_timestamp,
        dumps([[name, value] for name, value in a.request_headers.items()])
        if a.request_headers
        else None,
    )


def attempt(codec: Codec, row: Sequence[Any]) -> Attempt:
    """The attempt of an `ATTEMPT_COLUMNS` row."""
    return Attempt(
        id=row[0],
        delivery_id=row[1],
        message_id=row[2],
        subscription_id=row[3],
        number=row[4],
        trigger=AttemptTrigger(row[5]),
        started_at=codec.from_time(row[6]),
        duration=row[7],
        url=row[8],
        status_code=row[9],
        response_body=bytes(row[10]),
        response_headers=codec.from_document(row[11]),
        error_kind=None if row[12] is None else ErrorKind(row[12]),
        error=row[13],
        webhook_timestamp=row[14],
        request_headers={} if row[15] is None else dict(codec.from_document(row[15])),
    )


def open_due(state: Delivery) -> datetime | None:
    """The ``next_attempt_at`` a delivery's row keeps: NULL once final, always set while
    unfinished (a pending record without a time is due at once). The index of ordered
    subscriptions' open deliveries relies on it."""
    if state.status.is_final:
        return None
    return state.next_attempt_at or state.updated_at


def tenant_from_row(codec: Codec, row: Sequence[Any], subscriptions: int, pending: int) -> Tenant:
    """The tenant of a `TENANT_COLUMNS` row, with its counts."""
    return Tenant(
        id=row[0],
        rate_limit=row[1],
        max_in_flight=row[2],
        max_subscriptions=row[3],
        metadata=codec.from_document(row[4]),
        created_at=codec.from_time(row[5]),
        updated_at=codec.from_time(row[6]),
        subscriptions=subscriptions,
        pending=pending,
    )


# -- publishing --------------------------------------------------------------------------
def idempotency_keys(items: Sequence[tuple[Message, Sequence[str]]]) -> list[tuple[str, str]]:
    """The batch's ``(tenant, key)`` pairs, sorted, each once."""
    return sorted(
        {(tenant_key(m.tenant), m.idempotency_key) for m, _ in items if m.idempotency_key}
    )


def plan_publish(
    items: Sequence[tuple[Message, Sequence[str]]],
    stored: Mapping[tuple[str, str], Message],
) -> tuple[list[PublishResult], list[Message]]:
    """Idempotency for a batch: the results in input order, and the messages to insert.

    A message whose ``(tenant, key)`` is already ``stored`` returns that message with
    ``created=False``; so does a later message of the batch repeating an earlier one.
    Keys are scoped per tenant: one key under two tenants makes two messages.
    """
    seen = dict(stored)
    results: list[PublishResult] = []
    new_messages: list[Message] = []
    for candidate, subscription_ids in items:
        if candidate.idempotency_key is not None:
            key = (tenant_key(candidate.tenant), candidate.idempotency_key)
            if key in seen:
                results.append(PublishResult(seen[key], False, 0))
                continue
            seen[key] = candidate
        new_messages.append(candidate)
        results.append(PublishResult(candidate, True, len(subscription_ids)))
    return results, new_messages


_PURGEABLE = (
    "WHERE m.created_at < ? AND NOT EXISTS (SELECT 1 FROM {schema}.deliveries AS d "
    f"WHERE d.message_id = m.id AND d.status IN {UNFINISHED})"
)


def _subscription_of(codec: Codec, row: Sequence[Any]) -> Subscription:
    return subscription(codec, row)


def _replay_cursor(codec: Codec, cursor: str) -> tuple[Any, int]:
    """``(created_at, seq)`` of a `SQLStore.messages_between` cursor."""
    try:
        moment, seq = cursor.split(":")
        return codec.time(from_us(int(moment))), int(seq)
    except ValueError:
        raise ConfigurationError(f"not a replay cursor: {cursor[:40]!r}") from None


# -- SQL pieces --------------------------------------------------------------------------
def where_clause(*filters: tuple[str, Any]) -> tuple[str, list[Any]]:
    """A neutral ``WHERE`` clause (with a trailing space, or empty) and its parameters
    for the ``(column, value)`` filters: ``"column"`` means equal, ``"column op"``
    compares with that operator; None values are left out."""
    conditions: list[str] = []
    parameters: list[Any] = []
    for column, value in filters:
        if value is not None:
            operator = "" if " " in column else " ="
            conditions.append(f"{column}{operator} ?")
            parameters.append(value)
    return (f"WHERE {' AND '.join(conditions)} " if conditions else ""), parameters


def prefixed(alias: str, columns: str) -> str:
    """``"a, b"`` as ``"alias.a, alias.b"``."""
    return ", ".join(f"{alias}.{column.strip()}" for column in columns.split(","))


class DueRow(NamedTuple):
    """One due delivery a claim's walk looks at, as either SQL store reads it."""

    taken: Any
    """What the store leases when the claim takes it (its row, or its seq)."""
    due: Any
    """Its due time, in the backend's form."""
    seq: int
    max_in_flight: int | None
    """Its subscription's own cap."""
    ordered: bool
    failing: bool
    """Its subscription's last attempt failed."""


class Walk:
    """Where one claim's walk of one subscription's due deliveries stands: rows
    fetched and not looked at yet, the last row seen, and whether more may be due."""

    __slots__ = ("after", "more", "rows")

    def __init__(self) -> None:
        self.rows: collections.deque[DueRow] = collections.deque()
        self.after: tuple[Any, int] | None = None
        """(due time, seq) of the last row seen."""
        self.more = True
        """Rows past those fetched may be due."""

    def fill(self, rows: Sequence[DueRow], asked: int) -> None:
        """Rows fetched ahead (``asked`` were asked for): looked at before any page."""
        self.rows.extend(rows)
        self.more = len(rows) >= asked


def walk_subscription(
    plan: ClaimPlan,
    subscription_id: str,
    walk: Walk,
    quota: int,
    fetch: Callable[[tuple[Any, int] | None, int], Sequence[DueRow]],
    head: Callable[[], tuple[int, bool]],
) -> list[Any]:
    """Up to ``quota`` of one subscription's due deliveries for ``plan``, oldest due
    first from where this claim's previous walk of it stopped: the rows fetched ahead,
    then pages from ``fetch(after, size)``. ``head()`` is an ordered subscription's
    oldest unfinished delivery, ``(seq, pending and due)``; only it may be taken, and
    when it is not due the subscription gives nothing."""
    taken: list[Any] = []
    while len(taken) < quota and not plan.is_full() and subscription_id not in plan.closed:
        if not walk.rows:
            if not walk.more:
                break
            size = quota - len(taken)
            walk.fill(fetch(walk.after, size), size)
            if not walk.rows:
                break
        row = walk.rows.popleft()
        walk.after = (row.due, row.seq)
        is_head = True
        if row.ordered:
            head_seq, head_due = head()
            is_head = head_seq == row.seq
            if not head_due:
                plan.close(subscription_id)
        if plan.consider(
            subscription_id,
            max_in_flight=row.max_in_flight,
            ordered=row.ordered,
            is_head=is_head,
            failing=row.failing,
        ):
            taken.append(row.taken)
    return taken


def fetched_ahead(order: Sequence[str], quota: int) -> int:
    """Rows to fetch ahead per subscription when ``order`` shares ``quota``: the largest
    first-pass share (more come page by page, for the few that can use them)."""
    return -(-quota // max(1, len(order)))


class Cursor(Protocol):
    """What both drivers' cursors give (sqlite3 and psycopg)."""

    @property
    def rowcount(self) -> int: ...

    def fetchall(self) -> list[Any]: ...

    def fetchone(self) -> Any: ...


class Connection(Protocol):
    """What both drivers' connections give (sqlite3 and psycopg)."""

    def execute(self, sql: Any, parameters: Any = ..., /) -> Any: ...


class SQLStore(Store):
    """Every store operation that reads the same on SQLite and PostgreSQL.

    Subclasses supply the connection handling, the dialect and the codec (module
    docstring) and the tuned hot paths; nothing here knows which database it runs on.
    """

    codec: Codec
    lock_rows: ClassVar[str] = ""
    """Appended to a read whose rows the same transaction then updates (``" FOR UPDATE"``
    where writers do not already hold the whole database)."""

    # -- what a backend supplies ---------------------------------------------------------
    @abc.abstractmethod
    def _reading(self) -> contextlib.AbstractContextManager[Connection]:
        """A connection for reads (a snapshot or autocommit)."""

    @abc.abstractmethod
    def _writing(self) -> contextlib.AbstractContextManager[Connection]:
        """A connection inside one write transaction, committed at the end."""

    @abc.abstractmethod
    def _sql(self, text: str) -> str:
        """A neutral statement in this dialect."""

    @abc.abstractmethod
    def _in(self, column: str, values: Sequence[Any]) -> tuple[str, Any]:
        """A neutral condition "``column`` is one of ``values``" and its one parameter."""

    @abc.abstractmethod
    def _ordered_of(self, alias: str) -> str:
        """A neutral expression: whether the subscription row ``alias`` is ordered."""

    def _notify(self, db: Connection) -> None:
        """Wake other processes' idle workers when this transaction commits."""
        del db

    def _follow_ordered(self, db: Connection, subscription: Subscription) -> None:
        """Give the subscription's open deliveries its ``ordered`` setting (the index of
        ordered subscriptions' open deliveries holds only theirs)."""
        flag = subscription.ordered
        self._run(
            db,
            "UPDATE {schema}.deliveries SET ordered = ? WHERE subscription_id = ? "
            "AND next_attempt_at IS NOT NULL AND ordered != ?",
            (flag, subscription.id, flag),
        )

    def _bump_subscriptions_version(self, db: Connection, tenants: Iterable[str | None]) -> None:
        """Count a subscription change, and log which tenants it touched (for the
        publishers' per-tenant caches, `changed_tenants`)."""
        self._run(
            db,
            "UPDATE {schema}.webhook_dispatch_meta SET value = value + 1 "
            "WHERE key = 'subscriptions_version'",
        )
        (version,) = self._run(
            db,
            "SELECT value FROM {schema}.webhook_dispatch_meta WHERE key = 'subscriptions_version'",
        ).fetchone()
        keys = sorted({tenant_key(tenant) for tenant in tenants})
        for key in keys:
            self._run(
                db,
                "INSERT INTO {schema}.subscription_changes (version, tenant) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING",
                (version, key),
            )
        if version % 100 == 0:
            self._run(
                db,
                "DELETE FROM {schema}.subscription_changes WHERE version <= ?",
                (version - CHANGES_KEPT,),
            )

    def changed_tenants(self, since: int) -> set[str | None] | None:
        """The tenants whose subscriptions changed after version ``since`` (from the
        change log), or None when the log no longer reaches back that far."""
        with self._reading() as db:
            (oldest,) = self._run(
                db, "SELECT MIN(version) FROM {schema}.subscription_changes"
            ).fetchone()
            if oldest is None or oldest > since + 1:
                return None  # changes before the log began, or pruned since
            rows = self._run(
                db,
                "SELECT DISTINCT tenant FROM {schema}.subscription_changes WHERE version > ?",
                (since,),
            ).fetchall()
        return {tenant_of(row[0]) for row in rows}

    def _run(self, db: Connection, text: str, parameters: Sequence[Any] = ()) -> Cursor:
        cursor: Cursor = db.execute(self._sql(text), parameters)
        return cursor

    def _rows(self, text: str, parameters: Sequence[Any] = ()) -> list[Any]:
        with self._reading() as db:
            return self._run(db, text, parameters).fetchall()

    # -- subscriptions -------------------------------------------------------------------
    def add_subscription(self, subscription: Subscription) -> None:
        """Store a new subscription (its tenant comes to exist with it), refused with
        `TenantLimitExceeded` when the tenant has ``max_subscriptions`` already."""
        marks = ", ".join("?" * len(SUBSCRIPTION_COLUMNS.split(",")))
        with self._writing() as db:
            if subscription.tenant is not None:
                self._admit_subscription(db, subscription)
            self._run(
                db,
                f"INSERT INTO {{schema}}.subscriptions ({SUBSCRIPTION_COLUMNS}) VALUES ({marks})",
                subscription_row(self.codec, subscription),
            )
            # An id used before may have open deliveries (retried after its removal).
            self._follow_ordered(db, subscription)
            self._bump_subscriptions_version(db, [subscription.tenant])

    def add_subscription_once(self, subscription: Subscription) -> Subscription:
        """Store a subscription with a ``key``, unless the tenant has one with that key
        already: then that one is returned, unchanged."""
        if subscription.key is None:
            self.add_subscription(subscription)
            return subscription
        marks = ", ".join("?" * len(SUBSCRIPTION_COLUMNS.split(",")))
        with self._writing() as db:
            found = self._keyed(db, subscription)
            if found is not None:
                return found
            if subscription.tenant is not None:
                self._admit_subscription(db, subscription)
            # Another writer may have added the key since the read (PostgreSQL): the
            # unique index decides, and the row it kept is returned.
            inserted = self._run(
                db,
                f"INSERT INTO {{schema}}.subscriptions ({SUBSCRIPTION_COLUMNS}) VALUES ({marks}) "
                "ON CONFLICT (tenant, key) WHERE key IS NOT NULL DO NOTHING",
                subscription_row(self.codec, subscription),
            ).rowcount
            if not inserted:
                kept = self._keyed(db, subscription)
                assert kept is not None
                return kept
            self._follow_ordered(db, subscription)
            self._bump_subscriptions_version(db, [subscription.tenant])
            return subscription

    def _keyed(self, db: Connection, subscription: Subscription) -> Subscription | None:
        row = self._run(
            db,
            f"SELECT {SUBSCRIPTION_COLUMNS} FROM {{schema}}.subscriptions "
            f"WHERE tenant = ? AND key = ?{self.lock_rows}",
            (tenant_key(subscription.tenant), subscription.key),
        ).fetchone()
        return None if row is None else _subscription_of(self.codec, row)

    def _admit_subscription(self, db: Connection, subscription: Subscription) -> None:
        """Create the subscription's tenant if new, and hold its ``max_subscriptions``
        (the tenant's row stays locked until the commit, so concurrent adds take turns)."""
        moment = self.codec.time(subscription.created_at)
        self._run(
            db,
            "INSERT INTO {schema}.tenants (id, metadata, created_at, updated_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (subscription.tenant, self.codec.document({}), moment, moment),
        )
        (limit, deleting) = self._run(
            db,
            f"SELECT max_subscriptions, deleting FROM {{schema}}.tenants WHERE id = ?"
            f"{self.lock_rows}",
            (subscription.tenant,),
        ).fetchone()
        if deleting:
            raise InvalidTenant(f"tenant {subscription.tenant!r} is being deleted")
        if limit is not None:
            (count,) = self._run(
                db,
                "SELECT COUNT(*) FROM {schema}.subscriptions WHERE tenant = ?",
                (subscription.tenant,),
            ).fetchone()
            if count >= limit:
                raise TenantLimitExceeded(
                    f"tenant {subscription.tenant!r} has {count} subscriptions, its "
                    f"max_subscriptions; remove one or raise the limit with set_tenant()",
                    tenant=subscription.tenant,
                    limit=limit,
                )

    def save_subscription(self, subscription: Subscription) -> None:
        """Replace a stored subscription by id; `NotFound` if it does not exist."""
        row = subscription_row(self.codec, subscription)
        columns = [column.strip() for column in SUBSCRIPTION_COLUMNS.split(",")][1:]
        assignments = ", ".join(f"{column} = ?" for column in columns)
        with self._writing() as db:
            changed = self._run(
                db,
                f"UPDATE {{schema}}.subscriptions SET {assignments} WHERE id = ?",
                (*row[1:], row[0]),
            ).rowcount
            if not changed:
                raise NotFound(f"no subscription with id {subscription.id!r}")
            self._follow_ordered(db, subscription)
            self._bump_subscriptions_version(db, [subscription.tenant])
            if subscription.enabled:
                self._notify(db)  # its held deliveries may be due

    def remove_subscription(self, subscription_id: str, now: datetime) -> None:
        """Delete a subscription; its unfinished deliveries become ``cancelled``."""
        with self._writing() as db:
            found = self._run(
                db, "SELECT tenant FROM {schema}.subscriptions WHERE id = ?", (subscription_id,)
            ).fetchall()
            if not found:
                raise NotFound(f"no subscription with id {subscription_id!r}")
            self._run(db, "DELETE FROM {schema}.subscriptions WHERE id = ?", (subscription_id,))
            self._run(
                db,
                "UPDATE {schema}.deliveries SET status = 'cancelled', next_attempt_at = NULL, "
                "lease_owner = NULL, lease_expires_at = NULL, updated_at = ? "
                "WHERE subscription_id = ? AND next_attempt_at IS NOT NULL "
                f"AND status IN {UNFINISHED}",
                (self.codec.time(now), subscription_id),
            )
            self._bump_subscriptions_version(db, [tenant_of(found[0][0])])

    def get_subscription(self, subscription_id: str) -> Subscription:
        """The subscription with this id; `NotFound` otherwise."""
        rows = self._rows(
            f"SELECT {SUBSCRIPTION_COLUMNS} FROM {{schema}}.subscriptions WHERE id = ?",
            (subscription_id,),
        )
        if not rows:
            raise NotFound(f"no subscription with id {subscription_id!r}")
        return subscription(self.codec, rows[0])

    def list_subscriptions(
        self,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        tenant: TenantFilter = ALL_TENANTS,
    ) -> Page[Subscription]:
        """Subscriptions, oldest first (of one tenant): a page of ``limit``, or all (None)."""
        conditions, parameters = where_clause(
            ("seq >", decode_cursor(cursor, "subscriptions") or 0), tenant_filter(tenant)
        )
        text = f"SELECT seq, {SUBSCRIPTION_COLUMNS} FROM {{schema}}.subscriptions {conditions}"
        if limit is not None:
            text += "ORDER BY seq LIMIT ?"
            parameters.append(check_limit(limit) + 1)
        else:
            text += "ORDER BY seq"
        found = [
            (row[0], subscription(self.codec, row[1:])) for row in self._rows(text, parameters)
        ]
        return page_of(found, len(found) if limit is None else limit, "subscriptions")

    def subscription_patterns(self, tenant: str | None) -> list[Route]:
        """The `Route` of each of the tenant's enabled subscriptions, oldest first: three
        columns, none of the rest decoded (a publisher's cold path)."""
        rows = self._rows(
            "SELECT id, event_types, filter FROM {schema}.subscriptions "
            "WHERE tenant = ? AND enabled ORDER BY seq",
            [tenant_key(tenant)],
        )
        texts, document = self.codec.from_texts, self.codec.from_document
        return [
            Route(row[0], texts(row[1]), None if row[2] is None else document(row[2]))
            for row in rows
        ]

    # -- settings ---------------------------------------------------------------------------
    def read_setting(self, name: str) -> tuple[str, datetime] | None:
        """A setting's value and when it was written, or None."""
        rows = self._rows("SELECT value, updated_at FROM {schema}.settings WHERE name = ?", [name])
        return None if not rows else (rows[0][0], self.codec.from_time(rows[0][1]))

    def write_setting(self, name: str, value: str, now: datetime) -> None:
        """Set a setting (replacing it)."""
        with self._writing() as db:
            self._run(
                db,
                "INSERT INTO {schema}.settings (name, value, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
                "updated_at = excluded.updated_at",
                (name, value, self.codec.time(now)),
            )

    # -- the event catalog -----------------------------------------------------------------
    def put_event_type(self, event_type: EventType) -> None:
        """Add or replace (by name) a catalog entry."""
        codec = self.codec
        with self._writing() as db:
            self._run(
                db,
                f"INSERT INTO {{schema}}.event_types ({EVENT_TYPE_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "description = excluded.description, schema = excluded.schema, "
                "examples = excluded.examples, deprecated = excluded.deprecated, "
                "updated_at = excluded.updated_at",
                (
                    event_type.name,
                    event_type.description,
                    None
                    if event_type.schema is None
                    else codec.document(thawed(event_type.schema)),
                    codec.document(thawed(event_type.examples)),
                    event_type.deprecated,
                    codec.time(event_type.created_at),
                    codec.time(event_type.updated_at),
                ),
            )
            self._bump_subscriptions_version(db, [CATALOG_CHANGE])

    def remove_event_type(self, name: str) -> None:
        """Delete a catalog entry; `NotFound` if there is none."""
        with self._writing() as db:
            cursor = self._run(db, "DELETE FROM {schema}.event_types WHERE name = ?", (name,))
            if cursor.rowcount == 0:
                raise NotFound(f"no event type {name!r} in the catalog")
            self._bump_subscriptions_version(db, [CATALOG_CHANGE])

    def list_event_types(self) -> list[EventType]:
        """Every catalog entry, by name."""
        codec = self.codec
        rows = self._rows(f"SELECT {EVENT_TYPE_COLUMNS} FROM {{schema}}.event_types ORDER BY name")
        return [
            EventType(
                name=row[0],
                description=row[1],
                schema=None if row[2] is None else codec.from_document(row[2]),
                examples=codec.from_document(row[3]),
                deprecated=bool(row[4]),
                created_at=codec.from_time(row[5]),
                updated_at=codec.from_time(row[6]),
            )
            for row in rows
        ]

    def subscriptions_version(self) -> int:
        """A counter bumped, in the same transaction, by every subscription change."""
        rows = self._rows(
            "SELECT value FROM {schema}.webhook_dispatch_meta WHERE key = 'subscriptions_version'"
        )
        return int(rows[0][0])

    # -- messages and deliveries -----------------------------------------------------------
    def get_message(self, message_id: str) -> Message:
        """The message with this id; `NotFound` otherwise."""
        rows = self._rows(
            f"SELECT {MESSAGE_COLUMNS} FROM {{schema}}.messages WHERE id = ?", (message_id,)
        )
        if not rows:
            raise NotFound(f"no message with id {message_id!r}")
        return message(self.codec, rows[0])

    def list_messages(
        self,
        *,
        event_type: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
        tenant: TenantFilter = ALL_TENANTS,
    ) -> Page[Message]:
        """The newest messages first, optionally of one event type and one tenant, a page
        at a time."""
        conditions, parameters = where_clause(
            tenant_filter(tenant),
            ("event_type", event_type),
            ("seq <", decode_cursor(cursor, "messages")),
        )
        parameters.append(check_limit(limit) + 1)
        rows = self._rows(
            f"SELECT seq, {MESSAGE_COLUMNS} FROM {{schema}}.messages {conditions}"
            "ORDER BY seq DESC LIMIT ?",
            parameters,
        )
        return page_of([(row[0], message(self.codec, row[1:])) for row in rows], limit, "messages")

    def get_delivery(self, delivery_id: str) -> Delivery:
        """The delivery with this id; `NotFound` otherwise."""
        rows = self._rows(
            f"SELECT {DELIVERY_COLUMNS} FROM {{schema}}.deliveries WHERE id = ?", (delivery_id,)
        )
        if not rows:
            raise NotFound(f"no delivery with id {delivery_id!r}")
        return delivery(self.codec, rows[0])

    def list_deliveries(
        self,
        *,
        message_id: str | None = None,
        subscription_id: str | None = None,
        status: DeliveryStatus | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
        tenant: TenantFilter = ALL_TENANTS,
    ) -> Page[Delivery]:
        """Deliveries matching every given filter, oldest first, a page at a time."""
        conditions, parameters = where_clause(
            tenant_filter(tenant),
            ("message_id", message_id),
            ("subscription_id", subscription_id),
            ("status", None if status is None else DeliveryStatus(status).value),
            ("seq >", decode_cursor(cursor, "deliveries")),
        )
        parameters.append(check_limit(limit) + 1)
        rows = self._rows(
            f"SELECT seq, {DELIVERY_COLUMNS} FROM {{schema}}.deliveries {conditions}"
            "ORDER BY seq LIMIT ?",
            parameters,
        )
        found = [(row[0], delivery(self.codec, row[1:])) for row in rows]
        return page_of(found, limit, "deliveries")

    def list_attempts(
        self, *, message_id: str | None = None, delivery_id: str | None = None
    ) -> list[Attempt]:
        """Attempts of a message or of a delivery, oldest first."""
        conditions: list[str] = []
        parameters: list[Any] = []
        if message_id is not None:
            # Through the message's deliveries: attempts have no message index.
            conditions.append(
                "delivery_id IN (SELECT id FROM {schema}.deliveries WHERE message_id = ?)"
            )
            parameters.append(message_id)
        if delivery_id is not None:
            conditions.append("delivery_id = ?")
            parameters.append(delivery_id)
        where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
        rows = self._rows(
            f"SELECT {ATTEMPT_COLUMNS} FROM {{schema}}.attempts {where}"
            "ORDER BY started_at, number, seq",
            parameters,
        )
        return [attempt(self.codec, row) for row in rows]

    # -- repair --------------------------------------------------------------------------
    def release(
        self, delivery_ids: Sequence[str], worker_id: str, *, due_at: datetime | None = None
    ) -> None:
        """Give leased deliveries back unattempted: pending again, due as before (or at
        ``due_at``)."""
        if not delivery_ids:
            return
        matching, ids = self._in("id", list(delivery_ids))
        with self._writing() as db:
            released = self._run(
                db,
                "UPDATE {schema}.deliveries SET status = 'pending', lease_owner = NULL, "
                "lease_expires_at = NULL, next_attempt_at = COALESCE(?, next_attempt_at) "
                f"WHERE {matching} AND status = 'delivering' AND lease_owner = ?",
                (None if due_at is None else self.codec.time(due_at), ids, worker_id),
            ).rowcount
            if released:
                self._notify(db)

    def schedule_manual(self, delivery_ids: Sequence[str], now: datetime) -> list[Delivery]:
        """Make deliveries due at ``now`` for one manual attempt, all or nothing.

        Deliveries being delivered are left alone; an unknown id raises `NotFound` and
        changes nothing.
        """
        with self._writing() as db:
            return self._schedule_manual(db, list(delivery_ids), now)

    def recover(
        self, subscription_id: str, *, since: datetime, until: datetime, now: datetime
    ) -> list[Delivery]:
        """Schedule a manual attempt for the subscription's failed or exhausted deliveries
        whose message was created in ``[since, until)``."""
        with self._writing() as db:
            if not self._run(
                db, "SELECT 1 FROM {schema}.subscriptions WHERE id = ?", (subscription_id,)
            ).fetchall():
                raise NotFound(f"no subscription with id {subscription_id!r}")
            ids = [
                row[0]
                for row in self._run(
                    db,
                    "SELECT d.id FROM {schema}.deliveries AS d "
                    "JOIN {schema}.messages AS m ON m.id = d.message_id "
                    "WHERE d.subscription_id = ? AND d.status IN ('failed', 'exhausted') "
                    "AND m.created_at >= ? AND m.created_at < ? ORDER BY d.seq",
                    (subscription_id, self.codec.time(since), self.codec.time(until)),
                ).fetchall()
            ]
            return self._schedule_manual(db, ids, now)

    def messages_between(
        self,
        tenant: str | None,
        *,
        since: datetime,
        until: datetime,
        after: str | None = None,
        limit: int = 500,
    ) -> tuple[list[Message], str | None]:
        """The tenant's messages created in ``[since, until)``, oldest first, in batches
        keyed by ``(created_at, seq)`` (the ``messages_created_at`` index)."""
        after_time, after_seq = (
            (self.codec.time(since), 0) if after is None else _replay_cursor(self.codec, after)
        )
        rows = self._rows(
            f"SELECT created_at, seq, {MESSAGE_COLUMNS} FROM {{schema}}.messages "
            "WHERE created_at >= ? AND created_at < ? AND tenant = ? AND test = ? "
            "AND (created_at > ? OR (created_at = ? AND seq > ?)) "
            "ORDER BY created_at, seq LIMIT ?",
            (
                self.codec.time(since),
                self.codec.time(until),
                tenant_key(tenant),
                False,
                after_time,
                after_time,
                after_seq,
                limit + 1,
            ),
        )
        batch = [message(self.codec, row[2:]) for row in rows[:limit]]
        if len(rows) <= limit:
            return batch, None
        last = rows[limit - 1]
        return batch, f"{to_us(self.codec.from_time(last[0]))}:{last[1]}"

    def count_messages_between(
        self, tenant: str | None, *, since: datetime, until: datetime
    ) -> int:
        """How many messages `messages_between` would go through."""
        rows = self._rows(
            "SELECT COUNT(*) FROM {schema}.messages "
            "WHERE created_at >= ? AND created_at < ? AND tenant = ? AND test = ?",
            (self.codec.time(since), self.codec.time(until), tenant_key(tenant), False),
        )
        return int(rows[0][0])

    def deliveries_for(
        self, subscription_id: str, message_ids: Sequence[str]
    ) -> dict[str, Delivery]:
        """The subscription's delivery of each of these messages that has one."""
        if not message_ids:
            return {}
        matching, values = self._in("message_id", list(message_ids))
        rows = self._rows(
            f"SELECT {DELIVERY_COLUMNS} FROM {{schema}}.deliveries "
            f"WHERE subscription_id = ? AND {matching}",
            (subscription_id, values),
        )
        return {row[1]: delivery(self.codec, row) for row in rows}

    def add_manual_deliveries(
        self, subscription_id: str, message_ids: Sequence[str], now: datetime
    ) -> list[Delivery]:
        """New manual deliveries of messages the subscription has none of; the
        subscription's row is locked, so two replays cannot both add one."""
        wanted = list(dict.fromkeys(message_ids))
        with self._writing() as db:
            found = self._run(
                db,
                "SELECT tenant FROM {schema}.subscriptions WHERE id = ?" + self.lock_rows,
                (subscription_id,),
            ).fetchone()
            if found is None:
                raise NotFound(f"no subscription with id {subscription_id!r}")
            if not wanted:
                return []
            matching, values = self._in("id", wanted)
            owners = dict(
                self._run(
                    db,
                    f"SELECT id, tenant FROM {{schema}}.messages WHERE {matching}",
                    (values,),
                ).fetchall()
            )
            for message_id in wanted:
                if owners.get(message_id) != found[0]:
                    raise NotFound(
                        f"no message {message_id!r} of the subscription's tenant "
                        f"{tenant_of(found[0])!r}"
                    )
            matching, values = self._in("message_id", wanted)
            have = {
                row[0]
                for row in self._run(
                    db,
                    "SELECT message_id FROM {schema}.deliveries "
                    f"WHERE subscription_id = ? AND {matching}",
                    (subscription_id, values),
                ).fetchall()
            }
            moment = self.codec.from_time(self.codec.time(now))
            added = [
                Delivery(
                    id=new_id("dlv"),
                    message_id=message_id,
                    subscription_id=subscription_id,
                    next_attempt_at=moment,
                    next_trigger=AttemptTrigger.MANUAL,
                    created_at=moment,
                    updated_at=moment,
                )
                for message_id in wanted
                if message_id not in have
            ]
            for new in added:
                self._run(
                    db,
                    "INSERT INTO {schema}.deliveries (id, message_id, subscription_id, "
                    "status, attempt_count, next_attempt_at, next_trigger, created_at, "
                    f"updated_at, ordered, tenant) SELECT ?, ?, s.id, 'pending', 0, ?, "
                    f"'manual', ?, ?, {self._ordered_of('s')}, s.tenant "
                    "FROM {schema}.subscriptions AS s WHERE s.id = ?",
                    (
                        new.id,
                        new.message_id,
                        self.codec.time(now),
                        self.codec.time(now),
                        self.codec.time(now),
                        subscription_id,
                    ),
                )
            if added:
                self._notify(db)
            return added

    def record_test(self, message: Message, state: Delivery, attempt: Attempt) -> None:
        """Keep a test send: its message, its (final) delivery and its one attempt."""
        with self._writing() as db:
            self._run(
                db,
                f"INSERT INTO {{schema}}.messages ({MESSAGE_COLUMNS}) "
                f"VALUES ({', '.join('?' * len(MESSAGE_COLUMNS.split(',')))})",
                message_row(self.codec, message),
            )
            self._run(
                db,
                f"INSERT INTO {{schema}}.deliveries ({DELIVERY_COLUMNS}, tenant) "
                f"VALUES ({', '.join('?' * (len(DELIVERY_COLUMNS.split(',')) + 1))})",
                (
                    state.id,
                    state.message_id,
                    state.subscription_id,
                    state.status.value,
                    state.attempt_count,
                    None,
                    state.next_trigger.value,
                    self.codec.time(state.created_at),
                    self.codec.time(state.updated_at),
                    state.last_status_code,
                    state.last_error,
                    tenant_key(message.tenant),
                ),
            )
            self._run(
                db,
                f"INSERT INTO {{schema}}.attempts ({ATTEMPT_COLUMNS}) "
                f"VALUES ({', '.join('?' * len(ATTEMPT_COLUMNS.split(',')))})",
                attempt_row(self.codec, attempt),
            )

    def _schedule_manual(self, db: Connection, ids: list[str], now: datetime) -> list[Delivery]:
        if not ids:
            return []
        matching, values = self._in("id", ids)
        rows = {
            row[0]: row
            for row in self._run(
                db,
                f"SELECT {DELIVERY_COLUMNS} FROM {{schema}}.deliveries WHERE {matching}"
                f"{self.lock_rows}",
                (values,),
            ).fetchall()
        }
        for delivery_id in ids:
            if delivery_id not in rows:
                raise NotFound(f"no delivery with id {delivery_id!r}")
        moment = self.codec.from_time(self.codec.time(now))
        updated = [
            attrs.evolve(
                delivery(self.codec, rows[delivery_id]),
                status=DeliveryStatus.PENDING,
                next_attempt_at=moment,
                next_trigger=AttemptTrigger.MANUAL,
                updated_at=moment,
            )
            for delivery_id in ids
            if rows[delivery_id][3] != DeliveryStatus.DELIVERING.value
        ]
        if updated:
            matching, values = self._in("id", [d.id for d in updated])
            self._run(
                db,
                "UPDATE {schema}.deliveries SET status = 'pending', next_attempt_at = ?, "
                "next_trigger = 'manual', updated_at = ?, ordered = COALESCE(("
                f"SELECT {self._ordered_of('s')} FROM {{schema}}.subscriptions AS s "
                "WHERE s.id = deliveries.subscription_id), ordered) "
                f"WHERE {matching} AND status != 'delivering'",
                (self.codec.time(now), self.codec.time(now), values),
            )
            self._notify(db)
        return updated

    def count_purgeable(self, older_than: datetime) -> int:
        """How many messages `purge` would delete now."""
        rows = self._rows(
            "SELECT COUNT(*) FROM {schema}.messages AS m " + _PURGEABLE,
            (self.codec.time(older_than),),
        )
        return int(rows[0][0])

    def purge(self, older_than: datetime, *, limit: int | None = None) -> int:
        """Delete up to ``limit`` (None: all) messages created before ``older_than`` whose
        deliveries are all final, oldest first; their deliveries and attempts go with them
        (foreign-key cascade)."""
        text = (
            "DELETE FROM {schema}.messages WHERE id IN (SELECT m.id FROM {schema}.messages AS m "
            + _PURGEABLE
            + " ORDER BY m.created_at"
        )
        parameters: list[Any] = [self.codec.time(older_than)]
        if limit is not None:
            text += " LIMIT ?"
            parameters.append(limit)
        with self._writing() as db:
            return self._run(db, text + ")", parameters).rowcount

    def stats(self, now: datetime, *, tenant: TenantFilter = ALL_TENANTS) -> Stats:
        """Counts of unfinished deliveries (from the partial indexes) and subscriptions,
        of one tenant or of all."""
        scoped = "" if isinstance(tenant, AllTenants) else " AND tenant = ?"
        where = "" if isinstance(tenant, AllTenants) else "WHERE tenant = ?"
        key = () if isinstance(tenant, AllTenants) else (tenant_key(tenant),)
        [(pending, oldest, delivering, total, disabled, failing)] = self._rows(
            "SELECT (SELECT COUNT(*) FROM {schema}.deliveries WHERE status = 'pending'"
            f"{scoped}), "
            "(SELECT MIN(created_at) FROM {schema}.deliveries WHERE status = 'pending'"
            f"{scoped}), "
            f"(SELECT COUNT(*) FROM {{schema}}.deliveries WHERE status = 'delivering'{scoped}), "
            "COUNT(*), COALESCE(SUM(CASE WHEN enabled THEN 0 ELSE 1 END), 0), "
            "COALESCE(SUM(CASE WHEN enabled AND consecutive_failures > 0 THEN 1 ELSE 0 END), 0) "
            f"FROM {{schema}}.subscriptions {where}",
            key * 4,
        )
        return Stats(
            pending=pending,
            delivering=delivering,
            oldest_pending_at=None if oldest is None else self.codec.from_time(oldest),
            subscriptions=total,
            disabled_subscriptions=disabled,
            failing_subscriptions=failing,
        )

    # -- tenants ---------------------------------------------------------------------------
    _TENANT_COUNTS = (
        "(SELECT COUNT(*) FROM {schema}.subscriptions AS s WHERE s.tenant = t.id), "
        "(SELECT COUNT(*) FROM {schema}.deliveries AS d WHERE d.status = 'pending' "
        "AND d.tenant = t.id)"
    )

    def save_tenant(self, tenant: Tenant) -> Tenant:
        """Create or replace a tenant's limits and metadata; ``created_at`` stays the
        first save's (or its first subscription's)."""
        with self._writing() as db:
            self._run(
                db,
                f"INSERT INTO {{schema}}.tenants ({TENANT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET rate_limit = excluded.rate_limit, "
                "max_in_flight = excluded.max_in_flight, "
                "max_subscriptions = excluded.max_subscriptions, "
                "metadata = excluded.metadata, updated_at = excluded.updated_at",
                (
                    tenant.id,
                    tenant.rate_limit,
                    tenant.max_in_flight,
                    tenant.max_subscriptions,
                    self.codec.document(dict(tenant.metadata)),
                    self.codec.time(tenant.created_at),
                    self.codec.time(tenant.updated_at),
                ),
            )
            self._notify(db)  # a raised limit may free held deliveries
        return self.get_tenant(tenant.id)

    def get_tenant(self, tenant_id: str) -> Tenant:
        """The tenant with its counts; `NotFound` unless it exists."""
        rows = self._rows(
            f"SELECT {prefixed('t', TENANT_COLUMNS)}, {self._TENANT_COUNTS} "
            "FROM {schema}.tenants AS t WHERE t.id = ? AND NOT t.deleting",
            (tenant_id,),
        )
        if not rows:
            raise NotFound(f"no tenant {tenant_id!r}")
        return tenant_from_row(self.codec, rows[0][:7], rows[0][7], rows[0][8])

    def list_tenants(
        self, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
    ) -> Page[Tenant]:
        """Tenants in the order they came to exist, with their counts, a page at a time."""
        rows = self._rows(
            f"SELECT t.seq, {prefixed('t', TENANT_COLUMNS)}, {self._TENANT_COUNTS} "
            "FROM {schema}.tenants AS t WHERE t.seq > ? AND NOT t.deleting "
            "ORDER BY t.seq LIMIT ?",
            (decode_cursor(cursor, "tenants") or 0, check_limit(limit) + 1),
        )
        found = [(row[0], tenant_from_row(self.codec, row[1:8], row[8], row[9])) for row in rows]
        return page_of(found, limit, "tenants")

    def close_tenant(self, tenant_id: str, now: datetime) -> None:
        """Mark the tenant as being deleted, remove its subscriptions and cancel its
        pending deliveries, in one transaction."""
        moment = self.codec.time(now)
        with self._writing() as db:
            self._run(
                db,
                "INSERT INTO {schema}.tenants (id, metadata, created_at, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (tenant_id, self.codec.document({}), moment, moment),
            )
            self._run(
                db, "UPDATE {schema}.tenants SET deleting = ? WHERE id = ?", (True, tenant_id)
            )
            self._run(db, "DELETE FROM {schema}.subscriptions WHERE tenant = ?", (tenant_id,))
            self._cancel_tenant(db, tenant_id, moment)
            self._bump_subscriptions_version(db, [tenant_id])

    def _cancel_tenant(self, db: Connection, tenant_id: str, moment: Any) -> None:
        """Cancel the tenant's unfinished deliveries that no live lease holds."""
        self._run(
            db,
            "UPDATE {schema}.deliveries SET status = 'cancelled', next_attempt_at = NULL, "
            "lease_owner = NULL, lease_expires_at = NULL, updated_at = ? "
            "WHERE tenant = ? AND next_attempt_at IS NOT NULL "
            "AND (status = 'pending' OR (status = 'delivering' AND lease_expires_at <= ?))",
            (moment, tenant_id, moment),
        )

    def purge_tenant(self, tenant_id: str, now: datetime, *, limit: int) -> tuple[int, int]:
        """Cancel what no live lease holds, delete up to ``limit`` of the tenant's
        messages that no live lease holds; the tenant's row goes with the last batch."""
        moment = self.codec.time(now)
        with self._writing() as db:
            self._cancel_tenant(db, tenant_id, moment)
            removed = self._run(
                db,
                "DELETE FROM {schema}.messages WHERE id IN (SELECT m.id FROM {schema}.messages "
                "AS m WHERE m.tenant = ? AND NOT EXISTS (SELECT 1 FROM {schema}.deliveries AS d "
                f"WHERE d.message_id = m.id AND d.status IN {UNFINISHED}) ORDER BY m.seq LIMIT ?)",
                (tenant_id, limit),
            ).rowcount
            (held,) = self._run(
                db,
                "SELECT COUNT(*) FROM {schema}.deliveries WHERE tenant = ? "
                f"AND status IN {UNFINISHED}",
                (tenant_id,),
            ).fetchone()
            if not removed and not held:
                self._run(db, "DELETE FROM {schema}.tenants WHERE id = ?", (tenant_id,))
            return removed, held
