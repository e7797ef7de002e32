"""The worker's scheduler driven with plain calls and made-up loop times: no asyncio, no
store, no network."""

from __future__ import annotations

import itertools
from datetime import datetime, timezone

from webhook_dispatch.models import Attempt, Delivery, DeliveryStatus, Message, Subscription
from webhook_dispatch.scheduler import LEASE_MARGIN, Move, Scheduler
from webhook_dispatch.stores.base import AttemptRecord, Claim

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
_ids = itertools.count(1)


def claims(
    count: int,
    *,
    timeout: float = 15.0,
    rate_limit: float | None = None,
    tenant: str | None = None,
) -> list[Claim]:
    subscription = Subscription(
        id=f"sub_{tenant or 1}",
        url="https://example.com/hooks",
        secret="whsec_" + "A" * 32,
        created_at=T0,
        updated_at=T0,
        timeout=timeout,
        rate_limit=rate_limit,
        tenant=tenant,
    )
    made = []
    for _ in range(count):
        n = next(_ids)
        message = Message(
            id=f"msg_{n}", event_type="order.created", payload=b"{}", created_at=T0, tenant=tenant
        )
        delivery = Delivery(
            id=f"dlv_{n}",
            message_id=message.id,
            subscription_id=subscription.id,
            status=DeliveryStatus.DELIVERING,
            next_attempt_at=T0,
            created_at=T0,
            updated_at=T0,
        )
        made.append(Claim(delivery=delivery, message=message, subscription=subscription))
    return made


def record(claim: Claim) -> AttemptRecord:
    attempt = Attempt(
        id=f"att_{claim.delivery.id}",
        delivery_id=claim.delivery.id,
        message_id=claim.message.id,
        subscription_id=claim.subscription.id,
        number=1,
        trigger=claim.delivery.next_trigger,
        started_at=T0,
        duration=0.1,
        url=claim.subscription.url,
        status_code=200,
        webhook_timestamp=int(T0.timestamp()),
    )
    delivery = Delivery(
        id=claim.delivery.id,
        message_id=claim.message.id,
        subscription_id=claim.subscription.id,
        status=DeliveryStatus.SUCCEEDED,
        attempt_count=1,
        next_attempt_at=None,
        created_at=T0,
        updated_at=T0,
    )
    return AttemptRecord(attempt=attempt, delivery=delivery)


def ids(items: list[Claim]) -> list[str]:
    return [claim.delivery.id for claim in items]


def deliver(
    scheduler: Scheduler, arrived: list[Claim], *, now: float = 0.0, full: bool = False
) -> list[Claim]:
    """One turn after a claiming round: it ends with ``arrived``; what starts."""
    scheduler.round_finished(arrived, full, woken=False)
    assert scheduler.give_back(now, stopping=False) is None
    return scheduler.start(stopping=False)


def test_the_first_round_claims_twice_the_concurrency_and_holds_nothing() -> None:
    scheduler = Scheduler(concurrency=4, lease=60.0, until_idle=True)
    request = scheduler.next_round(0.0, stopping=False)
    assert request is not None
    assert (request.limit, request.startable, request.held, request.records) == (8, 4, set(), [])
    assert scheduler.next_round(0.0, stopping=False) is None  # one round at a time
    assert scheduler.next_move(stopping=False) is Move.WAIT


def test_claims_beyond_the_free_slots_wait_leased_and_start_as_slots_free() -> None:
    scheduler = Scheduler(concurrency=4, lease=60.0, until_idle=True)
    scheduler.next_round(0.0, stopping=False)
    batch = claims(6)
    started = deliver(scheduler, batch)
    assert ids(started) == ids(batch[:4])
    assert set(scheduler.in_flight) == set(ids(batch[:4]))
    assert ids([claim for claim, _ in scheduler.ready]) == ids(batch[4:])

    scheduler.attempts_finished([record(batch[0])])
    # Room for 8 - 3 - 2 = 3 more; the next round holds what runs and what waits.
    request = scheduler.next_round(1.0, stopping=False)
    assert request is not None
    assert request.records == [record(batch[0])]
    assert request.limit == 3
    assert request.held == set(ids(batch[1:]))
    assert request.startable == 0  # the two waiting take the free slot and more
    assert ids(scheduler.start(stopping=False)) == ids(batch[4:5])
    assert scheduler.attempts == 1


