"""Replay of a time window (succeeded, failed and missed messages alike), resending one
message, on every store and with tenants."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import webhook_dispatch as wd
from webhook_dispatch.cli import main
from webhook_dispatch.dispatcher import MISSING, ReplayProgress
from webhook_dispatch.testing import FakeClock, MockReceiver

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def receiver() -> MockReceiver:
    return MockReceiver([200])


@pytest.fixture
def dispatcher(store_url: str, receiver: MockReceiver, clock: FakeClock) -> Iterator[wd.Dispatcher]:
    with wd.Dispatcher(
        store_url, transport=receiver, clock=clock, retry=wd.RetryPolicy.fixed([0])
    ) as d:
        yield d


def _ids(receiver: MockReceiver) -> list[str]:
    return [request.webhook_id for request in receiver.requests]


def test_replay_resends_a_window_including_what_a_disabled_endpoint_missed(
    dispatcher: wd.Dispatcher, receiver: MockReceiver, clock: FakeClock
) -> None:
    sub = dispatcher.subscribe("https://h.example/x", event_types=["order.*"], tenant="acme")
    before = dispatcher.publish("order.paid", {"n": 0}, tenant="acme")
    clock.advance(timedelta(minutes=10))
    delivered = dispatcher.publish("order.paid", {"n": 1}, tenant="acme")
    dispatcher.run_until_idle()
    dispatcher.disable(sub.id)
    clock.advance(timedelta(minutes=1))
    missed = dispatcher.publish("order.paid", {"n": 2}, tenant="acme")
    dispatcher.publish("invoice.paid", {"n": 3}, tenant="acme")  # not its event type
    dispatcher.publish("order.paid", {"n": 4}, tenant="globex")  # another tenant's
    dispatcher.publish("order.paid", {"n": 5})  # untenanted
    assert dispatcher.deliveries(subscription_id=sub.id, message_id=missed.id) == []
    dispatcher.enable(sub.id)
    receiver.requests.clear()

    seen: list[ReplayProgress] = []
    queued = dispatcher.replay(sub.id, since=T0 + timedelta(minutes=5), on_progress=seen.append)
    assert queued == 2 and seen[-1] == ReplayProgress(read=3, queued=2, total=3)
    assert dispatcher.run_until_idle() == 2
    assert sorted(_ids(receiver)) == sorted([delivered.id, missed.id])
    assert before.id not in _ids(receiver)
    replayed = dispatcher.attempts(delivered.id)[-1]
    assert replayed.trigger is wd.AttemptTrigger.MANUAL and replayed.succeeded


def test_replay_statuses_narrow_it(store_url: str, clock: FakeClock) -> None:
    receiver = MockReceiver(routes={"https://down.example/x": [500, 200, 200]})
    with wd.Dispatcher(
        store_url, transport=receiver, clock=clock, retry=wd.RetryPolicy.fixed([0])
    ) as dispatcher:
        sub = dispatcher.subscribe("https://down.example/x")
        failed = dispatcher.publish("order.paid", {"n": 1})
        dispatcher.run_until_idle()
        [delivery] = dispatcher.deliveries(message_id=failed.id)
        assert delivery.status is wd.DeliveryStatus.EXHAUSTED
        dispatcher.disable(sub.id)
        missed = dispatcher.publish("order.paid", {"n": 2})
        dispatcher.enable(sub.id)
        receiver.requests.clear()
        assert dispatcher.replay(sub.id, since=T0, statuses=[MISSING]) == 1
        dispatcher.run_until_idle()
        assert _ids(receiver) == [missed.id]
        receiver.requests.clear()
        assert dispatcher.replay(sub.id, since=T0, statuses=["exhausted", "failed"]) == 1
        dispatcher.run_until_idle()
        assert _ids(receiver) == [failed.id]
        assert dispatcher.replay(sub.id, since=T0, statuses=[wd.DeliveryStatus.FAILED]) == 0
        with pytest.raises(wd.ConfigurationError, match="replay statuses"):
            dispatcher.replay(sub.id, since=T0, statuses=["pending"])


def test_replay_applies_the_filter_and_the_window_end(
    dispatcher: wd.Dispatcher, receiver: MockReceiver, clock: FakeClock
) -> None:
    sub = dispatcher.subscribe("https://h.example/x", filter={"data": {"big": True}})
    dispatcher.disable(sub.id)
    big = dispatcher.publish("order.paid", {"big": True})
    dispatcher.publish("order.paid", {"big": False})
    clock.advance(timedelta(hours=1))
    dispatcher.publish("order.paid", {"big": True})  # after the window
    dispatcher.enable(sub.id)
    assert dispatcher.replay(sub.id, since=T0, until=T0 + timedelta(minutes=30)) == 1
    dispatcher.run_until_idle()
    assert _ids(receiver) == [big.id]


def test_replay_works_in_batches(
    dispatcher: wd.Dispatcher, receiver: MockReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    import webhook_dispatch.dispatcher as module

    monkeypatch.setattr(module, "REPLAY_BATCH", 3)
    sub = dispatcher.subscribe("https://h.example/x")
    dispatcher.disable(sub.id)
    published = [dispatcher.publish("order.paid", {"n": n}) for n in range(10)]
    dispatcher.enable(sub.id)
    seen: list[ReplayProgress] = []
    assert dispatcher.replay(sub.id, since=T0, on_progress=seen.append) == 10
    assert [(p.read, p.queued, p.total) for p in seen] == [
        (3, 3, 10),
        (6, 6, 10),
        (9, 9, 10),
        (10, 10, 10),
    ]
    assert dispatcher.run_until_idle() == 10
    assert sorted(_ids(receiver)) == sorted(m.id for m in published)
    assert dispatcher.replay(sub.id, since=T0, statuses=[MISSING]) == 0  # none missing now


def test_resend_one_message(dispatcher: wd.Dispatcher, receiver: MockReceiver) -> None:
    sub = dispatcher.subscribe("https://h.example/x", tenant="acme")
    other = dispatcher.subscribe("https://other.example/x", tenant="globex")
    message = dispatcher.publish("order.paid", {}, tenant="acme")
    dispatcher.run_until_idle()
    again = dispatcher.resend(message.id, sub.id)
    assert again.status is wd.DeliveryStatus.PENDING
    assert again.next_trigger is wd.AttemptTrigger.MANUAL
    dispatcher.run_until_idle()
    assert _ids(receiver) == [message.id, message.id]
    with pytest.raises(wd.NotFound):
        dispatcher.resend(message.id, other.id)  # never to another tenant's endpoint
    assert dispatcher.deliveries(subscription_id=other.id) == []
    late = dispatcher.subscribe("https://late.example/x", tenant="acme")
    created = dispatcher.resend(message.id, late.id)
    assert created.subscription_id == late.id and created.message_id == message.id
    dispatcher.run_until_idle()
    assert receiver.requests[-1].url.startswith("https://late.example/")


async def test_the_async_face_replays(store_url: str) -> None:
    receiver = MockReceiver([200])
    async with wd.AsyncDispatcher(store_url, transport=receiver) as dispatcher:
        sub = await dispatcher.subscribe("https://h.example/x")
        await dispatcher.disable(sub.id)
        message = await dispatcher.publish("order.paid", {})
        await dispatcher.enable(sub.id)
        assert await dispatcher.replay(sub.id, since=message.created_at) == 1
        assert (await dispatcher.resend(message.id, sub.id)).message_id == message.id
        await dispatcher.run_until_idle()
    assert [r.webhook_id for r in receiver.requests] == [message.id]


def test_cli_replay_and_resend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WEBHOOK_DISPATCH_STORE", raising=False)
    store = f"sqlite:///{tmp_path}/cli.db"
    with wd.Dispatcher(store) as dispatcher:
        sub = dispatcher.subscribe("https://h.example/x")
        dispatcher.disable(sub.id)
        messages = [dispatcher.publish("order.paid", {"n": n}) for n in range(3)]
        dispatcher.enable(sub.id)
    since = (messages[0].created_at - timedelta(seconds=1)).isoformat()
    assert main(["replay", sub.id, "--since", since, "--status", "missing", "--store", store]) == 0
    captured = capsys.readouterr()
    assert "queued 3 deliveries" in captured.out
    assert "3" in captured.err  # the progress line
    assert main(["resend", messages[0].id, sub.id, "--store", store]) == 0
    assert "dlv_" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main(["replay", sub.id, "--since", "yesterday-ish", "--store", store])
    assert exited.value.code == 2


# -- test events --------------------------------------------------------------------------
def test_send_example_sends_the_catalogs_example_as_a_test_attempt(
    dispatcher: wd.Dispatcher, receiver: MockReceiver
) -> None:
    dispatcher.define_event_type(
        "order.paid",
        schema={"type": "object", "required": ["id"]},
        examples=[{"id": "ord_example"}],
    )
    sub = dispatcher.subscribe("https://h.example/x", tenant="acme")
    other = dispatcher.subscribe("https://other.example/x", tenant="acme")
    attempt = dispatcher.send_example(sub.id, "order.paid")
    assert attempt.succeeded and attempt.trigger is wd.AttemptTrigger.TEST
    [request] = receiver.requests
    assert request.url.startswith("https://h.example/")
    assert json.loads(request.body)["data"] == {"id": "ord_example"}
    message = dispatcher.store.get_message(attempt.message_id)
    assert message.test and message.tenant == "acme"
    [delivery] = dispatcher.deliveries(message_id=message.id)
    assert delivery.status is wd.DeliveryStatus.SUCCEEDED
    assert dispatcher.attempts(message.id) == [attempt]
    assert dispatcher.run_until_idle() == 0  # nothing real was queued
    assert dispatcher.replay(other.id, since=T0) == 0  # never replayed elsewhere
    custom = dispatcher.send_example(sub.id, "order.paid", {"id": "mine"})
    assert json.loads(receiver.requests[-1].body)["data"] == {"id": "mine"}
    assert custom.message_id != attempt.message_id


def test_send_example_checks_first_and_never_retries(store_url: str, clock: FakeClock) -> None:
    receiver = MockReceiver([503])
    with wd.Dispatcher(store_url, transport=receiver, clock=clock) as dispatcher:
        dispatcher.define_event_type("order.paid", schema={"type": "object", "required": ["id"]})
        sub = dispatcher.subscribe("https://h.example/x")
        with pytest.raises(wd.ConfigurationError, match="no example"):
            dispatcher.send_example(sub.id, "order.paid")
        with pytest.raises(wd.InvalidPayload):
            dispatcher.send_example(sub.id, "order.paid", {"no": "id"})
        with pytest.raises(wd.NotFound):
            dispatcher.send_example("sub_missing", "order.paid", {"id": 1})
        assert receiver.requests == []
        attempt = dispatcher.send_example(sub.id, "order.paid", {"id": 1})
        assert attempt.status_code == 503
        [delivery] = dispatcher.deliveries(message_id=attempt.message_id)
        assert delivery.status is wd.DeliveryStatus.FAILED and delivery.next_attempt_at is None
        clock.advance(timedelta(hours=1))
        assert dispatcher.run_until_idle() == 0


async def test_the_async_face_sends_examples(store_url: str) -> None:
    receiver = MockReceiver([200])
    async with wd.AsyncDispatcher(store_url, transport=receiver) as dispatcher:
        sub = await dispatcher.subscribe("https://h.example/x")
        attempt = await dispatcher.send_example(sub.id, "ping.sent", {"hello": True})
    assert attempt.succeeded and len(receiver.requests) == 1


def test_a_custom_store_without_these_capabilities_says_so() -> None:
    """`Store`'s defaults for a backend that does not implement replay, test sends or
    the catalog: a `ConfigurationError` naming the store, and an empty catalog."""
    from webhook_dispatch.stores import Store
    from webhook_dispatch.stores.memory import MemoryStore

    store = MemoryStore()
    with pytest.raises(wd.ConfigurationError, match="MemoryStore does not implement replay"):
        Store.messages_between(store, None, since=T0, until=T0)
    with pytest.raises(wd.ConfigurationError, match="an event catalog"):
        Store.remove_event_type(store, "a.b")
    with pytest.raises(wd.ConfigurationError, match="test sends"):
        Store.record_test(store, None, None, None)  # type: ignore[arg-type]
    assert Store.list_event_types(store) == []
