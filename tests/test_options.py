"""Options as values: every bad dispatcher option is refused before any store is opened,
by both faces; `DispatcherOptions` and `EndpointOptions` can be built, shared, overridden."""

from __future__ import annotations

import inspect
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

import webhook_dispatch as wd
from webhook_dispatch.options import DispatcherKwargs, EndpointKwargs
from webhook_dispatch.testing import MockReceiver

URL = "https://receiver.example/hooks"

# (option, bad value): every option of DispatcherOptions appears at least once.
BAD_OPTIONS: list[tuple[str, Any]] = [
    ("clock", "now"),
    ("retry", "fast"),
    ("transport", "aiohttp"),
    ("concurrency", 0),
    ("concurrency", True),
    ("max_payload_size", 0),
    ("envelope", "yes"),
    ("strict_event_types", "yes"),
    ("lease", 60),
    ("lease", timedelta(0)),
    ("poll_interval", -1.0),
    ("poll_interval", "1"),
    ("grace", -1),
    ("grace", "30s"),
    ("grace", float("nan")),
    ("retention", 30),
    ("retention", timedelta(seconds=-1)),
    ("allow_private_networks", "yes"),
    ("allowed_networks", "10.0.0.0/8"),
    ("allowed_networks", ["intranet"]),
    ("https_only", 1),
    ("refuse_mixed_answers", "yes"),
    ("refuse_mixed_answers", 0),
    ("resolve", {"hooks.example.com": ["192.0.2.1"]}),
    ("default_max_in_flight", 0),
    ("default_max_in_flight", "auto"),
    ("auto_disable", "bad"),
    ("retry_by_event_type", {"order.*": "fast"}),
    ("retry_by_event_type", {"order..created": wd.RetryPolicy()}),
    ("retry_by_event_type", ["order.*"]),
    ("on_attempt", "print"),
    ("on_delivery_succeeded", 1),
    ("on_delivery_failed", "log"),
    ("on_subscription_disabled", object()),
    ("on_recovered", "notify"),
    ("operational_events", "yes"),
    ("metrics", "prometheus"),
    ("tracing", "yes"),
]


def test_the_bad_options_cover_every_option() -> None:
    named = {name for name, _ in BAD_OPTIONS}
    assert named == {field.name for field in attrs.fields(wd.DispatcherOptions)}


@pytest.mark.parametrize(("name", "value"), BAD_OPTIONS, ids=[n for n, _ in BAD_OPTIONS])
def test_bad_option_is_refused_before_the_store_is_created(
    tmp_path: Path, name: str, value: Any
) -> None:
    path = tmp_path / "x.db"
    with pytest.raises(wd.ConfigurationError):
        wd.Dispatcher(f"sqlite:///{path}", **{name: value})
    with pytest.raises(wd.ConfigurationError):
        wd.AsyncDispatcher(f"sqlite:///{path}", **{name: value})
    with pytest.raises(wd.ConfigurationError):
        wd.DispatcherOptions(**{name: value})
    assert not path.exists()


def test_keyword_arguments_are_exactly_the_options_fields() -> None:
    fields = {field.name: field.default for field in attrs.fields(wd.DispatcherOptions)}
    assert set(DispatcherKwargs.__annotations__) == set(fields)
    parameters = inspect.signature(wd.Dispatcher).parameters
    for name, default in fields.items():
        assert parameters[name].default == default, name
    endpoint = {field.name: field.default for field in attrs.fields(wd.EndpointOptions)}
    assert set(EndpointKwargs.__annotations__) == set(endpoint)
    for face in (wd.Dispatcher, wd.AsyncDispatcher):
        subscribe = inspect.signature(face.subscribe).parameters
        assert set(endpoint) <= set(subscribe)
        assert subscribe["timeout"].default == 15.0


def test_a_built_options_object_configures_the_dispatcher_and_keywords_override_it() -> None:
    receiver = MockReceiver()
    options = wd.DispatcherOptions(transport=receiver, concurrency=8, envelope=False)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        options.concurrency = 9  # type: ignore[misc]
    with wd.Dispatcher("memory://", options, concurrency=4) as dispatcher:
        assert dispatcher.options.concurrency == 4
        assert dispatcher.options.envelope is False
        dispatcher.subscribe(URL)
        dispatcher.publish("order.created", {"id": 1})
        assert dispatcher.run_until_idle() == 1
    assert receiver.requests[0].json() == {"id": 1}  # envelope=False came from options
    assert options.concurrency == 8
    with pytest.raises(wd.ConfigurationError):
        wd.Dispatcher("memory://", {"concurrency": 4})  # type: ignore[arg-type]


def test_endpoint_options_are_shared_and_each_subscription_gets_its_own_secret() -> None:
    shared = wd.EndpointOptions(event_types=["order.*"], headers={"X-Team": "a"}, timeout=5)
    assert shared.event_types == ("order.*",)
    with wd.Dispatcher() as dispatcher:
        first = dispatcher.subscribe(URL, shared)
        second = dispatcher.subscribe(URL, shared, timeout=7, ordered=True)
    assert (first.event_types, first.headers, first.timeout) == (("order.*",), {"X-Team": "a"}, 5)
    assert (second.timeout, second.ordered, second.headers) == (7, True, {"X-Team": "a"})
    assert first.secret != second.secret
    with pytest.raises(wd.InvalidHeader):
        wd.EndpointOptions(headers={"webhook-signature": "x"})
    with pytest.raises(wd.ConfigurationError):
        wd.EndpointOptions(timeout=0)


def test_unknown_keywords_are_a_type_error_as_before() -> None:
    with pytest.raises(TypeError):
        wd.Dispatcher(concurrrency=4)  # type: ignore[call-arg]
    with wd.Dispatcher() as dispatcher:
        with pytest.raises(TypeError):
            dispatcher.subscribe(URL, event_type=["order.*"])  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="idempotency"):
            dispatcher.publish("order.created", {}, idempotency="k")  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            dispatcher.messages(page=2)  # type: ignore[call-arg]
        assert dispatcher.messages() == []


async def test_async_face_takes_the_same_options() -> None:
    receiver = MockReceiver()
    options = wd.EndpointOptions(event_types=["order.*"], max_in_flight=2)
    async with wd.AsyncDispatcher(options=wd.DispatcherOptions(transport=receiver)) as dispatcher:
        subscription = await dispatcher.subscribe(URL, options, secret=None)
        assert subscription.max_in_flight == 2
        await dispatcher.publish("order.created", {"id": 1}, idempotency_key="k")
        with pytest.raises(TypeError):
            await dispatcher.publish("order.created", {}, idempotency="k")  # type: ignore[call-arg]
        assert await dispatcher.run_until_idle() == 1
        page = await dispatcher.deliveries(limit=1)
        assert len(page) == 1
