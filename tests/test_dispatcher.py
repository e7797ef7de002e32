"""The Dispatcher surface: subscriptions, publishing, idempotency, bad input, the
background worker, and the AsyncDispatcher mirror."""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from datetime import timedelta
from typing import Any

import pytest

import webhook_dispatch as wd
from webhook_dispatch.testing import FakeClock, MockReceiver, drain


@pytest.fixture
def setup() -> Any:
    clock = FakeClock()
    receiver = MockReceiver(clock=clock)
    with wd.Dispatcher(clock=clock, transport=receiver) as dispatcher:
        yield dispatcher, clock, receiver


def test_publish_wraps_payload_in_the_standard_webhooks_envelope(setup: Any) -> None:
    dispatcher, clock, receiver = setup
    dispatcher.subscribe("https://example.com/h")
    message = dispatcher.publish("order.created", {"id": "ord_1", "total": 12.5})
    assert message.id.startswith("msg_")
    assert message.content_type == "application/json"
    assert json.loads(message.payload) == {
        "type": "order.created",
        "timestamp": "2030-01-01T00:00:00.000000Z",
        "data": {"id": "ord_1", "total": 12.5},
    }
    drain(dispatcher, clock)
    assert receiver.requests[0].json()["data"] == {"id": "ord_1", "total": 12.5}


def test_raw_bytes_with_content_type_are_sent_as_is(setup: Any) -> None:
    dispatcher, clock, receiver = setup
    dispatcher.subscribe("https://example.com/h")
    body = b"<order id='1'/>"
    dispatcher.publish("order.created", body, content_type="application/xml")
    drain(dispatcher, clock)
    (request,) = receiver.requests
    assert request.body == body
    assert request.headers["content-type"] == "application/xml"


def test_envelope_can_be_turned_off() -> None:
    with wd.Dispatcher(envelope=False) as dispatcher:
        message = dispatcher.publish("order.created", {"id": 1})
    assert json.loads(message.payload) == {"id": 1}


def test_patterns_route_events_to_the_right_subscriptions(setup: Any) -> None:
    dispatcher, clock, receiver = setup
    orders = dispatcher.subscribe("https://a.example/h", event_types=["order.*"])
    everything = dispatcher.subscribe("https://b.example/h")
    deep = dispatcher.subscribe("https://c.example/h", event_types=["invoice.**"])
    dispatcher.publish("order.created", {})
    dispatcher.publish("invoice.line.added", {})
    dispatcher.publish("user.deleted", {})
    drain(dispatcher, clock)
    by_sub = {
        s.id: sorted(d.message_id for d in dispatcher.deliveries(subscription_id=s.id))
        for s in (orders, everything, deep)
    }
    assert len(by_sub[orders.id]) == 1
    assert len(by_sub[everything.id]) == 3
    assert len(by_sub[deep.id]) == 1
    assert len(receiver.requests) == 5


def test_event_without_subscribers_is_stored_with_no_deliveries(setup: Any) -> None:
    dispatcher, _, _receiver = setup
    message = dispatcher.publish("nobody.listens", {})
    assert dispatcher.get_message(message.id) == message
    assert dispatcher.deliveries(message_id=message.id) == []


def test_idempotency_key_returns_the_first_message_and_sends_once(setup: Any) -> None:
    dispatcher, clock, receiver = setup
    dispatcher.subscribe("https://example.com/h")
    first = dispatcher.publish("order.created", {"id": 1}, idempotency_key="ord_1:created")
    again = dispatcher.publish("order.created", {"id": 1}, idempotency_key="ord_1:created")
    assert again.id == first.id
    drain(dispatcher, clock)
    assert len(receiver.requests) == 1
    assert len(dispatcher.deliveries()) == 1


def test_publish_many_validates_all_before_storing_any(setup: Any) -> None:
    dispatcher, clock, receiver = setup
    dispatcher.subscribe("https://example.com/h")
    messages = dispatcher.publish_many([("a.b", {"n": 1}), ("a.c", {"n": 2}, "key-2")])
    assert len(messages) == 2
    with pytest.raises(wd.InvalidEventType):
        dispatcher.publish_many([("a.d", {}), ("bad event", {})])
    assert len(dispatcher.messages()) == 2
    drain(dispatcher, clock)
    assert len(receiver.requests) == 2


