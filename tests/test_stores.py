"""One behaviour suite for every store: memory, SQLite and PostgreSQL must be
indistinguishable.

To cover another store, add its name to ``STORES`` and a URL to ``_url``. The PostgreSQL
runs need ``WEBHOOK_DISPATCH_TEST_POSTGRES`` (they skip without it); each test gets its
own schema, dropped afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import attrs
import pytest

from webhook_dispatch.errors import ConfigurationError, NotFound
from webhook_dispatch.models import (
    Attempt,
    AttemptTrigger,
    DeliveryStatus,
    ErrorKind,
    Message,
    RetiredSecret,
    Subscription,
    new_id,
)
from webhook_dispatch.stores import AttemptRecord, Claim, RecordResult, Store, open_store
from webhook_dispatch.stores.base import FAILING_MAX_IN_FLIGHT

STORES = ["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
LEASE = timedelta(seconds=30)


def _url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/w.db"
    if kind == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        return url
    raise AssertionError(f"no URL for store {kind!r}")


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    opened = open_store(_url(request.param, request, tmp_path))
    yield opened
    opened.close()


# -- builders ------------------------------------------------------------------------
def make_subscription(**changes: object) -> Subscription:
    fields: dict[str, object] = {
        "id": new_id("sub"),
        "url": "https://example.com/hooks",
        "secret": "whsec_" + "A" * 32,
        "created_at": T0,
        "updated_at": T0,
    }
    fields.update(changes)
    return Subscription(**fields)  # type: ignore[arg-type]


def make_message(
    key: str | None = None, *, at: datetime = T0, event: str = "order.created"
) -> Message:
    return Message(
        id=new_id("msg"),
        event_type=event,
        payload=b'{"type":"order.created","data":{"id":1}}',
        created_at=at,
        idempotency_key=key,
    )


def make_attempt(claim: Claim, *, started: datetime, status_code: int | None = 503) -> Attempt:
    delivery = claim.delivery
    return Attempt(
        id=new_id("att"),
        delivery_id=delivery.id,
        message_id=delivery.message_id,
        subscription_id=delivery.subscription_id,
        number=delivery.attempt_count + 1,
        trigger=delivery.next_trigger,
        started_at=started,
        duration=0.25,
        url=claim.subscription.url,
        status_code=status_code,
        response_body=b"busy",
        response_headers={"retry-after": "5"},
        webhook_timestamp=int(started.timestamp()),
    )


def retry_record(claim: Claim, *, started: datetime, retry_at: datetime) -> AttemptRecord:
    attempt = make_attempt(claim, started=started)
    delivery = attrs.evolve(
        claim.delivery,
        status=DeliveryStatus.PENDING,
        attempt_count=attempt.number,
        next_attempt_at=retry_at,
        next_trigger=AttemptTrigger.SCHEDULED,
        last_status_code=503,
        last_error="503 Service Unavailable",
        updated_at=started,
    )
    return AttemptRecord(attempt, delivery)


def final_record(
    claim: Claim, *, started: datetime, status: DeliveryStatus, disable: str | None = None
) -> AttemptRecord:
    code = 200 if status is DeliveryStatus.SUCCEEDED else 410
    attempt = make_attempt(claim, started=started, status_code=code)
    delivery = attrs.evolve(
        claim.delivery,
        status=status,
        attempt_count=attempt.number,
        next_attempt_at=None,
        last_status_code=code,
        updated_at=started,
    )
    return AttemptRecord(attempt, delivery, disable)


def claim(store: Store, now: datetime = T0, *, limit: int = 10, worker: str = "w1") -> list[Claim]:
    return store.claim_due(now, limit=limit, lease_until=now + LEASE, worker_id=worker)


def published(store: Store, *subscriptions: Subscription, key: str | None = None) -> Message:
    message = make_message(key)
    store.publish(message, [s.id for s in subscriptions], T0)
    return message


# -- subscriptions ---------------------------------------------------------------------
def test_add_get_and_list_subscriptions(store: Store) -> None:
    rich = make_subscription(
        event_types=("order.*", "invoice.paid"),
        previous_secrets=(RetiredSecret("whsec_" + "B" * 32, T0 + timedelta(hours=1)),),
        headers={"X-Tenant": "42"},
        metadata={"team": "billing"},
        timeout=2.5,
    )
    plain = make_subscription()
    store.add_subscription(rich)
    store.add_subscription(plain)
    assert store.get_subscription(rich.id) == rich
    assert store.get_subscription(rich.id).secret == rich.secret
    assert store.get_subscription(rich.id).previous_secrets == rich.previous_secrets
    assert store.list_subscriptions() == [rich, plain]


def test_save_subscription_replaces_and_keeps_order(store: Store) -> None:
    first, second = make_subscription(), make_subscription()
    store.add_subscription(first)
    store.add_subscription(second)
    changed = attrs.evolve(first, url="https://example.org/new", enabled=False, disabled_reason="x")
    store.save_subscription(changed)
    assert store.get_subscription(first.id) == changed
    assert [s.id for s in store.list_subscriptions()] == [first.id, second.id]


def test_subscriptions_version_changes_on_every_change(store: Store) -> None:
    seen = [store.subscriptions_version()]
    subscription = make_subscription()
    store.add_subscription(subscription)
    seen.append(store.subscriptions_version())
    store.save_subscription(attrs.evolve(subscription, url="https://example.org/"))
    seen.append(store.subscriptions_version())
    store.remove_subscription(subscription.id, T0)
    seen.append(store.subscriptions_version())
    assert len(set(seen)) == 4
    published_only = store.subscriptions_version()
    store.publish(make_message(), [], T0)
    assert store.subscriptions_version() == published_only


def test_remove_subscription_cancels_unfinished_deliveries(store: Store) -> None:
    subscription, other = make_subscription(), make_subscription()
    store.add_subscription(subscription)
    store.add_subscription(other)
    done, leased, waiting = (published(store, subscription) for _ in range(3))
    mine = {c.delivery.message_id: c for c in claim(store, limit=2)}
    store.record([final_record(mine[done.id], started=T0, status=DeliveryStatus.SUCCEEDED)], "w1")
    kept = published(store, other)
    later = T0 + timedelta(minutes=1)
    store.remove_subscription(subscription.id, later)

    with pytest.raises(NotFound):
        store.get_subscription(subscription.id)
    statuses = {d.message_id: d for d in store.list_deliveries(subscription_id=subscription.id)}
    assert statuses[done.id].status is DeliveryStatus.SUCCEEDED
    for message in (leased, waiting):
        assert statuses[message.id].status is DeliveryStatus.CANCELLED
        assert statuses[message.id].next_attempt_at is None
        assert statuses[message.id].updated_at == later
    assert [c.delivery.message_id for c in claim(store, later + LEASE * 2)] == [kept.id]
    assert store.list_subscriptions() == [other]


def test_subscription_not_found_errors(store: Store) -> None:
    with pytest.raises(NotFound):
        store.get_subscription("sub_missing")
    with pytest.raises(NotFound):
        store.save_subscription(make_subscription())
    with pytest.raises(NotFound):
        store.remove_subscription("sub_missing", T0)
    with pytest.raises(NotFound):
        store.recover("sub_missing", since=T0, until=T0, now=T0)
    assert store.list_subscriptions() == []


# -- publishing ------------------------------------------------------------------------
def test_publish_creates_one_due_delivery_per_subscription(store: Store) -> None:
    subscriptions = [make_subscription() for _ in range(3)]
    for subscription in subscriptions:
        store.add_subscription(subscription)
    message = make_message()
    result = store.publish(message, [s.id for s in subscriptions], T0)
    assert result.created
    assert result.deliveries == 3
    assert result.message == message
    assert store.get_message(message.id) == message
    deliveries = store.list_deliveries(message_id=message.id)
    assert sorted(d.subscription_id for d in deliveries) == sorted(s.id for s in subscriptions)
    for delivery in deliveries:
        assert delivery.status is DeliveryStatus.PENDING
        assert delivery.attempt_count == 0
        assert delivery.next_attempt_at == T0
        assert delivery.next_trigger is AttemptTrigger.SCHEDULED
        assert delivery.created_at == delivery.updated_at == T0
        assert store.get_delivery(delivery.id) == delivery


def test_publish_to_unknown_subscription_stores_nothing(store: Store) -> None:
    message = make_message()
    with pytest.raises(NotFound):
        store.publish(message, ["sub_missing"], T0)
    with pytest.raises(NotFound):
        store.get_message(message.id)
    assert store.list_deliveries() == []


def test_idempotency_key_returns_earlier_message(store: Store) -> None:
    subscription = make_subscription()
    store.add_subscription(subscription)
    first = make_message("order-1:created")
    assert store.publish(first, [subscription.id], T0).created
    again = store.publish(make_message("order-1:created"), [subscription.id], T0)
    assert not again.created
    assert again.deliveries == 0
    assert again.message == first
    assert len(store.list_deliveries()) == 1
    assert store.list_messages() == [first]


def test_publish_many_in_order_with_idempotency(store: Store) -> None:
    a, b = make_subscription(), make_subscription()
    store.add_subscription(a)
    store.add_subscription(b)
    earlier = make_message("k-earlier")
    store.publish(earlier, [a.id], T0)
    batch = [
        (make_message(), [a.id, b.id]),
        (make_message("k-earlier"), [a.id]),
        (make_message("k-new"), [b.id]),
        (make_message("k-new"), [a.id, b.id]),
    ]
    results = store.publish_many(batch, T0)
    assert [r.created for r in results] == [True, False, True, False]
    assert [r.deliveries for r in results] == [2, 0, 1, 0]
    assert results[1].message == earlier
    assert results[3].message == batch[2][0]
    assert len(store.list_deliveries()) == 1 + 2 + 1
    assert store.publish_many([], T0) == []


def test_publish_many_is_all_or_nothing(store: Store) -> None:
    subscription = make_subscription()
    store.add_subscription(subscription)
    good, bad = make_message(), make_message()
    with pytest.raises(NotFound):
        store.publish_many([(good, [subscription.id]), (bad, ["sub_missing"])], T0)
    assert store.list_messages() == []
    assert store.list_deliveries() == []


def test_list_messages_newest_first_by_event_type(store: Store) -> None:
    created = make_message(event="order.created")
    paid = make_message(event="invoice.paid")
    shipped = make_message(event="order.created")
    store.publish_many([(created, []), (paid, []), (shipped, [])], T0)
    assert store.list_messages() == [shipped, paid, created]
    assert store.list_messages(event_type="order.created") == [shipped, created]
    assert store.list_messages(limit=1) == [shipped]
    with pytest.raises(NotFound):
        store.get_message("msg_missing")


# -- claiming --------------------------------------------------------------------------
def test_claim_due_respects_limit_due_time_and_order(store: Store) -> None:
    subscription = make_subscription()
    store.add_subscription(subscription)
    messages = [make_message() for _ in range(3)]
    for offset, message in enumerate(messages):
        store.publish(message, [subscription.id], T0 + timedelta(seconds=offset))
    assert claim(store, T0 - timedelta(seconds=1)) == []
    first = claim(store, T0 + timedelta(seconds=5), limit=2)
    assert [c.delivery.message_id for c in first] == [messages[0].id, messages[1].id]
    for c in first:
        assert c.delivery.status is DeliveryStatus.DELIVERING
        assert c.subscription == subscription
        assert c.message in messages
        assert store.get_delivery(c.delivery.id).status is DeliveryStatus.DELIVERING
    rest = claim(store, T0 + timedelta(seconds=5))
    assert [c.delivery.message_id for c in rest] == [messages[2].id]
    assert claim(store, T0 + timedelta(seconds=5)) == []
    assert claim(store, T0, limit=0) == []


def test_claim_holds_disabled_subscription_until_enabled(store: Store) -> None:
    held, open_ = make_subscription(), make_subscription()
    store.add_subscription(held)
    store.add_subscription(open_)
    published(store, held)
    other = published(store, open_)
    disabled = attrs.evolve(held, enabled=False, disabled_reason="paused")
    store.save_subscription(disabled)
    assert [c.delivery.message_id for c in claim(store)] == [other.id]
    assert claim(store) == []
    assert store.list_deliveries(subscription_id=held.id)[0].status is DeliveryStatus.PENDING
    store.save_subscription(attrs.evolve(disabled, enabled=True, disabled_reason=None))
    again = claim(store)
    assert [c.delivery.subscription_id for c in again] == [held.id]
    assert again[0].subscription.enabled


def test_lease_excludes_other_workers_until_it_expires(store: Store) -> None:
    subscription = make_subscription()
    store.add_subscription(subscription)
    published(store, subscription)
    [held] = claim(store, worker="w1")
    assert claim(store, T0 + LEASE - timedelta(microseconds=1), worker="w2") == []
    [taken] = claim(store, T0 + LEASE, worker="w2")
    assert taken.delivery.id == held.delivery.id
    assert taken.delivery.status is DeliveryStatus.DELIVERING


def test_record_applies_only_for_the_lease_holder(store: Store) -> None:
    subscription = make_subscription()
    store.add_subscription(subscription)
    message = published(store, subscription)
    [stale] = claim(store, worker="w1")
    later = T0 + LEASE
    [fresh] = claim(store, later, worker="w2")

    late = retry_record(stale, started=T0 + timedelta(seconds=1), retry_at=T0 + timedelta(hours=9))
    store.record([late], "w1")
    assert store.get_delivery(fresh.delivery.id).status is DeliveryStatus.DELIVERING
    assert store.list_attempts(message_id=message.id) == [late.attempt]

    retry_at = later + timedelta(seconds=5)
    ok = retry_record(fresh, started=later, retry_at=retry_at)
    store.record([ok], "w2")
    after = store.get_delivery(fresh.delivery.id)
    assert after == ok.delivery
    assert after.next_attempt_at == retry_at
    assert after.last_status_code == 503
    # the lease is gone: due again at retry_at, not before
    assert claim(store, retry_at - timedelta(microseconds=1), worker="w3") == []
    [third] = claim(store, retry_at, worker="w3")
    assert third.delivery.attempt_count == 1


def test_record_batch_and_disable_subscription(store: Store) -> None:
    gone, fine = make_subscription(), make_subscription()
    store.add_subscription(gone)
    store.add_subscription(fine)
    published(store, gone, fine)
    claims = {c.delivery.subscription_id: c for c in claim(store)}
    version = store.subscriptions_version()
    store.record(
        [
            final_record(claims[gone.id], started=T0, status=DeliveryStatus.FAILED, disable="410"),
            final_record(claims[fine.id], started=T0, status=DeliveryStatus.SUCCEEDED),
        ],
        "w1",
    )
    disabled = store.get_subscription(gone.id)
    assert not disabled.enabled
    assert disabled.disabled_reason == "410"
    assert store.subscriptions_version() != version
    assert store.get_subscription(fine.id).enabled
    assert store.get_delivery(claims[gone.id].delivery.id).status is DeliveryStatus.FAILED
    assert store.get_delivery(claims[fine.id].delivery.id).status is DeliveryStatus.SUCCEEDED
    store.record([], "w1")


def test_record_without_lease_does_not_disable(store: Store) -> None:
    subscription = make_subscription()
    store.add_subscription(subscription)
    published(store, subscription)
    [held] = claim(store, worker="w1")
    record = final_record(held, started=T0, status=DeliveryStatus.FAILED, disable="410")
    store.record([record], "intruder")
    assert store.get_subscription(subscription.id).enabled
    assert store.get_delivery(held.delivery.id).status is DeliveryStatus.DELIVERING


def test_release_returns_deliveries_to_pending(store: Store) -> None:
    subscription = make_subscription()
    store.add_subscription(subscription)
    published(store, subscription)
    [held] = claim(store, worker="w1")
    store.release([held.delivery.id], "someone-else")
    assert store.get_delivery(held.delivery.id).status is DeliveryStatus.DELIVERING
    store.release([held.delivery.id], "w1")
    released = store.get_delivery(held.delivery.id)
    assert released.status is DeliveryStatus.PENDING
    assert released.next_attempt_at == T0
    assert [c.delivery.id for c in claim(store, worker="w2")] == [held.delivery.id]
    store.release([], "w1")


def test_next_due_at(store: Store) -> None:
    assert store.next_due_at() is None
    held, open_ = make_subscription(), make_subscription()
    store.add_subscription(held)
    store.add_subscription(open_)
    store.publish(make_message(), [held.id], T0)
    store.publish(make_message(), [open_.id], T0 + timedelta(minutes=5))
    assert store.next_due_at() == T0
    store.save_subscription(attrs.evolve(held, enabled=False))
    assert store.next_due_at() == T0 + timedelta(minutes=5)
    [leased] = claim(store, T0 + timedelta(minutes=5))
    assert store.next_due_at() == T0 + timedelta(minutes=5) + LEASE
    store.record([final_record(leased, started=T0, status=DeliveryStatus.SUCCEEDED)], "w1")
    assert store.next_due_at() is None


# -- inspection ------------------------------------------------------------------------
def test_list_deliveries_filters(store: Store) -> None:
    a, b = make_subscription(), make_subscription()
    store.add_subscription(a)
    store.add_subscription(b)
    m1 = published(store, a, b)
    m2 = published(store, a)
    [first] = claim(store, limit=1)
    assert first.delivery.message_id == m1.id
    everything = store.list_deliveries()
    assert [d.message_id for d in everything] == [m1.id, m1.id, m2.id]
    assert {d.subscription_id for d in store.list_deliveries(message_id=m1.id)} == {a.id, b.id}
    assert [d.message_id for d in store.list_deliveries(subscription_id=a.id)] == [m1.id, m2.id]
    assert len(store.list_deliveries(message_id=m1.id, subscription_id=b.id)) == 1
    delivering = store.list_deliveries(status=DeliveryStatus.DELIVERING)
    assert [d.id for d in delivering] == [first.delivery.id]
    assert len(store.list_deliveries(status=DeliveryStatus.PENDING)) == 2
    assert store.list_deliveries(limit=2) == everything[:2]
    assert store.list_deliveries(message_id="msg_missing") == []
    with pytest.raises(NotFound):
        store.get_delivery("dlv_missing")


def test_list_attempts_oldest_first(store: Store) -> None:
    a, b = make_subscription(), make_subscription()
    store.add_subscription(a)
    store.add_subscription(b)
    message = published(store, a, b)
    claims = claim(store)
    later, earlier = claims
    records = [
        retry_record(later, started=T0 + timedelta(seconds=2), retry_at=T0 + timedelta(hours=1)),
        retry_record(earlier, started=T0 + timedelta(seconds=1), retry_at=T0 + timedelta(hours=1)),
    ]
    store.record(records, "w1")
    attempts = store.list_attempts(message_id=message.id)
    assert attempts == [records[1].attempt, records[0].attempt]
    assert attempts[0].response_body == b"busy"
    assert dict(attempts[0].response_headers) == {"retry-after": "5"}
    assert store.list_attempts(delivery_id=later.delivery.id) == [records[0].attempt]
    assert store.list_attempts(message_id="msg_missing") == []


def test_attempt_fields_round_trip(store: Store) -> None:
    subscription = make_subscription()
    store.add_subscription(subscription)
    message = published(store, subscription)
    [held] = claim(store)
    attempt = attrs.evolve(
        make_attempt(held, started=T0, status_code=None),
        error_kind=ErrorKind.TIMEOUT,
        error="timed out after 15 s",
        response_body=b"",
        response_headers={},
    )
    next_state = retry_record(held, started=T0, retry_at=T0 + timedelta(seconds=5)).delivery
    store.record([AttemptRecord(attempt, next_state)], "w1")
    assert store.list_attempts(message_id=message.id) == [attempt]


# -- manual attempts, recovery and purge -----------------------------------------------
def _finish(store: Store, status: DeliveryStatus, now: datetime = T0) -> None:
    for held in claim(store, now, limit=100):
        store.record([final_record(held, started=now, status=status)], "w1")


def test_schedule_manual(store: Store) -> None:
    subscription = make_subscription()
    store.add_subscription(subscription)
    published(store, subscription)
    _finish(store, DeliveryStatus.FAILED)
    busy_message = published(store, subscription)
    [busy] = claim(store)
    [failed] = store.list_deliveries(status=DeliveryStatus.FAILED)
    later = T0 + timedelta(hours=1)

    updated = store.schedule_manual([failed.id, busy.delivery.id], later)
    assert [d.id for d in updated] == [failed.id]
    assert updated[0].status is DeliveryStatus.PENDING
    assert updated[0].next_attempt_at == later
    assert updated[0].next_trigger is AttemptTrigger.MANUAL
    assert store.get_delivery(failed.id) == updated[0]
    assert store.get_delivery(busy.delivery.id).status is DeliveryStatus.DELIVERING
    # the busy delivery's lease has expired by now, so it comes back as well
    again = {c.delivery.id: c.delivery for c in claim(store, later)}
    assert set(again) == {failed.id, busy.delivery.id}
    assert again[failed.id].next_trigger is AttemptTrigger.MANUAL
    assert again[busy.delivery.id].message_id == busy_message.id
    with pytest.raises(NotFound):
        store.schedule_manual(["dlv_missing"], later)


def test_recover_window(store: Store) -> None:
    subscription, other = make_subscription(), make_subscription()
    store.add_subscription(subscription)
    store.add_subscription(other)
    times = [T0 - timedelta(hours=h) for h in (3, 2, 1)]
    messages = [make_message(at=at) for at in times]
    for message in messages:
        store.publish(message, [subscription.id, other.id], T0)
    _finish(store, DeliveryStatus.EXHAUSTED)
    now = T0 + timedelta(minutes=1)

    recovered = store.recover(subscription.id, since=times[1], until=T0, now=now)
    assert [d.message_id for d in recovered] == [messages[1].id, messages[2].id]
    assert all(d.subscription_id == subscription.id for d in recovered)
    assert all(d.next_trigger is AttemptTrigger.MANUAL for d in recovered)
    assert all(d.next_attempt_at == now for d in recovered)
    assert len(store.list_deliveries(status=DeliveryStatus.EXHAUSTED)) == 4
    # since is inclusive, until exclusive; pending deliveries are not recovered twice
    assert store.recover(subscription.id, since=times[0], until=times[1], now=now)[
        0
    ].message_id == (messages[0].id)
    assert store.recover(subscription.id, since=times[0], until=T0, now=now) == []


def test_purge_removes_only_old_finished_messages(store: Store) -> None:
    subscription = make_subscription()
    store.add_subscription(subscription)
    old_done = make_message(at=T0 - timedelta(days=40))
    old_busy = make_message(at=T0 - timedelta(days=40))
    new_done = make_message(at=T0)
    store.publish(old_done, [subscription.id], T0)
    store.publish(new_done, [subscription.id], T0)
    for held in claim(store):
        store.record([final_record(held, started=T0, status=DeliveryStatus.SUCCEEDED)], "w1")
    keyed = make_message("reusable", at=T0 - timedelta(days=40))
    store.publish(keyed, [], T0)
    store.publish(old_busy, [subscription.id], T0)

    assert store.purge(T0 - timedelta(days=30)) == 2
    with pytest.raises(NotFound):
        store.get_message(old_done.id)
    assert store.list_deliveries(message_id=old_done.id) == []
    assert store.list_attempts(message_id=old_done.id) == []
    assert {m.id for m in store.list_messages()} == {old_busy.id, new_done.id}
    assert len(store.list_attempts(message_id=new_done.id)) == 1
    # a purged idempotency key can be used again
    assert store.publish(make_message("reusable"), [], T0).created
    assert store.purge(T0 - timedelta(days=30)) == 0


def test_purge_in_batches_takes_the_oldest_first(store: Store) -> None:
    messages = [make_message(at=T0 - timedelta(days=40 - n)) for n in range(5)]
    for message in messages:
        store.publish(message, [], T0)
    assert store.purge(T0, limit=2) == 2
    assert {m.id for m in store.list_messages()} == {m.id for m in messages[2:]}
    assert store.purge(T0, limit=2) == 2
    assert store.purge(T0, limit=2) == 1
    assert store.purge(T0, limit=2) == 0


def test_close_is_idempotent(store: Store) -> None:
    store.close()
    store.close()


# -- flow control, ordering, health (issue 7) ------------------------------------------
def test_flow_control_settings_round_trip(store: Store) -> None:
    from webhook_dispatch.models import RetrySchedule

    subscription = make_subscription(
        rate_limit=2.5,
        max_in_flight=3,
        ordered=True,
        retry_schedule=RetrySchedule((0, 10, 60), 0.1),
    )
    store.add_subscription(subscription)
    assert store.get_subscription(subscription.id) == subscription
    [listed] = store.list_subscriptions()
    assert listed.retry_schedule == RetrySchedule((0.0, 10.0, 60.0), 0.1)


def test_claim_caps_attempts_in_flight_per_subscription(store: Store) -> None:
    capped, default, free = (
        make_subscription(max_in_flight=2),
        make_subscription(),
        make_subscription(max_in_flight=50),
    )
    for subscription in (capped, default, free):
        store.add_subscription(subscription)
    for _ in range(6):
        published(store, capped, default, free)

    def take(limit: int = 50) -> list[str]:
        claims = store.claim_due(
            T0,
            limit=limit,
            lease_until=T0 + LEASE,
            worker_id="w1",
            default_max_in_flight=3,
        )
        return [c.delivery.subscription_id for c in claims]

    first = take()
    assert first.count(capped.id) == 2
    assert first.count(default.id) == 3
    assert first.count(free.id) == 6
    assert take() == []  # every cap is reached: nothing more while those are in flight
    # A finished attempt frees one slot of its subscription.
    [held] = [
        c
        for c in store.list_deliveries(subscription_id=capped.id)
        if c.status.value == "delivering"
    ][:1]
    claim_of = Claim(held, store.get_message(held.message_id), capped)
    store.record([final_record(claim_of, started=T0, status=DeliveryStatus.SUCCEEDED)], "w1")
    assert take() == [capped.id]
    # An expired lease no longer counts as in flight.
    later = T0 + LEASE + timedelta(seconds=1)
    again = store.claim_due(later, limit=50, lease_until=later + LEASE, worker_id="w2")
    assert again  # the expired ones come back to the next worker


def test_claim_gives_a_failing_subscription_few_slots(store: Store) -> None:
    failing = make_subscription(failing_since=T0, consecutive_failures=3)
    healthy = make_subscription()
    chosen = make_subscription(failing_since=T0, consecutive_failures=3, max_in_flight=4)
    for subscription in (failing, healthy, chosen):
        store.add_subscription(subscription)
    for _ in range(6):
        published(store, failing, healthy, chosen)
    claims = store.claim_due(
        T0, limit=50, lease_until=T0 + LEASE, worker_id="w1", default_max_in_flight=5
    )
    taken = [c.delivery.subscription_id for c in claims]
    assert taken.count(failing.id) == FAILING_MAX_IN_FLIGHT
    assert taken.count(healthy.id) == 5
    assert taken.count(chosen.id) == 4  # an explicit max_in_flight is the user's choice


def test_claim_slow_start_gives_an_unproven_subscription_few_slots(store: Store) -> None:
    new, proven = make_subscription(), make_subscription()
    chosen = make_subscription(max_in_flight=4)
    for subscription in (new, proven, chosen):
        store.add_subscription(subscription)
    for _ in range(6):
        published(store, new, proven, chosen)
    claims = store.claim_due(
        T0,
        limit=50,
        lease_until=T0 + LEASE,
        worker_id="w1",
        default_max_in_flight=5,
        proven=frozenset({proven.id}),
    )
    taken = [c.delivery.subscription_id for c in claims]
    assert taken.count(new.id) == FAILING_MAX_IN_FLIGHT
    assert taken.count(proven.id) == 5
    assert taken.count(chosen.id) == 4  # an explicit max_in_flight is the user's choice
    # Once proven, the same subscription gets the rest of its share.
    more = store.claim_due(
        T0,
        limit=50,
        lease_until=T0 + LEASE,
        worker_id="w1",
        default_max_in_flight=5,
        proven=frozenset({new.id, proven.id}),
    )
    assert [c.delivery.subscription_id for c in more].count(new.id) == 5 - FAILING_MAX_IN_FLIGHT


def test_claim_walks_past_a_capped_backlog_to_another_subscription(store: Store) -> None:
    busy, quiet = make_subscription(), make_subscription()
    off = make_subscription(enabled=False, disabled_reason="by hand")
    for subscription in (busy, quiet, off):
        store.add_subscription(subscription)
    for _ in range(150):  # more than two pages of the busy one's rows come first
        published(store, busy)
    published(store, off, quiet)
    claims = store.claim_due(
        T0, limit=50, lease_until=T0 + LEASE, worker_id="w1", default_max_in_flight=3
    )
    taken = [c.delivery.subscription_id for c in claims]
    assert taken.count(busy.id) == 3
    assert taken.count(quiet.id) == 1
    assert off.id not in taken
    # Every enabled subscription at its cap: nothing more, and the walk stops early.
    assert (
        store.claim_due(
            T0, limit=50, lease_until=T0 + LEASE, worker_id="w2", default_max_in_flight=3
        )
        == []
    )


def test_claim_allowance_limits_one_subscription(store: Store) -> None:
    slow, fast = make_subscription(), make_subscription()
    store.add_subscription(slow)
    store.add_subscription(fast)
    for _ in range(4):
        published(store, slow, fast)
    claims = store.claim_due(
        T0, limit=50, lease_until=T0 + LEASE, worker_id="w1", allowance={slow.id: 1}
    )
    assert sorted(c.delivery.subscription_id for c in claims).count(slow.id) == 1
    assert [c.delivery.subscription_id for c in claims].count(fast.id) == 4
    assert (
        store.claim_due(
            T0, limit=50, lease_until=T0 + LEASE, worker_id="w1", allowance={slow.id: 0}
        )
        == []
    )


def test_a_subscription_made_ordered_later_orders_its_open_deliveries(store: Store) -> None:
    subscription = make_subscription()
    store.add_subscription(subscription)
    messages = [published(store, subscription) for _ in range(3)]
    store.save_subscription(attrs.evolve(subscription, ordered=True))
    assert [c.delivery.message_id for c in claim(store, limit=50)] == [messages[0].id]
    # ...and back: the rest may go at once.
    store.save_subscription(attrs.evolve(subscription, ordered=False))
    assert {c.delivery.message_id for c in claim(store, limit=50)} == {
        messages[1].id,
        messages[2].id,
    }


def test_a_manual_retry_is_an_ordered_subscriptions_head_again(store: Store) -> None:
    subscription = make_subscription(ordered=True)
    store.add_subscription(subscription)
    first, second = published(store, subscription), published(store, subscription)
    (head,) = claim(store, limit=50)
    store.record([final_record(head, started=T0, status=DeliveryStatus.FAILED)], "w1")
    store.schedule_manual([head.delivery.id], T0 + timedelta(seconds=1))
    # The retried first message is the oldest unfinished again: the second waits.
    retried = claim(store, T0 + timedelta(seconds=2), limit=50)
    assert [c.delivery.message_id for c in retried] == [first.id]
    store.record([final_record(retried[0], started=T0, status=DeliveryStatus.SUCCEEDED)], "w1")
    following = claim(store, T0 + timedelta(seconds=2), limit=50)
    assert [c.delivery.message_id for c in following] == [second.id]


def test_an_id_added_again_as_ordered_claims_its_retried_delivery(store: Store) -> None:
    """A removed subscription's cancelled delivery, retried by hand, then the same id
    added again as an ordered subscription: the delivery is claimed as its head."""
    subscription = make_subscription(ordered=True)
    store.add_subscription(subscription)
    message = published(store, subscription)
    (delivery,) = store.list_deliveries()
    store.remove_subscription(subscription.id, T0)
    store.schedule_manual([delivery.id], T0)
    store.add_subscription(subscription)
    assert [c.delivery.message_id for c in claim(store, limit=5)] == [message.id]


def test_ordered_subscription_gives_its_oldest_unfinished_delivery_only(store: Store) -> None:
    ordered, plain = make_subscription(ordered=True), make_subscription()
    store.add_subscription(ordered)
    store.add_subscription(plain)
    messages = [published(store, ordered, plain) for _ in range(3)]
    first = claim(store, limit=50)
    assert [c.delivery.message_id for c in first if c.subscription.id == ordered.id] == [
        messages[0].id
    ]
    assert len([c for c in first if c.subscription.id == plain.id]) == 3
    assert claim(store, limit=50) == []  # the head is in flight: nothing else of it
    head = next(c for c in first if c.subscription.id == ordered.id)
    # It fails and is retried later: the later messages, though due, wait.
    later = T0 + timedelta(seconds=20)  # within the plain subscription's leases
    store.record([retry_record(head, started=T0, retry_at=later)], "w1")
    assert claim(store, T0 + timedelta(seconds=10), limit=50) == []
    retried = claim(store, later, limit=50)
    assert [c.delivery.message_id for c in retried] == [messages[0].id]
    store.record([final_record(retried[0], started=later, status=DeliveryStatus.EXHAUSTED)], "w1")
    following = claim(store, later, limit=50)
    assert [c.delivery.message_id for c in following] == [messages[1].id]


def test_record_tracks_failure_runs_and_recovery(store: Store) -> None:
    subscription = make_subscription()
    store.add_subscription(subscription)
    published(store, subscription)
    [first] = claim(store)
    result = store.record(
        [retry_record(first, started=T0, retry_at=T0 + timedelta(seconds=5))], "w1"
    )
    assert result.disabled == () and result.recovered == ()
    after = store.get_subscription(subscription.id)
    assert (after.failing_since, after.consecutive_failures) == (T0, 1)
    assert store.subscriptions_version() == store.subscriptions_version()
    [second] = claim(store, T0 + timedelta(seconds=5))
    ok = final_record(second, started=T0 + timedelta(seconds=5), status=DeliveryStatus.SUCCEEDED)
    result = store.record([ok], "w1")
    assert result.recovered == (subscription.id,)
    healthy = store.get_subscription(subscription.id)
    assert (healthy.failing_since, healthy.consecutive_failures) == (None, 0)


def test_record_disables_after_the_auto_disable_window(store: Store) -> None:
    from webhook_dispatch.health import AutoDisable

    policy = AutoDisable(failing_for=timedelta(days=5), min_failed_attempts=3)
    subscription = make_subscription()
    store.add_subscription(subscription)
    published(store, subscription)
    moment = T0
    for _ in range(3):
        [held] = claim(store, moment)
        retry_at = moment + timedelta(days=2)
        result = store.record(
            [retry_record(held, started=moment, retry_at=retry_at)], "w1", auto_disable=policy
        )
        moment = retry_at
    # Failing since T0, 3 attempts, but only 4 days: still enabled.
    assert result.disabled == ()
    assert store.get_subscription(subscription.id).enabled
    version = store.subscriptions_version()
    [held] = claim(store, moment)
    result = store.record(
        [retry_record(held, started=moment, retry_at=moment + timedelta(days=1))],
        "w1",
        auto_disable=policy,
    )
    [(disabled_id, reason)] = result.disabled
    assert disabled_id == subscription.id and "failing since" in reason
    gone = store.get_subscription(subscription.id)
    assert not gone.enabled and gone.disabled_reason == reason
    assert store.subscriptions_version() != version
    # Its pending delivery is held, not dropped.
    assert store.list_deliveries(subscription_id=subscription.id)[0].status is (
        DeliveryStatus.PENDING
    )


def test_record_reports_a_410_disable(store: Store) -> None:
    subscription = make_subscription()
    store.add_subscription(subscription)
    published(store, subscription)
    [held] = claim(store)
    record = final_record(held, started=T0, status=DeliveryStatus.FAILED, disable="410 Gone")
    assert store.record([record], "w1").disabled == ((subscription.id, "410 Gone"),)


def test_release_can_make_a_delivery_due_later(store: Store) -> None:
    subscription = make_subscription()
    store.add_subscription(subscription)
    published(store, subscription)
    [held] = claim(store)
    later = T0 + timedelta(seconds=3)
    store.release([held.delivery.id], "w1", due_at=later)
    delivery = store.get_delivery(held.delivery.id)
    assert delivery.status is DeliveryStatus.PENDING
    assert delivery.next_attempt_at == later and delivery.attempt_count == 0
    assert claim(store, T0 + timedelta(seconds=1)) == []
    assert len(claim(store, later)) == 1


def test_stats(store: Store) -> None:
    active, paused = make_subscription(), make_subscription()
    store.add_subscription(active)
    store.add_subscription(paused)
    published(store, active, paused)
    published(store, active)
    store.save_subscription(attrs.evolve(paused, enabled=False))
    [held, _] = claim(store)
    store.record([retry_record(held, started=T0, retry_at=T0 + timedelta(hours=1))], "w1")
    stats = store.stats(T0 + timedelta(minutes=1))
    assert stats.pending == 2  # the retry waiting, and the one held on the paused one
    assert stats.delivering == 1
    assert stats.oldest_pending_at == T0
    assert stats.oldest_pending_age(T0 + timedelta(minutes=1)) == 60
    assert (stats.subscriptions, stats.disabled_subscriptions) == (2, 1)
    assert stats.failing_subscriptions == 1


def test_next_due_at_waits_for_an_ordered_subscriptions_head(store: Store) -> None:
    """Later deliveries of an ordered subscription are due but cannot be claimed while
    their head waits for a retry: the next due time is the head's."""
    ordered = make_subscription(ordered=True)
    store.add_subscription(ordered)
    for _ in range(3):
        published(store, ordered)
    [head] = claim(store, limit=50)
    retry_at = T0 + timedelta(minutes=5)
    store.record([retry_record(head, started=T0, retry_at=retry_at)], "w1")
    assert claim(store, T0 + timedelta(seconds=1), limit=50) == []
    assert store.next_due_at() == retry_at
    # An unordered subscription's due delivery still counts at once.
    plain = make_subscription()
    store.add_subscription(plain)
    published(store, plain)
    assert store.next_due_at() == T0
    # A disabled ordered subscription holds its head: nothing of it is due.
    [plain_claim] = claim(store, T0 + timedelta(seconds=1), limit=50)
    store.record([final_record(plain_claim, started=T0, status=DeliveryStatus.SUCCEEDED)], "w1")
    store.save_subscription(attrs.evolve(ordered, enabled=False))
    assert store.next_due_at() is None


