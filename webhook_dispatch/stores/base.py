"""The store protocol: what the dispatcher and worker need from memory, SQLite or PostgreSQL.

Every method is synchronous and does one unit of work in one transaction. Decisions
(matching, signing, retry timing) are made before a store is called; the store only
keeps and fetches. Claiming uses leases so a crashed worker's deliveries come back
once its lease expires.

Two optional capabilities, looked up with ``getattr`` (stores without them work as
before):

- The transactional outbox. A store whose ``transactional_outbox`` attribute is true
  accepts a keyword-only ``connection=`` on `Store.publish` and `Store.publish_many`:
  a database connection with an open transaction, in which the rows are written and
  not committed (PostgreSQL: a ``psycopg.Connection``; ``publish_many_async`` takes a
  ``psycopg.AsyncConnection``). The dispatcher passes ``connection=`` only when its
  caller gave one, and refuses it with `ConfigurationError` for other stores
  (memory, SQLite).
- Hearing other processes' work. ``listen_for_work(callback) -> stop`` makes the
  store call ``callback()`` from its own thread whenever work may have become due
  elsewhere (PostgreSQL ``LISTEN/NOTIFY``); the worker passes its thread-safe
  ``wake`` and keeps its poll as the fallback.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

import attrs

from ..models import Attempt, Delivery, DeliveryStatus, Message, Subscription

__all__ = ["AttemptRecord", "Claim", "PublishResult", "Store"]


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


@attrs.frozen
class PublishResult:
    """What `Store.publish` did: the stored message and whether it is new.

    ``created`` is False when the idempotency key matched an earlier message; that
    earlier message is returned and no delivery was added.
    """

    message: Message
    created: bool
    deliveries: int


@runtime_checkable
class Store(Protocol):
    """Where subscriptions, messages, deliveries and attempts live.

    Implementations must be safe to call from several threads. ``blocking`` tells the
    async engine whether calls do I/O (and should run off the event loop).
    """

    blocking: bool

    # -- subscriptions -----------------------------------------------------------
    def add_subscription(self, subscription: Subscription) -> None:
        """Store a new subscription."""
        ...

    def save_subscription(self, subscription: Subscription) -> None:
        """Replace a stored subscription by id; `NotFound` if it does not exist."""
        ...

    def remove_subscription(self, subscription_id: str, now: datetime) -> None:
        """Delete a subscription; its unfinished deliveries become ``cancelled``."""
        ...

    def get_subscription(self, subscription_id: str) -> Subscription:
        """The subscription with this id; `NotFound` otherwise."""
        ...

    def list_subscriptions(self) -> list[Subscription]:
        """Every subscription, oldest first."""
        ...

    def subscriptions_version(self) -> int:
        """A number that changes whenever any subscription is added, changed or removed.

        Publishers cache their matching index and rebuild it when this changes, so a
        subscription added by another process is seen on the next publish.
        """
        ...

    # -- messages ----------------------------------------------------------------
    def publish(
        self, message: Message, subscription_ids: Sequence[str], now: datetime
    ) -> PublishResult:
        """Store ``message`` and one pending delivery per subscription, due at ``now``.

        One transaction. When ``message.idempotency_key`` equals a stored message's,
        nothing is written and that message is returned with ``created=False`` (also
        under concurrent publishes with one key).
        """
        ...

    def publish_many(
        self, items: Sequence[tuple[Message, Sequence[str]]], now: datetime
    ) -> list[PublishResult]:
        """`publish` for a batch, in one transaction, results in input order."""
        ...

    def get_message(self, message_id: str) -> Message:
        """The message with this id; `NotFound` otherwise."""
        ...

    def list_messages(self, *, event_type: str | None = None, limit: int = 100) -> list[Message]:
        """The newest messages first, optionally of one event type."""
        ...

    # -- deliveries --------------------------------------------------------------
    def claim_due(
        self, now: datetime, *, limit: int, lease_until: datetime, worker_id: str
    ) -> list[Claim]:
        """Take up to ``limit`` deliveries due at ``now`` and lease them to ``worker_id``.

        Due means: ``pending`` with ``next_attempt_at <= now`` on an enabled
        subscription, or ``delivering`` with an expired lease (its worker died).
        Claimed deliveries become ``delivering`` until ``lease_until``. Oldest due
        first. Two workers never hold the same delivery at once.
        """
        ...

    def record(self, records: Sequence[AttemptRecord], worker_id: str) -> None:
        """Write finished attempts and their deliveries' next states in one transaction."""
        ...

    def release(self, delivery_ids: Sequence[str], worker_id: str) -> None:
        """Give back leased deliveries unattempted (graceful shutdown): pending again."""
        ...

    def next_due_at(self) -> datetime | None:
        """The earliest ``next_attempt_at`` of a pending delivery on an enabled
        subscription, or the earliest lease expiry of a ``delivering`` one; None if none."""
        ...

    def get_delivery(self, delivery_id: str) -> Delivery:
        """The delivery with this id; `NotFound` otherwise."""
        ...

    def list_deliveries(
        self,
        *,
        message_id: str | None = None,
        subscription_id: str | None = None,
        status: DeliveryStatus | None = None,
        limit: int | None = None,
    ) -> list[Delivery]:
        """Deliveries matching every given filter, oldest first."""
        ...

    def list_attempts(
        self, *, message_id: str | None = None, delivery_id: str | None = None
    ) -> list[Attempt]:
        """Attempts of a message or of a delivery, oldest first."""
        ...

    def schedule_manual(self, delivery_ids: Sequence[str], now: datetime) -> list[Delivery]:
        """Make deliveries due at ``now`` for one manual attempt (``next_trigger=manual``).

        Deliveries currently ``delivering`` are left alone. Returns the updated ones.
        """
        ...

    def recover(
        self, subscription_id: str, *, since: datetime, until: datetime, now: datetime
    ) -> list[Delivery]:
        """`schedule_manual` every ``failed`` or ``exhausted`` delivery of a subscription
        whose message was created in ``[since, until)``. Returns the updated ones."""
        ...

    def purge(self, older_than: datetime, *, limit: int | None = None) -> int:
        """Delete up to ``limit`` (None: all) messages created before ``older_than`` whose
        deliveries are all final, with their deliveries and attempts, oldest first, in one
        transaction. Returns how many messages went; callers loop in batches so a long
        purge never holds the store's write lock for long."""
        ...

    def close(self) -> None:
        """Release connections and files. Idempotent."""
        ...
