"""The delivery worker: claim due deliveries in leased batches, attempt them concurrently,
and write each attempt with its delivery's next state, batched, back to the store.

Time for retries is persisted, never slept on: an idle worker waits for a publish in
this process, the next due time, or a short poll for other processes' work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

import attrs

from .clock import Clock
from .delivery import interrupted, next_state
from .engine import Engine
from .errors import StoreError, StoreUnavailable
from .events import (
    ATTEMPT_MADE,
    DELIVERY_EXHAUSTED,
    DELIVERY_FAILED,
    DELIVERY_SUCCEEDED,
    OPERATIONAL_PREFIX,
    PUBLISHED_EVENTS,
    SUBSCRIPTION_DISABLED,
    SUBSCRIPTION_RECOVERED,
    Hooks,
    OperationalEvent,
)
from .flow import TokenBucket
from .health import AutoDisable
from .models import Attempt, DeliveryStatus, ErrorKind, RetrySchedule
from .registry import pattern_matches
from .retry import RetryPolicy
from .scheduler import GiveBack, Move, Scheduler
from .stores.base import AttemptRecord, Claim, RecordResult, Store

__all__ = ["Worker"]

logger = logging.getLogger("webhook_dispatch")

T = TypeVar("T")


class AttemptObserver(Protocol):
    """Sees every attempt with its delivery's next status (metrics)."""

    def observe_attempt(self, attempt: Attempt, status: DeliveryStatus) -> None: ...


class AttemptSpans(Protocol):
    """Wraps attempts in trace spans (`webhook_dispatch.tracing.AttemptTracer`)."""

    def span(self, claim: Claim) -> contextlib.AbstractContextManager[Any]: ...

    def finish(self, span: Any, attempt: Attempt) -> None: ...


OperationalPublisher = Callable[[list[OperationalEvent]], object]
"""Publishes operational events as webhooks (blocking; run off the event loop)."""


_FINAL_EVENTS = {
    DeliveryStatus.SUCCEEDED: DELIVERY_SUCCEEDED,
    DeliveryStatus.FAILED: DELIVERY_FAILED,
    DeliveryStatus.EXHAUSTED: DELIVERY_EXHAUSTED,
}


def _default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