# -- bounded listings ---------------------------------------------------------------
def test_listings_page_with_cursors(store: Store) -> None:
    subscriptions = [make_subscription() for _ in range(5)]
    for subscription in subscriptions:
        store.add_subscription(subscription)
    messages = [published(store, *subscriptions[:2]) for _ in range(5)]
    deliveries: list[str] = []
    cursor = None
    sizes = []
    while True:
        page = store.list_deliveries(limit=3, cursor=cursor)
        sizes.append(len(page))
        deliveries += [d.id for d in page]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sizes == [3, 3, 3, 1]
    assert deliveries == [d.id for d in store.list_deliveries(limit=100)]
    assert len(set(deliveries)) == 10
    by_subscription = store.list_deliveries(subscription_id=subscriptions[1].id, limit=2)
    rest = store.list_deliveries(
        subscription_id=subscriptions[1].id, limit=2, cursor=by_subscription.next_cursor
    )
    assert [d.message_id for d in [*by_subscription, *rest]] == [m.id for m in messages[:4]]
    newest = store.list_messages(limit=2)
    older = store.list_messages(limit=2, cursor=newest.next_cursor)
    assert [m.id for m in [*newest, *older]] == [m.id for m in reversed(messages)][:4]
    assert store.list_messages(limit=5).next_cursor is None  # exactly the last page
    first = store.list_subscriptions(limit=4)
    assert first == subscriptions[:4]
    assert store.list_subscriptions(limit=4, cursor=first.next_cursor) == subscriptions[4:]
    assert store.list_subscriptions() == subscriptions  # every one, for the matching index


