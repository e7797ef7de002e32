"""webhook_dispatch.testing and its pytest fixtures, as a user's test suite uses them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
import pytest
import respx

import webhook_dispatch as wd
from webhook_dispatch.testing import FakeClock, MockReceiver, drain, drain_async


def test_fixtures_come_from_the_plugin(
    dispatcher: wd.Dispatcher, mock_receiver: MockReceiver, fake_clock: FakeClock
) -> None:
    subscription = dispatcher.subscribe("https://example.com/h")
    message = dispatcher.publish("order.created", {"id": 1})
    dispatcher.run_until_idle()
    (request,) = mock_receiver.requests
    assert request.webhook_id == message.id
    assert request.at == fake_clock.now()
    wd.verify(request.body, request.headers, subscription.secret, now=fake_clock.now())


def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock()
    start = clock.now()
    assert clock.now() == start
    assert clock.advance(5) == start + timedelta(seconds=5)
    clock.advance(timedelta(hours=1))
    assert clock.now() == start + timedelta(hours=1, seconds=5)
    clock.set(start)
    assert clock.now() == start
    with pytest.raises(wd.ConfigurationError, match="non-negative"):
        clock.advance(-1)
    assert clock.now() == start


@pytest.mark.parametrize(
    "step", ["5", None, True, float("nan"), float("inf"), 1e300, timedelta(days=-1)]
)
def test_fake_clock_refuses_unusable_steps_and_stays_put(step: object) -> None:
    clock = FakeClock()
    start = clock.now()
    with pytest.raises(wd.ConfigurationError, match="advance"):
        clock.advance(step)  # type: ignore[arg-type]
    assert clock.now() == start


def test_fake_clock_takes_only_datetimes() -> None:
    with pytest.raises(wd.ConfigurationError, match="datetime"):
        FakeClock("2030-01-01")  # type: ignore[arg-type]
    clock = FakeClock(datetime(2031, 5, 1))  # naive: taken as UTC
    assert clock.now() == datetime(2031, 5, 1, tzinfo=timezone.utc)
    with pytest.raises(wd.ConfigurationError, match="datetime"):
        clock.set(1_900_000_000)  # type: ignore[arg-type]
    assert clock.now() == datetime(2031, 5, 1, tzinfo=timezone.utc)


def test_mock_receiver_routes_and_verification() -> None:
    clock = FakeClock()
    with wd.Dispatcher(clock=clock, transport=MockReceiver(clock=clock)) as probe:
        del probe
    secret = wd.generate_secret()
    receiver = MockReceiver(routes={"https://gone.example/h": [410]}, secret=secret, clock=clock)
    with wd.Dispatcher(clock=clock, transport=receiver) as dispatcher:
        ok = dispatcher.subscribe("https://ok.example/h", secret=secret)
        gone = dispatcher.subscribe("https://gone.example/h", secret=secret)
        dispatcher.publish("order.created", {})
        drain(dispatcher, clock)
        assert [r.reply for r in receiver.for_url("https://ok.example/h")] == ["200"]
        assert [r.reply for r in receiver.for_url("https://gone.example/h")] == ["410"]
        receiver.assert_all_verified()
        assert dispatcher.get_subscription(ok.id).enabled
        assert not dispatcher.get_subscription(gone.id).enabled


def test_mock_receiver_flags_a_wrong_secret() -> None:
    clock = FakeClock()
    receiver = MockReceiver(secret=wd.generate_secret(), clock=clock)
    with wd.Dispatcher(clock=clock, transport=receiver) as dispatcher:
        dispatcher.subscribe("https://example.com/h")  # its own, different secret
        dispatcher.publish("order.created", {})
        drain(dispatcher, clock)
    assert receiver.requests[0].verified is False
    with pytest.raises(AssertionError, match="failed verification"):
        receiver.assert_all_verified()


def test_verifying_needs_a_receiver_built_with_a_secret() -> None:
    with pytest.raises(wd.ConfigurationError, match="secret="):
        MockReceiver().assert_all_verified()


def test_mock_receiver_raises_scripted_exceptions() -> None:
    clock = FakeClock()
    receiver = MockReceiver([httpx.ConnectError("refused"), 200], clock=clock)
    with wd.Dispatcher(clock=clock, transport=receiver) as dispatcher:
        dispatcher.subscribe("https://example.com/h")
        message = dispatcher.publish("order.created", {})
        drain(dispatcher, clock)
        attempts = dispatcher.attempts(message.id)
    assert [r.reply for r in receiver.requests] == ["ConnectError", "200"]
    assert attempts[0].error_kind is wd.ErrorKind.CONNECT


def test_drain_reports_work_left_after_max_steps() -> None:
    clock = FakeClock()
    receiver = MockReceiver(default=503, clock=clock)
    with wd.Dispatcher(clock=clock, transport=receiver) as dispatcher:
        dispatcher.subscribe("https://example.com/h")
        dispatcher.publish("order.created", {})
        with pytest.raises(wd.DrainIncomplete, match="still pending") as caught:
            drain(dispatcher, clock, max_steps=2)
    assert isinstance(caught.value, RuntimeError)
    assert caught.value.max_steps == 2
    assert caught.value.attempts == len(receiver.requests) == 2


def test_respx_router_as_the_transport() -> None:
    clock = FakeClock()
    with respx.mock(base_url="https://hooks.example.com", assert_all_called=True) as router:
        route = router.post("/in").mock(side_effect=[httpx.Response(503), httpx.Response(204)])
        transport = httpx.MockTransport(router.async_handler)
        with wd.Dispatcher(clock=clock, transport=transport) as dispatcher:
            dispatcher.subscribe("https://hooks.example.com/in")
            message = dispatcher.publish("order.created", {"id": 1})
            drain(dispatcher, clock)
        assert route.call_count == 2
        assert route.calls.last.request.headers["webhook-id"] == message.id


def test_httpx_mock_transport() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    with wd.Dispatcher(transport=httpx.MockTransport(handler)) as dispatcher:
        dispatcher.subscribe("https://example.com/h")
        dispatcher.publish("order.created", {})
        dispatcher.run_until_idle()
    assert len(seen) == 1


def test_drain_plays_out_an_ordered_subscriptions_retries() -> None:
    """With an ordered subscription whose head waits for a retry, drain jumps to the
    head's due time instead of spinning on the deliveries queued behind it."""
    clock = FakeClock()
    receiver = MockReceiver([503, 200, 200, 200])
    with wd.Dispatcher(
        transport=receiver, clock=clock, retry=wd.RetryPolicy.fixed([0, 30], jitter=0.0)
    ) as dispatcher:
        dispatcher.subscribe("https://example.com/hooks", ordered=True)
        messages = [dispatcher.publish("order.created", {"n": n}) for n in range(3)]
        assert drain(dispatcher, clock, max_steps=10) == 4
    sent = [request.headers["webhook-id"] for request in receiver.requests]
    assert sent == [messages[0].id, messages[0].id, messages[1].id, messages[2].id]


