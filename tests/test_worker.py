"""The worker loop: an unavailable store is waited out with backoff, any other store
error stops it; batches and concurrency are bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import webhook_dispatch as wd
from webhook_dispatch.flow import TokenBucket
from webhook_dispatch.scheduler import Scheduler
from webhook_dispatch.stores import AttemptRecord, Claim, MemoryStore
from webhook_dispatch.stores.sqlite import SQLiteStore
from webhook_dispatch.testing import FakeClock, MockReceiver


class FlakyStore(MemoryStore):
    """A memory store whose claim and record calls fail a few times first."""

    def __init__(self, claim_failures: int, record_failures: int) -> None:
        super().__init__()
        self.claim_failures = claim_failures
        self.record_failures = record_failures
        self.claim_sizes: list[int] = []

    def claim_due(self, now: datetime, **kwargs: Any) -> list[Claim]:
        if self.claim_failures:
            self.claim_failures -= 1
            raise wd.StoreUnavailable("database is locked")
        claims = super().claim_due(now, **kwargs)
        self.claim_sizes.append(len(claims))
        return claims

    def record(self, records: Sequence[AttemptRecord], worker_id: str, **kwargs: Any) -> Any:
        if self.record_failures:
            self.record_failures -= 1
            raise wd.StoreUnavailable("disk I/O error")
        return super().record(records, worker_id, **kwargs)


def test_store_errors_are_retried_not_fatal() -> None:
    store = FlakyStore(claim_failures=2, record_failures=2)
    clock = FakeClock()
    receiver = MockReceiver(clock=clock)
    with wd.Dispatcher(store, clock=clock, transport=receiver) as dispatcher:
        dispatcher.subscribe("https://example.com/h")
        message = dispatcher.publish("order.created", {})
        dispatcher.run_until_idle()
        assert dispatcher.deliveries()[0].status is wd.DeliveryStatus.SUCCEEDED
        assert len(dispatcher.attempts(message.id)) == 1
    assert len(receiver.requests) == 1  # the record retry did not resend
    assert store.claim_failures == 0 and store.record_failures == 0


class FlakySQLiteStore(SQLiteStore):
    """A SQLite store whose combined record-and-claim fails a few times first."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures
        self.combined = 0

    def record_and_claim(self, *args: Any, **kwargs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise wd.StoreUnavailable("database is locked")
        self.combined += 1
        return super().record_and_claim(*args, **kwargs)


@pytest.mark.parametrize("failures", [0, 3])
def test_records_and_claims_in_one_store_call(tmp_path: Path, failures: int) -> None:
    store = FlakySQLiteStore(tmp_path / "w.db", failures)
    clock = FakeClock()
    receiver = MockReceiver(default=503, clock=clock)
    retry = wd.RetryPolicy.fixed([0, 0, 0])
    with wd.Dispatcher(store, clock=clock, transport=receiver, retry=retry) as dispatcher:
        dispatcher.subscribe("https://example.com/h")
        dispatcher.publish_many(("order.created", {"n": n}) for n in range(10))
        # Each retry is due at once: the round that records it claims it again.
        assert dispatcher.run_until_idle() == 30
        statuses = {d.status for d in dispatcher.deliveries()}
    assert statuses == {wd.DeliveryStatus.EXHAUSTED}
    assert len(receiver.requests) == 30  # failed combined calls sent nothing twice
    assert store.failures == 0 and store.combined >= 2


def test_attempts_run_while_the_store_records() -> None:
    """A slow store call does not stop attempts already claimed from finishing, and a
    delivery is never claimed again before its attempt is recorded."""

    class SlowRecords(MemoryStore):
        blocking = True  # called on the store thread

        def record(self, records: Sequence[AttemptRecord], worker_id: str, **kw: Any) -> Any:
            time.sleep(0.02)
            return super().record(records, worker_id, **kw)

    class Quick(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            await asyncio.sleep(0.001 * (hash(request.url.path) % 5))
            return httpx.Response(200)

    with wd.Dispatcher(SlowRecords(), transport=Quick(), concurrency=8) as dispatcher:
        for n in range(5):
            dispatcher.subscribe(f"https://example.com/{n}")
        dispatcher.publish_many(("order.created", {"n": n}) for n in range(40))
        assert dispatcher.run_until_idle() == 200
        deliveries = dispatcher.deliveries()
        assert {d.status for d in deliveries} == {wd.DeliveryStatus.SUCCEEDED}
        assert {d.attempt_count for d in deliveries} == {1}


def test_concurrency_bounds_attempts_in_flight() -> None:
    in_flight = 0
    peak = 0

    class Counting(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.01)
            in_flight -= 1
            return httpx.Response(200)

    store = FlakyStore(0, 0)
    # No per-subscription cap: the worker's concurrency is the only bound here.
    with wd.Dispatcher(
        store, transport=Counting(), concurrency=8, default_max_in_flight=None
    ) as dispatcher:
        dispatcher.subscribe("https://example.com/h")
        dispatcher.publish_many(("order.created", {"n": n}) for n in range(100))
        assert dispatcher.run_until_idle() == 100
    assert peak == 8
    # A claim leases at most the concurrency again ahead of the free slots (they wait to
    # start, so the loop has work while the next store round runs).
    assert max(store.claim_sizes) <= 2 * 8


def test_a_transport_bug_becomes_a_retryable_attempt() -> None:
    class Broken(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> Any:
            raise RuntimeError("bug in a custom transport")

    with wd.Dispatcher(transport=Broken(), retry=wd.RetryPolicy.fixed([0, 0])) as dispatcher:
        dispatcher.subscribe("https://example.com/h")
        message = dispatcher.publish("order.created", {})
        dispatcher.run_until_idle()
        attempts = dispatcher.attempts(message.id)
    assert [a.error_kind for a in attempts] == [wd.ErrorKind.OTHER, wd.ErrorKind.OTHER]
    assert attempts[0].error is not None and "bug in a custom transport" in attempts[0].error
    assert dispatcher.deliveries()[0].status is wd.DeliveryStatus.EXHAUSTED


def test_idle_worker_applies_the_retention() -> None:
    clock = FakeClock()
    receiver = MockReceiver(clock=clock)
    with wd.Dispatcher(
        clock=clock, transport=receiver, retention=timedelta(days=1), poll_interval=0.05
    ) as dispatcher:
        dispatcher.subscribe("https://example.com/h")
        old = dispatcher.publish("order.created", {})
        dispatcher.run_until_idle()
        clock.advance(timedelta(days=2))
        fresh = dispatcher.publish("order.created", {})
        dispatcher.run_until_idle()
        dispatcher.start()
        for _ in range(200):
            if not dispatcher.messages(limit=10)[1:]:
                break
            time.sleep(0.01)
        dispatcher.stop()
        assert [m.id for m in dispatcher.messages()] == [fresh.id]
        assert dispatcher.attempts(old.id) == []


def test_a_failing_attempt_observer_does_not_lose_the_attempt_record() -> None:
    from webhook_dispatch.engine import Engine
    from webhook_dispatch.retry import RetryPolicy
    from webhook_dispatch.worker import Worker

    class BrokenMetrics:
        def observe_attempt(self, attempt: wd.Attempt, status: wd.DeliveryStatus) -> None:
            raise RuntimeError("metrics backend down")

    clock = FakeClock()
    receiver = MockReceiver(clock=clock)
    with wd.Dispatcher(clock=clock, transport=receiver) as dispatcher:
        dispatcher.subscribe("https://example.com/h")
        message = dispatcher.publish("order.created", {})
        store = dispatcher.store
        worker = Worker(
            store,
            Engine(receiver, clock),
            clock,
            retry=RetryPolicy(),
            observer=BrokenMetrics(),
        )
        assert asyncio.run(worker.run_until_idle()) == 1
        worker.close()
        assert [a.status_code for a in dispatcher.attempts(message.id)] == [200]
        assert dispatcher.deliveries()[0].status is wd.DeliveryStatus.SUCCEEDED


def test_a_store_error_putting_back_rate_limited_claims_still_runs_the_kept_ones() -> None:
    class NoRelease(MemoryStore):
        def release(self, delivery_ids: Sequence[str], worker_id: str, **kwargs: Any) -> None:
            raise wd.StoreUnavailable("database is locked")

    clock = FakeClock()
    receiver = MockReceiver(clock=clock)
    with wd.Dispatcher(NoRelease(), clock=clock, transport=receiver) as dispatcher:
        dispatcher.subscribe("https://example.com/h", rate_limit=1, max_in_flight=5)
        dispatcher.publish_many(("order.created", {"n": n}) for n in range(3))
        assert dispatcher.run_until_idle() == 1  # the one within the limit was sent
        # The two over the limit could not be put back: still leased, not lost.
        assert len(dispatcher.deliveries(status="delivering")) == 2
    assert len(receiver.requests) == 1


def test_claims_waiting_for_a_slot_past_their_lease_go_back_and_are_sent_once(
    tmp_path: Path,
) -> None:
    """With a lease too short to cover an attempt that has to wait for a slot, the
    claims waiting in line are given back (and claimed afresh), never kept leased and
    unsent: every delivery is attempted exactly once and the run ends with none left."""
    sent: list[str] = []

    class Slow(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            sent.append(request.headers["webhook-id"])
            await asyncio.sleep(0.1)
            return httpx.Response(200)

    store = SQLiteStore(tmp_path / "w.db")
    with wd.Dispatcher(
        store, transport=Slow(), concurrency=1, lease=timedelta(seconds=0.3)
    ) as dispatcher:
        dispatcher.subscribe("https://example.com/h", max_in_flight=4)
        dispatcher.publish_many(("order.created", {"n": n}) for n in range(5))
        assert dispatcher.run_until_idle() == 5
        deliveries = dispatcher.deliveries()
    store.close()
    assert sorted(d.status.value for d in deliveries) == ["succeeded"] * 5
    assert sorted(d.attempt_count for d in deliveries) == [1] * 5
    assert len(sent) == len(set(sent)) == 5


def test_a_rate_limited_claim_never_waits_for_a_slot_holding_its_token() -> None:
    """A token is spent when a delivery is claimed, for that moment: a rate-limited
    claim that cannot start at once goes back (its token refunded) instead of waiting
    in line to start later beside claims that took tokens after it."""
    clock = FakeClock()
    receiver = MockReceiver(clock=clock)
    with wd.Dispatcher(clock=clock, transport=receiver, concurrency=1) as dispatcher:
        subscription = dispatcher.subscribe("https://example.com/h", rate_limit=5)
        messages = [dispatcher.publish("order.created", {"n": n}) for n in range(3)]
        worker = dispatcher._core.worker
        claims = dispatcher.store.claim_due(
            clock.now(),
            limit=3,
            lease_until=clock.now() + timedelta(minutes=1),
            worker_id=worker.worker_id,
        )
        assert len(claims) == 3
        spent = TokenBucket(5, clock.now())
        for _ in claims:
            assert spent.take(clock.now())
        worker._buckets[subscription.id] = spent
        scheduler = Scheduler(concurrency=1, lease=60.0, until_idle=True)
        scheduler.want_claim = False
        scheduler.next_round(0.0, stopping=False)  # the round these claims came from
        scheduler.round_finished(claims, False, woken=False)
        back = scheduler.give_back(0.0, stopping=False)
        assert back is not None
        asyncio.run(worker._give_back(back))
        # Nothing stale went back, so no claim is asked for at once: a rate-limited
        # delivery is claimed again only with a slot free to start it.
        assert scheduler.want_claim is False
        assert [claim.delivery.id for claim, _ in scheduler.ready] == [claims[0].delivery.id]
        assert spent.available(clock.now()) == 4  # the two given back were refunded
        statuses = {d.message_id: d.status for d in dispatcher.deliveries()}
    assert statuses[messages[0].id] is wd.DeliveryStatus.DELIVERING
    assert statuses[messages[1].id] is statuses[messages[2].id] is wd.DeliveryStatus.PENDING


def test_rate_limited_work_waiting_for_slots_is_not_claimed_over_and_over() -> None:
    """With every slot busy, a rate-limited delivery is left in the store (not claimed,
    put back and claimed again in a hot loop) until a slot is free to start it."""
    calls: dict[str, int] = {"claim": 0, "release": 0}

    class Counting(MemoryStore):
        def claim_due(self, *args: Any, **kwargs: Any) -> list[Claim]:
            calls["claim"] += 1
            return super().claim_due(*args, **kwargs)

        def release(self, *args: Any, **kwargs: Any) -> None:
            calls["release"] += 1
            super().release(*args, **kwargs)

    sent: list[tuple[str, str]] = []

    class Slow(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            sent.append((str(request.url), request.headers["webhook-id"]))
            await asyncio.sleep(0.2)
            return httpx.Response(200)

    with wd.Dispatcher(Counting(), transport=Slow(), concurrency=2) as dispatcher:
        for n in range(3):
            dispatcher.subscribe(f"https://example.com/{n}", rate_limit=50)
        dispatcher.publish_many(("order.created", {"n": n}) for n in range(4))
        assert dispatcher.run_until_idle() == 12
    assert len(sent) == len(set(sent)) == 12
    assert calls["claim"] < 40, calls  # a hot loop made thousands in the same time


class BrokenStore(MemoryStore):
    """A memory store whose ``broken`` method raises a permanent `SchemaError` after
    ``works`` calls, and fails the test if it is called again after that."""

    def __init__(self, broken: str, works: int = 0) -> None:
        super().__init__()
        self.broken = broken
        self.works = works
        self.raised = 0

    def _check(self, method: str) -> None:
        if method != self.broken:
            return
        if self.works:
            self.works -= 1
            return
        assert not self.raised, f"{method}() was retried after a permanent error"
        self.raised += 1
        raise wd.SchemaError("no such column: deliveries.next_trigger")

    def record(self, records: Sequence[AttemptRecord], worker_id: str, **kwargs: Any) -> Any:
        self._check("record")
        return super().record(records, worker_id, **kwargs)

    def claim_due(self, now: datetime, **kwargs: Any) -> list[Claim]:
        self._check("claim_due")
        return super().claim_due(now, **kwargs)


def test_a_permanent_record_error_stops_the_worker_with_it() -> None:
    store = BrokenStore("record")
    clock = FakeClock()
    receiver = MockReceiver(clock=clock)
    with wd.Dispatcher(store, clock=clock, transport=receiver) as dispatcher:
        dispatcher.subscribe("https://example.com/h")
        dispatcher.publish("order.created", {})
        with pytest.raises(wd.SchemaError, match="no such column"):
            dispatcher.run_until_idle()
    assert store.raised == 1
    assert len(receiver.requests) == 1


def test_a_permanent_claim_error_stops_the_worker_after_recording_what_ran() -> None:
    store = BrokenStore("claim_due", works=1)
    clock = FakeClock()
    receiver = MockReceiver(clock=clock)
    with wd.Dispatcher(
        store, clock=clock, transport=receiver, concurrency=2, default_max_in_flight=None
    ) as dispatcher:
        dispatcher.subscribe("https://example.com/h")
        dispatcher.publish_many(("order.created", {"n": n}) for n in range(4))
        with pytest.raises(wd.SchemaError):
            dispatcher.run_until_idle()
        sent = len(receiver.requests)
        deliveries = dispatcher.deliveries()
        recorded = sum(len(dispatcher.attempts(d.message_id)) for d in deliveries)
    assert store.raised == 1
    assert sent >= 1 and recorded == sent  # every attempt in flight was awaited and recorded
    statuses = sorted(d.status.value for d in deliveries)
    assert statuses == sorted(["succeeded"] * sent + ["pending"] * (4 - sent))  # none held


def test_a_permanent_error_of_the_combined_round_records_what_the_store_takes(
    tmp_path: Path,
) -> None:
    class NoCombined(SQLiteStore):
        def record_and_claim(self, *args: Any, **kwargs: Any) -> Any:
            self.calls = getattr(self, "calls", 0) + 1
            assert self.calls == 1, "a permanent error was retried"
            raise wd.SchemaError("permission denied for table deliveries")

    store = NoCombined(tmp_path / "w.db")
    clock = FakeClock()
    receiver = MockReceiver(default=503, clock=clock)
    retry = wd.RetryPolicy.fixed([0, 0, 0])
    with wd.Dispatcher(store, clock=clock, transport=receiver, retry=retry) as dispatcher:
        dispatcher.subscribe("https://example.com/h")
        message = dispatcher.publish("order.created", {})
        with pytest.raises(wd.SchemaError, match="permission denied"):
            dispatcher.run_until_idle()
        # The first attempt's record went alone (the store takes records); nothing more ran.
        assert [a.status_code for a in dispatcher.attempts(message.id)] == [503]
        (delivery,) = dispatcher.deliveries()
    assert delivery.status is wd.DeliveryStatus.PENDING and delivery.attempt_count == 1
    assert len(receiver.requests) == 1


def test_an_unavailable_store_is_waited_out_and_everything_is_recorded() -> None:
    store = FlakyStore(claim_failures=0, record_failures=2)
    clock = FakeClock()
    receiver = MockReceiver(clock=clock)
    with wd.Dispatcher(store, clock=clock, transport=receiver) as dispatcher:
        dispatcher.subscribe("https://example.com/h")
        dispatcher.publish_many(("order.created", {"n": n}) for n in range(20))
        assert dispatcher.run_until_idle() == 20
        deliveries = dispatcher.deliveries()
        assert all(len(dispatcher.attempts(d.message_id)) == 1 for d in deliveries)
    assert {d.status for d in deliveries} == {wd.DeliveryStatus.SUCCEEDED}
    assert len(receiver.requests) == 20 and store.record_failures == 0
