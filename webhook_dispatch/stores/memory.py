"""The in-memory store: the default for scripts and tests; nothing survives the process.

Same behaviour as the durable stores (leases, idempotency, one write per attempt), kept
in dicts behind one lock, with a heap of due times so claiming stays cheap.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

import attrs

from ..errors import InvalidTenant, NotFound, StoreError, TenantLimitExceeded
from ..health import AutoDisable, settle_health
from ..models import (
    ALL_TENANTS,
    AllTenants,
    Attempt,
    AttemptTrigger,
    Delivery,
    DeliveryStatus,
    EventType,
    Message,
    Subscription,
    Tenant,
    TenantFilter,
    new_id,
)
from ..paging import DEFAULT_PAGE_SIZE, Page, check_limit, decode_cursor, page_of
from .base import (
    CATALOG_CHANGE,
    AttemptRecord,
    Claim,
    ClaimPlan,
    PublishResult,
    RecordResult,
    Stats,
    Store,
    SubscriptionTurns,
    TenantGate,
    ring_after,
    share_round_robin,
)

_CHANGES_KEPT = 10_000
"""Subscription changes remembered for `MemoryStore.changed_tenants`."""


def _key(tenant: str | None) -> str:
    """A tenant as the store keys it: '' for no tenant."""
    return tenant or ""


def _wanted(tenant: TenantFilter, value: str | None) -> bool:
    """Whether a row of tenant ``value`` passes a listing's ``tenant=`` filter."""
    return isinstance(tenant, AllTenants) or tenant == value


