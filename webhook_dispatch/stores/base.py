"""The store contract: what the dispatcher and worker need from memory, SQLite or PostgreSQL.

Every method is synchronous and does one unit of work in one transaction. Decisions
(matching, signing, retry timing, health) are made before or outside a store call; the
store only keeps and fetches. Claiming uses leases so a crashed worker's deliveries come
back once its lease expires.

`Store` is an abstract base class: a backend implements the abstract methods, and the
capabilities some backends have are explicit members with a working default, so callers
never probe with ``getattr``:

- `Store.transactional_outbox`: True when `Store.publish` and `Store.publish_many`
  accept a keyword-only ``connection=`` (a database connection with an open
  transaction, in which the rows are written and not committed; PostgreSQL: a
  ``psycopg.Connection``, SQLite: a ``sqlite3.Connection`` to the store's own file)
  and `Store.publish_many_async` takes a ``psycopg.AsyncConnection`` (PostgreSQL).
  The dispatcher refuses ``connection=`` with `ConfigurationError` for other stores.
- `Store.listen_for_work`: call back whenever another process may have made work due
  (PostgreSQL ``LISTEN/NOTIFY``); the default never calls, and the worker's poll
  remains the fallback.
- `Store.record_and_claim`: `Store.record` then `Store.claim_due`; a backend that can
  overrides it to do both in one transaction (one commit per worker round) and says so
  with `Store.atomic_round`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, NamedTuple

import attrs

from ..errors import ConfigurationError
from ..health import AutoDisable
from ..models import (
    ALL_TENANTS,
    Attempt,
    Delivery,
    DeliveryStatus,
    EventType,
    Message,
    Subscription,
    Tenant,
    TenantFilter,
)
from ..paging import Page

__all__ = [
    "CATALOG_CHANGE",
    "FAILING_MAX_IN_FLIGHT",
    "AttemptRecord",
    "Claim",
    "ClaimPlan",
    "PublishResult",
    "RecordResult",
    "Route",
    "Stats",
    "Store",
    "RING_WINDOW",
    "SubscriptionTurns",
    "TenantGate",
    "due_ring",
    "ring_after",
    "share_round_robin",
]


CATALOG_CHANGE = "#catalog"
"""What `Store.changed_tenants` names for a change to the event catalog (no tenant id
can contain ``#``): publishers then reload the catalog, and no tenant's routes."""


def _unsupported(store: object, what: str) -> ConfigurationError:
    """A custom store asked for a capability it does not implement."""
    return ConfigurationError(f"{type(store).__name__} does not implement {what}")


class Route(NamedTuple):
    """What a publisher needs of a subscription to route messages to it."""

    id: str
    event_types: tuple[str, ...]
    filter: Mapping[str, Any] | None
    """The payload filter document, or None."""


@attrs.frozen
class Claim:
    """A delivery a worker now holds under a lease, with what it needs to send it."""

    delivery: Delivery
    message: Message
    subscription: Subscription


@attrs.frozen
class AttemptRecord:
    """Everything one finished attempt changes, written by `Store.record` in one go.

    ``delivery`` is the delivery's next state (status, attempt count, next due time,
    last status/error); it is applied only while ``worker_id`` still holds the lease.
    ``disable_subscription`` carries a reason when the outcome disables the
    subscription (a 410 Gone).
    """

    attempt: Attempt
    delivery: Delivery
    disable_subscription: str | None = None
    event_type: str | None = None
    """The message's event type, for the operational events this record causes
    (stores do not write it)."""
    tenant: str | None = None
    """The message's tenant, for the same (operational events stay within it)."""


@attrs.frozen
class RecordResult:
    """What `Store.record` changed beyond the attempts: subscriptions it disabled (a 410,
    or a failure run past the `AutoDisable` policy) and those that recovered (a success
    after failures)."""

    disabled: tuple[tuple[str, str], ...] = ()
    """``(subscription_id, reason)`` for each subscription this write disabled."""
    recovered: tuple[str, ...] = ()


@attrs.frozen
class Stats:
    """A summary of a store, from cheap queries (indexes on unfinished deliveries)."""

    pending: int
    """Deliveries waiting for an attempt (including those held on disabled subscriptions)."""
    delivering: int
    """Deliveries leased to a worker, attempt in flight."""
    oldest_pending_at: datetime | None
    """When the oldest pending delivery was created; None when nothing is pending."""
    subscriptions: int
    disabled_subscriptions: int
    failing_subscriptions: int
    """Enabled subscriptions whose last attempt failed."""

    def oldest_pending_age(self, now: datetime) -> float | None:
        """Seconds since the oldest pending delivery was created, or None."""
        if self.oldest_pending_at is None:
            return None
        return max(0.0, (now - self.oldest_pending_at).total_seconds())


FAILING_MAX_IN_FLIGHT = 2
"""The default in-flight cap of a subscription whose last attempt failed."""


class ClaimPlan:
    """Which due deliveries one claim may take, honouring per-subscription flow control.

    Pure bookkeeping shared by every store: the store walks due deliveries oldest due
    first and asks `consider` about each. A subscription gets at most its in-flight cap
    minus the attempts it has in flight under live leases (``max_in_flight``, else
    ``default_max_in_flight``, None = no cap), at most its ``allowance`` (rate-limit
    tokens) in this claim, and an ordered subscription only its oldest unfinished
    delivery, and only when none of its deliveries is in flight. `closed` lists the
    subscriptions that can give nothing more to this claim, so stores skip them in SQL.

    ``proven``, when given, is slow start: a subscription without its own
    ``max_in_flight`` that is not in it (the worker has not yet seen it answer) gets at
    most `FAILING_MAX_IN_FLIGHT` attempts in flight, like a failing one, so an endpoint
    that never answers holds two slots, not a full share, while its first attempts run.
    """

    def __init__(
        self,
        *,
        limit: int,
        default_max_in_flight: int | None,
        allowance: Mapping[str, int] | None,
        in_flight: Mapping[str, int],
        proven: Collection[str] | None = None,
    ) -> None:
        self.limit = limit
        self.proven = proven
        self.default_max_in_flight = default_max_in_flight
        self.allowance = allowance or {}
        self.in_flight = dict(in_flight)
        self.taken = 0
        self.closed: set[str] = {
            subscription_id for subscription_id, tokens in self.allowance.items() if tokens <= 0
        }
        self._room: dict[str, float] = {}

    def is_full(self) -> bool:
        """True once ``limit`` deliveries are taken."""
        return self.taken >= self.limit

    def room(
        self,
        subscription_id: str,
        *,
        max_in_flight: int | None,
        ordered: bool,
        failing: bool = False,
    ) -> float:
        """How many more deliveries of this subscription the claim may take."""
        room = self._room.get(subscription_id)
        if room is None:
            cap = 1 if ordered else max_in_flight or self.default_max_in_flight
            unproven = self.proven is not None and subscription_id not in self.proven
            if (failing or unproven) and max_in_flight is None and cap is not None:
                # An endpoint whose last attempt failed (often timing out), or one not yet
                # seen answering, gets only a few slots until it succeeds, so it cannot
                # hold the worker.
                cap = min(cap, FAILING_MAX_IN_FLIGHT)
            room = float("inf") if cap is None else cap - self.in_flight.get(subscription_id, 0)
            if subscription_id in self.allowance:
                room = min(room, self.allowance[subscription_id])
            self._room[subscription_id] = room
            if room <= 0:
                self.closed.add(subscription_id)
        return room

    def consider(
        self,
        subscription_id: str,
        *,
        max_in_flight: int | None = None,
        ordered: bool = False,
        is_head: bool = True,
        failing: bool = False,
    ) -> bool:
        """Take this delivery? ``is_head``: it is its ordered subscription's oldest
        unfinished delivery (always True for unordered ones); ``failing``: the
        subscription's last attempt failed (its default cap shrinks to
        `FAILING_MAX_IN_FLIGHT`)."""
        if self.is_full() or subscription_id in self.closed:
            return False
        room = self.room(
            subscription_id, max_in_flight=max_in_flight, ordered=ordered, failing=failing
        )
        if room <= 0 or not is_head:
            return False
        room -= 1
        self._room[subscription_id] = room
        self.taken += 1
        if room <= 0 or ordered:
            self.closed.add(subscription_id)
        return True

    def close(self, subscription_id: str) -> None:
        """Nothing more of this subscription in this claim (its ordered head is not due)."""
        self.closed.add(subscription_id)


def share_round_robin(
    tenants: Sequence[str], limit: int, take: Callable[[str, int], int]
) -> str | None:
    """Fair claiming: give ``limit`` slots to ``tenants`` in turn.

    ``take(tenant, quota)`` claims at most ``quota`` of that tenant's due deliveries and
    returns how many it took. Each tenant gets an equal share of what is left when its
    turn comes (so a tenant with little due leaves its share to those after it); a
    second pass offers what remains to the tenants that used their whole share, in the
    same order, continuing where their first walk stopped. Returns the last tenant of
    the first pass: the next claim's ring starts after it, so with more tenants due
    than slots, every tenant gets its turn.
    """
    taken = 0
    hungry: list[str] = []
    last: str | None = None
    for index, tenant in enumerate(tenants):
        left = limit - taken
        if left <= 0:
            break
        quota = -(-left // (len(tenants) - index))
        got = take(tenant, quota)
        taken += got
        last = tenant
        if got >= quota:
            hungry.append(tenant)
    for tenant in hungry:
        left = limit - taken
        if left <= 0:
            break
        taken += take(tenant, left)
    return last


def ring_after(tenants: Sequence[str], cursor: str | None, count: int) -> list[str]:
    """Up to ``count`` of the sorted ``tenants``, starting after ``cursor`` and
    wrapping around: the round-robin order of one claim."""
    if cursor is None:
        return list(tenants[:count])
    start = next((i for i, tenant in enumerate(tenants) if tenant > cursor), len(tenants))
    return [*tenants[start:], *tenants[:start]][:count]


RING_WINDOW = 256
"""Tenants with pending deliveries one ring query of a SQL store looks at."""


def due_ring(
    scan: Callable[[str, bool], Sequence[tuple[str, bool]]], cursor: str | None, count: int
) -> list[str]:
    """Up to ``count`` tenants with due deliveries, in round-robin order: those after
    ``cursor`` (the previous claim's last tenant), then from the first, wrapping around.

    ``scan(bound, inclusive)`` returns up to `RING_WINDOW` ``(tenant, has due
    deliveries)`` pairs, in tenant order, of the tenants with pending deliveries from
    ``bound`` (included when ``inclusive``); this walks it window by window.
    """
    due: list[str] = []
    passes = [(cursor, False), ("", True)] if cursor is not None else [("", True)]
    for number, (bound, inclusive) in enumerate(passes):
        while len(due) < count:
            rows = scan(bound, inclusive)
            for tenant, is_due in rows:
                if number and cursor is not None and tenant > cursor:
                    return due  # wrapped around to where the first pass began
                if is_due:
                    due.append(tenant)
                    if len(due) == count:
                        return due
            if len(rows) < RING_WINDOW:
                break  # the last tenant with pending deliveries was seen
            bound, inclusive = rows[-1][0], False
    return due


CURSORS_KEPT = 10_000
"""Tenants whose subscription ring position a store remembers (forgotten all at once
when full: the next claim of a forgotten tenant starts its ring from the first)."""


class SubscriptionTurns:
    """Within a tenant, its subscriptions with due deliveries take turns the way
    tenants do (`share_round_robin`), so one endpoint's backlog cannot hold back the
    tenant's other endpoints; this keeps, per tenant, the subscription the last claim
    served last in its first pass, where the tenant's next turn order starts after.

    `take` makes one claim's ``take(tenant, quota)`` for `share_round_robin` out of
    ``ring(tenant, cursor, count)``, the tenant's due subscriptions in turn order (up
    to ``count``, starting after ``cursor``), and ``walk(tenant, subscription,
    quota)``, which takes up to ``quota`` of one subscription's due deliveries and
    returns how many it took. A tenant is offered twice in a claim when the first pass
    leaves slots over: its ring is asked for once, and only the first pass moves its
    cursor.
    """

    def __init__(self) -> None:
        self._cursors: dict[str, str] = {}

    def take(
        self,
        ring: Callable[[str, str | None, int], Sequence[str]],
        walk: Callable[[str, str, int], int],
        gate: TenantGate | None = None,
        ahead: Callable[[str, Sequence[str], int], None] | None = None,
        closed: Collection[str] = (),
    ) -> Callable[[str, int], int]:
        """One claim's ``take(tenant, quota)``, see the class; ``gate`` caps what each
        tenant gets by its tenant-wide limits; ``ahead(tenant, order, quota)``, when
        given, is told a tenant's turn order before its walks (a SQL store fetches the
        first rows of every subscription in it in one statement); subscriptions in
        ``closed`` (the claim's, read as it grows) are left out of a turn order."""
        rings: dict[str, Sequence[str]] = {}

        def take(tenant: str, quota: int) -> int:
            if gate is not None:
                quota = int(min(quota, gate.room(tenant)))
            if quota <= 0:
                return 0
            order = rings.get(tenant)
            first = order is None
            if order is None:
                # Twice the quota: a few of them may be at their cap for this claim.
                count = min(RING_WINDOW, 2 * quota + 2)
                found = ring(tenant, self._cursors.get(tenant), count)
                order = rings[tenant] = [s for s in found if s not in closed]
                if order and ahead is not None:
                    ahead(tenant, order, quota)
            if not order:
                return 0
            got = 0

            def take_one(subscription: str, share: int) -> int:
                nonlocal got
                taken = walk(tenant, subscription, share)
                got += taken
                return taken

            last = share_round_robin(order, quota, take_one)
            if first and last is not None:
                if len(self._cursors) >= CURSORS_KEPT and tenant not in self._cursors:
                    self._cursors.clear()
                self._cursors[tenant] = last
            if gate is not None:
                gate.took(tenant, got)
            return got

        return take

    def forget(self, tenant: str) -> None:
        """Drop a tenant's ring position (the tenant was deleted)."""
        self._cursors.pop(tenant, None)


class TenantGate:
    """Tenant-wide limits during one claim, across every endpoint of the tenant.

    ``settings`` maps a tenant id to ``(max_in_flight, rate_limit, tat)``: the limits
    of `Tenant` and the tenant's rate state (a GCRA theoretical arrival time in
    microseconds, 0 when never used). ``in_flight`` counts the tenant's deliveries under
    live leases. `room` is how many more deliveries the tenant may get in this claim;
    `took` counts what it got; `tats` are the rate states to write back (in the claim's
    transaction, so every worker sees them).

    The rate limit lets a burst of one second's worth of requests (at least one) through,
    then ``rate_limit`` per second.
    """

    def __init__(
        self,
        settings: Mapping[str, tuple[int | None, float | None, int]],
        in_flight: Mapping[str, int],
        now_us: int,
    ) -> None:
        self._settings = settings
        self._in_flight = dict(in_flight)
        self._now_us = now_us
        self._taken: dict[str, int] = {}

    def room(self, tenant: str) -> float:
        """How many more of ``tenant``'s deliveries this claim may take."""
        found = self._settings.get(tenant)
        if found is None:
            return float("inf")
        max_in_flight, rate_limit, tat = found
        taken = self._taken.get(tenant, 0)
        room = float("inf")
        if max_in_flight is not None:
            room = max_in_flight - self._in_flight.get(tenant, 0) - taken
        if rate_limit is not None:
            interval = 1_000_000 / rate_limit
            burst = max(1.0, rate_limit) * interval
            start = max(tat, self._now_us - burst)
            room = min(room, (self._now_us - start) // interval - taken)
        return max(0.0, room)

    def took(self, tenant: str, count: int) -> None:
        """``count`` more of ``tenant``'s deliveries were taken."""
        if count:
            self._taken[tenant] = self._taken.get(tenant, 0) + count

    def tats(self) -> dict[str, int]:
        """The new rate state of each rate-limited tenant that got deliveries."""
        new: dict[str, int] = {}
        for tenant, count in self._taken.items():
            found = self._settings.get(tenant)
            if found is None or found[1] is None:
                continue
            interval = 1_000_000 / found[1]
            burst = max(1.0, found[1]) * interval
            start = max(found[2], self._now_us - burst)
            new[tenant] = int(start + count * interval)
        return new


@attrs.frozen
class PublishResult:
    """What `Store.publish` did: the stored message and whether it is new.

    ``created`` is False when the idempotency key matched an earlier message; that
    earlier message is returned and no delivery was added.
    """

    message: Message
    created: bool
    deliveries: int


class Store(abc.ABC):
    """Where subscriptions, messages, deliveries and attempts live.

    Implementations must be safe to call from several threads. ``blocking`` tells the
    async engine whether calls do I/O (and should run off the event loop).
    """

    blocking: ClassVar[bool] = True
    transactional_outbox: ClassVar[bool] = False
    """Whether `publish` and `publish_many` accept ``connection=`` (module docstring)."""
    atomic_round: ClassVar[bool] = False
    """Whether `record_and_claim` is one transaction: when it raises, nothing of it was
    written (the default records, then claims, in two steps)."""

    # -- subscriptions -----------------------------------------------------------
    @abc.abstractmethod
    def add_subscription(self, subscription: Subscription) -> None:
        """Store a new subscription."""

    @abc.abstractmethod
    def save_subscription(self, subscription: Subscription) -> None:
        """Replace a stored subscription by id; `NotFound` if it does not exist."""

    @abc.abstractmethod
    def remove_subscription(self, subscription_id: str, now: datetime) -> None:
        """Delete a subscription; its unfinished deliveries become ``cancelled``."""

    @abc.abstractmethod
    def get_subscription(self, subscription_id: str) -> Subscription:
        """The subscription with this id; `NotFound` otherwise."""

    @abc.abstractmethod
    def list_subscriptions(
        self,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        tenant: TenantFilter = ALL_TENANTS,
    ) -> Page[Subscription]:
        """Subscriptions, oldest first: a page of ``limit`` after ``cursor``, or every
        one (``limit=None``, for building a tenant's matching index); ``tenant`` keeps
        one tenant's (None: the untenanted ones)."""

    def add_subscription_once(self, subscription: Subscription) -> Subscription:
        """`add_subscription`, unless the subscription's tenant already has one with its
        ``key``: then that one is returned, unchanged (``subscribe(key=)``). The default
        looks the key up and adds; a backend makes the two one transaction."""
        if subscription.key is not None:
            for existing in self.list_subscriptions(tenant=subscription.tenant):
                if existing.key == subscription.key:
                    return existing
        self.add_subscription(subscription)
        return subscription

    def subscription_patterns(self, tenant: str | None) -> list[Route]:
        """The `Route` of each of the tenant's enabled subscriptions, oldest first: what
        a publisher's matching index is built from. The default reads them through
        `list_subscriptions`; a store may read only these three columns."""
        return [
            Route(s.id, s.event_types, None if s.filter is None else s.filter.document)
            for s in self.list_subscriptions(tenant=tenant)
            if s.enabled
        ]

    # -- replay ------------------------------------------------------------------
    def messages_between(
        self,
        tenant: str | None,
        *,
        since: datetime,
        until: datetime,
        after: str | None = None,
        limit: int = 500,
    ) -> tuple[list[Message], str | None]:
        """The tenant's messages created in ``[since, until)``, oldest first: a batch of
        at most ``limit`` after the ``after`` cursor, and the cursor of the next batch
        (None after the last). Every message is kept until purged, even one no
        subscription matched, so a replay also reaches what a disabled endpoint missed."""
        raise _unsupported(self, "replay (messages_between, deliveries_for, add_manual_deliveries)")

    def count_purgeable(self, older_than: datetime) -> int:
        """How many messages `purge` would delete now (``purge --dry-run``)."""
        raise _unsupported(self, "count_purgeable")

    def record_test(self, message: Message, state: Delivery, attempt: Attempt) -> None:
        """Keep a test send (`Dispatcher.send_example`): its message (``test=True``),
        its delivery, already final, and its one attempt."""
        raise _unsupported(self, "test sends (record_test)")

    def count_messages_between(
        self, tenant: str | None, *, since: datetime, until: datetime
    ) -> int:
        """How many messages `messages_between` would go through."""
        raise _unsupported(self, "replay (messages_between, deliveries_for, add_manual_deliveries)")

    def deliveries_for(
        self, subscription_id: str, message_ids: Sequence[str]
    ) -> dict[str, Delivery]:
        """The subscription's delivery of each of these messages that has one."""
        raise _unsupported(self, "replay (messages_between, deliveries_for, add_manual_deliveries)")

    def add_manual_deliveries(
        self, subscription_id: str, message_ids: Sequence[str], now: datetime
    ) -> list[Delivery]:
        """New deliveries, due ``now`` for a manual attempt, of messages the subscription
        has none of (those it has are skipped). `NotFound` for a missing subscription or
        message, or a message of another tenant than the subscription's."""
        raise _unsupported(self, "replay (messages_between, deliveries_for, add_manual_deliveries)")

    # -- settings ----------------------------------------------------------------
    def read_setting(self, name: str) -> tuple[str, datetime] | None:
        """A named setting kept in the store, and when it was written; None if it has
        none. Publishers keep their `delivery_settings` here for workers to compare.
        A store without settings (this default) keeps none, and the check is skipped."""
        return None

    def write_setting(self, name: str, value: str, now: datetime) -> None:  # noqa: B027
        """Keep a named setting (replacing it); this default keeps nothing."""

    # -- the event catalog -------------------------------------------------------
    def put_event_type(self, event_type: EventType) -> None:
        """Add or replace (by name) a catalog entry, counted as a subscription change
        whose `changed_tenants` holds `CATALOG_CHANGE`."""
        raise _unsupported(self, "an event catalog (put_event_type, remove_event_type)")

    def remove_event_type(self, name: str) -> None:
        """Delete a catalog entry; `NotFound` if there is none."""
        raise _unsupported(self, "an event catalog (put_event_type, remove_event_type)")

    def list_event_types(self) -> list[EventType]:
        """Every catalog entry, by name."""
        return []

    @abc.abstractmethod
    def subscriptions_version(self) -> int:
        """A number that changes whenever any subscription is added, changed or removed.

        Publishers cache their matching index and rebuild it when this changes, so a
        subscription added by another process is seen on the next publish.
        """

    # -- messages ----------------------------------------------------------------
    @abc.abstractmethod
    def publish(
        self, message: Message, subscription_ids: Sequence[str], now: datetime
    ) -> PublishResult:
        """Store ``message`` and one pending delivery per subscription, due at ``now``.

        One transaction. When ``message.idempotency_key`` equals a stored message's,
        nothing is written and that message is returned with ``created=False`` (also
        under concurrent publishes with one key).
        """

    @abc.abstractmethod
    def publish_many(
        self, items: Sequence[tuple[Message, Sequence[str]]], now: datetime
    ) -> list[PublishResult]:
        """`publish` for a batch, in one transaction, results in input order."""

    @abc.abstractmethod
    def get_message(self, message_id: str) -> Message:
        """The message with this id; `NotFound` otherwise."""

    @abc.abstractmethod
    def list_messages(
        self,
        *,
        event_type: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        tenant: TenantFilter = ALL_TENANTS,
    ) -> Page[Message]:
        """The newest messages first, optionally of one event type and one tenant: a
        page of ``limit`` after ``cursor`` (a `Page.next_cursor` of the same listing)."""

    # -- deliveries --------------------------------------------------------------
    @abc.abstractmethod
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
        """Take up to ``limit`` deliveries due at ``now`` and lease them to ``worker_id``.

        Due means: ``pending`` with ``next_attempt_at <= now`` on an enabled
        subscription, or ``delivering`` with an expired lease (its worker died).
        Claimed deliveries become ``delivering`` until ``lease_until``. Oldest due
        first. Two workers never hold the same delivery at once.

        Flow control holds here, so a slow endpoint never occupies a worker's slots
        (see `ClaimPlan`): a subscription with ``max_in_flight`` (else
        ``default_max_in_flight``) deliveries under live leases gets no more;
        ``allowance`` caps what one subscription gets from this call (the worker's
        rate-limit tokens); an ``ordered`` subscription gives only its oldest
        unfinished delivery, and only while none of its deliveries is in flight;
        ``proven`` is slow start (subscriptions not in it get two slots, see
        `ClaimPlan`). Expired leases are taken back regardless.
        """

    @abc.abstractmethod
    def record(
        self,
        records: Sequence[AttemptRecord],
        worker_id: str,
        *,
        auto_disable: AutoDisable | None = None,
    ) -> RecordResult:
        """Write finished attempts and their deliveries' next states in one transaction.

        A delivery's next state is written only while ``worker_id`` still holds its
        lease. The subscription changes (failure runs, a 410's disabling for a held
        delivery, ``auto_disable``) are decided by
        `webhook_dispatch.health.settle_health`, once for every store; the store only
        reads the rows it needs and writes what that returns.
        """

    @abc.abstractmethod
    def release(
        self, delivery_ids: Sequence[str], worker_id: str, *, due_at: datetime | None = None
    ) -> None:
        """Give back leased deliveries unattempted (graceful shutdown): pending again,
        due as before, or at ``due_at`` (a delivery over its rate limit). The attempt
        count does not change."""

    @abc.abstractmethod
    def next_due_at(self) -> datetime | None:
        """The earliest ``next_attempt_at`` of a pending delivery on an enabled
        subscription, or the earliest lease expiry of a ``delivering`` one; None if none."""

    @abc.abstractmethod
    def get_delivery(self, delivery_id: str) -> Delivery:
        """The delivery with this id; `NotFound` otherwise."""

    @abc.abstractmethod
    def list_deliveries(
        self,
        *,
        message_id: str | None = None,
        subscription_id: str | None = None,
        status: DeliveryStatus | None = None,
        limit: int = 100,
        cursor: str | None = None,
        tenant: TenantFilter = ALL_TENANTS,
    ) -> Page[Delivery]:
        """Deliveries matching every given filter, oldest first: a page of ``limit``
        after ``cursor`` (a `Page.next_cursor` of the same listing)."""

    @abc.abstractmethod
    def list_attempts(
        self, *, message_id: str | None = None, delivery_id: str | None = None
    ) -> list[Attempt]:
        """Attempts of a message or of a delivery, oldest first."""

    @abc.abstractmethod
    def schedule_manual(self, delivery_ids: Sequence[str], now: datetime) -> list[Delivery]:
        """Make deliveries due at ``now`` for one manual attempt (``next_trigger=manual``).

        Deliveries currently ``delivering`` are left alone. Returns the updated ones.
        """

    @abc.abstractmethod
    def recover(
        self, subscription_id: str, *, since: datetime, until: datetime, now: datetime
    ) -> list[Delivery]:
        """`schedule_manual` every ``failed`` or ``exhausted`` delivery of a subscription
        whose message was created in ``[since, until)``. Returns the updated ones."""

    @abc.abstractmethod
    def purge(self, older_than: datetime, *, limit: int | None = None) -> int:
        """Delete up to ``limit`` (None: all) messages created before ``older_than`` whose
        deliveries are all final, with their deliveries and attempts, oldest first, in one
        transaction. Returns how many messages went; callers loop in batches so a long
        purge never holds the store's write lock for long."""

    @abc.abstractmethod
    def stats(self, now: datetime, *, tenant: TenantFilter = ALL_TENANTS) -> Stats:
        """Counts of unfinished deliveries and of subscriptions by state (`Stats`), of
        one tenant or of all."""

    # -- tenants -------------------------------------------------------------------
    @abc.abstractmethod
    def save_tenant(self, tenant: Tenant) -> Tenant:
        """Create or replace a tenant's limits and metadata (its counts are ignored);
        return it as stored (``created_at`` kept from the first save)."""

    @abc.abstractmethod
    def get_tenant(self, tenant_id: str) -> Tenant:
        """The tenant with its counts; `NotFound` unless it was saved or has a
        subscription."""

    @abc.abstractmethod
    def list_tenants(self, *, limit: int = 100, cursor: str | None = None) -> Page[Tenant]:
        """Tenants by id, with their counts, a page of ``limit`` after ``cursor``."""

    @abc.abstractmethod
    def close_tenant(self, tenant_id: str, now: datetime) -> None:
        """The first step of deleting a tenant, in one transaction: remove its
        subscriptions (so nothing more is published or claimed for it) and cancel its
        pending deliveries. Deliveries under a live lease stay until their attempt is
        recorded or the lease expires (`purge_tenant` then removes them)."""

    @abc.abstractmethod
    def purge_tenant(self, tenant_id: str, now: datetime, *, limit: int) -> tuple[int, int]:
        """One batch of a tenant's deletion: cancel its unfinished deliveries not under
        a live lease, then delete up to ``limit`` of its messages with no live lease,
        with their deliveries and attempts. Returns ``(messages deleted, deliveries
        still under a live lease)``; once both are 0 the tenant itself is gone."""

    def changed_tenants(self, since: int) -> set[str | None] | None:
        """The tenants (None: the untenanted) whose subscriptions changed after
        `subscriptions_version` was ``since``, or None when that is not known (every
        cached tenant is then reloaded). The default never knows."""
        del since
        return None

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and files. Idempotent."""

    # -- capabilities with a default (module docstring) ----------------------------
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
        """`record`, then `claim_due`: the worker's store round after a batch of attempts.
        Backends that can do both in one transaction override this."""
        result = self.record(records, worker_id, auto_disable=auto_disable) if records else None
        claims = self.claim_due(
            now,
            limit=limit,
            lease_until=lease_until,
            worker_id=worker_id,
            default_max_in_flight=default_max_in_flight,
            allowance=allowance,
            proven=proven,
        )
        return result or RecordResult(), claims

    def listen_for_work(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` from another thread whenever other processes may have made
        work due; return a function that stops the calls. By default it never calls:
        the worker's poll interval finds other processes' work."""
        del callback
        return _never

    async def publish_many_async(
        self,
        items: Sequence[tuple[Message, Sequence[str]]],
        now: datetime,
        *,
        connection: Any,
    ) -> list[PublishResult]:
        """`publish_many` inside an async database connection's open transaction, for
        stores with `transactional_outbox`."""
        raise ConfigurationError(f"{self!r} cannot publish on an async database connection")


def _never() -> None:
    """The stop function of a store that never calls back."""