def test_a_refill_waits_for_a_quarter_of_the_slots() -> None:
    scheduler = Scheduler(concurrency=8, lease=60.0, until_idle=True)
    assert scheduler.refill_at == 2 and scheduler.capacity == 16
    scheduler.next_round(0.0, stopping=False)
    batch = claims(16)
    assert len(deliver(scheduler, batch, full=True)) == 8
    # A full batch wants more, but there is no room: the finished record goes alone.
    assert scheduler.want_claim is True
    scheduler.want_claim = False
    scheduler.attempts_finished([record(batch[0])])
    request = scheduler.next_round(1.0, stopping=False)
    assert request is not None and request.limit == 0  # one free: below the threshold
    scheduler.round_finished([], None, woken=False)  # a records-only round keeps the wish
    assert scheduler.want_claim is False
    assert ids(scheduler.start(stopping=False)) == ids(batch[8:9])

    scheduler.attempts_finished([record(batch[1]), record(batch[2])])
    request = scheduler.next_round(2.0, stopping=False)
    assert request is not None and request.limit == 3  # a quarter free: refill
    assert scheduler.want_claim is True


def test_a_claim_waiting_past_its_start_by_time_goes_back_and_is_claimed_again() -> None:
    lease = 30.0
    scheduler = Scheduler(concurrency=1, lease=lease, until_idle=True)
    scheduler.next_round(100.0, stopping=False)
    batch = claims(3, timeout=10.0)
    assert ids(deliver(scheduler, batch, now=100.0)) == ids(batch[:1])
    start_by = 100.0 + lease - 10.0 - LEASE_MARGIN
    assert [deadline for _, deadline in scheduler.ready] == [start_by, start_by]
    scheduler.want_claim = False

    assert scheduler.give_back(start_by, stopping=False) is None  # just in time
    back = scheduler.give_back(start_by + 0.01, stopping=False)
    assert back is not None
    assert ids(back.claims) == ids(batch[1:]) and back.refunds == []
    assert not scheduler.ready
    assert scheduler.want_claim is True  # they are due again


def test_a_timeout_longer_than_the_lease_must_start_at_once() -> None:
    scheduler = Scheduler(concurrency=1, lease=10.0, until_idle=True)
    scheduler.next_round(5.0, stopping=False)
    batch = claims(2, timeout=30.0)
    deliver(scheduler, batch, now=5.0)
    assert [deadline for _, deadline in scheduler.ready] == [5.0]


def test_rate_limited_claims_that_cannot_start_at_once_go_back_with_a_refund() -> None:
    scheduler = Scheduler(concurrency=2, lease=60.0, until_idle=True)
    scheduler.next_round(0.0, stopping=False)
    limited = claims(3, rate_limit=5.0)
    plain = claims(2)
    scheduler.want_claim = False
    scheduler.round_finished(limited + plain, False, woken=False)
    back = scheduler.give_back(0.0, stopping=False)
    assert back is not None
    assert ids(back.claims) == ids(back.refunds) == ids(limited[2:])
    # Unlimited claims wait for a slot; only rate-limited ones may not.
    assert ids([claim for claim, _ in scheduler.ready]) == ids(limited[:2] + plain)
    assert scheduler.want_claim is False  # claimed again only with a slot free
    assert ids(scheduler.start(stopping=False)) == ids(limited[:2])


def test_until_idle_ends_once_a_round_finds_less_than_it_asked() -> None:
    scheduler = Scheduler(concurrency=2, lease=60.0, until_idle=True)
    scheduler.next_round(0.0, stopping=False)
    batch = claims(2)
    assert len(deliver(scheduler, batch, full=False)) == 2
    assert scheduler.want_claim is False
    scheduler.attempts_finished([record(claim) for claim in batch])
    request = scheduler.next_round(1.0, stopping=False)
    assert request is not None and request.limit == 4  # freed a quarter: look again
    assert request.records == [record(claim) for claim in batch]
    scheduler.round_finished([], False, woken=False)
    assert scheduler.give_back(1.0, stopping=False) is None
    assert scheduler.next_round(1.0, stopping=False) is None
    assert scheduler.next_move(stopping=False) is Move.DONE
    assert scheduler.attempts == 2