def test_subscribe_generates_a_secret_and_hides_it_from_repr(setup: Any) -> None:
    dispatcher, _, _ = setup
    subscription = dispatcher.subscribe("https://example.com/h")
    assert subscription.secret.startswith("whsec_")
    assert subscription.secret not in repr(subscription)
    assert subscription in dispatcher.subscriptions()


def test_disable_holds_deliveries_and_enable_resumes_them(setup: Any) -> None:
    dispatcher, clock, receiver = setup
    subscription = dispatcher.subscribe("https://example.com/h")
    message = dispatcher.publish("order.created", {})
    dispatcher.disable(subscription.id)
    assert dispatcher.run_until_idle() == 0
    assert dispatcher.deliveries(message_id=message.id)[0].status is wd.DeliveryStatus.PENDING
    dispatcher.enable(subscription.id)
    drain(dispatcher, clock)
    assert len(receiver.requests) == 1


def test_unsubscribe_cancels_unfinished_deliveries(setup: Any) -> None:
    dispatcher, _, _receiver = setup
    subscription = dispatcher.subscribe("https://example.com/h")
    message = dispatcher.publish("order.created", {})
    dispatcher.unsubscribe(subscription.id)
    assert dispatcher.run_until_idle() == 0
    assert dispatcher.deliveries(message_id=message.id)[0].status is wd.DeliveryStatus.CANCELLED
    with pytest.raises(wd.NotFound):
        dispatcher.get_subscription(subscription.id)


def test_rotate_secret_signs_with_both_during_grace_then_only_the_new(setup: Any) -> None:
    dispatcher, clock, receiver = setup
    subscription = dispatcher.subscribe("https://example.com/h")
    new_secret = dispatcher.rotate_secret(subscription.id, grace=timedelta(hours=1))
    dispatcher.publish("order.created", {})
    drain(dispatcher, clock)
    during = receiver.requests[-1]
    for secret in (subscription.secret, new_secret):
        wd.verify(during.body, during.headers, secret, now=clock.now())
    clock.advance(timedelta(hours=2))
    dispatcher.publish("order.created", {})
    drain(dispatcher, clock)
    after = receiver.requests[-1]
    wd.verify(after.body, after.headers, new_secret, now=clock.now())
    with pytest.raises(wd.InvalidSignature):
        wd.verify(after.body, after.headers, subscription.secret, now=clock.now())


def test_recover_resends_failed_deliveries_in_the_window(setup: Any) -> None:
    dispatcher, clock, receiver = setup
    receiver._script.extend([400, 400])
    subscription = dispatcher.subscribe("https://example.com/h")
    start = clock.now()
    dispatcher.publish("order.created", {})
    dispatcher.publish("order.created", {})
    drain(dispatcher, clock)
    assert {d.status for d in dispatcher.deliveries()} == {wd.DeliveryStatus.FAILED}
    recovered = dispatcher.recover(subscription.id, since=start - timedelta(seconds=1))
    assert len(recovered) == 2
    drain(dispatcher, clock)
    assert {d.status for d in dispatcher.deliveries()} == {wd.DeliveryStatus.SUCCEEDED}


def test_purge_drops_old_finished_messages(setup: Any) -> None:
    dispatcher, clock, _ = setup
    dispatcher.subscribe("https://example.com/h")
    old = dispatcher.publish("order.created", {})
    drain(dispatcher, clock)
    clock.advance(timedelta(days=31))
    recent = dispatcher.publish("order.created", {})
    assert dispatcher.purge() == 1
    with pytest.raises(wd.NotFound):
        dispatcher.get_message(old.id)
    assert dispatcher.get_message(recent.id) == recent
    assert dispatcher.attempts(old.id) == []


# -- bad input: a typed error, nothing stored, nothing sent ------------------------------

