"""The worker's bookkeeping as a synchronous object: which leased claims wait for a slot,
which run, and when to ask the store for more; the async driver in `worker` only acts.

No asyncio, no store and no clock inside: times are the event loop's, passed in as
``now`` floats, so tests drive a `Scheduler` with plain calls and made-up times.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Sequence

import attrs

from .stores.base import AttemptRecord, Claim

__all__ = ["LEASE_MARGIN", "GiveBack", "Move", "RoundRequest", "Scheduler"]


LEASE_MARGIN = 5.0
"""Seconds of lease a claim waiting for a slot must keep beyond its whole timeout."""


@attrs.frozen
class GiveBack:
    """Claims to release unattempted, in one store call. ``refunds`` are the
    rate-limited ones among them whose token was spent for a start that will not
    happen now: refund it before releasing."""

    claims: list[Claim]
    refunds: list[Claim] = attrs.field(factory=list)


@attrs.frozen
class RoundRequest:
    """One store round to run: record ``records``, then lease up to ``limit`` due
    deliveries (none when 0), never one of ``held`` (this worker's, running or waiting
    in line); ``startable`` is how many claims could start at once (what a rate-limited
    subscription may get)."""

    records: list[AttemptRecord]
    limit: int
    held: set[str]
    startable: int


class Move(enum.Enum):
    """What the driver does once it has started what it could."""

    WAIT = "wait"
    """Attempts or a store round are under way: wait for one to end or a wake-up."""
    IDLE = "idle"
    """Nothing under way and nothing known due: wait for work, then call `woken`."""
    DONE = "done"
    """Stopped, or (until idle) nothing more is due: return."""


class Scheduler:
    """The ready queue of leased claims with their start-by times, the attempts in
    flight, and the decision when to claim, for one run of the worker.

    A claim may lease up to ``concurrency`` more deliveries than there are free slots
    (capacity is twice the concurrency): they wait in the ready queue and start as
    slots free up, so there is work while the next store round runs. The driver calls,
    in each turn: `attempts_finished`, `woken` (a wake-up was seen), `round_finished`,
    `give_back`, `next_round`, `start`, then `next_move`.
    """

    def __init__(self, *, concurrency: int, lease: float, until_idle: bool) -> None:
        self.concurrency = concurrency
        self.capacity = 2 * concurrency  # in flight plus ready
        # Refill only once a quarter of the slots are free: fewer, larger claims.
        self.refill_at = max(1, concurrency // 4)
        self.lease = lease
        self.until_idle = until_idle
        self.ready: collections.deque[tuple[Claim, float]] = collections.deque()
        """Leased claims waiting for a slot, with the time by which each must start."""
        self.in_flight: dict[str, Claim] = {}
        """Attempts running, by delivery id."""
        self.finished: list[AttemptRecord] = []
        """Finished attempts not yet handed to a store round."""
        self.attempts = 0
        self.want_claim = True
        self.round_pending = False
        self._round_started = 0.0
        self._arrived: list[Claim] = []
        self._freed = False
        self._freed_meanwhile = False

    # -- what happened --------------------------------------------------------------
    def attempts_finished(self, records: Sequence[AttemptRecord]) -> None:
        """These attempts ended: their slots are free, their records wait for a round."""
        if not records:
            return
        for record in records:
            del self.in_flight[record.delivery.id]
        self.finished.extend(records)
        self.attempts += len(records)
        self._freed = True
        # A slot freed while a round claims may let a capped subscription give more
        # than that round found: claim again after it.
        self._freed_meanwhile = self._freed_meanwhile or self.round_pending

    def woken(self) -> None:
        """A publish here, another process's work, or the poll interval: look for work."""
        self.want_claim = True

    def round_finished(self, claims: Sequence[Claim], full: bool | None, *, woken: bool) -> None:
        """The store round ended with ``claims``; ``full``: the store returned a full
        batch (None: no claim was asked for); ``woken``: a wake-up is pending."""
        self.round_pending = False
        self._arrived.extend(claims)
        if full is not None:  # a full batch: more may be due
            self.want_claim = full or woken or self._freed_meanwhile
        self._freed_meanwhile = False

    # -- what to do -----------------------------------------------------------------
    def give_back(self, now: float, *, stopping: bool) -> GiveBack | None:
        """Queue the claims that just arrived and say which must go back to the store
        (released before the next round claims): all unstarted ones when ``stopping``;
        else one waiting past its start-by time (its lease could run out mid-attempt)
        and a rate-limited one that cannot start at once (its token was spent for now,
        not for whenever a slot frees). A stale claim went back: it is due again, so
        claim; a rate-limited one is claimed again only with a slot free to start it."""
        ready, arrived = self.ready, self._arrived
        if not ready and not arrived:
            return None
        self._arrived = []
        if stopping:  # never run: give back
            unrun = [claim for claim, _ in ready]
            unrun += arrived
            ready.clear()
            return GiveBack(unrun)
        back = [claim for claim, deadline in ready if now > deadline]
        if back:
            kept = [(claim, deadline) for claim, deadline in ready if now <= deadline]
            ready.clear()
            ready.extend(kept)
            self.want_claim = True
        refunds: list[Claim] = []
        free = self.concurrency - len(self.in_flight) - len(ready)  # slots for the new
        # Its lease (taken as the round started) must outlast the whole attempt.
        spare = self.lease - LEASE_MARGIN
        for claim in arrived:
            if free > 0:
                free -= 1
            elif claim.subscription.rate_limit is not None:
                refunds.append(claim)
                back.append(claim)
                continue
            ready.append(
                (claim, self._round_started + max(spare - claim.subscription.timeout, 0.0))
            )
        _take_turns(ready)
        return GiveBack(back, refunds) if back else None

    def next_round(self, now: float, *, stopping: bool) -> RoundRequest | None:
        """The store round to start now, if any: one that claims when a claim is wanted
        and there is room (never while ``stopping``), else one that only records what
        finished. None while a round is under way: at most one at a time."""
        room = self.capacity - len(self.in_flight) - len(self.ready)
        if self._freed and room >= self.refill_at:
            self.want_claim = True
        self._freed = False
        if self.round_pending:
            return None
        claim_now = self.want_claim and room > 0 and not stopping
        if not claim_now and not self.finished:
            return None
        # Records are written before the claim: only attempts still running (or
        # waiting in ready) may come back, after a wall-clock jump past the lease.
        held = set(self.in_flight)
        held.update(claim.delivery.id for claim, _ in self.ready)
        request = RoundRequest(
            records=self.finished,
            limit=room if claim_now else 0,
            held=held,
            startable=max(0, self.concurrency - len(self.in_flight) - len(self.ready)),
        )
        self.finished = []
        self.round_pending = True
        self._round_started = now
        return request

    def start(self, *, stopping: bool) -> list[Claim]:
        """The waiting claims to start now, as slots allow (none while ``stopping``);
        they count as in flight until `attempts_finished`."""
        ready, in_flight = self.ready, self.in_flight
        if stopping or not ready or len(in_flight) >= self.concurrency:
            return []
        starting: list[Claim] = []
        while ready and len(in_flight) < self.concurrency:
            claim, _ = ready.popleft()
            in_flight[claim.delivery.id] = claim
            starting.append(claim)
        return starting

    def next_move(self, *, stopping: bool) -> Move:
        """Wait while anything is under way; else stop (when ``stopping``, or until idle
        with no claim wanted) or idle until woken."""
        if self.round_pending or self.in_flight or self.ready:
            return Move.WAIT
        if stopping or (self.until_idle and not self.want_claim):
            return Move.DONE
        return Move.IDLE

    def unrun(self) -> list[Claim]:
        """Take the claims still waiting for a slot (the run ends: give them back)."""
        unrun = [claim for claim, _ in self.ready]
        unrun += self._arrived
        self.ready.clear()
        self._arrived = []
        return unrun

    def take_finished(self) -> list[AttemptRecord]:
        """Take the finished attempts no round has recorded yet (the run ends)."""
        finished, self.finished = self.finished, []
        return finished


def _take_turns(ready: collections.deque[tuple[Claim, float]]) -> None:
    """Interleave the waiting claims by tenant, keeping each tenant's own order: a
    tenant whose claims arrive behind a busy tenant's full batch waits one claim per
    tenant ahead of it, not the whole batch. Order within a tenant (and so within an
    ordered subscription) is untouched; untenanted claims take turns as one tenant."""
    if len(ready) < 2:
        return
    by_tenant: dict[str | None, collections.deque[tuple[Claim, float]]] = {}
    for item in ready:
        by_tenant.setdefault(item[0].subscription.tenant, collections.deque()).append(item)
    if len(by_tenant) < 2:
        return
    ready.clear()
    queues = list(by_tenant.values())
    while queues:
        for queue in queues:
            ready.append(queue.popleft())
        queues = [queue for queue in queues if queue]