def test_a_wake_up_or_a_slot_freed_during_a_round_claims_again() -> None:
    scheduler = Scheduler(concurrency=2, lease=60.0, until_idle=True)
    scheduler.next_round(0.0, stopping=False)
    scheduler.round_finished([], False, woken=True)
    assert scheduler.want_claim is True

    scheduler = Scheduler(concurrency=2, lease=60.0, until_idle=True)
    scheduler.next_round(0.0, stopping=False)
    batch = claims(1)
    deliver(scheduler, batch)
    scheduler.woken()
    assert scheduler.next_round(1.0, stopping=False) is not None
    scheduler.attempts_finished([record(batch[0])])  # while that round runs
    scheduler.round_finished([], False, woken=False)
    assert scheduler.want_claim is True


def test_a_worker_run_idles_when_nothing_is_due() -> None:
    scheduler = Scheduler(concurrency=2, lease=60.0, until_idle=False)
    scheduler.next_round(0.0, stopping=False)
    scheduler.round_finished([], False, woken=False)
    assert scheduler.next_move(stopping=False) is Move.IDLE
    scheduler.woken()
    request = scheduler.next_round(1.0, stopping=False)
    assert request is not None and request.limit == 4


def test_stop_gives_back_every_unstarted_claim_and_starts_nothing() -> None:
    scheduler = Scheduler(concurrency=1, lease=60.0, until_idle=False)
    scheduler.next_round(0.0, stopping=False)
    first = claims(2)
    deliver(scheduler, first)
    scheduler.next_round(1.0, stopping=False)
    scheduler.attempts_finished([record(first[0])])
    later = claims(2)
    scheduler.round_finished(later, True, woken=False)
    back = scheduler.give_back(2.0, stopping=True)
    assert back is not None
    assert ids(back.claims) == ids(first[1:] + later)
    assert back.refunds == []
    assert scheduler.start(stopping=True) == []
    request = scheduler.next_round(2.0, stopping=True)
    assert request is not None and request.limit == 0  # record what finished, claim none
    assert request.records == [record(first[0])]
    assert scheduler.next_move(stopping=True) is Move.WAIT
    scheduler.round_finished([], None, woken=False)
    assert scheduler.next_move(stopping=True) is Move.DONE


def test_the_end_of_a_run_takes_what_waited_and_what_finished() -> None:
    scheduler = Scheduler(concurrency=1, lease=60.0, until_idle=True)
    scheduler.next_round(0.0, stopping=False)
    batch = claims(3)
    deliver(scheduler, batch)
    scheduler.attempts_finished([record(batch[0])])
    assert ids(scheduler.unrun()) == ids(batch[1:])
    assert scheduler.take_finished() == [record(batch[0])]
    assert not scheduler.ready and not scheduler.finished


def test_waiting_claims_take_turns_between_tenants() -> None:
    """A tenant whose claim arrives behind a busy tenant's full batch starts next, not
    after the batch; each tenant's own claims keep their order."""
    scheduler = Scheduler(concurrency=2, lease=60.0, until_idle=True)
    scheduler.next_round(0.0, stopping=False)
    busy = claims(4, tenant="busy")
    assert ids(deliver(scheduler, busy)) == ids(busy[:2])
    scheduler.next_round(1.0, stopping=False)
    quiet = claims(1, tenant="quiet")
    other = claims(2)  # untenanted: one more turn-taker
    assert deliver(scheduler, quiet + other, now=1.0) == []  # both slots busy
    waiting = ids([claim for claim, _ in scheduler.ready])
    assert waiting == ids([busy[2], quiet[0], other[0], busy[3], other[1]])

    scheduler.attempts_finished([record(busy[0])])
    assert ids(scheduler.start(stopping=False)) == ids(busy[2:3])
    scheduler.attempts_finished([record(busy[1])])
    assert ids(scheduler.start(stopping=False)) == ids(quiet)


def test_one_tenant_keeps_its_order() -> None:
    scheduler = Scheduler(concurrency=1, lease=60.0, until_idle=True)
    scheduler.next_round(0.0, stopping=False)
    batch = claims(3, tenant="acme")
    assert ids(deliver(scheduler, batch)) == ids(batch[:1])
    assert ids([claim for claim, _ in scheduler.ready]) == ids(batch[1:])
