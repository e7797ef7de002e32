"""Body formats per subscription: as published, the raw payload, and CloudEvents 1.0
over HTTP in structured and binary mode, parsed back with the CloudEvents SDK; the
signature always covers the exact bytes sent."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
import standardwebhooks
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from cloudevents.v1.http import from_http as from_http_v1

import webhook_dispatch as wd
from webhook_dispatch.testing import MockReceiver

SECRET = wd.generate_secret()


@pytest.fixture
def receiver() -> MockReceiver:
    return MockReceiver([200], secret=SECRET)


@pytest.fixture
def dispatcher(store_url: str, receiver: MockReceiver) -> Iterator[wd.Dispatcher]:
    with wd.Dispatcher(store_url, transport=receiver) as d:
        yield d


def _sent(
    dispatcher: wd.Dispatcher, receiver: MockReceiver, body_format: str
) -> tuple[wd.Message, wd.testing.ReceivedRequest]:
    dispatcher.subscribe(
        "https://h.example/x",
        secret=SECRET,
        body_format=body_format,
        event_source="https://shop.example/webhooks",
        tenant="acme",
    )
    message = dispatcher.publish("order.paid", {"id": "ord_1", "amount": 250}, tenant="acme")
    assert dispatcher.run_until_idle() == 1
    [request] = receiver.requests
    receiver.assert_all_verified()
    # Any Standard Webhooks library verifies the bytes as sent.
    standardwebhooks.Webhook(SECRET).verify(request.body, dict(request.headers))
    return message, request


def test_standard_is_the_body_as_published(
    dispatcher: wd.Dispatcher, receiver: MockReceiver
) -> None:
    message, request = _sent(dispatcher, receiver, "standard")
    assert request.body == message.payload
    assert json.loads(request.body)["data"] == {"id": "ord_1", "amount": 250}


def test_raw_is_the_payload_alone(dispatcher: wd.Dispatcher, receiver: MockReceiver) -> None:
    _, request = _sent(dispatcher, receiver, "raw")
    assert json.loads(request.body) == {"id": "ord_1", "amount": 250}
    assert request.headers["content-type"] == "application/json"


def test_cloudevents_structured_mode(dispatcher: wd.Dispatcher, receiver: MockReceiver) -> None:
    message, request = _sent(dispatcher, receiver, "cloudevents")
    assert request.headers["content-type"] == "application/cloudevents+json"
    event = from_http_event(HTTPMessage(headers=dict(request.headers), body=request.body))
    assert event.get_id() == message.id
    assert event.get_type() == "order.paid"
    assert event.get_source() == "https://shop.example/webhooks"
    assert event.get_time() == message.created_at
    assert event.get_data() == {"id": "ord_1", "amount": 250}
    legacy = from_http_v1(dict(request.headers), request.body)
    assert legacy["id"] == message.id and legacy.data == {"id": "ord_1", "amount": 250}


def test_cloudevents_binary_mode(dispatcher: wd.Dispatcher, receiver: MockReceiver) -> None:
    message, request = _sent(dispatcher, receiver, "cloudevents-binary")
    assert request.headers["ce-specversion"] == "1.0"
    assert request.headers["ce-id"] == message.id
    assert request.headers["content-type"] == "application/json"
    event = from_http_event(HTTPMessage(headers=dict(request.headers), body=request.body))
    assert (
        event.get_type() == "order.paid" and event.get_source() == "https://shop.example/webhooks"
    )
    assert event.get_data() == {"id": "ord_1", "amount": 250}
    legacy = from_http_v1(dict(request.headers), request.body)
    assert legacy["type"] == "order.paid" and legacy.data == {"id": "ord_1", "amount": 250}
    [attempt] = dispatcher.attempts(message.id)
    assert attempt.request_headers["ce-type"] == "order.paid"


def test_a_bare_payload_and_bytes_in_every_format(store_url: str) -> None:
    receiver = MockReceiver([200], secret=SECRET)
    with wd.Dispatcher(store_url, transport=receiver, envelope=False) as dispatcher:
        for body_format in ("standard", "raw", "cloudevents", "cloudevents-binary"):
            dispatcher.subscribe(
                f"https://{body_format}.example/x", secret=SECRET, body_format=body_format
            )
        dispatcher.publish("order.paid", {"n": 1})
        dispatcher.publish("doc.raw", b"<doc/>", content_type="application/xml")
        assert dispatcher.run_until_idle() == 8
    receiver.assert_all_verified()
    bodies = {
        (r.url.split("/")[2].split(".")[0], r.headers["content-type"]): r.body
        for r in receiver.requests
    }
    assert json.loads(bodies[("standard", "application/json")]) == {"n": 1}
    assert json.loads(bodies[("raw", "application/json")]) == {"n": 1}
    assert bodies[("raw", "application/xml")] == b"<doc/>"
    assert bodies[("cloudevents-binary", "application/xml")] == b"<doc/>"
    structured = [
        json.loads(r.body) for r in receiver.requests if r.url.startswith("https://cloudevents.")
    ]
    assert len(structured) == 2
    xml = next(event for event in structured if "data_base64" in event)
    assert base64.b64decode(xml["data_base64"]) == b"<doc/>"
    assert xml["datacontenttype"] == "application/xml"
    assert xml["source"] == "/webhook-dispatch"


@pytest.mark.parametrize(
    "options",
    [
        {"body_format": "xml"},
        {"event_source": "has space"},
        {"event_source": ""},
        {"event_source": 5},
    ],
)
def test_bad_format_options_are_refused(
    dispatcher: wd.Dispatcher, options: dict[str, object]
) -> None:
    with pytest.raises(wd.ConfigurationError):
        dispatcher.subscribe("https://h.example/x", **options)  # type: ignore[arg-type]
    assert list(dispatcher.subscriptions()) == []


def test_the_format_is_kept_with_the_subscription(dispatcher: wd.Dispatcher) -> None:
    sub = dispatcher.subscribe(
        "https://h.example/x", body_format="cloudevents", event_source="urn:shop"
    )
    stored = dispatcher.get_subscription(sub.id)
    assert (stored.body_format, stored.event_source) == ("cloudevents", "urn:shop")
    assert dispatcher.update(sub.id, body_format="raw").body_format == "raw"