BAD_SUBSCRIBE: list[tuple[dict[str, Any], type[wd.WebhookDispatchError]]] = [
    ({"url": "ftp://example.com/h"}, wd.InvalidURL),
    ({"url": "https://user:pw@example.com/h"}, wd.InvalidURL),
    ({"url": "not a url"}, wd.InvalidURL),
    ({"url": "https://example.com/h", "event_types": ["order created"]}, wd.InvalidEventType),
    ({"url": "https://example.com/h", "event_types": "order.*"}, wd.InvalidEventType),
    ({"url": "https://example.com/h", "secret": "whsec_???"}, wd.InvalidSecret),
    ({"url": "https://example.com/h", "secret": "short"}, wd.InvalidSecret),
    ({"url": "https://example.com/h", "headers": {"X-A": "a\r\nb"}}, wd.InvalidHeader),
    ({"url": "https://example.com/h", "headers": {"Webhook-Id": "x"}}, wd.InvalidHeader),
    ({"url": "https://example.com/h", "headers": {"bad name": "x"}}, wd.InvalidHeader),
    ({"url": "https://example.com/h", "timeout": -1}, wd.ConfigurationError),
    ({"url": "https://example.com/h", "timeout": 10_000}, wd.ConfigurationError),
    ({"url": "https://example.com/h", "metadata": {"k": 1}}, wd.ConfigurationError),
]


@pytest.mark.parametrize(("kwargs", "error"), BAD_SUBSCRIBE)
def test_bad_subscriptions_are_refused(
    setup: Any, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    dispatcher, _, _ = setup
    with pytest.raises(error):
        dispatcher.subscribe(**kwargs)
    assert dispatcher.subscriptions() == []


class NotJSON:
    pass


BAD_PUBLISH: list[tuple[tuple[Any, ...], dict[str, Any], type[wd.WebhookDispatchError]]] = [
    (("order created", {}), {}, wd.InvalidEventType),
    (("order.*", {}), {}, wd.InvalidEventType),
    (("", {}), {}, wd.InvalidEventType),
    ((42, {}), {}, wd.InvalidEventType),
    (("order.created", {"x": NotJSON()}), {}, wd.InvalidPayload),
    (("order.created", {"x": float("nan")}), {}, wd.InvalidPayload),
    (("order.created", b"raw"), {}, wd.InvalidPayload),
    (("order.created", {"big": "x" * (1024 * 1024)}), {}, wd.PayloadTooLarge),
    (("order.created", "<a/>"), {"content_type": "bad\r\ntype"}, wd.InvalidHeader),
    (("order.created", {}), {"idempotency_key": ""}, wd.ConfigurationError),
    (("order.created", {}), {"idempotency_key": "a\nb"}, wd.ConfigurationError),
]


@pytest.mark.parametrize(("args", "kwargs", "error"), BAD_PUBLISH)
def test_bad_publishes_are_refused_and_nothing_is_stored_or_sent(
    setup: Any, args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception]
) -> None:
    dispatcher, clock, receiver = setup
    dispatcher.subscribe("https://example.com/h")
    with pytest.raises(error):
        dispatcher.publish(*args, **kwargs)
    assert dispatcher.messages() == []
    assert dispatcher.deliveries() == []
    drain(dispatcher, clock)
    assert receiver.requests == []


def test_payload_cap_is_configurable() -> None:
    with wd.Dispatcher(max_payload_size=100) as dispatcher:
        with pytest.raises(wd.PayloadTooLarge) as caught:
            dispatcher.publish("a.b", {"x": "y" * 200})
        assert "100" in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"store": "redis://localhost"}, wd.InvalidStoreURL),
        ({"store": "memory"}, wd.InvalidStoreURL),
        ({"store": 42}, wd.InvalidStoreURL),
        ({"concurrency": 0}, wd.ConfigurationError),
        ({"retry": "fast"}, wd.ConfigurationError),
        ({"transport": object()}, wd.ConfigurationError),
        ({"max_payload_size": -1}, wd.ConfigurationError),
        ({"poll_interval": 0}, wd.ConfigurationError),
    ],
)
def test_bad_dispatcher_options_are_refused(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        wd.Dispatcher(**kwargs)


def test_errors_are_also_builtin_exceptions() -> None:
    assert issubclass(wd.InvalidURL, ValueError)
    assert issubclass(wd.InvalidSignature, ValueError)
    assert issubclass(wd.NotFound, LookupError)
    for error in (wd.InvalidURL, wd.InvalidSignature, wd.NotFound, wd.StoreUnavailable):
        assert issubclass(error, wd.WebhookDispatchError)


def test_not_found_ids(setup: Any) -> None:
    dispatcher, _, _ = setup
    for call in (dispatcher.get_message, dispatcher.retry, dispatcher.enable):
        with pytest.raises(wd.NotFound):
            call("nope")


# -- the background worker ----------------------------------------------------------


def test_background_worker_delivers_a_publish_promptly() -> None:
    receiver = MockReceiver()
    with wd.Dispatcher(transport=receiver, poll_interval=30) as dispatcher:
        dispatcher.subscribe("https://example.com/h")
        dispatcher.start()
        time.sleep(0.05)  # let the worker go idle: only a wake-up can start the delivery
        dispatcher.publish("order.created", {})
        deadline = time.monotonic() + 5
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.005)
        # With a 30 s poll interval, arriving within 5 s proves the publish woke the worker.
        assert len(receiver.requests) == 1
        dispatcher.stop()
    assert dispatcher.deliveries()[0].status is wd.DeliveryStatus.SUCCEEDED


