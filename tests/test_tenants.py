"""Tenants: isolation of endpoints, messages, listings and deletion between customers,
limits per tenant, and fair (round-robin) claiming between tenants, on every store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import webhook_dispatch as wd
from webhook_dispatch._receiver import LoopbackReceiver
from webhook_dispatch.stores.base import (
    SubscriptionTurns,
    TenantGate,
    ring_after,
    share_round_robin,
)
from webhook_dispatch.testing import FakeClock, MockReceiver

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def receiver() -> MockReceiver:
    return MockReceiver([200])


@pytest.fixture
def dispatcher(store_url: str, receiver: MockReceiver) -> Iterator[wd.Dispatcher]:
    with wd.Dispatcher(store_url, transport=receiver, clock=FakeClock(T0)) as d:
        yield d


def _hosts(receiver: MockReceiver) -> list[str]:
    return [r.url.split("/")[2] for r in receiver.requests]


# -- the contract ----------------------------------------------------------------------
def test_publish_reaches_only_its_tenants_endpoints(
    dispatcher: wd.Dispatcher, receiver: MockReceiver
) -> None:
    acme = dispatcher.subscribe("https://acme.example/hook", tenant="acme")
    globex = dispatcher.subscribe("https://globex.example/hook", tenant="globex")
    own = dispatcher.subscribe("https://ops.example/hook")
    assert (acme.tenant, globex.tenant, own.tenant) == ("acme", "globex", None)
    message = dispatcher.publish("order.created", {"n": 1}, tenant="acme")
    assert message.tenant == "acme"
    dispatcher.publish("order.created", {"n": 2})
    assert dispatcher.run_until_idle() == 2
    assert sorted(_hosts(receiver)) == ["acme.example", "ops.example"]
    assert [d.subscription_id for d in dispatcher.deliveries(message.id)] == [acme.id]


def test_idempotency_keys_are_scoped_per_tenant(dispatcher: wd.Dispatcher) -> None:
    dispatcher.subscribe("https://acme.example/hook", tenant="acme")
    first = dispatcher.publish("a.b", {}, idempotency_key="k", tenant="acme")
    again = dispatcher.publish("a.b", {}, idempotency_key="k", tenant="acme")
    other = dispatcher.publish("a.b", {}, idempotency_key="k", tenant="globex")
    mine = dispatcher.publish("a.b", {}, idempotency_key="k")
    assert again.id == first.id
    assert len({first.id, other.id, mine.id}) == 3
    many = dispatcher.publish_many([("a.b", {}, "k", "acme"), ("a.b", {}, "k", "initech")])
    assert many[0].id == first.id and many[1].tenant == "initech"


def test_subscription_patterns_are_a_tenants_enabled_ones(dispatcher: wd.Dispatcher) -> None:
    """What a publisher's matching index is built from: ids and event types of one
    tenant's enabled subscriptions, oldest first, never another tenant's."""
    first = dispatcher.subscribe("https://a.example/1", event_types=["order.*"], tenant="a")
    off = dispatcher.subscribe("https://a.example/2", event_types=["x.y"], tenant="a")
    last = dispatcher.subscribe("https://a.example/3", tenant="a")
    dispatcher.subscribe("https://b.example/1", event_types=["order.*"], tenant="b")
    own = dispatcher.subscribe("https://own.example/1", event_types=["ops.*"])
    dispatcher.disable(off.id)
    assert dispatcher.store.subscription_patterns("a") == [
        (first.id, ("order.*",), None),
        (last.id, ("*",), None),
    ]
    assert dispatcher.store.subscription_patterns(None) == [(own.id, ("ops.*",), None)]
    assert dispatcher.store.subscription_patterns("nobody") == []


def test_listings_and_stats_filter_by_tenant(dispatcher: wd.Dispatcher) -> None:
    a = dispatcher.subscribe("https://a.example/hook", tenant="a")
    b = dispatcher.subscribe("https://b.example/hook", tenant="b")
    own = dispatcher.subscribe("https://ops.example/hook")
    ma = dispatcher.publish("x.y", {}, tenant="a")
    mb = dispatcher.publish("x.y", {}, tenant="b")
    assert [s.id for s in dispatcher.subscriptions(tenant="a")] == [a.id]
    assert [s.id for s in dispatcher.subscriptions(tenant=None)] == [own.id]
    assert {s.id for s in dispatcher.subscriptions()} == {a.id, b.id, own.id}
    assert [m.id for m in dispatcher.messages(tenant="b")] == [mb.id]
    assert [d.message_id for d in dispatcher.deliveries(tenant="a")] == [ma.id]
    assert dispatcher.deliveries(tenant=None) == []
    assert dispatcher.stats(tenant="a").pending == 1
    assert dispatcher.stats(tenant="a").subscriptions == 1
    assert dispatcher.stats().pending == 2
    listed = {t.id: t for t in dispatcher.tenants()}
    assert set(listed) == {"a", "b"}
    assert (listed["a"].subscriptions, listed["a"].pending) == (1, 1)


def test_tenant_settings_round_trip_and_page(dispatcher: wd.Dispatcher) -> None:
    tenant = dispatcher.set_tenant("acme", rate_limit=5, max_in_flight=3, metadata={"plan": "pro"})
    assert (tenant.rate_limit, tenant.max_in_flight, tenant.max_subscriptions) == (5, 3, None)
    changed = dispatcher.set_tenant("acme", max_subscriptions=2)
    assert changed.rate_limit == 5 and changed.max_subscriptions == 2
    assert dict(dispatcher.get_tenant("acme").metadata) == {"plan": "pro"}
    assert changed.created_at == tenant.created_at
    for n in range(3):
        dispatcher.set_tenant(f"t{n}")
    first = dispatcher.tenants(limit=2)
    rest = dispatcher.tenants(limit=2, cursor=first.next_cursor)
    assert [t.id for t in [*first, *rest]] == ["acme", "t0", "t1", "t2"]
    with pytest.raises(wd.NotFound):
        dispatcher.get_tenant("nobody")


def test_max_subscriptions_is_enforced(dispatcher: wd.Dispatcher) -> None:
    dispatcher.set_tenant("acme", max_subscriptions=1)
    dispatcher.subscribe("https://acme.example/1", tenant="acme")
    with pytest.raises(wd.TenantLimitExceeded) as caught:
        dispatcher.subscribe("https://acme.example/2", tenant="acme")
    assert (caught.value.tenant, caught.value.limit) == ("acme", 1)
    assert len(dispatcher.subscriptions(tenant="acme")) == 1
    dispatcher.subscribe("https://other.example/1", tenant="other")  # not acme's limit


@pytest.mark.parametrize(
    "bad",
    ["", "x" * 256, "has space", "cr\rlf", "line\nfeed", "café", "a/b", "tab\t", 7, b"acme"],
)
def test_bad_tenant_ids_store_nothing(dispatcher: wd.Dispatcher, bad: object) -> None:
    with pytest.raises(wd.InvalidTenant):
        dispatcher.subscribe("https://acme.example/hook", tenant=bad)  # type: ignore[arg-type]
    with pytest.raises(wd.InvalidTenant):
        dispatcher.publish("a.b", {}, tenant=bad)  # type: ignore[typeddict-item]
    with pytest.raises(wd.InvalidTenant):
        dispatcher.publish_many([("a.b", {}, None, "ok"), ("a.b", {}, None, bad)])
    with pytest.raises(wd.InvalidTenant):
        dispatcher.set_tenant(bad)  # type: ignore[arg-type]
    with pytest.raises(wd.InvalidTenant):
        dispatcher.subscriptions(tenant=bad)  # type: ignore[arg-type]
    assert dispatcher.subscriptions() == [] and dispatcher.messages() == []
    assert dispatcher.tenants() == []


def test_bad_tenant_limits_are_refused(dispatcher: wd.Dispatcher) -> None:
    for settings_ in ({"rate_limit": 0}, {"max_in_flight": -1}, {"max_subscriptions": 1.5}):
        with pytest.raises(wd.InvalidTenant):
            dispatcher.set_tenant("acme", **settings_)
    with pytest.raises(wd.InvalidTenant):
        dispatcher.set_tenant("acme", metadata={"k": 1})
    with pytest.raises(TypeError):
        dispatcher.set_tenant("acme", colour="red")
    assert dispatcher.tenants() == []


def test_delete_tenant_removes_everything_of_it_and_nothing_else(
    dispatcher: wd.Dispatcher, receiver: MockReceiver
) -> None:
    dispatcher.subscribe("https://acme.example/hook", tenant="acme")
    keep = dispatcher.subscribe("https://globex.example/hook", tenant="globex")
    for n in range(5):
        dispatcher.publish("order.created", {"n": n}, tenant="acme")
    kept = dispatcher.publish("order.created", {"n": 9}, tenant="globex")
    dispatcher.run_until_idle()
    dispatcher.publish("order.created", {"n": 10}, tenant="acme")  # pending at deletion
    seen: list[int] = []
    assert dispatcher.delete_tenant("acme", on_progress=seen.append) == 6
    assert seen and seen[-1] == 6
    assert dispatcher.subscriptions(tenant="acme") == []
    assert dispatcher.messages(tenant="acme") == []
    assert dispatcher.deliveries(tenant="acme") == []
    with pytest.raises(wd.NotFound):
        dispatcher.get_tenant("acme")
    sent = len(receiver.requests)
    assert dispatcher.run_until_idle() == 0 and len(receiver.requests) == sent
    assert [s.id for s in dispatcher.subscriptions()] == [keep.id]
    assert [m.id for m in dispatcher.messages()] == [kept.id]
    assert len(dispatcher.attempts(kept.id)) == 1
    # The id can be used again afterwards.
    assert dispatcher.subscribe("https://acme.example/new", tenant="acme").tenant == "acme"


def test_delete_tenant_waits_for_a_claimed_attempt(store_url: str) -> None:
    """An attempt another worker claimed is waited for, then its rows go; nothing of
    the tenant is left to send once delete_tenant returns."""
    clock = FakeClock(T0)
    with wd.Dispatcher(store_url, transport=MockReceiver([200]), clock=clock) as d:
        d.subscribe("https://acme.example/hook", tenant="acme")
        d.publish("a.b", {}, tenant="acme")
        store = d.store
        claims = store.claim_due(
            T0, limit=5, lease_until=T0 + timedelta(seconds=1), worker_id="other"
        )
        assert len(claims) == 1
        with pytest.raises(wd.StopTimeout):
            d.delete_tenant("acme", wait=0)
        clock.advance(2)  # the other worker's lease ran out: nothing holds it now
        assert d.delete_tenant("acme", wait=0) == 1
        assert d.messages(tenant="acme") == []


def test_operational_events_stay_within_the_tenant(store_url: str) -> None:
    receiver = MockReceiver(routes={"https://acme.example/hook": [410]})
    with wd.Dispatcher(
        store_url, transport=receiver, clock=FakeClock(T0), operational_events=True
    ) as d:
        d.subscribe("https://acme.example/hook", event_types=["order.*"], tenant="acme")
        d.subscribe(
            "https://acme.example/ops",
            event_types=["webhook_dispatch.subscription.*"],
            tenant="acme",
        )
        d.subscribe(
            "https://globex.example/ops",
            event_types=["webhook_dispatch.subscription.*"],
            tenant="globex",
        )
        d.subscribe("https://ops.example/ops", event_types=["webhook_dispatch.**"])
        d.publish("order.created", {}, tenant="acme")
        d.run_until_idle()
        hosts_paths = [r.url.split("/", 2)[2] for r in receiver.requests]
    assert hosts_paths[0] == "acme.example/hook"
    told = sorted(hosts_paths[1:])
    assert "acme.example/ops" in told and "ops.example/ops" in told
    assert "globex.example/ops" not in told


def test_two_tenants_on_real_receivers(store_url: str, loopback: LoopbackReceiver) -> None:
    """Two tenants subscribed to the same event type on real loopback endpoints each
    receive only their own events, signed with their own secrets."""
    with wd.Dispatcher(store_url, allow_private_networks=True) as d:
        a = d.subscribe(loopback.url("/a"), event_types=["invoice.paid"], tenant="a")
        b = d.subscribe(loopback.url("/b"), event_types=["invoice.paid"], tenant="b")
        loopback.set_secret("/a", a.secret)
        loopback.set_secret("/b", b.secret)
        for n in range(3):
            d.publish("invoice.paid", {"for": "a", "n": n}, tenant="a")
        d.publish("invoice.paid", {"for": "b"}, tenant="b")
        assert d.run_until_idle() == 4
    to_a, to_b = loopback.requests_to("/a"), loopback.requests_to("/b")
    assert [json.loads(r.body)["data"]["for"] for r in to_a] == ["a"] * 3
    assert [json.loads(r.body)["data"]["for"] for r in to_b] == ["b"]
    assert all(r.verified for r in [*to_a, *to_b])


def test_a_subscription_added_elsewhere_is_matched(tmp_path: Path) -> None:
    """Another process's change reaches this publisher's per-tenant cache at once, and
    only the changed tenant is reloaded."""
    url = f"sqlite:///{tmp_path}/shared.db"
    with wd.Dispatcher(url) as publisher, wd.Dispatcher(url) as admin:
        admin.subscribe("https://a.example/hook", tenant="a")
        admin.subscribe("https://b.example/hook", tenant="b")
        assert publisher.publish("x.y", {}, tenant="a") is not None
        assert publisher.publish("x.y", {}, tenant="b") is not None
        cached_b = publisher._core._registries["b"]
        admin.subscribe("https://a.example/second", tenant="a")
        published = publisher.publish("x.y", {}, tenant="a")
        assert len(publisher.deliveries(published.id)) == 2
        assert publisher._core._registries["b"] is cached_b  # b was not reloaded


# -- isolation, as a property -------------------------------------------------------------
TENANTS = st.sampled_from(["a", "b", "c", None])


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    endpoints=st.lists(st.tuples(TENANTS, st.sampled_from(["x.*", "x.y", "*"])), max_size=6),
    publishes=st.lists(st.tuples(TENANTS, st.sampled_from(["x.y", "x.z"])), max_size=8),
    doomed=TENANTS,
)
def test_isolation_property(
    store_url: str,
    endpoints: list[tuple[str | None, str]],
    publishes: list[tuple[str | None, str]],
    doomed: str | None,
) -> None:
    receiver = MockReceiver([200])
    with wd.Dispatcher(store_url, transport=receiver, clock=FakeClock(T0)) as d:
        for sub in d.subscriptions():  # one PostgreSQL schema serves every example
            d.unsubscribe(sub.id)
        d.purge(datetime.max.replace(tzinfo=timezone.utc))
        owner: dict[str, str | None] = {}
        for n, (tenant, pattern) in enumerate(endpoints):
            sub = d.subscribe(f"https://e{n}.example/h", event_types=[pattern], tenant=tenant)
            owner[sub.url] = tenant
        published: dict[str, str | None] = {}
        for tenant, event_type in publishes:
            published[d.publish(event_type, {}, tenant=tenant).id] = tenant
        d.run_until_idle()
        for request in receiver.requests:
            assert owner[request.url] == published[request.webhook_id]
        for tenant in ("a", "b", "c", None):
            assert all(s.tenant == tenant for s in d.subscriptions(tenant=tenant))
            assert all(m.tenant == tenant for m in d.messages(tenant=tenant))
            for delivery in d.deliveries(tenant=tenant):
                assert published[delivery.message_id] == tenant
        if doomed is not None:
            before = {
                t: (len(d.subscriptions(tenant=t)), len(d.messages(tenant=t)))
                for t in ("a", "b", "c", None)
                if t != doomed
            }
            d.delete_tenant(doomed, wait=0)
            assert d.subscriptions(tenant=doomed) == [] and d.messages(tenant=doomed) == []
            after = {t: (len(d.subscriptions(tenant=t)), len(d.messages(tenant=t))) for t in before}
            assert after == before


# -- fair claiming ------------------------------------------------------------------------
def test_round_robin_shares_and_leftovers() -> None:
    offered = {"a": 100, "b": 1, "c": 100}
    calls: list[tuple[str, int]] = []

    def take(tenant: str, quota: int) -> int:
        calls.append((tenant, quota))
        got = min(quota, offered[tenant])
        offered[tenant] -= got
        return got

    assert share_round_robin(["a", "b", "c"], 9, take) == "c"
    # a gets a third of 9; b wants 1 of its 3, so c's turn finds 5 left, all its own.
    assert calls == [("a", 3), ("b", 3), ("c", 5)]
    assert offered == {"a": 97, "b": 0, "c": 95}
    calls.clear()
    offered.update(a=100, b=1, c=2)
    share_round_robin(["a", "b", "c"], 9, take)
    # c has only 2 of its 5: the second pass gives the 3 left to a, which used its share.
    assert calls == [("a", 3), ("b", 3), ("c", 5), ("a", 3)]
    assert offered == {"a": 94, "b": 0, "c": 0}
    assert ring_after(["a", "b", "c", "d"], "b", 3) == ["c", "d", "a"]
    assert ring_after(["a", "b"], None, 5) == ["a", "b"]


def test_tenant_gate_rate_and_in_flight() -> None:
    now = 10_000_000_000
    gate = TenantGate({"r": (None, 2.0, 0), "f": (3, None, 0)}, {"f": 2}, now)
    assert gate.room("r") == 2 and gate.room("f") == 1 and gate.room("free") == float("inf")
    gate.took("r", 2)
    gate.took("f", 1)
    assert gate.room("r") == 0 and gate.room("f") == 0
    tat = gate.tats()["r"]
    assert tat == now  # two requests at 2/s from a full bucket: the bucket is empty now
    later = TenantGate({"r": (None, 2.0, tat)}, {}, now + 500_000)
    assert later.room("r") == 1  # half a second later: one more


def test_a_busy_tenant_does_not_hold_up_a_quiet_one(store_url: str) -> None:
    """With a backlog for tenant A published first, one claim still takes tenant B's
    new delivery (oldest-due-first would have taken only A's)."""
    clock = FakeClock(T0)
    with wd.Dispatcher(store_url, transport=MockReceiver([200]), clock=clock) as d:
        d.subscribe("https://busy.example/hook", tenant="busy", max_in_flight=1000)
        d.subscribe("https://quiet.example/hook", tenant="quiet")
        d.publish_many([("x.y", {"n": n}, None, "busy") for n in range(200)])
        clock.advance(1)
        probe = d.publish("x.y", {}, tenant="quiet")
        claims = d.store.claim_due(
            clock.now(), limit=10, lease_until=clock.now() + timedelta(minutes=1), worker_id="w"
        )
        assert len(claims) == 10
        assert probe.id in {c.message.id for c in claims}
        # The next claim starts after the tenant served last: busy goes on.
        more = d.store.claim_due(
            clock.now(), limit=10, lease_until=clock.now() + timedelta(minutes=1), worker_id="w"
        )
        assert len(more) == 10 and {c.message.tenant for c in more} == {"busy"}


@pytest.mark.parametrize("tenant", [None, "acme"])
def test_a_busy_endpoint_does_not_hold_up_its_tenants_others(
    store_url: str, tenant: str | None
) -> None:
    """Within one tenant (or among untenanted endpoints) subscriptions take turns too:
    a backlog on one endpoint, published first, leaves room in the next claim for a
    sibling's new delivery, and the claims after that rotate through them."""
    clock = FakeClock(T0)
    with wd.Dispatcher(store_url, transport=MockReceiver([200]), clock=clock) as d:
        busy = d.subscribe(
            "https://busy.example/hook", event_types=["busy.*"], tenant=tenant, max_in_flight=1000
        )
        quiet = d.subscribe("https://quiet.example/hook", event_types=["quiet.*"], tenant=tenant)
        third = d.subscribe("https://third.example/hook", event_types=["third.*"], tenant=tenant)
        d.publish_many([("busy.work", {"n": n}, None, tenant) for n in range(200)])
        clock.advance(1)
        d.publish_many([("quiet.work", {}, None, tenant), ("third.work", {}, None, tenant)])
        lease = clock.now() + timedelta(minutes=1)
        claims = d.store.claim_due(clock.now(), limit=3, lease_until=lease, worker_id="w")
        assert sorted(c.subscription.id for c in claims) == sorted([busy.id, quiet.id, third.id])
        d.publish_many([("quiet.work", {}, None, tenant) for _ in range(5)])
        # Two subscriptions due, one slot each: the next claims alternate between them.
        served = [
            d.store.claim_due(clock.now(), limit=1, lease_until=lease, worker_id="w")[0]
            for _ in range(4)
        ]
        ids = [c.subscription.id for c in served]
        assert set(ids) == {busy.id, quiet.id} and ids[0] != ids[1] and ids[:2] == ids[2:]


def test_subscription_turns_rotate_and_share() -> None:
    """The pure part: each tenant's ring is asked for once per claim, its cursor moves
    only in the first pass, and leftovers go to subscriptions that used their share."""
    turns = SubscriptionTurns()
    offered = {"s1": 100, "s2": 1, "s3": 100}
    asked: list[tuple[str, str | None, int]] = []
    walked: list[tuple[str, int]] = []

    def ring(tenant: str, cursor: str | None, count: int) -> list[str]:
        asked.append((tenant, cursor, count))
        return ring_after(sorted(offered), cursor, count)

    def walk(tenant: str, subscription_id: str, quota: int) -> int:
        walked.append((subscription_id, quota))
        got = min(quota, offered[subscription_id])
        offered[subscription_id] -= got
        return got

    take = turns.take(ring, walk)
    assert take("t", 6) == 6
    assert walked == [("s1", 2), ("s2", 2), ("s3", 3)]
    assert take("t", 2) == 2  # the tenant's second pass: the same order, no new ring
    assert asked == [("t", None, 14)]
    walked.clear()
    take = turns.take(ring, walk)  # the next claim starts after s3, the last served
    take("t", 1)
    assert asked[-1] == ("t", "s3", 4) and walked == [("s1", 1)]
    gate = TenantGate({"t": (2, None, 0)}, {"t": 1}, 0)
    assert turns.take(ring, walk, gate)("t", 5) == 1  # the tenant's max_in_flight caps it


def test_tenant_max_in_flight_holds_across_claims(store_url: str) -> None:
    clock = FakeClock(T0)
    with wd.Dispatcher(store_url, transport=MockReceiver([200]), clock=clock) as d:
        d.set_tenant("capped", max_in_flight=3)
        for n in range(2):
            d.subscribe(f"https://c{n}.example/hook", tenant="capped", max_in_flight=100)
        d.publish_many([("x.y", {}, None, "capped") for _ in range(10)])
        lease = clock.now() + timedelta(minutes=1)
        first = d.store.claim_due(clock.now(), limit=10, lease_until=lease, worker_id="w1")
        second = d.store.claim_due(clock.now(), limit=10, lease_until=lease, worker_id="w2")
        assert (len(first), len(second)) == (3, 0)


def test_tenant_rate_limit_spaces_claims(store_url: str) -> None:
    clock = FakeClock(T0)
    with wd.Dispatcher(store_url, transport=MockReceiver([200]), clock=clock) as d:
        d.set_tenant("slow", rate_limit=2)
        d.subscribe("https://s.example/hook", tenant="slow", max_in_flight=100)
        d.publish_many([("x.y", {}, None, "slow") for _ in range(10)])
        lease = clock.now() + timedelta(minutes=1)
        got = len(d.store.claim_due(clock.now(), limit=10, lease_until=lease, worker_id="w"))
        assert got == 2
        assert d.store.claim_due(clock.now(), limit=10, lease_until=lease, worker_id="w") == []
        clock.advance(1)
        assert len(d.store.claim_due(clock.now(), limit=10, lease_until=lease, worker_id="w")) == 2


def test_due_ring_wraps_and_walks_windows() -> None:
    """The ring starts after the cursor, wraps to the start, and pages through windows
    of tenants whose deliveries are not yet due."""
    from webhook_dispatch.stores.base import RING_WINDOW, due_ring

    tenants = [f"t{n:04d}" for n in range(3 * RING_WINDOW)]
    due = {"t0001", "t0600", "t0700"}
    scans: list[tuple[str, bool]] = []

    def scan(bound: str, inclusive: bool) -> list[tuple[str, bool]]:
        scans.append((bound, inclusive))
        after = [t for t in tenants if t >= bound and (inclusive or t > bound)]
        return [(t, t in due) for t in after[:RING_WINDOW]]

    assert due_ring(scan, "t0650", 10) == ["t0700", "t0001", "t0600"]
    assert due_ring(scan, None, 2) == ["t0001", "t0600"]
    assert due_ring(scan, "t0700", 1) == ["t0001"]
    assert due_ring(lambda bound, inclusive: [], None, 5) == []