async def test_drain_async_plays_out_retries_on_the_async_face() -> None:
    clock = FakeClock()
    receiver = MockReceiver([500, 503, 200], clock=clock)
    async with wd.AsyncDispatcher(
        clock=clock, transport=receiver, retry=wd.RetryPolicy.fixed([0, 60, 3600])
    ) as dispatcher:
        await dispatcher.subscribe("https://example.com/hooks")
        message = await dispatcher.publish("order.created", {"id": 1})
        start = clock.now()

        assert await drain_async(dispatcher, clock) == 3

        [delivery] = await dispatcher.deliveries(message_id=message.id)
        assert delivery.status is wd.DeliveryStatus.SUCCEEDED
        assert clock.now() - start >= timedelta(seconds=3660)
        assert [r.status_code for r in await dispatcher.attempts(message.id)] == [500, 503, 200]


async def test_drain_async_reports_work_left_after_max_steps() -> None:
    clock = FakeClock()
    async with wd.AsyncDispatcher(
        clock=clock,
        transport=MockReceiver([500] * 10, clock=clock),
        retry=wd.RetryPolicy.fixed([0, 60, 60, 60]),
    ) as dispatcher:
        await dispatcher.subscribe("https://example.com/hooks")
        await dispatcher.publish("order.created", {})
        with pytest.raises(wd.DrainIncomplete) as raised:
            await drain_async(dispatcher, clock, max_steps=2)
        assert raised.value.attempts == 2


async def test_each_drain_refuses_the_other_face_with_a_typed_error() -> None:
    clock = FakeClock()
    async with wd.AsyncDispatcher(clock=clock, transport=MockReceiver()) as async_face:
        with pytest.raises(wd.ConfigurationError, match="drain_async"):
            drain(async_face, clock)  # type: ignore[arg-type]
    with (
        wd.Dispatcher(clock=clock, transport=MockReceiver()) as sync_face,
        pytest.raises(wd.ConfigurationError, match="drain\\(dispatcher"),
    ):
        await drain_async(sync_face, clock)  # type: ignore[arg-type]


async def test_the_plugins_async_dispatcher_fixture_delivers(
    async_dispatcher: wd.AsyncDispatcher, mock_receiver: MockReceiver, fake_clock: FakeClock
) -> None:
    await async_dispatcher.subscribe("https://example.com/hooks")
    await async_dispatcher.publish("order.created", {"id": "ord_1"})
    assert await drain_async(async_dispatcher, fake_clock) == 1
    [request] = mock_receiver.requests
    assert request.json()["data"] == {"id": "ord_1"}
