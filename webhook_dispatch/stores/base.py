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
  ``psycopg.Connection``) and `Store.publish_many_async` takes a
  ``psycopg.AsyncConnection``. The dispatcher refuses ``connection=`` with
  `ConfigurationError` for other stores.
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
from typing import Any, ClassVar

import attrs

from ..errors import ConfigurationError
from ..health import AutoDisable
from ..models import Attempt, Delivery, DeliveryStatus, Message, Subscription
from ..paging import Page

__all__ = [
    "FAILING_MAX_IN_FLIGHT",
    "AttemptRecord",
    "Claim",
    "ClaimPlan",
    "PublishResult",
    "RecordResult",
    "Stats",
    "Store",
]


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
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[Subscription]:
        """Subscriptions, oldest first: a page of ``limit`` after ``cursor``, or every
        one (``limit=None``, for building the matching index)."""

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
        self, *, event_type: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> Page[Message]:
        """The newest messages first, optionally of one event type: a page of ``limit``
        after ``cursor`` (a `Page.next_cursor` of the same listing)."""

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
    def stats(self, now: datetime) -> Stats:
        """Counts of unfinished deliveries and of subscriptions by state (`Stats`)."""

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