class Worker:
    """Runs deliveries from a store until idle or until stopped.

    ``concurrency`` bounds attempts in flight; ``lease`` is how long a claimed delivery
    stays reserved for this worker (a crashed worker's deliveries return after it).
    ``default_max_in_flight`` caps attempts in flight per subscription without its own
    ``max_in_flight`` (None: no cap); ``retry_overrides`` are ``(event-type pattern,
    policy)`` pairs, first match wins, below a subscription's own schedule.
    """

    def __init__(
        self,
        store: Store,
        engine: Engine,
        clock: Clock,
        *,
        retry: RetryPolicy,
        concurrency: int = 64,
        lease: timedelta = timedelta(seconds=60),
        poll_interval: float = 1.0,
        worker_id: str | None = None,
        retention: timedelta | None = None,
        purge_every: timedelta = timedelta(hours=1),
        purge_batch: int = 1000,
        default_max_in_flight: int | None = None,
        retry_overrides: Sequence[tuple[str, RetryPolicy]] = (),
        auto_disable: AutoDisable | None = None,
        hooks: Hooks | None = None,
        publish_operational: OperationalPublisher | None = None,
        observer: AttemptObserver | None = None,
        spans: AttemptSpans | None = None,
        grace: float | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.clock = clock
        self.retry = retry
        self.concurrency = concurrency
        self.lease = lease
        self.poll_interval = poll_interval
        self.worker_id = worker_id or _default_worker_id()
        self.retention = retention
        self.purge_every = purge_every
        self.purge_batch = purge_batch
        self._next_purge_at: datetime | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._signal: asyncio.Future[None] | None = None
        self._stopping = False
        self._store_failures = 0
        self._stop_listening: Callable[[], None] | None = None
        self.default_max_in_flight = default_max_in_flight
        self.retry_overrides = tuple(retry_overrides)
        self.auto_disable = auto_disable
        self.hooks = hooks if hooks is not None and not hooks.empty else None
        self.publish_operational = publish_operational
        self.observer = observer
        self.spans = spans
        self.grace = grace
        self._interrupted = threading.Event()
        self._grace_deadline: float | None = None
        self.tally: dict[DeliveryStatus, int] = dict.fromkeys(DeliveryStatus, 0)
        """Attempts made since this worker was built, by the status each left its delivery
        in (every key present from the start, so another thread may copy it)."""
        self._buckets: dict[str, TokenBucket] = {}
        # Slow start: subscriptions this worker has seen succeed get their full share of
        # slots; the others two, so an endpoint that never answers cannot hold many
        # slots while its first attempts run towards their timeout.
        self._proven: set[str] = set()
        self._proven_snapshot: frozenset[str] = frozenset()
        self._proven_changed = False
        self._schedules: dict[RetrySchedule, RetryPolicy] = {}

    # -- control from any thread --------------------------------------------------
    def wake(self) -> None:
        """Tell the worker new work may be due (safe from any thread)."""
        loop, event = self._loop, self._wake
        if loop is None or event is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake_up()
        else:
            loop.call_soon_threadsafe(self._wake_up)

    def request_stop(self) -> None:
        """Ask `run` to finish its attempts in flight and return (safe from any thread)."""
        self._stopping = True
        self.wake()

    def interrupt(self) -> None:
        """End a stopping worker's grace period now (safe from any thread): attempts
        still in flight are cancelled, recorded as interrupted and due again at once."""
        self._interrupted.set()
        self.wake()

    # -- running ------------------------------------------------------------------
    async def run_until_idle(self) -> int:
        """Attempt every delivery due now, including retries that fall due meanwhile;
        return the number of attempts made. An earlier `request_stop` (a worker that was
        started and stopped) does not cut this run short."""
        self.prepare_run()
        return await self._loop_forever(until_idle=True)

    def prepare_run(self) -> None:
        """Clear an earlier stop request; call before scheduling `run` (a stop requested
        after this, even before `run` starts, is honoured)."""
        self._stopping = False
        self._interrupted.clear()
        self._grace_deadline = None

    async def run(self) -> int:
        """Deliver until `request_stop`; return the number of attempts made."""
        return await self._loop_forever(until_idle=False)

    async def _loop_forever(self, *, until_idle: bool) -> int:
        """Attempts run on the loop while at most one store round (record what finished,
        then claim) runs on the store thread: neither waits for the other. What to start,
        give back and claim is the `Scheduler`'s decision; this driver only acts on it.

        Each attempt's completion and each wake-up resolve one signal future, so a
        completion costs O(1) whatever the concurrency."""
        self._bind_loop()
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        wake = self._wake
        scheduler = Scheduler(
            concurrency=self.concurrency,
            lease=self.lease.total_seconds(),
            until_idle=until_idle,
        )
        # Each attempt in flight, with its claim and when it started (for an interruption).
        running: dict[asyncio.Task[AttemptRecord], tuple[Claim, datetime]] = {}
        completed: list[asyncio.Task[AttemptRecord]] = []
        store_round: asyncio.Task[tuple[list[Claim], bool | None]] | None = None
        failing = False

        def attempt_done(task: asyncio.Task[AttemptRecord]) -> None:
            completed.append(task)
            self._signal_loop()

        def round_done(_: object) -> None:
            self._signal_loop()

        try:
            while True:
                if completed:
                    scheduler.attempts_finished([task.result() for task in completed])
                    for task in completed:
                        del running[task]
                    completed.clear()
                woken = wake.is_set()  # a publish here, or the poll interval passed
                if woken:
                    scheduler.woken()
                if store_round is not None and store_round.done():
                    arrived, full = store_round.result()
                    store_round = None
                    scheduler.round_finished(arrived, full, woken=woken)
                back = scheduler.give_back(loop.time(), stopping=self._stopping)
                if back is not None:
                    # Before the next round: what goes back must be back before it claims.
                    await self._give_back(back)
                request = scheduler.next_round(loop.time(), stopping=self._stopping)
                if request is not None:
                    if request.limit:
                        wake.clear()
                    # Created before the attempts below, so its store call is handed to
                    # the store thread before their first steps run.
                    store_round = loop.create_task(
                        self._store_round(
                            request.records, request.limit, request.held, request.startable
                        )
                    )
                    store_round.add_done_callback(round_done)
                for claim in scheduler.start(stopping=self._stopping):
                    task = loop.create_task(self._attempt(claim))
                    task.add_done_callback(attempt_done)
                    running[task] = (claim, self.clock.now())
                if self._stopping and running and self._grace_over(loop.time(), len(running)):
                    return scheduler.attempts  # _shutdown interrupts what still runs
                move = scheduler.next_move(stopping=self._stopping)
                if move is Move.DONE:
                    return scheduler.attempts
                if move is Move.IDLE:
                    await self._idle(wake)
                    scheduler.woken()
                    continue
                if completed or (store_round is not None and store_round.done()):
                    continue
                await self._wait_for_signal(loop, self._until_grace_over(loop.time()))
        except BaseException:
            failing = True
            raise
        finally:
            await self._shutdown(scheduler, running, store_round, failing=failing)

    async def _let_finish(
        self, running: Mapping[asyncio.Task[AttemptRecord], tuple[Claim, datetime]]
    ) -> list[AttemptRecord]:
        """Let the attempts in flight end, for at most ``grace`` seconds (None: each until
        its own timeout) or until `interrupt`; cancel the rest and record them as
        interrupted (due again at once: another worker takes them without waiting for
        the lease). Their records, and those of the attempts that ended."""
        loop = asyncio.get_running_loop()
        self._grace_over(loop.time())  # starts the grace period if not yet started
        deadline = self._grace_deadline
        assert deadline is not None
        pending: set[asyncio.Future[Any]] = set(running)
        interrupted_wait = asyncio.ensure_future(asyncio.to_thread(self._interrupted.wait))
        try:
            while pending and not self._interrupted.is_set():
                timeout = None if math.isinf(deadline) else deadline - loop.time()
                if timeout is not None and timeout <= 0:
                    break
                _, pending = await asyncio.wait(
                    pending | {interrupted_wait},
                    timeout=timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                pending.discard(interrupted_wait)
        finally:
            self._interrupted.set()  # ends the waiting thread
            await interrupted_wait
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        now = self.clock.now()
        records: list[AttemptRecord] = []
        for task, (claim, started_at) in running.items():
            if task.cancelled():
                records.append(interrupted(claim, started_at, now))
                logger.warning(
                    "stopping: interrupted the attempt of delivery %s to %s after %.1f s; "
                    "it is due again at once",
                    claim.delivery.id,
                    claim.subscription.url,
                    (now - started_at).total_seconds(),
                    extra={
                        "delivery_id": claim.delivery.id,
                        "subscription_id": claim.subscription.id,
                        "message_id": claim.message.id,
                    },
                )
            elif task.exception() is None:
                records.append(task.result())
        return records

    async def _give_back(self, back: GiveBack) -> None:
        """Refund the rate-limit tokens of ``back.refunds``, then release every claim of
        ``back`` unattempted in one store call."""
        for claim in back.refunds:
            bucket = self._buckets.get(claim.subscription.id)
            if bucket is not None:
                bucket.refund()
        await self._release_unrun([claim.delivery.id for claim in back.claims])

    def _signal_loop(self) -> None:
        signal = self._signal
        if signal is not None and not signal.done():
            signal.set_result(None)

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()
        self._signal_loop()

    def _grace_over(self, now: float, in_flight: int = 0) -> bool:
        """While stopping: whether the attempts in flight have had their grace period
        (counted from the first look after the stop request) or were interrupted."""
        if self._grace_deadline is None:
            self._grace_deadline = math.inf if self.grace is None else now + self.grace
            if in_flight:
                logger.info(
                    "stopping: %d attempts in flight may run %s; interrupt() (a second "
                    "Ctrl-C or SIGTERM to the worker command) cuts them short",
                    in_flight,
                    "until their timeouts" if self.grace is None else f"{self.grace:g} s more",
                    extra={"worker_id": self.worker_id},
                )
        return self._interrupted.is_set() or now >= self._grace_deadline

    def _until_grace_over(self, now: float) -> float:
        """Seconds until the grace period ends (the poll interval when not stopping)."""
        if not self._stopping or self._grace_deadline is None:
            return self.poll_interval
        return max(0.0, min(self.poll_interval, self._grace_deadline - now))

    async def _wait_for_signal(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        """Until an attempt or the store round ends, a wake-up, or ``delay`` seconds."""
        self._signal = signal = loop.create_future()
        timer = loop.call_later(delay, self._wake_up)
        try:
            await signal
        finally:
            timer.cancel()
            self._signal = None

    async def _store_round(
        self, records: list[AttemptRecord], limit: int, held: set[str], startable: int
    ) -> tuple[list[Claim], bool | None]:
        """Record finished attempts, then lease up to ``limit`` due deliveries (none when
        0): one store call when the store has ``record_and_claim``. Returns the claims
        and whether the store returned a full batch (None: no claim was asked for; True
        after a failed claim, so it is tried again). ``startable``: how many claims could
        start at once (a rate-limited subscription gets no more than that)."""
        if records and limit:
            now = self.clock.now()
            try:
                result, claims = await self._store_call(
                    self.store.record_and_claim,
                    records,
                    self.worker_id,
                    now,
                    auto_disable=self.auto_disable,
                    **self._claim_keywords(now, limit, startable),
                )
            except StoreUnavailable as exc:
                await self._store_backoff("record", exc)  # then one call at a time
            except StoreError:
                # Permanent. When the round was one transaction it wrote nothing: record
                # alone what the store still takes, then stop with this error.
                if self.store.atomic_round:
                    with contextlib.suppress(StoreError):
                        await self._flush(records)
                raise
            else:
                self._store_failures = 0
                await self._announce_if_needed(records, result)
                try:
                    return await self._accept(claims, limit, held, now)
                except StoreUnavailable as exc:
                    await self._store_backoff("claim", exc)
                    return [], True
        if records:
            await self._flush(records)
        if not limit:
            return [], None
        claimed = await self._claim(limit, held, startable)
        if claimed is None:
            return [], True  # the store failed and was waited on: claim again
        return claimed

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._wake = asyncio.Event()

    async def _idle(self, wake: asyncio.Event) -> None:
        """Sleep until woken, the next due time, or the poll interval, whichever is first."""
        self._listen_for_work()
        await self._purge_if_due()
        delay = self.poll_interval
        try:
            due = await self._store_call(self.store.next_due_at)
        except StoreUnavailable:
            due = None
        now = self.clock.now()
        if due is not None and due > now:
            delay = min(delay, (due - now).total_seconds())
        elif due is not None:
            # Due work this worker could not claim is held by flow control (a rate
            # limit, an in-flight cap, an ordered subscription's earlier message):
            # wait for the next token, a wake-up or the poll, never spin.
            tokens = [bucket.next_token_at(now) for bucket in self._buckets.values()]
            waits = [(at - now).total_seconds() for at in tokens if at > now]
            if waits:
                delay = min(delay, min(waits))
        if delay <= 0:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=delay)

    def _listen_for_work(self) -> None:
        """Once, when the store can hear other processes' work (PostgreSQL LISTEN/NOTIFY,
        the optional ``listen_for_work(callback)``), have it call `wake` from its thread;
        the poll interval stays as the fallback for a lost notification."""
        if self._stop_listening is not None:
            return
        try:
            self._stop_listening = self.store.listen_for_work(self.wake)
        except StoreError as exc:
            logger.warning("cannot listen for work (%s); polling instead", exc)

    async def _purge_if_due(self) -> None:
        """Apply the retention while idle, at most once per ``purge_every``."""
        if self.retention is None:
            return
        now = self.clock.now()
        if self._next_purge_at is not None and now < self._next_purge_at:
            return
        self._next_purge_at = now + self.purge_every
        purged = 0
        try:
            while removed := await self._store_call(
                self.store.purge, now - self.retention, limit=self.purge_batch
            ):
                purged += removed
                if self._stopping or self._wake is None or self._wake.is_set():
                    break  # work arrived: deliver first, finish the purge next time
        except StoreError as exc:
            logger.warning("retention purge failed (%s); next try in %s", exc, self.purge_every)
            return
        if purged:
            logger.info("retention: purged %d finished messages", purged)

    async def _claim(
        self, limit: int, held: set[str], startable: int
    ) -> tuple[list[Claim], bool] | None:
        """Lease up to ``limit`` due deliveries: the claims to attempt now, and whether the
        store returned a full batch. None after a store failure (backed off)."""
        now = self.clock.now()
        try:
            claims = await self._store_call(
                self.store.claim_due,
                now,
                worker_id=self.worker_id,
                **self._claim_keywords(now, limit, startable),
            )
            accepted = await self._accept(claims, limit, held, now)
        except StoreUnavailable as exc:
            await self._store_backoff("claim", exc)
            return None
        self._store_failures = 0
        return accepted

    def _claim_keywords(self, now: datetime, limit: int, startable: int) -> dict[str, Any]:
        # A rate-limited delivery is claimed only to start at once (``startable``: the
        # slots the claims already waiting will leave free), never to wait for a slot.
        allowance = {
            key: min(bucket.available(now), startable) for key, bucket in self._buckets.items()
        }
        return {
            "limit": limit,
            "lease_until": now + self.lease,
            "default_max_in_flight": self.default_max_in_flight,
            "allowance": allowance or None,
            "proven": self._proven_now(),
        }

    def _proven_now(self) -> frozenset[str]:
        """An immutable copy for the store thread, rebuilt only when it changed."""
        if self._proven_changed:
            self._proven_snapshot = frozenset(self._proven)
            self._proven_changed = False
        return self._proven_snapshot

    async def _accept(
        self, claims: list[Claim], limit: int, held: set[str], now: datetime
    ) -> tuple[list[Claim], bool]:
        """The claims to attempt now, and whether the store returned a full batch.

        ``held`` are this worker's attempts in flight: a wall-clock jump past the lease
        makes them claimable again (to this worker). They are dropped here, before flow
        control sees them, so they are neither sent twice nor released while running;
        the running attempt keeps the lease and records the result."""
        full = len(claims) == limit
        if held:
            claims = [claim for claim in claims if claim.delivery.id not in held]
        return await self._throttle(claims, now), full

    async def _throttle(self, claims: list[Claim], now: datetime) -> list[Claim]:
        """Spend a rate-limit token per claim; give back, due at the next token, those
        over the limit (a subscription this worker had not seen yet). Not an attempt."""
        kept: list[Claim] = []
        over: list[Claim] = []
        for claim in claims:
            rate = claim.subscription.rate_limit
            key = claim.subscription.id
            if rate is None:
                self._buckets.pop(key, None)
                kept.append(claim)
                continue
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(rate, now)
            bucket.set_rate(rate)
            (kept if bucket.take(now) else over).append(claim)
        by_time: dict[datetime, list[str]] = {}
        for claim in over:
            due_at = self._buckets[claim.subscription.id].next_token_at(now)
            by_time.setdefault(due_at, []).append(claim.delivery.id)
        for due_at, ids in by_time.items():
            try:
                await self._store_call(self.store.release, ids, self.worker_id, due_at=due_at)
            except StoreUnavailable as exc:
                # The kept claims still run; these come back when their leases expire.
                logger.warning(
                    "could not put back %d rate-limited deliveries (%s)",
                    len(ids),
                    exc,
                    extra={"worker_id": self.worker_id},
                )
        if over and logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "rate limit: %d deliveries put back until a token is free",
                len(over),
                extra={"worker_id": self.worker_id},
            )
        return kept

    def _policy_for(self, claim: Claim) -> RetryPolicy:
        """The subscription's own schedule, else the first event-type override that
        matches, else the dispatcher's policy."""
        schedule = claim.subscription.retry_schedule
        if schedule is None and not self.retry_overrides:
            return self.retry
        if schedule is not None:
            policy = self._schedules.get(schedule)
            if policy is None:
                policy = self._schedules[schedule] = self.retry.with_schedule(schedule)
            return policy
        for pattern, override in self.retry_overrides:
            if pattern_matches(pattern, claim.message.event_type):
                return override
        return self.retry

    async def _attempt(self, claim: Claim) -> AttemptRecord:
        if self.spans is None:
            attempt, outcome = await self.engine.attempt(claim)
        else:
            with self.spans.span(claim) as span:
                attempt, outcome = await self.engine.attempt(claim)
                self.spans.finish(span, attempt)
        record = next_state(claim, attempt, outcome, self._policy_for(claim), self.clock.now())
        status = record.delivery.status
        subscription_id = claim.subscription.id
        if status is DeliveryStatus.SUCCEEDED:
            if subscription_id not in self._proven:
                self._proven.add(subscription_id)
                self._proven_changed = True
        elif subscription_id in self._proven:
            self._proven.discard(subscription_id)
            self._proven_changed = True
        _log_attempt(record.attempt, status)
        self.tally[status] += 1
        if self.observer is not None:
            try:
                self.observer.observe_attempt(record.attempt, status)
            except Exception:  # metrics must never cost a sent attempt its record
                logger.exception("attempt observer failed")
        return record

    async def _flush(self, finished: list[AttemptRecord]) -> None:
        """Write finished attempts in one store call; while the store is unavailable, keep
        them and retry. Any other store error is permanent: it propagates."""
        batch = list(finished)
        while True:
            try:
                result = await self._store_call(
                    self.store.record, batch, self.worker_id, auto_disable=self.auto_disable
                )
            except StoreUnavailable as exc:
                await self._store_backoff("record", exc)
                continue
            self._store_failures = 0
            finished.clear()
            break
        await self._announce_if_needed(batch, result)

    async def _announce_if_needed(self, batch: list[AttemptRecord], result: RecordResult) -> None:
        if result.disabled or result.recovered or self.hooks or self.publish_operational:
            await self._announce(batch, result)

    async def _announce(self, batch: list[AttemptRecord], result: RecordResult) -> None:
        """Log, call back and (optionally) publish what this batch changed."""
        events: list[OperationalEvent] = []
        event_types: dict[str, str] = {}  # subscription -> event type of its last message
        tenants: dict[str, str | None] = {}  # subscription -> its tenant
        for record in batch:
            attempt, delivery = record.attempt, record.delivery
            event_type = record.event_type
            event_types[attempt.subscription_id] = event_type or ""
            tenants[attempt.subscription_id] = record.tenant
            made = OperationalEvent(
                type=ATTEMPT_MADE,
                subscription_id=attempt.subscription_id,
                at=attempt.started_at,
                delivery=delivery,
                attempt=attempt,
                event_type=event_type,
                tenant=record.tenant,
            )
            events.append(made)
            final = _FINAL_EVENTS.get(delivery.status)
            if final is not None:
                events.append(attrs.evolve(made, type=final))
        now = self.clock.now()
        for subscription_id, reason in result.disabled:
            logger.warning(
                "subscription %s disabled: %s",
                subscription_id,
                reason,
                extra={"subscription_id": subscription_id, "reason": reason},
            )
            events.append(
                OperationalEvent(
                    type=SUBSCRIPTION_DISABLED,
                    subscription_id=subscription_id,
                    at=now,
                    reason=reason,
                    event_type=event_types.get(subscription_id) or None,
                    tenant=tenants.get(subscription_id),
                )
            )
        for subscription_id in result.recovered:
            logger.info(
                "subscription %s recovered",
                subscription_id,
                extra={"subscription_id": subscription_id},
            )
            events.append(
                OperationalEvent(
                    type=SUBSCRIPTION_RECOVERED,
                    subscription_id=subscription_id,
                    at=now,
                    event_type=event_types.get(subscription_id) or None,
                    tenant=tenants.get(subscription_id),
                )
            )
        if self.hooks is not None:
            for event in events:
                self.hooks.emit(event)
        if self.publish_operational is None:
            return
        # Never about deliveries of operational events: an operator subscription that
        # fails must not feed itself events forever.
        published = [
            event
            for event in events
            if event.type in PUBLISHED_EVENTS
            and not (event.event_type or "").startswith(OPERATIONAL_PREFIX)
        ]
        if published:
            try:
                await self._store_call(self.publish_operational, published)
            except Exception:
                logger.exception("publishing %d operational events failed", len(published))

    async def _store_backoff(self, what: str, exc: StoreError) -> None:
        self._store_failures += 1
        delay = min(30.0, 0.05 * 2 ** min(self._store_failures, 10))
        logger.warning(
            "store %s failed (%s); retrying in %.2fs",
            what,
            exc,
            delay,
            extra={"worker_id": self.worker_id},
        )
        await asyncio.sleep(delay)

    async def _shutdown(
        self,
        scheduler: Scheduler,
        running: Mapping[asyncio.Task[AttemptRecord], tuple[Claim, datetime]],
        store_round: asyncio.Task[tuple[list[Claim], bool | None]] | None,
        *,
        failing: bool,
    ) -> None:
        """Give back what waited for a slot, let the store round and the attempts in
        flight end, record them, and release what was claimed but never ran.

        Every step is tried even after a store error; the first one is raised at the
        end, unless the run is already ending with an error (then they are logged)."""
        errors: list[StoreError] = []

        async def step(what: str, call: Callable[[], Awaitable[None]]) -> None:
            try:
                await call()
            except StoreError as exc:
                if failing or errors:
                    logger.error(
                        "stopping: could not %s (%s)",
                        what,
                        exc,
                        extra={"worker_id": self.worker_id},
                    )
                errors.append(exc)

        waiting = [claim.delivery.id for claim in scheduler.unrun()]
        if waiting:
            await step("give back unstarted deliveries", lambda: self._release_unrun(waiting))
        unrun: list[str] = []
        if store_round is not None:
            await asyncio.wait([store_round])
            if not store_round.cancelled() and store_round.exception() is None:
                unrun = [claim.delivery.id for claim in store_round.result()[0]]
        finished = scheduler.take_finished()
        if running:
            finished += await self._let_finish(running)
        if unrun:
            await step("give back unstarted deliveries", lambda: self._release_unrun(unrun))
        if finished:
            await step("record finished attempts", lambda: self._flush(finished))
        if store_round is not None and not store_round.cancelled():
            store_round.result()  # a failed round's error surfaces here
        if errors and not failing:
            raise errors[0]

    async def _release_unrun(self, delivery_ids: list[str]) -> None:
        """Give back claims that will not run; if the store is unavailable, their leases
        simply expire and another worker takes them then. Any other store error is
        permanent: it stops the worker."""
        try:
            await self._store_call(self.store.release, delivery_ids, self.worker_id)
        except StoreUnavailable as exc:
            logger.warning(
                "could not release %d unstarted deliveries (%s); they return when their "
                "leases expire",
                len(delivery_ids),
                exc,
                extra={"worker_id": self.worker_id},
            )

    async def _store_call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call the store, off the event loop when its calls block."""
        if not self.store.blocking:
            return function(*args, **kwargs)
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="webhook-dispatch-store"
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: function(*args, **kwargs))

    def close(self) -> None:
        """Release the store thread and stop listening for work."""
        stop_listening, self._stop_listening = self._stop_listening, None
        if stop_listening is not None:
            stop_listening()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def _log_attempt(attempt: Attempt, status: DeliveryStatus) -> None:
    if attempt.error_kind is ErrorKind.BLOCKED:
        # Never retried: a guard refusal that nobody sees loses the delivery silently.
        logger.warning(
            "attempt %d of %s to %s refused by the network guard: %s; the delivery is "
            "%s (allow_private_networks=True, allowed_networks=[...] or the worker's "
            "--allow-private-networks let such addresses through)",
            attempt.number,
            attempt.message_id,
            attempt.subscription_id,
            attempt.error,
            status.value,
            extra={
                "message_id": attempt.message_id,
                "subscription_id": attempt.subscription_id,
                "delivery_id": attempt.delivery_id,
                "error": attempt.error,
                "delivery_status": status.value,
            },
        )
        return
    # Successes are routine (DEBUG); a retry is worth a line (INFO); a delivery given up
    # is news (WARNING).
    if status is DeliveryStatus.SUCCEEDED:
        level = logging.DEBUG
    elif status is DeliveryStatus.PENDING:
        level = logging.INFO
    else:
        level = logging.WARNING
    if not logger.isEnabledFor(level):
        return
    logger.log(
        level,
        "attempt %d of %s to %s: %s -> %s",
        attempt.number,
        attempt.message_id,
        attempt.subscription_id,
        attempt.status_code
        if attempt.status_code is not None
        else getattr(attempt.error_kind, "value", "error"),
        status.value,
        extra={
            "message_id": attempt.message_id,
            "subscription_id": attempt.subscription_id,
            "delivery_id": attempt.delivery_id,
            "attempt": attempt.number,
            "status_code": attempt.status_code,
            "error": attempt.error,
            "duration": attempt.duration,
            "delivery_status": status.value,
        },
    )