__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """A `Store` that keeps everything in process memory (``store="memory://"``)."""

    blocking = False

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._subscriptions: dict[str, Subscription] = {}
        self._subscriptions_version = 0
        self._messages: dict[str, Message] = {}
        self._by_idempotency_key: dict[tuple[str, str], str] = {}
        self._deliveries: dict[str, Delivery] = {}
        self._deliveries_by_message: dict[str, list[str]] = {}
        self._leases: dict[str, tuple[str, datetime]] = {}
        self._attempts: dict[str, list[Attempt]] = {}
        # tenant ('' for none) -> subscription -> heap of (due time, sequence, delivery
        # id): claims take tenants in turn, and each tenant's subscriptions in turn.
        self._due: dict[str, dict[str, list[tuple[datetime, int, str]]]] = {}
        self._ring_cursor: str | None = None
        self._turns = SubscriptionTurns()
        self._tenants: dict[str, Tenant] = {}
        self._deleting: set[str] = set()
        self._rate_tats: dict[str, int] = {}
        self._changes: list[tuple[int, str]] = []  # (version, tenant), oldest first
        self._event_types: dict[str, EventType] = {}
        self._settings: dict[str, tuple[str, datetime]] = {}
        self._keys: dict[tuple[str, str], str] = {}  # (tenant, key) -> subscription id
        self._sequence = itertools.count()
        # Publish order of every unfinished delivery, by subscription: an ordered
        # subscription delivers only its oldest (the smallest number).
        self._publish_order = itertools.count()
        self._order: dict[str, int] = {}
        self._unfinished: dict[str, dict[str, int]] = {}
        # Insertion order of subscriptions and messages: what their listings' cursors
        # point into (deliveries' is their publish order).
        self._positions: dict[str, int] = {}
        self._next_position = itertools.count(1)

    def __repr__(self) -> str:
        return "MemoryStore()"

    # -- subscriptions -----------------------------------------------------------
    def _index_key(self, subscription: Subscription) -> None:
        if subscription.key is not None:
            self._keys[(_key(subscription.tenant), subscription.key)] = subscription.id

    def add_subscription_once(self, subscription: Subscription) -> Subscription:
        """`add_subscription` unless the tenant has a subscription with this key."""
        with self._lock:
            found = self._keys.get((_key(subscription.tenant), subscription.key or ""))
            if subscription.key is not None and found is not None:
                return self._subscriptions[found]
            self.add_subscription(subscription)
            return subscription

    def add_subscription(self, subscription: Subscription) -> None:
        """Store a new subscription."""
        with self._lock:
            if subscription.id in self._subscriptions:
                raise StoreError(f"a subscription with id {subscription.id!r} already exists")
            if subscription.tenant is not None:
                self._admit(subscription)
            self._subscriptions[subscription.id] = subscription
            self._index_key(subscription)
            self._positions[subscription.id] = next(self._next_position)
            self._bump([subscription.tenant])
            # An id used before may have open deliveries (retried after its removal).
            for delivery in self._deliveries.values():
                if delivery.subscription_id == subscription.id and not delivery.status.is_final:
                    self._unfinished.setdefault(subscription.id, {})[delivery.id] = self._order[
                        delivery.id
                    ]

    def _admit(self, subscription: Subscription) -> None:
        """Create the subscription's tenant if new, and hold its ``max_subscriptions``."""
        tenant_id = _key(subscription.tenant)
        if tenant_id in self._deleting:
            raise InvalidTenant(f"tenant {tenant_id!r} is being deleted")
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            moment = subscription.created_at
            tenant = self._tenants[tenant_id] = Tenant(
                id=tenant_id, created_at=moment, updated_at=moment
            )
            self._positions["tenant:" + tenant_id] = next(self._next_position)
        if tenant.max_subscriptions is not None:
            count = sum(s.tenant == tenant_id for s in self._subscriptions.values())
            if count >= tenant.max_subscriptions:
                raise TenantLimitExceeded(
                    f"tenant {tenant_id!r} has {count} subscriptions, its max_subscriptions; "
                    "remove one or raise the limit with set_tenant()",
                    tenant=tenant_id,
                    limit=tenant.max_subscriptions,
                )

    def _bump(self, tenants: Sequence[str | None]) -> None:
        """Count a subscription change and log the tenants it touched."""
        self._subscriptions_version += 1
        self._changes.extend((self._subscriptions_version, _key(t)) for t in set(tenants))
        if len(self._changes) > 2 * _CHANGES_KEPT:
            del self._changes[:-_CHANGES_KEPT]

    def changed_tenants(self, since: int) -> set[str | None] | None:
        """The tenants whose subscriptions changed after version ``since``, or None when
        the log no longer reaches back that far."""
        with self._lock:
            if not self._changes or self._changes[0][0] > since + 1:
                return None if since < self._subscriptions_version else set()
            return {tenant or None for version, tenant in self._changes if version > since}

    def save_subscription(self, subscription: Subscription) -> None:
        """Replace a stored subscription by id; `NotFound` if it does not exist."""
        with self._lock:
            before = self._subscription(subscription.id)
            self._subscriptions[subscription.id] = subscription
            self._index_key(subscription)
            self._bump([before.tenant, subscription.tenant])
            # held deliveries stay in the due heap; enabling frees them

    def remove_subscription(self, subscription_id: str, now: datetime) -> None:
        """Delete a subscription; its unfinished deliveries become ``cancelled``."""
        with self._lock:
            removed = self._subscription(subscription_id)
            del self._subscriptions[subscription_id]
            self._keys.pop((_key(removed.tenant), removed.key or ""), None)
            self._positions.pop(subscription_id, None)
            self._bump([removed.tenant])
            for delivery in list(self._deliveries.values()):
                if delivery.subscription_id == subscription_id and not delivery.status.is_final:
                    self._deliveries[delivery.id] = attrs.evolve(
                        delivery,
                        status=DeliveryStatus.CANCELLED,
                        next_attempt_at=None,
                        updated_at=now,
                    )
                    self._leases.pop(delivery.id, None)
            self._unfinished.pop(subscription_id, None)

    # -- the event catalog ---------------------------------------------------------
    def read_setting(self, name: str) -> tuple[str, datetime] | None:
        """See `Store.read_setting`."""
        with self._lock:
            return self._settings.get(name)

    def write_setting(self, name: str, value: str, now: datetime) -> None:
        """See `Store.write_setting`."""
        with self._lock:
            self._settings[name] = (value, now)

    def put_event_type(self, event_type: EventType) -> None:
        """Add or replace (by name) a catalog entry."""
        with self._lock:
            self._event_types[event_type.name] = event_type
            self._bump([CATALOG_CHANGE])

    def remove_event_type(self, name: str) -> None:
        """Delete a catalog entry; `NotFound` if there is none."""
        with self._lock:
            if self._event_types.pop(name, None) is None:
                raise NotFound(f"no event type {name!r} in the catalog")
            self._bump([CATALOG_CHANGE])

    def list_event_types(self) -> list[EventType]:
        """Every catalog entry, by name."""
        with self._lock:
            return [self._event_types[name] for name in sorted(self._event_types)]

    def get_subscription(self, subscription_id: str) -> Subscription:
        """The subscription with this id; `NotFound` otherwise."""
        with self._lock:
            return self._subscription(subscription_id)

    def list_subscriptions(
        self,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        tenant: TenantFilter = ALL_TENANTS,
    ) -> Page[Subscription]:
        """Subscriptions, oldest first (of one tenant): a page of ``limit``, or all (None)."""
        after = decode_cursor(cursor, "subscriptions") or 0
        with self._lock:
            found = [
                (position, subscription)
                for subscription in self._subscriptions.values()
                if (position := self._positions[subscription.id]) > after
                and _wanted(tenant, subscription.tenant)
            ]
        return page_of(found, len(found) if limit is None else check_limit(limit), "subscriptions")

    def subscriptions_version(self) -> int:
        """A counter bumped by every subscription change."""
        return self._subscriptions_version

    # -- messages ----------------------------------------------------------------
    def publish(
        self, message: Message, subscription_ids: Sequence[str], now: datetime
    ) -> PublishResult:
        """Store a message and its deliveries (idempotency key checked atomically)."""
        with self._lock:
            return self._publish(message, subscription_ids, now)

    def publish_many(
        self, items: Sequence[tuple[Message, Sequence[str]]], now: datetime
    ) -> list[PublishResult]:
        """`publish` for a batch, all or nothing."""
        with self._lock:
            for message, subscription_ids in items:
                key = (_key(message.tenant), message.idempotency_key or "")
                if message.idempotency_key is None or key not in self._by_idempotency_key:
                    self._check_owners(message, subscription_ids)  # all or nothing
            return [self._publish(message, ids, now) for message, ids in items]

    def _publish(
        self, message: Message, subscription_ids: Sequence[str], now: datetime
    ) -> PublishResult:
        key = (_key(message.tenant), message.idempotency_key or "")
        if message.idempotency_key is not None and key in self._by_idempotency_key:
            return PublishResult(self._messages[self._by_idempotency_key[key]], False, 0)
        self._check_owners(message, subscription_ids)
        self._messages[message.id] = message
        self._positions[message.id] = next(self._next_position)
        if message.idempotency_key is not None:
            self._by_idempotency_key[key] = message.id
        ids = self._deliveries_by_message.setdefault(message.id, [])
        for subscription_id in subscription_ids:
            delivery = Delivery(
                id=new_id("dlv"),
                message_id=message.id,
                subscription_id=subscription_id,
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
            )
            self._deliveries[delivery.id] = delivery
            ids.append(delivery.id)
            order = self._order[delivery.id] = next(self._publish_order)
            self._unfinished.setdefault(subscription_id, {})[delivery.id] = order
            self._push_due(delivery)
        return PublishResult(message, True, len(subscription_ids))

    def _check_owners(self, message: Message, subscription_ids: Sequence[str]) -> None:
        """`NotFound` unless every subscription exists and belongs to the message's
        tenant (never another tenant's endpoint, even from a stale match)."""
        for subscription_id in subscription_ids:
            if self._subscription(subscription_id).tenant != message.tenant:
                raise NotFound(
                    f"no subscription with id {subscription_id!r} belongs to tenant "
                    f"{message.tenant!r}"
                )

    def get_message(self, message_id: str) -> Message:
        """The message with this id; `NotFound` otherwise."""
        with self._lock:
            try:
                return self._messages[message_id]
            except KeyError:
                raise NotFound(f"no message with id {message_id!r}") from None

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
        before = decode_cursor(cursor, "messages")
        wanted = check_limit(limit) + 1
        found: list[tuple[int, Message]] = []
        with self._lock:
            for message in reversed(self._messages.values()):
                position = self._positions[message.id]
                if before is not None and position >= before:
                    continue
                if (event_type is None or message.event_type == event_type) and _wanted(
                    tenant, message.tenant
                ):
                    found.append((position, message))
                    if len(found) == wanted:
                        break
        return page_of(found, limit, "messages")

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
        """Lease up to ``limit`` due deliveries to ``worker_id``, honouring flow control."""
        claims: list[Claim] = []
        with self._lock:
            in_flight: Counter[str] = Counter()
            for delivery_id, (_, expires) in list(self._leases.items()):
                if not self._deliverable(delivery_id, enabled_only=False):
                    continue  # a deleted tenant's: its purge cancels it
                if expires <= now and len(claims) < limit:
                    claims.append(self._lease(delivery_id, lease_until, worker_id, now))
                elif expires > now:
                    in_flight[self._deliveries[delivery_id].subscription_id] += 1
            in_flight.update(claim.delivery.subscription_id for claim in claims)
            plan = ClaimPlan(
                limit=limit - len(claims),
                default_max_in_flight=default_max_in_flight,
                allowance=allowance,
                in_flight=in_flight,
                proven=proven,
            )
            due = sorted(
                tenant
                for tenant, heaps in self._due.items()
                if any(heap and heap[0][0] <= now for heap in heaps.values())
            )
            order = ring_after(due, self._ring_cursor, plan.limit)
            gate = self._gate(order, now, claims)
            skipped: list[tuple[datetime, int, str]] = []

            def ring(tenant: str, cursor: str | None, count: int) -> list[str]:
                heaps = self._due.get(tenant, {})
                for subscription_id in [key for key, heap in heaps.items() if not heap]:
                    del heaps[subscription_id]
                subscriptions = sorted(key for key, heap in heaps.items() if heap[0][0] <= now)
                return ring_after(subscriptions, cursor, count)

            def walk(tenant: str, subscription_id: str, quota: int) -> int:
                got = 0
                heap = self._due.get(tenant, {}).get(subscription_id, [])
                while (
                    heap
                    and got < quota
                    and not plan.is_full()
                    and subscription_id not in plan.closed
                    and heap[0][0] <= now
                ):
                    entry = heapq.heappop(heap)
                    if self._is_stale(entry):
                        continue  # the delivery moved on since this entry was pushed
                    skipped.append(entry)  # taken ones are not stale next time: dropped then
                    if self._consider(plan, entry[2], now):
                        skipped.pop()
                        claims.append(self._lease(entry[2], lease_until, worker_id, now))
                        got += 1
                    elif not self._deliverable(entry[2]):
                        break  # a disabled subscription's: all of them are held
                return got

            if order:
                take = self._turns.take(ring, walk, gate, closed=plan.closed)
                self._ring_cursor = share_round_robin(order, plan.limit, take)
            if gate is not None:
                self._rate_tats.update(gate.tats())
            for entry in skipped:
                self._push_entry(entry)
        return claims

    def _consider(self, plan: ClaimPlan, delivery_id: str, now: datetime) -> bool:
        """Whether the plan takes this due delivery (held, ordered, capped: no)."""
        if not self._deliverable(delivery_id):
            return False  # held until the subscription is enabled again
        subscription = self._subscriptions[self._deliveries[delivery_id].subscription_id]
        is_head = True
        if subscription.ordered:
            head = self._deliveries[self._head(subscription.id)]
            is_head = head.id == delivery_id
            if not is_head and (
                head.status is not DeliveryStatus.PENDING
                or head.next_attempt_at is None
                or head.next_attempt_at > now
            ):
                plan.close(subscription.id)
        return plan.consider(
            subscription.id,
            max_in_flight=subscription.max_in_flight,
            ordered=subscription.ordered,
            is_head=is_head,
            failing=subscription.consecutive_failures > 0,
        )

    def _gate(self, order: list[str], now: datetime, reclaimed: list[Claim]) -> TenantGate | None:
        """The tenant-wide limits of this claim's tenants, or None when none has any."""
        settings = {
            t: (tenant.max_in_flight, tenant.rate_limit, self._rate_tats.get(t, 0))
            for t in order
            if (tenant := self._tenants.get(t)) is not None
            and (tenant.max_in_flight is not None or tenant.rate_limit is not None)
        }
        if not settings:
            return None
        in_flight: Counter[str] = Counter(
            self._tenant_of(delivery_id)
            for delivery_id, (_, expires) in self._leases.items()
            if expires > now
        )
        in_flight.update(self._tenant_of(claim.delivery.id) for claim in reclaimed)
        return TenantGate(settings, in_flight, _us(now))

    def _tenant_of(self, delivery_id: str) -> str:
        return _key(self._messages[self._deliveries[delivery_id].message_id].tenant)

    def _head(self, subscription_id: str) -> str:
        unfinished = self._unfinished[subscription_id]
        return min(unfinished, key=unfinished.__getitem__)

    def _lease(
        self, delivery_id: str, lease_until: datetime, worker_id: str, now: datetime
    ) -> Claim:
        delivery = attrs.evolve(
            self._deliveries[delivery_id], status=DeliveryStatus.DELIVERING, updated_at=now
        )
        self._deliveries[delivery_id] = delivery
        self._leases[delivery_id] = (worker_id, lease_until)
        return Claim(
            delivery,
            self._messages[delivery.message_id],
            self._subscriptions[delivery.subscription_id],
        )

    def record(
        self,
        records: Sequence[AttemptRecord],
        worker_id: str,
        *,
        auto_disable: AutoDisable | None = None,
    ) -> RecordResult:
        """Write finished attempts, the deliveries' next states and subscription health."""
        with self._lock:
            gone: list[tuple[str, str]] = []
            for record in records:
                attempt = record.attempt
                if attempt.message_id not in self._messages:
                    continue  # deleted meanwhile (its tenant was)
                self._attempts.setdefault(attempt.message_id, []).append(attempt)
                lease = self._leases.get(attempt.delivery_id)
                if lease is None or lease[0] != worker_id:
                    continue  # lease lost: another worker owns the delivery's state now
                del self._leases[attempt.delivery_id]
                self._deliveries[record.delivery.id] = record.delivery
                if record.delivery.status.is_final:
                    self._unfinished.get(record.delivery.subscription_id, {}).pop(
                        record.delivery.id, None
                    )
                self._push_due(record.delivery)
                if record.disable_subscription is not None:
                    gone.append((attempt.subscription_id, record.disable_subscription))
            health = {
                s.id: (s.enabled, s.failing_since, s.consecutive_failures)
                for s in (self._subscriptions.get(r.attempt.subscription_id) for r in records)
                if s is not None
            }
            changes = settle_health((r.attempt for r in records), health, auto_disable, gone)
            for update in changes.updates:
                self._subscriptions[update.subscription_id] = attrs.evolve(
                    self._subscriptions[update.subscription_id],
                    failing_since=update.failing_since,
                    consecutive_failures=update.consecutive_failures,
                )
            for subscription_id, reason, at in changes.disabled:
                self._subscriptions[subscription_id] = attrs.evolve(
                    self._subscriptions[subscription_id],
                    enabled=False,
                    disabled_reason=reason,
                    updated_at=at,
                )
                self._bump([self._subscriptions[subscription_id].tenant])
        return RecordResult(
            tuple((key, reason) for key, reason, _ in changes.disabled), changes.recovered
        )

    def release(
        self, delivery_ids: Sequence[str], worker_id: str, *, due_at: datetime | None = None
    ) -> None:
        """Give leased deliveries back unattempted (due as before, or at ``due_at``)."""
        with self._lock:
            for delivery_id in delivery_ids:
                lease = self._leases.get(delivery_id)
                if lease is None or lease[0] != worker_id:
                    continue
                del self._leases[delivery_id]
                delivery = self._deliveries[delivery_id]
                delivery = attrs.evolve(
                    delivery,
                    status=DeliveryStatus.PENDING,
                    next_attempt_at=delivery.next_attempt_at if due_at is None else due_at,
                )
                self._deliveries[delivery_id] = delivery
                self._push_due(delivery)

    def next_due_at(self) -> datetime | None:
        """Earliest due time of a pending delivery on an enabled subscription, or lease expiry."""
        with self._lock:
            leases = [expires for _, expires in self._leases.values()]
            return min([*leases, *self._first_deliverable_due()], default=None)

    def _first_deliverable_due(self) -> list[datetime]:
        found: list[datetime] = []
        for heap in (heap for heaps in self._due.values() for heap in heaps.values()):
            while heap and self._is_stale(heap[0]):
                heapq.heappop(heap)
            # Usually the head; a disabled subscription's held entries, or an ordered
            # one's deliveries queued behind its head, force an ordered scan.
            if heap and self._claimable(heap[0][2]):
                found.append(heap[0][0])
                continue
            for entry in sorted(heap):
                if not self._is_stale(entry) and self._claimable(entry[2]):
                    found.append(entry[0])
                    break
        return [min(found)] if found else []

    def _claimable(self, delivery_id: str) -> bool:
        """On an enabled subscription and, for an ordered one, its oldest unfinished."""
        if not self._deliverable(delivery_id):
            return False
        subscription_id = self._deliveries[delivery_id].subscription_id
        return not self._subscriptions[subscription_id].ordered or (
            self._head(subscription_id) == delivery_id
        )

    def _is_stale(self, entry: tuple[datetime, int, str]) -> bool:
        delivery = self._deliveries.get(entry[2])
        return (
            delivery is None
            or delivery.status is not DeliveryStatus.PENDING
            or delivery.next_attempt_at != entry[0]
        )

    def _deliverable(self, delivery_id: str, *, enabled_only: bool = True) -> bool:
        subscription = self._subscriptions.get(self._deliveries[delivery_id].subscription_id)
        return subscription is not None and (subscription.enabled or not enabled_only)

    def get_delivery(self, delivery_id: str) -> Delivery:
        """The delivery with this id; `NotFound` otherwise."""
        with self._lock:
            try:
                return self._deliveries[delivery_id]
            except KeyError:
                raise NotFound(f"no delivery with id {delivery_id!r}") from None

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
        after = decode_cursor(cursor, "deliveries")
        after = -1 if after is None else after
        wanted = check_limit(limit) + 1
        found: list[tuple[int, Delivery]] = []
        with self._lock:
            if message_id is not None:
                pool = [
                    self._deliveries[i] for i in self._deliveries_by_message.get(message_id, [])
                ]
            else:
                pool = list(self._deliveries.values())
            for delivery in pool:
                position = self._order[delivery.id]
                if (
                    position > after
                    and (subscription_id is None or delivery.subscription_id == subscription_id)
                    and (status is None or delivery.status is status)
                    and _wanted(tenant, self._messages[delivery.message_id].tenant)
                ):
                    found.append((position, delivery))
                    if len(found) == wanted:
                        break
        return page_of(found, limit, "deliveries")

    def list_attempts(
        self, *, message_id: str | None = None, delivery_id: str | None = None
    ) -> list[Attempt]:
        """Attempts of a message or of a delivery, oldest first."""
        with self._lock:
            if message_id is not None:
                pool = list(self._attempts.get(message_id, []))
            else:
                pool = [a for attempts in self._attempts.values() for a in attempts]
            if delivery_id is not None:
                pool = [a for a in pool if a.delivery_id == delivery_id]
            return sorted(pool, key=lambda a: (a.started_at, a.number))

    def schedule_manual(self, delivery_ids: Sequence[str], now: datetime) -> list[Delivery]:
        """Make deliveries due now for one manual attempt."""
        updated: list[Delivery] = []
        with self._lock:
            current = [self.get_delivery(delivery_id) for delivery_id in delivery_ids]
            for delivery in current:
                if delivery.status is DeliveryStatus.DELIVERING:
                    continue
                delivery = attrs.evolve(
                    delivery,
                    status=DeliveryStatus.PENDING,
                    next_attempt_at=now,
                    next_trigger=AttemptTrigger.MANUAL,
                    updated_at=now,
                )
                self._deliveries[delivery.id] = delivery
                if delivery.subscription_id in self._subscriptions:
                    self._unfinished.setdefault(delivery.subscription_id, {})[delivery.id] = (
                        self._order[delivery.id]
                    )
                self._push_due(delivery)
                updated.append(delivery)
        return updated

    def recover(
        self, subscription_id: str, *, since: datetime, until: datetime, now: datetime
    ) -> list[Delivery]:
        """Schedule a manual attempt for failed or exhausted deliveries in the window."""
        with self._lock:
            self._subscription(subscription_id)
            chosen = [
                d.id
                for d in self._deliveries.values()
                if d.subscription_id == subscription_id
                and d.status in (DeliveryStatus.FAILED, DeliveryStatus.EXHAUSTED)
                and since <= self._messages[d.message_id].created_at < until
            ]
            return self.schedule_manual(chosen, now)

    def messages_between(
        self,
        tenant: str | None,
        *,
        since: datetime,
        until: datetime,
        after: str | None = None,
        limit: int = 500,
    ) -> tuple[list[Message], str | None]:
        """The tenant's messages created in ``[since, until)``, oldest first, in batches."""
        start = int(after) if after else -1
        with self._lock:
            found = sorted(
                (self._positions[m.id], m)
                for m in self._messages.values()
                if m.tenant == tenant
                and not m.test
                and since <= m.created_at < until
                and self._positions[m.id] > start
            )
        batch = [m for _, m in found[:limit]]
        more = len(found) > limit
        return batch, str(found[limit - 1][0]) if more else None

    def count_messages_between(
        self, tenant: str | None, *, since: datetime, until: datetime
    ) -> int:
        """How many messages `messages_between` would go through."""
        with self._lock:
            return sum(
                m.tenant == tenant and not m.test and since <= m.created_at < until
                for m in self._messages.values()
            )

    def record_test(self, message: Message, state: Delivery, attempt: Attempt) -> None:
        """Keep a test send: its message, its (final) delivery and its one attempt."""
        with self._lock:
            self._messages[message.id] = message
            self._positions[message.id] = next(self._next_position)
            self._deliveries[state.id] = state
            self._deliveries_by_message.setdefault(message.id, []).append(state.id)
            self._order[state.id] = next(self._publish_order)
            self._attempts.setdefault(attempt.message_id, []).append(attempt)

    def deliveries_for(
        self, subscription_id: str, message_ids: Sequence[str]
    ) -> dict[str, Delivery]:
        """The subscription's delivery of each of these messages that has one."""
        with self._lock:
            found: dict[str, Delivery] = {}
            for message_id in message_ids:
                for delivery_id in self._deliveries_by_message.get(message_id, ()):
                    delivery = self._deliveries[delivery_id]
                    if delivery.subscription_id == subscription_id:
                        found[message_id] = delivery
            return found

    def add_manual_deliveries(
        self, subscription_id: str, message_ids: Sequence[str], now: datetime
    ) -> list[Delivery]:
        """New manual deliveries of messages the subscription has none of."""
        with self._lock:
            subscription = self._subscription(subscription_id)
            for message_id in message_ids:
                message = self._messages.get(message_id)
                if message is None or message.tenant != subscription.tenant:
                    raise NotFound(
                        f"no message {message_id!r} of the subscription's tenant "
                        f"{subscription.tenant!r}"
                    )
            have = self.deliveries_for(subscription_id, message_ids)
            added: list[Delivery] = []
            for message_id in dict.fromkeys(message_ids):
                if message_id in have:
                    continue
                delivery = Delivery(
                    id=new_id("dlv"),
                    message_id=message_id,
                    subscription_id=subscription_id,
                    next_attempt_at=now,
                    next_trigger=AttemptTrigger.MANUAL,
                    created_at=now,
                    updated_at=now,
                )
                self._deliveries[delivery.id] = delivery
                self._deliveries_by_message.setdefault(message_id, []).append(delivery.id)
                order = self._order[delivery.id] = next(self._publish_order)
                self._unfinished.setdefault(subscription_id, {})[delivery.id] = order
                self._push_due(delivery)
                added.append(delivery)
            return added

    def count_purgeable(self, older_than: datetime) -> int:
        """How many messages `purge` would delete now."""
        with self._lock:
            return len(self._purgeable(older_than))

    def _purgeable(self, older_than: datetime) -> list[str]:
        return [
            m.id
            for m in self._messages.values()
            if m.created_at < older_than
            and all(
                self._deliveries[i].status.is_final
                for i in self._deliveries_by_message.get(m.id, [])
            )
        ]

    def purge(self, older_than: datetime, *, limit: int | None = None) -> int:
        """Drop old messages whose deliveries are all final, with their attempts."""
        with self._lock:
            doomed = self._purgeable(older_than)
            if limit is not None:
                doomed = doomed[:limit]
            self._forget_messages(doomed)
            return len(doomed)

    def _forget_messages(self, doomed: Sequence[str]) -> None:
        """Delete these messages with their deliveries and attempts."""
        for message_id in doomed:
            message = self._messages.pop(message_id)
            self._positions.pop(message_id, None)
            if message.idempotency_key is not None:
                self._by_idempotency_key.pop((_key(message.tenant), message.idempotency_key), None)
            for delivery_id in self._deliveries_by_message.pop(message_id, []):
                del self._deliveries[delivery_id]
                self._order.pop(delivery_id, None)
            self._attempts.pop(message_id, None)

    def stats(self, now: datetime, *, tenant: TenantFilter = ALL_TENANTS) -> Stats:
        """Counts of unfinished deliveries and of subscriptions by state (of one tenant)."""
        with self._lock:
            pending = [
                delivery
                for unfinished in self._unfinished.values()
                for delivery_id in unfinished
                if (delivery := self._deliveries[delivery_id]).status is DeliveryStatus.PENDING
                and _wanted(tenant, self._messages[delivery.message_id].tenant)
            ]
            subscriptions = [s for s in self._subscriptions.values() if _wanted(tenant, s.tenant)]
            return Stats(
                pending=len(pending),
                delivering=sum(
                    _wanted(tenant, self._tenant_of(delivery_id) or None)
                    for delivery_id in self._leases
                ),
                oldest_pending_at=min((d.created_at for d in pending), default=None),
                subscriptions=len(subscriptions),
                disabled_subscriptions=sum(not s.enabled for s in subscriptions),
                failing_subscriptions=sum(
                    s.enabled and s.consecutive_failures > 0 for s in subscriptions
                ),
            )

    # -- tenants -------------------------------------------------------------------
    def save_tenant(self, tenant: Tenant) -> Tenant:
        """Create or replace a tenant's limits and metadata."""
        with self._lock:
            before = self._tenants.get(tenant.id)
            if before is None:
                self._positions["tenant:" + tenant.id] = next(self._next_position)
            self._tenants[tenant.id] = attrs.evolve(
                tenant,
                created_at=tenant.created_at if before is None else before.created_at,
                subscriptions=0,
                pending=0,
            )
            self._deleting.discard(tenant.id)
            return self._counted(tenant.id)

    def get_tenant(self, tenant_id: str) -> Tenant:
        """The tenant with its counts; `NotFound` unless it exists."""
        with self._lock:
            if tenant_id not in self._tenants or tenant_id in self._deleting:
                raise NotFound(f"no tenant {tenant_id!r}")
            return self._counted(tenant_id)

    def _counted(self, tenant_id: str) -> Tenant:
        stats = self.stats(datetime.max, tenant=tenant_id)
        return attrs.evolve(
            self._tenants[tenant_id], subscriptions=stats.subscriptions, pending=stats.pending
        )

    def list_tenants(
        self, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
    ) -> Page[Tenant]:
        """Tenants in the order they came to exist, with their counts, a page at a time."""
        after = decode_cursor(cursor, "tenants") or 0
        wanted = check_limit(limit) + 1
        with self._lock:
            found = sorted(
                (position, tenant_id)
                for tenant_id in self._tenants
                if tenant_id not in self._deleting
                and (position := self._positions["tenant:" + tenant_id]) > after
            )[:wanted]
            return page_of(
                [(position, self._counted(tenant_id)) for position, tenant_id in found],
                limit,
                "tenants",
            )

    def close_tenant(self, tenant_id: str, now: datetime) -> None:
        """Mark the tenant as being deleted, remove its subscriptions and cancel its
        pending deliveries."""
        with self._lock:
            if tenant_id not in self._tenants:
                self._tenants[tenant_id] = Tenant(id=tenant_id, created_at=now, updated_at=now)
                self._positions["tenant:" + tenant_id] = next(self._next_position)
            self._deleting.add(tenant_id)
            for subscription in list(self._subscriptions.values()):
                if subscription.tenant == tenant_id:
                    del self._subscriptions[subscription.id]
                    self._keys.pop((tenant_id, subscription.key or ""), None)
                    self._positions.pop(subscription.id, None)
            self._cancel_tenant(tenant_id, now)
            self._bump([tenant_id])

    def _cancel_tenant(self, tenant_id: str, now: datetime) -> None:
        for delivery in list(self._deliveries.values()):
            if delivery.status.is_final or self._tenant_of(delivery.id) != tenant_id:
                continue
            lease = self._leases.get(delivery.id)
            if lease is not None and lease[1] > now:
                continue  # its attempt may be under way: waited for
            self._leases.pop(delivery.id, None)
            self._deliveries[delivery.id] = attrs.evolve(
                delivery, status=DeliveryStatus.CANCELLED, next_attempt_at=None, updated_at=now
            )
            self._unfinished.get(delivery.subscription_id, {}).pop(delivery.id, None)

    def purge_tenant(self, tenant_id: str, now: datetime, *, limit: int) -> tuple[int, int]:
        """Cancel what no live lease holds, delete up to ``limit`` of the tenant's
        messages that no live lease holds; the tenant goes with the last batch."""
        with self._lock:
            self._cancel_tenant(tenant_id, now)
            doomed = [
                m.id
                for m in self._messages.values()
                if m.tenant == tenant_id
                and all(
                    self._deliveries[i].status.is_final
                    for i in self._deliveries_by_message.get(m.id, [])
                )
            ][:limit]
            self._forget_messages(doomed)
            held = sum(
                not d.status.is_final and self._tenant_of(d.id) == tenant_id
                for d in self._deliveries.values()
            )
            if not doomed and not held:
                self._tenants.pop(tenant_id, None)
                self._positions.pop("tenant:" + tenant_id, None)
                self._deleting.discard(tenant_id)
                self._rate_tats.pop(tenant_id, None)
                self._due.pop(tenant_id, None)
                self._turns.forget(tenant_id)
            return len(doomed), held

    def close(self) -> None:
        """Nothing to release."""

    # -- helpers -----------------------------------------------------------------
    def _subscription(self, subscription_id: str) -> Subscription:
        try:
            return self._subscriptions[subscription_id]
        except KeyError:
            raise NotFound(f"no subscription with id {subscription_id!r}") from None

    def _push_due(self, delivery: Delivery) -> None:
        if delivery.status is DeliveryStatus.PENDING and delivery.next_attempt_at is not None:
            self._push_entry((delivery.next_attempt_at, next(self._sequence), delivery.id))

    def _push_entry(self, entry: tuple[datetime, int, str]) -> None:
        delivery = self._deliveries[entry[2]]
        heaps = self._due.setdefault(self._tenant_of(entry[2]), {})
        heapq.heappush(heaps.setdefault(delivery.subscription_id, []), entry)


def _us(moment: datetime) -> int:
    """Integer microseconds since the epoch (the rate state's unit)."""
    return int(moment.timestamp() * 1_000_000)
