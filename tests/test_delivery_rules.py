"""Each delivery rule of DESIGN.md, shown end to end with MockReceiver and FakeClock."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

import webhook_dispatch as wd
from webhook_dispatch.testing import FakeClock, MockReceiver, drain


def make(
    script: list[wd.testing.Reply] | None = None, **options: object
) -> tuple[wd.Dispatcher, FakeClock, MockReceiver, wd.Subscription]:
    clock = FakeClock()
    receiver = MockReceiver(script or [], clock=clock)
    dispatcher = wd.Dispatcher(clock=clock, transport=receiver, **options)  # type: ignore[arg-type]
    subscription = dispatcher.subscribe("https://hooks.example.com/in")
    receiver._secret = subscription.secret
    return dispatcher, clock, receiver, subscription


def test_503_503_200_makes_three_attempts_with_one_id_and_fresh_timestamps() -> None:
    dispatcher, clock, receiver, _ = make([503, 503, 200])
    message = dispatcher.publish("order.created", {"id": "ord_1"})

    assert dispatcher.run_until_idle() == 1
    assert drain(dispatcher, clock) == 2

    requests = receiver.for_message(message.id)
    assert [r.reply for r in requests] == ["503", "503", "200"]
    assert {r.webhook_id for r in requests} == {message.id}
    timestamps = [r.timestamp for r in requests]
    assert timestamps == sorted(timestamps) and len(set(timestamps)) == 3
    assert all(r.body == message.payload for r in requests)  # exact stored bytes each time
    receiver.assert_all_verified()
    (delivery,) = dispatcher.deliveries(message_id=message.id)
    assert delivery.status is wd.DeliveryStatus.SUCCEEDED
    assert delivery.attempt_count == 3
    attempts = dispatcher.attempts(message.id)
    assert [a.status_code for a in attempts] == [503, 503, 200]
    assert [a.number for a in attempts] == [1, 2, 3]
    assert [a.webhook_timestamp for a in attempts] == timestamps


def test_second_attempt_waits_for_the_schedule() -> None:
    dispatcher, clock, receiver, _ = make([503, 200])
    dispatcher.publish("order.created", {})
    dispatcher.run_until_idle()
    (delivery,) = dispatcher.deliveries()
    assert delivery.next_attempt_at is not None
    wait = (delivery.next_attempt_at - clock.now()).total_seconds()
    assert 4.0 <= wait <= 6.0  # 5 s ± 20 %
    clock.advance(3)
    assert dispatcher.run_until_idle() == 0  # not due yet
    clock.advance(3)
    assert dispatcher.run_until_idle() == 1
    assert [r.reply for r in receiver.requests] == ["503", "200"]


def test_400_is_one_attempt_and_failed() -> None:
    dispatcher, clock, receiver, _ = make([400])
    message = dispatcher.publish("order.created", {})
    drain(dispatcher, clock)
    assert len(receiver.requests) == 1
    (delivery,) = dispatcher.deliveries(message_id=message.id)
    assert delivery.status is wd.DeliveryStatus.FAILED
    assert delivery.next_attempt_at is None


def test_410_disables_the_subscription() -> None:
    dispatcher, clock, receiver, subscription = make([410])
    dispatcher.publish("order.created", {})
    drain(dispatcher, clock)
    current = dispatcher.get_subscription(subscription.id)
    assert current.enabled is False
    assert current.disabled_reason is not None and "410" in current.disabled_reason
    assert dispatcher.deliveries()[0].status is wd.DeliveryStatus.FAILED
    # a disabled subscription is no longer matched by new events
    dispatcher.publish("order.created", {})
    drain(dispatcher, clock)
    assert len(receiver.requests) == 1


def test_429_with_retry_after_waits_at_least_that_long() -> None:
    dispatcher, clock, receiver, _ = make([(429, {"Retry-After": "120"}), 200])
    dispatcher.publish("order.created", {})
    start = clock.now()
    dispatcher.run_until_idle()
    (delivery,) = dispatcher.deliveries()
    assert delivery.next_attempt_at is not None
    assert delivery.next_attempt_at - start >= timedelta(seconds=120)
    clock.advance(119)
    assert dispatcher.run_until_idle() == 0
    clock.advance(1)
    assert dispatcher.run_until_idle() == 1
    assert [r.reply for r in receiver.requests] == ["429", "200"]


def test_503_with_http_date_retry_after() -> None:
    clock_start = FakeClock().now()
    when = clock_start + timedelta(minutes=10)
    http_date = when.strftime("%a, %d %b %Y %H:%M:%S GMT")
    dispatcher, _, _, _ = make([(503, {"Retry-After": http_date}), 200])
    dispatcher.publish("order.created", {})
    dispatcher.run_until_idle()
    (delivery,) = dispatcher.deliveries()
    assert delivery.next_attempt_at is not None and delivery.next_attempt_at >= when


@pytest.mark.parametrize(
    "error", [httpx.ReadTimeout("slow"), httpx.ConnectTimeout("slow"), httpx.ConnectError("no")]
)
def test_timeouts_and_connection_errors_are_retried(error: Exception) -> None:
    dispatcher, clock, _receiver, _ = make([error, 200])
    message = dispatcher.publish("order.created", {})
    drain(dispatcher, clock)
    attempts = dispatcher.attempts(message.id)
    assert [a.status_code for a in attempts] == [None, 200]
    assert attempts[0].error_kind in (wd.ErrorKind.TIMEOUT, wd.ErrorKind.CONNECT)
    assert dispatcher.deliveries()[0].status is wd.DeliveryStatus.SUCCEEDED


def test_302_fails_without_following_and_records_location() -> None:
    dispatcher, clock, receiver, _ = make([(302, {"Location": "https://elsewhere.example/x"})])
    message = dispatcher.publish("order.created", {})
    drain(dispatcher, clock)
    assert len(receiver.requests) == 1  # not followed
    (attempt,) = dispatcher.attempts(message.id)
    assert attempt.status_code == 302
    assert attempt.response_headers["location"] == "https://elsewhere.example/x"
    assert attempt.error is not None and "elsewhere.example" in attempt.error
    assert dispatcher.deliveries()[0].status is wd.DeliveryStatus.FAILED


def test_schedule_used_up_is_exhausted() -> None:
    dispatcher, clock, receiver, _ = make([], retry=wd.RetryPolicy.fixed([0, 1, 2]))
    receiver._default = 500
    message = dispatcher.publish("order.created", {})
    drain(dispatcher, clock)
    assert len(receiver.requests) == 3
    (delivery,) = dispatcher.deliveries(message_id=message.id)
    assert delivery.status is wd.DeliveryStatus.EXHAUSTED
    assert len(dispatcher.attempts(message.id)) == 3


def test_default_schedule_is_ten_attempts_over_about_three_days() -> None:
    dispatcher, clock, receiver, _ = make([])
    receiver._default = 503
    start = clock.now()
    dispatcher.publish("order.created", {})
    drain(dispatcher, clock)
    assert len(receiver.requests) == 10
    elapsed = clock.now() - start
    nominal = timedelta(seconds=sum(wd.DEFAULT_SCHEDULE))
    assert nominal * 0.8 <= elapsed <= nominal * 1.2
    assert dispatcher.deliveries()[0].status is wd.DeliveryStatus.EXHAUSTED


def test_manual_retry_of_a_failed_delivery_is_recorded_as_manual() -> None:
    dispatcher, clock, _receiver, _ = make([400, 200])
    message = dispatcher.publish("order.created", {})
    drain(dispatcher, clock)
    (delivery,) = dispatcher.deliveries()
    assert delivery.status is wd.DeliveryStatus.FAILED
    dispatcher.retry(delivery.id)
    drain(dispatcher, clock)
    attempts = dispatcher.attempts(message.id)
    assert [a.trigger for a in attempts] == [wd.AttemptTrigger.SCHEDULED, wd.AttemptTrigger.MANUAL]
    assert dispatcher.get_message(message.id).id == message.id
    assert dispatcher.deliveries()[0].status is wd.DeliveryStatus.SUCCEEDED


def test_response_body_is_capped_at_16_kib() -> None:
    big = httpx.Response(500, content=b"x" * 100_000)
    dispatcher, clock, _, _ = make([big], retry=wd.RetryPolicy.fixed([0]))
    message = dispatcher.publish("order.created", {})
    drain(dispatcher, clock)
    (attempt,) = dispatcher.attempts(message.id)
    assert len(attempt.response_body) == 16 * 1024
