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

from ..errors import NotFound, StoreError
from ..health import AutoDisable, settle_health
from ..models import (
    Attempt,
    AttemptTrigger,
    Delivery,
    DeliveryStatus,
    Message,
    Subscription,
    new_id,
)
from ..paging import DEFAULT_PAGE_SIZE, Page, check_limit, decode_cursor, page_of
from .base import AttemptRecord, Claim, ClaimPlan, PublishResult, RecordResult, Stats, Store

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """A `Store` that keeps everything in process memory (``store="memory://"``)."""

    blocking = False

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._subscriptions: dict[str, Subscription] = {}
        self._subscriptions_version = 0
        self._messages: dict[str, Message] = {}
        self._by_idempotency_key: dict[str, str] = {}
        self._deliveries: dict[str, Delivery] = {}
        self._deliveries_by_message: dict[str, list[str]] = {}
        self._leases: dict[str, tuple[str, datetime]] = {}
        self._attempts: dict[str, list[Attempt]] = {}
        self._due: list[tuple[datetime, int, str]] = []
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
    def add_subscription(self, subscription: Subscription) -> None:
        """Store a new subscription."""
        with self._lock:
            if subscription.id in self._subscriptions:
                raise StoreError(f"a subscription with id {subscription.id!r} already exists")
            self._subscriptions[subscription.id] = subscription
            self._positions[subscription.id] = next(self._next_position)
            self._subscriptions_version += 1
            # An id used before may have open deliveries (retried after its removal).
            for delivery in self._deliveries.values():
                if delivery.subscription_id == subscription.id and not delivery.status.is_final:
                    self._unfinished.setdefault(subscription.id, {})[delivery.id] = self._order[
                        delivery.id
                    ]

    def save_subscription(self, subscription: Subscription) -> None:
        """Replace a stored subscription by id; `NotFound` if it does not exist."""
        with self._lock:
            before = self._subscription(subscription.id)
            self._subscriptions[subscription.id] = subscription
            self._subscriptions_version += 1
            del before  # held deliveries stay in the due heap; enabling frees them

    def remove_subscription(self, subscription_id: str, now: datetime) -> None:
        """Delete a subscription; its unfinished deliveries become ``cancelled``."""
        with self._lock:
            self._subscription(subscription_id)
            del self._subscriptions[subscription_id]
            self._positions.pop(subscription_id, None)
            self._subscriptions_version += 1
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

    def get_subscription(self, subscription_id: str) -> Subscription:
        """The subscription with this id; `NotFound` otherwise."""
        with self._lock:
            return self._subscription(subscription_id)

    def list_subscriptions(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[Subscription]:
        """Subscriptions, oldest first: a page of ``limit``, or every one (None)."""
        after = decode_cursor(cursor, "subscriptions") or 0
        with self._lock:
            found = [
                (position, subscription)
                for subscription in self._subscriptions.values()
                if (position := self._positions[subscription.id]) > after
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
                if message.idempotency_key not in self._by_idempotency_key:
                    for subscription_id in subscription_ids:
                        self._subscription(subscription_id)  # all or nothing
            return [self._publish(message, ids, now) for message, ids in items]

    def _publish(
        self, message: Message, subscription_ids: Sequence[str], now: datetime
    ) -> PublishResult:
        key = message.idempotency_key
        if key is not None and key in self._by_idempotency_key:
            return PublishResult(self._messages[self._by_idempotency_key[key]], False, 0)
        for subscription_id in subscription_ids:
            self._subscription(subscription_id)
        self._messages[message.id] = message
        self._positions[message.id] = next(self._next_position)
        if key is not None:
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
    ) -> Page[Message]:
        """The newest messages first, optionally of one event type, a page at a time."""
        before = decode_cursor(cursor, "messages")
        wanted = check_limit(limit) + 1
        found: list[tuple[int, Message]] = []
        with self._lock:
            for message in reversed(self._messages.values()):
                position = self._positions[message.id]
                if before is not None and position >= before:
                    continue
                if event_type is None or message.event_type == event_type:
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
            skipped: list[tuple[datetime, int, str]] = []
            while self._due and not plan.is_full() and self._due[0][0] <= now:
                entry = heapq.heappop(self._due)
                delivery_id = entry[2]
                if self._is_stale(entry):
                    continue  # the delivery moved on since this entry was pushed
                skipped.append(entry)  # taken ones are not stale next time: dropped then
                if not self._deliverable(delivery_id):
                    continue  # held until the subscription is enabled again
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
                if plan.consider(
                    subscription.id,
                    max_in_flight=subscription.max_in_flight,
                    ordered=subscription.ordered,
                    is_head=is_head,
                    failing=subscription.consecutive_failures > 0,
                ):
                    skipped.pop()
                    claims.append(self._lease(delivery_id, lease_until, worker_id, now))
            for entry in skipped:
                heapq.heappush(self._due, entry)
        return claims

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
                self._subscriptions_version += 1
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
        while self._due and self._is_stale(self._due[0]):
            heapq.heappop(self._due)
        # Usually the head; a disabled subscription's held entries, or an ordered one's
        # deliveries queued behind its head, force an ordered scan.
        for entry in [self._due[0]] if self._due else []:
            if self._claimable(entry[2]):
                return [entry[0]]
        for entry in sorted(self._due):
            if not self._is_stale(entry) and self._claimable(entry[2]):
                return [entry[0]]
        return []

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

    def _deliverable(self, delivery_id: str) -> bool:
        subscription = self._subscriptions.get(self._deliveries[delivery_id].subscription_id)
        return subscription is not None and subscription.enabled

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

    def purge(self, older_than: datetime, *, limit: int | None = None) -> int:
        """Drop old messages whose deliveries are all final, with their attempts."""
        with self._lock:
            doomed = [
                m.id
                for m in self._messages.values()
                if m.created_at < older_than
                and all(
                    self._deliveries[i].status.is_final
                    for i in self._deliveries_by_message.get(m.id, [])
                )
            ]
            if limit is not None:
                doomed = doomed[:limit]
            for message_id in doomed:
                message = self._messages.pop(message_id)
                self._positions.pop(message_id, None)
                if message.idempotency_key is not None:
                    self._by_idempotency_key.pop(message.idempotency_key, None)
                for delivery_id in self._deliveries_by_message.pop(message_id, []):
                    del self._deliveries[delivery_id]
                    self._order.pop(delivery_id, None)
                self._attempts.pop(message_id, None)
            return len(doomed)

    def stats(self, now: datetime) -> Stats:
        """Counts of unfinished deliveries and of subscriptions by state."""
        with self._lock:
            pending = [
                self._deliveries[delivery_id]
                for unfinished in self._unfinished.values()
                for delivery_id in unfinished
                if self._deliveries[delivery_id].status is DeliveryStatus.PENDING
            ]
            subscriptions = list(self._subscriptions.values())
            return Stats(
                pending=len(pending),
                delivering=len(self._leases),
                oldest_pending_at=min((d.created_at for d in pending), default=None),
                subscriptions=len(subscriptions),
                disabled_subscriptions=sum(not s.enabled for s in subscriptions),
                failing_subscriptions=sum(
                    s.enabled and s.consecutive_failures > 0 for s in subscriptions
                ),
            )

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
            heapq.heappush(self._due, (delivery.next_attempt_at, next(self._sequence), delivery.id))