def test_stop_lets_in_flight_attempts_finish_and_records_them() -> None:
    import httpx

    started = asyncio.Event

    class Slow(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            await asyncio.sleep(0.3)
            return httpx.Response(200)

    del started
    with wd.Dispatcher(transport=Slow()) as dispatcher:
        # Its own max_in_flight: all five start at once (no slow start).
        dispatcher.subscribe("https://example.com/h", max_in_flight=5)
        for _ in range(5):
            dispatcher.publish("order.created", {})
        dispatcher.start()
        time.sleep(0.1)
        dispatcher.stop()
        statuses = {d.status for d in dispatcher.deliveries()}
    assert statuses == {wd.DeliveryStatus.SUCCEEDED}


def test_run_until_idle_refuses_while_started() -> None:
    with wd.Dispatcher() as dispatcher:
        dispatcher.start()
        with pytest.raises(wd.ConfigurationError):
            dispatcher.run_until_idle()


def test_closed_dispatcher_refuses_to_run() -> None:
    dispatcher = wd.Dispatcher()
    dispatcher.close()
    dispatcher.close()  # idempotent
    with pytest.raises(wd.ConfigurationError):
        dispatcher.run_until_idle()


async def test_async_dispatcher_mirrors_the_sync_surface() -> None:
    clock = FakeClock()
    receiver = MockReceiver([503, 200], clock=clock)
    async with wd.AsyncDispatcher(clock=clock, transport=receiver) as dispatcher:
        subscription = await dispatcher.subscribe("https://example.com/h")
        message = await dispatcher.publish("order.created", {"id": 1})
        assert await dispatcher.run_until_idle() == 1
        due = await dispatcher.next_due_at()
        assert due is not None
        clock.set(due)
        assert await dispatcher.run_until_idle() == 1
        attempts = await dispatcher.attempts(message.id)
        assert [a.status_code for a in attempts] == [503, 200]
        (delivery,) = await dispatcher.deliveries(subscription_id=subscription.id)
        assert delivery.status is wd.DeliveryStatus.SUCCEEDED
        await dispatcher.disable(subscription.id)
        assert not (await dispatcher.get_subscription(subscription.id)).enabled
        await dispatcher.enable(subscription.id)
        assert len(await dispatcher.subscriptions()) == 1
        assert len(await dispatcher.messages()) == 1
        await dispatcher.retry(delivery.id)
        assert await dispatcher.run_until_idle() == 1
        await dispatcher.publish_many([("a.b", {})])
        assert await dispatcher.purge(older_than=timedelta(days=1)) == 0


async def test_async_background_worker_wakes_on_publish() -> None:
    receiver = MockReceiver()
    async with wd.AsyncDispatcher(transport=receiver, poll_interval=30) as dispatcher:
        await dispatcher.subscribe("https://example.com/h")
        dispatcher.start()
        await asyncio.sleep(0.05)
        await dispatcher.publish("order.created", {})
        for _ in range(500):
            if receiver.requests:
                break
            await asyncio.sleep(0.01)
        assert len(receiver.requests) == 1
        await dispatcher.stop()


def test_run_until_idle_after_start_and_stop_still_delivers() -> None:
    receiver = MockReceiver()
    with wd.Dispatcher(transport=receiver) as dispatcher:
        dispatcher.subscribe("https://example.com/h")
        dispatcher.start()
        dispatcher.stop()
        dispatcher.publish("order.created", {})
        assert dispatcher.run_until_idle() == 1
    assert len(receiver.requests) == 1


async def test_async_run_until_idle_after_start_and_stop_still_delivers() -> None:
    receiver = MockReceiver()
    async with wd.AsyncDispatcher(transport=receiver) as dispatcher:
        await dispatcher.subscribe("https://example.com/h")
        dispatcher.start()
        await dispatcher.stop()
        await dispatcher.publish("order.created", {})
        assert await dispatcher.run_until_idle() == 1
    assert len(receiver.requests) == 1


def test_listings_are_pages_of_at_most_the_limit() -> None:
    receiver = MockReceiver([200])
    with wd.Dispatcher(transport=receiver) as dispatcher:
        sub = dispatcher.subscribe("https://example.com/hooks")
        published = dispatcher.publish_many(("order.created", {"n": n}) for n in range(150))
        first = dispatcher.deliveries()
        assert isinstance(first, wd.Page) and len(first) == 100
        second = dispatcher.deliveries(cursor=first.next_cursor)
        assert len(second) == 50 and second.next_cursor is None
        assert [d.message_id for d in [*first, *second]] == [m.id for m in published]
        assert [m.id for m in dispatcher.messages(limit=2)] == [m.id for m in published[:-3:-1]]
        assert dispatcher.subscriptions() == [sub]
        with pytest.raises(wd.ConfigurationError, match="status"):
            dispatcher.deliveries(status="bogus")
        with pytest.raises(wd.ConfigurationError, match="limit"):
            dispatcher.subscriptions(limit=0)
        with pytest.raises(wd.ConfigurationError, match="cursor"):
            dispatcher.messages(cursor=first.next_cursor)


async def test_async_listings_are_pages() -> None:
    async with wd.AsyncDispatcher(transport=MockReceiver([200])) as dispatcher:
        await dispatcher.subscribe("https://example.com/hooks")
        await dispatcher.publish_many(("order.created", {"n": n}) for n in range(3))
        page = await dispatcher.deliveries(limit=2)
        rest = await dispatcher.deliveries(limit=2, cursor=page.next_cursor)
        assert (len(page), len(rest), rest.next_cursor) == (2, 1, None)
        assert len(await dispatcher.messages(limit=5)) == 3
        assert len(await dispatcher.subscriptions(limit=1)) == 1


def test_stop_that_waits_too_long_raises_stop_timeout_and_can_be_called_again() -> None:
    import threading

    import httpx

    entered, released = threading.Event(), threading.Event()

    class Stuck(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            entered.set()
            # `released` is set from the test's thread, not this loop's: poll it.
            while not released.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            return httpx.Response(200)

    with wd.Dispatcher(transport=Stuck()) as dispatcher:
        dispatcher.subscribe("https://example.com/h")
        dispatcher.publish("order.created", {})
        dispatcher.start()
        assert entered.wait(timeout=30)
        with pytest.raises(wd.StopTimeout) as caught:
            dispatcher.stop(timeout=0.01)  # the attempt cannot end before `released`
        assert isinstance(caught.value, TimeoutError)
        assert isinstance(caught.value, wd.WebhookDispatchError)
        assert caught.value.timeout == 0.01
        released.set()
        dispatcher.stop()  # waits for the attempt still in flight
        [delivery] = dispatcher.deliveries()
    assert delivery.status is wd.DeliveryStatus.SUCCEEDED


def test_closing_the_default_memory_store_with_unsent_deliveries_warns() -> None:
    dispatcher = wd.Dispatcher(transport=MockReceiver([200]))
    dispatcher.subscribe("https://h.example/x")
    dispatcher.publish("order.paid", {})
    dispatcher.publish("order.paid", {})
    with pytest.warns(wd.UnsentDeliveriesWarning, match="drops 2 deliveries not yet sent"):
        dispatcher.close()


def test_no_warning_when_delivered_or_memory_chosen_on_purpose() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", wd.UnsentDeliveriesWarning)
        with wd.Dispatcher("memory://") as chosen:
            chosen.subscribe("https://h.example/x")
            chosen.publish("order.paid", {})
        with wd.Dispatcher(transport=MockReceiver([200])) as delivered:
            delivered.subscribe("https://h.example/x")
            delivered.publish("order.paid", {})
            delivered.run_until_idle()