def test_listing_cursor_and_limit_are_checked(store: Store) -> None:
    subscription = make_subscription()
    store.add_subscription(subscription)
    published(store, subscription)
    published(store, subscription)
    message_cursor = store.list_messages(limit=1).next_cursor
    assert message_cursor is not None
    for bad in ("", "not a cursor", message_cursor, "x" * 500, "ZGVsaXZlcmllczotMQ"):
        with pytest.raises(ConfigurationError, match="cursor"):
            store.list_deliveries(cursor=bad)
    for limit in (0, -1, 10_001, True, 2.5):
        with pytest.raises(ConfigurationError, match="limit"):
            store.list_deliveries(limit=limit)  # type: ignore[arg-type]


def test_record_and_claim_records_first(store: Store) -> None:
    """The worker's round: the records are written before the claim, in one call (one
    transaction on SQLite and PostgreSQL)."""
    subscription = make_subscription()
    store.add_subscription(subscription)
    published(store, subscription)
    [held] = claim(store)
    later = T0 + timedelta(seconds=1)
    record = retry_record(held, started=later, retry_at=later)
    result, claims = store.record_and_claim(
        [record], "w1", later, limit=10, lease_until=later + timedelta(minutes=5)
    )
    assert result.disabled == () and result.recovered == ()
    # The retry, due at once, was written before the claim, which takes it again.
    assert [c.delivery.id for c in claims] == [held.delivery.id]
    assert claims[0].delivery.attempt_count == 1
    assert claims[0].subscription.consecutive_failures == 1
    assert store.list_attempts(delivery_id=held.delivery.id) == [record.attempt]
    nothing, none = store.record_and_claim(
        [], "w1", later, limit=0, lease_until=later + timedelta(minutes=5)
    )
    assert (nothing, none) == (RecordResult(), [])
