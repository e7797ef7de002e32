"""Operating it: flow control, ordering, auto-disable, operational events, metrics and
tracing, through the public API with a FakeClock (issue 7's acceptance tests)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from datetime import timedelta
from typing import Any

import httpx
import pytest
import tenacity

import webhook_dispatch as wd
from webhook_dispatch.cli import main
from webhook_dispatch.events import OperationalEvent
from webhook_dispatch.testing import FakeClock, MockReceiver

URL = "https://example.com/hooks"


def test_rate_limit_holds_over_a_simulated_minute() -> None:
    clock = FakeClock()
    receiver = MockReceiver(clock=clock)
    with wd.Dispatcher(clock=clock, transport=receiver) as dispatcher:
        dispatcher.subscribe(URL, rate_limit=5)
        dispatcher.publish_many(("order.created", {"n": n}) for n in range(400))
        start = clock.now()
        for _ in range(60):
            dispatcher.run_until_idle()
            clock.advance(1)
        per_second = Counter(int((r.at - start).total_seconds()) for r in receiver.requests)
        assert max(per_second.values()) <= 5
        assert sorted(per_second) == list(range(60))  # it kept sending, every second
        assert len(receiver.requests) == 300
        # Held back, not failed: no delivery lost an attempt to the limit.
        assert all(d.attempt_count <= 1 for d in dispatcher.deliveries())
        assert len(dispatcher.deliveries(status="pending")) == 100


class CountingTransport(httpx.AsyncBaseTransport):
    """Answers 200 after a short real sleep, counting requests in flight per host path."""

    def __init__(self, delay: float = 0.005) -> None:
        self.delay = delay
        self.in_flight: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.sent: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.in_flight[path] += 1
        self.peak[path] = max(self.peak[path], self.in_flight[path])
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight[path] -= 1
        self.sent.append(path)
        return httpx.Response(200)


def test_max_in_flight_is_never_exceeded() -> None:
    transport = CountingTransport()
    with wd.Dispatcher(clock=FakeClock(), transport=transport, concurrency=64) as dispatcher:
        dispatcher.subscribe("https://example.com/capped", max_in_flight=2)
        dispatcher.publish_many(("order.created", {"n": n}) for n in range(50))
        dispatcher.run_until_idle()
    assert transport.sent.count("/capped") == 50
    assert transport.peak["/capped"] == 2


def test_a_slow_endpoint_holds_only_its_default_share_of_slots() -> None:
    class Slow(CountingTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            self.delay = 0.05 if request.url.path == "/slow" else 0.001
            return await super().handle_async_request(request)

    transport = Slow()
    with wd.Dispatcher(clock=FakeClock(), transport=transport, concurrency=8) as dispatcher:
        dispatcher.subscribe("https://example.com/slow")
        dispatcher.subscribe("https://example.com/fast")
        dispatcher.publish_many(("order.created", {"n": n}) for n in range(20))
        dispatcher.run_until_idle()
    assert transport.peak["/slow"] == 2  # a quarter of concurrency=8
    assert transport.sent.count("/fast") == 20
    # The fast endpoint finished long before the slow one: no head-of-line blocking.
    last_fast = max(i for i, path in enumerate(transport.sent) if path == "/fast")
    assert last_fast < len(transport.sent) - 5


def test_an_endpoint_that_never_answers_holds_two_slots_from_its_first_attempts() -> None:
    """Slow start: until it answers, a new endpoint gets two slots, not a full share."""

    class NeverAnswers(CountingTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            self.delay = 30.0 if request.url.path == "/never" else 0.001
            return await super().handle_async_request(request)

    transport = NeverAnswers()
    with wd.Dispatcher(clock=FakeClock(), transport=transport, concurrency=64) as dispatcher:
        dispatcher.subscribe("https://example.com/never", timeout=0.2)
        dispatcher.subscribe("https://example.com/fast")
        dispatcher.publish_many(("order.created", {"n": n}) for n in range(12))
        dispatcher.run_until_idle()
        never = [d for d in dispatcher.deliveries() if d.last_error is not None]
    assert transport.peak["/never"] == 2  # not 16, a quarter of concurrency=64
    assert transport.peak["/fast"] > 2  # a proven endpoint gets its full share
    assert transport.sent.count("/fast") == 12
    assert len(never) == 12 and all(d.attempt_count == 1 for d in never)


def test_ordered_subscription_receives_messages_in_order() -> None:
    clock = FakeClock()
    receiver = MockReceiver([503, 503], clock=clock)
    with wd.Dispatcher(clock=clock, transport=receiver) as dispatcher:
        dispatcher.subscribe(URL, ordered=True, retry=wd.RetryPolicy.fixed([0, 1, 1, 1]))
        messages = [dispatcher.publish("order.created", {"n": n}) for n in range(4)]
        for _ in range(10):
            dispatcher.run_until_idle()
            clock.advance(1)
    received = [r.webhook_id for r in receiver.requests]
    ids = [m.id for m in messages]
    assert received == [ids[0], ids[0], ids[0], ids[1], ids[2], ids[3]]
    assert [r.reply for r in receiver.requests][:3] == ["503", "503", "200"]


def test_ordered_waits_for_a_given_up_message_then_goes_on() -> None:
    clock = FakeClock()
    receiver = MockReceiver([400], clock=clock)  # the first is refused for good
    with wd.Dispatcher(clock=clock, transport=receiver) as dispatcher:
        dispatcher.subscribe(URL, ordered=True)
        first = dispatcher.publish("order.created", {"n": 0})
        second = dispatcher.publish("order.created", {"n": 1})
        dispatcher.run_until_idle()
    assert [r.webhook_id for r in receiver.requests] == [first.id, second.id]


def _hourly_failures(clock: FakeClock, hours: int, dispatcher: wd.Dispatcher) -> None:
    for _ in range(hours):
        dispatcher.run_until_idle()
        clock.advance(timedelta(hours=1))


def test_five_days_of_failure_disable_and_a_success_resets() -> None:
    clock = FakeClock()
    disabled: list[OperationalEvent] = []
    hourly = wd.RetryPolicy.fixed([0] + [3600] * 300)
    receiver = MockReceiver(default=503, clock=clock)
    with wd.Dispatcher(
        clock=clock,
        transport=receiver,
        on_subscription_disabled=disabled.append,
    ) as dispatcher:
        failing = dispatcher.subscribe("https://a.example/hooks", retry=hourly)
        dispatcher.publish("order.created", {"n": 1})
        _hourly_failures(clock, 4 * 24, dispatcher)
        assert dispatcher.get_subscription(failing.id).enabled  # four days: not yet
        assert dispatcher.get_subscription(failing.id).consecutive_failures >= 90
        _hourly_failures(clock, 26, dispatcher)
        after = dispatcher.get_subscription(failing.id)
        assert not after.enabled
        assert "failing since" in (after.disabled_reason or "")
        assert [e.subscription_id for e in disabled] == [failing.id]
        held = dispatcher.deliveries(subscription_id=failing.id)
        assert [d.status.value for d in held] == ["pending"]  # held, not dropped
        # Re-enabled, it resumes, with a fresh failure run.
        receiver._default = 200
        enabled = dispatcher.enable(failing.id)
        assert (enabled.failing_since, enabled.consecutive_failures) == (None, 0)
        clock.advance(timedelta(hours=1))
        dispatcher.run_until_idle()
        assert [d.status.value for d in dispatcher.deliveries()] == ["succeeded"]


def test_a_success_within_the_window_resets_the_failure_run() -> None:
    clock = FakeClock()
    hourly = wd.RetryPolicy.fixed([0] + [3600] * 300)
    recovered: list[str] = []
    receiver = MockReceiver(default=503, clock=clock)
    with wd.Dispatcher(
        clock=clock, transport=receiver, on_recovered=lambda e: recovered.append(e.subscription_id)
    ) as dispatcher:
        subscription = dispatcher.subscribe(URL, retry=hourly)
        dispatcher.publish("order.created", {"n": 1})
        _hourly_failures(clock, 4 * 24, dispatcher)
        receiver._default = 200
        dispatcher.publish("order.created", {"n": 2})
        dispatcher.run_until_idle()
        assert recovered == [subscription.id]
        assert dispatcher.get_subscription(subscription.id).consecutive_failures == 0
        receiver._default = 503
        dispatcher.publish("order.created", {"n": 3})
        _hourly_failures(clock, 3 * 24, dispatcher)  # 7 days since the first failure
        assert dispatcher.get_subscription(subscription.id).enabled


def test_a_disabled_subscriptions_deliveries_resume_after_enable() -> None:
    clock = FakeClock()
    receiver = MockReceiver(clock=clock)
    with wd.Dispatcher(clock=clock, transport=receiver) as dispatcher:
        subscription = dispatcher.subscribe(URL)
        dispatcher.disable(subscription.id, reason="maintenance")
        # Disabled subscriptions match no new event; what was pending is held.
        dispatcher.enable(subscription.id)
        message = dispatcher.publish("order.created", {"n": 1})
        dispatcher.disable(subscription.id)
        dispatcher.run_until_idle()
        assert receiver.requests == []
        dispatcher.enable(subscription.id)
        dispatcher.run_until_idle()
    assert [r.webhook_id for r in receiver.requests] == [message.id]


def test_a_raising_callback_does_not_stop_delivery(caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: OperationalEvent) -> None:
        raise RuntimeError("the callback is broken")

    clock = FakeClock()
    receiver = MockReceiver(clock=clock)
    with wd.Dispatcher(
        clock=clock,
        transport=receiver,
        on_attempt=broken,
        on_delivery_succeeded=broken,
    ) as dispatcher:
        dispatcher.subscribe(URL)
        with caplog.at_level(logging.ERROR, logger="webhook_dispatch"):
            for n in range(3):
                dispatcher.publish("order.created", {"n": n})
            dispatcher.run_until_idle()
        assert [d.status.value for d in dispatcher.deliveries()] == ["succeeded"] * 3
    assert "callback for webhook_dispatch.attempt.made raised" in caplog.text


def test_callbacks_hear_attempts_and_given_up_deliveries() -> None:
    clock = FakeClock()
    seen: list[tuple[str, str]] = []

    def note(event: OperationalEvent) -> None:
        assert event.delivery is not None
        seen.append((event.type, event.delivery.status.value))

    receiver = MockReceiver([503, 404], clock=clock)
    with wd.Dispatcher(
        clock=clock,
        transport=receiver,
        retry=wd.RetryPolicy.fixed([0]),
        on_attempt=note,
        on_delivery_failed=note,
    ) as dispatcher:
        dispatcher.subscribe(URL)
        dispatcher.publish("order.created", {"n": 1})
        dispatcher.run_until_idle()
        dispatcher.publish("order.created", {"n": 2})
        dispatcher.run_until_idle()
    assert seen == [
        ("webhook_dispatch.attempt.made", "exhausted"),
        ("webhook_dispatch.delivery.exhausted", "exhausted"),
        ("webhook_dispatch.attempt.made", "failed"),
        ("webhook_dispatch.delivery.failed", "failed"),
    ]


def test_operational_events_reach_the_operator_only_and_never_loop() -> None:
    clock = FakeClock()
    customer = "https://customer.example/hooks"
    operator = "https://ops.example/hooks"
    other = "https://everything.example/hooks"
    receiver = MockReceiver(
        routes={customer: [410], operator: [500] * 50}, default=200, clock=clock
    )
    with wd.Dispatcher(
        clock=clock,
        transport=receiver,
        operational_events=True,
        retry=wd.RetryPolicy.fixed([0, 1]),
    ) as dispatcher:
        gone = dispatcher.subscribe(customer, event_types=["order.*"])
        dispatcher.subscribe(operator, event_types=["webhook_dispatch.**"])
        dispatcher.subscribe(other)  # every event, but no operational ones
        dispatcher.publish("order.created", {"n": 1})
        for _ in range(5):
            dispatcher.run_until_idle()
            clock.advance(1)
    to_operator = [r for r in receiver.requests if str(r.url) == operator]
    to_other = [r for r in receiver.requests if str(r.url) == other]
    assert all(r.json()["type"] == "order.created" for r in to_other)
    types = sorted({r.json()["type"] for r in to_operator})
    assert types == ["webhook_dispatch.delivery.failed", "webhook_dispatch.subscription.disabled"]
    [disabled] = {
        r.webhook_id: r.json()["data"]
        for r in to_operator
        if r.json()["type"] == "webhook_dispatch.subscription.disabled"
    }.values()
    assert disabled["subscription_id"] == gone.id and "410" in disabled["reason"]
    # The operator endpoint failed every time: that produced no further events.
    assert len(to_operator) == 4  # two events, two attempts each, then exhausted


def test_retry_schedules_per_event_type_and_per_subscription() -> None:
    clock = FakeClock()
    receiver = MockReceiver(default=503, clock=clock)
    with wd.Dispatcher(
        clock=clock,
        transport=receiver,
        retry_by_event_type={"invoice.*": wd.RetryPolicy.fixed([0, 1])},
    ) as dispatcher:
        plain = dispatcher.subscribe("https://a.example/hooks")
        own = dispatcher.subscribe("https://b.example/hooks", retry=[0])
        invoice = dispatcher.publish("invoice.paid", {"n": 1})
        for _ in range(3):
            dispatcher.run_until_idle()
            clock.advance(2)
        by_subscription = {
            d.subscription_id: d for d in dispatcher.deliveries(message_id=invoice.id)
        }
    assert by_subscription[plain.id].attempt_count == 2  # the invoice.* override
    assert by_subscription[plain.id].status.value == "exhausted"
    assert by_subscription[own.id].attempt_count == 1  # its own schedule wins
    exponential = wd.RetryPolicy(wait=tenacity.wait_exponential(), stop=tenacity.stop_never)
    with pytest.raises(wd.ConfigurationError, match="fixed"):
        wd.Dispatcher().subscribe(URL, retry=exponential)


def test_opentelemetry_span_per_attempt() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, StatusCode

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    clock = FakeClock()
    receiver = MockReceiver([503, 200], clock=clock)
    url = "https://example.com:8443/hooks?tenant=42"
    with wd.Dispatcher(clock=clock, transport=receiver, tracing=provider) as dispatcher:
        dispatcher.subscribe(url)
        message = dispatcher.publish("order.created", {"n": 1})
        dispatcher.run_until_idle()
        clock.advance(10)
        dispatcher.run_until_idle()
    spans = exporter.get_finished_spans()
    assert len(spans) == 2 == len(dispatcher.attempts(message.id))
    for span in spans:
        assert span.name == "POST" and span.kind is SpanKind.CLIENT
        assert span.attributes is not None
        assert span.attributes["http.request.method"] == "POST"
        assert span.attributes["url.full"] == url
        assert span.attributes["server.address"] == "example.com"
        assert span.attributes["server.port"] == 8443
        assert span.attributes["webhook_dispatch.message_id"] == message.id
    failed, succeeded = spans
    assert failed.attributes is not None and succeeded.attributes is not None
    assert failed.attributes["http.response.status_code"] == 503
    assert failed.attributes["error.type"] == "503"
    assert failed.status.status_code is StatusCode.ERROR
    assert succeeded.attributes["http.response.status_code"] == 200
    assert "error.type" not in succeeded.attributes
    assert succeeded.status.status_code is StatusCode.UNSET


def test_span_urls_never_carry_credentials() -> None:
    from webhook_dispatch.tracing import safe_url

    assert safe_url("https://user:secret@example.com/h?q=1") == "https://example.com/h?q=1"
    assert safe_url("https://example.com/h") == "https://example.com/h"


def test_prometheus_metrics_move() -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    metrics = wd.PrometheusMetrics(registry)
    clock = FakeClock()
    receiver = MockReceiver([503], clock=clock)
    with wd.Dispatcher(
        clock=clock, transport=receiver, metrics=metrics, retry=wd.RetryPolicy.fixed([0, 5])
    ) as dispatcher:
        dispatcher.subscribe(URL)
        paused = dispatcher.subscribe("https://paused.example/hooks", event_types=["x.y"])
        dispatcher.disable(paused.id)

        def sample(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(name, labels)

        dispatcher.publish("order.created", {"n": 1})
        clock.advance(30)
        assert sample("webhook_dispatch_pending_deliveries") == 1
        assert sample("webhook_dispatch_oldest_pending_age_seconds") == 30
        assert sample("webhook_dispatch_disabled_subscriptions") == 1
        dispatcher.run_until_idle()  # 503: retried in 5 s
        assert sample("webhook_dispatch_attempts_total", result="retry") == 1
        assert sample("webhook_dispatch_failing_subscriptions") == 1
        clock.advance(5)
        dispatcher.run_until_idle()
        assert sample("webhook_dispatch_deliveries_total", outcome="succeeded") == 1
        assert sample("webhook_dispatch_attempts_total", result="success") == 1
        assert sample("webhook_dispatch_attempt_duration_seconds_count") == 2
        assert sample("webhook_dispatch_pending_deliveries") == 0
        assert sample("webhook_dispatch_oldest_pending_age_seconds") == 0
        assert sample("webhook_dispatch_failing_subscriptions") == 0


def test_stats_and_the_stats_command(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    store = f"sqlite:///{tmp_path / 'w.db'}"
    clock = FakeClock()
    with wd.Dispatcher(store, clock=clock, transport=MockReceiver(clock=clock)) as dispatcher:
        subscription = dispatcher.subscribe(URL)
        dispatcher.publish("order.created", {"n": 1})
        dispatcher.publish("order.created", {"n": 2})
        dispatcher.disable(subscription.id)
        stats = dispatcher.stats()
    assert (stats.pending, stats.delivering, stats.disabled_subscriptions) == (2, 0, 1)
    assert stats.oldest_pending_at == clock.now()
    assert main(["--store", store, "stats", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["pending"] == 2 and shown["disabled_subscriptions"] == 1
    assert main(["--store", store, "stats"]) == 0
    assert "disabled subscriptions" in capsys.readouterr().out


def test_cli_subscribes_with_flow_control(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite:///{tmp_path / 'w.db'}"
    assert (
        main(
            [
                "--store",
                store,
                "subscriptions",
                "add",
                URL,
                "--rate-limit",
                "2.5",
                "--max-in-flight",
                "3",
                "--ordered",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["--store", store, "subscriptions", "list", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert (listed["rate_limit"], listed["max_in_flight"], listed["ordered"]) == (2.5, 3, True)


def test_flow_control_options_are_validated() -> None:
    with wd.Dispatcher() as dispatcher:
        for bad in ({"rate_limit": 0}, {"max_in_flight": 0}, {"ordered": "yes"}):
            with pytest.raises(wd.ConfigurationError):
                dispatcher.subscribe(URL, **bad)  # type: ignore[arg-type]
    with pytest.raises(wd.ConfigurationError):
        wd.Dispatcher(default_max_in_flight=0)
    with pytest.raises(wd.ConfigurationError):
        wd.AutoDisable(min_failed_attempts=0)
