"""``subscribe(key=)``: an upsert on the application's own stable name for an endpoint,
per tenant, so start-up code can run again; on every store, and under a race."""

from __future__ import annotations

import threading

import pytest

import webhook_dispatch as wd
from webhook_dispatch.testing import MockReceiver


def test_subscribing_again_with_a_key_updates_the_same_endpoint(store_url: str) -> None:
    with wd.Dispatcher(store_url) as dispatcher:
        first = dispatcher.subscribe("https://h.example/x", key="orders", event_types=["order.*"])
        version = dispatcher.store.subscriptions_version()
        same = dispatcher.subscribe("https://h.example/x", key="orders", event_types=["order.*"])
        assert same == first
        assert dispatcher.store.subscriptions_version() == version  # nothing written
        moved = dispatcher.subscribe("https://new.example/x", key="orders", timeout=5)
        assert (moved.id, moved.secret, moved.key) == (first.id, first.secret, "orders")
        assert (moved.url, moved.event_types, moved.timeout) == ("https://new.example/x", ("*",), 5)
        assert dispatcher.get_subscription(first.id) == moved
        assert [s.id for s in dispatcher.subscriptions()] == [first.id]
        other = dispatcher.subscribe("https://h.example/x", key="invoices")
        assert other.id != first.id


def test_keys_are_per_tenant_and_keep_state(store_url: str) -> None:
    with wd.Dispatcher(store_url) as dispatcher:
        acme = dispatcher.subscribe("https://a.example/x", key="main", tenant="acme")
        globex = dispatcher.subscribe("https://g.example/x", key="main", tenant="globex")
        own = dispatcher.subscribe("https://o.example/x", key="main")
        assert len({acme.id, globex.id, own.id}) == 3
        dispatcher.disable(acme.id, "customer asked")
        again = dispatcher.subscribe("https://a.example/x", key="main", tenant="acme")
        assert again.id == acme.id and not again.enabled
        assert again.disabled_reason == "customer asked"
        secret = wd.generate_secret()
        rotated = dispatcher.subscribe(
            "https://a.example/x", key="main", tenant="acme", secret=secret
        )
        assert rotated.secret == secret


def test_bad_keys_and_scheme_changes_are_refused(store_url: str) -> None:
    with wd.Dispatcher(store_url) as dispatcher:
        for bad in ("", "has space", "x" * 256, 5):
            with pytest.raises(wd.ConfigurationError, match="subscription key"):
                dispatcher.subscribe("https://h.example/x", key=bad)  # type: ignore[arg-type]
        assert list(dispatcher.subscriptions()) == []
        dispatcher.subscribe("https://h.example/x", key="k")
        with pytest.raises(wd.ConfigurationError, match="signature scheme"):
            dispatcher.subscribe("https://h.example/x", key="k", signature="github")
        changed = dispatcher.subscribe(
            "https://h.example/x", key="k", signature="github", secret="a_github_secret_123456"
        )
        assert changed.signature == "github"


def test_racing_start_ups_make_one_subscription(store_url: str) -> None:
    if store_url == "memory://":
        pytest.skip("a memory store is one process's own")
    dispatchers = [wd.Dispatcher(store_url) for _ in range(4)]
    try:
        barrier = threading.Barrier(len(dispatchers))
        made: list[wd.Subscription] = []
        errors: list[BaseException] = []

        def start_up(dispatcher: wd.Dispatcher) -> None:
            barrier.wait()
            try:
                made.append(dispatcher.subscribe("https://h.example/x", key="orders"))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start_up, args=(d,)) for d in dispatchers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len({s.id for s in made}) == 1
        assert len(list(dispatchers[0].subscriptions())) == 1
    finally:
        for dispatcher in dispatchers:
            dispatcher.close()


def test_a_keyed_subscription_receives_as_any(store_url: str) -> None:
    receiver = MockReceiver([200])
    with wd.Dispatcher(store_url, transport=receiver) as dispatcher:
        sub = dispatcher.subscribe("https://h.example/x", key="orders")
        dispatcher.subscribe("https://h.example/x", key="orders")
        dispatcher.publish("order.paid", {})
        assert dispatcher.run_until_idle() == 1
        assert receiver.requests[0].url == "https://h.example/x"
        assert dispatcher.deliveries()[0].subscription_id == sub.id
